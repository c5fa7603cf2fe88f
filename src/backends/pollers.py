"""The five pollers: select, poll, epoll, devpoll and kqueue.

Each is a :mod:`selectors` class extended to report neutral events (see
:mod:`pollchat.backends._base`).  Most of a backend is data: its kernel class
and the table that maps the kernel's flags onto neutral bits.

What each can report, and why not more:

* **select** -- ``READ``, ``WRITE``, ``PRI`` (the exceptfds set).  A hang-up
  or an error shows as readable/writable, as in select(2) itself.  A closed fd
  makes select(2) fail with ``EBADF`` for the whole call; the backend then
  finds the closed fds and reports them as ``NVAL``.  fds at or above
  ``FD_SETSIZE`` are refused at registration.
* **poll** and **devpoll** -- all six: ``POLLIN``/``POLLOUT``/``POLLPRI``
  plus ``POLLHUP``, ``POLLERR``, ``POLLNVAL``.
* **epoll** -- ``READ``, ``WRITE``, ``PRI``, ``HUP``, ``ERR``.  No ``NVAL``:
  a closed fd silently leaves the epoll set.  epoll refuses regular files
  (``EPERM``); like poll(2), which reports them always ready, the backend
  then reports them ready on every poll.
* **kqueue** -- ``READ``, ``WRITE``, ``HUP`` (``EV_EOF`` on the write
  filter), ``ERR`` (``EV_ERROR`` or an ``EV_EOF`` carrying a socket error).
  Like epoll, it drops a closed fd silently (no ``NVAL``).  kqueue has no filter for priority
  data, so ``PRI`` is accepted as interest but never reported.  ``EV_EOF`` on
  the read filter is a half-close: still data to read, reported as ``READ``
  so nothing buffered is lost (recv() then returns ``b''``).
"""

from __future__ import annotations

import errno
import math
import os
import select
import stat
from typing import Any, ClassVar, Dict, List, Optional, Set

from ._base import (
    ERR,
    HUP,
    NVAL,
    PRI,
    READ,
    WRITE,
    Backend,
    EventList,
    NativeEvents,
)

# `select` is the binding that pollchat.asyncore rebinds when a program
# assigns asyncore.select (CPython's poll() and poll2() looked select.select
# and select.poll up there): the select and poll backends use it.  The others
# use the module itself, whatever that binding becomes.
_kernels = select

#: select()'s limit on fd values on POSIX systems (glibc, the BSDs, macOS).
#: Python does not export it; every POSIX libc we know of uses 1024.
FD_SETSIZE = 1024


# The longest single wait handed to a kernel: poll(2) and epoll take an int
# of milliseconds (about 24.8 days at most).  A capped wait returns early with
# no events; callers loop anyway.
_MAX_WAIT = 2_000_000.0


def _ms(timeout: Optional[float]) -> Optional[int]:
    """Seconds to poll(2)'s milliseconds, rounding up so that a short timeout
    waits *at least* that long instead of turning into a busy 0."""
    if timeout is None or timeout == math.inf:
        return None
    if timeout <= 0:
        return 0
    return math.ceil(min(timeout, _MAX_WAIT) * 1e3)


def _seconds(timeout: Optional[float]) -> Optional[float]:
    """A timeout for select(2)/kqueue: ``None`` blocks, negatives are 0."""
    if timeout is None or timeout == math.inf:
        return None
    return min(max(timeout, 0), _MAX_WAIT)


class SelectBackend(Backend):
    """select(2): everywhere, but only fds below ``FD_SETSIZE``."""

    name = "select"
    reports = READ | WRITE | PRI | NVAL
    max_fd = FD_SETSIZE - 1
    limits = ("hang-up and error show as READ/WRITE; fds >= FD_SETSIZE (1024) refused; "
              "every call hands the kernel every fd (O(n))")

    def __init__(self) -> None:
        super().__init__()
        # select() takes the three sets afresh on every call: these are the
        # whole "kernel" state.
        self._readers: Set[int] = set()
        self._writers: Set[int] = set()
        self._priority: Set[int] = set()  # fds watched for exceptional conditions

    def _kernel_register(self, fd: int, events: int) -> None:
        self._kernel_modify(fd, 0, events)

    def _kernel_modify(self, fd: int, old: int, new: int) -> None:
        for bit, fds in ((READ, self._readers), (WRITE, self._writers), (PRI, self._priority)):
            if new & bit:
                fds.add(fd)
            else:
                fds.discard(fd)

    def _kernel_unregister(self, fd: int, events: int) -> None:
        self._kernel_modify(fd, events, 0)

    def poll(self, timeout: Optional[float] = None) -> EventList:
        try:
            readable, writable, exceptional = select.select(
                self._readers, self._writers, self._priority, _seconds(timeout))
        except OSError as exc:
            # One closed fd fails the whole call (EBADF) and select() does
            # not say which: find them, so the caller can drop just those.
            if exc.errno != errno.EBADF:
                raise
            return [(fd, NVAL) for fd in self._keys if _is_closed(fd)]
        ready: Dict[int, int] = dict.fromkeys(readable, READ)
        for fd in writable:
            ready[fd] = ready.get(fd, 0) | WRITE
        for fd in exceptional:
            ready[fd] = ready.get(fd, 0) | PRI
        return list(ready.items())


def _is_closed(fd: int) -> bool:
    try:
        os.fstat(fd)
    except OSError:
        return True
    return False


def is_file(fd: int) -> bool:
    """Whether ``fd`` is a regular file or a directory: what epoll (and so
    asyncio and libuv) refuse with ``EPERM``, and poll(2) reports always
    ready.  Backends then report it ready on every poll themselves."""
    mode = os.fstat(fd).st_mode
    return stat.S_ISREG(mode) or stat.S_ISDIR(mode)


def ready_files(files: Dict[int, int]) -> Dict[int, int]:
    """Of ``files`` (fd -> events watched), the ones still open, each with
    the ``READ``/``WRITE`` it watches: they are always ready.  A closed
    file is dropped, as epoll drops a closed fd."""
    return {fd: events & (READ | WRITE) for fd, events in files.items()
            if events & (READ | WRITE) and not _is_closed(fd)}


class _PollLikeBackend(Backend):
    """poll(2), epoll(7) and /dev/poll: a kernel object with
    register/modify/unregister/poll and poll-style flags.

    A subclass is data: ``_FLAGS`` (native <-> neutral) and ``_new_kernel``
    (makes the kernel object), as ``selectors._PollLikeSelector`` does.
    """

    #: ``((native bit, neutral bit), ...)``: interest bits first.
    _FLAGS: NativeEvents

    def __init__(self) -> None:
        super().__init__()
        self._selector: Any = self._new_kernel()

    def _new_kernel(self) -> Any:
        raise NotImplementedError

    def _kernel_register(self, fd: int, events: int) -> None:
        self._selector.register(fd, self._FLAGS.to_native(events))

    def _kernel_modify(self, fd: int, old: int, new: int) -> None:
        self._selector.modify(fd, self._FLAGS.to_native(new))

    def _kernel_unregister(self, fd: int, events: int) -> None:
        self._selector.unregister(fd)

    def poll(self, timeout: Optional[float] = None) -> EventList:
        return self._FLAGS.translate(self._selector.poll(_ms(timeout)))


def _poll_flags() -> NativeEvents:
    k = _kernels
    return NativeEvents(((k.POLLIN, READ), (k.POLLOUT, WRITE), (k.POLLPRI, PRI),
                         (k.POLLHUP, HUP), (k.POLLERR, ERR), (k.POLLNVAL, NVAL)))


if hasattr(select, "poll"):
    class PollBackend(_PollLikeBackend):
        """poll(2): no fd limit; O(n) per call in the kernel."""

        name = "poll"
        reports = READ | WRITE | PRI | HUP | ERR | NVAL
        limits = "every call hands the kernel every fd (O(n))"
        _FLAGS = _poll_flags()

        def _new_kernel(self) -> Any:
            return select.poll()


if hasattr(select, "epoll"):
    class EpollBackend(_PollLikeBackend):
        """epoll(7), Linux: registrations live in the kernel; O(ready) per call."""

        name = "epoll"
        reports = READ | WRITE | PRI | HUP | ERR
        kernel_registry = True
        limits = "a closed fd silently leaves the set (no NVAL); regular files always ready"
        _FLAGS = NativeEvents(((_kernels.EPOLLIN, READ), (_kernels.EPOLLOUT, WRITE),
                               (_kernels.EPOLLPRI, PRI), (_kernels.EPOLLHUP, HUP),
                               (_kernels.EPOLLERR, ERR)))

        def __init__(self) -> None:
            super().__init__()
            # Regular files that epoll refused: {fd: events}, reported ready
            # on every poll, as poll(2) and select(2) report them.
            self._always_ready: Dict[int, int] = {}

        def _new_kernel(self) -> Any:
            return _kernels.epoll()

        def fileno(self) -> int:
            return int(self._selector.fileno())

        def _kernel_register(self, fd: int, events: int) -> None:
            try:
                super()._kernel_register(fd, events)
            except PermissionError:
                # EPERM: "The target file fd does not support epoll" (regular
                # files, directories).  Twisted falls back the same way
                # (_ContinuousPolling).
                if not is_file(fd):
                    raise
                self._always_ready[fd] = events

        def _kernel_modify(self, fd: int, old: int, new: int) -> None:
            if fd in self._always_ready:
                self._always_ready[fd] = new
            else:
                super()._kernel_modify(fd, old, new)

        def _kernel_unregister(self, fd: int, events: int) -> None:
            if self._always_ready.pop(fd, None) is None:
                super()._kernel_unregister(fd, events)

        def poll(self, timeout: Optional[float] = None) -> EventList:
            wait = _seconds(timeout)
            live = None
            if self._always_ready:
                # A closed file would be "ready" forever: epoll itself drops
                # closed fds, so drop them too.
                live = ready_files(self._always_ready)
                if live:
                    wait = 0
            # maxevents is left at its default (FD_SETSIZE - 1): with
            # level-triggered epoll, anything left over is reported by the
            # next call.
            ready = self._FLAGS.translate(self._selector.poll(-1 if wait is None else wait))
            if live:
                ready.extend(live.items())
            return ready

        def close(self) -> None:
            self._selector.close()
            super().close()


class DevpollBackend(_PollLikeBackend):
    """Solaris/illumos /dev/poll.

    The kernel class is looked up when the backend is created (not when this
    module is imported) so that tests on other systems can stand in a
    faithful ``select.devpoll``.
    """

    name = "devpoll"
    reports = READ | WRITE | PRI | HUP | ERR | NVAL
    kernel_registry = True
    limits = "Solaris/illumos only"

    def __init__(self) -> None:
        self._FLAGS = _poll_flags()
        super().__init__()

    def _new_kernel(self) -> Any:
        return _kernels.devpoll()  # type: ignore[attr-defined]

    def fileno(self) -> int:
        return int(self._selector.fileno())

    def close(self) -> None:
        self._selector.close()
        super().close()


class KqueueBackend(Backend):
    """BSD/macOS kqueue(2): one kernel filter per direction.

    Like ``selectors.KqueueSelector``, but each filter's flags are kept: see
    the module docstring for how they map.  The kernel names are looked up
    when the backend is created, so tests on Linux can stand in a faithful
    ``select.kqueue``.

    It relies on nothing that differs between kqueues (FreeBSD, macOS,
    libkqueue): changes go in calls with no room for events, so a failed
    change is always an ``OSError``; a poll has room for every registered
    filter; of an event it reads the filter, ``EV_EOF``, ``EV_ERROR`` and
    ``fflags``, never the other flags nor ``data``.
    """

    #: kqueue objects left by forked children, kept from being collected
    #: (see :meth:`close`).
    _orphans: ClassVar[List[object]] = []

    name = "kqueue"
    reports = READ | WRITE | HUP | ERR
    kernel_registry = True
    limits = ("no priority-data filter (PRI never reported); a closed fd leaves silently; "
              "read-side EOF reported as READ")

    def __init__(self) -> None:
        super().__init__()
        kernel: Any = _kernels  # the KQ_* names exist only where kqueue does
        self._selector = kernel.kqueue()
        self._kevent = kernel.kevent
        self._read_filter = kernel.KQ_FILTER_READ
        self._write_filter = kernel.KQ_FILTER_WRITE
        self._add = kernel.KQ_EV_ADD
        self._delete = kernel.KQ_EV_DELETE
        self._eof = kernel.KQ_EV_EOF
        self._error = kernel.KQ_EV_ERROR
        self._filters = 0  # how many filters are registered: the most events one poll can return
        self._pid = os.getpid()  # the process the kqueue belongs to

    def fileno(self) -> int:
        return int(self._selector.fileno())

    def _change(self, fd: int, kernel_filter: int, flags: int) -> None:
        self._selector.control([self._kevent(fd, kernel_filter, flags)], 0, 0)

    def _kernel_register(self, fd: int, events: int) -> None:
        self._kernel_modify(fd, 0, events)

    def _kernel_modify(self, fd: int, old: int, new: int) -> None:
        added = []
        try:
            for bit, kernel_filter in ((READ, self._read_filter), (WRITE, self._write_filter)):
                if new & bit and not old & bit:
                    self._change(fd, kernel_filter, self._add)
                    added.append(kernel_filter)
                    self._filters += 1
            for bit, kernel_filter in ((READ, self._read_filter), (WRITE, self._write_filter)):
                if old & bit and not new & bit:
                    self._change(fd, kernel_filter, self._delete)
                    self._filters -= 1
        except OSError:
            # Roll back what this call added, so the kernel matches the
            # bookkeeping that the caller keeps unchanged on failure.
            for kernel_filter in added:
                self._delete_quietly(fd, kernel_filter)
            raise

    def _delete_quietly(self, fd: int, kernel_filter: int) -> None:
        self._filters -= 1
        try:
            self._change(fd, kernel_filter, self._delete)
        except OSError as exc:
            # The fd was closed: kqueue dropped its filters with it.
            if exc.errno not in (errno.EBADF, errno.ENOENT):
                raise

    def _kernel_unregister(self, fd: int, events: int) -> None:
        for bit, kernel_filter in ((READ, self._read_filter), (WRITE, self._write_filter)):
            if events & bit:
                self._delete_quietly(fd, kernel_filter)

    def poll(self, timeout: Optional[float] = None) -> EventList:
        # With max_ev 0 kqueue would ignore the timeout: ask for at least one.
        kevents = self._selector.control(None, max(self._filters, 1), _seconds(timeout))
        ready: Dict[int, int] = {}
        read_filter, eof, error = self._read_filter, self._eof, self._error
        for kev in kevents:
            flags = kev.flags
            if flags & error:
                events = NVAL if kev.data == errno.EBADF else ERR
            elif kev.filter == read_filter:
                events = READ
                if flags & eof and kev.fflags:
                    events |= ERR  # EOF with a pending socket error (fflags)
            else:
                events = WRITE
                if flags & eof:
                    events |= ERR if kev.fflags else HUP
            ready[kev.ident] = ready.get(kev.ident, 0) | events
        return list(ready.items())

    def close(self) -> None:
        if os.getpid() == self._pid:
            self._selector.close()
        elif not self._selector.closed:
            # A forked child: kqueue(2) "is not inherited by a child created
            # with fork(2)", so the object's fd number names nothing of ours,
            # or by now a file the child opened, which close() would close.
            # CPython 3.12.1+ marks the object closed in the child
            # (gh-110395); older ones close the number when the object is
            # collected, so it is kept alive instead (libuv does not close it
            # either, for the same reason).
            KqueueBackend._orphans.append(self._selector)
        super().close()
