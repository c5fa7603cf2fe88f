"""pollchat.smtpd under load and with a real command-line client: 500
sessions open at once on epoll, and Debian's swaks on every backend."""

from __future__ import annotations

import shutil
import socket
import subprocess

import pytest
from helpers import run_until
from smtp_support import LOCALHOST, port_of, start_server, transaction

import pollchat
from pollchat import asyncore, backends

try:
    import resource
except ImportError:  # pragma: no cover - not POSIX
    resource = None

SESSIONS = 500


@pytest.fixture
def nofile_for_sessions():
    """Room for SESSIONS client and server sockets: the soft RLIMIT_NOFILE
    raised for the test where it is too low, restored afterwards."""
    if resource is None:
        pytest.skip("no resource module (not POSIX)")
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    need = 2 * SESSIONS + 200
    if soft != resource.RLIM_INFINITY and soft < need:
        if hard != resource.RLIM_INFINITY and hard < need:
            pytest.skip(f"the hard open-file limit ({hard}) is below the {need} this test needs")
        resource.setrlimit(resource.RLIMIT_NOFILE, (need, hard))
    yield
    resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


@pytest.mark.timeout(120)
@pytest.mark.skipif("epoll" not in backends.available_backends(),
                    reason="epoll is Linux's: this test is about epoll")
def test_500_concurrent_sessions_on_epoll(nofile_for_sessions):
    loop = pollchat.Loop("epoll")
    clients = []
    try:
        server = start_server(loop)
        address = (LOCALHOST, port_of(server))
        # Connect in batches: beyond the listen backlog the kernel drops SYNs.
        for _ in range(0, SESSIONS, 50):
            for _ in range(50):
                sock = socket.socket()
                sock.setblocking(False)
                sock.connect_ex(address)
                clients.append(sock)
            run_until(loop, lambda: len(loop.map) == 1 + len(clients), timeout=30)
        assert len(loop.map) == 1 + SESSIONS  # every session open at the same time
        received = {sock: b"" for sock in clients}
        run_until(loop, lambda: all(data.endswith(b"\r\n") for data in received.values()),
                  between=lambda: _read_all(received), timeout=30)
        assert all(data.startswith(b"220 ") for data in received.values())
        for number, sock in enumerate(clients):
            sock.send(transaction(f"sender{number}@example.com", [f"rcpt{number}@example.com"],
                                  f"Subject: {number}\r\n\r\nmessage {number}".encode()))
        open_clients = set(clients)
        run_until(loop, lambda: not open_clients, timeout=60,
                  between=lambda: _read_all(received, open_clients))
        for data in received.values():
            assert data.endswith(b"250 OK\r\n221 Bye\r\n"), data[-200:]
        assert sorted((m.mailfrom, m.rcpttos, m.data) for m in server.messages) == sorted(
            (f"sender{n}@example.com", [f"rcpt{n}@example.com"],
             f"Subject: {n}\n\nmessage {n}".encode()) for n in range(SESSIONS))
        assert len(loop.map) == 1  # every session closed after QUIT
    finally:
        for sock in clients:
            sock.close()
        asyncore.close_all(loop.map, ignore_all=True)
        loop.close()


def _read_all(received, still_open=None):
    for sock in list(still_open if still_open is not None else received):
        try:
            data = sock.recv(65536)
        except BlockingIOError:
            continue
        received[sock] += data
        if not data and still_open is not None:
            still_open.discard(sock)


# -- swaks ---------------------------------------------------------------------------------

SWAKS = shutil.which("swaks")


@pytest.mark.skipif(SWAKS is None, reason="swaks is not installed (Debian: apt-get install "
                    "swaks; .ci/run installs it where apt-get works)")
@pytest.mark.parametrize("protocol", ["ESMTP", "SMTP"])
def test_swaks_delivers(loop, protocol):
    server = start_server(loop)
    command = [SWAKS, "--server", LOCALHOST, "--port", str(port_of(server)),
               "--protocol", protocol, "--helo", "client.example", "--timeout", "20",
               "--from", "alice@example.com", "--to", "bob@example.com,carol@example.com",
               "--header", "Subject: from swaks",
               "--body", "hello from swaks\n.a line starting with a dot\nh\u00e9"]
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        run_until(loop, lambda: proc.poll() is not None, timeout=30)
        transcript = proc.stdout.read().decode("utf-8", "replace")
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(10)
        proc.stdout.close()
    assert proc.returncode == 0, transcript
    assert "<-  221 Bye" in transcript
    greeting = "EHLO" if protocol == "ESMTP" else "HELO"
    assert f" -> {greeting} client.example" in transcript
    [message] = server.messages
    assert message.mailfrom == "alice@example.com"
    assert message.rcpttos == ["bob@example.com", "carol@example.com"]
    headers, _, body = message.data.partition(b"\n\n")
    assert b"Subject: from swaks" in headers.split(b"\n")
    assert body.startswith("hello from swaks\n.a line starting with a dot\nh\u00e9".encode())
