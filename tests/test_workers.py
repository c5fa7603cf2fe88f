"""``pollchat run --workers`` and ``pollchat.workers.serve``: a master and its
worker processes, end to end, with real processes on loopback.

Every master runs in a session of its own, so that teardown can kill the
whole process group (master, workers, anything they started) even when a
test fails half-way; tests that stop the master check that nothing of that
group is left.
"""

import collections
import errno
import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time

import psutil
import pytest
from helpers import run_until

from pollchat import _worker, asynchat, asyncore, channel, workers
from pollchat.accepting import HeaderReader

HERE = os.path.dirname(os.path.abspath(__file__))
GREETER = os.path.join(HERE, "worker_prog", "greeter.py")
FORKSAFETY = os.path.join(HERE, "worker_prog", "forksafety.py")
WAIT = 30.0  # generous: two busy cores shared with other jobs

pytestmark = pytest.mark.skipif(not hasattr(os, "fork"), reason="workers need os.fork")


class Master:
    """A ``python -m pollchat run ...`` (or any command) in its own session."""

    def __init__(self, argv, log_path, env=None):
        self.log_path = log_path
        environ = dict(os.environ)
        environ.update(env or {})
        with open(log_path, "wb") as log:
            self.proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT,
                                         stdin=subprocess.DEVNULL, env=environ,
                                         start_new_session=True)
        self.pid = self.proc.pid

    def log(self):
        with open(self.log_path, encoding="utf-8", errors="replace") as f:
            return f.read()

    def wait_for(self, predicate, what, timeout=WAIT):
        deadline = time.monotonic() + timeout
        while True:
            result = predicate()
            if result:
                return result
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out waiting for {what}; log:\n{self.log()}")
            if self.proc.poll() is not None and not predicate():
                raise AssertionError(f"the master exited ({self.proc.returncode}) while "
                                     f"waiting for {what}; log:\n{self.log()}")
            time.sleep(0.05)

    def port(self, listeners=2):
        """The shared port, once ``listeners`` workers announced it."""
        def announced():
            ports = re.findall(r"^PORT (\d+) (\d+)$", self.log(), re.M)
            return ports if len(ports) >= listeners else None
        ports = self.wait_for(announced, f"{listeners} workers listening")
        assert len({port for port, _ in ports}) == 1, f"not one shared port: {ports}"
        return int(ports[0][0])

    def workers(self):
        """The pids of the live (not zombie) workers."""
        try:
            children = psutil.Process(self.pid).children()
        except psutil.NoSuchProcess:
            return set()
        alive = set()
        for child in children:
            try:
                if child.status() != psutil.STATUS_ZOMBIE:
                    alive.add(child.pid)
            except psutil.NoSuchProcess:
                pass
        return alive

    def group_alive(self):
        try:
            os.killpg(self.pid, 0)
        except ProcessLookupError:
            return False
        return True

    def kill_group(self):
        try:
            os.killpg(self.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            pass


@pytest.fixture
def start(tmp_path):
    """Start masters; kill every process of their groups at teardown."""
    started = []

    def start_master(*args, env=None, command=None):
        argv = command or [sys.executable, "-m", "pollchat", "run", *args]
        master = Master(argv, tmp_path / f"master{len(started)}.log", env)
        started.append(master)
        return master

    yield start_master
    for master in started:
        master.kill_group()


def greet(port, header=b"", timeout=10.0):
    """Connect, optionally send a PROXY header, read the greeting line:
    ``(worker pid, peer address as the worker saw it)``."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        if header:
            sock.sendall(header)
        line = b""
        while not line.endswith(b"\n"):
            chunk = sock.recv(100)
            if not chunk:
                raise ConnectionError(f"closed after {line!r}")
            line += chunk
    pid, peer = line.decode().split()
    return int(pid), peer


def closed_by_peer(sock):
    """Whether the peer closed (end of stream, or a reset) within the socket's timeout."""
    try:
        return sock.recv(100) == b""
    except ConnectionResetError:
        return True


# -- sharing and balancing -------------------------------------------------------------


@pytest.mark.timeout(90)
def test_200_connections_reach_more_than_one_worker(start):
    master = start("--workers", "2", GREETER, "0")
    port = master.port()
    workers_now = master.workers()
    assert len(workers_now) == 2
    served = collections.Counter(greet(port)[0] for _ in range(200))
    assert sum(served.values()) == 200
    assert set(served) <= workers_now
    assert len(served) >= 2, f"every connection went to one worker: {served}"
    assert "the workers share the listening socket 127.0.0.1:%d" % port in master.log()


@pytest.mark.timeout(90)
def test_the_legacy_accept_idiom_never_sees_none(start):
    # greeter.py does `conn, addr = self.accept()`.  Both workers wake for
    # every connection on the shared listener; the one that loses the race
    # must not call handle_accept() (a TypeError there closes its listener).
    master = start("--workers", "2", GREETER, "0")
    port = master.port()
    for _ in range(100):
        greet(port)
    log = master.log()
    assert "Traceback" not in log and "TypeError" not in log and "uncaptured" not in log, log
    assert len(master.workers()) == 2


class LegacyListener(asyncore.dispatcher):
    """What greeter.py's listener does, in-process: ``conn, addr = self.accept()``."""

    def __init__(self, loop):
        super().__init__(map=loop.map)
        self.calls = []
        self.create_socket()
        self.bind(("127.0.0.1", 0))
        self.listen(5)

    def handle_accept(self):
        conn, addr = self.accept()
        self.calls.append(addr)
        conn.close()


def test_a_spurious_wake_up_of_a_shared_listener_is_not_reported(loop, monkeypatch):
    # Every worker's loop watches the shared listener; when one connection
    # arrives they may all be told, and all but one find nothing to accept.
    # In a worker the listener accepts first and calls handle_accept() only
    # with a connection in hand.
    listener = LegacyListener(loop)
    monkeypatch.setattr(channel, "_worker", object())  # as in a worker process
    listener.handle_read_event()  # readable, but another worker took the connection
    assert listener.calls == []
    client = socket.create_connection(listener.socket.getsockname(), timeout=WAIT)
    deadline = time.monotonic() + WAIT
    while not listener.calls:
        assert time.monotonic() < deadline
        loop.run_once(0.05)
    assert listener.calls == [client.getsockname()]
    client.close()


class HelloServer(asyncore.dispatcher):
    """Greets each client with the address accept() gave, then waits."""

    proxy_protocol = True

    def __init__(self, loop):
        super().__init__(map=loop.map)
        self.loop = loop
        self.create_socket()
        self.bind(("127.0.0.1", 0))
        self.listen(5)

    def handle_accepted(self, sock, addr):
        session = asynchat.async_chat(sock, map=self.loop.map)
        session.set_terminator(b"\n")
        session.collect_incoming_data = lambda data: None
        session.push(b"hello %s:%d\n" % (addr[0].encode(), addr[1]))


def test_a_graceful_stop_still_serves_headers_on_their_way(loop):
    # A stopping worker closes its listeners at once, but a connection it
    # accepted whose PROXY header is still arriving is served, then closed
    # once its output is sent; the loop stops when nothing is left.
    server = HelloServer(loop)
    client = socket.create_connection(server.socket.getsockname(), timeout=WAIT)
    client.sendall(b"PROXY TCP4 ")
    run_until(loop, lambda: any(isinstance(ch, HeaderReader) for ch in loop.map.values()))
    _worker._Drain(loop).start()
    assert not server.accepting and server not in loop.map.values()
    client.sendall(b"203.0.113.7 198.51.100.1 51234 443\r\n")
    run_until(loop, lambda: not loop.map)
    received = b""
    while True:
        chunk = client.recv(100)
        if not chunk:
            break
        received += chunk
    assert received == b"hello 203.0.113.7:51234\n"
    client.close()


# -- restarts --------------------------------------------------------------------------


@pytest.mark.timeout(90)
def test_a_killed_worker_is_replaced_and_service_continues(start):
    master = start("--workers", "2", GREETER, "0")
    port = master.port()
    first = master.workers()
    victim = min(first)
    os.kill(victim, signal.SIGKILL)
    def replaced():
        now = master.workers()
        return now if len(now) == 2 and victim not in now else None

    now = master.wait_for(replaced, "a replacement worker")
    new = now - first
    assert len(new) == 1
    # Service goes on, and the new worker takes connections too.
    seen = set()
    deadline = time.monotonic() + WAIT
    while not new <= seen:
        assert time.monotonic() < deadline, f"the new worker never answered; saw {seen}"
        seen.add(greet(port)[0])
    assert victim not in seen
    assert re.search(rf"worker {victim} was killed by SIGKILL (at start|after [\d.]+ s); "
                     "restarting it", master.log())
    # The dead worker was reaped: no zombie child.
    statuses = [p.status() for p in psutil.Process(master.pid).children()]
    assert psutil.STATUS_ZOMBIE not in statuses


@pytest.mark.timeout(90)
def test_connections_wait_for_a_restarted_worker_instead_of_being_refused(start):
    # One worker: while it is dead, only the master's copy of the listening
    # socket keeps connections queued rather than refused.
    master = start("--workers", "1", GREETER, "0")
    port = master.port(listeners=1)
    listening = time.monotonic()
    (worker,) = master.workers()
    process = psutil.Process(worker)
    # Past the start-up window, so that its death is not a death at start
    # (with one worker, that would make the master give up).
    master.wait_for(lambda: time.monotonic() - listening > workers.READY_AFTER + 0.5,
                    "the worker to be past its start")
    os.kill(worker, signal.SIGKILL)
    process.wait(WAIT)
    pid, _ = greet(port, timeout=WAIT)  # connects at once; answered once restarted
    assert pid != worker and pid in master.workers()


@pytest.mark.timeout(90)
def test_a_program_that_crashes_at_start_makes_the_master_give_up(start):
    master = start("--workers", "2", GREETER, "0", "crash")
    status = master.proc.wait(WAIT)
    log = master.log()
    assert status == workers.EXIT_GAVE_UP, log
    # Each worker's traceback whole (the workers share stderr, unbuffered
    # here: PYTHONUNBUFFERED), not two of them interleaved mid-line.
    crashed = re.findall(r"^RuntimeError: this program crashes at start$", log, re.M)
    assert len(crashed) >= 2, log
    assert "every worker died at start" in log
    # It gave up instead of restarting in a loop: at most one retry per slot.
    assert len(re.findall(r"worker \d+ started", log)) <= 4, log
    assert not master.group_alive()


# -- stopping --------------------------------------------------------------------------


@pytest.mark.timeout(120)
def test_sigterm_delivers_queued_output_and_exits_0(start):
    size = 20_000_000
    master = start("--workers", "2", "--graceful-timeout", "25", GREETER, "0")
    port = master.port()
    with socket.create_connection(("127.0.0.1", port), timeout=WAIT) as sock:
        greeting = b""
        while not greeting.endswith(b"\n"):
            greeting += sock.recv(1)
        sock.sendall(b"BIG %d\n" % size)
        received = bytearray(sock.recv(65536))  # the push has started...
        assert received
        # ...and most of it is still queued in the worker when the stop comes.
        started = time.monotonic()
        os.kill(master.pid, signal.SIGTERM)
        while True:
            chunk = sock.recv(1 << 20)
            if not chunk:
                break
            received += chunk
    assert len(received) == size + len(b"\nEND\n")
    assert received.endswith(b"\nEND\n") and received.count(b"x") == size
    status = master.proc.wait(WAIT)
    assert status == 0, master.log()
    assert time.monotonic() - started < 25
    assert "every worker stopped cleanly" in master.log()
    # Nothing of the master's process group is left: no worker, no zombie.
    time.sleep(0.2)
    assert not master.group_alive()


@pytest.mark.timeout(120)
def test_a_worker_killed_at_the_deadline_makes_the_stop_unclean(start):
    # A client that never reads: the worker cannot finish sending in time.
    master = start("--workers", "1", "--graceful-timeout", "1", GREETER, "0")
    port = master.port(listeners=1)
    with socket.create_connection(("127.0.0.1", port), timeout=WAIT) as sock:
        sock.sendall(b"BIG 50000000\n")
        time.sleep(0.3)
        os.kill(master.pid, signal.SIGTERM)
        status = master.proc.wait(WAIT)
    assert status == workers.EXIT_UNCLEAN, master.log()
    assert "after it was asked to stop; killing it" in master.log()
    time.sleep(0.2)
    assert not master.group_alive()


@pytest.mark.timeout(150)
@pytest.mark.parametrize("proxy", [False, True], ids=["plain", "proxy-protocol"])
def test_sighup_restarts_every_worker_without_refusing_a_connection(start, proxy):
    args = ["--proxy-protocol"] if proxy else []
    master = start("--workers", "2", *args, GREETER, "0")
    port = master.port()
    old = master.workers()
    header = b"PROXY TCP4 198.51.100.7 192.0.2.1 4242 443\r\n" if proxy else b""
    errors, answers = [], collections.Counter()
    stop = threading.Event()

    def client():
        while not stop.is_set():
            try:
                pid, peer = greet(port, header)
            except OSError as exc:
                errors.append(repr(exc))
            else:
                answers[pid] += 1
                if proxy and peer != "198.51.100.7:4242":
                    errors.append(f"wrong peer {peer}")

    thread = threading.Thread(target=client)
    thread.start()
    try:
        master.wait_for(lambda: sum(answers.values()) >= 20, "the client loop to run")
        os.kill(master.pid, signal.SIGHUP)
        master.wait_for(lambda: "every worker was restarted" in master.log(),
                        "the rolling restart", timeout=60)
        def renewed():
            now = master.workers()
            return now if len(now) == 2 and not now & old else None

        new = master.wait_for(renewed, "the old workers to exit")
        counted = sum(answers.values())
        master.wait_for(lambda: sum(answers.values()) > counted + 20, "more answers")
    finally:
        stop.set()
        thread.join(WAIT)
    assert errors == [], errors[:5]
    assert new & set(answers), f"the new workers answered nothing: {answers}"
    assert old & set(answers)
    log = master.log()
    assert log.count("stopped") >= 2 and "restart abandoned" not in log


@pytest.mark.timeout(90)
def test_a_rolling_restart_into_code_that_crashes_keeps_the_old_workers(start, tmp_path):
    broken = tmp_path / "broken"
    master = start("--workers", "2", GREETER, "0", f"crash-if={broken}")
    port = master.port()
    old = master.workers()
    broken.touch()  # "deploy" a version that dies at start
    os.kill(master.pid, signal.SIGHUP)
    master.wait_for(lambda: "restart abandoned; the running workers stay" in master.log(),
                    "the restart to be abandoned")
    assert master.workers() == old
    assert {greet(port)[0] for _ in range(20)} <= old
    broken.unlink()  # fixed: the next SIGHUP goes through
    os.kill(master.pid, signal.SIGHUP)
    master.wait_for(lambda: "every worker was restarted" in master.log(), "a restart")
    os.kill(master.pid, signal.SIGTERM)
    assert master.proc.wait(WAIT) == 0, master.log()


@pytest.mark.timeout(60)
def test_a_bind_error_reaches_the_program_as_its_own(start):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        master = start("--workers", "2", GREETER, str(port))
        assert master.proc.wait(WAIT) == workers.EXIT_GAVE_UP
    log = master.log()
    line = "OSError: [Errno %d] Address already in use" % errno.EADDRINUSE
    assert len(re.findall("^" + re.escape(line) + "$", log, re.M)) >= 2, log
    assert "every worker died at start" in log


@pytest.mark.timeout(60)
def test_a_second_sigterm_kills_the_workers_at_once(start):
    master = start("--workers", "1", "--graceful-timeout", "60", GREETER, "0")
    port = master.port(listeners=1)
    with socket.create_connection(("127.0.0.1", port), timeout=WAIT) as sock:
        sock.sendall(b"BIG 50000000\n")  # never read: the stop cannot finish
        time.sleep(0.3)
        os.kill(master.pid, signal.SIGTERM)
        master.wait_for(lambda: "SIGTERM: stopping 1 worker " in master.log(), "the stop")
        started = time.monotonic()
        os.kill(master.pid, signal.SIGTERM)
        assert master.proc.wait(WAIT) == workers.EXIT_UNCLEAN
    assert time.monotonic() - started < 10
    assert "SIGTERM again: killing the remaining 1 worker now" in master.log()
    time.sleep(0.2)
    assert not master.group_alive()


@pytest.mark.timeout(60)
def test_a_stop_signal_taken_by_another_thread_still_stops_the_worker(start):
    # The kernel gives SIGTERM to a thread of the program, not to the main
    # thread, which sits in a poll of up to 30 s: the signal must still reach
    # the stop watcher at once (signal.set_wakeup_fd), not after the poll.
    master = start("--workers", "1", GREETER, "0", "other-thread")
    master.port(listeners=1)
    started = time.monotonic()
    os.kill(master.pid, signal.SIGTERM)
    assert master.proc.wait(WAIT) == 0, master.log()
    assert time.monotonic() - started < 10, master.log()


@pytest.mark.timeout(60)
def test_sigint_stops_cleanly_like_sigterm(start):
    master = start("--workers", "2", GREETER, "0")
    master.port()
    os.kill(master.pid, signal.SIGINT)
    assert master.proc.wait(WAIT) == 0, master.log()
    assert "SIGINT: stopping 2 workers" in master.log()


# -- PROXY protocol through the workers ---------------------------------------------------


@pytest.mark.timeout(60)
def test_workers_report_the_address_from_the_proxy_header(start):
    master = start("--workers", "2", "--proxy-protocol", GREETER, "0")
    port = master.port()
    v2 = (b"\r\n\r\n\x00\r\nQUIT\n\x21\x11\x00\x0c" + socket.inet_aton("203.0.113.9")
          + socket.inet_aton("192.0.2.1") + (40000).to_bytes(2, "big") + (80).to_bytes(2, "big"))
    assert greet(port, b"PROXY TCP4 203.0.113.8 192.0.2.1 50000 80\r\n")[1] == \
        "203.0.113.8:50000"
    assert greet(port, v2)[1] == "203.0.113.9:40000"
    with socket.create_connection(("127.0.0.1", port), timeout=WAIT) as sock:
        sock.sendall(b"GET / HTTP/1.0\r\n\r\n")
        assert closed_by_peer(sock)  # no header: closed (unread bytes make it a reset)
    master.wait_for(lambda: "no PROXY protocol header" in master.log(), "the log line")


# -- fork safety and the API ----------------------------------------------------------------


@pytest.mark.timeout(60)
@pytest.mark.skipif(not os.path.exists("/proc/self/fdinfo"), reason="reads Linux's /proc fdinfo")
@pytest.mark.skipif("epoll" not in __import__("pollchat").backends.available_backends(),
                    reason="checks epoll sets through /proc")
def test_workers_get_fresh_loops_and_leave_the_masters_alone(start, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    master = start(command=[sys.executable, FORKSAFETY, str(out)],
                   env={"POLLCHAT_BACKEND": "epoll"})
    def both_reports():
        found = sorted(out.glob("worker-*.json"))
        return found if len(found) == 2 else None

    reports = master.wait_for(both_reports, "both workers' reports")
    parent = json.loads((out / "master.json").read_text())
    assert parent["registered"] == parent["expected"]
    for path in reports:
        report = json.loads(path.read_text())
        assert not report["same_loop"], report
        assert report["inherited_loop_closed"], report
        assert not report["inherited_channel_in_map"], report
        # The worker's epoll set holds its own waker and listener, nothing else.
        assert report["registered"] == report["expected"], report
        if report["waker"] is not None and parent["waker"] is not None:
            assert report["waker"] != parent["waker"], report
    # The master's epoll set is untouched by the workers' start-up.
    with open(f"/proc/{parent['pid']}/fdinfo/{parent['epoll_fd']}") as f:
        still = sorted(int(line.split()[1]) for line in f if line.startswith("tfd:"))
    assert still == parent["expected"]
    assert "channels exist before the workers start" in master.log()
    os.kill(master.pid, signal.SIGTERM)
    assert master.proc.wait(WAIT) == 0, master.log()


@pytest.mark.timeout(60)
def test_readme_serve_example(start, tmp_path):
    with open(os.path.join(os.path.dirname(HERE), "README.md"), encoding="utf-8") as f:
        readme = f.read()
    echo = re.search(r"## An echo server in 20 lines\n\n```python\n(.*?)```", readme, re.S)
    serve = re.search(r"The echo server above, on every core.*?```python\n(.*?)```", readme, re.S)
    lines = echo.group(1).rstrip("\n").split("\n")
    assert lines[-2:] == ["EchoServer(7001)", "asyncore.loop()"]
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    program = "\n".join(lines[:-2]) + "\n" + serve.group(1).replace("7001", str(port))
    (tmp_path / "echo_workers.py").write_text(program)
    master = start(command=[sys.executable, str(tmp_path / "echo_workers.py")])
    deadline = time.monotonic() + WAIT
    while True:
        try:
            client = socket.create_connection(("127.0.0.1", port), timeout=WAIT)
            break
        except ConnectionRefusedError:  # not listening yet
            assert time.monotonic() < deadline, master.log()
            time.sleep(0.05)
    with client:
        client.sendall(b"hello\n")
        assert client.makefile("rb").readline() == b"hello\n"
    os.kill(master.pid, signal.SIGTERM)
    assert master.proc.wait(WAIT) == 0, master.log()


def test_parse_workers():
    assert workers.parse_workers("3") == 3
    assert workers.parse_workers(2) == 2
    assert workers.parse_workers("auto") == workers.cpu_count() >= 1
    for bad in ("0", "-1", "two", ""):
        with pytest.raises(ValueError, match="workers"):
            workers.parse_workers(bad)
    with pytest.raises(TypeError):
        workers.parse_workers(2.5)


def test_serve_refuses_bad_arguments_before_forking():
    with pytest.raises(TypeError, match="setup must be callable"):
        workers.serve(None, workers=1)
    with pytest.raises(ValueError, match="at least 1"):
        workers.serve(lambda: None, workers=0)
    with pytest.raises(ValueError, match="positive"):
        workers.serve(lambda: None, workers=1, graceful_timeout=0)


def test_the_master_refuses_to_fork_with_threads_running():
    ready, done = threading.Event(), threading.Event()
    thread = threading.Thread(target=lambda: (ready.set(), done.wait(10)))
    thread.start()
    ready.wait(10)
    try:
        with pytest.raises(RuntimeError, match="other threads running"):
            workers.Master(lambda: 0, 1).run()
    finally:
        done.set()
        thread.join(10)


def test_cli_refuses_graceful_timeout_without_workers(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "pollchat", "run", "--graceful-timeout", "5",
                           GREETER, "0"], check=False, capture_output=True, text=True, timeout=WAIT)
    assert proc.returncode == 2
    assert "--graceful-timeout applies to worker processes: give --workers too" in proc.stderr
    proc = subprocess.run([sys.executable, "-m", "pollchat", "run", "--workers", "none",
                           GREETER, "0"], check=False, capture_output=True, text=True, timeout=WAIT)
    assert proc.returncode == 2 and "'auto'" in proc.stderr
