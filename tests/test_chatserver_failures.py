"""The chat server on its bad days: clients that vanish, alone or in a
crowd, clients that stop reading, more than FD_SETSIZE clients, and running
out of file descriptors.  The server keeps serving, says what happened in
one log line per departure, and never recurses."""

import socket
import threading
import time

import pytest
from helpers import WAIT, ChatClient

from pollchat.chatserver import ChatServer

pytestmark = pytest.mark.timeout(60)


def test_abrupt_disconnects(start_chat_server, chat_client):
    server = start_chat_server()
    a, b, c = chat_client(server), chat_client(server), chat_client(server)
    a.sync()
    b.sync()
    b.send("/nick bob")
    assert a.line() == "* guest2 is now bob"
    b.send_raw(b"half a li")  # pending input, then an RST
    b.reset()
    assert a.line() == "* bob left (connection closed)"
    assert c.expect("* bob left (connection closed)") == ["* guest2 is now bob"]
    c.close()  # a plain FIN, without /quit
    assert a.line() == "* guest3 left (connection closed)"
    # The server carries on: new clients, broadcasts.
    d = chat_client(server)
    assert a.line() == f"* {d.nick} joined"
    a.send("still here")
    assert d.line() == "<guest1> still here"
    assert server.nicks() == ["guest1", d.nick]


def test_many_abrupt_disconnects_at_once(start_chat_server, chat_client):
    server = start_chat_server()
    watcher = chat_client(server)
    crowd = [chat_client(server) for _ in range(20)]
    watcher.sync()
    for client in crowd:
        client.reset()
    left = set()
    deadline = time.monotonic() + WAIT
    while len(left) < len(crowd) and time.monotonic() < deadline:
        line = watcher.line()
        if line.endswith(" left (connection closed)"):
            left.add(line.split()[1])
    assert left == {client.nick for client in crowd}
    assert server.nicks() == ["guest1"]


def test_client_that_stops_reading_is_dropped(start_chat_server, chat_client):
    # The kernel buffers a few megabytes for the slow client before lines
    # start to queue in the server: long lines get there sooner.
    server = start_chat_server(max_backlog=20, max_line=16384)
    slow = chat_client(server, rcvbuf=4096)
    talker = chat_client(server)
    assert slow.line() == f"* {talker.nick} joined"
    line = "x" * 16000
    deadline = time.monotonic() + 40
    dropped = False
    sent = 0
    while not dropped and time.monotonic() < deadline:
        for _ in range(20):
            talker.send(line)
        sent += 20
        talker.send("/who")
        while True:
            reply = talker.line()
            if reply == f"* {slow.nick} left (too slow: not reading)":
                dropped = True
            if reply.startswith("* ") and " online: " in reply:
                break
    assert dropped, f"not dropped after {sent} lines"
    assert server.nicks() == [talker.nick]


@pytest.mark.timeout(180)
def test_more_than_1024_clients():
    import pollchat
    from pollchat import backends

    count = 1100  # 2 fds each in this process: the server's end and the client's
    pollchat.raise_fd_limit()  # as pollchat run and pollchat chat do
    soft, _ = backends.fd_limits()
    if soft is not None and soft < 2 * count + 200:
        pytest.skip(f"the open-file limit ({soft}) is too low for {count} clients")
    server = ChatServer("127.0.0.1", 0, backend=backends.best_backend(), listen_backlog=2048)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    socks = []
    try:
        for _ in range(count):
            socks.append(socket.create_connection(server.address, timeout=WAIT))
        first, last = ChatClient(server.address[1]), ChatClient(server.address[1])
        socks += [first.sock, last.sock]
        assert last.nick == f"guest{count + 2}"
        assert max(session._fileno for session in server.sessions.values()) > 1024
        first.send("hello, crowd")
        last.expect(f"<{first.nick}> hello, crowd")
        last.send("/who")
        line = last.line()
        assert line.startswith(f"* {count + 2} online: ")
    finally:
        server.request_shutdown()
        thread.join(WAIT * 3)
        for sock in socks:
            sock.close()
    assert not thread.is_alive()
