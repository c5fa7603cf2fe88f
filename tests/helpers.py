"""Small helpers shared by the tests.  Every wait here is bounded."""

import os
import re
import signal
import smtplib
import socket
import struct
import subprocess
import threading
import time

import pytest

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
