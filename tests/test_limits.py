"""async_chat under hostile peers: input limits, output backpressure,
slow-loris clients, fuzzed input and connection churn.  Every test runs on
every backend; a peer's garbage closes that channel only, never the loop."""

import gc
import socket
import struct
import sys
import time

import psutil
import pytest
from helpers import run_until
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import pollchat
from pollchat import asynchat, asyncore

pytestmark = pytest.mark.timeout(120)






class Lines(asynchat.async_chat):
    """Collects lines; records the exception handle_error() saw."""

    def __init__(self, sock, map, **limits):
        super().__init__(sock, map=map)
        for name, value in limits.items():
            setattr(self, name, value)
        if self.idle_timeout:  # set after joining the map: arm it explicitly
            self.set_idle_timeout(self.idle_timeout)
        self.set_terminator(b"\r\n")
        self.buffer = []
        self.lines = []
        self.errors = []

    def collect_incoming_data(self, data):
        self.buffer.append(data)

    def found_terminator(self):
        self.lines.append(b"".join(self.buffer))
        self.buffer = []

    def handle_error(self):
        self.errors.append(sys.exc_info()[1])
        super().handle_error()

    def log_info(self, message, type="info"):
        pass  # handle_error's report: the test inspects self.errors instead


def test_input_limit_closes_only_the_offending_channel(loop):
    bad_sock, bad_peer = socket.socketpair()
    good_sock, good_peer = socket.socketpair()
    bad = Lines(bad_sock, loop.map, max_line=1000)
    good = Lines(good_sock, loop.map, max_line=1000)
    bad_peer.sendall(b"ok\r\n" + b"x" * 5000)  # a line, then no terminator
    good_peer.sendall(b"y" * 900 + b"\r\n")
    run_until(loop, lambda: bad._fileno is None and good.lines)
    assert bad.lines == [b"ok"]
    assert len(bad.errors) == 1 and isinstance(bad.errors[0], pollchat.InputLimitExceeded)
    assert "max_line" in str(bad.errors[0])
    assert good.lines == [b"y" * 900] and good._fileno is not None
    good_peer.sendall(b"more\r\n")
    run_until(loop, lambda: len(good.lines) == 2)
    bad_peer.close()
    good_peer.close()


def test_input_limit_counts_across_reads_and_resets_at_terminators(loop):
    sock, peer = socket.socketpair()
    ch = Lines(sock, loop.map, max_line=100)
    for _ in range(20):  # 20 x 60 bytes, each line under the limit
        peer.sendall(b"a" * 30)
        loop.run_once(0.01)
        peer.sendall(b"b" * 30 + b"\r\n")
        loop.run_once(0.01)
    run_until(loop, lambda: len(ch.lines) == 20)
    assert ch.errors == []
    sent = 0
    while ch._fileno is not None:  # a slow loris: a few bytes at a time, no terminator
        assert sent <= 120, "the limit did not cut the line off"
        peer.sendall(b"z" * 30)
        sent += 30
        run_until(loop, lambda: ch._fileno is None or not ch.ac_in_buffer and ch.buffer)
        loop.run_once(0.01)
    assert sent > 100
    assert isinstance(ch.errors[0], pollchat.InputLimitExceeded)
    peer.close()


def test_slow_loris_is_cut_off_by_the_idle_timeout(loop):
    sock, peer = socket.socketpair()
    ch = Lines(sock, loop.map, idle_timeout=0.3)
    peer.sendall(b"z")
    start = time.monotonic()
    run_until(loop, lambda: ch._fileno is None, timeout=5)
    assert time.monotonic() - start >= 0.25
    peer.close()


def test_output_backpressure_pauses_reading_until_the_queue_drains(loop):
    sock, peer = socket.socketpair()
    for s in (sock, peer):
        s.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)

    class Echo(Lines):
        def found_terminator(self):
            super().found_terminator()
            self.push(self.lines[-1] * 1000 + b"\r\n")  # amplify: 1000x per line

    ch = Echo(sock, loop.map, out_high_water=64 * 1024)
    lines = [b"%02d\r\n" % i for i in range(50)]
    sent = 0
    while not loop.reading_paused(ch._fileno):  # one line a pass; the peer reads nothing
        assert sent < len(lines), "reading was never paused"
        peer.sendall(lines[sent])
        sent += 1
        loop.run_once(0.01)
    handled = len(ch.lines)
    # The rest waits in the socket, in one small write (many tiny writes on a
    # Unix socket pair could fill its 4 KB buffer with per-write overhead).
    peer.sendall(b"".join(lines[sent:]))
    for _ in range(20):
        loop.run_once(0.01)
    assert len(ch.lines) == handled  # nothing read while paused
    assert ch._ac_queued <= 64 * 1024 + 3 * 1000 + 2  # one echo past the mark at most
    peer.setblocking(False)
    deadline = time.monotonic() + 20
    while len(ch.lines) < 50 or ch.producer_fifo:  # now read: it resumes, all arrive
        assert time.monotonic() < deadline
        loop.run_once(0.01)
        try:
            peer.recv(1 << 16)
        except BlockingIOError:
            pass
    assert not loop.reading_paused(ch._fileno)
    assert ch.lines == [b"%02d" % i for i in range(50)]
    peer.close()


class Fuzzed(asynchat.async_chat):
    """Changes its terminator as the fuzzer says, inside found_terminator."""

    max_line = 4096

    def __init__(self, sock, map, terminators):
        super().__init__(sock, map=map)
        self.terminators = list(terminators)
        self.set_terminator(self.terminators.pop(0) if self.terminators else b"\n")
        self.collected = 0
        self.errors = []

    def collect_incoming_data(self, data):
        self.collected += len(data)

    def found_terminator(self):
        if self.terminators:
            self.set_terminator(self.terminators.pop(0))

    def handle_error(self):
        self.errors.append(sys.exc_info()[1])
        self.close()


terminator_strategy = st.one_of(
    st.binary(min_size=1, max_size=5), st.integers(min_value=0, max_value=300), st.none())


@settings(max_examples=40, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(chunks=st.lists(st.binary(max_size=3000), max_size=12),
       terminators=st.lists(terminator_strategy, max_size=8))
def test_fuzzed_input_never_escapes_the_loop_and_stays_bounded(loop, chunks, terminators):
    sock, peer = socket.socketpair()
    ch = Fuzzed(sock, loop.map, terminators)
    for chunk in chunks:
        if ch._fileno is None:
            break
        try:
            peer.sendall(chunk)
        except OSError:
            break  # the channel closed on a limit: the peer sees a reset
        loop.run_once(0)  # an exception escaping the loop fails the test
    for _ in range(3):
        loop.run_once(0)
    # Bounded: the pending input is at most a terminator's start, and a
    # channel that broke the limit was closed with InputLimitExceeded.
    assert len(ch.ac_in_buffer) <= 5
    assert all(isinstance(e, pollchat.InputLimitExceeded) for e in ch.errors), ch.errors
    ch.close()
    peer.close()


@pytest.mark.timeout(180)
def test_churn_with_abrupt_resets_leaks_nothing(loop):
    """Thousands of connect/send/close cycles, half ending in RST: no error
    reaches the loop's caller, no fd is leaked."""
    gc.collect()
    fds_before = psutil.Process().num_fds()
    errors = []

    class Session(Lines):
        def handle_error(self):
            errors.append(sys.exc_info()[1])
            self.close()

    class Server(asyncore.dispatcher):
        def handle_accepted(self, sock, addr):
            Session(sock, loop.map, max_line=1024)

    server = Server(map=loop.map)
    server.create_socket()
    server.set_reuse_addr()
    server.bind(("127.0.0.1", 0))
    server.listen(512)
    address = server.socket.getsockname()
    linger_rst = struct.pack("ii", 1, 0)
    cycles = 2000
    for i in range(cycles):
        c = socket.socket()
        c.setblocking(False)
        c.connect_ex(address)
        loop.run_once(0)
        try:
            c.send(b"hello\r\n")
        except OSError:
            pass
        if i % 2:
            c.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, linger_rst)
        c.close()
        if i % 50 == 0:
            loop.run_once(0)
    run_until(loop, lambda: len(loop.map) == 1, timeout=30)  # only the listener
    assert errors == []
    server.close()
    gc.collect()
    assert psutil.Process().num_fds() == fds_before
