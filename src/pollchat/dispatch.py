"""From events to handlers: the one place where handler exceptions are caught.

Every backend reports neutral events (:mod:`pollchat.backends`); this module
sends them to asyncore's handlers the same way on all of them:

======================  ==========================
READ                    ``handle_read_event()``
WRITE                   ``handle_write_event()``
PRI                     ``handle_expt_event()``
HUP, ERR or NVAL        ``handle_close()``
======================  ==========================

An ``OSError`` whose errno means "the peer went away" (:data:`DISCONNECTED`)
closes the channel quietly; any other exception goes to the channel's
``handle_error()``; :class:`ExitNow`, :class:`KeyboardInterrupt` and
:class:`SystemExit` propagate to whoever runs the loop.
"""

from __future__ import annotations

import errno
import sys
from typing import Any, Optional

from .backends import CLOSE_EVENTS, PRI, READ, WRITE

__all__ = ["DISCONNECTED", "ExitNow", "REraised", "call_handler", "dispatch", "read", "write",
           "exception", "is_ssl_error"]

#: errnos that mean the connection is gone: the channel is closed, no traceback.
DISCONNECTED = frozenset({errno.ECONNRESET, errno.ENOTCONN, errno.ESHUTDOWN,
                          errno.ECONNABORTED, errno.EPIPE, errno.EBADF})


def is_ssl_error(exc: BaseException, kind: str = "SSLError") -> bool:
    """Whether ``exc`` is an :class:`ssl.SSLError` (or the subclass named
    ``kind``), whose ``errno`` is an OpenSSL code, not an OS errno.  Never
    imports :mod:`ssl`: without it no such error can exist."""
    ssl_module = sys.modules.get("ssl")
    return ssl_module is not None and isinstance(exc, getattr(ssl_module, kind))


class ExitNow(Exception):
    """Raise from a handler to make ``loop()`` return at once."""


#: Exceptions that are never handed to ``handle_error()``.
REraised = (ExitNow, KeyboardInterrupt, SystemExit)


def call_handler(obj: Any, method: str) -> None:
    """Call ``obj.<method>()``; an exception goes to ``obj.handle_error()``,
    except the ones that must stop the loop (:data:`REraised`)."""
    try:
        getattr(obj, method)()
    except REraised:
        raise
    except Exception:
        obj.handle_error()


def read(obj: Any) -> None:
    """Call ``obj.handle_read_event()``; errors to ``obj.handle_error()``."""
    call_handler(obj, "handle_read_event")


def write(obj: Any) -> None:
    """Call ``obj.handle_write_event()``; errors to ``obj.handle_error()``."""
    call_handler(obj, "handle_write_event")


def exception(obj: Any) -> None:
    """Call ``obj.handle_expt_event()``; errors to ``obj.handle_error()``."""
    call_handler(obj, "handle_expt_event")


def dispatch(obj: Any, events: int, fd: Any = None, map: Optional[dict] = None) -> None:
    """Send one fd's neutral ``events`` to ``obj``'s handlers.

    With ``map``, a handler runs only while ``map[fd]`` is still ``obj``: once
    a handler closed the channel (or replaced it), the rest of the events are
    dropped, so ``handle_close()`` never runs twice for one event set
    (bpo-30985) and never reaches a channel that took over the fd.  Without
    ``map`` (the legacy ``readwrite()``), every handler the events name runs.
    """
    try:
        if events & READ:
            obj.handle_read_event()
        if events & WRITE and (map is None or map.get(fd) is obj):
            obj.handle_write_event()
        if events & PRI and (map is None or map.get(fd) is obj):
            obj.handle_expt_event()
        if events & CLOSE_EVENTS and (map is None or map.get(fd) is obj):
            obj.handle_close()
    except OSError as exc:
        # An ssl.SSLError's errno is an OpenSSL code, never an OS errno.
        if exc.errno not in DISCONNECTED or is_ssl_error(exc):
            obj.handle_error()
        elif map is None or map.get(fd) is obj:
            obj.handle_close()
    except REraised:
        raise
    except Exception:
        obj.handle_error()
