"""Channels: asyncore's ``dispatcher`` (``dispatcher_with_send``: :mod:`pollchat.sendbuffer`).

The classes behave as CPython 3.11's.  What differs is internal: a channel
tells its loop when what its ``readable()``/``writable()`` read may have
changed, so that the loop need not ask every channel on every pass.  The
state those predicates read is *observed where it is stored*: ``connected``,
``accepting``, ``connecting`` (and ``out_buffer``, ``producer_fifo`` on the
subclasses) are properties whose setters tell the loop, so legacy code that
assigns them directly works unchanged.  The library's own code reads and
writes the ``_pc_*`` slots behind them (a plain attribute load on the hot
path), and reports changes itself.

Module globals are looked up at run time where CPython's asyncore looked them
up (``socket`` in :meth:`dispatcher.create_socket`, the errno names in
``send()``/``recv()``...): :mod:`pollchat.asyncore` forwards a rebinding of
its own globals here, so ``asyncore.socket = fake_socket_module`` works as it
does with CPython's module.
"""

from __future__ import annotations

import logging
import os
import socket
import sys
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

from . import maps
from .dispatch import DISCONNECTED, REraised, compact_traceback
from .dispatch import strerror as _strerror
from .listening import back_off_accepting, refuse_unwatchable
from .observed import managed_predicate, observed, observed_slot, overridable, slot_of
from .tls import TLSChannelMixin, is_ssl_error, legacy_pending, legacy_send_error

__all__ = ["close_all", "dispatcher", "managed_predicate", "observed", "overridable"]

logger = logging.getLogger("pollchat")

# The real socket class, for checks that must not follow a rebinding of the
# module global `socket` (a test's fake socket module has no such class), and
# to tell a plain socket from a program's own SSLSocket on the read path.
_socket_class = socket.socket

# repr() shows the legacy module names, as programs written for asyncore
# print and parse them: '<asyncore.dispatcher at 0x...>'.
_LEGACY_MODULES = {"pollchat.channel": "asyncore", "pollchat.asyncore": "asyncore",
                   "pollchat.files": "asyncore", "pollchat.sendbuffer": "asyncore",
                   "pollchat.chat": "asynchat", "pollchat.asynchat": "asynchat"}

# accept() failures that mean "out of resources for now", not "this listener
# is broken": back off instead of closing the listener (asyncio and gevent do
# the same).  CPython's asyncore sent them to handle_error(), which closed it.
_ACCEPT_RESOURCE_ERRNOS = frozenset({EMFILE, ENFILE, ENOBUFS, ENOMEM})




# In a worker process of ``pollchat run --workers`` / ``pollchat.workers.serve``
# this is the worker's hooks object (pollchat._sharing.WorkerHooks):
# ``bind(dispatcher, addr)`` binds stream sockets through the master
# (listeners shared by every worker), and every listener accepts through an
# accept queue (a shared listener wakes every worker; the losers must not see
# a spurious accept).  ``None`` otherwise.
_worker: Optional[Any] = None


def _accept_queue_of(listener: dispatcher) -> Any:
    """The listener's accept queue (pollchat.accepting), made on first use."""
    queue = listener._accept_queue
    if queue is None:
        from .accepting import AcceptQueue

        queue = listener._accept_queue = AcceptQueue(listener)
    return queue


class dispatcher(TLSChannelMixin):
    """A thin wrapper around a non-blocking socket, driven by the loop.

    Subclass it and override the ``handle_*`` methods.  See CPython's asyncore
    documentation; everything there holds here.  TLS: :meth:`start_tls`
    (:mod:`pollchat.tls`).
    """

    debug = False
    closing = False
    addr: Any = None
    socket: Any  # the socket (or a socket-like object, e.g. file_wrapper); None before set
    ignore_log_types = frozenset({"warning"})
    #: Seconds without any event after which ``handle_timeout()`` runs
    #: (``None``: never).  Read when the channel joins a loop's map; change
    #: it later with :meth:`set_idle_timeout`.
    idle_timeout: Optional[float] = None
    #: Seconds a listener stops accepting after ``accept()`` failed for lack
    #: of resources (``EMFILE``, ``ENFILE``, ``ENOBUFS``, ``ENOMEM``).  ``None``
    #: restores CPython's behaviour: the error goes to ``handle_error()``.
    accept_backoff: Optional[float] = 0.25
    #: Expect a PROXY protocol (v1 or v2) header on every connection this
    #: listener accepts: ``accept()`` then returns the client's address from
    #: the header, and a socket whose ``getpeername()`` says the same
    #: (:mod:`pollchat.accepting`).
    proxy_protocol = False
    #: Seconds a connection has to send its whole PROXY header.
    proxy_protocol_timeout: float = 10.0
    _accept_queue: Optional[Any] = None

    connected = observed("connected", "Whether the socket is connected.")
    accepting = observed("accepting", "Whether this is a listening socket.")
    connecting = observed("connecting", "Whether a connect() is in progress.")
    # Class defaults of the observed slots and of other per-instance state,
    # set on an instance only when it differs (less memory per connection).
    _pc_connected = False
    _pc_accepting = False
    _pc_connecting = False
    _pc_reading_paused = False  # pause_reading(): READ withheld from the loop
    _pc_extra_interest = 0  # events a transport (TLS) needs watched
    _pc_unobserved = False  # state the library cannot observe: poll every pass
    _pc_unobserved_class = False
    _accept_failing = False
    _refused_fds = 0
    _refused_logged = 0.0
    _fileno: Any = None

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        for name, value in list(cls.__dict__.items()):
            slot = observed_slot(cls, name)
            if slot is None or slot_of(value) is not None:
                continue  # not observed above, or the library's own property
            if hasattr(value, "__get__"):
                # A descriptor of the program's own: what it stores cannot be
                # observed, so the loop asks this class's channels every pass.
                cls._pc_unobserved_class = True
            else:
                # A plain class attribute (``connected = False``) shadowing
                # the observed one: make it that class's default instead.
                setattr(cls, slot, value)
                delattr(cls, name)

    def __init__(self, sock: Any = None, map: Optional[Dict[Any, Any]] = None) -> None:
        self._map = maps.get_socket_map() if map is None else map
        self._fileno = None
        # Read on every event: copied here as instance values, because
        # CPython 3.11 loads those much faster than class defaults (8 bytes
        # each).  A subclass may have changed the defaults (__init_subclass__).
        cls = type(self)
        self._pc_tls = None
        self._pc_accepting = cls._pc_accepting
        self._pc_connected = cls._pc_connected
        self._pc_connecting = cls._pc_connecting
        if sock:
            _check_open(sock)
            # Non-blocking before anything else can touch it.
            sock.setblocking(False)
            self.set_socket(sock, map)
            self._pc_connected = True
            try:
                self.addr = sock.getpeername()
            except OSError as err:
                if err.errno in (ENOTCONN, EINVAL):
                    # A socket accepted and reset before we got to it (bpo-10340),
                    # or one that was never connected.
                    self._pc_connected = False
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
        loop = maps.loop_for_map(map)
        if loop is not None:
            loop.channel_added(self._fileno, self)

    def del_channel(self, map: Optional[Dict[Any, Any]] = None) -> None:
        """Take this channel out of ``map`` (default: its own)."""
        fd = self._fileno
        if map is None:
            map = self._map
        # Only our own entry: after an fd was closed behind our back and
        # reused, map[fd] belongs to another channel.
        if map.get(fd) is self:
            del map[fd]
            loop = maps.loop_for_map(map)
            if loop is not None:
                loop.channel_removed(fd, self)
        self._fileno = None

    def _interest_changed(self) -> None:
        """Tell the loop that ``readable()``/``writable()`` may now answer
        differently.  Called by the observed attributes and by library
        methods after changing the state those predicates read; O(1)."""
        loop = maps.loop_for_map(self._map)
        if loop is not None and self._fileno is not None:
            loop.interest_changed(self._fileno)

    # -- socket set-up ------------------------------------------------------------

    def create_socket(self, family: int = socket.AF_INET,
                      type: int = socket.SOCK_STREAM) -> None:
        """Create a non-blocking socket (with the module global ``socket``,
        as CPython does) and add this channel to its map."""
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

    @managed_predicate
    def readable(self) -> bool:
        """Whether the loop should watch for reads (always, by default)."""
        return True

    @managed_predicate
    def writable(self) -> bool:
        """Whether the loop should watch for writes (always, by default)."""
        return True

    # -- socket operations ----------------------------------------------------------

    def listen(self, num: int) -> Any:
        self._pc_accepting = True
        self._interest_changed()  # a listener is never watched for writes
        if os.name == "nt" and num > 5:
            num = 5
        return self.socket.listen(num)

    def bind(self, addr: Any) -> Any:
        self.addr = addr
        if _worker is not None:  # a worker's listeners are shared by every worker
            return _worker.bind(self, addr)
        return self.socket.bind(addr)

    def connect(self, address: Any) -> None:
        """Start a non-blocking connect; ``handle_connect()`` runs once done.

        Raises:
            OSError: the connect failed at once (e.g. ``ECONNREFUSED`` on a
                local address).
        """
        self._pc_connected = False
        self._pc_connecting = True
        self._interest_changed()
        err = self.socket.connect_ex(address)
        if err in (EINPROGRESS, EALREADY, EWOULDBLOCK) or (err == EINVAL and os.name == "nt"):
            self.addr = address
            return
        if err in (0, EISCONN):
            self.addr = address
            self.handle_connect_event()
        else:
            raise OSError(err, errorcode[err] if err in errorcode else _strerror(err))

    def accept(self) -> Optional[Tuple[Any, Any]]:
        """Accept a connection: ``(sock, addr)``, or ``None`` if there was none
        after all (another process took it, or the peer gave up), or if it
        was refused (its fd is too large for the loop's select backend)."""
        if self.proxy_protocol or _worker is not None:
            return _accept_queue_of(self).accept()  # type: ignore[no-any-return]
        return self._accept_socket()

    def _accept_socket(self) -> Optional[Tuple[Any, Any]]:
        """``accept()`` on the socket itself (what :meth:`accept` is for a
        listener without an accept queue)."""
        try:
            conn, addr = self.socket.accept()
        except TypeError:
            return None
        except OSError as why:
            if why.errno in (EWOULDBLOCK, ECONNABORTED, EAGAIN):
                return None
            if why.errno in _ACCEPT_RESOURCE_ERRNOS and self.accept_backoff is not None:
                back_off_accepting(self, why)
                return None
            raise
        if self._accept_failing:
            self._accept_failing = False
            logger.warning("%r accepts connections again", self)
        loop = maps.loop_for_map(self._map)
        if loop is not None and loop.max_fd is not None and conn.fileno() > loop.max_fd:
            refuse_unwatchable(self, conn, addr, loop.max_fd)
            return None
        return conn, addr

    # -- flow control and timeouts ---------------------------------------------

    @property
    def reading_paused(self) -> bool:
        """Whether reading is paused (:meth:`pause_reading`)."""
        return self._pc_reading_paused

    def pause_reading(self) -> None:
        """Stop reading from this channel (writes go on) until
        :meth:`resume_reading`, whatever ``readable()`` says.  O(1)."""
        if not self._pc_reading_paused:
            self._pc_reading_paused = True
            self._interest_changed()

    def resume_reading(self) -> None:
        """Undo :meth:`pause_reading`.  O(1); a no-op if not paused."""
        if self._pc_reading_paused:
            self._pc_reading_paused = False
            self._interest_changed()

    def set_idle_timeout(self, seconds: Optional[float]) -> None:
        """Run :meth:`handle_timeout` once no event reached this channel for
        ``seconds`` (``None`` cancels).  Takes effect when the channel is in a
        running loop's map (at once if it already is).

        Raises:
            TypeError, ValueError: ``seconds`` is not a positive number.
        """
        loop = maps.loop_for_map(self._map)
        if loop is not None and self._map.get(self._fileno) is self:
            loop.set_idle_timeout(self, seconds)
        else:
            from .idle import check_timeout
            check_timeout(seconds)
        self.idle_timeout = seconds

    def handle_timeout(self) -> None:
        """The idle timeout expired: close the channel (override to do more)."""
        logger.info("%r idle for %ss: closing it", self, self.idle_timeout)
        self.close()

    def send(self, data: Any) -> int:
        """Send what the socket takes now; the count sent (0 if it would block
        or the peer is gone, in which case ``handle_close()`` ran)."""
        if self._pc_tls is not None:
            return self._pc_tls.send(data)  # type: ignore[no-any-return]
        try:
            return self.socket.send(data)  # type: ignore[no-any-return]
        except OSError as why:
            if is_ssl_error(why):  # a program's own SSLSocket: not an OS errno
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
        if self._pc_tls is not None:
            return self._pc_tls.recv(buffer_size)  # type: ignore[no-any-return]
        sock = self.socket
        try:
            data: bytes = sock.recv(buffer_size)
        except OSError as why:
            if why.errno in DISCONNECTED and not is_ssl_error(why):
                self.handle_close()
                return b""
            raise
        if not data:
            self.handle_close()
            return b""
        if type(sock) is not _socket_class:
            # A program's own SSLSocket may hold the rest of a record that
            # the kernel cannot report: have the loop come back for it.
            legacy_pending(self, sock)
        return data

    def close(self) -> None:
        """Leave the map and close the socket.  Safe to call twice."""
        if self._pc_tls is not None:
            self._pc_tls.closing()  # close_notify if it can go now, timers
        self._pc_connected = False
        self._pc_accepting = False
        self._pc_connecting = False
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
        if self._pc_tls is not None:
            self._pc_tls.handle_read_event()  # the handshake, decrypting
            return
        if self._pc_accepting:
            # A listener is readable when a connection is waiting.
            if self.proxy_protocol or _worker is not None:
                _accept_queue_of(self).listener_ready()
            else:
                self.handle_accept()
        elif not self._pc_connected:
            if self._pc_connecting:
                self.handle_connect_event()
            self.handle_read()
        else:
            self.handle_read()

    def handle_connect_event(self) -> None:
        err = self.socket.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
        if err != 0:
            raise OSError(err, _strerror(err))
        self.handle_connect()
        self._pc_connected = True
        self._pc_connecting = False
        self._interest_changed()

    def handle_write_event(self) -> None:
        if self._pc_tls is not None:
            self._pc_tls.handle_write_event()  # the handshake, unsent records
            return
        if self._pc_accepting:
            # Listeners are not watched for writes; ignore a stray event.
            return
        if not self._pc_connected and self._pc_connecting:
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

    def handle_accepted(self, sock: Any, addr: Any) -> None:
        sock.close()
        self.log_info("unhandled accepted event", "warning")

    def handle_close(self) -> None:
        self.log_info("unhandled close event", "warning")
        self.close()


def _check_open(sock: Any) -> None:
    if isinstance(sock, _socket_class) and sock.fileno() < 0:
        raise ValueError(f"cannot use {sock!r}: the socket is closed; "
                         "give the dispatcher an open socket")


def close_all(map: Optional[Dict[Any, Any]] = None, ignore_all: bool = False) -> None:
    """Close every channel in ``map`` (default: the default map), then clear it.

    Errors from ``close()`` propagate unless ``ignore_all`` (``EBADF`` is
    always ignored: the channel is gone either way).
    """
    if map is None:
        map = maps.get_socket_map()
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
    loop = maps.loop_for_map(map)
    if loop is not None:
        loop.reconcile()

