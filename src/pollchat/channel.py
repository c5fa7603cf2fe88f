"""Channels: asyncore's ``dispatcher`` family, wired to the loop's interest
tracking.

The classes behave as CPython 3.11's; the differences are internal: a channel
tells its loop when its ``readable()``/``writable()`` answer may change
(:meth:`dispatcher._interest_changed`), so that the loop need not ask every
channel on every pass.
"""

from __future__ import annotations

import logging
import os
import socket
import sys
import warnings
from errno import (
    EAGAIN,
    EALREADY,
    EBADF,
    ECONNABORTED,
    EINPROGRESS,
    EINVAL,
    EISCONN,
    EMFILE,
    ENFILE,
    ENOBUFS,
    ENOMEM,
    ENOTCONN,
    EWOULDBLOCK,
    errorcode,
)
from typing import Any, Dict, Optional, Tuple

from . import loop as _loop
from .dispatch import DISCONNECTED, REraised
from .loop import managed_interest
from .tls import TLSChannelMixin, is_ssl_error, legacy_pending, legacy_send_error

__all__ = ["dispatcher", "dispatcher_with_send", "file_wrapper", "file_dispatcher",
           "compact_traceback", "close_all", "strerror"]

# repr() shows the legacy module names, as programs written for asyncore
# print and parse them: '<asyncore.dispatcher at 0x...>'.
_LEGACY_MODULES = {"pollchat.channel": "asyncore", "pollchat.asyncore": "asyncore",
                   "pollchat.chat": "asynchat", "pollchat.asynchat": "asynchat"}

_loops_get = _loop._loops.get
_plain_socket = socket.socket

logger = logging.getLogger("pollchat")

# accept() failures that mean "out of resources for now", not "this listener
# is broken": back off instead of closing the listener (asyncio and gevent do
# the same).  CPython's asyncore sent them to handle_error(), which closed it.
_ACCEPT_RESOURCE_ERRNOS = frozenset({EMFILE, ENFILE, ENOBUFS, ENOMEM})


def strerror(err: int) -> str:
    """``os.strerror(err)``, never failing (bpo-8573)."""
    try:
        return os.strerror(err)
    except (ValueError, OverflowError, NameError):
        return errorcode.get(err, f"Unknown error {err}")


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


class dispatcher(TLSChannelMixin):
    """A thin wrapper around a non-blocking socket, driven by the loop.

    Subclass it and override the ``handle_*`` methods.  See CPython's asyncore
    documentation; everything there holds here.
    """

    debug = False
    connected = False
    accepting = False
    connecting = False
    closing = False
    addr = None
    ignore_log_types = frozenset({"warning"})
    #: Seconds without any event after which ``handle_timeout()`` runs
    #: (``None``: never).  Read when the channel joins a loop's map; change
    #: it later with :meth:`set_idle_timeout`.
    idle_timeout: Optional[float] = None
    #: Seconds a listener stops accepting after ``accept()`` failed for lack
    #: of resources (``EMFILE``, ``ENFILE``, ``ENOBUFS``, ``ENOMEM``).  ``None``
    #: restores CPython's behaviour: the error goes to ``handle_error()``.
    accept_backoff: Optional[float] = 0.25
    _accept_failing = False

    def __init__(self, sock: Optional[socket.socket] = None,
                 map: Optional[Dict[Any, Any]] = None) -> None:
        self._map = _loop.get_socket_map() if map is None else map
        self._fileno = None
        if sock:
            _check_open(sock)
            # Non-blocking before anything else can touch it.
            sock.setblocking(False)
            self.set_socket(sock, map)
            self.connected = True
            try:
                self.addr = sock.getpeername()
            except OSError as err:
                if err.errno in (ENOTCONN, EINVAL):
                    # A socket accepted and reset before we got to it (bpo-10340),
                    # or one that was never connected.
                    self.connected = False
                else:
                    self.del_channel(map)
                    raise
        else:
            self.socket = None

    def __repr__(self) -> str:
        cls = type(self)
        module = _LEGACY_MODULES.get(cls.__module__, cls.__module__)
        status = [f"{module}.{cls.__qualname__}"]
        if self.accepting and self.addr:
            status.append("listening")
        elif self.connected:
            status.append("connected")
        if self.addr is not None:
            try:
                status.append("%s:%d" % self.addr)
            except TypeError:
                status.append(repr(self.addr))
        return "<%s at %#x>" % (" ".join(status), id(self))

    # -- the map and the loop -----------------------------------------------------

    def add_channel(self, map: Optional[Dict[Any, Any]] = None) -> None:
        """Put this channel in ``map`` (default: its own) under its fd."""
        if map is None:
            map = self._map
        map[self._fileno] = self
        loop = _loops_get(id(map))
        if loop is not None:
            loop._channel_added(self._fileno, self)

    def del_channel(self, map: Optional[Dict[Any, Any]] = None) -> None:
        """Take this channel out of ``map`` (default: its own)."""
        fd = self._fileno
        if map is None:
            map = self._map
        # Only our own entry: after an fd was closed behind our back and
        # reused, map[fd] belongs to another channel.
        if map.get(fd) is self:
            del map[fd]
            loop = _loops_get(id(map))
            if loop is not None:
                loop._channel_removed(fd, self)
        self._fileno = None

    def _interest_changed(self) -> None:
        """Tell the loop that ``readable()``/``writable()`` may now answer
        differently.  Library methods call it after changing the state those
        predicates read; O(1)."""
        loop = _loops_get(id(self._map))
        if loop is not None and self._fileno is not None:
            loop._dirty.add(self._fileno)

    # -- socket set-up ------------------------------------------------------------

    def create_socket(self, family: int = socket.AF_INET,
                      type: int = socket.SOCK_STREAM) -> None:
        """Create a non-blocking socket and add this channel to its map."""
        self.family_and_type = family, type
        sock = socket.socket(family, type)
        sock.setblocking(False)
        self.set_socket(sock)

    def set_socket(self, sock: Any, map: Optional[Dict[Any, Any]] = None) -> None:
        """Adopt ``sock`` and add this channel to ``map``.

        Raises:
            ValueError: ``sock`` is closed.
        """
        _check_open(sock)
        self.socket = sock
        self._fileno = sock.fileno()
        self.add_channel(map)

    def set_reuse_addr(self) -> None:
        """Set ``SO_REUSEADDR`` where the platform allows it."""
        try:
            sock = self.socket
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR,
                            sock.getsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR) | 1)
        except OSError:
            pass  # not supported here: binding may fail later, with its own error

    # -- predicates ---------------------------------------------------------------

    @managed_interest
    def readable(self) -> bool:
        """Whether the loop should watch for reads (always, by default)."""
        return True

    @managed_interest
    def writable(self) -> bool:
        """Whether the loop should watch for writes (always, by default)."""
        return True

    # -- socket operations ----------------------------------------------------------

    def listen(self, num: int) -> None:
        self.accepting = True
        self._interest_changed()  # a listener is never watched for writes
        if os.name == "nt" and num > 5:
            num = 5
        return self.socket.listen(num)

    def bind(self, addr: Any) -> None:
        self.addr = addr
        return self.socket.bind(addr)

    def connect(self, address: Any) -> None:
        """Start a non-blocking connect; ``handle_connect()`` runs once done.

        Raises:
            OSError: the connect failed at once (e.g. ``ECONNREFUSED`` on a
                local address).
        """
        self.connected = False
        self.connecting = True
        self._interest_changed()
        err = self.socket.connect_ex(address)
        if err in (EINPROGRESS, EALREADY, EWOULDBLOCK) or (err == EINVAL and os.name == "nt"):
            self.addr = address
            return
        if err in (0, EISCONN):
            self.addr = address
            self.handle_connect_event()
        else:
            raise OSError(err, errorcode.get(err, strerror(err)))

    def accept(self) -> Optional[Tuple[socket.socket, Any]]:
        """Accept a connection: ``(sock, addr)``, or ``None`` if there was none
        after all (another process took it, or the peer gave up)."""
        try:
            conn, addr = self.socket.accept()
        except TypeError:
            return None
        except OSError as why:
            if why.errno in (EWOULDBLOCK, ECONNABORTED, EAGAIN):
                return None
            if why.errno in _ACCEPT_RESOURCE_ERRNOS and self.accept_backoff is not None:
                self._back_off_accepting(why)
                return None
            raise
        if self._accept_failing:
            self._accept_failing = False
            logger.warning("%r accepts connections again", self)
        return conn, addr

    def _back_off_accepting(self, why: OSError) -> None:
        # Level-triggered pollers would report the pending connection again
        # at once: a busy loop.  Stop watching the listener for a while.
        if not self._accept_failing:
            self._accept_failing = True
            logger.warning("%r cannot accept: %s; pausing accepts, retrying every %gs",
                           self, why.strerror or why, self.accept_backoff)
        loop = _loop.get_loop(self._map)
        fd = self._fileno
        loop.pause_reading(fd)
        loop.call_later(self.accept_backoff, self._resume_accepting, fd)

    def _resume_accepting(self, fd: Any) -> None:
        loop = _loops_get(id(self._map))
        if loop is not None and self._fileno == fd:
            loop.resume_reading(fd)

    # -- flow control and timeouts ---------------------------------------------

    def pause_reading(self) -> None:
        """Stop reading from this channel (writes go on) until
        :meth:`resume_reading`, whatever ``readable()`` says."""
        _loop.get_loop(self._map).pause_reading(self._fileno)

    def resume_reading(self) -> None:
        """Undo :meth:`pause_reading`."""
        loop = _loops_get(id(self._map))
        if loop is not None:
            loop.resume_reading(self._fileno)

    def set_idle_timeout(self, seconds: Optional[float]) -> None:
        """Run :meth:`handle_timeout` once no event reached this channel for
        ``seconds`` (``None`` cancels).  The channel must be in its map.

        Raises:
            TypeError, ValueError: ``seconds`` is not a positive number.
        """
        self.idle_timeout = seconds
        _loop.get_loop(self._map).set_idle_timeout(self, seconds)

    def handle_timeout(self) -> None:
        """The idle timeout expired: close the channel (override to do more)."""
        logger.info("%r idle for %ss: closing it", self, self.idle_timeout)
        self.close()

    def send(self, data: Any) -> int:
        """Send what the socket takes now; the count sent (0 if it would block
        or the peer is gone, in which case ``handle_close()`` ran)."""
        if self._pc_tls is not None:  # TLS (issue 14): pollchat.tls
            return self._pc_tls.send(data)  # type: ignore[no-any-return]
        try:
            return self.socket.send(data)
        except OSError as why:
            if is_ssl_error(why):  # an SSLSocket of the program's: not an OS errno
                if legacy_send_error(why):
                    return 0  # SSLWantWrite: the caller retries the same bytes
                raise
            if why.errno == EWOULDBLOCK:
                return 0
            if why.errno in DISCONNECTED:
                self.handle_close()
                return 0
            raise

    def recv(self, buffer_size: int) -> bytes:
        """Receive up to ``buffer_size`` bytes; on end of stream or a
        disconnect, run ``handle_close()`` and return ``b''``."""
        if self._pc_tls is not None:  # TLS (issue 14): pollchat.tls
            return self._pc_tls.recv(buffer_size)  # type: ignore[no-any-return]
        sock = self.socket
        try:
            data = sock.recv(buffer_size)
        except OSError as why:
            if why.errno in DISCONNECTED and not is_ssl_error(why):
                self.handle_close()
                return b""
            raise
        if not data:
            self.handle_close()
            return b""
        if type(sock) is not _plain_socket:
            # An SSLSocket may hold the rest of a record the kernel cannot
            # report: have the loop come back for it (issue 14).
            legacy_pending(self, sock)
        return data

    def close(self) -> None:
        """Leave the map and close the socket.  Safe to call twice."""
        if self._pc_tls is not None:  # TLS (issue 14): close_notify, timers
            self._pc_tls.closing()
        self.connected = False
        self.accepting = False
        self.connecting = False
        self.del_channel()
        if self.socket is not None:
            try:
                self.socket.close()
            except OSError as why:
                if why.errno not in (ENOTCONN, EBADF):  # already gone: nothing to close
                    raise

    # -- logging (legacy: log_info prints, as programs and tests expect) -----------

    def log(self, message: Any) -> None:
        sys.stderr.write(f"log: {message}\n")

    def log_info(self, message: Any, type: str = "info") -> None:
        """Print ``type: message`` to stdout unless ``type`` is in
        ``ignore_log_types``.  Kept as CPython's (stdout, not logging):
        programs override it, and some parse its output."""
        if type not in self.ignore_log_types:
            sys.stdout.write(f"{type}: {message}\n")

    # -- events -----------------------------------------------------------------------

    def handle_read_event(self) -> None:
        if self._pc_tls is not None:  # TLS (issue 14): handshake, decryption
            self._pc_tls.handle_read_event()
            return
        if self.accepting:
            # A listener is readable when a connection is waiting.
            self.handle_accept()
        elif not self.connected:
            if self.connecting:
                self.handle_connect_event()
            self.handle_read()
        else:
            self.handle_read()

    def handle_connect_event(self) -> None:
        err = self.socket.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
        if err != 0:
            raise OSError(err, strerror(err))
        self.handle_connect()
        self.connected = True
        self.connecting = False
        self._interest_changed()

    def handle_write_event(self) -> None:
        if self._pc_tls is not None:  # TLS (issue 14): handshake, unsent records
            self._pc_tls.handle_write_event()
            return
        if self.accepting:
            # Listeners are not watched for writes; ignore a stray event.
            return
        if not self.connected and self.connecting:
            self.handle_connect_event()
        self.handle_write()

    def handle_expt_event(self) -> None:
        # Priority data, or (on select's exceptfds) an error: SO_ERROR tells.
        err = self.socket.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
        if err != 0:
            self.handle_close()
        else:
            self.handle_expt()

    def handle_error(self) -> None:
        """Log the exception being handled (a compact traceback) and close."""
        _, exc_type, value, info = compact_traceback()
        try:
            self_repr = repr(self)
        except Exception:
            self_repr = f"<__repr__(self) failed for object at {id(self):0x}>"
        self.log_info(f"uncaptured python exception, closing channel {self_repr} "
                      f"({exc_type}:{value} {info})", "error")
        self.handle_close()

    def handle_expt(self) -> None:
        self.log_info("unhandled incoming priority event", "warning")

    def handle_read(self) -> None:
        self.log_info("unhandled read event", "warning")

    def handle_write(self) -> None:
        self.log_info("unhandled write event", "warning")

    def handle_connect(self) -> None:
        self.log_info("unhandled connect event", "warning")

    def handle_accept(self) -> None:
        pair = self.accept()
        if pair is not None:
            self.handle_accepted(*pair)

    def handle_accepted(self, sock: socket.socket, addr: Any) -> None:
        sock.close()
        self.log_info("unhandled accepted event", "warning")

    def handle_close(self) -> None:
        self.log_info("unhandled close event", "warning")
        self.close()


def _refuse_delegation(self: dispatcher, name: str) -> Any:
    # Only reached for missing attributes.  Python 2 era asyncore passed them
    # on to the socket; CPython stopped in 3.6.  Say so, instead of a bare
    # AttributeError, when the socket has the attribute.
    sock = self.__dict__.get("socket")
    if sock is not None and not name.startswith("__") and hasattr(sock, name):
        raise AttributeError(
            f"{type(self).__name__!r} object has no attribute {name!r}; dispatchers "
            f"do not pass attribute access on to their socket: use self.socket.{name}")
    raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")


# On 3.10 and 3.11 a class with __getattr__ loses the interpreter's
# specialized attribute loads, making every attribute access on every channel
# (user handlers included) about 2x slower.  3.12+ is not affected; older
# versions refuse delegation with the plain AttributeError, as CPython did.
if sys.version_info >= (3, 12):
    dispatcher.__getattr__ = _refuse_delegation  # type: ignore[attr-defined]


class dispatcher_with_send(dispatcher):
    """A dispatcher that buffers what ``send()`` cannot send at once."""

    def __init__(self, sock: Optional[socket.socket] = None,
                 map: Optional[Dict[Any, Any]] = None) -> None:
        dispatcher.__init__(self, sock, map)
        self.out_buffer = b""

    def initiate_send(self) -> None:
        sent = dispatcher.send(self, self.out_buffer[:65536])
        self.out_buffer = self.out_buffer[sent:]
        if not self.out_buffer:
            self._interest_changed()

    def handle_write(self) -> None:
        self.initiate_send()

    @managed_interest
    def writable(self) -> bool:
        return (not self.connected) or len(self.out_buffer)

    def send(self, data: Any) -> None:
        if self.debug:
            self.log_info(f"sending {data!r}")
        self.out_buffer = self.out_buffer + data
        self._interest_changed()
        self.initiate_send()


def _check_open(sock: Any) -> None:
    if isinstance(sock, socket.socket) and sock.fileno() < 0:
        raise ValueError(f"cannot use {sock!r}: the socket is closed; "
                         "give the dispatcher an open socket")


def close_all(map: Optional[Dict[Any, Any]] = None, ignore_all: bool = False) -> None:
    """Close every channel in ``map`` (default: the default map), then clear it.

    Errors from ``close()`` propagate unless ``ignore_all`` (``EBADF`` is
    always ignored: the channel is gone either way).
    """
    if map is None:
        map = _loop.get_socket_map()
    for channel in list(map.values()):
        try:
            channel.close()
        except OSError as exc:
            if exc.errno != EBADF and not ignore_all:
                raise
        except REraised:
            raise
        except Exception:
            if not ignore_all:
                raise
    map.clear()
    loop = _loops_get(id(map))
    if loop is not None:
        loop.reconcile()


if os.name == "posix":
    class file_wrapper:
        """Make an fd look enough like a socket for a dispatcher.

        The fd is duplicated: the caller keeps (and closes) its own.
        """

        def __init__(self, fd: int) -> None:
            self.fd = os.dup(fd)

        def __del__(self) -> None:
            if self.fd >= 0:
                warnings.warn(f"unclosed file {self!r}", ResourceWarning, stacklevel=2, source=self)
            self.close()

        def recv(self, *args: Any) -> bytes:
            return os.read(self.fd, *args)

        def send(self, *args: Any) -> int:
            return os.write(self.fd, *args)

        def getsockopt(self, level: int, optname: int, buflen: Optional[int] = None) -> int:
            if level == socket.SOL_SOCKET and optname == socket.SO_ERROR and not buflen:
                return 0  # a file has no pending socket error
            raise NotImplementedError("file_wrapper supports only getsockopt(SOL_SOCKET, "
                                      "SO_ERROR), which asyncore needs")

        read = recv
        write = send

        def close(self) -> None:
            if self.fd < 0:
                return
            fd, self.fd = self.fd, -1
            os.close(fd)

        def fileno(self) -> int:
            return self.fd

    class file_dispatcher(dispatcher):
        """A dispatcher over a file descriptor (a pipe, a tty...)."""

        def __init__(self, fd: Any, map: Optional[Dict[Any, Any]] = None) -> None:
            dispatcher.__init__(self, None, map)
            self.connected = True
            try:
                fd = fd.fileno()
            except AttributeError:
                pass
            self.set_file(fd)
            os.set_blocking(fd, False)

        def set_file(self, fd: int) -> None:
            self.socket = file_wrapper(fd)
            self._fileno = self.socket.fileno()
            self.add_channel()
