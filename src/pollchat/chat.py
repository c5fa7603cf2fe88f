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

import operator
from typing import Any, Dict, List, Optional, Union

from . import dispatch as _events
from .channel import dispatcher, managed_predicate, observed, overridable
from .dispatch import REraised, is_ssl_error
from .producers import (
    OutputQueue,
    byte_view,
    find_prefix_at_end,
    held_back,
    queue_add,
    simple_producer,
)

__all__ = ["InputLimitExceeded", "async_chat", "find_prefix_at_end", "simple_producer"]

#: What ``set_terminator()`` accepts (after conversion: bytes, int or None).
Terminator = Union[bytes, bytearray, memoryview, str, int, None]
BytesLike = Union[bytes, bytearray, memoryview]

# Input scanning: messages found one find() at a time before the input is
# cut in batches with split(), and the first batch's window in bytes.
_BATCH_AFTER = 2
_FIRST_WINDOW = 2048


class InputLimitExceeded(ValueError):
    """A peer sent more than ``max_line`` bytes without a terminator."""


def _get_producer_fifo(self: async_chat) -> Any:
    if self._ac_batch:
        # Pushes of this read are not sent yet; CPython would have sent
        # them by now, so a program looking at the queue sees that state.
        self._flush_batch(keep_batching=True)
    return self._fifo_for_write()


def _set_producer_fifo(self: async_chat, fifo: Any) -> None:
    if self._ac_batch:
        self._flush_batch(keep_batching=True)
    if type(fifo) is OutputQueue:
        fifo._owner = self
        self._pc_unobserved = False
    else:
        # A container of the program's own: its changes cannot be observed,
        # so the loop asks this channel on every pass, as CPython did.
        self._pc_unobserved = True
    self._pc_fifo = fifo
    self._interest_changed()


def _getter_replaced(channel: async_chat) -> None:
    # An instance's own get_terminator(): ask it at every step, as CPython.
    channel._ac_stock_get_terminator = False


class async_chat(dispatcher):
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

    producer_fifo = observed("fifo", "The output queue.", _get_producer_fifo,
                             _set_producer_fifo)
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
    # stock ones, so replies may be sent together.
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
        # Every attribute the hot path sets later is set here first, always in
        # this order: CPython 3.11 keeps an instance's attributes in a values
        # array shared by its class only while instances add them in the same
        # order, and loads them fast only then (otherwise each load is a dict
        # lookup: about 8% of a busy message's CPU, measured).
        self._ac_batch: Optional[List[Any]] = None
        self._ac_writable_seen: Optional[bool] = None
        self._pc_fifo = None
        dispatcher.__init__(self, sock, map)

    # -- the pending input --------------------------------------------------------

    @property
    def ac_in_buffer(self) -> bytes:
        """Input received but not yet given to ``collect_incoming_data()``:
        usually empty, or the start of a terminator split across reads."""
        pos = self._ac_pos
        return self._ac_buf[pos:] if pos else self._ac_buf

    @ac_in_buffer.setter
    def ac_in_buffer(self, value: Any) -> None:
        if isinstance(value, str):
            value = self._encode(value, "ac_in_buffer")
        elif type(value) is not bytes:
            value = bytes(value)
        if value is self._ac_buf and self._ac_pos:
            # The scan notices a replaced buffer by identity: make the same
            # bytes at a new start a new object.
            value = bytes(bytearray(value))
        self._ac_buf = value
        self._ac_pos = 0

    # -- what subclasses implement ------------------------------------------------

    def collect_incoming_data(self, data: bytes) -> None:
        """Take ``data``, received input that precedes the next terminator.

        Called zero or more times between terminators, never with empty
        data.  Override it (:meth:`_collect_incoming_data` is a ready-made
        implementation that buffers into ``self.incoming``).
        """
        raise NotImplementedError(
            f"{type(self).__name__} must override collect_incoming_data()")

    def found_terminator(self) -> None:
        """The terminator was reached: everything before it has been given
        to ``collect_incoming_data()``.  Override it; calling
        :meth:`set_terminator` here affects the input already received."""
        raise NotImplementedError(f"{type(self).__name__} must override found_terminator()")

    def _collect_incoming_data(self, data: bytes) -> None:
        """A ``collect_incoming_data()`` that appends to ``self.incoming``."""
        self.incoming.append(data)

    def _get_data(self) -> bytes:
        """Everything :meth:`_collect_incoming_data` buffered, joined; the
        buffer is emptied (the same list object is kept)."""
        data = b"".join(self.incoming)
        del self.incoming[:]
        return data

    # -- terminators ----------------------------------------------------------------

    def set_terminator(self, term: Terminator) -> None:
        """Set what ends the next message:

        * ``bytes`` (or ``bytearray``/``memoryview``, stored as bytes): found
          anywhere in the input, even split across reads; ``b""`` acts as
          ``None``;
        * ``int`` >= 0: that many more bytes (``0`` acts as ``None``);
        * ``None``: no terminator; all input goes to
          ``collect_incoming_data()``;
        * ``str``: only with ``use_encoding`` set; encoded with ``encoding``.

        O(1) for bytes, counts and ``None`` (a protocol may switch twice per
        message).

        Raises:
            TypeError: any other type, or ``str`` without ``use_encoding``.
                (CPython stored such a terminator and failed at the next read,
                far from the mistake.)
            ValueError: a negative count.
        """
        kind = type(term)
        if kind is bytes or term is None or (kind is int and term >= 0):  # type: ignore[operator]
            self.terminator = term
        else:
            self.terminator = self._check_terminator(term)

    def get_terminator(self) -> Any:
        """The current terminator (overriding this, in a subclass or on an
        instance, is honoured: it is then asked before every step of the
        input scan)."""
        return self.terminator

    get_terminator = overridable(get_terminator, _getter_replaced)  # type: ignore[assignment]

    def _check_terminator(self, term: Any) -> Any:
        if term is None or type(term) is bytes:
            return term
        if isinstance(term, (bytes, bytearray, memoryview)):
            return bytes(term)
        if isinstance(term, str):
            return self._encode(term, f"the terminator ({term!r})")
        try:
            count = operator.index(term)
        except TypeError:
            raise TypeError(
                f"the terminator must be bytes, an int count or None, "
                f"not {type(term).__name__}") from None
        if count < 0:
            raise ValueError(f"a numeric terminator counts bytes: it cannot be negative "
                             f"({count})")
        return count

    # -- input ------------------------------------------------------------------------

    def handle_read(self) -> None:
        """Receive up to ``ac_in_buffer_size`` bytes and hand them out:
        ``collect_incoming_data()`` for data, ``found_terminator()`` at each
        terminator.  A ``BlockingIOError`` is ignored (nothing to read after
        all); any other ``OSError`` goes to ``handle_error()``.  Replies the
        callbacks push are sent together once the input is handled."""
        try:
            data = self.recv(self.ac_in_buffer_size)
        except BlockingIOError:
            return
        except OSError as why:
            if is_ssl_error(why, "SSLWantReadError"):
                return  # a program's own SSLSocket in the middle of a record
            self.handle_error()
            return
        if type(data) is not bytes:
            data = self._input_bytes(data)
        pending = self._ac_buf
        if pending:
            # A held-back start of a terminator (a few bytes), or what an
            # exception in a callback left unprocessed.
            pos = self._ac_pos
            buf = (pending[pos:] if pos else pending) + data
            if not buf:
                return
        elif data:
            buf = data
        else:
            return
        self._ac_buf = buf
        self._ac_pos = 0
        # Straight to _scan_delimited() for a stock bytes terminator (nearly
        # every read: one call less), else the general _scan_input(), which
        # asks get_terminator() at each step as CPython does.
        term = self.terminator if self._ac_stock_get_terminator else None
        if type(term) is not bytes or not term:
            term = None
        if (self._ac_coalesce and _events.dispatching and self._ac_batch is None
                and self._pc_connected):
            self._ac_batch = []
            try:
                if term is None or self._scan_delimited(term):
                    self._scan_input()
            finally:
                # (Not a reference kept from above: a callback that closed
                # the channel or looked at producer_fifo sent the replies so
                # far, and may have started a new list.)
                batch = self._ac_batch
                self._ac_batch = None
                if batch:
                    if len(batch) == 1 and not self._pc_fifo:
                        self._send_now(batch[0])  # one reply: the usual case
                    else:
                        self._send_batch(batch)
        elif term is None or self._scan_delimited(term):
            self._scan_input()
        if self.max_line is not None:
            self._check_line_limit(data)

    def _check_line_limit(self, data: bytes) -> None:
        """Count what arrived since the last bytes terminator; too much is an
        :class:`InputLimitExceeded` (which reaches ``handle_error()``)."""
        term = self.get_terminator()
        if type(term) is not bytes or not term:
            self._ac_line_bytes = 0  # a count or None: the program asked for it all
            return
        at = data.rfind(term)
        if at < 0:
            self._ac_line_bytes += len(data)
        else:
            self._ac_line_bytes = len(data) - at - len(term)
        if self.max_line is not None and self._ac_line_bytes > self.max_line:
            waiting = self._ac_line_bytes
            self._ac_line_bytes = 0
            raise InputLimitExceeded(
                f"{waiting} bytes received without the terminator {term!r}; "
                f"the limit (max_line) is {self.max_line}")

    def _input_bytes(self, data: Any) -> bytes:
        """``recv()`` (perhaps overridden) returned something else than bytes."""
        if isinstance(data, str):
            # CPython meant to encode here but passed the str type itself.
            return self._encode(data, "recv() data")
        return bytes(data)

    def _scan_input(self) -> None:
        """Hand ``_ac_buf[_ac_pos:]`` to the callbacks, in CPython's steps:
        each step asks for the terminator, then one of :meth:`_collect_rest`
        (none), :meth:`_scan_counted` (a count) or :meth:`_scan_delimited`
        (bytes) handles the input that terminator covers.

        Invariant at every callback: ``_ac_buf[_ac_pos:]`` is what CPython's
        ``ac_in_buffer`` would hold, so callbacks reading it, replacing it or
        calling ``discard_buffers()`` see and get CPython's behaviour.  A
        replaced buffer is noticed by identity (the setter and
        ``discard_buffers()`` never store the object being scanned).
        """
        stock = self._ac_stock_get_terminator
        while self._ac_pos < len(self._ac_buf):
            term: Any = self.terminator if stock else self.get_terminator()
            kind = type(term)
            if kind is not bytes and kind is not int and term is not None:
                term = self._check_terminator(term)
                kind = type(term)
            if not term:
                self._collect_rest()  # None, b"" or a count of 0: everything goes
                break
            if kind is bytes:
                if not self._scan_delimited(term):
                    break
            else:
                self._scan_counted(term)
        # Keep only what is left: at most a held-back start of a terminator.
        pos = self._ac_pos
        if pos:
            buf = self._ac_buf
            self._ac_buf = buf[pos:] if pos < len(buf) else b""
            self._ac_pos = 0

    def _collect_rest(self) -> None:
        buf, pos = self._ac_buf, self._ac_pos
        self.collect_incoming_data(buf[pos:] if pos else buf)
        self._ac_buf = b""  # consumed, whatever the collector did (as CPython)
        self._ac_pos = 0

    def _scan_counted(self, count: int) -> None:
        """One step of a count terminator: ``count`` more bytes, or all there
        is (the count then goes down by what was given)."""
        buf, pos = self._ac_buf, self._ac_pos
        avail = len(buf) - pos
        if avail < count:
            self.collect_incoming_data(buf[pos:] if pos else buf)
            self._ac_buf = b""  # consumed, even if the count-down below fails
            self._ac_pos = 0
            self.terminator = self.terminator - avail
            return
        self.collect_incoming_data(buf[pos:pos + count])
        if self._ac_buf is buf:
            self._ac_pos = pos + count
        else:
            self._advance_replaced(count)
        self.terminator = 0
        self.found_terminator()

    def _scan_delimited(self, term: bytes) -> bool:
        """Messages ending with ``term``, for as long as the terminator stays
        ``term``.  Returns True to go on scanning (the terminator changed or
        the input was replaced), False when the input is used up or all that
        is left may be the start of a terminator (then ``_ac_buf`` holds just
        that, from ``_ac_pos`` 0).

        Each byte is searched once; after :data:`_BATCH_AFTER` messages in a
        row, :meth:`_scan_batched` takes over.
        """
        buf, pos = self._ac_buf, self._ac_pos
        end = len(buf)
        tlen = len(term)
        stock = self._ac_stock_get_terminator
        found = 0
        while True:
            if found >= _BATCH_AFTER:
                batched = self._scan_batched(term)
                if batched is not None:
                    return True
                # No terminator in the window: one long message, found below.
            at = buf.find(term, pos)
            if at < 0:
                # (A 1-byte terminator has no proper prefix to hold back.)
                keep = held_back(buf, term, pos) if tlen > 1 else 0
                if keep < end - pos:
                    self.collect_incoming_data(buf[pos:end - keep] if pos or keep else buf)
                    if self._ac_buf is not buf:
                        new = self._ac_buf
                        self._ac_buf = new[max(self._ac_pos, len(new) - keep):]
                        self._ac_pos = 0
                        return False
                self._ac_buf = buf[end - keep:] if keep else b""
                self._ac_pos = 0
                return False
            if at > pos:
                self.collect_incoming_data(buf[pos:at])
                if self._ac_buf is not buf:
                    self._advance_replaced(at + tlen - pos)
                    self.found_terminator()
                    return True
            pos = self._ac_pos = at + tlen
            self.found_terminator()
            if self._ac_buf is not buf:
                return True
            if pos == end:
                self._ac_buf = b""  # used up: the usual end of a read
                self._ac_pos = 0
                return False
            following = self.terminator if stock else self.get_terminator()
            if following is not term and following != term:
                return True
            found += 1

    def _scan_batched(self, term: bytes) -> Optional[bool]:
        """Messages ending with ``term``, cut with one ``split()`` per window
        of input instead of a ``find()`` and a slice each (the window doubles
        while the terminator holds, so the work wasted when it changes stays
        small).  Returns True once it handled messages (go on scanning), or
        None if the first window holds no terminator."""
        buf, pos = self._ac_buf, self._ac_pos
        end = len(buf)
        tlen = len(term)
        stock = self._ac_stock_get_terminator
        window = _FIRST_WINDOW
        while pos < end:
            stop = min(pos + window, end)
            pieces = (buf if stop == end and not pos else buf[pos:stop]).split(term)
            if len(pieces) == 1:
                return True if window > _FIRST_WINDOW else None
            pieces.pop()  # runs past the window: not a whole message
            for piece in pieces:
                if piece:
                    self.collect_incoming_data(piece)
                    if self._ac_buf is not buf:
                        self._advance_replaced(len(piece) + tlen)
                        self.found_terminator()
                        return True
                pos += len(piece) + tlen
                self._ac_pos = pos
                self.found_terminator()
                if self._ac_buf is not buf:
                    return True
                following = self.terminator if stock else self.get_terminator()
                if following is not term and following != term:
                    return True
            window += window  # the terminator held: bigger bites
        return True

    def _advance_replaced(self, count: int) -> None:
        """``collect_incoming_data()`` replaced the pending input: drop
        ``count`` bytes from the start of the new input, as CPython (which
        slices whatever ``ac_in_buffer`` then holds) does."""
        self._ac_pos = min(self._ac_pos + count, len(self._ac_buf))

    # -- output -----------------------------------------------------------------------

    def push(self, data: Union[BytesLike, str]) -> None:
        """Queue ``data`` for sending, and send what the socket takes now
        (while ``handle_read()`` runs: once it returns, with the other
        replies of that read).

        ``bytes`` are queued as they are; a ``bytearray`` is copied (later
        changes to it are not sent); a ``memoryview`` is queued as a view, so
        the memory it shows must not change until it is sent.  Sent in
        pieces of at most ``ac_out_buffer_size`` bytes per ``send()``.

        Raises:
            TypeError: ``data`` is not bytes-like (``str`` is accepted only
                with ``use_encoding`` set).
        """
        if type(data) is not bytes:
            data = self._output_bytes(data)
        if not data:
            self.initiate_send()  # as CPython, which queues b"" and sends
            return
        if self.out_high_water is not None:
            self._count_queued(len(data))
        batch = self._ac_batch
        if batch is not None:
            batch.append(data)
        elif self._ac_coalesce:
            if not self._pc_fifo and self._pc_connected:
                self._send_now(data)
            else:
                queue_add(self._fifo_for_write(), data)
                self.initiate_send()
        else:
            # CPython's way, for classes with a send()/initiate_send() of
            # their own: pieces of at most ac_out_buffer_size, then one send.
            fifo = self._fifo_for_write()
            obs = self.ac_out_buffer_size
            if len(data) > obs:
                queue_add(fifo, items=[data[i:i + obs] for i in range(0, len(data), obs)])
            else:
                queue_add(fifo, data)
            self.initiate_send()
            self._update_interest()

    def _output_bytes(self, data: Any) -> Any:
        if isinstance(data, bytes):
            return data
        if isinstance(data, bytearray):
            return bytes(data)
        if isinstance(data, memoryview):
            return byte_view(data)
        if isinstance(data, str):
            return self._encode(data, f"data for push() ({data[:40]!r})")
        raise TypeError(f"push() takes bytes, bytearray or memoryview data, "
                        f"not {type(data).__name__}")

    def push_with_producer(self, producer: Any) -> None:
        """Queue ``producer``: an object whose ``more()`` returns the next
        bytes to send (``b""`` once exhausted), consulted only when
        everything queued before it has been sent.  Bytes-like objects (and
        ``str`` with ``use_encoding``) are accepted too, as by CPython, and
        ``None`` closes the channel when reached, like
        :meth:`close_when_done`.

        Raises:
            TypeError: ``producer`` is none of these.
        """
        if producer is not None and not hasattr(producer, "more"):
            if isinstance(producer, str):
                producer = self._output_bytes(producer)
            elif not isinstance(producer, (bytes, bytearray)):
                try:
                    producer = byte_view(producer)
                except TypeError:
                    raise TypeError(
                        f"push_with_producer() takes an object with a more() method or "
                        f"bytes-like data, not {type(producer).__name__}") from None
        self._spill_batch()
        queue_add(self._fifo_for_write(), producer)
        self.initiate_send()
        self._update_interest()

    def close_when_done(self) -> None:
        """Close the channel once everything queued so far has been sent
        (queues ``None``)."""
        self._spill_batch()
        queue_add(self._fifo_for_write(), None)
        self._update_interest()

    def initiate_send(self) -> None:
        """Make one ``send()`` from the head of ``producer_fifo``: the head
        item (at most ``ac_out_buffer_size`` bytes of it), joined with the
        data items after it that fit in that size; producers are consulted
        until there is data; the channel closes if the head is ``None``.

        Does nothing while not connected.  Errors from ``send()`` and from
        producers go to ``handle_error()``.
        """
        fifo = self._pc_fifo
        while fifo and self._pc_connected:
            first = fifo[0]
            if type(first) is not bytes and type(first) is not memoryview:
                if first is None:
                    del fifo[0]
                    self.handle_close()
                    break
                try:
                    first = self._head_data(fifo, first)
                except REraised:
                    raise
                except Exception:
                    self.handle_error()
                    break
                if first is None:
                    continue  # a producer was consulted: look at the head again
            size = len(first)
            if not size:
                del fifo[0]
                continue
            obs = self.ac_out_buffer_size
            if size >= obs:
                data: Any = first if size == obs else memoryview(first)[:obs]
            elif len(fifo) > 1 and self._ac_coalesce:
                data = _gather(fifo, obs)
            else:
                data = first
            try:
                sent = self.send(data)
            except OSError:
                self.handle_error()
                break
            if sent:
                if self.out_high_water is not None:
                    self._count_queued(-sent)
                if fifo and fifo[0] is first:
                    _consume(fifo, sent)
            break
        self._update_interest()

    def _send_now(self, data: Any) -> None:
        """Send ``data``, which nothing queued precedes; queue what the
        socket does not take."""
        obs = self.ac_out_buffer_size
        size = len(data)
        try:
            sent = self.send(data if size <= obs else memoryview(data)[:obs])
        except OSError:
            queue_add(self._fifo_for_write(), data)  # kept, as CPython keeps it queued
            self.handle_error()
            return
        if sent and self.out_high_water is not None:
            self._count_queued(-sent)
        if sent < size:
            queue_add(self._fifo_for_write(), memoryview(data)[sent:] if sent else data)
            self._update_interest()

    def _flush_batch(self, keep_batching: bool = False) -> None:
        """Send the replies held so far in this ``handle_read()`` (the
        program looks at the queue, closes, discards...)."""
        batch = self._ac_batch
        self._ac_batch = [] if keep_batching else None
        if batch:
            self._send_batch(batch)

    def _send_batch(self, batch: List[Any]) -> None:
        """Send the replies pushed while ``handle_read()`` ran: one ``send()``
        if nothing was queued before them."""
        if self._pc_fifo:  # older output still queued: keep the order
            queue_add(self._pc_fifo, items=batch)
            self.initiate_send()
            return
        obs = self.ac_out_buffer_size
        if len(batch) == 1:
            self._send_now(batch[0])
        elif sum(map(len, batch)) <= obs:
            self._send_now(b"".join(batch))
        else:
            queue_add(self._fifo_for_write(), items=batch)
            self.initiate_send()

    def _spill_batch(self) -> None:
        """Move the held replies into the queue, in order, before something
        that is not plain data is queued after them."""
        batch = self._ac_batch
        if batch:
            queue_add(self._fifo_for_write(), items=batch)
            batch.clear()

    def _fifo_for_write(self) -> Any:
        fifo = self._pc_fifo
        if fifo is None:
            fifo = self._pc_fifo = OutputQueue()
            fifo._owner = self
        return fifo

    def _fifo_grew(self) -> None:
        """The output queue got an item (called by :class:`OutputQueue`)."""
        if self._ac_writable_seen is not True:
            self._interest_changed()

    def _head_data(self, fifo: Any, first: Any) -> Any:
        """Turn the head of the queue (neither bytes, memoryview nor None)
        into data to send, replacing it in the queue; or, for a producer, put
        its next piece in front of it (or drop it when it is exhausted) and
        return None."""
        if not first:
            del fifo[0]  # an empty buffer, or a producer that says it is empty
            return None
        if isinstance(first, bytes):
            return first
        if isinstance(first, bytearray):
            # A copy, so that a view of it kept across partial sends does not
            # stop the owner from resizing it.
            data: Any = bytes(first)
        elif isinstance(first, str):
            data = self._output_bytes(first)
        elif hasattr(first, "more"):
            piece = first.more()
            if piece:
                queue_add(fifo, piece, left=True)
            elif fifo and fifo[0] is first:
                del fifo[0]
            else:  # more() itself changed the queue
                fifo.remove(first)
            return None
        else:
            try:
                data = byte_view(first)
            except TypeError:
                raise TypeError(f"producer_fifo holds a {type(first).__name__}: entries must "
                                f"be bytes-like, None, or have a more() method") from None
        fifo[0] = data
        return data

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

    def handle_write(self) -> None:
        self.initiate_send()

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

    # -- output flow control -----------------------------------------------------------

    def _count_queued(self, delta: int) -> None:
        # Producers' pieces are sent but were never counted in: never below 0.
        queued = self._ac_queued = max(self._ac_queued + delta, 0)
        high = self.out_high_water
        if high is None:
            return
        if not self._ac_output_full:
            if queued > high:
                self._ac_output_full = True
                self.handle_output_high_water()
        else:
            low = self.out_low_water
            if queued <= (high // 4 if low is None else low):
                self._ac_output_full = False
                self.handle_output_low_water()

    def handle_output_high_water(self) -> None:
        """More than ``out_high_water`` bytes are queued: stop reading from
        this channel (override to do something else, e.g. drop the peer)."""
        self.pause_reading()

    def handle_output_low_water(self) -> None:
        """The queue drained to ``out_low_water``: read again."""
        self.resume_reading()

    # -- helpers ------------------------------------------------------------------------

    def _update_interest(self) -> None:
        """Tell the loop if ``writable()`` would now answer differently from
        what it last told the loop.  A push that is sent at once on an idle
        channel thus costs the loop nothing."""
        if (bool(self._pc_fifo) or not self._pc_connected) is not self._ac_writable_seen:
            self._interest_changed()

    def _encode(self, text: str, what: str) -> bytes:
        """``text`` encoded with ``encoding`` if ``use_encoding`` is set;
        otherwise a ``TypeError`` saying what to do about ``what``."""
        if not self.use_encoding:
            raise TypeError(f"{what} must be bytes, not str: encode it, or set "
                            f"use_encoding = True to have str encoded with {self.encoding!r}")
        return text.encode(self.encoding)


def _gather(fifo: Any, limit: int) -> Any:
    """The data items at the head of ``fifo`` that fit in ``limit`` bytes,
    joined (at least the head).  O(items taken)."""
    parts: List[Any] = []
    total = 0
    for item in fifo:
        kind = type(item)
        if kind is not bytes and kind is not memoryview:
            break
        size = len(item)
        if parts and total + size > limit:
            break
        parts.append(item)
        total += size
    return parts[0] if len(parts) == 1 else b"".join(parts)


def _consume(fifo: Any, sent: int) -> None:
    """Drop ``sent`` bytes from the data items at the head of ``fifo``; a
    partly sent item is replaced by a view of its rest (never a copy)."""
    while sent:
        head = fifo[0]
        size = len(head)
        if sent >= size:
            del fifo[0]
            sent -= size
        else:
            view = head if type(head) is memoryview else memoryview(head)
            fifo[0] = view[sent:]
            return
