"""Drop-in replacement for CPython 3.11's ``asyncore``, on pollchat's loop.

``from pollchat import asyncore`` (or :func:`pollchat.install`, after which
``import asyncore`` gives this module) and the program runs unchanged, on the
backend chosen by ``POLLCHAT_BACKEND`` (``auto`` by default), past select()'s
1024-fd limit, with loop passes that cost what the ready channels cost.

The namespace is CPython's: every name ``dir(asyncore)`` shows there is here
(the imported modules ``socket``, ``select``, ``os``, ``sys``, ``time``,
``warnings``, ``errorcode`` and the errno names included), and ``from
asyncore import *`` exports the same names.  Assigning one of them
(``asyncore.socket = fake_socket_module``, as test suites do) takes effect
where CPython's code looks it up: the module forwards the new value to the
pollchat module whose code does that lookup.

``poll()``, ``poll2()`` and ``poll3()`` run one pass of the map's loop, on its
backend: the function name no longer picks the poller.  ``loop()``'s
``use_poll=True`` means "not select": the best backend other than select,
unless ``POLLCHAT_BACKEND`` names one or the map's loop already exists.
"""

from __future__ import annotations

import os
import select
import socket
import sys
import time
import types
import warnings
from errno import (
    EAGAIN,
    EALREADY,
    EBADF,
    ECONNABORTED,
    ECONNRESET,
    EINPROGRESS,
    EINVAL,
    EISCONN,
    ENOTCONN,
    EPIPE,
    ESHUTDOWN,
    EWOULDBLOCK,
    errorcode,
)
from typing import Any, Callable, Dict, List, Optional, Tuple

from . import channel as _channel
from . import chat as _chat
from . import dispatch as _dispatch
from . import files as _files
from . import interest as _interest
from . import loop as _loop
from . import maps as _maps
from .backends import ERR, HUP, NVAL, PRI, READ, WRITE
from .backends import pollers as _pollers
from .channel import close_all, dispatcher

# CPython's private names, which programs and CPython's own tests use.
from .dispatch import DISCONNECTED as _DISCONNECTED  # noqa: F401  (re-exported)
from .dispatch import ExitNow, compact_traceback, dispatch, read, write
from .dispatch import REraised as _reraised_exceptions  # noqa: F401  (re-exported)
from .dispatch import exception as _exception  # noqa: F401  (re-exported)
from .dispatch import strerror as _strerror  # noqa: F401  (re-exported)
from .files import file_dispatcher, file_wrapper
from .loop import get_loop
from .sendbuffer import dispatcher_with_send

# CPython's module warns on import; pollchat's is not deprecated, so this
# is only here for programs that read it.
_DEPRECATION_MSG = ("The {name} module was removed from the standard library in Python "
                    "{remove}; pollchat provides it. New code may prefer asyncio.")

# The public names of CPython 3.11's module, which has no __all__: what
# ``from asyncore import *`` gives there.
__all__ = ["EAGAIN", "EALREADY", "EBADF", "ECONNABORTED", "ECONNRESET", "EINPROGRESS",
           "EINVAL", "EISCONN", "ENOTCONN", "EPIPE", "ESHUTDOWN", "EWOULDBLOCK", "ExitNow",
           "close_all", "compact_traceback", "dispatcher", "dispatcher_with_send",
           "errorcode", "file_dispatcher", "file_wrapper", "loop", "os", "poll", "poll2",
           "poll3", "read", "readwrite", "select", "socket", "socket_map",  # noqa: F822
           "sys", "time", "warnings", "write"]

# Where CPython's asyncore looks a global up at run time, and the pollchat
# module (and name) whose code now does that lookup.
_FORWARDS: Dict[str, List[Tuple[types.ModuleType, str]]] = {
    "socket": [(_channel, "socket"), (_files, "socket")],
    "os": [(_channel, "os"), (_files, "os"), (_dispatch, "os")],
    "sys": [(_channel, "sys"), (_dispatch, "sys")],
    "warnings": [(_files, "warnings")],
    "select": [(_pollers, "select")],
    "errorcode": [(_channel, "errorcode"), (_dispatch, "errorcode")],
    "_DISCONNECTED": [(_dispatch, "DISCONNECTED"), (_channel, "DISCONNECTED")],
    "_reraised_exceptions": [(module, "REraised")
                             for module in (_dispatch, _channel, _chat, _interest, _loop)],
    "compact_traceback": [(_channel, "compact_traceback")],
    "_strerror": [(_channel, "_strerror")],
}
for _name in ("EAGAIN", "EALREADY", "EBADF", "ECONNABORTED", "EINPROGRESS", "EINVAL",
              "EISCONN", "ENOTCONN", "EWOULDBLOCK"):
    _FORWARDS[_name] = [(_channel, _name)]


def readwrite(obj: Any, flags: int) -> None:
    """Dispatch poll(2)-style ``flags`` (``select.POLLIN``...) to ``obj``'s
    handlers: read, write, priority, then close for HUP/ERR/NVAL."""
    events = 0
    for native, neutral in ((select.POLLIN, READ), (select.POLLOUT, WRITE),
                            (select.POLLPRI, PRI), (select.POLLHUP, HUP),
                            (select.POLLERR, ERR), (select.POLLNVAL, NVAL)):
        if flags & native:
            events |= neutral
    dispatch(obj, events)


def _sleep(timeout: Optional[float]) -> None:
    # CPython's poll() sleeps when no channel wants anything; through the
    # module global, so that a program's rebinding of `time` is honoured.
    if timeout is not None and timeout > 0:
        time.sleep(timeout)


def _run(map: Optional[Dict[Any, Any]], use_poll: bool, passes: Optional[int],
         timeout: Optional[float]) -> None:
    if map is None:
        map = _maps.get_socket_map()
    if not map:
        return  # as CPython's: nothing to do, and no loop made for it
    loop_ = get_loop(map, use_poll=use_poll)
    try:
        loop_.run(timeout, passes, wait_for_timers=False, sleep=_sleep)
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

    ``use_poll=True`` asks for the best backend other than select, unless
    ``POLLCHAT_BACKEND`` names one or the map's loop already exists.  If the
    program has replaced this module's ``poll``/``poll2`` function, it is
    called for each pass, as CPython's ``loop()`` does.
    """
    if count is not None and count <= 0:
        return
    poll_fun: Callable[..., Any] = poll2 if use_poll and hasattr(select, "poll") else poll
    if poll_fun is _stock_poll or poll_fun is _stock_poll2:
        _run(map, use_poll, count, timeout)
        return
    if map is None:
        map = _maps.get_socket_map()
    while map and (count is None or count > 0):
        poll_fun(timeout, map)
        if count is not None:
            count -= 1


_stock_poll = poll
_stock_poll2 = poll2


class _AsyncoreModule(types.ModuleType):
    """``asyncore.socket_map = {...}`` replaces the default map, and
    assigning another global reaches the code that looks it up, as with
    CPython's module."""

    @property
    def socket_map(self) -> Dict[Any, Any]:
        return _maps.get_socket_map()

    @socket_map.setter
    def socket_map(self, new_map: Dict[Any, Any]) -> None:
        _maps.set_socket_map(new_map)

    def __setattr__(self, name: str, value: Any) -> None:
        super().__setattr__(name, value)
        for module, global_name in _FORWARDS.get(name, ()):
            setattr(module, global_name, value)


sys.modules[__name__].__class__ = _AsyncoreModule
