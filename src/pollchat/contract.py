"""The calls a channel makes on its loop: the whole channel -> loop contract.

A channel tells its loop that it joined or left the map, that what its
``readable()``/``writable()`` read may have changed, that a transport holds
data the kernel cannot see, and which idle timeout it wants; each call is
O(1).  The channel never touches the loop's other state.  A mixin of
:class:`pollchat.loop.Loop` (the methods are documented there as its own).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable, Dict, Optional, Set

from .idle import check_timeout

if TYPE_CHECKING:
    from .idle import IdleTimeouts
    from .interest import Interest
    from .ready import SyntheticEvents

__all__ = ["ChannelCalls"]


class ChannelCalls:
    """What channels call on :class:`pollchat.loop.Loop`."""

    if TYPE_CHECKING:  # Loop's
        map: Dict[Any, Any]
        _interest: Interest
        _dirty: Set[Any]
        _idle: IdleTimeouts
        _synthetic: SyntheticEvents
        _host_wakeup: Optional[Callable[[], None]]

    def channel_added(self, key: Any, channel: Any) -> None:
        """``channel`` was put in the map at ``key`` (``add_channel()``).
        It is registered at the next pass.  O(1)."""
        self._interest.added(key)
        self._arm_idle_timeout(key, channel)
        if self._host_wakeup is not None:
            self._host_wakeup()

    def channel_removed(self, key: Any, channel: Any) -> None:
        """``channel`` left the map (``del_channel()``): it is unregistered
        now, while its fd is still open.  O(1)."""
        self._interest.removed(key, channel)
        self._idle.forget(key, channel)
        self._synthetic.forget(key)
        if self._host_wakeup is not None:
            self._host_wakeup()

    def interest_changed(self, key: Any) -> None:
        """The channel at ``key`` may now want other events: ask it again
        before the next poll.  O(1); thread-unsafe, like the channel itself."""
        self._dirty.add(key)
        if self._host_wakeup is not None:
            self._host_wakeup()

    def add_ready(self, key: Any, events: int) -> None:
        """Deliver ``events`` to the channel now at ``key`` at the next pass
        as if the kernel had reported them, for data the kernel cannot see
        (bytes a TLS layer already decrypted, a record left in an
        ``SSLSocket``).  The next poll does not block.

        Delivered only while the channel's registered interest includes them:
        the others are parked, costing passes nothing, until a re-sync gives
        it that interest (a channel that paused reading is not pushed data,
        and resuming delivers it).  O(1).
        """
        channel = self.map.get(key)
        if channel is None:
            return
        self._synthetic.add(key, channel, events)
        if self._host_wakeup is not None:
            self._host_wakeup()

    def set_idle_timeout(self, channel: Any, seconds: Optional[float]) -> None:
        """Run ``channel.handle_timeout()`` once no event reached it for
        ``seconds`` (``None`` or 0 cancels).  One timer per channel, re-armed
        lazily: activity itself only stores a timestamp.

        Raises:
            TypeError, ValueError: ``seconds`` is not a positive number.
            ValueError: the channel is not in this loop's map.
        """
        check_timeout(seconds)
        key = getattr(channel, "_fileno", None)
        if key is None or self.map.get(key) is not channel:
            raise ValueError(f"{channel!r} is not in this loop's map: add it first")
        self._idle.set(key, channel, seconds)
        if self._host_wakeup is not None:
            self._host_wakeup()

    def _arm_idle_timeout(self, key: Any, channel: Any) -> None:
        seconds = getattr(channel, "idle_timeout", None)
        if seconds:
            self._idle.set(key, channel, seconds)

    def pause_reading(self, key: Any) -> None:
        """Pause reading on the channel at ``key`` (``channel.pause_reading()``)."""
        channel = self.map.get(key)
        if channel is not None:
            channel.pause_reading()

    def resume_reading(self, key: Any) -> None:
        """Undo :meth:`pause_reading` (``channel.resume_reading()``)."""
        channel = self.map.get(key)
        if channel is not None:
            channel.resume_reading()

    def reading_paused(self, key: Any) -> bool:
        """Whether the channel at ``key`` has reading paused."""
        return bool(getattr(self.map.get(key), "_pc_reading_paused", False))

    def reconcile(self) -> None:
        """Check every channel against the map before the next poll: for code
        that swaps map entries directly without changing the map's size (size
        changes are noticed on their own).  O(map)."""
        self._interest.reconcile()
