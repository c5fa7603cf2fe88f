"""The chat server on its bad days: clients that vanish, alone or in a
crowd, clients that stop reading, more than FD_SETSIZE clients, and running
out of file descriptors.  The server keeps serving, says what happened in
one log line per departure, and never recurses."""

import logging
import socket
import sys
import textwrap
import threading
import time

import pytest
from helpers import WAIT, ChatClient, Proc

from pollchat import chatserver
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


@pytest.fixture
def fd_room():
    """A factory: ``fd_room(n)`` makes sure the soft open-file limit allows
    ``n`` open files, raising it (up to the hard limit) if needed; skips when
    the hard limit is too low.  The old limit is restored at teardown."""
    resource = pytest.importorskip("resource")
    saved = resource.getrlimit(resource.RLIMIT_NOFILE)

    def room(n):
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        if soft != resource.RLIM_INFINITY and soft < n:
            if hard != resource.RLIM_INFINITY and hard < n:
                pytest.skip(f"needs {n} open files; the hard limit is {hard}")
            resource.setrlimit(resource.RLIMIT_NOFILE, (n, hard))

    yield room
    resource.setrlimit(resource.RLIMIT_NOFILE, saved)


def _hold_the_loop(server):
    """Block ``server``'s loop (inside a callback) until the returned
    event is set: whatever the test does meanwhile reaches the server as one
    batch of events."""
    held, release = threading.Event(), threading.Event()

    def hold():
        held.set()
        release.wait(WAIT)

    server.loop.call_soon_threadsafe(hold)
    assert held.wait(WAIT), "the server's loop did not run the callback"
    return release


@pytest.mark.timeout(120)
def test_a_crowd_resetting_at_once_is_announced_without_recursion(
        start_chat_server, chat_client, fd_room, caplog):
    # Each reset client found by a broadcast used to be closed inside it,
    # and its own "left" broadcast found the next one: one level of
    # recursion per client, a RecursionError past ~150, and thousands of
    # log lines.
    count = 300
    fd_room(2 * count + 200)  # both ends of each connection live here
    caplog.set_level(logging.INFO, logger="pollchat")
    server = start_chat_server()
    watchers = [chat_client(server) for _ in range(3)]
    crowd = [chat_client(server) for _ in range(count)]
    for watcher in watchers:
        watcher.sync()  # every join notice read
    caplog.clear()
    release = _hold_the_loop(server)
    for client in crowd:
        client.reset()
    release.set()
    expected = {f"* {client.nick} left (connection closed)" for client in crowd}
    for watcher in watchers:
        seen = set()
        deadline = time.monotonic() + 60
        while seen != expected:
            assert time.monotonic() < deadline, f"{len(expected - seen)} notices missing"
            line = watcher.line()
            assert line in expected and line not in seen, line
            seen.add(line)
        assert watcher.sync() == []  # nothing else, nothing twice
    assert server.nicks() == sorted((w.nick for w in watchers), key=str.casefold)
    records = [r for r in caplog.records if r.name.startswith("pollchat")]
    assert not [r for r in records if r.exc_info], "an exception was logged"
    departures = [r for r in records if " disconnected from " in r.getMessage()]
    assert len(departures) == count
    assert len(records) <= count + 5, [r.getMessage() for r in records[:20]]


def test_a_newcomer_is_told_of_a_departure_only_if_it_saw_that_client(
        start_chat_server, chat_client):
    # Departures are announced after the pass's handlers ran, so a client
    # that joined in the same pass, after the departure, must not get the
    # notice of someone its welcome did not list.  (With epoll the reset is
    # dispatched before the accept here; select and poll go by fd number,
    # so they accept first, and the newcomer does see the leaver.)
    server = start_chat_server()
    watcher, leaver = chat_client(server), chat_client(server)
    watcher.sync()
    release = _hold_the_loop(server)
    leaver.reset()
    newcomer = chat_client(server, read_welcome=False)
    release.set()
    newcomer.read_welcome()
    saw_leaver = leaver.nick in newcomer.welcome
    told = [line for line in newcomer.sync() if " left " in line]
    assert told == ([f"* {leaver.nick} left (connection closed)"] if saw_leaver else [])
    watcher.expect(f"* {leaver.nick} left (connection closed)")


EMFILE_CHAT_SERVER = textwrap.dedent("""
    import logging, resource, sys
    from pollchat.chatserver import ChatServer

    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(name)s: %(message)s")
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (int(sys.argv[2]), hard))
    server = ChatServer("127.0.0.1", 0, backend=sys.argv[1])
    print(server.address[1], flush=True)
    server.serve_forever()
""")


@pytest.mark.timeout(90)
def test_after_running_out_of_fds_the_server_accepts_again(backend_name, standin):
    # ChatServer once had a _resume_accepting() of its own, which shadowed
    # the library's: the back-off timer raised TypeError, and the listener
    # stayed paused for good after one EMFILE.
    if standin:
        pytest.skip("the server runs in a subprocess, where the stand-ins are not installed")
    fd_limit = 40
    proc = Proc([sys.executable, "-c", EMFILE_CHAT_SERVER, backend_name, str(fd_limit)])
    try:
        port = int(proc.wait_for(r"^(\d+)$").group(1))
        first = ChatClient(port)
        crowd = [socket.create_connection(("127.0.0.1", port), timeout=WAIT)
                 for _ in range(fd_limit + 10)]
        proc.wait_for("cannot accept: Too many open files", stream="err")
        for sock in crowd:
            sock.close()
        # Once the crowd's fds are free again, a newcomer is served.
        late = ChatClient(port)
        late.send("hello")
        first.expect(f"<{late.nick}> hello")
        proc.wait_for("accepts connections again", stream="err")
    finally:
        proc.kill()
    assert "Traceback" not in "".join(proc.err), "".join(proc.err)


def test_an_error_in_the_listener_pauses_accepting_then_it_serves_again(
        start_chat_server, chat_client, monkeypatch, caplog):
    pause = 0.5
    monkeypatch.setattr(chatserver, "LISTENER_ERROR_PAUSE", pause)
    caplog.set_level(logging.INFO, logger="pollchat")
    server = start_chat_server()
    join, joins = server.join, []

    def join_failing_once(session):
        joins.append(session)
        if len(joins) == 1:
            raise RuntimeError("a bug in join()")
        join(session)

    server.join = join_failing_once
    with socket.create_connection(server.address, timeout=WAIT) as unlucky:
        assert unlucky.recv(100) == b""  # its half-made session was closed
    failed_at = time.monotonic()
    client = chat_client(server)  # waits in the kernel's queue during the pause
    assert time.monotonic() - failed_at >= pause * 0.8
    assert client.nick == "guest1" and server.nicks() == ["guest1"]
    errors = [r for r in caplog.records if "error in the listener" in r.getMessage()]
    assert len(errors) == 1 and errors[0].exc_info[0] is RuntimeError
