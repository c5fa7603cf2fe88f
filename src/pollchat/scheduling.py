"""Scheduling on a loop: timers, and callbacks handed over from other threads.

Timers (:meth:`Scheduling.call_later`, :meth:`Scheduling.call_at`) are for
the loop's own thread; :meth:`Scheduling.call_soon_threadsafe` and
:meth:`Scheduling.stop` are safe from any thread (and ``stop()`` from a
signal handler).  Both kinds run at the end of a pass, through the loop's
error policy.  A mixin of :class:`pollchat.loop.Loop`.
"""

from __future__ import annotations

import collections
import threading
from typing import TYPE_CHECKING, Any, Callable, Deque, Optional, Tuple

from .timers import TimerHandle

if TYPE_CHECKING:
    from .dispatch import ErrorPolicy
    from .timers import TimerQueue
    from .wakeup import Waker

__all__ = ["Scheduling"]


class Scheduling:
    """Timers and thread-safe callbacks of :class:`pollchat.loop.Loop`."""

    if TYPE_CHECKING:  # Loop's
        timers: TimerQueue
        _callbacks: Deque[Tuple[Callable[..., Any], Tuple[Any, ...]]]
        _callbacks_lock: threading.Lock
        _closed: bool
        _stopping: bool
        _waker: Waker
        _errors: ErrorPolicy
        _host_wakeup: Optional[Callable[[], None]]

    def call_later(self, delay: float, callback: Callable[..., Any], *args: Any) -> TimerHandle:
        """Call ``callback(*args)`` from the loop in ``delay`` seconds.

        Not thread-safe: from another thread use :meth:`call_soon_threadsafe`.
        Returns a handle whose ``cancel()`` stops the call.
        """
        handle = self.timers.call_later(delay, callback, *args)
        if self._host_wakeup is not None:
            self._host_wakeup()
        return handle

    def call_at(self, when: float, callback: Callable[..., Any], *args: Any) -> TimerHandle:
        """Call ``callback(*args)`` at ``when`` on :meth:`time`'s clock."""
        handle = self.timers.call_at(when, callback, *args)
        if self._host_wakeup is not None:
            self._host_wakeup()
        return handle

    def time(self) -> float:
        """The loop's clock (:func:`time.monotonic`)."""
        return self.timers.clock()

    def call_soon_threadsafe(self, callback: Callable[..., Any], *args: Any) -> None:
        """Call ``callback(*args)`` from the loop's thread, soon; safe to call
        from any thread, and wakes the loop if it is blocked in poll.

        Raises:
            TypeError: ``callback`` is not callable.
            RuntimeError: the loop is closed.
        """
        if not callable(callback):
            raise TypeError(f"callback must be callable, not {callback!r}")
        if self._closed:
            raise RuntimeError("the loop is closed")
        with self._callbacks_lock:
            first = not self._callbacks
            self._callbacks.append((callback, args))
        if first:  # one wake-up per batch is enough
            self._waker.wake()

    def stop(self) -> None:
        """Make :meth:`run` return after the current pass, waking a poll
        that is blocked.  Safe from another thread and from a signal
        handler (the wake-up is one non-blocking write, no lock)."""
        self._stopping = True
        if not self._closed:
            self._waker.wake()

    # -- timers and callbacks ---------------------------------------------------------

    def _run_timers(self, now: float) -> None:
        run = self._errors.run_callback
        for handle in self.timers.pop_due(now):
            if not handle.cancelled:
                run(handle._callback, handle._args)

    def _run_callbacks(self) -> None:
        with self._callbacks_lock:
            batch, self._callbacks = self._callbacks, collections.deque()
        run = self._errors.run_callback
        for callback, args in batch:
            run(callback, args)
