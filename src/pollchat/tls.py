"""TLS for dispatchers and async_chat channels: the channel-facing API.

Every ``dispatcher`` (hence ``dispatcher_with_send`` and ``async_chat``)
gets these methods from :class:`TLSChannelMixin`:

* :meth:`~TLSChannelMixin.start_tls` puts TLS on the channel, at once (a
  TLS server or client) or mid-stream (STARTTLS);
* :meth:`~TLSChannelMixin.unwrap_tls` ends TLS and goes back to plaintext;
* :meth:`~TLSChannelMixin.get_ssl_object` gives the :class:`ssl.SSLObject`
  (peer certificate, ALPN protocol, TLS version, cipher...);
* the hooks :meth:`~TLSChannelMixin.handle_handshake`,
  :meth:`~TLSChannelMixin.handle_handshake_failed` and
  :meth:`~TLSChannelMixin.handle_unwrapped`.

The work is done by ``pollchat._tlsswitch`` and ``pollchat._tlstransport``
(imported, with :mod:`ssl`, only when a program starts TLS: plaintext
programs pay neither the import nor anything per event but one attribute
test in ``recv``, ``send``, ``handle_read_event``, ``handle_write_event``
and ``close``).

This module also holds the small helpers the core uses for programs that
wrap their own sockets in ``ssl.SSLSocket`` (CPython's test_ssl, pyftpdlib):
:func:`is_ssl_error`, :func:`is_ssl_want_read`, :func:`legacy_send_error` and
:func:`legacy_pending`.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any, Optional

from . import loop as _loop
from .backends import READ
from .dispatch import is_ssl_error

if TYPE_CHECKING:
    import ssl

__all__ = ["TLSChannelMixin", "DEFAULT_HANDSHAKE_TIMEOUT", "DEFAULT_SHUTDOWN_TIMEOUT",
           "is_ssl_error", "is_ssl_want_read", "legacy_send_error", "legacy_pending",
           "server_context"]

logger = logging.getLogger("pollchat.tls")

#: Seconds from ``start_tls()`` to a complete handshake (asyncio's default).
DEFAULT_HANDSHAKE_TIMEOUT = 60.0
#: Seconds ``unwrap_tls()`` waits for the peer's ``close_notify`` (asyncio's).
DEFAULT_SHUTDOWN_TIMEOUT = 30.0


class TLSChannelMixin:
    """TLS methods and hooks, inherited by every ``dispatcher``.

    The class attributes below are the channel's TLS state; plaintext
    channels keep the class defaults.
    """

    #: The active TLS transport, or None.  ``recv``/``send`` and the event
    #: handlers of ``dispatcher`` hand over to it while it is set.
    _pc_tls: Any = None
    #: A transport waiting for queued plaintext output to be sent (STARTTLS).
    _pc_tls_pending: Any = None
    #: Interest the transport needs whatever ``readable()``/``writable()``
    #: say, and interest it withholds from them meanwhile (masks of
    #: ``pollchat.backends.READ``/``WRITE``/``PRI``), read by the loop.
    _pc_extra_interest = 0
    _pc_withheld_interest = 0

    def start_tls(self, context: ssl.SSLContext, *, server_side: bool = False,
                  server_hostname: Optional[str] = None,
                  session: Optional[ssl.SSLSession] = None,
                  handshake_timeout: Optional[float] = DEFAULT_HANDSHAKE_TIMEOUT,
                  shutdown_timeout: Optional[float] = DEFAULT_SHUTDOWN_TIMEOUT,
                  allow_renegotiation: bool = False) -> None:
        """Put TLS on this channel: at once, or after pending output (STARTTLS).

        Call it right after creating the channel for a TLS server or client
        (a client may call it before ``connect()``: the handshake starts once
        connected), or in the middle of a plaintext conversation for
        STARTTLS.  Then:

        * output queued *before* the call (``push()``, ``dispatcher_with_send``'s
          buffer) is sent as plaintext first: the handshake starts only once
          the reply announcing it has been handed to the kernel;
        * input received but not yet processed is discarded (an async_chat's
          ``ac_in_buffer``), and nothing is read until the handshake starts:
          plaintext a peer pipelined after its STARTTLS command is never
          taken for a command (the command-injection hole of mail servers);
        * no handler of the program sees handshake traffic;
          :meth:`handle_handshake` runs when it completed,
          :meth:`handle_handshake_failed` if it failed or timed out;
        * ``send()`` returns 0 until the handshake completed (``push()`` and
          ``dispatcher_with_send`` queue and retry by themselves); then
          ``recv()``/``send()`` carry plaintext, encrypted on the wire.

        Args:
            context: the :class:`ssl.SSLContext`.
            server_side: this end is the TLS server.
            server_hostname: the name the server's certificate must match
                (and SNI); client side only.
            session: an :class:`ssl.SSLSession` to resume (client side).
            handshake_timeout: seconds until the handshake must be complete
                (``None``: no limit).
            shutdown_timeout: seconds :meth:`unwrap_tls` waits for the peer.
            allow_renegotiation: on the server side, leave TLS 1.2
                renegotiation as the context has it; by default it is
                refused (``OP_NO_RENEGOTIATION`` is set on the context).

        Raises:
            TypeError: ``context`` is not an ``ssl.SSLContext``; the socket
                is not a stream socket.
            ValueError: TLS is already on or starting; the channel has no
                socket or is a listener; a timeout is not positive;
                ``server_hostname`` is missing but the context checks it.
        """
        from ._tlsswitch import start_tls

        start_tls(self, context, server_side=server_side, server_hostname=server_hostname,
                  session=session, handshake_timeout=handshake_timeout,
                  shutdown_timeout=shutdown_timeout, allow_renegotiation=allow_renegotiation)

    def unwrap_tls(self) -> None:
        """End TLS and go back to plaintext on the same connection.

        Output queued before the call is sent (encrypted) first; then
        ``close_notify`` is sent and the peer's awaited, for at most the
        ``shutdown_timeout`` given to :meth:`start_tls`.  Meanwhile
        ``send()`` returns 0.  When both have passed,
        :meth:`handle_unwrapped` runs and the channel carries plaintext;
        bytes the peer sent right after its ``close_notify`` are delivered
        as plaintext.  If the peer closes the connection or does not answer
        in time, one line is logged and ``handle_close()`` runs.

        Raises:
            ValueError: TLS is not established on this channel.
        """
        from ._tlsswitch import unwrap_tls

        unwrap_tls(self)

    def get_ssl_object(self) -> Optional[ssl.SSLObject]:
        """The :class:`ssl.SSLObject` while TLS is on (``None`` otherwise).

        After :meth:`handle_handshake`: ``getpeercert()``, ``version()``,
        ``selected_alpn_protocol()``, ``cipher()``, ``session``,
        ``session_reused``...
        """
        tls = self._pc_tls
        return tls.active_ssl_object() if tls is not None else None

    def handle_handshake(self) -> None:
        """The TLS handshake completed.  Override to look at the peer
        (:meth:`get_ssl_object`) or to start talking; the default does
        nothing."""

    def handle_handshake_failed(self, exc: BaseException) -> None:
        """The TLS handshake failed or timed out; ``exc`` says why (an
        :class:`ssl.SSLError`, such as ``SSLCertVerificationError``; a
        :class:`ConnectionError` when the peer closed the connection first;
        a :class:`TimeoutError`).

        The default logs one line (logger ``pollchat.tls``, INFO: port
        scanners and plain-TCP clients are routine on a public TLS port) and
        closes the channel.  An override that does not close the channel
        leaves it silent (nothing is read or written) until it is closed.
        """
        logger.info("%s: TLS handshake failed: %s; closing the connection",
                    _peer_name(self), describe_error(exc))
        self.close()  # type: ignore[attr-defined]

    def handle_unwrapped(self) -> None:
        """:meth:`unwrap_tls` finished: the channel now carries plaintext.
        The default does nothing."""


def _peer_name(channel: Any) -> str:
    addr = getattr(channel, "addr", None)
    try:
        host, port = addr[:2]  # type: ignore[index]
    except (TypeError, ValueError):
        return repr(channel)
    return f"[{host}]:{port}" if ":" in str(host) else f"{host}:{port}"


def describe_error(exc: BaseException) -> str:
    """A one-line reason for a TLS failure (OpenSSL's reason when known)."""
    reason = getattr(exc, "reason", None)
    verify = getattr(exc, "verify_message", None)
    if verify:
        return f"certificate verify failed: {verify}"
    if reason:
        return str(reason).lower().replace("_", " ")
    return str(exc) or type(exc).__name__


def server_context(certfile: str, keyfile: Optional[str] = None, *,
                   password: Any = None) -> ssl.SSLContext:
    """A server-side :class:`ssl.SSLContext` with the standard library's
    secure defaults (``ssl.create_default_context``, TLS 1.2 or newer) and
    the certificate chain ``certfile`` (PEM; the key too unless
    ``keyfile``).

    Raises:
        OSError: a file cannot be read.
        ssl.SSLError: the files hold no valid certificate or key, or they
            do not match.
    """
    import ssl

    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(certfile, keyfile, password)
    return context


# -- legacy programs wrapping their own SSLSocket -------------------------------------


def legacy_send_error(exc: BaseException) -> bool:
    """Whether ``exc``, raised by an ``SSLSocket``'s ``send()``, only means
    "not now" (``SSLWantWriteError``/``SSLWantReadError``).  ``send()`` then
    returns 0, so that ``dispatcher_with_send`` and ``async_chat`` retry the
    same bytes later, as OpenSSL requires."""
    return is_ssl_error(exc, "SSLWantWriteError") or is_ssl_error(exc, "SSLWantReadError")


def is_ssl_want_read(exc: BaseException) -> bool:
    """Whether ``exc``, raised by an ``SSLSocket``'s ``recv()``, means that
    only part of a record has arrived: nothing to read yet."""
    return is_ssl_error(exc, "SSLWantReadError")


def legacy_pending(channel: Any, sock: Any) -> None:
    """After ``channel.recv()`` read from ``sock``, a socket object that is
    not a plain socket: if it holds input the kernel cannot report (an
    ``SSLSocket``'s ``pending()``: the rest of a decrypted record), have
    the loop deliver a read event on its next pass, without waiting for
    the peer to send again."""
    pending = getattr(sock, "pending", None)
    if pending is None:
        return
    try:
        waiting = pending()
    except (OSError, ValueError, AttributeError, TypeError):
        return  # closed, or not an SSL socket after all: nothing buffered
    if waiting:
        loop = _loop.loop_for_map(channel._map)
        if loop is not None:
            loop.add_ready(channel._fileno, READ)
