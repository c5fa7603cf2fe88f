"""Hosted runs: a loop whose passes another event loop runs.

For a backend that is itself an event loop (asyncio, uvloop:
:mod:`pollchat.backends.aio`), that loop runs the pollchat loop's passes from
its own callbacks (:meth:`HostedRuns.drive`); ``pollchat.aio.serve()`` moves
a map's loop onto the running asyncio loop and back (:meth:`HostedRuns.use_backend`).
A mixin of :class:`pollchat.loop.Loop`.  See docs/design.md ("asyncio and
uvloop: the bridge").
"""

from __future__ import annotations

import functools
import sys
from typing import TYPE_CHECKING, Any, Callable, Deque, Dict, Optional, Tuple, Union

from .backends import READ, Backend, make_backend

if TYPE_CHECKING:
    from .interest import Interest
    from .timers import TimerQueue
    from .wakeup import Waker

__all__ = ["HostedRuns", "asyncio_loop_running"]


def asyncio_loop_running() -> bool:
    """Whether an asyncio event loop runs in this thread (asyncio itself is
    never imported for the question)."""
    asyncio = sys.modules.get("asyncio")
    return asyncio is not None and asyncio._get_running_loop() is not None


class HostedRuns:
    """The hosted-run methods of :class:`pollchat.loop.Loop`."""

    if TYPE_CHECKING:  # Loop's
        backend: Backend
        map: Dict[Any, Any]
        timers: TimerQueue
        _callbacks: Deque[Tuple[Callable[..., Any], Tuple[Any, ...]]]
        _closed: bool
        _depth: int
        _stopping: bool
        _waker: Waker
        _interest: Interest
        _host_wakeup: Optional[Callable[[], None]]

        def run_once(self, timeout: Optional[float] = 0.0,
                     sleep: Optional[Callable[[Optional[float]], None]] = None) -> None: ...

    def drive(self, max_wait: Optional[float] = 30.0, *, wait_for_timers: bool = False) -> Any:
        """Let the backend's own event loop run this loop's passes from its
        callbacks, for a backend that is another event loop (asyncio, uvloop:
        :meth:`pollchat.backends.aio.AsyncioBackend.drive`).

        A pass then runs whenever a registered fd is ready, the earliest timer
        is due, work is given from outside a pass (``wakeup()``), a
        thread-safe callback is queued, or ``max_wait`` seconds passed (the
        ``timeout`` of :meth:`run`; ``None``: never), until :meth:`run` would
        stop: :meth:`stop` was called, or nothing is left to wait for (see
        ``wait_for_timers`` there).  :meth:`run` uses it without a count,
        ``pollchat.aio.serve()`` in a running asyncio loop.

        Returns the backend's driver: its ``future`` is done then, and its
        ``close()`` stops it early.

        Raises:
            RuntimeError: the backend cannot run passes itself, or is
                already doing so.
        """
        drive = getattr(self.backend, "drive", None)
        if drive is None:
            raise RuntimeError(f"the {self.backend.name} backend cannot run passes itself; "
                               "use run()")
        self._stopping = False
        return drive(functools.partial(self.run_once, 0.0), self.timers.next_deadline,
                     functools.partial(self._run_finished, wait_for_timers), max_wait,
                     self.timers.clock)

    def _run_finished(self, wait_for_timers: bool) -> bool:
        """What :meth:`run` stops on: :meth:`stop`, or nothing left to wait for."""
        return self._stopping or (not self.map and (
            not wait_for_timers or not (self.timers or self._callbacks)))

    def use_backend(self, backend: Union[str, Backend, None]) -> None:
        """Move the channels to another backend: a name, as for the
        constructor (``None``: ``POLLCHAT_BACKEND``, else ``auto``), or an
        instance to own.  The current backend is closed (its watches removed;
        the channels' fds stay open) and every channel is registered again
        before the next poll; timers, queued callbacks, paused reading and
        idle timeouts stay.  O(map) at the next pass.
        ``pollchat.aio.serve()`` uses it to bring a map's channels into the
        running asyncio loop, and back.

        Raises:
            RuntimeError: the loop is closed, or running a pass.
            UnknownBackendError: the name is unknown or unavailable.
        """
        if self._closed:
            raise RuntimeError("the loop is closed")
        if self._depth:
            raise RuntimeError("the loop is running a pass: change its backend between runs")
        if backend is self.backend:
            return
        old = self.backend
        self._install_backend(make_backend(backend))
        old.close()

    def _install_backend(self, backend: Backend) -> None:
        try:
            backend.register(self._waker.fileno(), READ)
        except BaseException:
            backend.close()
            raise
        self.backend = backend
        self._host_wakeup = getattr(backend, "wakeup", None)
        self._interest.use_backend(backend)
