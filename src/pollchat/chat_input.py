"""async_chat's input side: terminators, and the scan of what a read brought.

A mixin of :class:`pollchat.chat.async_chat`; see there for the class as
programs use it, and docs/design.md ("async_chat: input and output") for how
the scan works.  The three kinds of terminator each have their method
(``_scan_delimited``, ``_scan_batched``, ``_scan_counted``); ``_scan_input``
steps between them, asking for the terminator at every step, as CPython does.
"""

from __future__ import annotations

import operator
from typing import TYPE_CHECKING, Any, List, Optional, Union

from . import dispatch as _events
from .channel import overridable
from .dispatch import is_ssl_error
from .producers import held_back

if TYPE_CHECKING:
    from .channel import dispatcher as _Channel
    from .chat import async_chat
else:
    _Channel = object  # a mixin at run time; typed as the channel it is part of

__all__ = ["ChatInput", "InputLimitExceeded", "Terminator"]

#: What ``set_terminator()`` accepts (after conversion: bytes, int or None).
Terminator = Union[bytes, bytearray, memoryview, str, int, None]

# Input scanning: messages found one find() at a time before the input is
# cut in batches with split(), and the first batch's window in bytes.
_BATCH_AFTER = 2
_FIRST_WINDOW = 2048


class InputLimitExceeded(ValueError):
    """A peer sent more than ``max_line`` bytes without a terminator."""


def _getter_replaced(channel: async_chat) -> None:
    # An instance's own get_terminator(): ask it at every step, as CPython.
    channel._ac_stock_get_terminator = False


class ChatInput(_Channel):
    """The input methods of ``async_chat`` (a mixin: the state they use is
    set up by ``async_chat.__init__``)."""

    if TYPE_CHECKING:  # the output side's, and async_chat's
        def _encode(self, text: str, what: str) -> bytes: ...
        def _send_now(self, data: Any) -> None: ...
        def _send_batch(self, batch: List[Any]) -> None: ...

    # (Declared for type checkers; async_chat sets them.)
    _ac_buf: bytes
    _ac_pos: int
    _ac_batch: Optional[List[Any]]
    _ac_line_bytes: int
    _ac_stock_get_terminator: bool
    _pc_replaced_get_terminator: Any  # an instance's own get_terminator (overridable)
    _ac_coalesce: bool
    _pc_connected: bool
    _pc_fifo: Any
    terminator: Any
    incoming: List[bytes]
    ac_in_buffer_size: int
    max_line: Optional[int]

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
