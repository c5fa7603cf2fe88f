"""Accepting through a queue: PROXY protocol headers and shared listeners.

A listener accepts through an :class:`AcceptQueue` when its
``proxy_protocol`` attribute is set, and every listener does in a worker of
``pollchat run --workers`` (:mod:`pollchat.workers`).  The queue sits between
the kernel and the program's ``handle_accept()``/``accept()``, which are
unchanged:

* **When the listener is readable** (:meth:`AcceptQueue.listener_ready`), the
  queue accepts one connection itself.  Only if it got one does it call the
  program's ``handle_accept()``, whose ``accept()`` returns that connection.
  A listener shared by several workers wakes them all; the ones that lose
  the race see nothing, so even a program that writes
  ``conn, addr = self.accept()`` never gets ``None`` back.
* **With the PROXY protocol**, an accepted connection first has its header
  read.  Usually it has arrived with the connection and is read at once;
  otherwise a :class:`HeaderReader` (an internal channel in the listener's
  map) waits for the rest, without blocking the loop, for at most the
  listener's ``proxy_protocol_timeout`` seconds.  When it completes the
  connection joins the queue and the listener is offered it again
  (``handle_accept()`` is called).  ``accept()`` only ever returns
  connections whose header is complete, as ``(ProxiedSocket, client
  address)``; the socket's ``getpeername()`` is the client's address too, so
  ``dispatcher(sock).addr`` is right.  A malformed or missing header, a
  timeout, or a peer that leaves first closes that connection, with one log
  line on the ``pollchat.proxy`` logger.

The header is read with ``MSG_PEEK`` and only its own bytes are consumed:
data the client sent right behind it stays in the socket for the program.
"""

from __future__ import annotations

import collections
import logging
import socket
from typing import Any, Deque, Optional, Set, Tuple, cast

from . import loop as _loop
from .channel import dispatcher
from .dispatch import REraised, call_handler
from .loop import managed_interest
from .proxy import HeaderParser, ProxyHeader, ProxyProtocolError
from .timers import TimerHandle

__all__ = ["AcceptQueue", "HeaderReader", "ProxiedSocket", "read_header"]

logger = logging.getLogger("pollchat.proxy")

#: Seconds between looks at a listener that has connections queued but
#: cannot take them now (its ``readable()`` is false, or its
#: ``handle_accept()`` took none): readiness that no kernel event will report.
REOFFER_INTERVAL = 0.05

Pair = Tuple[socket.socket, Any]


class _PeerLeft(Exception):
    """The peer closed the connection (end of stream) before its header ended."""


class ProxiedSocket(socket.socket):
    """An accepted socket behind a PROXY protocol balancer.

    ``getpeername()`` returns the client's address from the header (the
    connection's own peer is the balancer: :meth:`proxy_peername`).  For a
    header without an address (v2 ``LOCAL``, v1 ``UNKNOWN``) both are the
    connection's own peer.  ``family`` is the family of the connection to the
    balancer, which may differ from the client's (an IPv6 client relayed
    over IPv4).
    """

    __slots__ = ("proxy_header", "_client_address")

    def __init__(self, family: int = -1, type: int = -1, proto: int = -1,
                 fileno: Optional[int] = None) -> None:
        super().__init__(family, type, proto, fileno)
        #: The :class:`~pollchat.proxy.ProxyHeader` the connection started with.
        self.proxy_header: Optional[ProxyHeader] = None
        self._client_address: Any = None

    def getpeername(self) -> Any:
        """The client's address, as the PROXY header gave it."""
        if self._client_address is not None:
            return self._client_address
        return super().getpeername()

    def proxy_peername(self) -> Any:
        """The address of the peer actually connected: the balancer."""
        return super().getpeername()

    def dup(self) -> ProxiedSocket:
        copy = super().dup()
        assert isinstance(copy, ProxiedSocket)
        copy.proxy_header = self.proxy_header
        copy._client_address = self._client_address
        return copy


def _proxied(sock: socket.socket, peer: Any, header: ProxyHeader) -> Pair:
    """Wrap ``sock`` (detached: it is unusable afterwards) in a
    :class:`ProxiedSocket`; return it with the client's address: the
    header's, else ``peer`` (what ``accept()`` said).  Never raises: the
    connection may be reset already (HAProxy resets its health checks right
    after their header), and that is the program's to find out."""
    family, kind, proto = sock.family, sock.type, sock.proto
    wrapped = ProxiedSocket(family, kind, proto, fileno=sock.detach())
    wrapped.proxy_header = header
    wrapped._client_address = header.source
    # The mode accept() gives a new socket: the default timeout (blocking
    # unless socket.setdefaulttimeout() says otherwise).
    wrapped.settimeout(socket.getdefaulttimeout())
    return wrapped, peer if header.source is None else header.source


def read_header(sock: socket.socket, parser: HeaderParser) -> Optional[ProxyHeader]:
    """Read what has arrived of a PROXY header from non-blocking ``sock``.

    Peeks, feeds ``parser``, and consumes exactly the header's bytes, so the
    connection's own data stays in the socket.  Returns the header once
    complete, ``None`` if more is needed (nothing more to read now).

    Raises:
        ProxyProtocolError: the bytes are not a valid header.
        _PeerLeft: end of stream before the header ended.
        OSError: the connection failed (reset...).
    """
    while True:
        try:
            peeked = sock.recv(parser.wanted, socket.MSG_PEEK)
        except (BlockingIOError, InterruptedError):
            return None
        if not peeked:
            raise _PeerLeft()
        used = parser.feed(peeked)
        _consume(sock, used)
        if parser.header is not None:
            return parser.header


def _consume(sock: socket.socket, count: int) -> None:
    """Read and drop ``count`` bytes that a peek has shown are there."""
    while count > 0:
        got = sock.recv(count)
        if not got:
            raise _PeerLeft()
        count -= len(got)


def _describe(address: Any) -> str:
    if isinstance(address, tuple) and len(address) >= 2:
        host, port = address[:2]
        return f"[{host}]:{port}" if ":" in str(host) else f"{host}:{port}"
    return repr(address)


class AcceptQueue:
    """The connections a listener's ``accept()`` may return, and the
    connections still sending their PROXY header.

    Made by the listener on first use (``pollchat.channel._accept_queue_of``);
    lives as long as the listener.  Runs in the listener's loop only.
    """

    def __init__(self, listener: dispatcher) -> None:
        self.listener = listener
        self.ready: Deque[Pair] = collections.deque()
        self.pending: Set[HeaderReader] = set()
        #: Set by a graceful stop (pollchat.workers) before it closes the
        #: listener: connections whose header completes afterwards are still
        #: handed to the program rather than dropped.
        self.draining = False
        self._reoffer: Optional[TimerHandle] = None

    # -- the listener's side ---------------------------------------------------

    def accept(self) -> Optional[Pair]:
        """The listener's ``accept()``: a queued connection first, else one
        from the socket (``None`` if there is none, or if its PROXY header
        is still on its way)."""
        if self.ready:
            return self.ready.popleft()
        return self._take_one()

    def listener_ready(self) -> None:
        """The listener's socket is readable: accept one connection, and
        offer what is ready to the program's ``handle_accept()``."""
        pair = self._take_one()
        if pair is not None:
            self.ready.append(pair)
        self._offer()

    def _take_one(self) -> Optional[Pair]:
        pair = self.listener._accept_socket()
        if pair is None or not self.listener.proxy_protocol:
            return pair
        return self._start_header(*pair)

    def _offer(self) -> None:
        """Call ``handle_accept()`` while connections are queued and it takes
        them.  What it cannot take now is offered again a little later, as a
        level-triggered poller would report a listener until it accepts."""
        listener = self.listener
        while self.ready:
            if not (listener.accepting or self.draining):
                self._drop_ready("the listener was closed")
                return
            before = len(self.ready)
            if self._listener_readable():
                call_handler(listener, "handle_accept")
            if self.ready and len(self.ready) >= before:
                self._schedule_offer()
                return

    def _listener_readable(self) -> bool:
        if not self.listener.accepting:  # closed by a graceful stop: still deliver
            return True
        try:
            return bool(self.listener.readable())
        except REraised:
            raise
        except Exception:
            logger.exception("readable() of %r raised; offering the connection anyway",
                             self.listener)
            return True

    def _schedule_offer(self) -> None:
        if self._reoffer is not None and not self._reoffer.cancelled:
            return
        loop = _loop.get_loop(self.listener._map)
        self._reoffer = loop.call_later(REOFFER_INTERVAL, self._offer_again)

    def _offer_again(self) -> None:
        self._reoffer = None
        self._offer()

    def _drop_ready(self, why: str) -> None:
        while self.ready:
            sock, address = self.ready.popleft()
            logger.debug("dropping the connection from %s: %s", _describe(address), why)
            sock.close()

    # -- PROXY headers ---------------------------------------------------------

    def _start_header(self, sock: socket.socket, address: Any) -> Optional[Pair]:
        """Read the header of a just-accepted connection: the proxied pair if
        it is all there, else ``None`` (a :class:`HeaderReader` waits for it,
        or the connection was refused and closed)."""
        # Whatever goes wrong here concerns this connection only: an OSError
        # escaping to the loop would close the listener (a "disconnect").
        parser = HeaderParser()
        try:
            sock.setblocking(False)
            header = read_header(sock, parser)
            if header is not None:
                return _proxied(sock, address, header)
            self.pending.add(HeaderReader(self, sock, address, parser))
        except (ProxyProtocolError, _PeerLeft, OSError) as exc:
            self.refuse(sock, address, exc, parser)
        return None

    def header_done(self, reader: HeaderReader, pair: Pair) -> None:
        """A reader completed: queue the connection, offer it."""
        self.pending.discard(reader)
        self.ready.append(pair)
        self._offer()

    def refuse(self, sock: socket.socket, address: Any, why: BaseException,
               parser: HeaderParser) -> None:
        """Close a connection whose header failed, with one log line."""
        level = logging.WARNING
        if isinstance(why, _PeerLeft):
            if not parser.received:
                # Nothing at all: a plain TCP health check, or a port scan.
                level = logging.INFO
                reason = "it closed without sending a PROXY header"
            else:
                reason = f"it closed after {parser.received} bytes of its PROXY header"
        elif isinstance(why, ProxyProtocolError):
            reason = str(why)
        elif isinstance(why, OSError):
            reason = f"{why.strerror or why} while reading its PROXY header"
        else:
            reason = str(why)
        logger.log(level, "closing the connection from %s to %r: %s", _describe(address),
                   self.listener, reason)
        try:
            sock.close()
        except OSError:
            pass  # it failed already; closing only releases the fd


class HeaderReader(dispatcher):
    """A connection whose PROXY header has not all arrived: an internal
    channel in the listener's map that reads it, then hands the connection
    to the listener's queue (leaving the map without closing the socket).
    Closes the connection after ``proxy_protocol_timeout`` seconds."""

    def __init__(self, queue: AcceptQueue, sock: socket.socket, address: Any,
                 parser: HeaderParser) -> None:
        listener = queue.listener
        super().__init__(sock, map=listener._map)
        self.queue = queue
        self.peer = address
        self.parser = parser
        loop = _loop.get_loop(listener._map)
        timeout = listener.proxy_protocol_timeout
        self.timer: Optional[TimerHandle] = loop.call_later(timeout, self._expire, timeout)

    @managed_interest
    def readable(self) -> bool:
        return True

    @managed_interest
    def writable(self) -> bool:
        return False

    def handle_read(self) -> None:
        sock = cast(socket.socket, self.socket)  # set: the reader is open
        try:
            header = read_header(sock, self.parser)
        except (ProxyProtocolError, _PeerLeft, OSError) as exc:
            self._fail(exc)
            return
        if header is None:
            return
        self._stop_timer()
        self.del_channel()  # leave the map; the socket now belongs to the program
        self.socket = None
        self.connected = False
        self.queue.header_done(self, _proxied(sock, self.peer, header))

    def handle_close(self) -> None:
        self._fail(_PeerLeft())

    def handle_expt(self) -> None:
        # Urgent data would be reported again and again: refuse the connection.
        self._fail(ProxyProtocolError("urgent (out-of-band) data before the PROXY header"))

    def handle_error(self) -> None:
        logger.exception("error while reading the PROXY header of %s; closing it",
                         _describe(self.peer))
        self._fail(None)

    def _expire(self, timeout: float) -> None:
        self.timer = None
        if self.socket is not None:
            self._fail(ProxyProtocolError(
                f"no complete PROXY header within {timeout:g} s "
                f"({self.parser.received} bytes received)"))

    def _fail(self, why: Optional[BaseException]) -> None:
        self._stop_timer()
        self.queue.pending.discard(self)
        sock = self.socket
        if sock is None:
            return
        self.del_channel()
        self.socket = None
        self.connected = False
        if why is None:
            sock.close()
        else:
            self.queue.refuse(sock, self.peer, why, self.parser)

    def _stop_timer(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None

    def close(self) -> None:
        """Closed from outside (``close_all()``, a loop error): drop the
        connection without a header."""
        self._stop_timer()
        self.queue.pending.discard(self)
        super().close()
