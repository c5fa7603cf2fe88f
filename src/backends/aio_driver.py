"""Running a pollchat loop's passes from an asyncio event loop's callbacks.

:class:`PassDriver` is what :meth:`AsyncioBackend.drive
<pollchat.backends.aio.AsyncioBackend.drive>` returns, for
``asyncore.loop()`` on the asyncio and uvloop backends and for
``pollchat.aio.serve()``; the helpers are shared with the backends.  See
:mod:`pollchat.backends.aio` for why passes run where they do.
"""

from __future__ import annotations

import asyncio
import collections
import math
from typing import TYPE_CHECKING, Any, Callable, Optional, Sized

from ._base import BackendError

if TYPE_CHECKING:
    from .aio import AsyncioBackend

__all__ = ["MAX_WAIT", "EventLoopError", "PassDriver", "ceil_ms", "check_event_loop",
           "running_loop_error"]

#: The longest single wait handed to the event loop, as for the kernel pollers.
MAX_WAIT = 2_000_000.0


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


def ceil_ms(seconds: float) -> float:
    """``seconds`` as a delay for the event loop: at most :data:`MAX_WAIT`,
    rounded up to whole milliseconds (uvloop's timers round to the nearest
    one, and would fire before the deadline)."""
    return math.ceil(min(max(seconds, 0.0), MAX_WAIT) * 1e3) / 1e3


class PassDriver:
    """Runs a pollchat loop's passes from an asyncio event loop's callbacks.

    A pass runs when a watched fd is ready (in the readiness callback, or
    one for a batch: :meth:`ready_in_selector_loop`), when
    ``next_deadline()`` (the earliest pollchat timer, on ``clock``) is due,
    when :meth:`schedule` was called (the backend's
    :meth:`~AsyncioBackend.wakeup`; a thread-safe wake-up arrives as a
    readiness), and at least every ``max_wait`` seconds (``None``: never),
    until ``finished()`` says so after a pass.  One asyncio timer handle is
    kept, for the earliest of those deadlines.

    :attr:`future` is then done: ``None``, or the exception a pass raised
    (``ExitNow``, or whatever left a failing ``handle_error()``).
    ``KeyboardInterrupt`` and ``SystemExit`` stop the passes and propagate
    from the callback, out of the event loop, as asyncio's own do.
    """

    def __init__(self, backend: AsyncioBackend, *, run_pass: Callable[[], None],
                 next_deadline: Callable[[], Optional[float]], finished: Callable[[], bool],
                 max_wait: Optional[float], clock: Callable[[], float],
                 schedule_soon: Callable[..., Any]) -> None:
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
        self._schedule_soon = schedule_soon
        # asyncio's queue of callbacks to run (private, but in every version
        # since 3.4): only a hint for ready_in_selector_loop().
        queued = getattr(self._aio, "_ready", None)
        self._queued: Sized = queued if isinstance(queued, collections.deque) else ()
        self._timer: Optional[asyncio.TimerHandle] = None
        self._timer_at = math.inf
        self._check_at = math.inf if max_wait is None else clock() + max_wait
        self._scheduled = False
        self._scheduled_handle: Optional[asyncio.Handle] = None
        self.active = True  # passes still run
        self.closed = False
        self.schedule()  # the first pass registers the channels

    def pass_now(self) -> None:
        """Run one pass now, then finish or arm the timer."""
        if not self.active:
            return
        if self.future.done():  # cancelled: the caller stopped waiting
            self._stop_passes()
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

    def ready_in_selector_loop(self) -> None:
        """A readiness callback, on a loop that selects before it runs what
        ``call_soon()`` schedules (asyncio's: see :mod:`pollchat.backends.aio`).

        The last callback of the event loop's iteration runs the pass, for
        the readiness all of them recorded: they come from one select, and
        no pass has run since.  The loop's queue of callbacks tells which
        is the last: it is empty then.  (It is asyncio's private
        ``_ready``; without it every callback runs a pass, which is as
        safe.)  An earlier one makes sure a pass follows, should the last
        callback of the iteration be another kind: one scheduled with
        ``call_later(0)``, which runs after the readiness callbacks of the
        next iteration.  A pending scheduled pass is cancelled by the pass
        that runs now, which does its work.
        """
        if self._queued:
            self.schedule()
            return
        if self._scheduled:
            self._unschedule()
        self.pass_now()

    def schedule(self) -> None:
        """Run a pass soon (after the readiness callbacks of the event loop's
        next iteration).  Idempotent until that pass runs."""
        if not self._scheduled and self.active:
            self._scheduled = True
            self._scheduled_handle = self._schedule_soon(self._scheduled_pass)

    def _unschedule(self) -> None:
        self._scheduled = False
        if self._scheduled_handle is not None:
            self._scheduled_handle.cancel()
            self._scheduled_handle = None

    def _scheduled_pass(self) -> None:
        self._scheduled = False
        self._scheduled_handle = None
        self.pass_now()

    def _arm(self) -> None:
        deadline = self._next_deadline()
        when = self._check_at if deadline is None or self._check_at < deadline else deadline
        if when < self._timer_at:
            # Only ever moved earlier: a handle armed for a deadline that was
            # since cancelled fires, runs a pass, and is armed again.
            if self._timer is not None:
                self._timer.cancel()
            self._timer = self._aio.call_later(ceil_ms(when - self._clock()), self._timer_fired)
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
