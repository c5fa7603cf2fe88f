"""The event loop: a backend, a channel map, timers, and interest tracking.

asyncore's contract is level-triggered predicates: before every pass it asks
each channel ``readable()`` and ``writable()``.  Asking 10,000 idle channels
on every pass is what makes the originals O(all connections).  A :class:`Loop`
keeps the answer registered in its backend between passes instead, and asks
again only where the answer may have changed:

* **dirty** fds: the channel was just added, or one of its handlers just ran,
  or a method that changes its state was called (``connect()``, ``listen()``,
  ``push()``, ``send()`` of ``dispatcher_with_send``...).  Those methods call
  ``_interest_changed()``, which adds the fd here.
* **polled** fds: the channel's class overrides ``readable()``/``writable()``
  with its own code, which may depend on anything, so it is asked on every
  pass (and the backend told only when the answer changes).  The library's
  own predicates are marked with :func:`managed_interest` and are trusted to
  change only through the methods above.

One pass therefore costs O(ready + dirty + polled), not O(map).  ``strict``
mode (``Loop(strict=True)`` or ``POLLCHAT_STRICT=1``) polls every channel, for
legacy code that changes channel state behind the methods' backs (appending to
``producer_fifo`` directly, say).

Invariants (see docs/design.md):

* ``fd in self._channels`` iff the fd is registered in the backend, with mask
  ``self._masks[fd]`` (never 0), on behalf of the channel ``self._channels[fd]``.
* An event is dispatched only if ``map[fd]`` is still the channel that was
  registered when the poll returned (the fd-reuse race, bpo-30931).
* Removing a channel unregisters it at once (the fd is still open then);
  adding one only marks it dirty, so a channel added during a pass cannot
  receive events meant for a closed channel that had the same fd.
"""

from __future__ import annotations

import collections
import logging
import os
import threading
from typing import Any, Callable, Deque, Dict, Optional, Set, Tuple, Union

from .backends import NVAL, PRI, READ, WRITE, Backend, make_backend
from .dispatch import REraised, call_handler, dispatch
from .timers import TimerHandle, TimerQueue
from .wakeup import Waker

__all__ = ["Loop", "get_loop", "loop_for_map", "managed_interest", "get_socket_map",
           "set_socket_map", "STRICT_ENV_VAR"]

logger = logging.getLogger("pollchat")

STRICT_ENV_VAR = "POLLCHAT_STRICT"

# Library predicates whose answers change only through methods that call
# _interest_changed(): channels using them are not asked every pass.
_MANAGED: Set[Callable[..., Any]] = set()
# class -> True if it overrides readable()/writable() with unmanaged code.
_polls_cache: Dict[type, bool] = {}

# Loops by id() of their map.  A loop holds its map, so the id cannot be
# reused while the entry exists.  Implicit loops (made by the module-level
# functions for a map) leave this table when their map is empty and no timer
# is pending; explicit ones when closed.
_loops: Dict[int, Loop] = {}
_loops_lock = threading.RLock()  # re-entered: get_loop() -> Loop()

# The default channel map, asyncore.socket_map (a plain dict, as in CPython).
_default_map: Dict[Any, Any] = {}

# Bumped in a forked child: every loop then rebuilds its kernel objects,
# which it would otherwise share with the parent.
_fork_generation = 0


def managed_interest(predicate: Callable[..., Any]) -> Callable[..., Any]:
    """Mark a library ``readable``/``writable`` implementation as managed:
    its answer changes only when the channel calls ``_interest_changed()``."""
    _MANAGED.add(predicate)
    _polls_cache.clear()
    return predicate


def _polls_predicates(channel: Any) -> bool:
    cls = type(channel)
    polls = _polls_cache.get(cls)
    if polls is None:
        polls = (getattr(cls, "readable", None) not in _MANAGED
                 or getattr(cls, "writable", None) not in _MANAGED)
        _polls_cache[cls] = polls
    if polls:
        return True
    # An instance-level override (obj.readable = ..., mock.patch.object).
    # Checked through the bound methods: touching channel.__dict__ would
    # materialize the instance dict, which makes every later attribute
    # access on the channel slower on CPython 3.11+.
    for name in ("readable", "writable"):
        bound = getattr(channel, name)
        if (getattr(bound, "__func__", None) is not getattr(cls, name)
                or getattr(bound, "__self__", None) is not channel):
            return True
    return False


def get_socket_map() -> Dict[Any, Any]:
    """The default channel map (``asyncore.socket_map``)."""
    return _default_map


def set_socket_map(new_map: Dict[Any, Any]) -> None:
    """Replace the default channel map (``asyncore.socket_map = ...``)."""
    global _default_map
    _default_map = new_map


def loop_for_map(map: Any) -> Optional[Loop]:
    """The loop serving ``map``, if one exists.  O(1)."""
    return _loops.get(id(map))


def get_loop(map: Optional[Dict[Any, Any]] = None, *,
             backend: Union[str, Backend, None] = None, use_poll: bool = False) -> Loop:
    """The loop serving ``map`` (default: ``asyncore.socket_map``), created on
    first use with the backend chosen by ``backend``, then
    ``POLLCHAT_BACKEND``, then the ``use_poll`` hint, then ``auto``.

    ``backend`` and ``use_poll`` matter only when the loop is created: a
    loop's backend is fixed for its lifetime.
    """
    if map is None:
        map = _default_map
    found = _loops.get(id(map))
    if found is not None:
        return found
    with _loops_lock:
        found = _loops.get(id(map))
        if found is None:
            found = Loop(backend, map, use_poll=use_poll)
            found._implicit = True
        return found


def _in_child_after_fork() -> None:
    global _fork_generation
    _fork_generation += 1


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_in_child_after_fork)


class Loop:
    """An event loop over one channel map, on one backend.

    Args:
        backend: a backend name (``'epoll'``, ``'auto'``...), a
            :class:`~pollchat.backends.Backend` instance to own, or ``None``
            for ``POLLCHAT_BACKEND``/``auto``.
        map: the channel map (fd -> channel) to serve; a new dict if omitted.
            Channels join it with ``dispatcher(sock, map=loop.map)``.
        use_poll: the legacy hint, used only when nothing else names a backend.
        strict: ask every channel ``readable()``/``writable()`` on every pass,
            as CPython did (default: ``POLLCHAT_STRICT``, else off).
        isolate_errors: when a channel's ``handle_error()`` itself raises, log
            it and close that channel instead of letting the exception out of
            the loop (CPython lets it out; default off).

    Raises:
        ValueError: ``map`` already has a loop (use :func:`get_loop`).
        UnknownBackendError: the backend name is unknown or unavailable.
    """

    def __init__(self, backend: Union[str, Backend, None] = None,
                 map: Optional[Dict[Any, Any]] = None, *, use_poll: bool = False,
                 strict: Optional[bool] = None, isolate_errors: bool = False) -> None:
        if map is None:
            map = {}
        if not isinstance(map, dict):
            raise TypeError(f"map must be a dict of fd -> channel, not {type(map).__name__}")
        self.backend: Backend = make_backend(backend, use_poll=use_poll)
        self.map = map
        self.timers = TimerQueue()
        if strict is None:
            strict = os.environ.get(STRICT_ENV_VAR, "").strip() not in ("", "0")
        self.strict = bool(strict)
        self.isolate_errors = isolate_errors
        self._implicit = False
        self._channels: Dict[Any, Any] = {}  # fd -> channel registered in the backend
        self._masks: Dict[Any, int] = {}  # fd -> the mask registered for it
        self._dirty: Set[Any] = set(map)  # fds to re-sync before the next poll
        self._polled: Set[Any] = set()  # fds whose channel is asked every pass
        self._reading_paused: Set[Any] = set()  # fds whose READ interest is withheld
        self._idle: Dict[Any, _IdleWatch] = {}  # fd -> idle timeout watch
        # TLS (issue 14) -- synthetic readiness, see add_ready().
        self._ready: Dict[Any, Tuple[Any, int]] = {}  # fd -> (channel, events) for the next pass
        self._parked: Dict[Any, Tuple[Any, int]] = {}  # fd -> (channel, events) not wanted yet
        self._map_len = len(map)
        self._callbacks: Deque[Tuple[Callable[..., Any], tuple]] = collections.deque()
        self._callbacks_lock = threading.Lock()
        self._owner: Optional[int] = None  # thread running the loop
        self._depth = 0
        self._stopping = False
        self._closed = False
        self._generation = _fork_generation
        self._waker = Waker()
        self.backend.register(self._waker.fileno(), READ)
        with _loops_lock:
            if id(map) in _loops:
                self._release_kernel_objects()
                raise ValueError("this map already has a loop; use pollchat.get_loop(map)")
            _loops[id(map)] = self

    # -- scheduling ---------------------------------------------------------------

    def call_later(self, delay: float, callback: Callable[..., Any], *args: Any) -> TimerHandle:
        """Call ``callback(*args)`` from the loop in ``delay`` seconds.

        Not thread-safe: from another thread use :meth:`call_soon_threadsafe`.
        Returns a handle whose ``cancel()`` stops the call.
        """
        return self.timers.call_later(delay, callback, *args)

    def call_at(self, when: float, callback: Callable[..., Any], *args: Any) -> TimerHandle:
        """Call ``callback(*args)`` at ``when`` on :meth:`time` 's clock."""
        return self.timers.call_at(when, callback, *args)

    def time(self) -> float:
        """The loop's clock (:func:`time.monotonic`)."""
        return self.timers.clock()

    def call_soon_threadsafe(self, callback: Callable[..., Any], *args: Any) -> None:
        """Call ``callback(*args)`` from the loop's thread, soon; safe to call
        from any thread, and wakes the loop if it is blocked in poll."""
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

    # -- running --------------------------------------------------------------------

    def run(self, timeout: Optional[float] = 30.0, count: Optional[int] = None, *,
            wait_for_timers: bool = True) -> None:
        """Run passes until there is nothing left to wait for, ``count``
        passes are done, or :meth:`stop` is called.

        "Nothing left" means an empty map and, if ``wait_for_timers``, no
        pending timer and no queued callback.  ``asyncore.loop()`` passes
        ``wait_for_timers=False``: it returns when its map is empty, as
        CPython's does.  ``timeout`` bounds each pass's wait (seconds; ``None``
        blocks until an event or timer).
        """
        self._stopping = False
        remaining = count
        while not self._stopping and (remaining is None or remaining > 0):
            if not self.map and (not wait_for_timers or not (self.timers or self._callbacks)):
                break
            self.run_once(timeout)
            if remaining is not None:
                remaining -= 1

    def run_once(self, timeout: Optional[float] = 0.0) -> None:
        """One pass: bring the backend's interest up to date, wait up to
        ``timeout`` seconds for events (less if a timer is due sooner), then
        dispatch the events, the due timers and the queued callbacks.

        With an empty map and nothing scheduled it returns without waiting,
        as CPython's ``poll()`` did.

        Raises:
            RuntimeError: the loop is closed, or running in another thread.
        """
        self._enter()
        # The timer heap itself, not the TimerQueue: len() of the queue is a
        # Python-level call, and this runs on every pass.
        heap = self.timers._heap
        try:
            if self._generation != _fork_generation:
                self._renew_after_fork()
            self._sync_interest()
            if not self.map and not heap and not self._callbacks:
                return
            if self._callbacks or self._ready:
                timeout = 0.0
            elif heap:
                timeout = self.timers.timeout(timeout)
            events = self.backend.poll(timeout)
            if self._ready:
                events = self._take_ready(events)
            if events:
                self._dispatch(events)
            if heap:
                self._run_timers()
            if self._callbacks:
                self._run_callbacks()
        finally:
            self._leave()

    def _enter(self) -> None:
        if self._closed:
            raise RuntimeError("the loop is closed")
        me = threading.get_ident()
        if self._owner is None:
            self._owner = me
        elif self._owner != me:
            raise RuntimeError(
                "this loop is already running in another thread; a loop runs in one "
                "thread at a time (hand it work with call_soon_threadsafe())")
        self._depth += 1

    def _leave(self) -> None:
        self._depth -= 1
        if not self._depth:
            self._owner = None

    # -- interest -------------------------------------------------------------------

    def _interest_changed(self, fd: Any) -> None:
        """A channel's ``readable()``/``writable()`` may answer differently."""
        self._dirty.add(fd)

    def _channel_added(self, fd: Any, channel: Any) -> None:
        """``add_channel()`` put ``channel`` in the map at ``fd``."""
        self._dirty.add(fd)
        self._map_len = len(self.map)
        timeout = getattr(channel, "idle_timeout", None)
        if timeout:
            self.set_idle_timeout(channel, timeout)

    def _channel_removed(self, fd: Any, channel: Any) -> None:
        """``del_channel()`` took ``channel`` out of the map.  Unregister now,
        while the fd is still open (``close()`` closes it next)."""
        if self._channels.get(fd) is channel:
            self._unregister(fd)
        self._polled.discard(fd)
        self._reading_paused.discard(fd)
        self._ready.pop(fd, None)
        self._parked.pop(fd, None)
        watch = self._idle.get(fd)
        if watch is not None and watch.channel is channel:
            del self._idle[fd]
            watch.timer.cancel()
        self._dirty.add(fd)  # a raw map write may have put another channel there
        self._map_len = len(self.map)

    def reconcile(self) -> None:
        """Re-check every channel against the map before the next poll: for
        code that swaps map entries directly without changing the map's size
        (size changes are noticed on their own).  O(map)."""
        self._dirty.update(self.map)
        self._dirty.update(self._channels)

    def _sync_interest(self) -> None:
        map = self.map
        if len(map) != self._map_len:
            # Someone wrote to the map directly (del map[fd], map.clear()...).
            self.reconcile()
            self._map_len = len(map)
        if self.strict:
            self._dirty.update(map)
        elif self._polled:
            self._dirty.update(self._polled)
        if self._dirty:
            dirty, self._dirty = self._dirty, set()
            for fd in dirty:
                self._sync(fd)

    def _sync(self, fd: Any) -> None:
        """Make the backend's registration for ``fd`` match ``map[fd]``."""
        channel = self.map.get(fd)
        registered = self._channels.get(fd)
        if registered is not None and registered is not channel:
            self._unregister(fd)
            registered = None
        if channel is None:
            self._polled.discard(fd)
            return
        if registered is None:
            # A channel new to the backend (or one that wanted nothing): decide
            # once whether it is asked every pass.  Not on every sync: that
            # is the hot path of a busy channel.
            if _polls_predicates(channel):
                self._polled.add(fd)
            else:
                self._polled.discard(fd)
        try:
            mask = 0
            if channel.readable():
                mask = READ | PRI
            if channel.writable() and not channel.accepting:
                mask |= WRITE
        except REraised:
            raise
        except Exception:
            self._report(channel, "handle_error")
            return
        if fd in self._reading_paused:
            mask &= WRITE
        # TLS (issue 14) -- what the channel's transport needs whatever the
        # predicates say (a handshake waiting for the peer, encrypted bytes
        # not yet sent), and what it withholds from them meanwhile.
        extra = getattr(channel, "_pc_extra_interest", 0)
        withheld = getattr(channel, "_pc_withheld_interest", 0)
        if extra or withheld:
            mask = (mask & ~withheld) | extra
        if self._parked and fd in self._parked:
            self._unpark(fd, channel, mask)
        if mask == self._masks.get(fd, 0):
            return
        try:
            if not mask:
                self._unregister(fd)
            elif registered is None:
                self.backend.register(fd, mask)
            else:
                self.backend.modify(fd, mask)
        except (OSError, ValueError, TypeError) as exc:
            # The fd cannot be watched (closed behind our back, too large for
            # select(), not an fd at all): the channel is dead.  Treat it as
            # poll(2) treats a closed fd, POLLNVAL: handle_close().
            logger.error("cannot watch %r (fd %r) with the %s backend: %s; closing it",
                         channel, fd, self.backend.name, exc)
            self._masks.pop(fd, None)
            self._channels.pop(fd, None)
            self._deliver(channel, NVAL, fd)
            return
        if mask:
            self._channels[fd] = channel
            self._masks[fd] = mask

    def _unregister(self, fd: Any) -> None:
        self._channels.pop(fd, None)
        self._masks.pop(fd, None)
        try:
            self.backend.unregister(fd)
        except (KeyError, ValueError, TypeError):
            pass  # never reached the kernel (bookkeeping only): nothing to undo

    # -- TLS (issue 14): synthetic readiness ----------------------------------------
    #
    # Bytes a channel's transport already holds (decrypted by TLS, or left
    # in an SSLSocket) are invisible to the kernel: a loop that dispatches
    # only what poll() reports would leave them there until the peer sends
    # again.  add_ready() queues events that the next pass dispatches as if
    # the kernel had reported them; that pass does not block.  Events the
    # channel's registered interest does not include (reading paused, say)
    # are parked and queued again when a re-sync gives it that interest.

    def add_ready(self, fd: Any, events: int) -> None:
        """Dispatch ``events`` (``READ``/``WRITE``) to the channel at map key
        ``fd`` on the next pass, as if the kernel had reported them, without
        waiting in poll.

        Delivered only to the channel in the map now, and only while its
        interest includes them; otherwise they wait (parked, costing no
        pass anything) until a re-sync gives it that interest.  O(1).
        """
        channel = self.map.get(fd)
        if channel is None:
            return
        queued = self._ready.get(fd)
        if queued is not None and queued[0] is channel:
            events |= queued[1]
        self._ready[fd] = (channel, events)

    def _take_ready(self, events: Any) -> Any:
        """Merge the queued synthetic events into the kernel's ``events``."""
        ready, self._ready = self._ready, {}
        merged: Dict[Any, int] = {}
        for fd, mask in events:
            merged[fd] = merged.get(fd, 0) | mask
        for fd, (channel, wanted) in ready.items():
            if self.map.get(fd) is not channel:
                continue
            now = wanted & self._masks.get(fd, 0) if self._channels.get(fd) is channel else 0
            if wanted & ~now:
                self._parked[fd] = (channel, wanted & ~now)
            if now:
                merged[fd] = merged.get(fd, 0) | now
        return list(merged.items())

    def _unpark(self, fd: Any, channel: Any, mask: int) -> None:
        parked_channel, wanted = self._parked[fd]
        if parked_channel is not channel:
            del self._parked[fd]
        elif wanted & mask:
            del self._parked[fd]
            self.add_ready(fd, wanted)

    # -- flow control and timeouts -----------------------------------------------

    def pause_reading(self, fd: Any) -> None:
        """Stop watching ``fd`` for reads (and priority data) until
        :meth:`resume_reading`; writes are still watched.  For backpressure,
        and for the accept back-off on ``EMFILE``.  O(1)."""
        self._reading_paused.add(fd)
        self._dirty.add(fd)

    def resume_reading(self, fd: Any) -> None:
        """Undo :meth:`pause_reading`.  O(1); a no-op if not paused."""
        if fd in self._reading_paused:
            self._reading_paused.discard(fd)
            self._dirty.add(fd)

    def reading_paused(self, fd: Any) -> bool:
        return fd in self._reading_paused

    def set_idle_timeout(self, channel: Any, seconds: Optional[float]) -> None:
        """Call ``channel.handle_timeout()`` once no event reached it for
        ``seconds``; ``None`` (or 0) cancels.  Costs one timer per channel,
        re-armed lazily: activity itself only stores a timestamp.

        Raises:
            TypeError, ValueError: ``seconds`` is not a positive number.
            ValueError: the channel is not in this loop's map.
        """
        fd = getattr(channel, "_fileno", None)
        if fd is None or self.map.get(fd) is not channel:
            raise ValueError(f"{channel!r} is not in this loop's map: add it first")
        old = self._idle.pop(fd, None)
        if old is not None:
            old.timer.cancel()
        if seconds is None or seconds == 0:
            return
        if isinstance(seconds, bool) or not isinstance(seconds, (int, float)):
            raise TypeError(f"idle timeout must be a number of seconds or None, not {seconds!r}")
        if not seconds > 0:
            raise ValueError(f"idle timeout must be positive, not {seconds!r}")
        watch = _IdleWatch(channel, float(seconds), self.timers.clock())
        watch.timer = self.call_later(seconds, self._check_idle, fd, watch)
        self._idle[fd] = watch

    def _check_idle(self, fd: Any, watch: _IdleWatch) -> None:
        if self._idle.get(fd) is not watch:
            return  # replaced or cancelled since
        if self.map.get(fd) is not watch.channel:
            del self._idle[fd]  # left the map behind our back
            return
        remaining = watch.last_active + watch.seconds - self.timers.clock()
        if remaining > 0:
            watch.timer = self.call_later(remaining, self._check_idle, fd, watch)
            return
        del self._idle[fd]
        self._dirty.add(fd)
        self._report(watch.channel, "handle_timeout", via_handle_error=True)

    # -- dispatch -------------------------------------------------------------------

    def _dispatch(self, events: Any) -> None:
        """Hand each ready fd's events to its channel.  The hot path: per
        event a few dict lookups and one call.

        No re-sync of the channel follows: the library's own predicates
        change only through methods that call ``_interest_changed()``, and
        channels with predicates of their own are re-synced every pass anyway.
        """
        channels_get = self._channels.get
        map = self.map
        map_get = map.get
        idle = self._idle
        now = self.timers.clock() if idle else 0.0
        for fd, mask in events:
            channel = channels_get(fd)
            if channel is None:
                # Unregistered during this pass (closed), or the waker.
                if fd == self._waker.fileno_r:
                    self._waker.drain()
                continue
            if map_get(fd) is not channel:
                self._dirty.add(fd)  # the map changed under us: re-sync, don't dispatch
                continue
            if idle and fd in idle:
                idle[fd].last_active = now
            # _deliver(), inlined: one call less per event.
            try:
                dispatch(channel, mask, fd, map)
            except REraised:
                raise
            except Exception:
                self._error_handler_raised(channel)

    def _deliver(self, channel: Any, mask: int, fd: Any) -> None:
        try:
            dispatch(channel, mask, fd, self.map)
        except REraised:
            raise
        except Exception:
            self._error_handler_raised(channel)

    def _error_handler_raised(self, channel: Any) -> None:
        # Only handle_error() (or handle_close() on a disconnect) can get
        # here: dispatch() caught the handler's own exception.
        if not self.isolate_errors:
            raise  # noqa: PLE0704 - called from an except block: re-raises it
        logger.exception("error handler of %r raised; closing the channel", channel)
        self._force_close(channel)

    def _report(self, channel: Any, method: str, via_handle_error: bool = False) -> None:
        """Call ``channel.<method>()``; with ``via_handle_error``, its errors go
        to ``handle_error()`` first, as a handler's would."""
        try:
            if via_handle_error:
                call_handler(channel, method)
            else:
                getattr(channel, method)()
        except REraised:
            raise
        except Exception:
            if not self.isolate_errors:
                raise
            logger.exception("%s of %r raised; closing the channel", method, channel)
            self._force_close(channel)

    def _force_close(self, channel: Any) -> None:
        try:
            channel.close()
        except REraised:
            raise
        except Exception:
            logger.exception("close() of %r raised; dropping it from the loop", channel)
            for fd, value in list(self.map.items()):
                if value is channel:
                    del self.map[fd]
                    self._channel_removed(fd, channel)

    def _run_timers(self) -> None:
        for handle in self.timers.pop_due():
            if not handle.cancelled:
                self._run_callback(handle._callback, handle._args)

    def _run_callbacks(self) -> None:
        with self._callbacks_lock:
            batch, self._callbacks = self._callbacks, collections.deque()
        for callback, args in batch:
            self._run_callback(callback, args)

    @staticmethod
    def _run_callback(callback: Callable[..., Any], args: tuple) -> None:
        try:
            callback(*args)
        except REraised:
            raise
        except Exception:
            logger.exception("exception in callback %r", callback)

    # -- lifetime -------------------------------------------------------------------

    def _renew_after_fork(self) -> None:
        """In a forked child: new kernel objects, the same registrations.

        The child inherited the parent's epoll/kqueue instance (shared, so
        its changes would reach the parent) and its waker.
        """
        name = self.backend.name
        self._release_kernel_objects()
        self.backend = make_backend(name)
        self._waker = Waker()
        self.backend.register(self._waker.fileno(), READ)
        self._channels.clear()
        self._masks.clear()
        self.reconcile()
        self._generation = _fork_generation

    def _release_kernel_objects(self) -> None:
        self.backend.close()
        self._waker.close()

    def close(self) -> None:
        """Release the backend and the waker; channels stay open, in the map.
        Idempotent.  The loop cannot run again."""
        if self._closed:
            return
        self._closed = True
        with _loops_lock:
            if _loops.get(id(self.map)) is self:
                del _loops[id(self.map)]
        self._channels.clear()
        self._masks.clear()
        self._polled.clear()
        self._dirty.clear()
        self._ready.clear()
        self._parked.clear()
        self.timers.clear()
        self._release_kernel_objects()

    @property
    def closed(self) -> bool:
        return self._closed

    def _release_if_idle(self) -> None:
        """Close an implicit loop once nothing needs it (empty map, nothing
        scheduled): the module-level functions make one per map on demand."""
        if self._implicit and not self._depth and not self.map and not self.timers \
                and not self._callbacks:
            self.close()

    def statistics(self) -> Dict[str, Any]:
        """Counters for introspection: backend, channels, registrations..."""
        return {"backend": self.backend.name, "channels": len(self.map),
                "registered": len(self._channels), "polled": len(self._polled),
                "dirty": len(self._dirty), "timers": len(self.timers), "strict": self.strict,
                "reading_paused": len(self._reading_paused), "idle_watched": len(self._idle),
                "ready": len(self._ready), "parked": len(self._parked)}

    def __repr__(self) -> str:
        state = "closed" if self._closed else f"channels={len(self.map)}"
        return f"<Loop {self.backend.name} {state} timers={len(self.timers)}>"



class _IdleWatch:
    """One channel's idle timeout: when it was last active, and its timer."""

    __slots__ = ("channel", "seconds", "last_active", "timer")

    def __init__(self, channel: Any, seconds: float, now: float) -> None:
        self.channel = channel
        self.seconds = seconds
        self.last_active = now
        self.timer: Optional[TimerHandle] = None
