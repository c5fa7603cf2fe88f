"""Idle timeouts: close (or otherwise handle) channels that stay silent.

One timer per watched channel, re-armed lazily: an event on the channel only
stores a timestamp (the loop's dispatch does ``watch.last_active = now``), and
the timer, when it fires, either finds the channel idle long enough or sleeps
again for what is left.  So a busy channel costs one attribute store per
event, not a timer operation.
"""

from __future__ import annotations

from typing import Any, Callable, Dict, Optional

from .timers import TimerHandle, TimerQueue, check_seconds

__all__ = ["IdleTimeouts", "check_timeout"]


def check_timeout(seconds: Any) -> Optional[float]:
    """Validate an idle timeout: a positive number of seconds, or ``None``
    (or 0) for none.

    Raises:
        TypeError: not a number.
        ValueError: negative or NaN.
    """
    return check_seconds("idle timeout", seconds, zero_means_none=True)


class _Watch:
    """One channel's idle timeout: when it was last active, and its timer."""

    __slots__ = ("channel", "seconds", "last_active", "timer")

    def __init__(self, channel: Any, seconds: float, now: float) -> None:
        self.channel = channel
        self.seconds = seconds
        self.last_active = now
        self.timer: Optional[TimerHandle] = None


class IdleTimeouts:
    """The idle timeouts of one loop's channels.

    Args:
        timers: the loop's timer queue (its clock is the one used).
        map: the channel map: a watch ends when its channel leaves it.
        expired: called as ``expired(key, channel)`` when a channel has been
            idle for its timeout (once; set it again to re-arm).
    """

    def __init__(self, timers: TimerQueue, map: Dict[Any, Any],
                 expired: Callable[[Any, Any], None]) -> None:
        self._timers = timers
        self._map = map
        self._expired = expired
        #: key -> watch.  The loop's dispatch reads it on every event.
        self.watches: Dict[Any, _Watch] = {}

    def __len__(self) -> int:
        return len(self.watches)

    def set(self, key: Any, channel: Any, seconds: Any) -> None:
        """Watch ``channel`` (at ``key``): ``expired`` runs once no event
        reached it for ``seconds``; ``None`` or 0 stops watching.  O(log n).

        Raises:
            TypeError, ValueError: ``seconds`` is not a positive number.
        """
        seconds = check_timeout(seconds)
        self.forget(key, channel)
        if seconds is None:
            return
        watch = _Watch(channel, seconds, self._timers.clock())
        watch.timer = self._timers.call_later(seconds, self._check, key, watch)
        self.watches[key] = watch

    def forget(self, key: Any, channel: Any) -> None:
        """Stop watching ``channel`` at ``key`` (no-op if not watched)."""
        watch = self.watches.get(key)
        if watch is not None and watch.channel is channel:
            del self.watches[key]
            if watch.timer is not None:
                watch.timer.cancel()

    def _check(self, key: Any, watch: _Watch) -> None:
        if self.watches.get(key) is not watch:
            return  # replaced or cancelled since
        if self._map.get(key) is not watch.channel:
            del self.watches[key]  # left the map behind our back
            return
        remaining = watch.last_active + watch.seconds - self._timers.clock()
        if remaining > 0:
            watch.timer = self._timers.call_later(remaining, self._check, key, watch)
            return
        del self.watches[key]
        self._expired(key, watch.channel)

    def clear(self) -> None:
        """Forget every watch (their timers go with the loop's)."""
        self.watches.clear()
