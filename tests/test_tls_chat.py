"""The chat server over TLS: in-process on every backend, and as
``python -m pollchat chat --certfile CERT --keyfile KEY``."""

import logging
import re
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time

import pytest

from pollchat.chatserver import ChatServer

pytestmark = pytest.mark.timeout(60)

WAIT = 10.0


class TLSLineClient:
    """A blocking TLS line client with bounded waits."""

    def __init__(self, port, context):
        raw = socket.create_connection(("127.0.0.1", port), timeout=WAIT)
        self.sock = context.wrap_socket(raw, server_hostname="localhost")
        self.buffer = b""

    def send(self, text):
        self.sock.sendall(text.encode() + b"\n")

    def line(self):
        deadline = time.monotonic() + WAIT
        while b"\r\n" not in self.buffer:
            assert time.monotonic() < deadline, f"no line; have {self.buffer!r}"
            data = self.sock.recv(65536)
            assert data, f"connection closed; have {self.buffer!r}"
            self.buffer += data
        line, self.buffer = self.buffer.split(b"\r\n", 1)
        return line.decode()

    def close(self):
        self.sock.close()


@pytest.fixture
def tls_chat(backend_name, tls_server_context):
    server = ChatServer("127.0.0.1", 0, backend=backend_name, ssl_context=tls_server_context)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.request_shutdown()
    thread.join(WAIT)
    assert not thread.is_alive()


def test_chat_over_tls(tls_chat, tls_client_context):
    a = TLSLineClient(tls_chat.address[1], tls_client_context)
    b = TLSLineClient(tls_chat.address[1], tls_client_context)
    try:
        assert "welcome to pollchat, guest1" in a.line()
        assert "welcome to pollchat, guest2" in b.line()
        assert a.line() == "* guest2 joined"
        a.send("over TLS")
        assert b.line() == "<guest1> over TLS"
    finally:
        a.close()
        b.close()


def test_a_plain_client_on_the_tls_port_never_joins(tls_chat, tls_client_context, caplog):
    caplog.set_level(logging.INFO, logger="pollchat")
    watcher = TLSLineClient(tls_chat.address[1], tls_client_context)
    try:
        assert "guest1" in watcher.line()
        plain = socket.create_connection(tls_chat.address, timeout=WAIT)
        plain.sendall(b"hello\r\n")
        assert plain.recv(100)[:1] in (b"", b"\x15")  # closed, maybe after a TLS alert
        plain.close()
        second = TLSLineClient(tls_chat.address[1], tls_client_context)
        # The plain client was never guest2, and nobody was told about it.
        assert "welcome to pollchat, guest2" in second.line()
        assert watcher.line() == "* guest2 joined"
        second.close()
    finally:
        watcher.close()
    assert any("handshake failed" in r.getMessage() for r in caplog.records)


def test_chat_command_serves_tls(tmp_path, tls_ca, tls_client_context):
    _, cert = tls_ca
    certfile, keyfile = tmp_path / "cert.pem", tmp_path / "key.pem"
    for pem in cert.cert_chain_pems:
        with open(certfile, "ab") as f:
            f.write(pem.bytes())
    cert.private_key_pem.write_to_path(str(keyfile))
    proc = subprocess.Popen([sys.executable, "-m", "pollchat", "chat", "--port", "0",
                             "--certfile", str(certfile), "--keyfile", str(keyfile)],
                            stderr=subprocess.PIPE, text=True)
    try:
        first = proc.stderr.readline()
        match = re.search(r"listening on 127\.0\.0\.1:(\d+) over TLS", first)
        assert match, first
        client = TLSLineClient(int(match.group(1)), tls_client_context)
        assert "welcome to pollchat, guest1" in client.line()
        client.close()
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(WAIT) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        proc.stderr.close()


@pytest.mark.parametrize("args, status, message", [
    (["--keyfile", "key.pem"], 2, "--keyfile needs --certfile"),
    (["--certfile", "/nonexistent/cert.pem"], 1, "cannot use the TLS certificate"),
])
def test_chat_command_tls_errors_are_one_line(args, status, message):
    proc = subprocess.run([sys.executable, "-m", "pollchat", "chat", "--port", "0", *args],
                          capture_output=True, text=True, timeout=30, check=False)
    assert proc.returncode == status
    assert message in proc.stderr
    assert "Traceback" not in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr


def test_chat_server_context_refuses_a_bad_key(tmp_path, tls_ca):
    from pollchat.tls import server_context

    _, cert = tls_ca
    certfile = tmp_path / "cert.pem"
    cert.cert_chain_pems[0].write_to_path(str(certfile))
    with pytest.raises(ssl.SSLError):
        server_context(str(certfile))  # no key in it
