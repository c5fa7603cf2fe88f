"""The TLS transport of one channel: events, interest and timers around a
:class:`~pollchat.tlsengine.TLSEngine`.

A channel with TLS on has ``channel._pc_tls`` set to its :class:`TLSTransport`;
``dispatcher.recv``, ``send``, ``handle_read_event``, ``handle_write_event``
and ``close`` then hand over to it.  The transport:

* keeps handshake and shutdown traffic away from the program's handlers:
  ``handle_read()`` runs only when decrypted bytes (or the end of the
  stream) are there, ``handle_write()`` only once the handshake completed
  and the encrypted bytes of earlier sends are all in the kernel;
* tells the loop what it needs besides the program's ``readable()`` and
  ``writable()`` through ``channel._pc_extra_interest``/``_pc_withheld_interest``
  (READ while the handshake waits for the peer, WRITE while encrypted bytes
  are unsent; the program's WRITE withheld during the handshake, so that a
  channel that wants to write does not spin while the peer thinks);
* asks the loop for a read event on its next pass (``Loop.add_ready``)
  while decrypted bytes remain that the program did not read: the kernel
  cannot report them;
* runs the handshake timeout and the shutdown timeout.

Made by :func:`pollchat._tlsswitch.start_tls`, imported only when a
program starts TLS, never by a plaintext program.
"""

from __future__ import annotations

import errno
import logging
import ssl
from typing import Any, Callable, Optional

from . import loop as _loop
from .backends import PRI, READ, WRITE
from .channel import dispatcher
from .dispatch import DISCONNECTED, REraised
from .tls import _peer_name, describe_error
from .tlsengine import (
    ESTABLISHED,
    FAILED,
    HANDSHAKING,
    SHUTTING_DOWN,
    UNWRAPPED,
    HandshakeEOFError,
    TLSEngine,
    TLSProtocolError,
)

__all__ = ["CLOSED", "WAIT_CONNECT", "WAIT_OUTPUT", "TLSTransport"]

logger = logging.getLogger("pollchat.tls")

# Transport states besides the engine's: TLS asked for on a client whose
# connect() has not completed yet; waiting for queued plaintext to be sent.
WAIT_CONNECT = "waiting for connect"
WAIT_OUTPUT = "waiting for output"
CLOSED = "closed"

class TLSTransport:
    """TLS on one channel (see the module docstring).  Made by ``start_tls``."""

    __slots__ = ("channel", "engine", "ssl_object", "server_side", "state",
                 "handshake_timeout", "shutdown_timeout", "_timer", "_unwrap_requested",
                 "_write_wants_read", "_leftover")

    def __init__(self, channel: Any, engine: TLSEngine, server_side: bool,
                 handshake_timeout: Optional[float], shutdown_timeout: Optional[float]) -> None:
        self.channel = channel
        self.engine = engine
        self.ssl_object = engine.ssl_object
        self.server_side = server_side
        self.state = HANDSHAKING
        self.handshake_timeout = handshake_timeout
        self.shutdown_timeout = shutdown_timeout
        self._timer: Any = None
        self._unwrap_requested = False
        self._write_wants_read = False  # encrypt() waits for a renegotiation
        self._leftover = b""  # plaintext after the peer's close_notify (unwrap)

    def active_ssl_object(self) -> Optional[ssl.SSLObject]:
        """The SSLObject while TLS carries the channel's data, else None."""
        if self.state in (HANDSHAKING, ESTABLISHED, SHUTTING_DOWN):
            return self.ssl_object
        return None

    def __repr__(self) -> str:
        return f"<TLSTransport {self.state} {_peer_name(self.channel)}>"

    # -- starting -----------------------------------------------------------------------

    def _begin(self) -> None:
        """Take over the channel's I/O and start the handshake (or wait for
        the connect to complete first)."""
        channel = self.channel
        if channel._fileno is None:
            return  # closed meanwhile
        channel._pc_tls_pending = None
        channel._pc_tls = self
        self._timer = self._call_later(self.handshake_timeout, self._handshake_timed_out)
        if channel.connected:
            self.state = HANDSHAKING
            self._handshake()
        else:
            self.state = WAIT_CONNECT
            self._update_interest()

    def _connect_event(self) -> None:
        """The socket is readable or writable while connecting: as
        ``dispatcher`` does, let ``handle_connect_event()`` find out whether
        the connect worked (it raises if not), then start the handshake."""
        channel = self.channel
        if channel.connecting and not channel.connected:
            channel.handle_connect_event()
        if channel.connected and self.state is WAIT_CONNECT and channel._pc_tls is self:
            self.state = HANDSHAKING
            self._handshake()

    # -- events from the loop -----------------------------------------------------------

    def handle_read_event(self) -> None:
        state = self.state
        if state is ESTABLISHED:
            engine = self.engine
            if not engine.buffered and not engine.at_eof and not self._pull():
                return
            self._deliver()
        elif state is HANDSHAKING:
            if self._receive():
                self._handshake()
        elif state is WAIT_CONNECT:
            self._connect_event()
        elif state is SHUTTING_DOWN:
            if self._receive():
                self._shutdown_step()
        elif state is UNWRAPPED:
            self._deliver_leftover()

    def handle_write_event(self) -> None:
        state = self.state
        if state is WAIT_CONNECT:
            self._connect_event()
            return
        channel = self.channel
        only_ours = channel._pc_extra_interest & WRITE
        if self.engine.wants_flush and not self._flush():
            return
        if state is ESTABLISHED:
            # WRITE may have been asked for our unsent bytes only: then the
            # program's handle_write() runs only if it wants to write.
            if not only_ours or channel.writable():
                channel.handle_write()
        elif state is UNWRAPPED:
            self._plaintext(dispatcher.handle_write_event)
            self._maybe_detach()

    # -- I/O on behalf of the program -------------------------------------------------

    def recv(self, size: int) -> bytes:
        """``dispatcher.recv()`` with TLS on: decrypted bytes; ``b""`` (after
        ``handle_close()``) at the end of the stream.

        Raises:
            BlockingIOError: nothing decrypted is available yet (as a
                non-blocking socket would).
        """
        state = self.state
        engine = self.engine
        if state is ESTABLISHED:
            if not engine.buffered and not engine.at_eof and not self._pull():
                return b""  # the connection was lost: handle_close() ran
            data = engine.read(size)
            if data:
                return data
            if engine.at_eof and self.channel._pc_tls is self:
                self.channel.handle_close()
                return b""
        elif state is UNWRAPPED:
            return self._read_leftover(size)
        elif state is CLOSED:
            return b""
        raise BlockingIOError(errno.EAGAIN, "no decrypted data available yet")

    def send(self, data: Any) -> int:
        """``dispatcher.send()`` with TLS on: how many bytes of ``data`` were
        taken (encrypted); 0 while the handshake or shutdown runs, and while
        encrypted bytes of earlier sends are not all in the kernel."""
        state = self.state
        if state is ESTABLISHED:
            engine = self.engine
            if engine.wants_flush and not self._flush() or not len(data):
                return 0
            try:
                taken = engine.encrypt(data)
            except TLSProtocolError as exc:
                self._protocol_error(exc)
                return 0
            if not taken:
                self._write_wants_read = True
                self._update_interest()
                return 0
            self._write_wants_read = False
            self._flush()
            return taken if self.state is ESTABLISHED else 0
        if state is UNWRAPPED:
            # Our close_notify goes first, then the plaintext.
            if self.engine.wants_flush and not self._flush():
                return 0
            sent: int = self._plaintext(dispatcher.send, data)
            self._maybe_detach()
            return sent
        return 0

    def closing(self) -> None:
        """``dispatcher.close()`` is running: send ``close_notify`` if TLS is
        up (one try: ``close()`` does not wait), stop the timers, and hand
        the channel back to the plaintext code, which closes the socket."""
        state = self.state
        self.state = CLOSED
        self._cancel_timer()
        engine = self.engine
        if state is ESTABLISHED:
            try:
                engine.shutdown()
            except TLSProtocolError:
                pass  # the peer broke TLS: no close_notify for it
        if state is not CLOSED and engine.wants_flush:
            try:
                engine.flush()
            except OSError:
                pass  # the peer is gone: nothing more can reach it
        self._detach()

    # -- the handshake ------------------------------------------------------------------

    def _handshake(self) -> None:
        engine = self.engine
        try:
            done = engine.handshake()
        except (ssl.SSLError, HandshakeEOFError) as exc:
            self._handshake_failed(exc)
            return
        if not self._flush() and self.state is not HANDSHAKING:
            return  # the connection was lost
        if not done:
            self._update_interest()
            return
        self._cancel_timer()
        self.state = ESTABLISHED
        self._update_interest()
        channel = self.channel
        channel.handle_handshake()
        if channel._pc_tls is not self or self.state is not ESTABLISHED:
            return
        # Application data may have come with the peer's last flight.
        try:
            engine.decrypt()
        except TLSProtocolError as exc:
            self._protocol_error(exc)
            return
        if engine.buffered or engine.at_eof:
            self._deliver()

    def _handshake_failed(self, exc: BaseException) -> None:
        engine = self.engine
        engine.fail()
        self.state = FAILED
        self._cancel_timer()
        try:
            engine.flush()  # an alert telling the peer why, if the kernel takes it
        except OSError:
            pass  # the peer is gone: it will not read the alert anyway
        self._update_interest()
        channel = self.channel
        try:
            channel.handle_handshake_failed(exc)
        except REraised:
            raise
        except Exception:
            channel.handle_error()

    def _handshake_timed_out(self) -> None:
        self._timer = None
        if self.state in (HANDSHAKING, WAIT_CONNECT) and self.channel._pc_tls is self:
            self._handshake_failed(TimeoutError(
                f"TLS handshake not complete after {self.handshake_timeout:g} s"))

    # -- reading --------------------------------------------------------------------------

    def _receive(self) -> bool:
        """One read from the socket into the engine.  Returns False if the
        connection was lost (and dealt with)."""
        try:
            self.engine.receive()
        except OSError as exc:
            if exc.errno not in DISCONNECTED:
                raise
            self._lost(exc)
            return False
        return True

    def _pull(self) -> bool:
        """Receive and decrypt.  False if the connection was lost or broken."""
        if self.engine.eof_received:
            return True
        if not self._receive():
            return False
        try:
            self.engine.decrypt()
        except TLSProtocolError as exc:
            self._protocol_error(exc)
            return False
        if self.engine.wants_flush:  # a key update answered, say
            self._flush()
        if self._write_wants_read:
            self._write_wants_read = False
            self._update_interest()
        return self.channel._pc_tls is self

    def _deliver(self) -> None:
        """Call the program's ``handle_read()`` if there is something for
        it; ask for another pass while decrypted bytes remain."""
        engine = self.engine
        if not engine.buffered and not engine.at_eof:
            return  # only a session ticket, or half a record: not an EOF
        channel = self.channel
        if channel._pc_extra_interest & READ and not channel.readable():
            return
        channel.handle_read()
        if engine.buffered and channel._pc_tls is self and self.state is ESTABLISHED:
            self._loop().add_ready(channel._fileno, READ)

    # -- writing --------------------------------------------------------------------------

    def _flush(self) -> bool:
        """Send unsent raw bytes.  True if none remain; False if some do or
        the connection was lost (then dealt with)."""
        try:
            done = self.engine.flush()
        except OSError as exc:
            if exc.errno not in DISCONNECTED:
                raise
            self._lost(exc)
            return False
        # In every state that flushes, the extra WRITE interest means
        # "bytes unsent": update it only when that changed (the hot path).
        if done is bool(self.channel._pc_extra_interest & WRITE):
            self._update_interest()
        return done

    # -- unwrapping -----------------------------------------------------------------------

    def _begin_shutdown(self) -> None:
        if self.channel._pc_tls is not self or self.state is not ESTABLISHED:
            return
        self._timer = self._call_later(self.shutdown_timeout, self._shutdown_timed_out)
        self._shutdown_step()

    def _shutdown_step(self) -> None:
        engine = self.engine
        try:
            done = engine.shutdown()
        except TLSProtocolError as exc:
            if engine.eof_received:
                self._give_up("the peer closed the connection instead of answering "
                              "close_notify")
            else:
                self._protocol_error(exc)
            return
        self.state = engine.state
        if not self._flush() and self.channel._pc_tls is not self:
            return
        if done:
            self._unwrapped()
        elif engine.eof_received:
            self._give_up("the peer closed the connection instead of answering close_notify")
        else:
            self._update_interest()

    def _unwrapped(self) -> None:
        self._cancel_timer()
        self.state = UNWRAPPED
        self._leftover = self.engine.unwrap_leftover()
        channel = self.channel
        self._update_interest()
        if self._leftover:
            self._loop().add_ready(channel._fileno, READ)
        self._maybe_detach()
        channel.handle_unwrapped()

    def _shutdown_timed_out(self) -> None:
        self._timer = None
        if self.state is SHUTTING_DOWN and self.channel._pc_tls is self:
            self._give_up(f"no close_notify from the peer within {self.shutdown_timeout:g} s")

    def _give_up(self, why: str) -> None:
        logger.info("%s: TLS shutdown failed: %s; closing the connection",
                    _peer_name(self.channel), why)
        self.engine.fail()
        self.state = FAILED
        self._update_interest()
        self.channel.handle_close()

    # Unwrapped, the transport stays attached while plaintext the peer sent
    # right after its close_notify is unread, or our close_notify unsent
    # (plaintext must not overtake it); dispatcher's own code does the rest.

    def _deliver_leftover(self) -> None:
        channel = self.channel
        if self._leftover:
            channel.handle_read()
        else:
            self._plaintext(dispatcher.handle_read_event)
        if self._leftover and channel._pc_tls is self:
            self._loop().add_ready(channel._fileno, READ)
        self._maybe_detach()

    def _read_leftover(self, size: int) -> bytes:
        if not self._leftover:
            data: bytes = self._plaintext(dispatcher.recv, size)
            return data
        data, self._leftover = self._leftover[:size], self._leftover[size:]
        return data

    def _plaintext(self, method: Callable[..., Any], *args: Any) -> Any:
        """Run ``dispatcher``'s own plaintext ``method`` on the channel."""
        channel = self.channel
        channel._pc_tls = None
        try:
            return method(channel, *args)
        finally:
            if channel._fileno is None:
                self.state = CLOSED  # closed by the method (dispatcher.close)
            elif channel._pc_tls is None and self.state is UNWRAPPED:
                channel._pc_tls = self

    def _maybe_detach(self) -> None:
        if self.state is UNWRAPPED and not self._leftover and not self.engine.wants_flush:
            self._detach()

    # -- failures -------------------------------------------------------------------------

    def _lost(self, exc: OSError) -> None:
        """The socket failed with a disconnect errno."""
        if self.state in (HANDSHAKING, WAIT_CONNECT):
            self._handshake_failed(exc)
            return
        self.engine.fail()
        self.state = FAILED
        self._update_interest()
        self.channel.handle_close()

    def _protocol_error(self, exc: TLSProtocolError) -> None:
        """The peer broke TLS after the handshake: like a reset connection,
        one log line and ``handle_close()``; never the program's
        ``handle_error()``, as it is not the program's fault."""
        logger.info("%s: TLS error: %s; closing the connection", _peer_name(self.channel),
                    describe_error(exc.ssl_error))
        self.engine.fail()
        self.state = FAILED
        try:
            self.engine.flush()  # the alert
        except OSError:
            pass  # the peer is gone
        self._update_interest()
        self.channel.handle_close()

    # -- interest, timers, detaching -----------------------------------------------------

    def _update_interest(self) -> None:
        state = self.state
        unsent = WRITE if self.engine.wants_flush else 0
        if state is ESTABLISHED:
            self._set_interest(unsent | (READ if self._write_wants_read else 0), 0)
        elif state is HANDSHAKING or state is SHUTTING_DOWN:
            self._set_interest(READ | unsent, WRITE | PRI)
        elif state is WAIT_CONNECT:
            self._set_interest(WRITE, 0)
        elif state is FAILED:
            # Nothing more to read or write until the program closes it.
            self._set_interest(unsent, READ | WRITE | PRI)
        elif state is UNWRAPPED:
            self._set_interest(unsent, 0)
        else:
            self._set_interest(0, 0)

    def _set_interest(self, extra: int, withheld: int) -> None:
        channel = self.channel
        if channel._pc_extra_interest != extra or channel._pc_withheld_interest != withheld:
            channel._pc_extra_interest = extra
            channel._pc_withheld_interest = withheld
            channel._interest_changed()

    def _detach(self) -> None:
        channel = self.channel
        if channel._pc_tls is self:
            channel._pc_tls = None
        if channel._pc_tls_pending is self:
            channel._pc_tls_pending = None
        self._set_interest(0, 0)

    def _loop(self) -> _loop.Loop:
        return _loop.get_loop(self.channel._map)

    def _call_later(self, delay: Optional[float], callback: Callable[[], None]) -> Any:
        return None if delay is None else self._loop().call_later(delay, callback)

    def _cancel_timer(self) -> None:
        timer, self._timer = self._timer, None
        if timer is not None:
            timer.cancel()
