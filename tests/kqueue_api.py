"""The Python side of ``select.kqueue`` as CPython's ``Modules/selectmodule.c``
defines it, shared by the two kqueues the tests run on.

``standins.kqueue`` (an emulation on epoll) and ``kqueue_libkqueue.kqueue``
(libkqueue, through ctypes) differ in what is below the API: which kqueue
semantics they implement.  What CPython does before it calls kevent(2) is
the same for both, and lives here once:

* :class:`kevent`: ``kevent(ident, filter=KQ_FILTER_READ, flags=KQ_EV_ADD,
  fflags=0, data=0, udata=0)``, a ``struct kevent`` with writable members,
  ``ident`` an int or an object with ``fileno()``; compared field by field
  (ident, filter, flags, fflags, data, udata), unhashable, CPython's ``repr``.
* :func:`control_arguments`: the argument checks of ``kqueue.control()``,
  with CPython's exceptions and messages.
* The ``KQ_*`` constants with FreeBSD's ``<sys/event.h>`` values, the names
  CPython's select module defines on FreeBSD.
* What a kqueue object is in a forked child (:func:`track`): kqueue(2) "is
  not inherited by a child created with fork(2)".  CPython 3.12.1+ marks every
  open kqueue object closed in the child (gh-110395); before, the object
  keeps the fd number, and its ``close()`` closes whatever that number names
  by then (CPython's ``close()`` ignores the error if it names nothing).
"""

from __future__ import annotations

import math
import operator
import os
import sys
import weakref
from typing import Any, Dict, List, Optional, Tuple

__all__ = ["INVALIDATED_IN_CHILD", "KQUEUE_CONSTANTS", "as_fd", "control_arguments", "kevent",
           "track"]

# -- BSD constant values (FreeBSD <sys/event.h>) -------------------------------

KQ_FILTER_READ = -1
KQ_FILTER_WRITE = -2
KQ_FILTER_AIO = -3
KQ_FILTER_VNODE = -4
KQ_FILTER_PROC = -5
KQ_FILTER_SIGNAL = -6
KQ_FILTER_TIMER = -7

KQ_EV_ADD = 0x0001
KQ_EV_DELETE = 0x0002
KQ_EV_ENABLE = 0x0004
KQ_EV_DISABLE = 0x0008
KQ_EV_ONESHOT = 0x0010
KQ_EV_CLEAR = 0x0020
KQ_EV_SYSFLAGS = 0xF000
KQ_EV_FLAG1 = 0x2000
KQ_EV_ERROR = 0x4000
KQ_EV_EOF = 0x8000

KQ_NOTE_LOWAT = 0x0001
KQ_NOTE_DELETE = 0x0001
KQ_NOTE_WRITE = 0x0002
KQ_NOTE_EXTEND = 0x0004
KQ_NOTE_ATTRIB = 0x0008
KQ_NOTE_LINK = 0x0010
KQ_NOTE_RENAME = 0x0020
KQ_NOTE_REVOKE = 0x0040
KQ_NOTE_EXIT = 0x80000000
KQ_NOTE_FORK = 0x40000000
KQ_NOTE_EXEC = 0x20000000
KQ_NOTE_PCTRLMASK = 0xF0000000
KQ_NOTE_PDATAMASK = 0x000FFFFF
KQ_NOTE_TRACK = 0x00000001
KQ_NOTE_TRACKERR = 0x00000002
KQ_NOTE_CHILD = 0x00000004

#: Every ``KQ_*`` name CPython's select module defines on FreeBSD, with its value.
KQUEUE_CONSTANTS: Dict[str, int] = {
    name: value for name, value in globals().items() if name.startswith("KQ_")
}

#: ``EV_RECEIPT`` (FreeBSD, macOS, libkqueue: 0x0040): CPython's select module
#: has no name for it, but passes it through in ``flags``.
EV_RECEIPT = 0x0040

# CPython keeps timeouts as a signed 64-bit count of nanoseconds (_PyTime_t).
_NS_PER_SECOND = 10**9
_PYTIME_MIN, _PYTIME_MAX = -(2**63), 2**63 - 1


def _check_int(value: Any, name: str, lo: int, hi: int) -> int:
    try:
        number = operator.index(value)
    except TypeError:
        raise TypeError(f"kevent(): {name} must be an integer, not "
                        f"{type(value).__name__}") from None
    if not lo <= number <= hi:
        raise OverflowError(f"kevent(): {name} {number} is out of range [{lo}, {hi}]")
    return number


def as_fd(obj: Any) -> int:
    """CPython's ``PyObject_AsFileDescriptor``: an int, or ``fileno()``."""
    if isinstance(obj, int):
        fd = int(obj)
    else:
        meth = getattr(obj, "fileno", None)
        if meth is None:
            raise TypeError("argument must be an int, or have a fileno() method.")
        fd = meth()
        if not isinstance(fd, int):
            raise TypeError("fileno() returned a non-integer")
        fd = int(fd)
    if fd < 0:
        raise ValueError(f"file descriptor cannot be a negative integer ({fd})")
    return fd


class kevent:
    """``select.kevent``: the Python side of a ``struct kevent``."""

    __slots__ = ("ident", "filter", "flags", "fflags", "data", "udata")
    __hash__ = None  # type: ignore[assignment]  # CPython's kevent is unhashable

    def __init__(self, ident: Any, filter: Any = KQ_FILTER_READ,  # noqa: PLR0917
                 flags: Any = KQ_EV_ADD, fflags: Any = 0, data: Any = 0, udata: Any = 0) -> None:
        self.filter = _check_int(filter, "filter", -(2**15), 2**15 - 1)
        self.flags = _check_int(flags, "flags", 0, 2**16 - 1)
        self.fflags = _check_int(fflags, "fflags", 0, 2**32 - 1)
        self.data = _check_int(data, "data", -(2**63), 2**63 - 1)
        self.udata = _check_int(udata, "udata", 0, 2**64 - 1)
        if isinstance(ident, int):
            if ident < 0:
                raise OverflowError("can't convert negative value to size_t")
            self.ident: int = int(ident)
        else:
            self.ident = as_fd(ident)

    def _key(self) -> Tuple[int, int, int, int, int, int]:
        return (self.ident, self.filter, self.flags, self.fflags, self.data, self.udata)

    def __eq__(self, other: object) -> bool:
        return self._key() == other._key() if isinstance(other, kevent) else NotImplemented

    def __ne__(self, other: object) -> bool:
        return self._key() != other._key() if isinstance(other, kevent) else NotImplemented

    def __lt__(self, other: object) -> bool:
        return self._key() < other._key() if isinstance(other, kevent) else NotImplemented

    def __le__(self, other: object) -> bool:
        return self._key() <= other._key() if isinstance(other, kevent) else NotImplemented

    def __gt__(self, other: object) -> bool:
        return self._key() > other._key() if isinstance(other, kevent) else NotImplemented

    def __ge__(self, other: object) -> bool:
        return self._key() >= other._key() if isinstance(other, kevent) else NotImplemented

    def __repr__(self) -> str:
        return (f"<select.kevent ident={self.ident} filter={self.filter} "
                f"flags=0x{self.flags:x} fflags=0x{self.fflags:x} data=0x{self.data:x} "
                f"udata={self.udata:#x}>")


def _timeout_ns(timeout: Any) -> Optional[int]:
    """``_PyTime_FromSecondsObject(..., _PyTime_ROUND_TIMEOUT)``: seconds to
    nanoseconds, rounded away from zero so a wait is never shorter than asked.

    Like ``select_kqueue_control_impl``, every failure of that conversion
    (not a number, NaN, beyond 64-bit nanoseconds) is reported as a
    ``TypeError``; a negative timeout is a ``ValueError``.
    """
    if timeout is None:
        return None
    bad = TypeError(f"timeout argument must be a number or None, got {type(timeout).__name__}")
    if isinstance(timeout, float):
        if math.isnan(timeout) or math.isinf(timeout):
            raise bad
        scaled = timeout * 1e9
        ns_float = math.ceil(scaled) if scaled >= 0 else math.floor(scaled)
        if not _PYTIME_MIN <= ns_float <= _PYTIME_MAX:
            raise bad
        ns = int(ns_float)
    else:
        try:
            seconds = operator.index(timeout)
        except TypeError:
            raise bad from None
        ns = seconds * _NS_PER_SECOND
        if not _PYTIME_MIN <= ns <= _PYTIME_MAX:
            raise bad
    if ns < 0:  # _PyTime_AsTimespec then tv_sec < 0
        raise ValueError("timeout must be positive or None")
    return ns


def control_arguments(changelist: Any, maxevents: Any, timeout: Any,
                      event_type: type = kevent) -> Tuple[List[kevent], int, Optional[int]]:
    """Check ``kqueue.control()``'s arguments as CPython does.

    Returns:
        ``(changes, maxevents, timeout)``: the changes as a list, the number
        of events asked for, the timeout in nanoseconds (None: no limit).

    Raises:
        ValueError: a negative ``maxevents`` or timeout.
        TypeError: ``maxevents`` not an int; a timeout that is not a number
            (or NaN, or too large: CPython reports those as TypeError too);
            a changelist that is not iterable or holds other than kevents.
        OverflowError: ``maxevents`` beyond a C int.
    """
    maxevents = operator.index(maxevents)
    if not -(2**31) <= maxevents <= 2**31 - 1:
        raise OverflowError("Python int too large to convert to C int")
    if maxevents < 0:
        raise ValueError(f"Length of eventlist must be 0 or positive, got {maxevents}")
    timeout_ns = _timeout_ns(timeout)
    changes: List[kevent] = []
    if changelist is not None:
        try:
            changes = list(changelist)
        except TypeError:
            raise TypeError("changelist is not iterable") from None
        for change in changes:
            if not isinstance(change, event_type):
                raise TypeError("changelist must be an iterable of select.kevent objects")
    return changes, maxevents, timeout_ns


# -- fork -------------------------------------------------------------------------

#: Whether CPython marks kqueue objects closed in a forked child (gh-110395,
#: in 3.12.1 and later).
INVALIDATED_IN_CHILD = sys.version_info >= (3, 12, 1)

_open_kqueues: weakref.WeakSet[object] = weakref.WeakSet()


def track(queue: object) -> None:
    """Have ``queue._lost_in_fork()`` called in a forked child, where the
    kernel did not give it the queue (what it must do then is the
    implementation's; :data:`INVALIDATED_IN_CHILD` says how CPython shows it)."""
    _open_kqueues.add(queue)


def _after_fork_in_child() -> None:
    for queue in list(_open_kqueues):
        queue._lost_in_fork()  # type: ignore[attr-defined]
    _open_kqueues.clear()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)
