"""async_chat's output side: the queue, its producers, and sending.

A mixin of :class:`pollchat.chat.async_chat`; see docs/design.md ("async_chat:
input and output").  Replies pushed while the channel's own ``handle_read()``
runs for the loop are held and sent together; queued data items are joined
up to ``ac_out_buffer_size`` per ``send()``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, List, Optional, Union

from .channel import observed
from .dispatch import REraised
from .producers import OutputQueue, byte_view, queue_add

if TYPE_CHECKING:
    from .channel import dispatcher as _Channel
    from .chat import async_chat
else:
    _Channel = object  # a mixin at run time; typed as the channel it is part of

__all__ = ["BytesLike", "ChatOutput"]

BytesLike = Union[bytes, bytearray, memoryview]


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


class ChatOutput(_Channel):
    """The output methods of ``async_chat`` (a mixin: the state they use is
    set up by ``async_chat.__init__``)."""

    if TYPE_CHECKING:  # async_chat's
        def _encode(self, text: str, what: str) -> bytes: ...

    producer_fifo = observed("fifo", "The output queue.", _get_producer_fifo,
                             _set_producer_fifo)

    # (Declared for type checkers; async_chat sets them.)
    _ac_batch: Optional[List[Any]]
    _ac_writable_seen: Optional[bool]
    _ac_queued: int
    _ac_output_full: bool
    _ac_coalesce: bool
    _pc_connected: bool
    _pc_fifo: Any
    ac_out_buffer_size: int
    out_high_water: Optional[int]
    out_low_water: Optional[int]

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
                queue_add(fifo, items=_pieces(data, obs))
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

    def handle_write(self) -> None:
        self.initiate_send()

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

    def _update_interest(self) -> None:
        """Tell the loop if ``writable()`` would now answer differently from
        what it last told the loop.  A push that is sent at once on an idle
        channel thus costs the loop nothing."""
        if (bool(self._pc_fifo) or not self._pc_connected) is not self._ac_writable_seen:
            self._interest_changed()


def _pieces(data: Any, size: int) -> List[Any]:
    """``data`` cut in pieces of ``size`` bytes, as CPython's ``push()`` cut
    it.  (A function of its own: a comprehension in ``push()`` would make
    ``data`` a cell variable, paid for on every push.)"""
    return [data[i:i + size] for i in range(0, len(data), size)]


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
