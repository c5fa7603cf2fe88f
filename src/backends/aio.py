"""asyncio and uvloop as backends: an asyncio event loop is the poller.

:class:`AsyncioBackend` (``"asyncio"``) and :class:`UvloopBackend`
(``"uvloop"``) watch fds with the event loop's ``add_reader()`` and
``add_writer()``.  Like every backend they know nothing of channels; what
they add to the contract is that the "kernel" is another event loop, which
runs code of its own (tasks, protocols, timers) while it waits.

Readiness.  The reader and writer callbacks only *record* readiness: a dict
fd -> ``READ``/``WRITE``, which :meth:`AsyncioBackend.poll` returns and
clears.  asyncio can say no more than that: priority data is never reported
(``PRI`` is accepted as interest and ignored), and a hang-up or an error
shows as readable (and writable, if watched), as with ``select()``.  Regular
files, which the event loop refuses (epoll does), are reported ready on
every poll, as poll(2) and the epoll backend report them.

Two ways to run:

* **Poll by poll** (``POLLCHAT_BACKEND=asyncio`` and ``asyncore.poll()``, or
  ``loop(count=N)``): the backend owns an event loop; ``poll(timeout)``
  runs it until a callback records something, the timeout passes or
  :meth:`~AsyncioBackend.wakeup` is called, then returns what was recorded.
  ``poll(0)`` runs one non-blocking iteration.
* **Driven** (:meth:`AsyncioBackend.drive`: ``asyncore.loop()`` without a
  count on this backend, and ``pollchat.aio.serve()`` inside a running
  loop): the event loop runs the passes itself, from its callbacks
  (:class:`PassDriver`).  Running an event loop once per pass would cost
  more than the pass (uvloop sets its signal handling up on every run), and
  inside ``serve()`` pollchat cannot run the loop at all.

Why a readiness callback runs its pass at once, instead of recording and
scheduling one pass for the batch: asyncio's selector loop runs a callback
scheduled now only after its next ``select()``, which still reports every fd
whose data the pass has not read yet; their callbacks would then run *after*
the pass and record readiness that the pass had just consumed, and the next
pass would hand a channel a read that blocks.  Run at once, each callback's
pass takes what that callback saw, before anything could consume it.  A
pass that is not a readiness callback's (a timer, a wake-up) is scheduled
with ``call_later(0)``, which asyncio runs after the readiness callbacks of
the same iteration, never between a ``select()`` and them.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import math
import os
import threading
import time
from typing import Callable, ClassVar, ContextManager, Dict, Iterator, List, Optional, Set, Tuple

from ._base import _GONE_ERRNOS, ERR, READ, WRITE, Backend, BackendError, EventList
from .pollers import is_file, ready_files

__all__ = ["AsyncioBackend", "EventLoopError", "PassDriver", "UvloopBackend",
           "backend_for_loop", "check_event_loop", "running_loop_error"]

# The longest single wait handed to the event loop, as for the kernel pollers.
_MAX_WAIT = 2_000_000.0


class EventLoopError(BackendError, RuntimeError):
    """The asyncio event loop cannot be used the way it was asked to."""


def check_event_loop(loop: asyncio.AbstractEventLoop) -> None:
    """Raise :class:`EventLoopError` unless ``loop`` can watch fds.

    Windows' default ``ProactorEventLoop`` has no ``add_reader()``.
    """
    if type(loop).add_reader is asyncio.AbstractEventLoop.add_reader:
        raise EventLoopError(
            f"the asyncio event loop {type(loop).__name__} cannot watch sockets: it has no "
            "add_reader() (Windows' default ProactorEventLoop). Use a selector loop: call "
            "asyncio.set_event_loop_policy(asyncio.WindowsSelectorEventLoopPolicy()) before "
            "asyncio starts, or choose another pollchat backend (select)")


def running_loop_error(what: str) -> EventLoopError:
    """The error for blocking on an event loop while one runs in this thread."""
    return EventLoopError(
        f"{what} cannot wait for events here: an asyncio event loop is already running in "
        "this thread, and waiting would block it. Serve the channels from that loop "
        "instead: `await pollchat.aio.serve(map)`")


def _ceil_ms(seconds: float) -> float:
    # Whole milliseconds, rounded up: uvloop's timers round to the nearest
    # millisecond and would fire before the deadline otherwise.
    return math.ceil(min(max(seconds, 0.0), _MAX_WAIT) * 1e3) / 1e3


class AsyncioBackend(Backend):
    """Watches fds with an asyncio event loop's ``add_reader``/``add_writer``.

    Args:
        loop: the event loop to use (not owned: :meth:`close` leaves it
            open); by default a new one from ``asyncio.new_event_loop()``,
            owned and closed with the backend.

    Raises:
        EventLoopError: the loop cannot watch fds (Windows' Proactor).
    """

    name = "asyncio"
    reports = READ | WRITE
    #: Whether a readiness callback runs its pass at once (module docstring),
    #: rather than scheduling one pass for the event loop's whole poll.
    _pass_in_callback = True
    limits = ("no priority data (PRI never reported); hang-up and error show as READ/WRITE; "
              "regular files always ready")

    #: Event loops left behind in a forked child (see :meth:`close`).
    _orphans: ClassVar[List[object]] = []

    def __init__(self, loop: Optional[asyncio.AbstractEventLoop] = None) -> None:
        super().__init__()
        owned = loop is None
        if loop is None:
            loop = self._new_loop()
        try:
            check_event_loop(loop)
        except BaseException:
            if owned:
                loop.close()
            raise
        self.loop = loop
        self._owns_loop = owned
        self._pid = os.getpid()
        self._recorded: Dict[int, int] = {}  # readiness since the last poll()
        self._files: Dict[int, int] = {}  # regular files (refused): fd -> events, always ready
        self._waiting = False  # poll() is running the loop
        self._stop_sent = False
        self._timed_out = False
        self._driver: Optional[PassDriver] = None

    @staticmethod
    def _new_loop() -> asyncio.AbstractEventLoop:
        return asyncio.new_event_loop()

    # -- readiness ------------------------------------------------------------------

    def _readable(self, fd: int) -> None:
        recorded = self._recorded
        recorded[fd] = recorded.get(fd, 0) | READ
        self._recorded_one()

    def _writable(self, fd: int) -> None:
        recorded = self._recorded
        recorded[fd] = recorded.get(fd, 0) | WRITE
        self._recorded_one()

    def _recorded_one(self) -> None:
        driver = self._driver
        if driver is not None:
            if self._pass_in_callback:
                driver.pass_now()  # see the module docstring for why not later
            else:
                driver.schedule()
        elif self._waiting and not self._stop_sent:
            self._stop_sent = True
            self.loop.stop()

    def wakeup(self) -> None:
        """Called by the pollchat loop when code running inside the event
        loop gave it work (a channel added, interest changed, a timer): a
        :meth:`poll` in progress returns, a driven loop runs a pass soon."""
        driver = self._driver
        if driver is not None:
            driver.schedule()
        elif self._waiting and not self._stop_sent:
            self._stop_sent = True
            self.loop.stop()

    # -- registrations ----------------------------------------------------------------

    def _kernel_register(self, fd: int, events: int) -> None:
        self._kernel_modify(fd, 0, events)

    def _kernel_modify(self, fd: int, old: int, new: int) -> None:
        if fd in self._files:
            self._files[fd] = new
            return
        loop = self.loop
        added = 0
        try:
            if new & READ and not old & READ:
                loop.add_reader(fd, self._readable, fd)
                added |= READ
            if new & WRITE and not old & WRITE:
                loop.add_writer(fd, self._writable, fd)
                added |= WRITE
        except RuntimeError as exc:
            # A transport of the event loop owns the fd, or the loop is closed.
            self._unwatch(fd, added)
            raise ValueError(f"the {self.name} backend cannot watch fd {fd}: {exc}") from exc
        except PermissionError:
            self._unwatch(fd, added)
            if old or not is_file(fd):
                raise
            self._files[fd] = new
            return
        except BaseException:
            self._unwatch(fd, added)  # as it was: the caller keeps the old registration
            raise
        self._unwatch(fd, old & ~new)

    def _kernel_unregister(self, fd: int, events: int) -> None:
        if self._files.pop(fd, None) is None:
            self._unwatch(fd, events)

    def _unwatch(self, fd: int, events: int) -> None:
        loop = self.loop
        try:
            if events & READ:
                loop.remove_reader(fd)
            if events & WRITE:
                loop.remove_writer(fd)
        except OSError as exc:
            # Closed behind our back: asyncio's selector then fails to change
            # the other direction's watch, and drops the fd altogether.
            if exc.errno not in _GONE_ERRNOS:
                raise
        recorded = self._recorded.get(fd)
        if recorded is not None:
            # Readiness recorded for a direction no longer watched is stale.
            recorded &= ~events
            if recorded:
                self._recorded[fd] = recorded
            else:
                del self._recorded[fd]

    # -- polling ----------------------------------------------------------------------

    def poll(self, timeout: Optional[float] = None) -> EventList:
        """Return (and forget) the readiness recorded since the last call,
        first running the event loop until something is recorded (or
        ``timeout`` passes) if nothing was.  ``timeout`` 0 runs one
        iteration without blocking.

        Raises:
            EventLoopError: the event loop would have to run, but it is
                running already (then only ``timeout`` 0 is possible: it
                returns what was recorded), or another event loop runs in
                this thread.
        """
        files = ready_files(self._files) if self._files else None
        if not self._recorded:
            self._wait(0.0 if files else timeout)
        recorded = self._recorded
        if files:
            for fd, events in files.items():
                recorded[fd] = events
        if not recorded:
            return []
        self._recorded = {}
        return list(recorded.items())

    def _wait(self, timeout: Optional[float]) -> None:
        loop = self.loop
        if loop.is_running():
            if timeout is not None and timeout <= 0 and asyncio._get_running_loop() is loop:
                return  # a pass inside the running loop: what was recorded is all there is
            raise running_loop_error(f"poll() of the {self.name} backend")
        if asyncio._get_running_loop() is not None:
            raise running_loop_error(f"poll() of the {self.name} backend")
        if timeout is not None and timeout <= 0:
            # stop() before run_forever(): one iteration, selecting with a
            # zero timeout (asyncio's documented behaviour).
            self._run_until_stopped(None, stop_now=True)
            return
        if timeout is None or timeout == math.inf:
            self._run_until_stopped(None)
            return
        deadline = time.monotonic() + min(timeout, _MAX_WAIT)
        while True:
            timed_out = self._run_until_stopped(deadline - time.monotonic())
            # libuv measures timers from the time it cached at the start of
            # its last iteration, possibly long ago: they can fire early.
            if not timed_out or time.monotonic() >= deadline:
                return

    def _run_until_stopped(self, timeout: Optional[float], stop_now: bool = False) -> bool:
        """Run the event loop until a callback stops it (or ``timeout``);
        return whether the timeout stopped it."""
        loop = self.loop
        timer = None
        self._waiting, self._stop_sent, self._timed_out = True, stop_now, False
        try:
            if stop_now:
                loop.stop()
            elif timeout is not None:
                timer = loop.call_later(_ceil_ms(timeout), self._time_up)
            self._before_polling()
            with self._running():
                loop.run_forever()
        finally:
            self._waiting = False
            if timer is not None:
                timer.cancel()
        return self._timed_out

    def _running(self) -> ContextManager[None]:
        """Around each run of the event loop (see :class:`UvloopBackend`)."""
        return contextlib.nullcontext()

    def _before_polling(self) -> None:
        """Called before the event loop may poll again: after a driven pass,
        and before each run (see :class:`UvloopBackend`)."""

    def _time_up(self) -> None:
        if self._waiting and not self._stop_sent:
            self._stop_sent = self._timed_out = True
            self.loop.stop()

    # -- driven -------------------------------------------------------------------------

    def drive(self, run_pass: Callable[[], None], next_deadline: Callable[[], Optional[float]],
              finished: Callable[[], bool], max_wait: Optional[float],
              clock: Callable[[], float] = time.monotonic) -> PassDriver:
        """Let the event loop run passes from its callbacks: see :class:`PassDriver`.

        Raises:
            RuntimeError: the backend is closed, or already driven.
        """
        if self._keys_view is None:
            raise RuntimeError(f"the {self.name} backend is closed")
        if self._driver is not None:
            raise RuntimeError(
                "these channels are already being served by this event loop (one "
                "pollchat.aio.serve() or asyncore.loop() per map at a time)")
        self._driver = PassDriver(self, run_pass=run_pass, next_deadline=next_deadline,
                                  finished=finished, max_wait=max_wait, clock=clock)
        return self._driver

    def _driver_closed(self, driver: PassDriver) -> None:
        if self._driver is driver:
            self._driver = None
            # What was recorded after the last pass may have been consumed
            # since; the event loop reports what is still ready again.
            self._recorded.clear()
        if self._keys_view is None and self._owns_loop and not self.loop.is_running():
            self.loop.close()  # closed during a driven run: closing the loop waited until now

    # -- lifetime -----------------------------------------------------------------------

    def close(self) -> None:
        """Stop watching every fd (the fds stay open), then close the event
        loop if the backend owns it.  Idempotent."""
        if self._keys_view is None:
            return
        loop = self.loop
        if os.getpid() != self._pid:
            # A forked child shares the parent's epoll instance (asyncio's
            # selector, libuv): removing a watch here would remove the
            # parent's, and closing the loop would too (it unregisters its
            # self-pipe).  Leave the object alone, alive.
            AsyncioBackend._orphans.append(loop)
        elif not loop.is_closed():
            for fd, key in list(self._keys.items()):
                self._unwatch(fd, key.events)
        self._recorded.clear()
        self._files.clear()
        super().close()
        driver = self._driver
        if driver is not None:
            # Closed during a driven run (a handler closed the pollchat loop):
            # the next pass reports it, as a pass on any backend would.
            driver.schedule()
        elif self._owns_loop and os.getpid() == self._pid and not loop.is_running():
            loop.close()

    def describe(self) -> str:
        return f"{super().describe()} (on {type(self.loop).__module__}.{type(self.loop).__name__})"


class UvloopBackend(AsyncioBackend):
    """The same on uvloop's event loop (libuv), where uvloop is installed.

    Where libuv differs from asyncio's selector loop:

    * It runs callbacks scheduled now before it polls again, so a driven
      loop can collect a whole poll's readiness and run one pass for it.
    * After a poll error (``POLLERR``: a reset, a refused connect), it calls
      the callbacks once more and stops watching the fd for good (libuv's
      ``UV_EBADF`` status), where epoll would go on reporting it.  Each
      readiness is therefore checked when it is collected: the watch is
      renewed (cheaply: uvloop only swaps the callback) or, if libuv dropped
      it, made again and ``ERR`` added to the events, as epoll reports it.
    * It aborts the process when the kernel refuses a change of watch it
      makes lazily, at its next poll: the fd was closed (or closed and
      reused) while watched.  A change of direction on a watched fd first
      checks that the fd is still the same open file, and otherwise refuses
      it as the kernel would (``EBADF``); and before the loop polls again,
      the fds whose watch changed since are checked the same way, a closed
      one dropped silently, as epoll drops it.
    * Each run of the loop in the main thread opens a socket pair; if that
      fails (the process is at its fd limit) uvloop stays "running" for
      ever, unusable (uvloop 0.23).  An owned loop keeps two fds in reserve
      and hands them over for each run.
    """

    name = "uvloop"
    reports = READ | WRITE | ERR
    limits = ("no priority data (PRI never reported); hang-up shows as READ/WRITE; "
              "regular files always ready")
    _pass_in_callback = False

    def __init__(self, loop: Optional[asyncio.AbstractEventLoop] = None) -> None:
        super().__init__(loop)
        self._identity: Dict[int, Tuple[int, int]] = {}  # fd -> (st_dev, st_ino) when watched
        self._unapplied: Set[int] = set()  # fds whose watch libuv changes at its next poll
        self._spare_fds: List[int] = []
        if self._owns_loop:
            self._keep_spare_fds()

    @staticmethod
    def _new_loop() -> asyncio.AbstractEventLoop:
        import uvloop

        return uvloop.new_event_loop()

    # -- libuv's one-shot poll errors ---------------------------------------------------

    def poll(self, timeout: Optional[float] = None) -> EventList:
        events = super().poll(timeout)
        keys, files = self._keys, self._files
        for i, (fd, ready) in enumerate(events):
            key = keys.get(fd)
            if key is not None and fd not in files and not self._renew_watch(fd, key.events, ready):
                events[i] = (fd, ready | ERR)
        return events

    def _renew_watch(self, fd: int, watched: int, ready: int) -> bool:
        """Renew the watch of ``fd`` for one direction that was just
        reported; return ``False`` if libuv had dropped it (then it is made
        again, when the fd is still open)."""
        loop = self.loop
        try:
            if ready & READ and watched & READ:
                loop.add_reader(fd, self._readable, fd)
            elif ready & WRITE and watched & WRITE:
                loop.add_writer(fd, self._writable, fd)
            return True
        except RuntimeError:  # "the handler is closed": libuv stopped watching
            pass
        self._unwatch(fd, watched & (READ | WRITE))  # forget the dead watch
        try:
            super()._kernel_modify(fd, 0, watched)
        except (OSError, ValueError):
            pass  # closed since: the ERR reported closes the channel, which unregisters it
        return False

    # -- runs in the main thread ---------------------------------------------------------

    @contextlib.contextmanager
    def _running(self) -> Iterator[None]:
        if not self._spare_fds or threading.current_thread() is not threading.main_thread():
            yield
            return
        for fd in self._spare_fds:
            os.close(fd)
        self._spare_fds.clear()
        try:
            yield
        finally:
            self._keep_spare_fds()

    def _keep_spare_fds(self) -> None:
        while len(self._spare_fds) < 2:
            try:
                self._spare_fds.append(os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC))
            except OSError:
                return  # at the limit now: kept at the next run, when uvloop gives them back

    def close(self) -> None:
        super().close()
        for fd in self._spare_fds:
            os.close(fd)
        self._spare_fds.clear()

    def _kernel_modify(self, fd: int, old: int, new: int) -> None:
        if old:
            if _identity(fd) != self._identity.get(fd):
                raise OSError(errno.EBADF,
                              f"fd {fd} was closed (or closed and reused) while watched")
            super()._kernel_modify(fd, old, new)
        else:
            super()._kernel_modify(fd, old, new)
            self._identity[fd] = _identity(fd)
        if (old ^ new) & (READ | WRITE):
            self._unapplied.add(fd)

    def _kernel_unregister(self, fd: int, events: int) -> None:
        self._identity.pop(fd, None)
        self._unapplied.discard(fd)
        super()._kernel_unregister(fd, events)

    def _before_polling(self) -> None:
        unapplied, self._unapplied = self._unapplied, set()
        for fd in unapplied:
            key = self._keys.get(fd)
            if key is not None and fd not in self._files and _identity(fd) != self._identity[fd]:
                # Closed behind our back since its watch changed: libuv would
                # abort on the kernel's refusal.  Unwatched (the fd stays
                # registered here, silent, as with epoll).
                self._unwatch(fd, key.events)


def _identity(fd: int) -> Tuple[int, int]:
    """``(st_dev, st_ino)`` of the open file ``fd``, ``(-1, -1)`` if it is closed."""
    try:
        st = os.fstat(fd)
    except OSError:
        return (-1, -1)
    return (st.st_dev, st.st_ino)


def backend_for_loop(loop: asyncio.AbstractEventLoop) -> AsyncioBackend:
    """A backend bound to (not owning) the event loop ``loop``."""
    if type(loop).__module__.split(".")[0] == "uvloop":
        return UvloopBackend(loop)
    return AsyncioBackend(loop)


class PassDriver:
    """Runs a pollchat loop's passes from an asyncio event loop's callbacks.

    A pass runs when a watched fd is ready (in the readiness callback
    itself), when ``next_deadline()`` (the earliest pollchat timer, on
    ``clock``) is due, when :meth:`schedule` was called (the backend's
    :meth:`~AsyncioBackend.wakeup`, or a thread-safe wake-up, which arrives
    as a readiness), and at least every ``max_wait`` seconds (``None``:
    never), until ``finished()`` says so after a pass.  One asyncio timer
    handle is kept, for the earliest of those deadlines.

    :attr:`future` is then done: ``None``, or the exception a pass raised
    (``ExitNow``, or whatever left a failing ``handle_error()``).
    ``KeyboardInterrupt`` and ``SystemExit`` stop the passes and propagate
    from the callback, out of the event loop, as asyncio's own do.
    """

    def __init__(self, backend: AsyncioBackend, *, run_pass: Callable[[], None],
                 next_deadline: Callable[[], Optional[float]], finished: Callable[[], bool],
                 max_wait: Optional[float], clock: Callable[[], float]) -> None:
        if max_wait is not None and (isinstance(max_wait, bool)
                                     or not isinstance(max_wait, (int, float))
                                     or math.isnan(max_wait) or max_wait < 0):
            raise ValueError(f"max_wait must be a number of seconds >= 0 or None, not "
                             f"{max_wait!r}")
        self._backend = backend
        self._aio = backend.loop
        self.future: asyncio.Future[None] = self._aio.create_future()
        self._run_pass = run_pass
        self._next_deadline = next_deadline
        self._finished = finished
        self._max_wait = max_wait
        self._clock = clock
        self._timer: Optional[asyncio.TimerHandle] = None
        self._timer_at = math.inf
        self._check_at = math.inf if max_wait is None else clock() + max_wait
        self._scheduled = False
        self.active = True  # passes still run
        self.closed = False
        self.schedule()  # the first pass registers the channels

    def pass_now(self) -> None:
        """Run one pass now, then finish or arm the timer."""
        if not self.active:
            return
        try:
            self._run_pass()
            self._backend._before_polling()
            done = self._finished()
        except Exception as exc:  # ExitNow, a failing handle_error(), a closed loop
            self._stop_passes()
            self.future.set_exception(exc)
            return
        except BaseException:  # KeyboardInterrupt, SystemExit: out of the event loop
            self._stop_passes()
            raise
        if done:
            self._stop_passes()
            self.future.set_result(None)
        else:
            self._arm()
            if self._backend._files:
                self.schedule()  # a regular file is always ready: pass again

    def schedule(self) -> None:
        """Run a pass soon (after the readiness callbacks of the event loop's
        next iteration).  Idempotent until that pass runs."""
        if not self._scheduled and self.active:
            self._scheduled = True
            self._aio.call_later(0, self._scheduled_pass)

    def _scheduled_pass(self) -> None:
        self._scheduled = False
        self.pass_now()

    def _arm(self) -> None:
        deadline = self._next_deadline()
        when = self._check_at if deadline is None or self._check_at < deadline else deadline
        if when < self._timer_at:
            # Only ever moved earlier: a handle armed for a deadline that was
            # since cancelled fires, runs a pass, and is armed again.
            if self._timer is not None:
                self._timer.cancel()
            self._timer = self._aio.call_later(_ceil_ms(when - self._clock()), self._timer_fired)
            self._timer_at = when

    def _timer_fired(self) -> None:
        self._timer, self._timer_at = None, math.inf
        if self._max_wait is not None:
            now = self._clock()
            if now >= self._check_at:
                self._check_at = now + self._max_wait
        self.pass_now()

    def _stop_passes(self) -> None:
        self.active = False
        if self._timer is not None:
            self._timer.cancel()
            self._timer, self._timer_at = None, math.inf

    def run(self) -> None:
        """Run the event loop until :attr:`future` is done, then :meth:`close`
        (``asyncore.loop()`` on this backend).

        Raises:
            EventLoopError: an event loop is already running in this thread.
            whatever a pass raised.
        """
        try:
            if asyncio._get_running_loop() is not None:
                raise running_loop_error("the pollchat loop")
            self._backend._before_polling()
            with self._backend._running():
                self._aio.run_until_complete(self.future)
        finally:
            self.close()

    def close(self) -> None:
        """Stop running passes (a pending :attr:`future` is cancelled).
        Idempotent; the backend can be driven again."""
        if self.closed:
            return
        self.closed = True
        self._stop_passes()
        if not self.future.done():
            self.future.cancel()
        self._backend._driver_closed(self)
