"""Synthetic readiness: events a loop delivers without the kernel.

Bytes a TLS engine already decrypted, or a record left in a program's own
``SSLSocket``, are invisible to the kernel: a loop that dispatches only what
its poll reports would leave them there until the peer sends again.
``Loop.add_ready()`` queues events that the next pass merges with the
kernel's, as if the kernel had reported them (that pass does not block).
Events the channel's registration does not include now (reading paused, say)
are *parked*, costing passes nothing, and queued again when a sync gives the
channel that interest.
"""

from __future__ import annotations

from typing import Any, Callable, Dict, Iterable, List, Tuple

__all__ = ["SyntheticEvents"]

Registration = Callable[[Any], Any]


class SyntheticEvents:
    """The synthetic events of one loop: ``ready`` for the next pass, and
    ``parked`` until the channel wants them (both map key -> (channel,
    events)).  Truth tests on ``ready``/``parked`` are the hot-path checks."""

    __slots__ = ("ready", "parked")

    def __init__(self) -> None:
        self.ready: Dict[Any, Tuple[Any, int]] = {}
        self.parked: Dict[Any, Tuple[Any, int]] = {}

    def add(self, key: Any, channel: Any, events: int) -> None:
        """Queue ``events`` for ``channel`` at ``key`` (merged with what is
        queued for it already).  O(1)."""
        queued = self.ready.get(key)
        if queued is not None and queued[0] is channel:
            events |= queued[1]
        self.ready[key] = (channel, events)

    def merge(self, events: Iterable[Tuple[int, int]], map: Dict[Any, Any],
              registration: Registration) -> List[Tuple[int, int]]:
        """The kernel's ``events`` plus the queued ones each channel is
        registered for; the others are parked.  O(events + queued)."""
        ready, self.ready = self.ready, {}
        merged = dict(events)
        for key, (channel, wanted) in ready.items():
            if map.get(key) is not channel:
                continue  # closed, or replaced, since
            reg = registration(key)
            now = wanted & reg.events if reg is not None and reg.data is channel else 0
            if wanted & ~now:
                self.parked[key] = (channel, wanted & ~now)
            if now:
                merged[reg.fd] = merged.get(reg.fd, 0) | now
        return list(merged.items())

    def unpark(self, keys: Iterable[Any], map: Dict[Any, Any],
               registration: Registration) -> None:
        """Queue again the parked events of ``keys`` (just re-synced) whose
        registration now includes them."""
        parked = self.parked
        for key in keys:
            entry = parked.get(key)
            if entry is None:
                continue
            channel, wanted = entry
            if map.get(key) is not channel:
                del parked[key]
                continue
            reg = registration(key)
            if reg is not None and reg.data is channel and wanted & reg.events:
                del parked[key]
                self.add(key, channel, wanted)

    def forget(self, key: Any) -> None:
        """Drop what is queued or parked for ``key`` (its channel left)."""
        self.ready.pop(key, None)
        self.parked.pop(key, None)

    def clear(self) -> None:
        self.ready.clear()
        self.parked.clear()
