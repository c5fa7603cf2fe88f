"""async_chat: a dispatcher that splits its input at terminators and sends
a queue of data and producers.

The behaviour is CPython 3.11's asynchat (see the seed documentation), with
these differences, none of which a program can observe through the API:

* **Linear time.**  Input is scanned with an offset into the received bytes:
  each byte is searched once (plus ``len(terminator) - 1`` bytes of overlap
  when a terminator is split across reads), and nothing is re-sliced per
  message.  A partial send keeps a :class:`memoryview` of the rest.
* **Replies go out together.**  Data pushed while the channel's own
  ``handle_read()`` runs for the loop (the replies to one read's requests)
  is sent in one ``send()`` when the read is handled, instead of one
  ``send()`` per push;
  queued items are likewise joined up to ``ac_out_buffer_size``.  The bytes
  and their order on the wire are the same.  Not for a class that
  overrides ``send()``, ``initiate_send()`` or ``writable()``: those get
  CPython's one send per item.  Reading ``producer_fifo``, calling
  ``close()`` or ``discard_buffers()`` first sends what is pending, as
  CPython would have already.
* **Interest is managed.**  ``readable()``/``writable()`` are trusted by the
  loop (:func:`~pollchat.interest.managed_interest`); ``producer_fifo`` is an
  :class:`~pollchat.producers.OutputQueue` that reports additions, and
  ``connected`` is observed, so code that changes them directly is served.
* **Defects fixed.**  ``use_encoding`` really encodes ``str`` data and
  terminators with ``encoding``; type errors name the offending type; a bad
  terminator is refused by ``set_terminator()`` instead of failing on the next
  read; an exception raised by a producer goes to ``handle_error()`` whoever
  called ``initiate_send()``.

Call for call, ``collect_incoming_data()`` and ``found_terminator()`` are
invoked exactly as CPython invokes them: the same data, split at the same
places, with the same terminator changes taking effect on the data already
received.
"""

from __future__ import annotations

from typing import Any, Dict, List, Optional

from .channel import dispatcher, managed_predicate
from .chat_input import ChatInput, InputLimitExceeded, Terminator
from .chat_output import BytesLike, ChatOutput
from .producers import find_prefix_at_end, simple_producer

__all__ = ["BytesLike", "InputLimitExceeded", "Terminator", "async_chat", "find_prefix_at_end",
           "simple_producer"]


class async_chat(ChatInput, ChatOutput, dispatcher):
    """A dispatcher for protocols made of terminated or counted messages.

    Subclass it and implement :meth:`collect_incoming_data` and
    :meth:`found_terminator`; set the terminator with :meth:`set_terminator`.
    Send with :meth:`push` (data) and :meth:`push_with_producer` (anything
    with a ``more()`` method returning bytes, ``b""`` once exhausted).

    Attributes programs use, with CPython's meaning:

    * ``ac_in_buffer``: the received input not yet handed to
      ``collect_incoming_data()`` (a property: reading it copies; assigning
      it replaces the pending input, which is then scanned from its start).
    * ``incoming``: the list that :meth:`_collect_incoming_data` appends to
      and :meth:`_get_data` joins.
    * ``producer_fifo``: the output queue (a deque of bytes-like objects,
      producers, and ``None`` meaning "close here").
    * ``terminator``: the current terminator (a numeric terminator counts
      down in place as data arrives, reaching 0 when found).
    """

    # Bytes asked of each recv(), and the most handed to one send().  The
    # seed documentation says 4096 for both; CPython 3.x uses 65536, and so
    # do we.
    ac_in_buffer_size = 65536
    ac_out_buffer_size = 65536

    # Off by default: str where bytes are expected is usually a bug that
    # should not pass silently.
    use_encoding = 0
    encoding = "latin-1"

    #: The most bytes accepted while waiting for a bytes terminator (``None``:
    #: no limit, as in CPython).  Past it, ``handle_error()`` runs with an
    #: :class:`InputLimitExceeded` being handled, and by default closes the
    #: channel.  Checked per read, so a collector may see up to one read
    #: (``ac_in_buffer_size``) more before the channel is cut off.
    max_line: Optional[int] = None
    #: Queued output (bytes pushed, not yet sent) above which
    #: :meth:`handle_output_high_water` runs (``None``: no limit).  By default
    #: that stops reading from this channel until the queue drains to
    #: ``out_low_water`` (default: a quarter of the high mark), so a peer that
    #: does not read cannot make the server queue without bound.
    out_high_water: Optional[int] = None
    out_low_water: Optional[int] = None

    #: What ends the next message (set_terminator()); not set until then, as
    #: in CPython (a read before it is an error).
    terminator: Any

    # Per-instance state with class defaults, set on an instance only when it
    # differs: an idle connection carries only what it uses.
    _pc_fifo: Any = None  # the output queue, made on first need
    _ac_batch: Optional[List[Any]] = None  # pushes held while handle_read() runs
    _ac_writable_seen: Optional[bool] = None  # the last writable() the loop saw
    _ac_line_bytes = 0  # received since the last terminator (max_line)
    _ac_queued = 0  # bytes pushed and not yet sent (out_high_water)
    _ac_output_full = False
    # Per class (__init_subclass__): get_terminator() is the stock one, so
    # the attribute can be read instead; send/initiate_send/writable are the
    # stock ones, so replies may be sent together.  __init__ copies both to
    # the instance: the read path asks for them on every read, and Python
    # 3.11 specializes loads of instance attributes only (a class
    # attribute read through an instance is a full lookup each time).
    _ac_stock_get_terminator = True
    _ac_coalesce = True

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        cls._ac_stock_get_terminator = cls.get_terminator is async_chat.get_terminator
        cls._ac_coalesce = (cls.send is dispatcher.send
                            and cls.initiate_send is async_chat.initiate_send
                            and cls.writable is async_chat.writable)

    def __init__(self, sock: Any = None, map: Optional[Dict[Any, Any]] = None) -> None:
        # Input state: _ac_buf[_ac_pos:] is what CPython calls ac_in_buffer.
        self._ac_buf = b""
        self._ac_pos = 0
        self.incoming: List[bytes] = []
        cls = type(self)
        # (An instance may have replaced get_terminator() before calling us.)
        self._ac_stock_get_terminator = (cls._ac_stock_get_terminator
                                         and self._pc_replaced_get_terminator is None)
        self._ac_coalesce = cls._ac_coalesce
        # Every attribute the hot path sets later is set here first, always in
        # this order: CPython 3.11 keeps an instance's attributes in a values
        # array shared by its class only while instances add them in the same
        # order, and loads them fast only then (otherwise each load is a dict
        # lookup: about 8% of a busy message's CPU, measured).
        self._ac_batch: Optional[List[Any]] = None
        self._ac_writable_seen: Optional[bool] = None
        self._pc_fifo = None
        dispatcher.__init__(self, sock, map)

    def discard_buffers(self) -> None:
        """Drop all pending input (``ac_in_buffer`` and ``incoming``) and
        all queued output, producers and close request included.  (Replies
        pushed during the current read are sent first: CPython had sent
        them already.)"""
        if self._ac_batch:
            self._flush_batch(keep_batching=True)
        self._ac_buf = b""
        self._ac_pos = 0
        del self.incoming[:]
        if self._pc_fifo:
            self._pc_fifo.clear()
        if self._ac_queued:
            self._count_queued(-self._ac_queued)
        self._update_interest()

    def close(self) -> None:
        """Send the replies held for this read (what the socket takes now),
        then close as :meth:`dispatcher.close` does."""
        if self._ac_batch:
            self._flush_batch()
        dispatcher.close(self)

    # -- events and predicates ------------------------------------------------------

    def handle_close(self) -> None:
        self.close()

    @managed_predicate
    def readable(self) -> bool:
        """Always: input is accepted whatever the buffers hold (a limit here
        would break a terminator changed by ``set_terminator()``)."""
        return True

    @managed_predicate
    def writable(self) -> bool:
        """While output is queued, or until connected (to see the connect
        complete)."""
        answer = bool(self._pc_fifo) or not self._pc_connected
        self._ac_writable_seen = answer
        return answer

    # -- helpers ------------------------------------------------------------------------

    def _encode(self, text: str, what: str) -> bytes:
        """``text`` encoded with ``encoding`` if ``use_encoding`` is set;
        otherwise a ``TypeError`` saying what to do about ``what``."""
        if not self.use_encoding:
            raise TypeError(f"{what} must be bytes, not str: encode it, or set "
                            f"use_encoding = True to have str encoded with {self.encoding!r}")
        return text.encode(self.encoding)
