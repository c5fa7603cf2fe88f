"""Switching TLS on and off on a channel: :meth:`pollchat.tls.TLSChannelMixin.start_tls`
and ``unwrap_tls()``, behind their lazy imports.

Starting checks every argument before it changes the channel, drops
plaintext pipelined after the command that started TLS (never executed), and
waits for queued plaintext replies to leave first; then the
:class:`~pollchat._tlstransport.TLSTransport` takes over the channel's
events.  Unwrapping likewise waits for queued output, then sends
``close_notify``.
"""

from __future__ import annotations

import logging
import socket
import ssl
from typing import Any, Callable, Optional

from ._tlstransport import CLOSED, WAIT_OUTPUT, TLSTransport
from .backends import PRI, READ
from .chat import async_chat
from .sendbuffer import dispatcher_with_send
from .timers import check_seconds
from .tls import _peer_name
from .tlsengine import ESTABLISHED, UNWRAPPED, TLSEngine

__all__ = ["start_tls", "unwrap_tls"]

logger = logging.getLogger("pollchat.tls")

_NO_RENEGOTIATION = getattr(ssl, "OP_NO_RENEGOTIATION", 0)


def start_tls(channel: Any, context: ssl.SSLContext, *, server_side: bool,
              server_hostname: Optional[str], session: Optional[ssl.SSLSession],
              handshake_timeout: Optional[float], shutdown_timeout: Optional[float],
              allow_renegotiation: bool) -> None:
    """:meth:`pollchat.tls.TLSChannelMixin.start_tls` (see there)."""
    if not isinstance(context, ssl.SSLContext):
        raise TypeError(f"start_tls() needs an ssl.SSLContext, not {type(context).__name__}")
    handshake_timeout = check_seconds("handshake_timeout", handshake_timeout)
    shutdown_timeout = check_seconds("shutdown_timeout", shutdown_timeout)
    sock = channel.socket
    if sock is None or channel._fileno is None:
        raise ValueError(f"{channel!r} has no open socket: create or accept it first")
    previous = channel._pc_tls
    if previous is not None and previous.state is not UNWRAPPED \
            or channel._pc_tls_pending is not None:
        raise ValueError(f"TLS is already on (or starting) on {channel!r}")
    if channel.accepting:
        raise ValueError("a listening channel cannot start TLS: start it on each "
                         "accepted channel (in handle_accepted)")
    if isinstance(sock, ssl.SSLSocket):
        raise ValueError(f"{channel!r} already has an ssl.SSLSocket; give start_tls() "
                         "the plain socket")
    if not isinstance(sock, socket.socket) or sock.type != socket.SOCK_STREAM:
        raise TypeError(f"TLS needs a stream socket, not {sock!r}")
    if server_side and server_hostname is not None:
        raise ValueError("server_hostname is for the client side only")
    if not server_side and context.check_hostname and not server_hostname:
        # (wrap_socket() says so at once; wrap_bio() only fails the handshake.)
        raise ValueError("server_hostname is required: the context checks the server's "
                         "host name (check_hostname); pass the name you connect to")
    if server_side and not allow_renegotiation and _NO_RENEGOTIATION \
            and not context.options & _NO_RENEGOTIATION:
        # A client that renegotiates at will costs the server a handshake
        # each time (CVE-2011-1473); TLS 1.3 has no renegotiation at all.
        context.options |= _NO_RENEGOTIATION
    # The engine first (wrap_bio() may still refuse the arguments); only
    # then change the channel.
    engine = TLSEngine(sock, context, server_side=server_side,
                       server_hostname=server_hostname, session=session)
    _discard_pipelined_input(channel, previous)
    unsent = b""
    if previous is not None:
        # TLS again right after an unwrap: our close_notify, if the kernel
        # has not taken it yet, goes out before anything else.
        unsent = previous.engine.take_unsent()
        previous.state = CLOSED
        previous._detach()
    if isinstance(channel, dispatcher_with_send) and channel.out_buffer:
        # The end of the plaintext reply goes out before the first TLS record.
        unsent += bytes(channel.out_buffer)
        channel.out_buffer = b""
    elif unsent and isinstance(channel, async_chat) and channel.producer_fifo:
        channel.producer_fifo.appendleft(unsent)  # before the queued plaintext
        unsent = b""
    engine.unsent = unsent
    transport = TLSTransport(channel, engine, server_side, handshake_timeout, shutdown_timeout)
    if isinstance(channel, async_chat) and channel.producer_fifo:
        transport.state = WAIT_OUTPUT
        channel._pc_tls_pending = transport
        channel.producer_fifo.append(_AfterOutput(transport._begin))
        # Read nothing until the reply is out: the peer may not send TLS
        # before it, and plaintext it sends meanwhile must not be executed.
        transport._set_interest(extra=0, withheld=READ | PRI)
    else:
        transport._begin()


def unwrap_tls(channel: Any) -> None:
    """:meth:`pollchat.tls.TLSChannelMixin.unwrap_tls` (see there)."""
    transport = channel._pc_tls
    if transport is None or transport.state is not ESTABLISHED:
        state = "off" if transport is None else transport.state
        raise ValueError(f"unwrap_tls() needs an established TLS session; on {channel!r} "
                         f"TLS is {state}")
    if transport._unwrap_requested:
        return
    transport._unwrap_requested = True
    if isinstance(channel, async_chat) and channel.producer_fifo:
        channel.producer_fifo.append(_AfterOutput(transport._begin_shutdown))
        channel._update_interest()
        return
    if isinstance(channel, dispatcher_with_send) and channel.out_buffer:
        # Encrypted before close_notify, which must follow the last record.
        data, channel.out_buffer = channel.out_buffer, b""
        transport.engine.encrypt(data)
    transport._begin_shutdown()


def _discard_pipelined_input(channel: Any, previous: Optional[TLSTransport]) -> None:
    """Drop what was received after the command that starts TLS: an
    async_chat's unprocessed input, and plaintext that followed the peer's
    ``close_notify`` if TLS is started again right after an unwrap."""
    waiting = 0
    if previous is not None:
        waiting += len(previous._leftover)
        previous._leftover = b""
    if isinstance(channel, async_chat):
        waiting += len(channel.ac_in_buffer)
        channel.ac_in_buffer = b""
    if waiting:
        logger.warning("%s: discarding %d bytes received after the command that "
                       "started TLS (pipelined plaintext is never executed)",
                       _peer_name(channel), waiting)


class _AfterOutput:
    """A producer queued in an async_chat's ``producer_fifo``: when it
    reaches the head, everything queued before it has been handed to the
    kernel, and ``action`` runs.  It produces nothing."""

    def __init__(self, action: Callable[[], None]) -> None:
        self._action: Optional[Callable[[], None]] = action

    def more(self) -> bytes:
        action, self._action = self._action, None
        if action is not None:
            action()
        return b""
