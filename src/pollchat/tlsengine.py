"""A TLS engine for one non-blocking stream socket, on memory BIOs.

:class:`TLSEngine` runs an :class:`ssl.SSLObject` between two
:class:`ssl.MemoryBIO` buffers, as asyncio's sslproto, uvloop and Twisted do,
instead of wrapping the socket (``SSLSocket``).  The socket stays a plain
socket: its fd never changes, the loop keeps its registration, and every
byte TLS holds is in a buffer this engine can see:

* **raw side**: :meth:`~TLSEngine.receive` reads once from the socket into
  the incoming BIO; :meth:`~TLSEngine.flush` sends what TLS produced.  Bytes
  the kernel did not take stay in :attr:`~TLSEngine.unsent` and are retried
  as they are (after a short send, the same bytes go first, never new ones).
* **TLS side**: :meth:`~TLSEngine.handshake`, :meth:`~TLSEngine.decrypt`
  (all complete records into a plaintext buffer), :meth:`~TLSEngine.read`,
  :meth:`~TLSEngine.encrypt`, :meth:`~TLSEngine.shutdown` (``close_notify``
  both ways) and :meth:`~TLSEngine.unwrap_leftover` (plaintext the peer sent
  after its ``close_notify``).

The engine knows nothing of channels or loops: it is a state machine over a
socket, tested on its own over socket pairs (``tests/test_tls_engine.py``).

Errors are kept apart by kind, because :class:`ssl.SSLError` is an
:class:`OSError` whose ``errno`` is an OpenSSL code (``SSL_ERROR_*``, small
integers that collide with OS errnos such as ``EIO``), never an OS errno:

* socket calls raise :class:`OSError` with a real errno, as the socket did;
* TLS failures raise :class:`TLSProtocolError`, which is *not* an
  ``OSError`` (so no ``except OSError`` + errno test can misread it) and
  carries the original ``SSLError`` as ``ssl_error`` and ``__cause__``.
  :meth:`~TLSEngine.handshake` raises the ``SSLError`` itself (it goes to
  the program's ``handle_handshake_failed(exc)``, where a
  ``SSLCertVerificationError`` is what a program expects); callers catch it
  with ``except ssl.SSLError`` before any ``except OSError``.
"""

from __future__ import annotations

import collections
import ssl
from typing import Any, Deque, Optional, Union

__all__ = ["TLSEngine", "TLSProtocolError", "HandshakeEOFError", "RAW_READ_SIZE",
           "HANDSHAKING", "ESTABLISHED", "SHUTTING_DOWN", "UNWRAPPED", "FAILED"]

#: Bytes asked of the socket per :meth:`TLSEngine.receive` (four full records).
RAW_READ_SIZE = 65536
# Asked of SSLObject.read() per call: it returns at most one record (16 KiB).
_RECORD_READ_SIZE = 65536

# States.
HANDSHAKING = "handshaking"
ESTABLISHED = "established"
SHUTTING_DOWN = "shutting down"
UNWRAPPED = "unwrapped"
FAILED = "failed"


class TLSProtocolError(Exception):
    """The peer broke the TLS protocol (bad record, unexpected message...).

    Deliberately not an :class:`OSError`: its cause's ``errno`` is an
    OpenSSL code and must never be read as an OS errno.  The original error
    is ``ssl_error``.
    """

    def __init__(self, ssl_error: ssl.SSLError) -> None:
        super().__init__(str(ssl_error))
        self.ssl_error = ssl_error


class HandshakeEOFError(ConnectionAbortedError):
    """The peer closed the connection before the TLS handshake completed
    (a port scanner, or a plain-TCP client that gave up)."""


class TLSEngine:
    """TLS over the non-blocking stream socket ``sock``, through memory BIOs.

    Args:
        sock: a connected (or connecting) non-blocking stream socket.  The
            engine only calls its ``recv()`` and ``send()``.
        context: the :class:`ssl.SSLContext` to use.
        server_side: the server end of the handshake.
        server_hostname: the name to check the server's certificate against
            (and send as SNI); client side only.
        session: an :class:`ssl.SSLSession` to resume (client side).

    Raises:
        ValueError: from :meth:`ssl.SSLContext.wrap_bio` (``server_hostname``
            missing while the context checks hostnames, say).
    """

    # One per TLS connection, 10,000s of them on a busy server.
    __slots__ = ("_sock", "_incoming", "_outgoing", "ssl_object", "state", "unsent",
                 "eof_received", "close_notify_received", "ragged_eof", "buffered", "_plain",
                 "_close_notify_sent")

    def __init__(self, sock: Any, context: ssl.SSLContext, *, server_side: bool,
                 server_hostname: Optional[str] = None,
                 session: Optional[ssl.SSLSession] = None) -> None:
        self._sock = sock
        self._incoming = ssl.MemoryBIO()
        self._outgoing = ssl.MemoryBIO()
        self.ssl_object: ssl.SSLObject = context.wrap_bio(
            self._incoming, self._outgoing, server_side=server_side,
            server_hostname=server_hostname, session=session)
        self.state = HANDSHAKING
        #: Raw bytes produced but not yet taken by the kernel (a caller may
        #: set it first to plaintext that must precede the first record).
        self.unsent: Union[bytes, memoryview] = b""
        #: The socket reached end of file (or was reset).
        self.eof_received = False
        #: The peer's ``close_notify`` arrived (clean end of TLS).
        self.close_notify_received = False
        #: The stream ended without ``close_notify`` (a truncation the
        #: application protocol may or may not detect on its own).
        self.ragged_eof = False
        #: Decrypted bytes not yet read.
        self.buffered = 0
        self._plain: Deque[bytes] = collections.deque()
        self._close_notify_sent = False

    # -- the raw side -----------------------------------------------------------------

    def receive(self, size: int = RAW_READ_SIZE) -> int:
        """Read once from the socket into the incoming BIO.

        Returns:
            The bytes read; 0 at end of file (then :attr:`eof_received`), and
            also 0 if the socket had nothing after all.

        Raises:
            OSError: from the socket (a reset, say), with its real errno.
        """
        try:
            data = self._sock.recv(size)
        except (BlockingIOError, InterruptedError):
            return 0
        if data:
            self._incoming.write(data)
            return len(data)
        self.eof_received = True
        self._incoming.write_eof()
        return 0

    def flush(self) -> bool:
        """Send what TLS produced (after what earlier sends left).

        Returns:
            True when nothing is left unsent.

        Raises:
            OSError: from the socket (``EPIPE``, ``ECONNRESET``...).
        """
        if self._outgoing.pending:
            produced = self._outgoing.read()
            self.unsent = bytes(self.unsent) + produced if self.unsent else produced
        unsent = self.unsent
        if not unsent:
            return True
        try:
            sent = self._sock.send(unsent)
        except (BlockingIOError, InterruptedError):
            return False
        if sent >= len(unsent):
            self.unsent = b""
            return True
        # Retry exactly these bytes next time: a view, not a copy.
        self.unsent = (unsent if isinstance(unsent, memoryview) else memoryview(unsent))[sent:]
        return False

    def take_unsent(self) -> bytes:
        """Remove and return every raw byte not sent yet (for a new engine on
        the same socket, after an unwrap)."""
        if self._outgoing.pending:
            self.unsent = bytes(self.unsent) + self._outgoing.read()
        unsent, self.unsent = bytes(self.unsent), b""
        return unsent

    @property
    def wants_flush(self) -> bool:
        """Whether raw bytes wait to be sent."""
        return bool(self.unsent) or bool(self._outgoing.pending)

    # -- the TLS side -----------------------------------------------------------------

    def handshake(self) -> bool:
        """Advance the handshake with what the incoming BIO holds.

        Returns:
            True once the handshake is complete (state ``ESTABLISHED``);
            False while it waits for the peer.  Call :meth:`flush` after
            either: the handshake produces bytes to send.

        Raises:
            ssl.SSLError: the handshake failed (bad certificate, garbage
                from the peer, no common protocol...).  The state becomes
                ``FAILED``; an alert for the peer may wait in :meth:`flush`.
            HandshakeEOFError: the peer closed the connection first.
        """
        try:
            self.ssl_object.do_handshake()
        except ssl.SSLWantReadError:
            if self.eof_received:
                self.state = FAILED
                raise HandshakeEOFError(
                    "the peer closed the connection during the TLS handshake") from None
            return False
        except (ssl.SSLEOFError, ssl.SSLZeroReturnError):
            # (SSLZeroReturnError: how Python 3.9 reports end of file.)
            self.state = FAILED
            raise HandshakeEOFError(
                "the peer closed the connection during the TLS handshake") from None
        except ssl.SSLError:
            self.state = FAILED
            raise
        self.state = ESTABLISHED
        return True

    def decrypt(self) -> None:
        """Decrypt every complete record in the incoming BIO into the
        plaintext buffer.  Records that carry no application data (TLS 1.3
        session tickets, key updates) leave it unchanged: they are not an
        end of stream.  ``close_notify``, or end of file without it, sets
        :attr:`close_notify_received` or :attr:`ragged_eof`.

        Raises:
            TLSProtocolError: the peer sent something TLS rejects.
        """
        obj = self.ssl_object
        incoming = self._incoming
        read = obj.read
        raw_left = incoming.pending
        try:
            while True:
                raw_left = incoming.pending
                data = read(_RECORD_READ_SIZE)
                if not data:
                    break  # close_notify (or, on Python 3.9, end of file)
                self._plain.append(data)
                self.buffered += len(data)
                # Stop before a call that could only raise SSLWantReadError.
                if not incoming.pending and not obj.pending() and not self.eof_received:
                    return
        except ssl.SSLWantReadError:
            return
        except ssl.SSLZeroReturnError:
            pass
        except ssl.SSLEOFError:
            self.ragged_eof = True
            return
        except ssl.SSLError as exc:
            raise TLSProtocolError(exc) from exc
        # A close_notify is a record: with no raw byte left to hold one, the
        # "clean close" is Python 3.9 reporting a bare end of file.
        if raw_left or not self.eof_received or self.close_notify_received:
            self.close_notify_received = True
        else:
            self.ragged_eof = True

    @property
    def at_eof(self) -> bool:
        """Whether the stream has ended (clean or not) and nothing decrypted
        is left to read."""
        return not self.buffered and (
            self.close_notify_received or self.ragged_eof)

    def read(self, size: int) -> bytes:
        """Up to ``size`` decrypted bytes (``b""`` if none are buffered).
        Whole buffered pieces are returned without copying when they fit."""
        plain = self._plain
        if not plain or size <= 0:
            return b""
        first = plain[0]
        if len(first) >= size:
            if len(first) == size:
                plain.popleft()
                data = first
            else:
                plain[0] = first[size:]
                data = first[:size]
        else:
            pieces = [plain.popleft()]
            room = size - len(first)
            while plain and room > 0:
                piece = plain[0]
                if len(piece) <= room:
                    pieces.append(plain.popleft())
                    room -= len(piece)
                else:
                    pieces.append(piece[:room])
                    plain[0] = piece[room:]
                    room = 0
            data = b"".join(pieces)
        self.buffered -= len(data)
        return data

    def encrypt(self, data: Any) -> int:
        """Encrypt ``data`` (bytes-like) into the outgoing BIO; call
        :meth:`flush` to send it.

        Returns:
            ``len(data)`` in bytes, or 0 if TLS cannot take application data
            now (a renegotiation waits for the peer): then retry with the
            same bytes later.

        Raises:
            TLSProtocolError: the connection is no longer usable.
        """
        if not len(data):
            return 0  # (SSL_write() of nothing fails with an EOF error on 3.9)
        try:
            return self.ssl_object.write(data)
        except (ssl.SSLWantReadError, ssl.SSLWantWriteError):
            return 0
        except ssl.SSLError as exc:
            raise TLSProtocolError(exc) from exc

    def shutdown(self) -> bool:
        """Send ``close_notify`` (once) and finish when the peer's arrives.

        Application data the peer sent before its ``close_notify`` is
        dropped: nobody reads it any more.

        Returns:
            True once both ``close_notify`` have passed (state
            ``UNWRAPPED``; :meth:`unwrap_leftover` then gives what followed).

        Raises:
            TLSProtocolError: the peer broke the protocol meanwhile, or
                closed the connection (:attr:`eof_received`) without
                ``close_notify``.
        """
        self.state = SHUTTING_DOWN
        if self._incoming.pending or self.eof_received:
            # OpenSSL refuses to shut down with application data unread
            # (APPLICATION_DATA_AFTER_CLOSE_NOTIFY): read it, up to the
            # peer's close_notify, and drop it.
            self.decrypt()
            self._plain.clear()
            self.buffered = 0
            if self._close_notify_sent and not self.close_notify_received:
                return False
        try:
            self.ssl_object.unwrap()
        except ssl.SSLWantReadError:
            self._close_notify_sent = True
            return False
        except ssl.SSLError as exc:
            raise TLSProtocolError(exc) from exc
        self.state = UNWRAPPED
        return True

    def unwrap_leftover(self) -> bytes:
        """After :meth:`shutdown` returned True: the bytes that followed the
        peer's ``close_notify`` (already plaintext)."""
        return self._incoming.read()

    def fail(self) -> None:
        """Mark the engine unusable (the connection is being dropped)."""
        self.state = FAILED
