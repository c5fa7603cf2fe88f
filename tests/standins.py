"""Stand-ins for ``select.kqueue``/``select.kevent`` and ``select.devpoll``.

pollchat's kqueue and /dev/poll backends cannot run natively on Linux, so the
tests stand these in: ``kqueue`` is emulated on ``select.epoll`` and
``devpoll`` on ``select.poll``.  :func:`install_kqueue` and
:func:`install_devpoll` patch them into the :mod:`select` module (through
pytest's ``monkeypatch``, so they are undone after the test); the backends
registry then sees them as available and ``KqueueBackend()`` /
``DevpollBackend()`` are built on top of them.

Faithful (CPython's documented API, FreeBSD's kqueue(2) / Solaris' poll(7d))
----------------------------------------------------------------------------
* ``kevent(ident, filter=KQ_FILTER_READ, flags=KQ_EV_ADD, fflags=0, data=0,
  udata=0)``: writable ``ident/filter/flags/fflags/data/udata``; ``ident`` an
  int or an object with ``fileno()``; ordered and compared like CPython's
  (field by field), unhashable, same ``repr`` (``kqueue_api.kevent``, shared
  with the libkqueue look-alike).
* ``kqueue()``: ``control(changelist, max_events, timeout=None)``,
  ``fileno()``, ``close()``, ``closed``; the BSD constant values.  The same
  argument errors as CPython (``kqueue_api.control_arguments``: ``ValueError``
  for a negative ``max_events`` or timeout, ``TypeError`` for a timeout that
  is not a number or does not fit in 64-bit nanoseconds and for a changelist
  that is not kevents, ``ValueError`` once closed).  In a forked child, which
  BSD gives no queue, the object is closed (CPython 3.12.1+) or keeps a number
  that names nothing of its own (before; see ``kqueue_api.track``).
* kqueue semantics (FreeBSD ``kqueue_register``/``kqueue_kevent``):
  ``EVFILT_READ`` and ``EVFILT_WRITE`` are separate knotes per fd; ``EV_ADD``
  adds, or updates an existing knote's ``udata`` (its flags stay as added; a
  new one is enabled unless ``EV_DISABLE``); ``EV_DELETE``, ``EV_ENABLE``,
  ``EV_DISABLE`` on a knote that does not exist fail with ``ENOENT``; a
  change naming a closed fd fails with ``EBADF``; an unknown filter with
  ``EINVAL``; a change with filter 0 is skipped.  A failed change, and any
  change with ``EV_RECEIPT``, becomes an event with flags ``EV_ERROR`` and
  ``data`` the errno (0: done) when ``max_events`` leaves room, and then
  control() returns those at once without waiting; with no room a failure
  raises ``OSError`` and the remaining changes are not applied.
  ``max_events == 0`` applies the changes and returns ``[]`` at once,
  whatever the timeout.  Level-triggered knotes, one
  event per ready (fd, filter), at most ``max_events``, fairly (a knote left
  out because the list was full comes first next time).  ``EV_ONESHOT``
  deletes the knote once delivered; ``EV_CLEAR`` is edge-triggered.
  Returned ``flags`` are the knote's own (without ``EV_ADD``/``EV_DELETE``/
  ``EV_ENABLE``/``EV_DISABLE``), plus ``EV_EOF``: on the read filter when the
  peer shut down or closed (``EPOLLRDHUP``/``EPOLLHUP``) or on error, on the
  write filter on hang-up (``EPOLLHUP``) or error; with ``EV_EOF``,
  ``fflags`` is the socket's pending error (``SO_ERROR``, e.g.
  ``ECONNRESET``) and 0 otherwise.  Read ``data`` is the number of bytes
  buffered (``FIONREAD``), write ``data`` the room in the send buffer.
  Regular files and directories (that epoll refuses) are supported as on
  BSD: readable while the offset is before the end (``data`` = bytes left),
  always writable.  Closing an fd drops its knotes silently (a later
  ``EV_DELETE`` gives ``EBADF``, or ``ENOENT`` once the number is reused).
* ``devpoll()``: ``register(fd, eventmask=POLLIN|POLLPRI|POLLOUT)`` ORs the
  mask into an existing registration, as writing to /dev/poll does;
  ``modify()`` replaces it (and registers an fd not yet registered, as
  CPython's POLLREMOVE-then-add does); ``unregister()`` of an unknown fd is
  ignored; ``poll(timeout)`` in milliseconds (``None`` or -1 blocks, below -1
  is ``OverflowError``); ``fileno()``, ``close()``, ``closed``; ``ValueError``
  once closed.  A closed fd is reported ``POLLNVAL``, as poll(2) does.

Simplified (differences a test could notice)
--------------------------------------------
* Reading ``SO_ERROR`` on Linux clears the socket's pending error, which BSD
  leaves in place: after the stand-in reported ``EV_EOF`` with an error, a
  later ``recv()`` on that socket may return ``b''`` instead of raising
  ``ConnectionResetError``.  (The stand-in remembers the errno, so later
  events keep reporting it.)
* ``EV_EOF`` with an error is set for any ``EPOLLERR``, also for a UDP socket
  whose "error" BSD reports without ``EV_EOF``.
* A socket that was never connected: Linux reports it writable and hung up,
  BSD's write filter does not fire.
* ``EV_CLEAR`` is epoll's ``EPOLLET``, which is per fd: mixing ``EV_CLEAR``
  and level-triggered filters on one fd, and ``EV_CLEAR`` on regular files,
  raise ``NotImplementedError``.  So do the filters other than read and write
  (AIO, VNODE, PROC, SIGNAL, TIMER), ``kqueue.fromfd()``, and
  ``NOTE_LOWAT``-style low-water marks are ignored.
* If a watched fd is closed while a duplicate of it stays open elsewhere
  (``dup()``, a forked child), epoll keeps the file in its set (BSD drops the
  knotes at close); the stand-in ignores its events, but a level-triggered
  one keeps waking the wait until its timeout.
* ``devpoll``'s ``fileno()`` is an fd open on ``os.devnull`` (there is no
  /dev/poll), so it is a real, closable, non-inheritable descriptor but not a
  pollable one; changes are applied at once rather than buffered until
  ``poll()``; the number of results is not capped at ``RLIMIT_NOFILE``.
* The ``kevent`` attributes are not range-checked when assigned (only by the
  constructor).
* An ``EV_RECEIPT`` change with no room left in the event list ends the
  changes, and control() returns the entries so far (FreeBSD returns 0).
"""

from __future__ import annotations

import errno
import fcntl
import math
import operator
import os
import select
import socket
import stat
import struct
import termios
import time
from typing import Dict, List, Optional, Set, Tuple

from kqueue_api import (
    EV_RECEIPT,
    INVALIDATED_IN_CHILD,
    KQ_EV_ADD,
    KQ_EV_CLEAR,
    KQ_EV_DELETE,
    KQ_EV_DISABLE,
    KQ_EV_ENABLE,
    KQ_EV_EOF,
    KQ_EV_ERROR,
    KQ_EV_ONESHOT,
    KQ_EV_SYSFLAGS,
    KQ_FILTER_AIO,
    KQ_FILTER_PROC,
    KQ_FILTER_READ,
    KQ_FILTER_SIGNAL,
    KQ_FILTER_TIMER,
    KQ_FILTER_VNODE,
    KQ_FILTER_WRITE,
    KQUEUE_CONSTANTS,
    as_fd,
    control_arguments,
    kevent,
    track,
)

__all__ = [
    "KQUEUE_CONSTANTS", "KQUEUE_STANDIN_USABLE", "DEVPOLL_STANDIN_USABLE", "devpoll",
    "install_devpoll", "install_kqueue", "install_standin", "kevent", "kqueue",
]

# The real kernel objects the stand-ins are built on, captured before any
# patching.
_epoll = getattr(select, "epoll", None)
_poll = getattr(select, "poll", None)

#: Whether the kqueue stand-in can run here (it needs epoll: Linux).
KQUEUE_STANDIN_USABLE = _epoll is not None
#: Whether the devpoll stand-in can run here (it needs poll(2)).
DEVPOLL_STANDIN_USABLE = _poll is not None

# Every KQ_* name as an attribute of this module too, as of ``select``.
globals().update(KQUEUE_CONSTANTS)

_FD_FILTERS = (KQ_FILTER_READ, KQ_FILTER_WRITE)
_OTHER_FILTERS = (KQ_FILTER_AIO, KQ_FILTER_VNODE, KQ_FILTER_PROC, KQ_FILTER_SIGNAL,
                  KQ_FILTER_TIMER)
# Action flags: acted upon, never stored in the knote nor returned.
_ACTIONS = KQ_EV_ADD | KQ_EV_DELETE | KQ_EV_ENABLE | KQ_EV_DISABLE
_INT_MAX = 2**31 - 1
_MAX_EPOLL_WAIT = 2e6  # seconds: below epoll's limit of INT_MAX milliseconds


def _oserror(code: int) -> OSError:
    # OSError(errno, msg) picks the subclass: ENOENT -> FileNotFoundError...
    return OSError(code, os.strerror(code))


def _identity(fd: int) -> Tuple[int, int]:
    """What the fd refers to, to notice it was closed and the number reused."""
    st = os.fstat(fd)
    return st.st_dev, st.st_ino


def _ioctl_int(fd: int, request: int) -> Optional[int]:
    try:
        return struct.unpack("i", fcntl.ioctl(fd, request, b"\0\0\0\0"))[0]
    except OSError:
        return None


def _sock_opt(fd: int, option: int) -> Optional[int]:
    """getsockopt(SOL_SOCKET, option) on fd, or None if it is not a socket."""
    try:
        dup = os.dup(fd)  # a socket object would close the fd it owns
    except OSError:
        return None
    try:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM, 0, dup)
    except OSError:  # not a socket (some versions check)
        os.close(dup)
        return None
    with sock:
        try:
            return sock.getsockopt(socket.SOL_SOCKET, option)
        except OSError:  # not a socket
            return None


# -- kqueue ---------------------------------------------------------------------


class _Knote:
    """One registered (fd, filter)."""

    __slots__ = ("flags", "udata", "enabled")

    def __init__(self, flags: int, udata: int, enabled: bool) -> None:
        self.flags = flags  # EV_ONESHOT, EV_CLEAR...: returned with each event
        self.udata = udata
        self.enabled = enabled


class _Watched:
    """What the stand-in knows of one fd."""

    __slots__ = ("identity", "knotes", "mask", "is_file", "error", "sndbuf")

    def __init__(self, identity: Tuple[int, int], fd: int) -> None:
        self.identity = identity
        self.knotes: Dict[int, _Knote] = {}
        self.mask = 0  # what the fd is registered with in epoll (0: not there)
        self.is_file = False  # regular file/directory: no epoll, always evaluated
        self.error = 0  # the socket error reported with EV_EOF, once seen
        self.sndbuf = _sock_opt(fd, socket.SO_SNDBUF)  # None: not a socket


class kqueue:
    """``select.kqueue`` emulated on epoll; see the module docstring."""

    def __init__(self) -> None:
        if _epoll is None:
            raise OSError(errno.ENOSYS, "the kqueue stand-in needs select.epoll (Linux)")
        self._epoll = _epoll()
        self._fds: Dict[int, _Watched] = {}
        self._files: Set[int] = set()  # fds in _fds with is_file
        self._pending: List[kevent] = []  # edge-triggered events left out of a full list
        self._starved: Set[Tuple[int, int]] = set()  # (fd, filter) left out: first next time
        # In a forked child before CPython 3.12.1: the fd number the object
        # still holds, though the kernel gave the child no queue (-1: none).
        self._stale_fd = -1
        track(self)

    # -- the object's API ---------------------------------------------------

    @classmethod
    def fromfd(cls, fd):
        raise NotImplementedError("the kqueue stand-in cannot adopt a kqueue fd")

    @property
    def closed(self) -> bool:
        return self._epoll.closed and self._stale_fd < 0

    def fileno(self) -> int:
        self._check_open()
        return self._stale_fd if self._stale_fd >= 0 else self._epoll.fileno()

    def close(self) -> None:
        if self._stale_fd >= 0:
            # As CPython's close() before 3.12.1: close(2) the number, which
            # may name a file the child opened since; errors are ignored.
            fd, self._stale_fd = self._stale_fd, -1
            try:
                os.close(fd)
            except OSError:
                pass
        self._epoll.close()
        self._fds.clear()
        self._files.clear()
        self._pending.clear()
        self._starved.clear()

    def _lost_in_fork(self) -> None:
        """In a forked child.  BSD gives the child no queue; epoll would share
        the parent's, so the child's copy of its fd is closed here, as the
        kernel would have.  See ``kqueue_api.track``."""
        number = -1 if self._epoll.closed else self._epoll.fileno()
        self.close()
        if not INVALIDATED_IN_CHILD:
            self._stale_fd = number

    def __repr__(self) -> str:
        state = "closed" if self.closed else f"fd={self.fileno()}"
        return f"<kqueue stand-in {state} fds={len(self._fds)}>"

    def control(self, changelist, maxevents, timeout=None, /) -> List[kevent]:
        """Apply ``changelist``, then wait up to ``timeout`` seconds for at most
        ``maxevents`` events."""
        self._check_open()
        changes, maxevents, timeout_ns = control_arguments(changelist, maxevents, timeout)
        timeout = None if timeout_ns is None else timeout_ns / 1e9
        if self._stale_fd >= 0:  # kevent(2) on a number that names no kqueue
            raise _oserror(errno.EBADF)

        # FreeBSD's kqueue_kevent: a change that fails, or any change with
        # EV_RECEIPT, is reported in the event list as flags EV_ERROR (only)
        # and data the errno (0: done); with no room left, a failure makes
        # kevent() fail and the changes after it are not applied.
        receipts: List[kevent] = []
        for change in changes:
            if change.filter == 0:
                continue
            try:
                self._apply(change)
                code = 0
            except OSError as exc:
                if len(receipts) == maxevents:  # no room to report it: kevent() fails
                    raise
                code = exc.errno
            if code or change.flags & EV_RECEIPT:
                if len(receipts) == maxevents:  # a receipt with no room: stop
                    break
                receipts.append(kevent(change.ident, change.filter, KQ_EV_ERROR,
                                       change.fflags, code, change.udata))
        if receipts:  # returned at once, without looking for events
            return receipts
        if maxevents == 0:
            return []
        return self._scan(maxevents, timeout)

    # -- changes --------------------------------------------------------------

    def _check_open(self) -> None:
        if self.closed:
            raise ValueError("I/O operation on closed kqueue object")

    def _apply(self, change: kevent) -> None:
        flags = change.flags & ~KQ_EV_SYSFLAGS
        kfilter = change.filter
        if kfilter not in _FD_FILTERS:
            if kfilter in _OTHER_FILTERS:
                raise NotImplementedError(f"the kqueue stand-in has no filter {kfilter}")
            raise _oserror(errno.EINVAL)
        fd = change.ident
        if fd > _INT_MAX:
            raise _oserror(errno.EBADF)
        try:
            identity = _identity(fd)
        except OSError:
            self._forget(fd)  # closed: its knotes went with it
            raise _oserror(errno.EBADF) from None
        watched = self._fds.get(fd)
        if watched is not None and watched.identity != identity:
            self._forget(fd)  # closed and the number reused
            watched = None
        knote = watched.knotes.get(kfilter) if watched is not None else None

        if knote is None:
            if not flags & KQ_EV_ADD:
                raise _oserror(errno.ENOENT)
            if watched is None:
                watched = _Watched(identity, fd)
                self._fds[fd] = watched
            watched.knotes[kfilter] = _Knote(flags & ~_ACTIONS, change.udata,
                                             not flags & KQ_EV_DISABLE)
            try:
                self._sync(fd, watched)
            except BaseException:
                del watched.knotes[kfilter]
                if not watched.knotes:
                    self._forget(fd)
                raise
            return

        if flags & KQ_EV_DELETE:
            self._starved.discard((fd, kfilter))
            self._drop_knote(fd, kfilter)
            return

        # FreeBSD's kqueue_register: an update changes udata (and the filter's
        # fflags/data, unused here) and enables or disables; the knote's flags
        # (EV_ONESHOT, EV_CLEAR...) stay as they were added.
        saved = (knote.udata, knote.enabled)
        knote.udata = change.udata
        if flags & KQ_EV_ENABLE:
            knote.enabled = True
        elif flags & KQ_EV_DISABLE:
            knote.enabled = False
        try:
            self._sync(fd, watched)
        except BaseException:
            knote.udata, knote.enabled = saved
            raise

    def _sync(self, fd: int, watched: _Watched) -> None:
        """Make the epoll registration match the fd's enabled knotes."""
        mask = 0
        clear = set()
        for kfilter, knote in watched.knotes.items():
            if knote.enabled:
                mask |= (select.EPOLLIN | select.EPOLLRDHUP if kfilter == KQ_FILTER_READ
                         else select.EPOLLOUT)
                clear.add(bool(knote.flags & KQ_EV_CLEAR))
        if len(clear) > 1:
            raise NotImplementedError(
                "the kqueue stand-in cannot mix EV_CLEAR and level-triggered filters on one fd")
        if True in clear:
            if watched.is_file:
                raise NotImplementedError("the kqueue stand-in has no EV_CLEAR on files")
            mask |= select.EPOLLET
        if watched.is_file or mask == watched.mask:
            return
        if mask == 0:
            self._epoll_unregister(fd)
        elif watched.mask == 0:
            try:
                self._epoll.register(fd, mask)
            except FileExistsError:  # a stale entry for this very file
                self._epoll.modify(fd, mask)
            except PermissionError:
                # epoll refuses regular files and directories; kqueue does not.
                if not stat.S_ISREG(os.fstat(fd).st_mode) and not stat.S_ISDIR(
                        os.fstat(fd).st_mode):
                    raise
                if mask & select.EPOLLET:
                    raise NotImplementedError(
                        "the kqueue stand-in has no EV_CLEAR on files") from None
                watched.is_file = True
                self._files.add(fd)
                return
        else:
            self._epoll.modify(fd, mask)
        watched.mask = mask

    def _epoll_unregister(self, fd: int) -> None:
        try:
            self._epoll.unregister(fd)
        except OSError:  # closed (EBADF), or the number now names another file (ENOENT)
            pass

    def _forget(self, fd: int) -> None:
        watched = self._fds.pop(fd, None)
        self._files.discard(fd)
        self._starved = {key for key in self._starved if key[0] != fd}
        self._pending = [kev for kev in self._pending if kev.ident != fd]
        if watched is not None and watched.mask:
            self._epoll_unregister(fd)

    # -- events ---------------------------------------------------------------

    def _scan(self, maxevents: int, timeout: Optional[float]) -> List[kevent]:
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            found = self._take_pending() + self._file_events()
            if found:
                wait: float = 0
            elif deadline is None:
                wait = -1
            else:
                wait = max(deadline - time.monotonic(), 0)
            capped = wait > _MAX_EPOLL_WAIT
            if capped:
                wait = _MAX_EPOLL_WAIT
            ready = self._epoll.poll(wait, maxevents)
            for fd, native in ready:
                found.extend(self._socket_events(fd, native))
            if found or wait == 0 or not (ready or capped):
                return self._deliver(found, maxevents)
            # Every ready fd was a stale epoll entry, or the wait was cut to
            # what epoll accepts: wait again for the rest of the timeout.

    def _take_pending(self) -> List[kevent]:
        found = []
        for kev in self._pending:
            watched = self._fds.get(kev.ident)
            knote = watched.knotes.get(kev.filter) if watched is not None else None
            if knote is not None and knote.enabled:
                found.append(kev)
        self._pending = []
        return found

    def _file_events(self) -> List[kevent]:
        found = []
        for fd in list(self._files):
            watched = self._fds[fd]
            try:
                alive = _identity(fd) == watched.identity
            except OSError:
                alive = False
            if not alive:  # closed behind our back: dropped silently
                self._forget(fd)
                continue
            for kfilter, knote in watched.knotes.items():
                if not knote.enabled:
                    continue
                if kfilter == KQ_FILTER_READ:
                    left = os.fstat(fd).st_size - os.lseek(fd, 0, os.SEEK_CUR)
                    if left > 0:
                        found.append(kevent(fd, kfilter, knote.flags, 0, left, knote.udata))
                else:
                    found.append(kevent(fd, kfilter, knote.flags, 0, 0, knote.udata))
        return found

    def _socket_events(self, fd: int, native: int) -> List[kevent]:
        watched = self._fds.get(fd)
        if watched is None:
            return []
        try:
            alive = _identity(fd) == watched.identity
        except OSError:
            alive = False
        if not alive:
            # epoll still holds a file that was closed here but is open
            # elsewhere (a dup): kqueue dropped its knotes at close.
            self._forget(fd)
            return []
        if native & select.EPOLLERR:
            error = _sock_opt(fd, socket.SO_ERROR)
            if error:
                watched.error = error
        found = []
        knote = watched.knotes.get(KQ_FILTER_READ)
        if knote is not None and knote.enabled and native & (
                select.EPOLLIN | select.EPOLLRDHUP | select.EPOLLHUP | select.EPOLLERR):
            eof = native & (select.EPOLLRDHUP | select.EPOLLHUP | select.EPOLLERR)
            data = _ioctl_int(fd, termios.FIONREAD)
            if data is None:  # a listening socket: at least one connection waits
                data = 1 if native & select.EPOLLIN else 0
            found.append(kevent(fd, KQ_FILTER_READ, knote.flags | (KQ_EV_EOF if eof else 0),
                                watched.error if eof else 0, data, knote.udata))
        knote = watched.knotes.get(KQ_FILTER_WRITE)
        if knote is not None and knote.enabled and native & (
                select.EPOLLOUT | select.EPOLLHUP | select.EPOLLERR):
            eof = native & (select.EPOLLHUP | select.EPOLLERR)
            data = 0
            if watched.sndbuf is not None:
                queued = _ioctl_int(fd, termios.TIOCOUTQ) or 0
                data = max(watched.sndbuf - queued, 0)
            found.append(kevent(fd, KQ_FILTER_WRITE, knote.flags | (KQ_EV_EOF if eof else 0),
                                watched.error if eof else 0, data, knote.udata))
        return found

    def _deliver(self, found: List[kevent], maxevents: int) -> List[kevent]:
        # One event per knote (a pending edge may have come again).
        unique: Dict[Tuple[int, int], kevent] = {}
        for kev in found:
            unique.setdefault((kev.ident, kev.filter), kev)
        found = list(unique.values())
        if len(found) > maxevents:
            # Those left out last time go first; then the rest, in order.
            starved = self._starved
            found.sort(key=lambda kev: (kev.ident, kev.filter) not in starved)
            delivered, left = found[:maxevents], found[maxevents:]
            for kev in left:
                knote = self._fds[kev.ident].knotes[kev.filter]
                if knote.flags & KQ_EV_CLEAR:
                    self._pending.append(kev)  # an edge: would not come again
                else:
                    self._starved.add((kev.ident, kev.filter))
        else:
            delivered = found
        for kev in delivered:
            self._starved.discard((kev.ident, kev.filter))
            if kev.flags & KQ_EV_ONESHOT:
                self._drop_knote(kev.ident, kev.filter)
        return delivered

    def _drop_knote(self, fd: int, kfilter: int) -> None:
        watched = self._fds[fd]
        del watched.knotes[kfilter]
        if watched.knotes:
            self._sync(fd, watched)
        else:
            self._forget(fd)


# -- devpoll --------------------------------------------------------------------


class _DevpollObject:
    """What ``select.devpoll()`` returns, emulated on poll(2)."""

    def __init__(self) -> None:
        if _poll is None:
            raise OSError(errno.ENOSYS, "the devpoll stand-in needs select.poll")
        self._poll = _poll()
        self._masks: Dict[int, int] = {}
        # A real fd for fileno(), as /dev/poll's would be (closed by close()).
        self._fd: int = os.open(os.devnull, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))

    @property
    def closed(self) -> bool:
        return self._fd < 0

    def fileno(self) -> int:
        self._check_open()
        return self._fd

    def close(self) -> None:
        if self._fd >= 0:
            fd, self._fd = self._fd, -1
            self._masks.clear()
            os.close(fd)

    def __del__(self) -> None:  # like the C object's dealloc
        fd = getattr(self, "_fd", -1)
        if fd >= 0:
            os.close(fd)

    def __repr__(self) -> str:
        state = "closed" if self.closed else f"fd={self._fd}"
        return f"<devpoll stand-in {state} fds={len(self._masks)}>"

    def _check_open(self) -> None:
        if self._fd < 0:
            raise ValueError("I/O operation on closed devpoll object")

    @staticmethod
    def _eventmask(eventmask) -> int:
        eventmask = operator.index(eventmask)
        if not 0 <= eventmask <= 0xFFFF:
            raise OverflowError("Python int too large for C unsigned short")
        return eventmask

    def register(self, fd, eventmask=select.POLLIN | select.POLLPRI | select.POLLOUT, /):
        """Add ``eventmask`` to what ``fd`` is watched for (ORed, as /dev/poll does)."""
        fd = as_fd(fd)
        eventmask = self._eventmask(eventmask)
        self._check_open()
        mask = self._masks.get(fd, 0) | eventmask
        self._poll.register(fd, mask)
        self._masks[fd] = mask

    def modify(self, fd, eventmask=select.POLLIN | select.POLLPRI | select.POLLOUT, /):
        """Replace what ``fd`` is watched for (registering it if need be)."""
        fd = as_fd(fd)
        eventmask = self._eventmask(eventmask)
        self._check_open()
        self._poll.register(fd, eventmask)
        self._masks[fd] = eventmask

    def unregister(self, fd, /):
        """Stop watching ``fd``; an fd that is not registered is ignored."""
        fd = as_fd(fd)
        self._check_open()
        if self._masks.pop(fd, None) is not None:
            self._poll.unregister(fd)

    def poll(self, timeout=None, /) -> List[Tuple[int, int]]:
        """Wait up to ``timeout`` milliseconds (``None``/-1: forever)."""
        self._check_open()
        if timeout is None:
            ms = -1
        else:
            if isinstance(timeout, float):
                if math.isnan(timeout):
                    raise ValueError("Invalid value NaN (not a number)")
                ms = math.ceil(timeout)
            else:
                try:
                    ms = operator.index(timeout)
                except TypeError:
                    raise TypeError("timeout must be an integer or None") from None
            if ms < -1 or ms > _INT_MAX:
                raise OverflowError("timeout is too large")
        return self._poll.poll(ms)


def devpoll() -> _DevpollObject:
    """``select.devpoll()``: a /dev/poll polling object (emulated on poll)."""
    return _DevpollObject()


# -- installing -----------------------------------------------------------------


def install_kqueue(monkeypatch) -> None:
    """Patch the kqueue stand-in and every ``KQ_*`` constant into :mod:`select`
    for the rest of the test (``monkeypatch`` undoes it)."""
    if not KQUEUE_STANDIN_USABLE:
        raise RuntimeError("the kqueue stand-in needs select.epoll (Linux)")
    monkeypatch.setattr(select, "kqueue", kqueue, raising=False)
    monkeypatch.setattr(select, "kevent", kevent, raising=False)
    for name, value in KQUEUE_CONSTANTS.items():
        monkeypatch.setattr(select, name, value, raising=False)


def install_devpoll(monkeypatch) -> None:
    """Patch the devpoll stand-in into :mod:`select` for the rest of the test."""
    if not DEVPOLL_STANDIN_USABLE:
        raise RuntimeError("the devpoll stand-in needs select.poll")
    monkeypatch.setattr(select, "devpoll", devpoll, raising=False)


def install_standin(name: str, monkeypatch) -> None:
    """Install the stand-in for backend ``name`` (``'kqueue'`` or ``'devpoll'``)."""
    installers = {"kqueue": install_kqueue, "devpoll": install_devpoll}
    try:
        installer = installers[name]
    except KeyError:
        raise ValueError(f"no stand-in for backend {name!r}; there are: "
                         f"{', '.join(installers)}") from None
    installer(monkeypatch)
