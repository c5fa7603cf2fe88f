"""uvloop as a backend: :class:`UvloopBackend`, the asyncio backend on
libuv's event loop, where uvloop is installed."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import importlib
import os
import threading
from typing import Dict, Iterator, List, Optional, Set, Tuple

from ._base import ERR, READ, WRITE, EventList
from .aio import AsyncioBackend

__all__ = ["UvloopBackend"]


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
    _selects_first = False

    def __init__(self, loop: Optional[asyncio.AbstractEventLoop] = None) -> None:
        super().__init__(loop)
        self._identity: Dict[int, Tuple[int, int]] = {}  # fd -> (st_dev, st_ino) when watched
        self._unapplied: Set[int] = set()  # fds whose watch libuv changes at its next poll
        self._spare_fds: List[int] = []
        if self._owns_loop:
            self._keep_spare_fds()

    @staticmethod
    def _new_loop() -> asyncio.AbstractEventLoop:
        # Imported by name: uvloop is an optional extra, and the package must
        # type-check the same whether or not it is installed.
        uvloop = importlib.import_module("uvloop")
        loop: asyncio.AbstractEventLoop = uvloop.new_event_loop()
        return loop

    # -- libuv's one-shot poll errors ---------------------------------------------------

    def poll(self, timeout: Optional[float] = None) -> EventList:
        events = super().poll(timeout)
        keys, files = self._keys, self._files
        add_reader, readable = self.loop.add_reader, self._readable
        add_writer, writable = self.loop.add_writer, self._writable
        for i, (fd, ready) in enumerate(events):
            # Renew the watch of one direction just reported (uvloop only
            # swaps the callback), which fails if libuv dropped it.
            key = keys.get(fd)
            if key is None or fd in files:
                continue
            try:
                if ready & READ and key.events & READ:
                    add_reader(fd, readable, fd)
                elif ready & WRITE and key.events & WRITE:
                    add_writer(fd, writable, fd)
            except RuntimeError:  # "the handler is closed": libuv stopped watching
                self._watch_again(fd, key.events)
                events[i] = (fd, ready | ERR)
        return events

    def _watch_again(self, fd: int, watched: int) -> None:
        self._unwatch(fd, watched)  # forget the dead watch
        try:
            super()._kernel_modify(fd, 0, watched)
        except (OSError, ValueError):
            pass  # closed since: the ERR reported closes the channel, which unregisters it

    # -- runs in the main thread ---------------------------------------------------------

    @contextlib.contextmanager
    def _running(self) -> Iterator[None]:
        if not self._spare_fds or threading.current_thread() is not threading.main_thread():
            yield
            return
        self._close_spare_fds()
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

    def _close_spare_fds(self) -> None:
        # Each fd leaves the list before it is closed: a KeyboardInterrupt
        # between the two then leaks one fd at worst, where closing first
        # would leave a closed number listed, to be closed again later when
        # it may belong to someone else's socket.
        spare = self._spare_fds
        while spare:
            os.close(spare.pop())

    def close(self) -> None:
        super().close()
        self._close_spare_fds()

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
