"""async_chat: a dispatcher that splits its input at terminators and sends
a queue of data and producers.

The behaviour is CPython 3.11's asynchat (see the seed documentation), with
three kinds of difference:

* **Linear time.**  Input is scanned with an offset into the received bytes:
  each byte is searched once (plus ``len(terminator) - 1`` bytes of overlap
  when a terminator is split across reads), and nothing is re-sliced per
  line.  Output is sent through :class:`memoryview` slices: a partial send
  never copies what is left.
* **Interest is managed.**  ``readable()``/``writable()`` are trusted by the
  loop (:func:`~pollchat.loop.managed_interest`); every method that can change
  ``writable()``'s answer tells the loop, so an idle chat channel costs
  nothing per loop pass.  Code that appends to ``producer_fifo`` directly,
  without calling ``push*()``/``initiate_send()`` afterwards, needs the
  loop's strict mode (``POLLCHAT_STRICT=1``).
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

import collections
import operator
from typing import Any, Deque, Dict, List, Optional, Union

from .channel import dispatcher
from .dispatch import REraised
from .loop import managed_interest
from .tls import is_ssl_want_read

__all__ = ["InputLimitExceeded", "async_chat", "simple_producer", "find_prefix_at_end"]

#: What ``set_terminator()`` accepts (after conversion: bytes, int or None).
Terminator = Union[bytes, bytearray, memoryview, str, int, None]
BytesLike = Union[bytes, bytearray, memoryview]

# Input scanning (see async_chat._scan_input): messages found one find() at a
# time before the input is cut in batches, and the first batch's size.
_BATCH_AFTER = 2
_FIRST_WINDOW = 2048


def find_prefix_at_end(haystack: Any, needle: Any) -> int:
    """Return the length of the longest proper prefix of ``needle`` that
    ``haystack`` ends with (0 if none).

    Both arguments are ``bytes`` or both ``str``.  The caller is expected to
    have checked that ``needle`` itself does not occur at the end: a full
    match is never reported (the result is at most ``len(needle) - 1``).

    >>> find_prefix_at_end(b"qwerty\\r", b"\\r\\n")
    1
    """
    if not needle:
        return 0
    return _held_back(haystack, needle, 0)


def _held_back(buf: Any, term: Any, start: int) -> int:
    """How many bytes at the end of ``buf[start:]`` could be the beginning of
    ``term`` (the longest such proper prefix; ``term`` non-empty).

    Only the last ``len(term) - 1`` bytes are examined, and only where the
    first byte of ``term`` occurs, so the cost does not depend on the size of
    the buffer.
    """
    end = len(buf)
    lead = term[:1]
    at = buf.find(lead, max(start, end - len(term) + 1))
    while at >= 0:
        # The earliest candidate that matches gives the longest prefix.
        if buf.startswith(term[:end - at], at):
            return end - at
        at = buf.find(lead, at + 1)
    return 0


def _byte_view(data: Any) -> Any:
    """``data`` as a 1-D view of bytes, so that ``len()`` and slicing count
    bytes (a memoryview of ``array('i')`` counts items)."""
    view = data if isinstance(data, memoryview) else memoryview(data)
    if view.ndim == 1 and view.itemsize == 1:
        return view
    if view.c_contiguous:
        return view.cast("B")
    return memoryview(view.tobytes())


class InputLimitExceeded(ValueError):
    """A peer sent more than ``max_line`` bytes without a terminator."""


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

    def __init__(self, sock: Any = None, map: Optional[Dict[Any, Any]] = None) -> None:
        # Input state: _ac_buf[_ac_pos:] is what CPython calls ac_in_buffer.
        # (Instance attributes only: a class attribute of the same name would
        # stop CPython 3.11 from specializing the hot loop's loads of them.)
        self._ac_buf = b""
        self._ac_pos = 0
        self.incoming: List[bytes] = []
        self.producer_fifo: Deque[Any] = collections.deque()
        # The last answer writable() gave (None: never asked), so that a
        # state change tells the loop only when that answer changes.
        self._ac_writable_seen: Optional[bool] = None
        self._ac_line_bytes = 0  # received since the last terminator (max_line)
        self._ac_queued = 0  # bytes pushed and not yet sent (out_high_water)
        self._ac_output_full = False
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
            # handle_read() notices a replaced buffer by identity: make the
            # same bytes at a new start a new object.
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

        Raises:
            TypeError: any other type, or ``str`` without ``use_encoding``.
                (CPython stored such a terminator and failed at the next read,
                far from the mistake.)
            ValueError: a negative count.
        """
        self.terminator = self._check_terminator(term)

    def get_terminator(self) -> Any:
        """The current terminator (overriding this is honoured: it is asked
        before every step of the input scan)."""
        return self.terminator

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
        all); any other ``OSError`` goes to ``handle_error()``."""
        try:
            data = self.recv(self.ac_in_buffer_size)
        except BlockingIOError:
            return
        except OSError as why:
            if is_ssl_want_read(why):  # a program's SSLSocket mid-record (issue 14)
                return
            self.handle_error()
            return
        if type(data) is not bytes:
            data = self._input_bytes(data)
        pending = self._ac_buf
        pos = self._ac_pos
        if pos < len(pending):
            # A held-back start of a terminator (a few bytes), or what an
            # exception in a callback left unprocessed.
            buf = (pending[pos:] if pos else pending) + data
        elif data:
            buf = data
        else:
            return
        self._ac_buf = buf
        self._ac_pos = 0
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
        if self._ac_line_bytes > self.max_line:
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
        """Hand ``_ac_buf[_ac_pos:]`` to the callbacks, in CPython's steps.

        Invariant at every callback: ``_ac_buf[_ac_pos:]`` is what CPython's
        ``ac_in_buffer`` would hold, so callbacks reading it, replacing it or
        calling ``discard_buffers()`` see and get CPython's behaviour.  A
        replaced buffer is noticed by identity (the setter and
        ``discard_buffers()`` never store the object being scanned).

        Cost: a bytes terminator is searched for from where the last one
        ended, so each byte is examined about once.  Once the terminator has
        stayed the same for a few messages, the input is cut with one
        ``split()`` per window of bytes instead of a ``find()`` and a slice
        per message (the window doubles while the terminator holds, so the
        work wasted when it changes stays small).
        """
        buf = self._ac_buf
        pos = self._ac_pos
        end = len(buf)
        # Skip the call when get_terminator() is the stock one: same answer.
        # (Not through self.__dict__: touching it makes CPython 3.11 give the
        # instance a real dict, which slows every attribute access on it.)
        getter = self.get_terminator
        ask = getattr(getter, "__func__", None) is not _stock_get_terminator \
            or getattr(getter, "__self__", None) is not self
        last_term: Any = None  # the bytes terminator of the previous message
        stable = 0  # messages in a row that kept it
        window = _FIRST_WINDOW
        while True:
            if self._ac_buf is not buf:
                # A callback replaced the input (setter, discard_buffers()).
                buf = self._ac_buf
                pos = self._ac_pos
                end = len(buf)
            if pos >= end:
                break
            term = self.get_terminator() if ask else self.terminator
            if type(term) is not bytes:
                term = self._check_terminator(term)
            if type(term) is bytes and term:
                if term is not last_term and term != last_term:
                    last_term = term
                    stable = 0
                    window = _FIRST_WINDOW
                tlen = len(term)
                if stable >= _BATCH_AFTER:
                    stop = min(pos + window, end)
                    pieces = (buf if stop == end and not pos else buf[pos:stop]).split(term)
                    if len(pieces) > 1:
                        pieces.pop()  # runs past the window: not a whole message
                        for piece in pieces:
                            if piece:
                                self.collect_incoming_data(piece)
                                if self._ac_buf is not buf:
                                    buf, pos, end = self._advance_replaced(len(piece) + tlen)
                                    self._ac_pos = pos
                                    self.found_terminator()
                                    break
                            pos += len(piece) + tlen
                            self._ac_pos = pos
                            self.found_terminator()
                            if self._ac_buf is not buf:
                                break
                            nxt = self.get_terminator() if ask else self.terminator
                            if nxt is not term and nxt != term:
                                break
                        else:
                            window += window  # the terminator held: bigger bites
                        continue
                    # No terminator in the window: one long message, below.
                at = buf.find(term, pos)
                if at < 0:
                    # (A 1-byte terminator has no proper prefix to hold back.)
                    keep = _held_back(buf, term, pos) if tlen > 1 else 0
                    if keep < end - pos:
                        self.collect_incoming_data(buf[pos:end - keep] if pos or keep else buf)
                        if self._ac_buf is not buf:
                            buf = self._ac_buf
                            end = len(buf)
                            pos = max(self._ac_pos, end - keep)
                            break
                    pos = end - keep
                    break
                if at > pos:
                    self.collect_incoming_data(buf[pos:at])
                    if self._ac_buf is not buf:
                        buf, pos, end = self._advance_replaced(at + tlen - pos)
                    else:
                        pos = at + tlen
                else:
                    pos = at + tlen
                self._ac_pos = pos
                stable += 1
                self.found_terminator()
            elif not term:
                # None, b"" or a count of 0: everything goes.
                self.collect_incoming_data(buf[pos:] if pos else buf)
                pos = end
                break
            else:
                # A count (_check_terminator() let nothing else through).
                avail = end - pos
                if avail < term:
                    self.collect_incoming_data(buf[pos:] if pos else buf)
                    pos = self._ac_pos = end  # consumed, even if the count-down fails
                    self.terminator = self.terminator - avail
                    break
                self.collect_incoming_data(buf[pos:pos + term])
                if self._ac_buf is buf:
                    pos += term
                else:
                    buf, pos, end = self._advance_replaced(term)
                self._ac_pos = pos
                self.terminator = 0
                self.found_terminator()
        # Keep only what is left: at most a held-back start of a terminator.
        if pos < end:
            self._ac_buf = buf[pos:] if pos else buf
        else:
            self._ac_buf = b""
        self._ac_pos = 0

    def _advance_replaced(self, count: int) -> tuple:
        """``collect_incoming_data()`` replaced the pending input: drop
        ``count`` bytes from the start of the new input, as CPython (which
        slices whatever ``ac_in_buffer`` then holds) does."""
        buf = self._ac_buf
        end = len(buf)
        return buf, min(self._ac_pos + count, end), end

    # -- output -----------------------------------------------------------------------

    def push(self, data: Union[BytesLike, str]) -> None:
        """Queue ``data`` for sending, and send what the socket takes now.

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
        if data:
            self.producer_fifo.append(data)
            if self.out_high_water is not None:
                self._count_queued(len(data))
        self.initiate_send()
        self._update_interest()

    def _output_bytes(self, data: Any) -> Any:
        if isinstance(data, bytes):
            return data
        if isinstance(data, bytearray):
            return bytes(data)
        if isinstance(data, memoryview):
            return _byte_view(data)
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
                    producer = _byte_view(producer)
                except TypeError:
                    raise TypeError(
                        f"push_with_producer() takes an object with a more() method or "
                        f"bytes-like data, not {type(producer).__name__}") from None
        self.producer_fifo.append(producer)
        self.initiate_send()
        self._update_interest()

    def close_when_done(self) -> None:
        """Close the channel once everything queued so far has been sent
        (queues ``None``)."""
        self.producer_fifo.append(None)
        self._update_interest()

    def initiate_send(self) -> None:
        """Make one ``send()`` of at most ``ac_out_buffer_size`` bytes from
        the head of ``producer_fifo``, consulting producers until there is
        data; close the channel if the head is ``None``.

        Does nothing while not connected.  Errors from ``send()`` and from
        producers go to ``handle_error()``.
        """
        fifo = self.producer_fifo
        while fifo and self.connected:
            first = fifo[0]
            if type(first) is not bytes and type(first) is not memoryview:
                if first is None:
                    fifo.popleft()
                    self.handle_close()
                    break
                try:
                    first = self._head_data(first)
                except REraised:
                    raise
                except Exception:
                    self.handle_error()
                    break
                if first is None:
                    continue  # a producer was consulted: look at the head again
            size = len(first)
            if not size:
                fifo.popleft()
                continue
            obs = self.ac_out_buffer_size
            data = first if size <= obs else memoryview(first)[:obs]
            try:
                sent = self.send(data)
            except OSError:
                self.handle_error()
                break
            if sent and self.out_high_water is not None:
                self._count_queued(-sent)
            if sent and fifo and fifo[0] is first:
                if sent >= size:
                    fifo.popleft()
                else:
                    # Linear time: keep a view of the rest, never a copy.
                    view = first if type(first) is memoryview else memoryview(first)
                    fifo[0] = view[sent:]
            break
        self._update_interest()

    def _head_data(self, first: Any) -> Any:
        """Turn the head of ``producer_fifo`` (neither bytes, memoryview nor
        None) into data to send, replacing it in the queue; or, for a
        producer, put its next piece in front of it (or drop it when it is
        exhausted) and return None."""
        fifo = self.producer_fifo
        if not first:
            fifo.popleft()  # an empty buffer, or a producer that says it is empty
            return None
        if isinstance(first, bytes):
            return first
        if isinstance(first, bytearray):
            # A copy, so that a view of it kept across partial sends does not
            # stop the owner from resizing it.
            data = bytes(first)
        elif isinstance(first, str):
            data = self._output_bytes(first)
        elif hasattr(first, "more"):
            piece = first.more()
            if piece:
                fifo.appendleft(piece)
            elif fifo and fifo[0] is first:
                fifo.popleft()
            else:  # more() itself changed the queue
                fifo.remove(first)
            return None
        else:
            try:
                data = _byte_view(first)
            except TypeError:
                raise TypeError(f"producer_fifo holds a {type(first).__name__}: entries must "
                                f"be bytes-like, None, or have a more() method") from None
        fifo[0] = data
        return data

    def discard_buffers(self) -> None:
        """Drop all pending input (``ac_in_buffer`` and ``incoming``) and
        all queued output, producers and close request included."""
        self._ac_buf = b""
        self._ac_pos = 0
        del self.incoming[:]
        self.producer_fifo.clear()
        if self._ac_queued:
            self._count_queued(-self._ac_queued)
        self._update_interest()

    # -- events and predicates ------------------------------------------------------

    def handle_write(self) -> None:
        self.initiate_send()

    def handle_close(self) -> None:
        self.close()

    @managed_interest
    def readable(self) -> bool:
        """Always: input is accepted whatever the buffers hold (a limit here
        would break a terminator changed by ``set_terminator()``)."""
        return True

    @managed_interest
    def writable(self) -> bool:
        """While output is queued, or until connected (to see the connect
        complete)."""
        answer = bool(self.producer_fifo) or not self.connected
        self._ac_writable_seen = answer
        return answer

    # -- output flow control -----------------------------------------------------------

    def _count_queued(self, delta: int) -> None:
        # Producers' pieces are sent but were never counted in: never below 0.
        queued = self._ac_queued = max(self._ac_queued + delta, 0)
        if not self._ac_output_full:
            if queued > self.out_high_water:
                self._ac_output_full = True
                self.handle_output_high_water()
        else:
            low = self.out_low_water
            if queued <= (self.out_high_water // 4 if low is None else low):
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
        if (bool(self.producer_fifo) or not self.connected) is not self._ac_writable_seen:
            self._interest_changed()

    def _encode(self, text: str, what: str) -> bytes:
        """``text`` encoded with ``encoding`` if ``use_encoding`` is set;
        otherwise a ``TypeError`` saying what to do about ``what``."""
        if not self.use_encoding:
            raise TypeError(f"{what} must be bytes, not str: encode it, or set "
                            f"use_encoding = True to have str encoded with {self.encoding!r}")
        return text.encode(self.encoding)


_stock_get_terminator = async_chat.get_terminator


class simple_producer:
    """A producer handing out ``data`` in pieces of ``buffer_size`` bytes.

    ``more()`` returns the next piece, then ``b""`` once all is given.  The
    ``data`` attribute is what remains.  A ``buffer_size`` of 0 or less hands
    out everything at once.  Linear time: pieces are cut at an offset, the
    remainder is not copied on each call.
    """

    def __init__(self, data: Any, buffer_size: int = 512) -> None:
        self.data = data
        self.buffer_size = buffer_size

    @property
    def data(self) -> Any:
        pos = self._pos
        return self._data[pos:] if pos else self._data

    @data.setter
    def data(self, value: Any) -> None:
        self._data = value
        self._pos = 0

    def more(self) -> Any:
        data = self._data
        pos = self._pos
        size = self.buffer_size
        if size > 0 and len(data) - pos > size:
            self._pos = pos + size
            return data[pos:pos + size]
        rest = data[pos:] if pos else data
        self._data = b""
        self._pos = 0
        return rest
