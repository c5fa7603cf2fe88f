"""Drop-in replacement for CPython 3.11's ``asyncore``, on pollchat's loop.

``from pollchat import asyncore`` (or :func:`pollchat.install`, after which
``import asyncore`` gives this module) and the program runs unchanged, on the
backend chosen by ``POLLCHAT_BACKEND`` (``auto`` by default), past select()'s
1024-fd limit, with loop passes that cost what the ready channels cost.

``poll()``, ``poll2()`` and ``poll3()`` all run one pass of the map's loop, on
its backend: the function name no longer picks the poller.  ``loop()``'s
``use_poll`` is a hint used when nothing else names a backend and the map's
loop does not exist yet.
"""

from __future__ import annotations

import sys
import types
from typing import Any, Dict, Optional

from . import loop as _loop
from .backends import ERR, HUP, NVAL, PRI, READ, WRITE
from .channel import (
    close_all,
    compact_traceback,
    dispatcher,
    dispatcher_with_send,
)

# Imported under CPython's private names: programs and CPython's own tests use them.
from .channel import strerror as _strerror  # noqa: F401
from .dispatch import DISCONNECTED as _DISCONNECTED  # noqa: F401
from .dispatch import ExitNow, dispatch, read, write
from .dispatch import REraised as _reraised_exceptions  # noqa: F401
from .dispatch import exception as _exception  # noqa: F401

try:
    from .channel import file_dispatcher, file_wrapper
except ImportError:  # pragma: no cover - not POSIX
    pass

__all__ = ["ExitNow", "close_all", "compact_traceback", "dispatcher", "dispatcher_with_send",
           "file_dispatcher", "file_wrapper", "loop", "poll", "poll2", "poll3", "read",
           "readwrite", "socket_map", "write"]  # noqa: F822 (socket_map: a module property)


def _poll_flags_to_events() -> Dict[int, int]:
    """poll(2) flags -> neutral events, for legacy callers of readwrite()."""
    import select

    if not hasattr(select, "poll"):
        return {}
    return {select.POLLIN: READ, select.POLLOUT: WRITE, select.POLLPRI: PRI,
            select.POLLHUP: HUP, select.POLLERR: ERR, select.POLLNVAL: NVAL}


_POLL_FLAGS = _poll_flags_to_events()


def readwrite(obj: Any, flags: int) -> None:
    """Dispatch poll(2)-style ``flags`` (``select.POLLIN``...) to ``obj``'s
    handlers: read, write, priority, then close for HUP/ERR/NVAL."""
    events = 0
    for native, neutral in _POLL_FLAGS.items():
        if flags & native:
            events |= neutral
    dispatch(obj, events)


def _run(map: Optional[Dict[Any, Any]], use_poll: bool, passes: Optional[int],
         timeout: Optional[float]) -> None:
    if map is None:
        map = _loop.get_socket_map()
    if not map:
        return  # as CPython's: nothing to do, and no loop made for it
    loop_ = _loop.get_loop(map, use_poll=use_poll)
    try:
        loop_.run(timeout, passes, wait_for_timers=False)
    finally:
        loop_._release_if_idle()


def poll(timeout: Optional[float] = 0.0, map: Optional[Dict[Any, Any]] = None) -> None:
    """One pass over ``map``: wait up to ``timeout`` seconds, dispatch events."""
    _run(map, False, 1, timeout)


def poll2(timeout: Optional[float] = 0.0, map: Optional[Dict[Any, Any]] = None) -> None:
    """One pass over ``map`` (the same as :func:`poll`; the poller is the
    map's backend, not the function)."""
    _run(map, True, 1, timeout)


poll3 = poll2


def loop(timeout: Optional[float] = 30.0, use_poll: bool = False,
         map: Optional[Dict[Any, Any]] = None, count: Optional[int] = None) -> None:
    """Run until ``map`` (default: ``socket_map``) is empty or ``count``
    passes are done; each pass waits at most ``timeout`` seconds.

    ``use_poll=True`` asks for the poll backend, unless ``POLLCHAT_BACKEND``
    names one or the map's loop already exists.
    """
    if count is not None and count <= 0:
        return
    _run(map, use_poll, count, timeout)


class _AsyncoreModule(types.ModuleType):
    """Lets ``asyncore.socket_map = {...}`` replace the default map, as
    programs and CPython's tests do with the original module."""

    @property
    def socket_map(self) -> Dict[Any, Any]:
        return _loop.get_socket_map()

    @socket_map.setter
    def socket_map(self, new_map: Dict[Any, Any]) -> None:
        _loop.set_socket_map(new_map)


sys.modules[__name__].__class__ = _AsyncoreModule
