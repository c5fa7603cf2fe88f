"""asyncio and uvloop as backends: an asyncio event loop is the poller.

:class:`AsyncioBackend` (``"asyncio"``) and :class:`~.aio_uvloop.UvloopBackend`
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

Where a driven pass runs matters.  asyncio's selector loop runs what
``call_soon()`` scheduled only after its next ``select()``, which still
reports every fd whose data no pass has read yet: a pass scheduled that way
would be followed by readiness callbacks recording what it had just
consumed, and the next pass would hand a channel a read that blocks.  So
the last readiness callback of an iteration runs the pass for all of them
(:meth:`PassDriver.ready_in_selector_loop`), and passes for other reasons
(timers, wake-ups) are scheduled with ``call_later(0)``, which asyncio runs
after the readiness callbacks of the same iteration, never between a
``select()`` and them.  libuv runs ``call_soon()`` callbacks before it polls
again, so uvloop's readiness schedules one pass per poll with it.
docs/design.md has the whole argument, and the test that fails otherwise.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import math
import os
import time
from typing import Callable, ClassVar, ContextManager, Dict, List, Optional

from ._base import _GONE_ERRNOS, READ, WRITE, Backend, EventList
from .aio_driver import (
    MAX_WAIT,
    EventLoopError,
    PassDriver,
    ceil_ms,
    check_event_loop,
    running_loop_error,
)
from .pollers import is_file, ready_files

__all__ = ["AsyncioBackend", "EventLoopError", "PassDriver", "backend_for_loop",
           "check_event_loop", "running_loop_error"]


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
    limits = ("no priority data (PRI never reported); hang-up and error show as READ/WRITE; "
              "regular files always ready")
    #: Whether the event loop polls again before it runs the callbacks
    #: scheduled with call_soon() (asyncio's selector loop does; libuv does
    #: not).  Then a readiness callback runs its pass at once, and a pass
    #: scheduled for another reason waits for call_later(0): see the module
    #: docstring.  Otherwise one pass runs for a whole poll, scheduled with
    #: call_soon().
    _selects_first = True

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
        self._on_readiness: Callable[[], None] = _nothing

    @staticmethod
    def _new_loop() -> asyncio.AbstractEventLoop:
        return asyncio.new_event_loop()

    # -- readiness ------------------------------------------------------------------

    def _readable(self, fd: int) -> None:
        recorded = self._recorded
        recorded[fd] = recorded.get(fd, 0) | READ
        self._on_readiness()

    def _writable(self, fd: int) -> None:
        recorded = self._recorded
        recorded[fd] = recorded.get(fd, 0) | WRITE
        self._on_readiness()

    def _set_on_readiness(self) -> None:
        """What a readiness callback does after recording: run or schedule
        a pass (driven), stop the loop (in :meth:`poll`), or nothing."""
        driver = self._driver
        if driver is not None:
            self._on_readiness = (driver.ready_in_selector_loop if self._selects_first
                                  else driver.schedule)
        elif self._waiting:
            self._on_readiness = self._stop_waiting
        else:
            self._on_readiness = _nothing

    def _stop_waiting(self) -> None:
        if not self._stop_sent:
            self._stop_sent = True
            self.loop.stop()

    def wakeup(self) -> None:
        """Called by the pollchat loop when code running inside the event
        loop gave it work (a channel added, interest changed, a timer): a
        :meth:`poll` in progress returns, a driven loop runs a pass soon."""
        driver = self._driver
        if driver is not None:
            driver.schedule()
        elif self._waiting:
            self._stop_waiting()

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
        deadline = time.monotonic() + min(timeout, MAX_WAIT)
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
        self._set_on_readiness()
        try:
            if stop_now:
                loop.stop()
            elif timeout is not None:
                timer = loop.call_later(ceil_ms(timeout), self._time_up)
            self._before_polling()
            with self._running():
                loop.run_forever()
        finally:
            self._waiting = False
            self._set_on_readiness()
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
            self._timed_out = True
            self._stop_waiting()

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
        driver = PassDriver(self, run_pass=run_pass, next_deadline=next_deadline,
                            finished=finished, max_wait=max_wait, clock=clock,
                            schedule_soon=(functools.partial(self.loop.call_later, 0)
                                           if self._selects_first else self.loop.call_soon))
        self._driver = driver
        self._set_on_readiness()
        return driver

    def _driver_closed(self, driver: PassDriver) -> None:
        if self._driver is driver:
            self._driver = None
            self._set_on_readiness()
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


def _nothing() -> None:
    pass


def backend_for_loop(loop: asyncio.AbstractEventLoop) -> AsyncioBackend:
    """A backend bound to (not owning) the event loop ``loop``."""
    if type(loop).__module__.split(".")[0] == "uvloop":
        from .aio_uvloop import UvloopBackend

        return UvloopBackend(loop)
    return AsyncioBackend(loop)
