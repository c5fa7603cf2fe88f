"""The event loop: a backend, a channel map, timers, and one pass at a time.

A :class:`Loop` *holds* its pieces, each in a module of its own:

* the backend (:mod:`pollchat.backends`): the kernel's poller;
* :class:`~pollchat.interest.Interest`: which events each channel wants
  registered, re-checked only where it may have changed (O(ready) passes);
* :class:`~pollchat.timers.TimerQueue` and
  :class:`~pollchat.idle.IdleTimeouts`: timers, and idle timeouts on them;
* :class:`~pollchat.dispatch.ErrorPolicy`: events to handlers, and the one
  place handler errors are caught;
* :class:`~pollchat.wakeup.Waker`: wake-ups from other threads.

Channels talk to their loop through a few named calls, and nothing else
(:mod:`pollchat.contract`): :meth:`Loop.channel_added`,
:meth:`Loop.channel_removed`, :meth:`Loop.interest_changed`,
:meth:`Loop.add_ready`, :meth:`Loop.set_idle_timeout`, plus
:meth:`Loop.call_later` (:mod:`pollchat.scheduling`, with the other timer
and thread-safe calls) and :attr:`Loop.max_fd`.

Invariant at dispatch: an event reaches a channel only if the map still holds
that channel under the key it was registered with (the fd-reuse race,
bpo-30931); see :mod:`pollchat.interest` for how removal and addition keep it.

Hosted runs.  A backend that is another event loop (asyncio, uvloop: see
:mod:`pollchat.backends.aio`) runs code of its own while it waits, and can
run the passes itself.  Two optional backend methods say so: ``wakeup()``,
which the loop calls whenever it is given work from outside a pass (that
code added a channel, changed interest, queued a synthetic event or a
timer), and ``drive()`` (:meth:`Loop.drive`), which :meth:`Loop.run`
without a pass count and ``pollchat.aio.serve()`` use.
"""

from __future__ import annotations

import collections
import logging
import os
import threading
from typing import Any, Callable, Deque, Dict, Optional, Set, Tuple, Union

from . import dispatch as _events
from . import maps
from .backends import NVAL, READ, Backend, BackendName, event_names, make_backend
from .contract import ChannelCalls
from .dispatch import ErrorPolicy, REraised, run_handlers
from .hosting import HostedRuns, asyncio_loop_running
from .idle import IdleTimeouts
from .interest import Interest, managed_interest
from .ready import SyntheticEvents
from .scheduling import Scheduling
from .timers import TimerQueue
from .wakeup import Waker

__all__ = ["Loop", "STRICT_ENV_VAR", "get_loop", "loop_for_map", "managed_interest"]

logger = logging.getLogger("pollchat")

#: ``POLLCHAT_STRICT=1`` asks every channel on every pass (CPython's way);
#: ``POLLCHAT_STRICT=check`` keeps O(ready) passes but compares every
#: channel's answers with its registration on each pass and warns on a
#: difference (a debugging aid: O(map) per pass).
STRICT_ENV_VAR = "POLLCHAT_STRICT"

# A loop whose poll found nothing asks every trusted channel again, at most
# this often (seconds): the safety net that turns a state change the library
# could not observe into a warning and a short delay, never a silent hang.
AUDIT_INTERVAL = 1.0

loop_for_map = maps.loop_for_map

# Bumped in a forked child: every loop then rebuilds its kernel objects,
# which it would otherwise share with the parent.
_fork_generation = 0


def _in_child_after_fork() -> None:
    global _fork_generation
    _fork_generation += 1


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_in_child_after_fork)


def get_loop(map: Optional[Dict[Any, Any]] = None, *,
             backend: Union[BackendName, str, Backend, None] = None,
             use_poll: bool = False) -> Loop:
    """The loop serving ``map`` (default: ``asyncore.socket_map``), created on
    first use with the backend chosen by ``backend``, then
    ``POLLCHAT_BACKEND``, then the ``use_poll`` hint, then ``auto``.

    ``backend`` and ``use_poll`` matter only when the loop is created: a
    loop's backend is fixed for its lifetime.  Creating one first closes the
    implicit loops of maps that nobody holds any more (:func:`maps.sweep`).
    """
    if map is None:
        map = maps.get_socket_map()
    found = maps.loop_for_map(map)
    if found is not None:
        return found
    with maps._lock:
        found = maps.loop_for_map(map)
        if found is None:
            maps.sweep()
            found = Loop(backend, map, use_poll=use_poll)
            found._implicit = True
        return found


def _strict_from_env() -> Union[bool, str]:
    value = os.environ.get(STRICT_ENV_VAR, "").strip().lower()
    if value == "check":
        return "check"
    return value not in ("", "0", "false", "no", "off")


class Loop(ChannelCalls, Scheduling, HostedRuns):
    """An event loop over one channel map, on one backend.

    Args:
        backend: a backend name (``'epoll'``, ``'auto'``...), a
            :class:`~pollchat.backends.Backend` instance to own, or ``None``
            for ``POLLCHAT_BACKEND``/``auto``.
        map: the channel map (key -> channel) to serve; a new dict if
            omitted.  Channels join it with ``dispatcher(sock, map=loop.map)``.
        use_poll: the legacy hint, used only when nothing else names a backend.
        strict: ``True`` asks every channel ``readable()``/``writable()`` on
            every pass, as CPython did; ``"check"`` compares their answers
            with the registrations on every pass and warns on a difference
            (default: ``POLLCHAT_STRICT``, else off).
        isolate_errors: when a channel's ``handle_error()`` itself raises, log
            it and close that channel instead of letting the exception out of
            the loop (CPython lets it out; default off).

    Raises:
        TypeError: ``map`` is not a dict.
        ValueError: ``map`` already has a loop (use :func:`get_loop`).
        UnknownBackendError: the backend name is unknown or unavailable.
    """

    #: References to ``map`` held by the loop's own objects (``self.map``,
    #: the interest tracker's, the idle timeouts'): :func:`maps.sweep` tells a
    #: map nobody else holds by them.
    map_references = 3

    def __init__(self, backend: Union[BackendName, str, Backend, None] = None,
                 map: Optional[Dict[Any, Any]] = None, *, use_poll: bool = False,
                 strict: Union[bool, str, None] = None, isolate_errors: bool = False) -> None:
        if map is None:
            map = {}
        if not isinstance(map, dict):
            raise TypeError(f"map must be a dict of fd -> channel, not {type(map).__name__}")
        if strict is None:
            strict = _strict_from_env()
        elif strict not in (True, False, "check"):
            raise ValueError(f"strict must be True, False or 'check', not {strict!r}")
        self.map = map
        self.backend: Backend = make_backend(backend, use_poll=use_poll)
        # The backend's wakeup(), if it is another event loop (hosted runs).
        self._host_wakeup: Optional[Callable[[], None]] = getattr(self.backend, "wakeup", None)
        self.timers = TimerQueue()
        self._checking = strict == "check"
        self._errors = ErrorPolicy(isolate_errors, self.channel_removed)
        self._interest = Interest(self.backend, map, strict=strict is True,
                                  refused=self._registration_refused,
                                  predicate_failed=self._predicate_failed)
        self._dirty = self._interest.dirty  # the set interest_changed() adds to
        self._idle = IdleTimeouts(self.timers, map, self._idle_expired)
        self._synthetic = SyntheticEvents()  # add_ready()
        self._callbacks: Deque[Tuple[Callable[..., Any], Tuple[Any, ...]]] = collections.deque()
        self._callbacks_lock = threading.Lock()
        self._owner: Optional[int] = None  # thread running the loop
        self._depth = 0
        self._stopping = False
        self._closed = False
        self._implicit = False
        self._next_audit = 0.0
        self._warned: Set[type] = set()  # classes already warned about by the audit
        self._generation = _fork_generation
        self._waker = Waker()
        try:
            self.backend.register(self._waker.fileno(), READ)
            maps.attach(self)
        except BaseException:
            self._release_kernel_objects()
            raise
        for key, channel in list(map.items()):  # channels added before the loop existed
            self._arm_idle_timeout(key, channel)

    # -- properties -------------------------------------------------------------------

    @property
    def strict(self) -> bool:
        """Whether every channel is asked its predicates on every pass."""
        return self._interest.strict

    @property
    def isolate_errors(self) -> bool:
        return self._errors.isolate

    @isolate_errors.setter
    def isolate_errors(self, value: bool) -> None:
        self._errors.isolate = bool(value)

    @property
    def max_fd(self) -> Optional[int]:
        """The largest fd the backend can watch (``None``: no limit of its own)."""
        return self.backend.max_fd

    @property
    def closed(self) -> bool:
        return self._closed

    # -- running ----------------------------------------------------------------------

    def run(self, timeout: Optional[float] = 30.0, count: Optional[int] = None, *,
            wait_for_timers: bool = True,
            sleep: Optional[Callable[[Optional[float]], None]] = None) -> None:
        """Run passes until there is nothing left to wait for, ``count``
        passes are done, or :meth:`stop` is called.

        "Nothing left" means an empty map and, if ``wait_for_timers``, no
        pending timer and no queued callback.  ``asyncore.loop()`` passes
        ``wait_for_timers=False``: it returns when its map is empty, as
        CPython's does.  ``timeout`` bounds each pass's wait (seconds; ``None``
        blocks until an event or timer).  ``sleep``: as for :meth:`run_once`.

        Without ``count``, on a backend that is another event loop (asyncio,
        uvloop), that loop runs the passes (:meth:`drive`) until then.

        Raises:
            RuntimeError: without ``count``, an asyncio event loop is running
                in this thread (this call would block it: use
                ``pollchat.aio.serve()``); and as for :meth:`run_once`.
        """
        self._stopping = False
        if count is None:
            if asyncio_loop_running():
                raise RuntimeError(
                    "pollchat's loop (asyncore.loop()) cannot run inside the asyncio event loop "
                    "running in this thread: it would block that loop until its channels are "
                    "done. Serve them from the asyncio loop instead, with "
                    "`await pollchat.aio.serve(map)`")
            if getattr(self.backend, "drive", None) is not None:
                if not self._run_finished(wait_for_timers):
                    self.drive(timeout, wait_for_timers=wait_for_timers).run()
                return
        remaining = count
        while not self._stopping and (remaining is None or remaining > 0):
            if not self.map and (not wait_for_timers or not (self.timers or self._callbacks)):
                break
            self.run_once(timeout, sleep)
            if remaining is not None:
                remaining -= 1

    def run_once(self, timeout: Optional[float] = 0.0,
                 sleep: Optional[Callable[[Optional[float]], None]] = None) -> None:
        """One pass: bring the registrations up to date, wait up to
        ``timeout`` seconds for events (less if a timer is due sooner), then
        dispatch the events, the due timers and the queued callbacks.

        With an empty map and nothing scheduled it returns at once, as
        CPython's ``poll()`` did.  ``sleep``, if given, is called instead of
        polling when no channel wants anything and nothing is scheduled
        (CPython's ``poll()`` slept with ``time.sleep`` then).

        Raises:
            RuntimeError: the loop is closed, or running in another thread.
        """
        self._enter()
        # The heap itself, not the TimerQueue: len() of the queue is a
        # Python-level call, and this runs on every pass.
        heap = self.timers._heap
        interest = self._interest
        try:
            if self._generation != _fork_generation:
                self._renew_after_fork()
            if (self._dirty or interest.polled or interest.strict
                    or len(self.map) != interest.map_len):
                synced = interest.sync()
                if self._synthetic.parked and synced:
                    self._synthetic.unpark(synced, self.map, interest.registration)
            if self._checking:
                self.audit()
            if not self.map and not heap and not self._callbacks:
                return
            if self._callbacks or self._synthetic.ready:
                timeout = 0.0
            elif heap:
                timeout = self.timers.timeout(timeout)
            elif (sleep is not None and self._host_wakeup is None
                  and len(self.backend.get_map()) == 1):
                # Only the waker is registered: no channel wants anything.  (A
                # backend that is an event loop must still run it, for its tasks.)
                sleep(timeout)
                return
            events = self.backend.poll(timeout)
            # One clock reading after the poll serves the idle watches, the
            # timers and the idle-pass audit; the timers read it again only
            # if a handler scheduled something (call_later(0) in a handler
            # runs at the end of this pass, not after the next one's events).
            now = self.timers.clock() if heap or self._idle.watches or not events else 0.0
            scheduled = self.timers.scheduled
            if self._synthetic.ready:
                events = self._synthetic.merge(events, self.map, interest.registration)
            if events:
                self._dispatch(events, now)
            elif not interest.strict and not self._checking and self.map:
                self._audit_when_idle(now)
            if heap:
                if self.timers.scheduled != scheduled:
                    now = self.timers.clock()
                self._run_timers(now)
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

    def _dispatch(self, events: Any, now: float) -> None:
        _events.dispatching += 1
        try:
            self._dispatch_events(events, now)
        finally:
            _events.dispatching -= 1

    def _dispatch_events(self, events: Any, now: float) -> None:
        """Hand each ready fd's events to its channel.  The hot path: per
        event two dict lookups and one call (two for anything but READ).

        No re-sync of the channel follows: its state changes are reported as
        they happen, and channels with predicates of their own are re-synced
        every pass anyway.
        """
        channel_of = self._interest.channels.get
        object_keys = self._interest.object_keys
        map = self.map
        map_get: Callable[[Any], Any] = map.get
        watches = self._idle.watches
        handler_failed = self._errors.handler_failed
        for fd, mask in events:
            channel: Any = channel_of(fd)
            if channel is None:
                # The waker, or a channel unregistered earlier in this pass
                # (closed): nothing to dispatch.
                if fd == self._waker.fileno():
                    self._waker.drain()
                continue
            key = object_keys.get(fd, fd) if object_keys else fd
            if map_get(key) is not channel:
                self._dirty.add(key)  # the map changed under us: re-sync, don't dispatch
                continue
            if watches:
                watch = watches.get(key)
                if watch is not None:
                    watch.last_active = now
            # The handlers run here, not through ErrorPolicy.deliver(): one
            # call less on the path of every event.  The policy is still
            # ErrorPolicy's, in handler_failed().
            try:
                if mask == READ:
                    channel.handle_read_event()
                else:
                    run_handlers(channel, mask, key, map)
            except REraised:
                raise
            except Exception as exc:
                handler_failed(channel, exc, key, map)

    # -- errors reported to the loop -------------------------------------------------

    def _registration_refused(self, channel: Any, key: Any, exc: Exception) -> None:
        # Treat it as poll(2) treats a closed fd, POLLNVAL: handle_close().
        logger.error("cannot watch %r (fd %r) with the %s backend: %s; closing it",
                     channel, key, self.backend.name, exc)
        self._errors.deliver(channel, NVAL, key, self.map)

    def _predicate_failed(self, channel: Any) -> None:
        # readable()/writable() raised: that channel's handle_error(), as an
        # exception in a handler would.
        try:
            channel.handle_error()
        except REraised:
            raise
        except Exception:
            self._errors.error_handler_failed(channel, self.map)

    def _idle_expired(self, key: Any, channel: Any) -> None:
        self._dirty.add(key)
        self._errors.call(channel, "handle_timeout", self.map, via_handle_error=True)

    # -- checking -----------------------------------------------------------------------

    def audit(self) -> int:
        """Compare every channel's answers with its registration now; warn
        (once per class) about each that differs, and fix it.  O(map).

        Returns the number of channels whose state had changed unobserved.
        """
        found = self._interest.audit()
        for _key, channel, have, wanted in found:
            cls = type(channel)
            if cls in self._warned:
                continue
            self._warned.add(cls)
            logger.warning(
                "%r wants %s but was watched for %s: its state changed in a way pollchat "
                "could not observe (an attribute its readable()/writable() read was "
                "changed in place?). Fixed for now; to have every channel asked on every "
                "pass, as CPython did, set POLLCHAT_STRICT=1 (or Loop(strict=True)).",
                channel, event_names(wanted), event_names(have))
        return len(found)

    def _audit_when_idle(self, now: float) -> None:
        if now >= self._next_audit:
            self._next_audit = now + AUDIT_INTERVAL
            self.audit()

    # -- lifetime ---------------------------------------------------------------------

    def _renew_after_fork(self) -> None:
        """In a forked child: new kernel objects, the same registrations.

        The child inherited the parent's epoll/kqueue instance (shared, so
        its changes would reach the parent) and its waker.
        """
        name = self.backend.name
        self._release_kernel_objects()
        self._waker = Waker()
        self._install_backend(make_backend(name))
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
        maps.detach(self)
        self._interest.polled.clear()
        self._dirty.clear()
        self._synthetic.clear()
        self._idle.clear()
        self.timers.clear()
        self._release_kernel_objects()

    def releasable(self) -> bool:
        """Whether this is an implicit loop that nothing needs right now:
        not running, nothing scheduled.  (Its map may still be in use: see
        :func:`maps.sweep`.)"""
        return (self._implicit and not self._closed and not self._depth
                and not self.timers and not self._callbacks and not self._synthetic.ready)

    def _release_if_idle(self) -> None:
        """Close an implicit loop whose map is empty and that nothing needs."""
        if not self.map and self.releasable():
            self.close()

    def registered_events(self, key: Any) -> int:
        """The events registered in the backend for the channel at ``key``
        (0 if it is not registered): for introspection and tests."""
        reg = self._interest.registration(key)
        return 0 if reg is None else int(reg.events)

    def statistics(self) -> Dict[str, Any]:
        """Counters for introspection: backend, channels, registrations..."""
        interest = self._interest
        return {"backend": self.backend.name, "channels": len(self.map),
                "registered": 0 if self._closed else interest.registered(),
                "polled": len(interest.polled), "dirty": len(self._dirty),
                "timers": len(self.timers), "strict": interest.strict,
                "reading_paused": sum(1 for ch in self.map.values()
                                      if getattr(ch, "_pc_reading_paused", False)),
                "idle_watched": len(self._idle), "ready": len(self._synthetic.ready),
                "parked": len(self._synthetic.parked)}

    def __repr__(self) -> str:
        state = "closed" if self._closed else f"channels={len(self.map)}"
        return f"<Loop {self.backend.name} {state} timers={len(self.timers)}>"

