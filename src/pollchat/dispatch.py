"""From events to handlers, and the one place where handler errors are caught.

Every backend reports neutral events (:mod:`pollchat.backends`); this module
sends them to asyncore's handlers the same way on all of them:

======================  ==========================
READ                    ``handle_read_event()``
WRITE                   ``handle_write_event()``
PRI                     ``handle_expt_event()``
HUP, ERR or NVAL        ``handle_close()``
======================  ==========================

The error policy, in one place (:class:`ErrorPolicy`):

* an ``OSError`` whose errno means "the peer went away" (:data:`DISCONNECTED`)
  closes the channel quietly (``handle_close()``);
* any other exception goes to the channel's ``handle_error()``;
* :class:`ExitNow`, :class:`KeyboardInterrupt` and :class:`SystemExit`
  propagate to whoever runs the loop;
* if ``handle_error()`` (or ``handle_close()``) itself raises, the exception
  leaves the loop, as in CPython, unless the loop isolates errors: then it is
  logged and that channel is closed;
* timer and thread-safe callbacks that raise are logged; the loop goes on.
"""

from __future__ import annotations

import errno
import logging
import os
import sys
from typing import Any, Callable, Dict, Optional, Tuple, Type

from .backends import CLOSE_EVENTS, PRI, READ, WRITE

__all__ = ["DISCONNECTED", "ErrorPolicy", "ExitNow", "REraised", "call_handler",
           "compact_traceback", "dispatch", "exception", "is_ssl_error", "read", "run_handlers",
           "strerror", "write"]

logger = logging.getLogger("pollchat")

#: errnos that mean the connection is gone: the channel is closed, no traceback.
DISCONNECTED = frozenset({errno.ECONNRESET, errno.ENOTCONN, errno.ESHUTDOWN,
                          errno.ECONNABORTED, errno.EPIPE, errno.EBADF})


class ExitNow(Exception):
    """Raise from a handler to make ``loop()`` return at once."""


#: Exceptions that are never handed to ``handle_error()``.
REraised: Tuple[Type[BaseException], ...] = (ExitNow, KeyboardInterrupt, SystemExit)

#: How many loop passes are dispatching events right now (in any thread).
#: Channels hold back and join the replies of one read only inside a pass:
#: code that calls ``handle_read()`` itself (test suites on fake sockets)
#: sees one ``send()`` per ``push()``, as with CPython.
dispatching = 0


def strerror(err: int) -> str:
    """``os.strerror(err)``, never failing (bpo-8573)."""
    try:
        return os.strerror(err)
    except (ValueError, OverflowError, NameError):
        return errorcode.get(err, f"Unknown error {err}")


errorcode = errno.errorcode


def compact_traceback() -> Tuple[Tuple[str, str, str], Any, Any, str]:
    """Summarize the exception being handled.

    Returns ``((file, function, line), type, value, info)`` where the first
    item names the innermost frame and ``info`` is every frame as
    ``[file|function|line]`` joined by spaces.

    Raises:
        AssertionError: no exception is being handled.
    """
    exc_type, value, tb = sys.exc_info()
    if tb is None:
        raise AssertionError("traceback does not exist")
    frames = []
    while tb is not None:
        code = tb.tb_frame.f_code
        frames.append((code.co_filename, code.co_name, str(tb.tb_lineno)))
        tb = tb.tb_next
    info = " ".join("[%s|%s|%s]" % frame for frame in frames)
    return frames[-1], exc_type, value, info


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


def dispatch(obj: Any, events: int, key: Any = None, map: Optional[Dict[Any, Any]] = None) -> None:
    """Send one channel's neutral ``events`` to its handlers, with the error
    policy of CPython's ``readwrite()``.

    With ``map``, a handler runs only while ``map[key]`` is still ``obj``: once
    a handler closed the channel (or replaced it), the rest of the events are
    dropped, so ``handle_close()`` never runs twice for one event set
    (bpo-30985) and never reaches a channel that took over the fd.  Without
    ``map`` (the legacy ``readwrite()``), every handler the events name runs.

    Raises:
        whatever ``handle_error()``/``handle_close()`` raise, and :data:`REraised`.
    """
    try:
        run_handlers(obj, events, key, map)
    except OSError as exc:
        _handler_os_error(obj, exc, key, map)
    except REraised:
        raise
    except Exception:
        obj.handle_error()


def run_handlers(obj: Any, events: int, key: Any, map: Optional[Dict[Any, Any]]) -> None:
    """The handlers ``events`` name, in CPython's order, each while ``map[key]``
    is still ``obj`` (with a map).  Exceptions propagate: see :func:`dispatch`."""
    if events & READ:
        obj.handle_read_event()
    if events & WRITE and (map is None or map.get(key) is obj):
        obj.handle_write_event()
    if events & PRI and (map is None or map.get(key) is obj):
        obj.handle_expt_event()
    if events & CLOSE_EVENTS and (map is None or map.get(key) is obj):
        obj.handle_close()


def is_ssl_error(exc: BaseException, kind: str = "SSLError") -> bool:
    """Whether ``exc`` is an :class:`ssl.SSLError` (or the subclass named
    ``kind``), whose ``errno`` is an OpenSSL code, not an OS errno.  Never
    imports :mod:`ssl`: without it no such error can exist."""
    ssl_module = sys.modules.get("ssl")
    return ssl_module is not None and isinstance(exc, getattr(ssl_module, kind))


def _handler_os_error(obj: Any, exc: OSError, key: Any, map: Optional[Dict[Any, Any]]) -> None:
    # An ssl.SSLError's errno is an OpenSSL code, never an OS errno.
    if exc.errno not in DISCONNECTED or is_ssl_error(exc):
        obj.handle_error()
    elif map is None or map.get(key) is obj:
        obj.handle_close()


class ErrorPolicy:
    """What a loop does when error handling itself fails, and with callbacks.

    Args:
        isolate: log and close a channel whose ``handle_error()`` (or
            ``handle_close()``) raised, instead of letting the exception out
            of the loop (CPython lets it out).
        forget: called with ``(key, channel)`` for each map entry dropped by
            force when a channel's own ``close()`` failed.
    """

    def __init__(self, isolate: bool, forget: Callable[[Any, Any], None]) -> None:
        self.isolate = isolate
        self._forget = forget

    def deliver(self, channel: Any, events: int, key: Any, map: Dict[Any, Any]) -> None:
        """:func:`dispatch`, with this policy for a failing error handler.
        (The loop's pass runs the handlers itself, to save a call per event,
        and calls :meth:`handler_failed` when one raised.)"""
        try:
            run_handlers(channel, events, key, map)
        except REraised:
            raise
        except Exception as exc:
            self.handler_failed(channel, exc, key, map)

    def handler_failed(self, channel: Any, exc: Exception, key: Any,
                       map: Dict[Any, Any]) -> None:
        """An event handler of ``channel`` raised ``exc`` (call this from the
        ``except`` block): a disconnect closes it, anything else goes to its
        ``handle_error()``, as CPython's ``readwrite()`` does; if that raises
        in turn, :meth:`error_handler_failed` decides."""
        try:
            if isinstance(exc, OSError):
                _handler_os_error(channel, exc, key, map)
            else:
                channel.handle_error()
        except REraised:
            raise
        except Exception:
            self.error_handler_failed(channel, map)

    def call(self, channel: Any, method: str, map: Dict[Any, Any], *,
             via_handle_error: bool = False) -> None:
        """Call ``channel.<method>()`` (a handler the loop runs for its own
        reasons: ``handle_timeout()``, ``handle_error()``...).  With
        ``via_handle_error`` its exceptions go to ``handle_error()`` first,
        as an event handler's would."""
        try:
            if via_handle_error:
                call_handler(channel, method)
            else:
                getattr(channel, method)()
        except REraised:
            raise
        except Exception:
            self.error_handler_failed(channel, map)

    def error_handler_failed(self, channel: Any, map: Dict[Any, Any]) -> None:
        """Called from an ``except`` block: the channel's own error handling
        raised.  Re-raise it (CPython), or log it and close the channel."""
        if not self.isolate:
            raise  # noqa: PLE0704 - re-raises the exception being handled
        logger.exception("error handler of %r raised; closing the channel", channel)
        self.force_close(channel, map)

    def force_close(self, channel: Any, map: Dict[Any, Any]) -> None:
        """Close ``channel``; if its ``close()`` raises, drop it from ``map``."""
        try:
            channel.close()
        except REraised:
            raise
        except Exception:
            logger.exception("close() of %r raised; dropping it from the loop", channel)
            for key, value in list(map.items()):
                if value is channel:
                    del map[key]
                    self._forget(key, channel)

    @staticmethod
    def run_callback(callback: Callable[..., Any], args: Tuple[Any, ...]) -> None:
        """Run a timer or thread-safe callback; an exception is logged."""
        try:
            callback(*args)
        except REraised:
            raise
        except Exception:
            logger.exception("exception in callback %r", callback)
