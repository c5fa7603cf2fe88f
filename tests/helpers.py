"""Small helpers shared by the tests.  Every wait here is bounded."""

import collections
import os
import re
import signal
import smtplib
import socket
import struct
import subprocess
import sys
import threading
import time
from typing import Any, Deque, Iterable, List, Sequence, Tuple

import pytest

from pollchat.chat import async_chat

#: Seconds the most any single expected event may take (2 busy cores).
WAIT = 10.0
#: The same for a subprocess, whose interpreter must start first.
PROCESS_WAIT = 20.0


def run_until(loop, predicate, timeout=10.0, between=None, step=0.01):
    """Run passes of ``loop`` (each waiting up to ``step`` seconds, then
    calling ``between()`` if given) until ``predicate()`` is true; fail after
    ``timeout`` seconds (every wait in the suite is bounded)."""
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached in time"
        loop.run_once(step)
        if between is not None:
            between()


def receive_all(loop, sock, size, timeout=10.0):
    """Run passes of ``loop`` while reading ``sock`` (made non-blocking)
    until ``size`` bytes arrived; returns them (bounded by ``timeout``)."""
    sock.setblocking(False)
    received = bytearray()

    def arrived():
        try:
            received.extend(sock.recv(1 << 20))
        except BlockingIOError:
            pass
        return len(received) >= size

    run_until(loop, arrived, timeout=timeout)
    return bytes(received)


def socket_pair_on_fd(fd):
    """A connected socket pair whose first socket has the number ``fd`` (just
    freed by the caller): for tests of an fd reused within one pass."""
    sock, peer = socket.socketpair()
    if sock.fileno() != fd:  # the kernel gave another number: move it there
        os.dup2(sock.fileno(), fd)
        sock.close()
        sock = socket.socket(fileno=fd)
    return sock, peer


def reset(sock):
    """Close ``sock`` abruptly: the peer gets an RST, not a FIN (SO_LINGER
    with a zero timeout)."""
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()


class ChatClient:
    """A blocking line client of the chat server (pollchat.chatserver), with
    bounded waits: every read fails the test after ``timeout`` seconds."""

    def __init__(self, port, host="127.0.0.1", rcvbuf=None, read_welcome=True):
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        if rcvbuf:
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        self.sock.settimeout(WAIT)
        self.sock.connect((host, port))
        self.buffer = b""
        if read_welcome:
            self.read_welcome()

    def read_welcome(self):
        """Read the server's first line: the welcome, which names us."""
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
        """Close abruptly: an RST, not a FIN."""
        reset(self.sock)

    def close(self):
        self.sock.close()


def default_sigint():
    # A shell's background job starts with SIGINT ignored, and python keeps
    # it so: give the program its normal Ctrl-C.
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def nofile_limit_in_child(soft):
    """A ``preexec_fn`` that gives the child Ctrl-C (:func:`default_sigint`)
    and a soft open-file limit of ``soft``."""
    import resource

    def preexec():
        default_sigint()
        hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    return preexec


class Proc:
    """A subprocess whose stdout and stderr are read by threads, so that a
    test can wait (bounded) for a line while the process runs on."""

    def __init__(self, args, env=None, cwd=None, preexec_fn=default_sigint):
        self.popen = subprocess.Popen(args, env=env, cwd=cwd, stdout=subprocess.PIPE,
                                      stderr=subprocess.PIPE,
                                      preexec_fn=preexec_fn)  # noqa: PLW1509
        self.out, self.err = [], []
        self._readers = [threading.Thread(target=self._read, args=(stream, lines), daemon=True)
                         for stream, lines in ((self.popen.stdout, self.out),
                                               (self.popen.stderr, self.err))]
        for reader in self._readers:
            reader.start()

    @staticmethod
    def _read(stream, lines):
        for raw in stream:
            lines.append(raw.decode("utf-8", "replace"))

    def wait_for(self, pattern, stream="out", timeout=PROCESS_WAIT):
        """The first match of ``pattern`` in a line of std``stream``; fail
        the test if none comes within ``timeout`` seconds or the process ends."""
        lines = self.out if stream == "out" else self.err
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for line in list(lines):
                match = re.search(pattern, line)
                if match:
                    return match
            if self.popen.poll() is not None and all(not r.is_alive() for r in self._readers):
                break
            time.sleep(0.02)
        pytest.fail(f"no {pattern!r} on std{stream}; stdout={''.join(self.out)!r} "
                    f"stderr={''.join(self.err)!r}")

    def finish(self, timeout=PROCESS_WAIT):
        """Wait for the exit; (status, stdout, stderr)."""
        try:
            status = self.popen.wait(timeout)
        finally:
            self.kill()
        return status, "".join(self.out), "".join(self.err)

    def kill(self):
        if self.popen.poll() is None:
            self.popen.kill()
            self.popen.wait(PROCESS_WAIT)
        for reader in self._readers:
            reader.join(PROCESS_WAIT)
        self.popen.stdout.close()
        self.popen.stderr.close()


def free_port():
    """A TCP port on 127.0.0.1 that was free a moment ago (another process
    may take it before the caller binds it: retry on EADDRINUSE)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def smtpd_roundtrip(command, env):
    """Start an smtpd DebuggingServer with ``command + [address]``, send it
    a message with smtplib, check it printed it, stop it with Ctrl-C."""
    for _attempt in range(3):
        port = free_port()
        proc = Proc([*command, f"127.0.0.1:{port}"], env)
        try:
            deadline = time.monotonic() + PROCESS_WAIT
            server = None
            while server is None and time.monotonic() < deadline:
                if proc.popen.poll() is not None:
                    break
                try:
                    server = smtplib.SMTP("127.0.0.1", port, timeout=PROCESS_WAIT)
                except ConnectionRefusedError:
                    time.sleep(0.05)
            if server is None:
                status, out, err = proc.finish()
                if "Address already in use" in err:
                    continue  # the port was taken between probe and bind: again
                pytest.fail(f"smtpd did not start (status {status}):\n{err}")
            token = f"pollchat-{os.getpid()}-{time.monotonic_ns()}"
            with server:
                refused = server.sendmail("alice@example.com", ["bob@example.com"],
                                          f"Subject: legacy\r\n\r\nhello {token}\r\n")
            assert refused == {}
            proc.wait_for(r"------------ END MESSAGE ------------")
            out = "".join(proc.out)
            assert f"b'hello {token}'" in out or f"hello {token}" in out, out
            assert "X-Peer: 127.0.0.1" in out
            proc.popen.send_signal(signal.SIGINT)  # smtpd stops on KeyboardInterrupt
            status, out, err = proc.finish()
            assert status == 0, err
            assert "Traceback" not in err, err
            return err
        finally:
            proc.kill()
    pytest.fail("no free port for smtpd after 3 attempts")


# -- sockets -------------------------------------------------------------------------------


def make_tcp_pair(blocking=False):
    """A connected TCP pair over loopback (ephemeral port): ``(client,
    server side)``, with TCP_NODELAY, non-blocking unless ``blocking``."""
    with socket.create_server(("127.0.0.1", 0)) as listener:
        client = socket.create_connection(listener.getsockname(), timeout=WAIT)
        server, _ = listener.accept()
    for sock in (client, server):
        sock.setblocking(blocking)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return client, server


# -- backends ------------------------------------------------------------------------------


def checked_poll(backend, timeout):
    """``backend.poll(timeout)`` as a dict, checked against the contract: each
    fd once, non-empty events, nothing beyond what the backend reports."""
    from pollchat.backends import event_names

    result = backend.poll(timeout)
    fds = [fd for fd, _ in result]
    assert len(fds) == len(set(fds)), f"an fd reported twice: {result}"
    for fd, events in result:
        assert events, f"fd {fd} reported with no events"
        assert not events & ~backend.reports, (
            f"{backend.name} reported {event_names(events)} for fd {fd}, beyond what it "
            f"documents ({event_names(backend.reports)})")
    return dict(result)


def wait_until(backend, fd, wanted, timeout=5.0):
    """Poll ``backend`` until ``fd`` is reported with every bit of ``wanted``;
    return its events.  Fails after ``timeout`` seconds."""
    from pollchat.backends import event_names

    deadline = time.monotonic() + timeout
    while True:
        events = checked_poll(backend, 0.05).get(fd, 0)
        if events & wanted == wanted:
            return events
        if time.monotonic() > deadline:
            raise AssertionError(
                f"{backend.name}: fd {fd} not reported with {event_names(wanted)} within "
                f"{timeout}s (last: {event_names(events)})")


# -- async_chat without sockets --------------------------------------------------------------


class StubSocket:
    """Enough of a socket for a dispatcher, with no fd behind it.

    ``recv()`` serves the queued ``chunks``, never more than asked for (an
    exception instance in the queue is raised instead).  ``send()`` takes as
    many bytes as ``send_sizes`` says, in turn (default: all it is given);
    ``send_args`` keeps what it was given, ``sent`` what it took.
    """

    def __init__(self, chunks: Iterable[Any] = (),
                 send_sizes: Sequence[int] = (1 << 30,)) -> None:
        self.chunks: Deque[Any] = collections.deque(chunks)
        self.send_sizes = list(send_sizes)
        self.send_args: List[Any] = []
        self.sent: List[bytes] = []
        self.closed = False

    def setblocking(self, flag: bool) -> None:
        pass

    def getpeername(self) -> Tuple[str, int]:
        return ("127.0.0.1", 9)

    def fileno(self) -> int:
        return -1000 - id(self) % 1000  # never a real fd: its map is private, never polled

    def recv(self, size: int) -> Any:
        item = self.chunks.popleft()
        if isinstance(item, BaseException):
            raise item
        if len(item) > size:
            self.chunks.appendleft(item[size:])
            item = item[:size]
        return item

    def send(self, data: Any) -> int:
        size = self.send_sizes[len(self.send_args) % len(self.send_sizes)]
        self.send_args.append(data)
        taken = bytes(data[:size])
        self.sent.append(taken)
        return len(taken)

    def close(self) -> None:
        self.closed = True


class ListProducer:
    """A producer handing out the given pieces in turn, then ``b""``."""

    def __init__(self, *pieces: bytes) -> None:
        self.pieces: Deque[bytes] = collections.deque(pieces)

    def more(self) -> bytes:
        return self.pieces.popleft() if self.pieces else b""


class Recorder(async_chat):
    """Records messages as (data, terminator); optional script of
    terminators set in found_terminator()."""

    def __init__(self, sock: Any = None, map: Any = None, script: Any = ()) -> None:
        super().__init__(sock, map)
        self.script = list(script)
        self.collected: List[bytes] = []
        self.messages: List[Tuple[bytes, Any]] = []
        self.closed_by_handle_close = False
        self.errors: List[BaseException] = []

    def collect_incoming_data(self, data: bytes) -> None:
        assert data, "collect_incoming_data() got empty data"
        self.collected.append(data)
        self._collect_incoming_data(data)

    def found_terminator(self) -> None:
        self.messages.append((self._get_data(), self.terminator))
        if self.script:
            self.set_terminator(self.script.pop(0))

    def handle_close(self) -> None:
        self.closed_by_handle_close = True
        self.close()

    def handle_error(self) -> None:
        self.errors.append(sys.exc_info()[1])


def stub_chat(chunks: Any = (), terminator: Any = b"\n", cls: type = Recorder,
              send_limit: int = 1 << 30, **kwargs: Any) -> Any:
    """A connected ``cls`` (a :class:`Recorder`) on a :class:`StubSocket`
    serving ``chunks``, with ``terminator`` set (``...``: none set)."""
    chat = cls(map={}, **kwargs)
    chat.set_socket(StubSocket(chunks, (send_limit,)), map={})
    chat.connected = True
    if terminator is not Ellipsis:
        chat.set_terminator(terminator)
    return chat


def feed(chat: Any) -> None:
    """Read until the stub socket's chunks are all served."""
    while chat.socket.chunks:
        chat.handle_read()


def drain(chat: Any, limit: int = 10000) -> None:
    """Write until the output queue is empty (or the channel closed)."""
    for _ in range(limit):
        if not chat.producer_fifo or not chat.connected:
            return
        chat.handle_write()
    raise AssertionError("output queue never drained")
