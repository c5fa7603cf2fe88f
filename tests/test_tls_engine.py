"""The TLS engine on its own (pollchat.tlsengine): two engines over a
non-blocking socket pair, driven by hand, no loop."""

import errno
import socket
import ssl

import pytest

from pollchat.tlsengine import (
    ESTABLISHED,
    FAILED,
    UNWRAPPED,
    HandshakeEOFError,
    TLSEngine,
    TLSProtocolError,
)

pytestmark = pytest.mark.timeout(30)


@pytest.fixture
def socks():
    a, b = socket.socketpair()
    a.setblocking(False)
    b.setblocking(False)
    yield a, b
    a.close()
    b.close()


def engines(socks, server_context, client_context, **client_kwargs):
    server = TLSEngine(socks[0], server_context, server_side=True)
    client = TLSEngine(socks[1], client_context, server_side=False,
                       server_hostname="localhost", **client_kwargs)
    return server, client


def pump(*engines_, rounds=200):
    """Move bytes both ways and advance handshakes until every engine is
    established (bounded)."""
    for _ in range(rounds):
        for engine in engines_:
            engine.flush()
            engine.receive()
            if engine.state != ESTABLISHED:
                engine.handshake()
            engine.flush()
        if all(e.state == ESTABLISHED and not e.wants_flush for e in engines_):
            return
    raise AssertionError(f"no handshake after {rounds} rounds: {[e.state for e in engines_]}")


def transfer(sender, receiver, data):
    """Send ``data`` through ``sender``, decrypt all of it at ``receiver``."""
    assert sender.encrypt(data) == len(data)
    got = []
    for _ in range(10_000):
        sender.flush()
        receiver.receive()
        receiver.decrypt()
        got.append(receiver.read(1 << 20))
        if sum(map(len, got)) >= len(data):
            return b"".join(got)
    raise AssertionError("transfer did not complete")


def test_handshake_then_data_both_ways(socks, tls_server_context, tls_client_context):
    server, client = engines(socks, tls_server_context, tls_client_context)
    pump(server, client)
    assert client.ssl_object.getpeercert()["subjectAltName"][0] == ("DNS", "localhost")
    assert transfer(client, server, b"ping") == b"ping"
    big = bytes(range(256)) * 1000
    assert transfer(server, client, big) == big


def test_read_hands_out_exactly_what_was_asked(socks, tls_server_context, tls_client_context):
    server, client = engines(socks, tls_server_context, tls_client_context)
    pump(server, client)
    data = b"0123456789" * 5000  # spans several records
    transfer(server, client, b"")  # settle the session tickets
    assert server.encrypt(data) == len(data)
    server.flush()
    client.receive()
    client.decrypt()
    pieces = []
    while client.buffered:
        piece = client.read(777)
        assert 0 < len(piece) <= 777
        pieces.append(piece)
    assert b"".join(pieces) == data
    assert client.read(10) == b""


def test_session_tickets_alone_are_not_an_end_of_stream(socks, tls_server_context,
                                                         tls_client_context):
    tls_client_context.minimum_version = ssl.TLSVersion.TLSv1_3
    server, client = engines(socks, tls_server_context, tls_client_context)
    pump(server, client)
    # The server sent its TLS 1.3 session tickets after the handshake; they
    # arrive at the client as records that carry no application data.
    client.receive()
    assert not client.ssl_object.session.has_ticket  # not processed yet
    client.decrypt()
    assert client.buffered == 0
    assert not client.at_eof and not client.close_notify_received and not client.ragged_eof
    assert client.ssl_object.session.has_ticket


def test_partial_sends_retry_the_same_bytes(socks, tls_server_context, tls_client_context):
    for sock in socks:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    server, client = engines(socks, tls_server_context, tls_client_context)
    pump(server, client)
    data = b"x" * 300_000
    assert server.encrypt(data) == len(data)
    assert not server.flush()  # far more than the socket buffers hold
    left = bytes(server.unsent)
    assert left and server.wants_flush
    # The next flush starts with exactly the bytes the kernel refused.
    sent_before = []
    real = socks[0].send

    class Recorder:
        def send(self, payload):
            sent_before.append(bytes(payload[:64]))
            return real(payload)

        def recv(self, size):
            return socks[0].recv(size)

    server._sock = Recorder()
    got = bytearray()
    for _ in range(10_000):
        client.receive()
        client.decrypt()
        got += client.read(1 << 20)
        server.flush()
        if len(got) >= len(data):
            break
    assert bytes(got) == data
    assert sent_before[0] == left[:64]


def test_close_notify_and_unwrap_return_the_plaintext_that_follows(
        socks, tls_server_context, tls_client_context):
    server, client = engines(socks, tls_server_context, tls_client_context)
    pump(server, client)
    transfer(server, client, b"")
    assert client.shutdown() is False  # close_notify sent, the server's awaited
    client.flush()
    server.receive()
    server.encrypt(b"late data")  # the peer may still send before answering
    assert server.shutdown() is True  # got the client's, sent its own
    server.flush()
    socks[0].send(b"PLAIN AFTER TLS")
    for _ in range(100):
        client.receive()
        if client.shutdown():
            break
    assert client.state == UNWRAPPED
    rest = client.unwrap_leftover()
    while len(rest) < len(b"PLAIN AFTER TLS"):
        rest += socks[1].recv(100)
    assert rest == b"PLAIN AFTER TLS"
    assert server.unwrap_leftover() == b""


def test_eof_without_close_notify_is_a_ragged_eof(socks, tls_server_context, tls_client_context):
    server, client = engines(socks, tls_server_context, tls_client_context)
    pump(server, client)
    transfer(client, server, b"last words")
    socks[1].shutdown(socket.SHUT_WR)
    server.receive()
    server.decrypt()
    assert server.eof_received and server.ragged_eof and not server.close_notify_received
    assert server.at_eof


def test_close_notify_is_a_clean_eof(socks, tls_server_context, tls_client_context):
    server, client = engines(socks, tls_server_context, tls_client_context)
    pump(server, client)
    client.shutdown()
    client.flush()
    server.receive()
    server.decrypt()
    assert server.close_notify_received and not server.ragged_eof and server.at_eof


def test_garbage_fails_the_handshake_with_an_ssl_error(socks, tls_server_context):
    server = TLSEngine(socks[0], tls_server_context, server_side=True)
    socks[1].send(b"GET / HTTP/1.0\r\n\r\n")
    server.receive()
    with pytest.raises(ssl.SSLError) as info:
        server.handshake()
    assert server.state == FAILED
    assert "HTTP" in str(info.value).upper()


def test_eof_during_the_handshake(socks, tls_server_context):
    server = TLSEngine(socks[0], tls_server_context, server_side=True)
    socks[1].close()
    server.receive()
    assert server.eof_received
    with pytest.raises(HandshakeEOFError):
        server.handshake()
    assert server.state == FAILED


def test_protocol_errors_are_not_os_errors(socks, tls_server_context, tls_client_context):
    """A broken record must never be read as an OS error: SSLError.errno is
    an OpenSSL code (SSL_ERROR_SSL is 1, EPERM's number)."""
    server, client = engines(socks, tls_server_context, tls_client_context)
    pump(server, client)
    transfer(server, client, b"")
    # An application-data record with a corrupt body.
    socks[1].send(b"\x17\x03\x03\x00\x20" + b"\x00" * 32)
    server.receive()
    with pytest.raises(TLSProtocolError) as info:
        server.decrypt()
    assert not isinstance(info.value, OSError)
    assert isinstance(info.value.ssl_error, ssl.SSLError)


def test_socket_errors_keep_their_errno(socks, tls_server_context, tls_client_context):
    server, client = engines(socks, tls_server_context, tls_client_context)
    pump(server, client)
    # Reset the peer: SO_LINGER 0 makes close() send a reset on TCP; on a
    # UNIX socket pair the error is EPIPE/ECONNRESET at send.
    socks[1].close()
    server.encrypt(b"x" * 100)
    with pytest.raises(OSError) as info:
        for _ in range(5):
            server.flush()
    assert not isinstance(info.value, ssl.SSLError)
    assert info.value.errno in (errno.EPIPE, errno.ECONNRESET)
