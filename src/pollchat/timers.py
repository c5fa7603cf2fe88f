"""Timers: a heap of deadlines on :func:`time.monotonic`.

Cancelling is O(1) and lazy: a cancelled handle stays in the heap until it
reaches the top, unless cancelled handles come to outnumber live ones, when
the heap is rebuilt without them (pyftpdlib and asyncio do the same).
"""

from __future__ import annotations

import heapq
import math
import time
from typing import Any, Callable, List, Optional, Tuple

__all__ = ["TimerHandle", "TimerQueue", "check_seconds"]

# Rebuild the heap once this many cancelled handles are in it and they are
# more than half of it: bounded memory without paying on every cancel().
_COMPACT_MIN = 64


def _cancelled() -> None:
    """What a cancelled handle holds instead of its callback."""


def check_seconds(what: str, value: Any, *, zero_means_none: bool = False) -> Optional[float]:
    """A duration a program gave: a positive number of seconds, or ``None``
    for none (and 0 as well, with ``zero_means_none``).

    Raises:
        TypeError: not a number (``what`` names the setting).
        ValueError: zero, negative or NaN.
    """
    if value is None or (zero_means_none and value == 0 and not isinstance(value, bool)):
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{what} must be a number of seconds or None, not {value!r}")
    if not value > 0:
        raise ValueError(f"{what} must be positive (or None for no limit), not {value!r}")
    return float(value)


class TimerHandle:
    """A scheduled call; returned by ``call_later()``/``call_at()``.

    Handles order by deadline, then by the order they were scheduled, so
    calls due at the same time run first-scheduled first.
    """

    __slots__ = ("when", "_seq", "_callback", "_args", "_queue", "cancelled")

    def __init__(self, when: float, seq: int, callback: Callable[..., Any],
                 args: Tuple[Any, ...], queue: TimerQueue) -> None:
        self.when = when
        self._seq = seq
        self._callback = callback
        self._args = args
        self._queue: Optional[TimerQueue] = queue
        self.cancelled = False

    def __lt__(self, other: TimerHandle) -> bool:
        return (self.when, self._seq) < (other.when, other._seq)

    def cancel(self) -> None:
        """Stop the call from happening.  Idempotent; a no-op once it ran."""
        if self.cancelled:
            return
        self.cancelled = True
        # Drop the references (a cancelled handle may wait in the heap).
        self._callback, self._args = _cancelled, ()
        queue, self._queue = self._queue, None
        if queue is not None:
            queue._cancelled_one()

    def __repr__(self) -> str:
        if self.cancelled:
            return "<TimerHandle cancelled>"
        return f"<TimerHandle at {self.when:.3f} {self._callback!r}>"


class TimerQueue:
    """The pending timers of one loop."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self._heap: List[TimerHandle] = []
        self._seq = 0
        self._cancelled = 0

    def __len__(self) -> int:
        """Live (not cancelled) timers."""
        return len(self._heap) - self._cancelled

    @property
    def scheduled(self) -> int:
        """How many calls were ever scheduled here (a counter: compare two
        readings to know whether something was scheduled in between)."""
        return self._seq

    def call_at(self, when: float, callback: Callable[..., Any], *args: Any) -> TimerHandle:
        """Schedule ``callback(*args)`` at ``when`` (on :attr:`clock`'s scale).

        Raises:
            TypeError: ``callback`` is not callable or ``when`` not a number.
            ValueError: ``when`` is NaN.
        """
        if not callable(callback):
            raise TypeError(f"callback must be callable, not {callback!r}")
        if isinstance(when, bool) or not isinstance(when, (int, float)):
            raise TypeError(f"when must be a number (seconds on the loop's clock), not {when!r}")
        if math.isnan(when):
            raise ValueError("when must not be NaN")
        self._seq += 1
        handle = TimerHandle(float(when), self._seq, callback, args, self)
        heapq.heappush(self._heap, handle)
        return handle

    def call_later(self, delay: float, callback: Callable[..., Any], *args: Any) -> TimerHandle:
        """Schedule ``callback(*args)`` in ``delay`` seconds (negative: as 0)."""
        if isinstance(delay, bool) or not isinstance(delay, (int, float)):
            raise TypeError(f"delay must be a number of seconds, not {delay!r}")
        if math.isnan(delay):
            raise ValueError("delay must not be NaN")
        return self.call_at(self.clock() + max(delay, 0.0), callback, *args)

    def _cancelled_one(self) -> None:
        self._cancelled += 1
        if self._cancelled >= _COMPACT_MIN and self._cancelled * 2 > len(self._heap):
            # In place: the loop holds the list between passes.
            self._heap[:] = [h for h in self._heap if not h.cancelled]
            heapq.heapify(self._heap)
            self._cancelled = 0

    def _drop_cancelled_head(self) -> None:
        heap = self._heap
        while heap and heap[0].cancelled:
            heapq.heappop(heap)
            self._cancelled -= 1

    def next_deadline(self) -> Optional[float]:
        """The earliest live deadline, or ``None``.  O(1) amortized."""
        self._drop_cancelled_head()
        return self._heap[0].when if self._heap else None

    def timeout(self, limit: Optional[float]) -> Optional[float]:
        """How long a poll may block: ``limit`` shortened to the next deadline."""
        deadline = self.next_deadline()
        if deadline is None:
            return limit
        wait = max(deadline - self.clock(), 0.0)
        return wait if limit is None or wait < limit else limit

    def pop_due(self, now: Optional[float] = None) -> List[TimerHandle]:
        """Remove and return the handles due at ``now`` (default: the
        clock's now), in order.  O(k log n)."""
        heap = self._heap
        if not heap:
            return []
        if now is None:
            now = self.clock()
        due = []
        while heap and heap[0].when <= now:
            handle = heapq.heappop(heap)
            if handle.cancelled:
                self._cancelled -= 1
            else:
                handle._queue = None  # it ran: cancel() becomes a no-op
                due.append(handle)
        return due

    def clear(self) -> None:
        """Cancel every pending timer."""
        for handle in self._heap:
            handle.cancelled = True
            handle._queue = None
        self._heap.clear()
        self._cancelled = 0
