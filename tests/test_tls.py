"""TLS on dispatchers and async_chat channels (pollchat.tls), on every
backend, over loopback: handshakes, data, the pending() trap, failures,
timeouts, close_notify, and many clients at once."""

import logging
import socket
import ssl

import pytest
from helpers import run_until
from tlsapps import LineClient, LineSession, Listener, Recorder

from pollchat import asyncore
from pollchat.backends import PRI, READ, WRITE
from pollchat.tlsengine import TLSEngine

pytestmark = pytest.mark.timeout(60)


def tls_session(context):
    return type("TLSSession", (LineSession,), {"context": context})


def test_echo_over_tls_with_alpn_and_peer_certificate(loop, tls_server_context,
                                                      tls_client_context):
    tls_server_context.set_alpn_protocols(["chat/1", "h2"])
    tls_client_context.set_alpn_protocols(["chat/1"])
    server = Listener(loop, tls_session(tls_server_context))
    client = LineClient(loop, server.address, tls_client_context)
    client.push(b"hello\n")  # queued until the handshake completed
    run_until(loop, lambda: client.lines)
    assert client.lines == [b"hello"]
    session = server.sessions[0]
    assert client.events[0][0] == "handshake" and session.events[0][0] == "handshake"
    assert client.events[0][2] == "chat/1" == session.events[0][2]
    assert client.events[0][1] in ("TLSv1.2", "TLSv1.3")
    cert = client.get_ssl_object().getpeercert()
    assert ("DNS", "localhost") in cert["subjectAltName"]
    assert not client.errors and not session.errors
    # Idle TLS channels cost nothing per pass: their interest is managed
    # (never polled), and nothing is left to re-sync.
    loop.run(timeout=0.01, count=3)
    stats = loop.statistics()
    assert stats["polled"] == 0 and stats["dirty"] == 0 and stats["ready"] == 0


def test_handshake_is_never_seen_by_a_plain_dispatcher(loop, tls_server_context,
                                                       tls_client_context):
    """handle_read() of a dispatcher runs only with decrypted data, after
    handle_handshake(); handle_write() only once the handshake is done."""
    calls = []

    class Raw(Recorder, asyncore.dispatcher):
        def __init__(self, server, sock):
            asyncore.dispatcher.__init__(self, sock, map=server.loop.map)
            self._init_recorder()
            self.start_tls(tls_server_context, server_side=True)

        def handle_handshake(self):
            calls.append("handshake")

        def handle_read(self):
            calls.append(("read", self.recv(4096)))

        def handle_write(self):
            calls.append("write")
            self.send(b"from server\n")

        def writable(self):
            return "write" not in calls

    server = Listener(loop, Raw)
    client = LineClient(loop, server.address, tls_client_context)
    client.push(b"abc\n")
    run_until(loop, lambda: client.lines and ("read", b"abc\n") in calls)
    assert calls[0] == "handshake"
    assert calls[1:] in (["write", ("read", b"abc\n")], [("read", b"abc\n"), "write"])
    assert client.lines == [b"from server"]


@pytest.mark.parametrize("side", ["server", "client"])
def test_64k_read_in_small_pieces_needs_no_further_traffic(loop, side, tls_server_context,
                                                           tls_client_context):
    """The pending() trap: decrypted bytes the program has not read yet are
    invisible to the kernel.  The sender sends 64 KiB once, then nothing;
    the reader reads 100 bytes per handle_read() and must still get it all."""
    message = bytes(range(256)) * 256  # 64 KiB
    received = bytearray()

    class SlowReader(LineSession):
        context = tls_server_context

        def handle_read(self):
            received.extend(self.recv(100))

    class Sender(LineSession):
        context = tls_server_context

        def handle_handshake(self):
            self.push(message)

    if side == "server":
        server = Listener(loop, SlowReader)
        client = LineClient(loop, server.address, tls_client_context)
        client.handle_handshake = lambda: client.push(message)
    else:
        server = Listener(loop, Sender)
        client = LineClient(loop, server.address, tls_client_context)
        client.handle_read = lambda: received.extend(client.recv(100))
    run_until(loop, lambda: len(received) >= len(message))
    assert bytes(received) == message


def deep_chain_contexts():
    """Contexts whose certificates come with a chain of RSA intermediates:
    handshake flights of tens of kilobytes, both ways (mutual TLS)."""
    import trustme

    root = trustme.CA(key_type=trustme.KeyType.RSA)
    ca = root
    for _ in range(8):
        ca = ca.create_child_ca(key_type=trustme.KeyType.RSA)
    server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("localhost", key_type=trustme.KeyType.RSA).configure_cert(server_context)
    server_context.verify_mode = ssl.CERT_REQUIRED
    root.configure_trust(server_context)
    client_context = ssl.create_default_context()
    root.configure_trust(client_context)
    ca.issue_cert("client.example", key_type=trustme.KeyType.RSA).configure_cert(client_context)
    return server_context, client_context


def test_handshake_through_tiny_socket_buffers(loop, monkeypatch):
    """A mutual-TLS handshake with long certificate chains both ways,
    through socket buffers far smaller than its flights: many partial
    sends, each retried when the socket is writable again."""
    tls_server_context, tls_client_context = deep_chain_contexts()
    partial = []
    real_flush = TLSEngine.flush

    def flush(engine):
        done = real_flush(engine)
        if not done:
            partial.append(engine)
        return done

    monkeypatch.setattr(TLSEngine, "flush", flush)
    server = Listener(loop, tls_session(tls_server_context), rcvbuf=1024, sndbuf=1024)
    client = LineClient(loop, server.address, tls_client_context, rcvbuf=1024)
    client.socket.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 1024)
    client.push(b"through\n")
    run_until(loop, lambda: client.lines)
    assert client.lines == [b"through"]
    assert partial, "the buffers were not small enough to split a flight"
    peer = server.sessions[0].get_ssl_object().getpeercert()
    assert ("DNS", "client.example") in peer["subjectAltName"]


def test_session_tickets_after_the_handshake_are_not_an_eof(loop, tls_server_context,
                                                            tls_client_context):
    tls_client_context.minimum_version = ssl.TLSVersion.TLSv1_3
    reads = []
    server = Listener(loop, tls_session(tls_server_context))
    client = LineClient(loop, server.address, tls_client_context)
    client.handle_read = lambda: reads.append(client.recv(100))
    run_until(loop, lambda: client.events and client.get_ssl_object().session.has_ticket)
    loop.run(timeout=0.05, count=5)
    assert reads == []  # the tickets were no data, and no end of stream
    assert client.connected and client.socket is not None and client.socket.fileno() >= 0
    server.sessions[0].push(b"now data\n")
    run_until(loop, lambda: reads)
    assert reads == [b"now data\n"]


def test_close_sends_close_notify(loop, tls_server_context, tls_client_context):
    clean = []

    class Closer(LineSession):
        context = tls_server_context

        def reply(self, line):
            self.push(b"bye\n")
            self.close_when_done()

    server = Listener(loop, Closer)
    client = LineClient(loop, server.address, tls_client_context)

    def handle_close():
        clean.append(client._pc_tls.engine.close_notify_received)
        client.close()

    client.handle_close = handle_close
    client.push(b"quit\n")
    run_until(loop, lambda: clean)
    assert client.lines == [b"bye"]
    assert clean == [True]


def test_graceful_close_sends_everything_first(loop, tls_server_context, tls_client_context):
    """push() of more than the socket buffers hold, then close_when_done():
    the peer gets every byte before the close (handle_write() waits until
    the encrypted bytes of earlier sends are all in the kernel)."""
    big = b"y" * (2 * 1024 * 1024 - 1) + b"\n"

    class Bulk(LineSession):
        context = tls_server_context

        def reply(self, line):
            self.push(big)
            self.close_when_done()

    server = Listener(loop, Bulk, sndbuf=8192)
    client = LineClient(loop, server.address, tls_client_context, rcvbuf=8192)
    client.push(b"go\n")
    run_until(loop, lambda: ("close",) in client.events)
    assert client.lines == [big[:-1]]


def test_write_interest_is_withheld_during_the_handshake(loop, tls_server_context):
    """A channel that wants to write must not spin on WRITE events while the
    handshake waits for the peer."""
    listener = Listener(loop, tls_session(tls_server_context))
    raw = socket.create_connection(listener.address)
    try:
        run_until(loop, lambda: listener.sessions)
        session = listener.sessions[0]
        session.push(b"queued before the handshake\n")
        loop.run_once(0.01)
        fd = session._fileno
        assert session._pc_withheld_interest & WRITE
        assert loop.registered_events(fd) & (READ | WRITE) == READ  # no WRITE: nothing to flush
        assert not loop.registered_events(fd) & PRI
    finally:
        raw.close()


def test_handshake_failures_are_one_log_line(loop, caplog, capsys, fd_leak_check,
                                             tls_server_context):
    """A port scanner (connect, close), a plain-TCP client, and garbage: each
    closes its session quietly with one log line, no traceback, no leak."""
    caplog.set_level(logging.INFO, logger="pollchat")
    server = Listener(loop, tls_session(tls_server_context))
    scanner = socket.create_connection(server.address)
    scanner.close()
    plain = socket.create_connection(server.address)
    plain.sendall(b"HELO example.com\r\n")
    garbage = socket.create_connection(server.address)
    garbage.sendall(bytes(range(256)) * 4)
    try:
        run_until(loop, lambda: len(server.sessions) == 3
                  and all(s.socket.fileno() < 0 for s in server.sessions))
    finally:
        plain.close()
        garbage.close()
    failures = [r for r in caplog.records if "handshake failed" in r.getMessage()]
    assert len(failures) == 3, [r.getMessage() for r in caplog.records]
    assert not any(r.exc_info for r in caplog.records)
    for session in server.sessions:
        assert not session.errors
        assert [e[0] for e in session.events] == ["handshake_failed"]
    out, err = capsys.readouterr()
    assert "Traceback" not in out + err
    server.close()


def test_handshake_timeout(loop, caplog, fd_leak_check, tls_server_context):
    caplog.set_level(logging.INFO, logger="pollchat")

    class Impatient(LineSession):
        def __init__(self, server, sock):
            super().__init__(server, sock)
            self.start_tls(tls_server_context, server_side=True, handshake_timeout=0.2)

    server = Listener(loop, Impatient)
    silent = socket.create_connection(server.address)
    try:
        run_until(loop, lambda: server.sessions and server.sessions[0].socket.fileno() < 0)
    finally:
        silent.close()
    event = server.sessions[0].events[0]
    assert event[0] == "handshake_failed" and isinstance(event[1], TimeoutError)
    assert any("not complete after 0.2 s" in r.getMessage() for r in caplog.records)
    server.close()


def test_many_concurrent_clients_leave_no_fd_behind(loop, fd_leak_check, tls_server_context,
                                                    tls_client_context):
    clients_wanted = 200
    server = Listener(loop, tls_session(tls_server_context))
    clients = []
    for n in range(clients_wanted):
        client = LineClient(loop, server.address, tls_client_context)
        client.push(b"client %d\n" % n)
        client.on_line = lambda line, c=client: c.close()
        clients.append(client)
    run_until(loop, lambda: all(c.lines for c in clients), timeout=60)
    assert sorted(c.lines[0] for c in clients) == sorted(b"client %d" % n
                                                          for n in range(clients_wanted))
    for session in server.sessions:
        session.close()
    server.close()
    assert not loop.map
    assert not any(c.errors for c in clients)


def test_start_tls_refuses_misuse(loop, tls_server_context, tls_client_context):
    listener = Listener(loop, LineSession)
    with pytest.raises(TypeError, match="SSLContext"):
        listener.start_tls("not a context")
    with pytest.raises(ValueError, match="listening"):
        listener.start_tls(tls_server_context, server_side=True)
    client = LineClient(loop, listener.address)
    with pytest.raises(ValueError, match="positive"):
        client.start_tls(tls_client_context, server_hostname="localhost", handshake_timeout=0)
    with pytest.raises(ValueError, match="server_hostname"):
        client.start_tls(tls_client_context)  # the context checks host names
    client.start_tls(tls_client_context, server_hostname="localhost")
    with pytest.raises(ValueError, match="already"):
        client.start_tls(tls_client_context, server_hostname="localhost")
    with pytest.raises(ValueError, match="established"):
        LineClient(loop, listener.address).unwrap_tls()


def test_renegotiation_is_refused_on_server_contexts_unless_allowed(loop, tls_server_context):
    flag = ssl.OP_NO_RENEGOTIATION
    tls_server_context.options &= ~flag
    permissive = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    permissive.options &= ~flag
    server = Listener(loop, LineSession)
    a = socket.create_connection(server.address)
    b = socket.create_connection(server.address)
    try:
        run_until(loop, lambda: len(server.sessions) == 2)
        server.sessions[0].start_tls(tls_server_context, server_side=True)
        server.sessions[1].start_tls(permissive, server_side=True, allow_renegotiation=True)
        assert tls_server_context.options & flag
        assert not permissive.options & flag
    finally:
        a.close()
        b.close()


def test_client_refuses_an_untrusted_server(loop, caplog, fd_leak_check, tls_server_context):
    """The client's handle_handshake_failed() gets the verification error,
    with OpenSSL's reason; the server logs one line; nothing leaks."""
    caplog.set_level(logging.INFO, logger="pollchat")
    server = Listener(loop, tls_session(tls_server_context))
    client = LineClient(loop, server.address, ssl.create_default_context())
    run_until(loop, lambda: client.events and server.sessions and server.sessions[0].events)
    kind, exc = client.events[0]
    assert kind == "handshake_failed" and isinstance(exc, ssl.SSLCertVerificationError)
    assert server.sessions[0].events[0][0] == "handshake_failed"
    messages = [r.getMessage() for r in caplog.records]
    assert any("certificate verify failed" in m for m in messages), messages
    assert client.socket.fileno() < 0
    run_until(loop, lambda: server.sessions[0].socket.fileno() < 0)
    server.close()
