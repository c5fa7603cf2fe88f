"""The contract every pollchat backend keeps, and the neutral event bits.

A backend is a :class:`selectors.BaseSelector` that speaks in *neutral* event
bits instead of the kernel's flags, and that keeps apart what the
:mod:`selectors` module folds together: ``selectors`` reports a hang-up or an
error as "readable and writable", and never watches for priority (out-of-band)
data.  asyncore needs each of those to reach a different handler, so the
backends here implement the :class:`selectors.BaseSelector` contract (public
API only) over the kernel objects themselves rather than lose the
information.

Neutral events (plain ``int`` bits, cheap to test on the hot path):

========  ===========================================================
READ      data (or a connection, or end of file) can be read
WRITE     the send buffer has room
PRI       priority data (TCP urgent / ``MSG_OOB``) is waiting
HUP       the peer hung up
ERR       an error is pending on the descriptor (``SO_ERROR``)
NVAL      the descriptor is not open (closed behind the poller's back)
========  ===========================================================

``READ`` and ``WRITE`` equal :data:`selectors.EVENT_READ` and
:data:`selectors.EVENT_WRITE`, so a backend still works where a plain selector
is expected.  Only ``READ``, ``WRITE`` and ``PRI`` can be asked for; the other
three are reported whether asked for or not, where the kernel can tell.
"""

from __future__ import annotations

import errno
import operator
import selectors
from types import MappingProxyType
from typing import Any, ClassVar, Dict, Iterable, List, Mapping, Optional, Tuple, Union

READ = selectors.EVENT_READ  # 1
WRITE = selectors.EVENT_WRITE  # 2
PRI = 4
HUP = 8
ERR = 16
NVAL = 32

#: The events a caller may register interest in.
INTEREST = READ | WRITE | PRI
#: The events that end a connection (asyncore sends them to ``handle_close``).
CLOSE_EVENTS = HUP | ERR | NVAL
#: Every neutral bit.
ALL_EVENTS = INTEREST | CLOSE_EVENTS

_NAMES = ((READ, "READ"), (WRITE, "WRITE"), (PRI, "PRI"), (HUP, "HUP"), (ERR, "ERR"),
          (NVAL, "NVAL"))

# Tearing down is lenient: these errnos mean "the kernel has already forgotten
# this fd" (it was closed, possibly reused), which is what unregister wanted.
_GONE_ERRNOS = frozenset({errno.EBADF, errno.ENOENT})

#: What :meth:`Backend.poll` returns: ``(fd, neutral events)`` pairs.
EventList = List[Tuple[int, int]]
#: What can be registered: an fd, or an object with a ``fileno()`` method.
FileObj = Union[int, Any]


def event_names(events: int) -> str:
    """Return ``events`` as text, e.g. ``'READ|HUP'`` (``'0'`` for none)."""
    names = [name for bit, name in _NAMES if events & bit]
    return "|".join(names) if names else "0"


class BackendError(Exception):
    """Base class of the errors the backends layer raises on purpose."""


class UnknownBackendError(BackendError, ValueError):
    """A backend name that is unknown, or not available on this machine."""


class AlreadyRegisteredError(BackendError, KeyError, ValueError):
    """The fd is already registered; use ``modify()`` to change its events.

    A :class:`KeyError` for code written against :mod:`selectors`, and a
    :class:`ValueError` because it is a wrong value passed in.
    """

    def __str__(self) -> str:  # KeyError would repr() the message
        return str(self.args[0]) if self.args else ""


class NotRegisteredError(BackendError, KeyError, ValueError):
    """The fd is not registered with this backend."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


class FDSetSizeError(BackendError, ValueError):
    """select() cannot watch this fd: it is at or above ``FD_SETSIZE``."""


class Backend(selectors.BaseSelector):
    """A poller: persistent registrations, neutral events.

    Subclasses are mostly data (``name``, what they can report) plus three
    small kernel hooks.  This class keeps the fd-to-key table
    (:class:`selectors.SelectorKey` entries, as every standard selector
    does), and implements the rest of the :class:`selectors.BaseSelector`
    contract on top of it.  Only the public ``selectors`` API is used: the
    standard selectors' private bookkeeping has changed between Python
    versions, and this layer must not move with it.

    Bookkeeping follows the kernel: a registration is recorded only after the
    kernel accepted it, and a modification only after it succeeded.
    """

    #: Registry name (``'epoll'``, ``'poll'``...).
    name: ClassVar[str] = ""
    #: The neutral events this backend can report (a bit mask).
    reports: ClassVar[int] = READ | WRITE
    #: Whether a registration is kept by the kernel between polls (as opposed
    #: to being handed over again on every call, as select() and poll() do).
    kernel_registry: ClassVar[bool] = False
    #: The largest fd this backend accepts (``None``: no limit of its own).
    max_fd: ClassVar[Optional[int]] = None
    #: One line on what the backend cannot tell apart.
    limits: ClassVar[str] = ""

    def __init__(self) -> None:
        # fd -> SelectorKey.  The one registration table: the loop stores
        # its channel in each key's ``data`` and reads the table through
        # get_map(), a live read-only view.
        self._keys: Dict[int, selectors.SelectorKey] = {}
        self._keys_view: Optional[Mapping[int, selectors.SelectorKey]] = MappingProxyType(
            self._keys)

    # -- the public contract ------------------------------------------------

    def register(self, fileobj: FileObj, events: int,
                 data: Any = None) -> selectors.SelectorKey:
        """Start watching ``fileobj`` (an fd or an object with ``fileno()``).

        ``events`` is a non-zero mask of ``READ``, ``WRITE`` and ``PRI``.

        Raises:
            ValueError: ``events`` is empty or has bits other than ``INTEREST``;
                the fd is negative or the object is closed.
            TypeError: ``fileobj`` is neither an int nor has ``fileno()``.
            AlreadyRegisteredError: the fd is already registered.
            FDSetSizeError: (select only) the fd is too large for select().
            OSError: the kernel refused the fd.
        """
        fd = fd_of(fileobj)
        self._check_events(events)
        if fd in self._keys:
            raise AlreadyRegisteredError(
                f"fd {fd} is already registered with the {self.name} backend; "
                "call modify() to change its events or unregister() it first")
        if self.max_fd is not None and fd > self.max_fd:
            raise FDSetSizeError(
                f"fd {fd} is at or above FD_SETSIZE ({self.max_fd + 1}), the most "
                f"select() can watch; use the epoll or poll backend instead "
                "(POLLCHAT_BACKEND=epoll, or backend='poll')")
        self._kernel_register(fd, events)
        key = selectors.SelectorKey(fileobj, fd, events, data)
        self._keys[fd] = key
        return key

    def modify(self, fileobj: FileObj, events: int,
               data: Any = None) -> selectors.SelectorKey:
        """Change the events (and data) watched for a registered ``fileobj``.

        Raises:
            NotRegisteredError: the fd is not registered.
            ValueError: bad ``events``, as for :meth:`register`.
            OSError: the kernel refused the change (the registration is kept
                as it was).
        """
        fd = fd_of(fileobj)
        key = self._keys.get(fd)
        if key is None:
            raise NotRegisteredError(f"fd {fd} is not registered with the {self.name} backend")
        self._check_events(events)
        if events != key.events:
            self._kernel_modify(fd, key.events, events)
        if events != key.events or data is not key.data or fileobj is not key.fileobj:
            key = selectors.SelectorKey(fileobj, fd, events, data)
            self._keys[fd] = key
        return key

    def unregister(self, fileobj: FileObj) -> selectors.SelectorKey:
        """Stop watching ``fileobj``; return its key.

        Lenient by design: the fd may already be closed (or closed and
        reused), in which case the kernel has dropped it already and that is
        not an error.

        Raises:
            NotRegisteredError: the fd was never registered (or already
                unregistered).
        """
        try:
            fd = fd_of(fileobj)
        except ValueError:
            # A closed socket reports fileno() == -1: find it by identity.
            fd = next((k.fd for k in self._keys.values() if k.fileobj is fileobj), -1)
        key = self._keys.pop(fd, None)
        if key is None:
            raise NotRegisteredError(f"{fileobj!r} is not registered with the {self.name} backend")
        try:
            self._kernel_unregister(fd, key.events)
        except OSError as exc:
            if exc.errno not in _GONE_ERRNOS:
                raise
        return key

    def poll(self, timeout: Optional[float] = None) -> EventList:
        """Wait for events; return ``[(fd, neutral events), ...]``.

        ``timeout`` in seconds: ``None`` blocks until an event, ``0`` (or a
        negative number) does not wait.  Each fd appears at most once.  An
        interrupting signal whose handler returns is retried by Python itself
        (PEP 475); one whose handler raises propagates.
        """
        raise NotImplementedError

    def select(self, timeout: Optional[float] = None) -> List[Tuple[selectors.SelectorKey, int]]:
        """:meth:`selectors.BaseSelector.select`, with neutral event bits:
        ``[(key, events), ...]`` for the registered fds that are ready."""
        get = self._keys.get
        ready = []
        for fd, events in self.poll(timeout):
            key = get(fd)
            if key is not None:
                ready.append((key, events))
        return ready

    def get_key(self, fileobj: FileObj) -> selectors.SelectorKey:
        """The key of a registered ``fileobj``.

        Raises:
            KeyError: not registered.
            RuntimeError: the backend is closed.
        """
        if self._keys_view is None:
            raise RuntimeError(f"the {self.name} backend is closed")
        try:
            return self._keys[fd_of(fileobj)]
        except (KeyError, ValueError):
            raise KeyError(f"{fileobj!r} is not registered") from None

    def get_map(self) -> Mapping[int, selectors.SelectorKey]:  # type: ignore[override]
        """A live, read-only mapping of fd -> key (``None`` once closed, as
        for the standard selectors).  Indexing it is O(1); it is the table the
        loop reads on every event."""
        return self._keys_view  # type: ignore[return-value]

    def close(self) -> None:
        """Release the kernel object and forget every registration."""
        self._keys.clear()
        self._keys_view = None

    def describe(self) -> str:
        """One line: name and the events it reports."""
        return f"{self.name}: reports {event_names(self.reports)}"

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name} fds={len(self._keys)}>"

    # -- helpers and hooks ----------------------------------------------------

    @staticmethod
    def _check_events(events: int) -> None:
        if not isinstance(events, int) or isinstance(events, bool):
            raise TypeError(f"events must be an int mask of READ/WRITE/PRI, not {events!r}")
        if not events or events & ~INTEREST:
            raise ValueError(
                f"invalid events {events!r}: give a non-zero mask of READ, WRITE and "
                "PRI (HUP, ERR and NVAL are always reported); to stop watching an fd, "
                "unregister() it")

    def _kernel_register(self, fd: int, events: int) -> None:
        raise NotImplementedError

    def _kernel_modify(self, fd: int, old: int, new: int) -> None:
        raise NotImplementedError

    def _kernel_unregister(self, fd: int, events: int) -> None:
        raise NotImplementedError


def fd_of(fileobj: FileObj) -> int:
    """The file descriptor of ``fileobj``: an int, or an object with ``fileno()``.

    Raises:
        TypeError: neither an int nor an object with a working ``fileno()``.
        ValueError: a negative fd (a closed socket reports -1).
    """
    if isinstance(fileobj, int) and not isinstance(fileobj, bool):
        fd = fileobj
    else:
        try:
            fd = int(fileobj.fileno())
        except (AttributeError, TypeError):
            # selectors would say ValueError; it is the wrong type of thing.
            raise TypeError(f"cannot watch {fileobj!r}: pass an int fd or an object with a "
                            "fileno() method") from None
        except ValueError:
            fd = -1  # fileno() of a closed file object
    if fd < 0:
        raise ValueError(f"cannot watch {fileobj!r}: it has no valid file descriptor "
                         "(is it closed?)")
    return fd


_second = operator.itemgetter(1)


class NativeEvents(Dict[int, int]):
    """Native-to-neutral event translation: one dict lookup per event, and
    none when every event is already neutral (:meth:`translate`).

    Built from ``((native_bit, neutral_bit), ...)``.  A combination of native
    bits is computed once, the first time the kernel reports it, and cached:
    the kernel may set bits we do not translate (``EPOLLRDNORM``...), which
    are ignored.
    """

    def __init__(self, pairs: Iterable[Tuple[int, int]]) -> None:
        super().__init__()
        self.pairs = tuple(pairs)
        #: Native masks that are already their neutral value (POLLIN and
        #: EPOLLIN are READ): events with only these need no translating.
        self.unchanged = frozenset(native for native, neutral in self.pairs
                                   if native == neutral)

    def translate(self, ready: EventList) -> EventList:
        """The kernel's ``(fd, native mask)`` pairs as ``(fd, neutral mask)``.

        When every mask is one of :attr:`unchanged` (a busy server's events
        are nearly all a plain POLLIN/EPOLLIN), ``ready`` itself is returned:
        the check runs in C, where translating makes a tuple per event.
        """
        if type(ready) is not list:
            ready = list(ready)  # (a stand-in's iterable: it is read twice)
        if ready and not set(map(_second, ready)) <= self.unchanged:
            return [(fd, self[native]) for fd, native in ready]
        return ready

    def __missing__(self, native: int) -> int:
        neutral = 0
        for native_bit, neutral_bit in self.pairs:
            if native & native_bit:
                neutral |= neutral_bit
        self[native] = neutral
        return neutral

    def to_native(self, neutral: int) -> int:
        """The native mask for a neutral interest mask."""
        native = 0
        for native_bit, neutral_bit in self.pairs:
            if neutral & neutral_bit & INTEREST:
                native |= native_bit
        return native
