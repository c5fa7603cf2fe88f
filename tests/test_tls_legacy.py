"""Programs that wrap their own sockets in ssl.SSLSocket (the way CPython's
test_ssl asyncore server and pyftpdlib do) keep working on every backend,
and an SSLError's errno is never read as an OS errno."""

import errno
import socket
import ssl

import pytest
from helpers import run_until

from pollchat import asyncore
from pollchat.dispatch import dispatch

pytestmark = pytest.mark.timeout(60)


class LegacyTLSHandler(asyncore.dispatcher_with_send):
    """Server side, as legacy programs write it: an SSLSocket made with
    do_handshake_on_connect=False, the handshake driven from the handlers.
    It does *not* override readable() (so the loop does not ask it every
    pass) and reads ``chunk`` bytes per handle_read()."""

    chunk = 100

    def __init__(self, conn, context, map):
        sock = context.wrap_socket(conn, server_side=True, do_handshake_on_connect=False)
        asyncore.dispatcher_with_send.__init__(self, sock, map=map)
        self.handshaking = True
        self.received = bytearray()
        self.errors = []

    def _handshake(self):
        try:
            self.socket.do_handshake()
        except (ssl.SSLWantReadError, ssl.SSLWantWriteError):
            return
        self.handshaking = False

    def handle_read(self):
        if self.handshaking:
            self._handshake()
        else:
            self.received.extend(self.recv(self.chunk))

    def handle_write(self):
        if self.handshaking:
            self._handshake()
        else:
            self.initiate_send()

    def handle_error(self):
        import sys

        self.errors.append(sys.exc_info()[1])
        self.close()


def legacy_pair(loop, context, client_context):
    """A connected (server handler, blocking client SSLSocket) pair; the
    handshake is run by the loop while the client does its own in steps."""
    listener = socket.create_server(("127.0.0.1", 0))
    try:
        raw_client = socket.create_connection(listener.getsockname())
        conn, _ = listener.accept()
    finally:
        listener.close()
    handler = LegacyTLSHandler(conn, context, loop.map)
    raw_client.setblocking(False)
    client = client_context.wrap_socket(raw_client, server_hostname="localhost",
                                        do_handshake_on_connect=False)
    done = []

    def client_step():
        if done:
            return
        try:
            client.do_handshake()
            done.append(True)
        except (ssl.SSLWantReadError, ssl.SSLWantWriteError):
            pass

    run_until(loop, lambda: done and not handler.handshaking, between=client_step)
    return handler, client


def test_legacy_sslsocket_pending_bytes_need_no_further_traffic(loop, tls_server_context,
                                                                tls_client_context):
    """The SSLSocket holds the rest of a 16 KiB record after recv(100): the
    kernel cannot report it, the loop must come back for it anyway."""
    handler, client = legacy_pair(loop, tls_server_context, tls_client_context)
    try:
        message = bytes(range(256)) * 256  # 64 KiB, four full records
        client.setblocking(True)
        client.sendall(message)
        # The client now stays silent: no further traffic to wake the loop.
        run_until(loop, lambda: len(handler.received) >= len(message))
        assert bytes(handler.received) == message
        assert not handler.errors
    finally:
        client.close()


def test_legacy_sslsocket_send_retries_after_want_write(loop, tls_server_context,
                                                        tls_client_context):
    """dispatcher_with_send over an SSLSocket whose kernel buffer fills:
    OpenSSL raises SSLWantWriteError, send() returns 0, and the same bytes
    are retried later; the peer receives everything, in order."""
    handler, client = legacy_pair(loop, tls_server_context, tls_client_context)
    try:
        handler.socket.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
        data = bytes(range(256)) * 8192  # 2 MiB
        handler.send(data)
        assert handler.out_buffer, "everything was sent at once: the buffer is too large"
        got = bytearray()

        def read_some():
            try:
                got.extend(client.recv(65536))
            except (ssl.SSLWantReadError, BlockingIOError):
                pass

        run_until(loop, lambda: len(got) >= len(data), between=read_some, timeout=30)
        assert bytes(got) == data
        assert not handler.errors
    finally:
        client.close()


class Recording(asyncore.dispatcher):
    def __init__(self):
        asyncore.dispatcher.__init__(self)
        self.calls = []
        self.raise_ = None

    def handle_read_event(self):
        raise self.raise_

    def handle_error(self):
        self.calls.append("error")

    def handle_close(self):
        self.calls.append("close")


@pytest.mark.parametrize("code", [errno.ECONNRESET, errno.EPIPE, errno.EBADF])
def test_ssl_error_numbers_are_not_disconnect_errnos(code):
    """An SSLError whose errno equals a disconnect errno is still an error
    (handle_error), not a quiet close; a real OSError with it is a close."""
    channel = Recording()
    channel.raise_ = ssl.SSLError(code, "an OpenSSL failure")
    dispatch(channel, 1)
    channel.raise_ = OSError(code, "a real disconnect")
    dispatch(channel, 1)
    assert channel.calls == ["error", "close"]


def test_recv_does_not_read_an_ssl_errno_as_a_disconnect():
    class FakeSSLSocket:
        def recv(self, size):
            raise ssl.SSLError(errno.ECONNRESET, "an OpenSSL failure")

    channel = Recording()
    channel.socket = FakeSSLSocket()
    with pytest.raises(ssl.SSLError):
        channel.recv(10)
    assert channel.calls == []
