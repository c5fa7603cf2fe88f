"""STARTTLS and unwrap (pollchat.tls) on every backend: a plaintext line
protocol that upgrades in the middle, pipelined plaintext discarded, the
announcing reply sent whole before the upgrade, and back to plaintext."""

import logging
import socket
import ssl

import pytest
from helpers import run_until
from tlsapps import BIOClient, LineClient, LineSession, Listener

pytestmark = pytest.mark.timeout(60)


def starttls_session(context, reply_size=0):
    """A plaintext session that answers ``STARTTLS`` with ``220 go ahead``
    (preceded by ``reply_size`` bytes of filler lines) and upgrades."""

    class Session(LineSession):
        def reply(self, line):
            if line == b"STARTTLS":
                for _ in range(reply_size // 1000):
                    self.push(b"-" * 999 + b"\n")
                self.push(b"220 go ahead\n")
                self.start_tls(context, server_side=True)
            elif line == b"UNWRAP":
                self.push(b"200 back to plaintext\n")
                self.unwrap_tls()
            else:
                state = "tls" if self.get_ssl_object() is not None else "plain"
                self.push(b"%s %s\n" % (state.encode(), line))

    return Session


def starttls_client(loop, address, context, *, first=b"STARTTLS\n", after=b"HELLO\n",
                    rcvbuf=None):
    """A client that sends ``first``; upgrades at ``220``; sends ``after``."""
    client = LineClient(loop, address, rcvbuf=rcvbuf)

    def on_line(line):
        if line.startswith(b"220"):
            client.start_tls(context, server_hostname="localhost")
            client.push(after)  # goes out once the handshake completed

    client.on_line = on_line
    client.push(first)
    return client


def test_starttls_upgrades_mid_stream(loop, tls_server_context, tls_client_context):
    server = Listener(loop, starttls_session(tls_server_context))
    client = LineClient(loop, server.address)
    client.push(b"PLAIN\n")
    run_until(loop, lambda: client.lines)
    client.on_line = lambda line: (client.start_tls(tls_client_context,
                                                    server_hostname="localhost")
                                   if line.startswith(b"220") else None)
    client.push(b"STARTTLS\n")
    run_until(loop, lambda: client.events)
    client.push(b"SECRET\n")
    run_until(loop, lambda: len(client.lines) == 3)
    assert client.lines == [b"plain PLAIN", b"220 go ahead", b"tls SECRET"]
    assert client.events[0][0] == "handshake"
    assert server.sessions[0].events[0][0] == "handshake"


def test_plaintext_pipelined_after_starttls_is_discarded(loop, caplog, tls_server_context,
                                                        tls_client_context):
    """The command-injection hole: plaintext sent in the same packet as
    STARTTLS must never be executed, before or after the upgrade."""
    caplog.set_level(logging.WARNING, logger="pollchat")
    server = Listener(loop, starttls_session(tls_server_context))
    client = starttls_client(loop, server.address, tls_client_context,
                             first=b"STARTTLS\nINJECTED\n")
    run_until(loop, lambda: len(client.lines) >= 2)
    session = server.sessions[0]
    assert session.lines == [b"STARTTLS", b"HELLO"]
    assert client.lines == [b"220 go ahead", b"tls HELLO"]
    assert any("discarding 9 bytes" in r.getMessage() for r in caplog.records)


def test_plaintext_arriving_before_the_reply_is_out_is_never_executed(
        loop, tls_server_context, tls_client_context):
    """A reply larger than one send: the upgrade waits for it, and a command
    sent meanwhile in plaintext stays unread, then fails the handshake."""
    server = Listener(loop, starttls_session(tls_server_context, reply_size=300_000),
                      sndbuf=4096)
    injector = socket.create_connection(server.address)
    injector.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    try:
        injector.sendall(b"STARTTLS\n")
        run_until(loop, lambda: server.sessions and server.sessions[0].lines)
        session = server.sessions[0]
        loop.run(timeout=0.01, count=5)
        assert session.producer_fifo, "the reply went out at once: make it larger"
        injector.sendall(b"INJECTED\n")
        loop.run(timeout=0.01, count=5)
        # Drain the reply: the upgrade starts; the pending plaintext is then
        # read as a (broken) handshake, never as a command.
        injector.settimeout(0.01)
        got = b""

        def drain():
            nonlocal got
            try:
                got += injector.recv(65536)
            except socket.timeout:
                pass

        run_until(loop, lambda: session.socket.fileno() < 0, between=drain)
        assert session.lines == [b"STARTTLS"]
        assert session.events[0][0] == "handshake_failed"
        assert b"220 go ahead\n" in got
    finally:
        injector.close()


def test_the_announcing_reply_is_sent_whole_before_tls(loop, tls_server_context,
                                                       tls_client_context):
    server = Listener(loop, starttls_session(tls_server_context, reply_size=500_000),
                      sndbuf=8192)
    client = starttls_client(loop, server.address, tls_client_context, rcvbuf=8192)
    run_until(loop, lambda: client.lines and client.lines[-1] == b"tls HELLO")
    assert client.lines[-2] == b"220 go ahead"
    assert client.lines[:-2] == [b"-" * 999] * 500


def test_unwrap_then_plaintext_continues(loop, tls_server_context, tls_client_context):
    server = Listener(loop, starttls_session(tls_server_context))
    client = starttls_client(loop, server.address, tls_client_context)
    run_until(loop, lambda: client.lines[-1:] == [b"tls HELLO"])

    def on_line(line):
        if line.startswith(b"200"):
            client.unwrap_tls()

    client.on_line = on_line
    client.handle_unwrapped = lambda: (client.events.append(("unwrapped",)),
                                       client.push(b"AFTER\n"))
    client.push(b"UNWRAP\n")
    run_until(loop, lambda: client.lines[-1:] == [b"plain AFTER"])
    session = server.sessions[0]
    assert ("unwrapped",) in client.events and ("unwrapped",) in session.events
    assert client.get_ssl_object() is None and session.get_ssl_object() is None
    assert client._pc_tls is None and session._pc_tls is None
    # Really plaintext on the wire now: the same channel can upgrade again.
    client.on_line = lambda line: (client.start_tls(tls_client_context,
                                                    server_hostname="localhost")
                                   if line.startswith(b"220") else None)
    client.push(b"STARTTLS\n")
    run_until(loop, lambda: len([e for e in client.events if e[0] == "handshake"]) == 2)
    client.push(b"AGAIN\n")
    run_until(loop, lambda: client.lines[-1:] == [b"tls AGAIN"])


def test_unwrap_gives_up_when_the_peer_does_not_answer(loop, caplog, tls_server_context,
                                                       tls_client_context):
    caplog.set_level(logging.INFO, logger="pollchat")

    class Quick(LineSession):
        def __init__(self, server, sock):
            super().__init__(server, sock)
            self.start_tls(tls_server_context, server_side=True, shutdown_timeout=0.2)

        def reply(self, line):
            self.push(b"ok\n")
            self.unwrap_tls()

    server = Listener(loop, Quick)
    client = BIOClient(tls_client_context, server.address)  # completes the handshake only
    try:
        run_until(loop, lambda: client.handshake_done and server.sessions
                  and server.sessions[0].events, between=client.pump)
        client.send(b"unwrap please\n")
        run_until(loop, lambda: ("close",) in server.sessions[0].events)
    finally:
        client.close()
    assert any("no close_notify from the peer within 0.2 s" in r.getMessage()
               for r in caplog.records)


def unwrap_with_plaintext_behind(loop, tls_server_context, tls_client_context, plain_after,
                                 in_buffer=65536):
    """STARTTLS, then UNWRAP from a hand-driven client that sends its
    close_notify and ``plain_after`` in one send.  Returns (session, client)
    once the server processed the first line of ``plain_after``."""
    session_class = starttls_session(tls_server_context)
    session_class.ac_in_buffer_size = in_buffer
    server = Listener(loop, session_class)
    raw = socket.create_connection(server.address)
    raw.sendall(b"STARTTLS\n")
    run_until(loop, lambda: server.sessions and server.sessions[0].lines)
    got = b""
    while b"220 go ahead\n" not in got:
        got += raw.recv(100)
    client = BIOClient(tls_client_context, sock=raw)
    session = server.sessions[0]
    try:
        run_until(loop, lambda: client.handshake_done and session.events, between=client.pump)
        client.send(b"UNWRAP\n")
        run_until(loop, lambda: session.lines[-1:] == [b"UNWRAP"], between=client.pump)
        # The server answered and sent close_notify; answer with ours and,
        # in the same send, the first plaintext command.
        def unwrapped():
            client.pump()
            try:
                client.obj.read(1000)
            except (ssl.SSLWantReadError, ssl.SSLZeroReturnError):
                pass
            try:
                client.obj.unwrap()
                return True
            except ssl.SSLWantReadError:
                return False

        run_until(loop, unwrapped)
        client.send(b"", plain_after=plain_after)
        run_until(loop, lambda: session.lines[-1:] == [plain_after.split(b"\n")[0]])
        assert ("unwrapped",) in session.events
    except BaseException:
        raw.close()
        raise
    return session, client


def test_plaintext_right_after_the_peers_close_notify_is_delivered(loop, tls_server_context,
                                                                   tls_client_context):
    """The peer's close_notify and its first plaintext arrive in one read:
    the plaintext is not lost in TLS's buffers, nor taken for TLS."""
    session, client = unwrap_with_plaintext_behind(loop, tls_server_context,
                                                   tls_client_context, b"PLAIN AGAIN\n")
    client.close()
    assert session.get_ssl_object() is None


@pytest.mark.parametrize("in_buffer", [65536, 4])
def test_starttls_again_right_behind_the_peers_close_notify(loop, caplog, in_buffer,
                                                            tls_server_context,
                                                            tls_client_context):
    """STARTTLS sent in the same packet as the close_notify that ended the
    previous TLS session: the server upgrades again; what followed the
    command in that packet is discarded as pipelined plaintext, whether the
    program had read it (ac_in_buffer) or not (a 4-byte ac_in_buffer_size
    leaves it with the unwrapped transport)."""
    caplog.set_level(logging.WARNING, logger="pollchat")
    session, client = unwrap_with_plaintext_behind(
        loop, tls_server_context, tls_client_context, b"STARTTLS\nINJECTED\n", in_buffer)
    raw = client.sock
    got = b""

    def read_reply():
        nonlocal got
        try:
            got += raw.recv(100)
        except BlockingIOError:
            pass

    run_until(loop, lambda: b"220 go ahead\n" in got, between=read_reply)
    again = BIOClient(tls_client_context, sock=raw)
    try:
        run_until(loop, lambda: again.handshake_done
                  and [e[0] for e in session.events].count("handshake") == 2,
                  between=again.pump)
        again.send(b"SECOND\n")
        run_until(loop, lambda: session.lines[-1:] == [b"SECOND"], between=again.pump)
    finally:
        raw.close()
    assert b"INJECTED" not in session.lines
    assert any("discarding 9 bytes" in r.getMessage() for r in caplog.records)
