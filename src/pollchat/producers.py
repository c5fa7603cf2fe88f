"""Producers and byte helpers for :mod:`pollchat.chat`.

* :class:`simple_producer` and :func:`find_prefix_at_end`: asynchat's public
  helpers, in linear time.
* :class:`OutputQueue`: the ``producer_fifo`` of an ``async_chat``, a
  :class:`collections.deque` that tells its channel when something is added
  to it, so that legacy code appending to it directly is served without the
  loop asking every channel on every pass.
"""

from __future__ import annotations

import collections
from typing import Any, Iterable, Optional

__all__ = ["OutputQueue", "byte_view", "find_prefix_at_end", "held_back", "queue_add",
           "simple_producer"]

_append = collections.deque.append
_appendleft = collections.deque.appendleft
_extend = collections.deque.extend
_extendleft = collections.deque.extendleft
_insert = collections.deque.insert


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
    return int(held_back(haystack, needle, 0))


def held_back(buf: Any, term: Any, start: int) -> int:
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
            return int(end - at)
        at = buf.find(lead, at + 1)
    return 0


def byte_view(data: Any) -> memoryview:
    """``data`` as a 1-D view of bytes, so that ``len()`` and slicing count
    bytes (a memoryview of ``array('i')`` counts items).

    Raises:
        TypeError: ``data`` does not support the buffer protocol.
    """
    view = data if isinstance(data, memoryview) else memoryview(data)
    if view.ndim == 1 and view.itemsize == 1:
        return view
    if view.c_contiguous:
        return view.cast("B")
    return memoryview(view.tobytes())


class OutputQueue(collections.deque):  # type: ignore[type-arg]
    """An ``async_chat``'s ``producer_fifo``: a deque that calls its owner's
    ``_fifo_grew()`` whenever an item is added (``append``, ``appendleft``,
    ``extend``, ``extendleft``, ``insert``, ``+=``).

    The library itself adds through the plain deque methods and reports the
    change once; this is for code that touches the queue directly.  Removing
    items is not reported: a channel watched for writes with nothing to send
    finds that out at its next write event.  ``repr()`` and comparisons are
    those of a deque.
    """

    __slots__ = ("_owner",)

    def __init__(self, iterable: Iterable[Any] = (), maxlen: Optional[int] = None) -> None:
        super().__init__(iterable, maxlen)
        self._owner: Any = None

    def _grew(self) -> None:
        owner = self._owner
        if owner is not None:
            owner._fifo_grew()

    def append(self, item: Any) -> None:
        _append(self, item)
        self._grew()

    def appendleft(self, item: Any) -> None:
        _appendleft(self, item)
        self._grew()

    def extend(self, items: Iterable[Any]) -> None:
        _extend(self, items)
        self._grew()

    def extendleft(self, items: Iterable[Any]) -> None:
        _extendleft(self, items)
        self._grew()

    def insert(self, index: int, item: Any) -> None:
        _insert(self, index, item)
        self._grew()

    def __iadd__(self, items: Iterable[Any]) -> OutputQueue:
        _extend(self, items)
        self._grew()
        return self

    def __repr__(self) -> str:
        return "deque(%r)" % (list(self),)


def queue_add(queue: Any, item: Any = None, items: Optional[Iterable[Any]] = None,
              left: bool = False) -> None:
    """Add ``item`` (or every one of ``items``) to an output queue, without
    the :class:`OutputQueue` notification: for the library, which reports its
    own changes once.  A queue of the program's own (any container with
    deque-like methods) gets its methods called."""
    if type(queue) is OutputQueue:
        if items is not None:
            _extend(queue, items)
        elif left:
            _appendleft(queue, item)
        else:
            _append(queue, item)
    elif items is not None:
        queue.extend(items)
    elif left:
        queue.appendleft(item)
    else:
        queue.append(item)


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
