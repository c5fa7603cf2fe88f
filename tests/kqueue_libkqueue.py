"""``select.kqueue``/``select.kevent`` over libkqueue, through ctypes.

The second kqueue the tests run on.  ``standins.kqueue`` emulates kqueue on
epoll, written by the same hands as the backend, so it may share the
backend's misreadings of kqueue; libkqueue implements the BSD kqueue/kevent
API in user space on Linux and was written independently (it runs BSD
software on Linux).  This module is only the thin layer CPython's
``select`` module is over kevent(2) (``Modules/selectmodule.c``); every
kqueue semantic comes from libkqueue.  :mod:`libkqueue_build` finds or builds
the library.

API, as CPython's BSD build:

* ``kqueue()``: ``control(changelist, max_events, timeout=None)``,
  ``fileno()``, ``close()``, ``closed``, ``kqueue.fromfd(fd)``.  The fd is
  not inheritable, and closed when the object is collected.
* ``kevent``: :class:`kqueue_api.kevent`, the same class as the stand-in's
  (CPython's members, defaults, ordering and ``repr``).
* the ``KQ_FILTER_*``/``KQ_EV_*``/``KQ_NOTE_*`` names CPython defines, with
  libkqueue's values (:data:`LIBKQUEUE_CONSTANTS`; ``test_libkqueue.py``
  checks them against the header the library was built with).  libkqueue has
  no ``EVFILT_AIO`` and no ``NOTE_REVOKE``, so neither is defined.

Errors are CPython's: the argument checks of :mod:`kqueue_api`; kevent()
returning -1 raises ``OSError`` with its errno (a change that failed with no
room left in the event list, as BSD kernels do).  A change that fails while
there is room, or any change with ``EV_RECEIPT``, comes back as an event with
``EV_ERROR`` and the errno (0: success) in ``data``: that is kevent(2)'s own
behaviour, which CPython passes through untouched.  An interrupted call is
retried with the time left, after running Python's signal handlers, as
PEP 475 does for CPython's own.

Where libkqueue's semantics depart from the BSD kernels (errors lost when
no event follows them, write ``data``, fds closed unseen...), this module
does not paper over them: ``test_kqueues.py`` asserts each as libkqueue does
it, and README lists them.
"""

from __future__ import annotations

import ctypes
import errno
import operator
import os
import time
from typing import Any, Dict, List, Optional

import libkqueue_build
from kqueue_api import INVALIDATED_IN_CHILD, KQUEUE_CONSTANTS, control_arguments, kevent, track

__all__ = ["LIBKQUEUE_CONSTANTS", "install_libkqueue", "kevent", "kqueue", "libkqueue_path",
           "load", "require"]

#: The names CPython defines, with libkqueue's <sys/event.h> values: the BSD
#: ones, without the filter and note libkqueue does not have.
LIBKQUEUE_CONSTANTS: Dict[str, int] = {
    name: value for name, value in KQUEUE_CONSTANTS.items()
    if name not in ("KQ_FILTER_AIO", "KQ_NOTE_REVOKE")}
globals().update(LIBKQUEUE_CONSTANTS)


class _KEvent(ctypes.Structure):
    """libkqueue's ``struct kevent`` (the same layout as FreeBSD's before 12)."""

    _fields_ = [
        ("ident", ctypes.c_size_t),  # uintptr_t
        ("filter", ctypes.c_short),
        ("flags", ctypes.c_ushort),
        ("fflags", ctypes.c_uint),
        ("data", ctypes.c_ssize_t),  # intptr_t
        ("udata", ctypes.c_void_p),
    ]


class _Timespec(ctypes.Structure):
    _fields_ = [("tv_sec", ctypes.c_long), ("tv_nsec", ctypes.c_long)]  # time_t, long


_library: Optional[ctypes.CDLL] = None


def libkqueue_path() -> str:
    """The libkqueue shared library to use (see :mod:`libkqueue_build`).

    Raises:
        RuntimeError: there is none, with the reason.
    """
    located = libkqueue_build.locate()
    if located.path is None:
        raise RuntimeError(f"libkqueue is not available: {located.reason}")
    return located.path


def require(located: libkqueue_build.Located) -> None:
    """In a test: skip it if libkqueue is not there, with the reason; fail it
    if it should be there but is broken (``POLLCHAT_LIBKQUEUE`` names no file,
    or the build failed)."""
    import pytest

    if located.broken:
        pytest.fail(f"libkqueue: {located.reason}")
    if located.path is None:
        pytest.skip(f"kqueue on libkqueue not tested: {located.reason}")


def load() -> None:
    """Load libkqueue now (building it first if need be).

    Raises:
        RuntimeError: libkqueue is not available (the reason says why).
    """
    _lib()


def _lib() -> ctypes.CDLL:
    global _library
    if _library is None:
        # A CDLL releases the GIL around each call: a kevent() that blocks
        # lets other threads run, as CPython's Py_BEGIN_ALLOW_THREADS does.
        lib = ctypes.CDLL(libkqueue_path(), use_errno=True)
        lib.kqueue.argtypes = []
        lib.kqueue.restype = ctypes.c_int
        lib.kevent.argtypes = [ctypes.c_int, ctypes.POINTER(_KEvent), ctypes.c_int,
                               ctypes.POINTER(_KEvent), ctypes.c_int,
                               ctypes.POINTER(_Timespec)]
        lib.kevent.restype = ctypes.c_int
        # The first kqueue starts libkqueue's close-monitoring thread, whose
        # epoll fd and eventfd then stay open for the life of the process.
        # Start it now, so that they are not counted against the first test
        # that makes a kqueue (tests check that they leave no fd open).
        fd = lib.kqueue()
        if fd < 0:
            raise _oserror(ctypes.get_errno())
        os.close(fd)
        _drain(lib)
        _library = lib
    return _library


def _drain(lib: ctypes.CDLL) -> None:
    """Wait until libkqueue has freed the kqueues whose fds were closed.

    libkqueue notices a closed kqueue fd from a thread of its own and frees
    the queue's epoll fd and pipe there; this makes closing as synchronous
    as on BSD.  Older libkqueues lack the call and free them a little later.
    """
    drain = getattr(lib, "libkqueue_drain_pending_close", None)
    if drain is not None:
        drain.argtypes = []
        drain.restype = None
        drain()


def _oserror(code: int) -> OSError:
    # OSError(errno, msg) picks the subclass: ENOENT -> FileNotFoundError...
    # With errno 0, PyErr_SetFromErrno says "Error".
    return OSError(code, os.strerror(code) if code else "Error")


class kqueue:
    """``select.kqueue`` on libkqueue."""

    def __init__(self) -> None:
        fd: int = _lib().kqueue()
        if fd < 0:
            raise _oserror(ctypes.get_errno())
        os.set_inheritable(fd, False)
        self._fd = fd
        track(self)

    @classmethod
    def fromfd(cls, fd: int) -> kqueue:
        """A kqueue object for an existing kqueue fd (now owned by the object)."""
        _lib()
        self = cls.__new__(cls)
        self._fd = operator.index(fd)
        track(self)
        return self

    @property
    def closed(self) -> bool:
        return self._fd < 0

    def fileno(self) -> int:
        self._check_open()
        return self._fd

    def close(self) -> None:
        """Close the kqueue fd; libkqueue frees the queue when it sees it closed.
        Errors are ignored, as by CPython's (a forked child's number may name
        nothing)."""
        if self._fd >= 0:
            fd, self._fd = self._fd, -1
            try:
                os.close(fd)
            except OSError:
                pass
            _drain(_lib())

    def _lost_in_fork(self) -> None:
        # libkqueue has already freed the queue in the child, as BSD does.
        if INVALIDATED_IN_CHILD:
            self._fd = -1

    def __del__(self) -> None:
        # CPython's finalizer closes the fd too (without waiting on libkqueue:
        # at interpreter exit the library may be half torn down).
        fd = getattr(self, "_fd", -1)
        if fd >= 0:
            self._fd = -1
            try:
                os.close(fd)
            except OSError:
                pass

    def __repr__(self) -> str:
        state = "closed" if self.closed else f"fd={self._fd}"
        return f"<kqueue on libkqueue {state}>"

    def _check_open(self) -> None:
        if self._fd < 0:
            raise ValueError("I/O operation on closed kqueue object")

    def control(self, changelist: Any, maxevents: Any, timeout: Any = None, /) -> List[kevent]:
        """kevent(2): apply ``changelist``, then wait up to ``timeout`` seconds
        (None: no limit) for at most ``maxevents`` events."""
        self._check_open()
        changes, maxevents, timeout_ns = control_arguments(changelist, maxevents, timeout)
        nchanges = len(changes)
        changearray = (_KEvent * max(nchanges, 1))()
        for slot, change in zip(changearray, changes):
            slot.ident, slot.filter, slot.flags = change.ident, change.filter, change.flags
            slot.fflags, slot.data, slot.udata = change.fflags, change.data, change.udata
        events = (_KEvent * max(maxevents, 1))()
        deadline = None if timeout_ns is None else time.monotonic_ns() + timeout_ns
        while True:
            spec = None
            if deadline is not None:
                left = max(deadline - time.monotonic_ns(), 0)
                spec = ctypes.pointer(_Timespec(*divmod(left, 10**9)))
            # As CPython does: errno 0 first, for a failure that sets none
            # (libkqueue has some), and never a stale EINTR retried forever.
            ctypes.set_errno(0)
            got = _lib().kevent(self._fd, changearray if nchanges else None, nchanges,
                                events if maxevents else None, maxevents, spec)
            if got >= 0:
                break
            code = ctypes.get_errno()
            if code != errno.EINTR:
                raise _oserror(code)
            # PEP 475: run the signal handlers (one may raise), then retry
            # with what is left of the timeout.  The changes were applied
            # before the wait was interrupted; CPython hands them over again,
            # which BSD takes as a no-op update but libkqueue may refuse (an
            # EV_ADD of an existing socket knote), so they are not repeated.
            ctypes.pythonapi.PyErr_CheckSignals()
            nchanges = 0
        return [kevent(ev.ident, ev.filter, ev.flags, ev.fflags, ev.data, ev.udata or 0)
                for ev in events[:got]]


def install_libkqueue(monkeypatch: Any) -> None:
    """Patch this module's ``kqueue``/``kevent`` and ``KQ_*`` constants into
    :mod:`select` for the rest of the test (``monkeypatch`` undoes it), as
    ``standins.install_kqueue`` does for the stand-in.

    Raises:
        RuntimeError: libkqueue is not available (the reason says why).
    """
    import select

    _lib()  # fail here, with the reason, rather than at the first kqueue()
    monkeypatch.setattr(select, "kqueue", kqueue, raising=False)
    monkeypatch.setattr(select, "kevent", kevent, raising=False)
    for name in KQUEUE_CONSTANTS:  # also remove what a stand-in may have set
        monkeypatch.delattr(select, name, raising=False)
    for name, value in LIBKQUEUE_CONSTANTS.items():
        monkeypatch.setattr(select, name, value, raising=False)
