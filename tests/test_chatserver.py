"""The chat server (pollchat.chatserver) over real loopback sockets: several
clients, broadcast order, nick changes, long lines, abrupt disconnects,
shutdown; in-process on every backend, and as ``python -m pollchat chat``."""

import os
import re
import signal
import socket
import struct
import subprocess
import sys
import threading
import time

import pytest

from pollchat.chatserver import ChatServer, valid_nick

pytestmark = pytest.mark.timeout(60)

WAIT = 10.0  # seconds: the most any single expected line may take


class Client:
    """A blocking line client with bounded waits."""

    def __init__(self, port, host="127.0.0.1", rcvbuf=None):
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        if rcvbuf:
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        self.sock.settimeout(WAIT)
        self.sock.connect((host, port))
        self.buffer = b""
        self.welcome = self.line()
        match = re.search(r"welcome to pollchat, (\w+)", self.welcome)
        assert match, self.welcome
        self.nick = match.group(1)

    def send(self, text):
        self.sock.sendall(text.encode("utf-8") + b"\n")

    def send_raw(self, data):
        self.sock.sendall(data)

    def line(self, timeout=WAIT):
        """The next line (without its \\r\\n); AssertionError on EOF or timeout."""
        deadline = time.monotonic() + timeout
        while b"\r\n" not in self.buffer:
            remaining = deadline - time.monotonic()
            assert remaining > 0, f"no line within {timeout} s; have {self.buffer!r}"
            self.sock.settimeout(remaining)
            try:
                data = self.sock.recv(65536)
            except socket.timeout:
                continue
            assert data, f"connection closed; have {self.buffer!r}"
            self.buffer += data
        line, self.buffer = self.buffer.split(b"\r\n", 1)
        return line.decode("utf-8")

    def expect(self, wanted, timeout=WAIT):
        """Read lines until one equals ``wanted``; return those skipped."""
        skipped = []
        deadline = time.monotonic() + timeout
        while True:
            line = self.line(max(0.01, deadline - time.monotonic()))
            if line == wanted:
                return skipped
            skipped.append(line)

    def sync(self):
        """A /who round trip: everything the server sent before it is read
        (and returned)."""
        self.send("/who")
        skipped = []
        while True:
            line = self.line()
            if re.match(r"\* \d+ online: ", line):
                return skipped
            skipped.append(line)

    def eof(self, timeout=WAIT):
        """Read to end of stream; return the lines that came before it."""
        lines = []
        deadline = time.monotonic() + timeout
        while True:
            while b"\r\n" in self.buffer:
                line, self.buffer = self.buffer.split(b"\r\n", 1)
                lines.append(line.decode("utf-8"))
            remaining = deadline - time.monotonic()
            assert remaining > 0, "no end of stream"
            self.sock.settimeout(remaining)
            try:
                data = self.sock.recv(65536)
            except socket.timeout:
                continue
            except ConnectionResetError:
                return lines
            if not data:
                return lines
            self.buffer += data

    def reset(self):
        """Close abruptly: an RST, not a FIN (SO_LINGER with a zero timeout)."""
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.sock.close()

    def close(self):
        self.sock.close()


@pytest.fixture
def start_server(backend_name):
    """Start ChatServer(s) on ``backend_name`` in a thread; shut down after."""
    running = []

    def start(**options):
        server = ChatServer("127.0.0.1", 0, backend=backend_name, **options)
        thread = threading.Thread(target=server.serve_forever, kwargs={"grace": 2.0},
                                  daemon=True)
        thread.start()
        running.append((server, thread))
        return server

    yield start
    for server, thread in running:
        if thread.is_alive():
            server.request_shutdown()
        thread.join(WAIT)
        assert not thread.is_alive(), "serve_forever() did not return after shutdown"


@pytest.fixture
def clients():
    made = []

    def connect(server, **options):
        client = Client(server.address[1], **options)
        made.append(client)
        return client

    yield connect
    for client in made:
        client.close()


def test_guest_nicks_and_join_notices(start_server, clients):
    server = start_server()
    a = clients(server)
    assert a.nick == "guest1"
    assert "nobody else here yet" in a.welcome
    b = clients(server)
    assert b.nick == "guest2"
    assert "1 here: guest1" in b.welcome
    assert a.line() == "* guest2 joined"
    assert server.loop.backend.name == server.loop.statistics()["backend"]


def test_broadcast_goes_to_everyone_else_not_back(start_server, clients):
    server = start_server()
    a, b, c = clients(server), clients(server), clients(server)
    a.sync()
    b.sync()
    a.send("hello, world")
    assert b.line() == "<guest1> hello, world"
    assert c.line() == "<guest1> hello, world"
    assert a.sync() == []  # no echo of its own line


def test_broadcast_order_is_one_total_order(start_server, clients):
    server = start_server()
    senders = [clients(server) for _ in range(3)]
    readers = [clients(server) for _ in range(2)]
    for client in senders + readers:
        client.sync()  # the join notices are read
    count = 60

    def talk(client):
        for i in range(count):
            client.send(f"{client.nick} says {i}")

    threads = [threading.Thread(target=talk, args=(c,)) for c in senders]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(WAIT)
    received = [[r.line() for _ in range(count * len(senders))] for r in readers]
    assert received[0] == received[1]  # everyone sees the same order
    for sender in senders:
        mine = [line for line in received[0] if line.startswith(f"<{sender.nick}> ")]
        assert mine == [f"<{sender.nick}> {sender.nick} says {i}" for i in range(count)]
    # Each sender saw the others' lines, in that same order too.
    for sender in senders:
        others = [line for line in received[0] if not line.startswith(f"<{sender.nick}> ")]
        assert [sender.line() for _ in others] == others


def test_nick_changes(start_server, clients):
    server = start_server()
    a, b = clients(server), clients(server)
    a.sync()
    a.send("/nick alice")
    assert a.line() == "* guest1 is now alice"
    assert b.line() == "* guest1 is now alice"
    a.send("hi")
    assert b.line() == "<alice> hi"
    b.send("/nick ALICE")  # taken, whatever the case
    assert b.line() == "* nickname ALICE is taken"
    b.send("/nick 9lives")
    assert b.line().startswith("* invalid nickname '9lives'")
    b.send("/nick " + "x" * 21)
    assert b.line().startswith("* invalid nickname")
    b.send("/nick")
    assert b.line() == "* you are guest2; /nick NAME to change it"
    b.send("/nick bob")
    assert b.line() == "* guest2 is now bob"
    assert a.line() == "* guest2 is now bob"
    a.send("/nick alice")
    assert a.line() == "* you are already alice"
    a.send("/NICK Alice_2")  # commands are case-insensitive, nicks keep their case
    assert a.line() == "* alice is now Alice_2"
    assert b.line() == "* alice is now Alice_2"
    b.send("/who")
    assert b.line() == "* 2 online: Alice_2, bob"
    # A freed nick can be taken again; a new guest skips taken guest names.
    b.send("/nick guest3")
    assert b.line() == "* bob is now guest3"
    c = clients(server)
    assert c.nick == "guest4"
    assert a.expect("* guest4 joined") == ["* bob is now guest3"]
    assert sorted(server.nicks()) == sorted(["Alice_2", "guest3", "guest4"])


def test_valid_nick():
    assert valid_nick("a")
    assert valid_nick("Zed_-9")
    assert valid_nick("x" * 20)
    for bad in ("", "x" * 21, "_a", "1a", "a b", "é", "a!"):
        assert not valid_nick(bad), bad


def test_commands_help_unknown_and_empty_lines(start_server, clients):
    server = start_server()
    a = clients(server)
    a.send("")
    a.send("   ")
    a.send("/help")
    assert a.line() == "* commands:"
    help_lines = [a.line() for _ in range(5)]
    assert any("/quit" in line for line in help_lines)
    a.send("/frobnicate now")
    assert a.line() == "* unknown command /frobnicate; type /help for the list"


def test_long_lines_are_dropped_and_the_session_survives(start_server, clients):
    server = start_server(max_line=64)
    a, b = clients(server), clients(server)
    a.sync()
    a.send("x" * 65)
    assert a.line() == "* line too long (over 64 bytes): not sent"
    a.send_raw(b"y" * 64 + b"\r\n")  # exactly the limit, CRLF ending: fine
    assert b.line() == "<guest1> " + "y" * 64
    # A megabyte without a newline: dropped, never buffered whole.
    session = next(s for s in server.sessions.values() if s.nick == "guest1")
    for _ in range(16):
        a.send_raw(b"z" * 65536)
    a.send_raw(b"\nafter\n")
    assert a.line() == "* line too long (over 64 bytes): not sent"
    assert b.line() == "<guest1> after"
    assert session._size == 0 and session._chunks == []
    assert b.sync() == []  # nothing of the long line reached b


def test_line_limit_bounds_buffering_while_the_line_arrives(start_server, clients):
    server = start_server(max_line=100)
    a = clients(server)
    a.sync()
    session = next(iter(server.sessions.values()))
    a.send_raw(b"q" * 300_000)  # no newline yet
    deadline = time.monotonic() + WAIT
    while not session._overflow and time.monotonic() < deadline:
        time.sleep(0.01)
    assert session._overflow
    assert sum(len(chunk) for chunk in session._chunks) <= 101
    a.send_raw(b"\n")
    assert a.line() == "* line too long (over 100 bytes): not sent"


def test_text_is_cleaned(start_server, clients):
    server = start_server()
    a, b = clients(server), clients(server)
    a.sync()
    a.send_raw("h\u00e9llo \x1b[31mred\x07\tend\r\n".encode())
    assert b.line() == "<guest1> h\u00e9llo [31mred end"
    a.send_raw(b"bad \xfe\xc3 bytes\n")
    assert b.line() == "<guest1> bad \ufffd\ufffd bytes"
    a.send_raw(b"\xff\xfd\x01\xff\xf4tel\xff\xffnet\r\n")  # IAC DO ECHO, IAC IP, IAC IAC
    assert b.line() == "<guest1> telnet"


def test_quit_with_message(start_server, clients):
    server = start_server()
    a, b = clients(server), clients(server)
    a.sync()
    a.send("/quit gotta go")
    a.send("this line comes after /quit: ignored")
    assert a.eof() == ["* bye"]
    assert b.line() == "* guest1 left (quit: gotta go)"
    assert b.sync() == []
    assert server.nicks() == ["guest2"]


def test_abrupt_disconnects(start_server, clients):
    server = start_server()
    a, b, c = clients(server), clients(server), clients(server)
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
    d = clients(server)
    assert a.line() == f"* {d.nick} joined"
    a.send("still here")
    assert d.line() == "<guest1> still here"
    assert server.nicks() == ["guest1", d.nick]


def test_many_abrupt_disconnects_at_once(start_server, clients):
    server = start_server()
    watcher = clients(server)
    crowd = [clients(server) for _ in range(20)]
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


def test_client_that_stops_reading_is_dropped(start_server, clients):
    # The kernel buffers a few megabytes for the slow client before lines
    # start to queue in the server: long lines get there sooner.
    server = start_server(max_backlog=20, max_line=16384)
    slow = clients(server, rcvbuf=4096)
    talker = clients(server)
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
        first, last = Client(server.address[1]), Client(server.address[1])
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


def test_shutdown_tells_clients_and_closes(start_server, clients):
    server = start_server()
    a, b = clients(server), clients(server)
    a.sync()
    b.send("/nick bob")
    a.expect("* guest2 is now bob")
    server.request_shutdown()
    assert a.eof()[-1] == "* server shutting down"
    assert b.eof()[-1] == "* server shutting down"
    with pytest.raises(OSError):
        Client(server.address[1])  # no longer listening


def test_port_in_use(backend_name):
    first = ChatServer("127.0.0.1", 0, backend=backend_name)
    try:
        with pytest.raises(OSError) as info:
            ChatServer("127.0.0.1", first.address[1], backend=backend_name)
        assert info.value.errno == __import__("errno").EADDRINUSE
    finally:
        first.close()
        first.loop.close()


def test_runs_on_a_loop_the_caller_owns():
    import pollchat

    loop = pollchat.Loop("poll")
    server = ChatServer("127.0.0.1", 0, loop=loop)
    assert server.loop is loop and server._fileno in loop.map
    done = threading.Event()

    def client():
        try:
            a = Client(server.address[1])
            a.send("/quit")
            assert a.eof() == ["* bye"]
        finally:
            done.set()

    thread = threading.Thread(target=client, daemon=True)
    thread.start()
    deadline = time.monotonic() + WAIT
    while not done.is_set() and time.monotonic() < deadline:
        loop.run_once(0.05)
    thread.join(WAIT)
    server.shutdown()
    server.serve_forever(grace=1.0)
    assert not loop.closed  # not the server's to close
    assert not loop.map
    loop.close()


# -- the command -----------------------------------------------------------------------------


def _default_sigint():
    # A shell's background job starts with SIGINT ignored, and python keeps
    # it so: give the server its normal Ctrl-C.
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _start_chat_command(*args):
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    proc = subprocess.Popen([sys.executable, "-m", "pollchat", "chat", "--port", "0", *args],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env,
                            preexec_fn=_default_sigint)  # noqa: PLW1509
    lines = []
    deadline = time.monotonic() + 20

    def read_port():
        for raw in proc.stderr:
            line = raw.decode()
            lines.append(line)
            match = re.search(r"listening on 127\.0\.0\.1:(\d+)", line)
            if match:
                return int(match.group(1))
        return None

    result = []
    reader = threading.Thread(target=lambda: result.append(read_port()), daemon=True)
    reader.start()
    reader.join(max(0.0, deadline - time.monotonic()))
    if not result or result[0] is None:
        proc.kill()
        proc.wait(WAIT)
        pytest.fail(f"pollchat chat did not say where it listens: {''.join(lines)!r}")
    return proc, result[0], lines


@pytest.mark.parametrize("stop", [signal.SIGINT, signal.SIGTERM], ids=["ctrl-c", "sigterm"])
def test_chat_command_end_to_end(stop):
    proc, port, lines = _start_chat_command("--max-line", "32", "--verbose")
    try:
        a = Client(port)
        b = Client(port)
        a.sync()
        a.send("/nick alice")
        assert a.line() == "* guest1 is now alice"
        assert b.line() == "* guest1 is now alice"
        a.send("y" * 33)
        assert a.line() == "* line too long (over 32 bytes): not sent"
        a.send("hello bob")
        assert b.line() == "<alice> hello bob"
        c = Client(port)
        c.reset()
        assert b.expect("* guest3 left (connection closed)") == ["* guest3 joined"]
        proc.send_signal(stop)
        assert a.eof()[-1] == "* server shutting down"
        assert b.eof()[-1] == "* server shutting down"
        assert proc.wait(WAIT) == 0
        rest = proc.stderr.read().decode()
        log = "".join(lines) + rest
        assert "guest1 connected from 127.0.0.1:" in log
        assert "guest3 disconnected from 127.0.0.1:" in log
        assert "alice: hello bob" in log  # --verbose logs the lines
        assert "shutting down (2 online)" in log
        assert "Traceback" not in log
        assert proc.stdout.read() == b""
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(WAIT)
        proc.stdout.close()
        proc.stderr.close()


def test_chat_command_logs_connect_and_disconnect_only_by_default():
    proc, port, lines = _start_chat_command()
    try:
        a = Client(port)
        a.send("a secret")
        a.send("/quit")
        a.eof()
        proc.send_signal(signal.SIGINT)
        assert proc.wait(WAIT) == 0
        log = "".join(lines) + proc.stderr.read().decode()
        events = [line for line in log.splitlines() if "guest1" in line]
        assert len(events) == 2, log
        assert "connected" in events[0] and "disconnected" in events[1]
        assert "secret" not in log
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(WAIT)
        proc.stdout.close()
        proc.stderr.close()
