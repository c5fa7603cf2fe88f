"""Bad days: resource exhaustion, dead fds, failing handlers, signals,
misuse.  The loop keeps serving and says clearly what went wrong."""

import json
import logging
import os
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time

import pytest
from helpers import run_until

import pollchat
from pollchat import asyncore
from pollchat.backends import NVAL

pytestmark = pytest.mark.timeout(60)






class Quiet(asyncore.dispatcher):
    """Reads and drops; never wants to write."""

    def writable(self):
        return False

    def handle_read(self):
        self.recv(4096)


EMFILE_SERVER = textwrap.dedent("""
    import json, os, resource, socket, sys, time
    import pollchat
    from pollchat import asyncore

    backend = sys.argv[1]
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (64, hard))
    loop = pollchat.Loop(backend)

    class Echo(asyncore.dispatcher_with_send):
        def handle_read(self):
            data = self.recv(100)
            if data:
                self.send(data)

    class Listener(asyncore.dispatcher):
        accept_backoff = 0.1
        def handle_accepted(self, sock, addr):
            Echo(sock, map=loop.map)

    server = Listener(map=loop.map)
    server.create_socket()
    server.bind(("127.0.0.1", 0))
    server.listen(16)
    hog = []
    while True:  # fill the fd table
        try:
            hog.append(os.dup(0))
        except OSError:
            break
    print(server.socket.getsockname()[1], flush=True)
    sys.stdin.readline()  # the client has connected: the accept now fails
    cpu0, t0 = time.process_time(), time.monotonic()
    while time.monotonic() - t0 < 1.0:
        loop.run_once(0.05)
    cpu_at_limit = time.process_time() - cpu0
    for fd in hog:
        os.close(fd)
    deadline = time.monotonic() + 5
    while len(loop.map) < 2 and time.monotonic() < deadline:
        loop.run_once(0.05)
    served = time.monotonic() + 2
    while time.monotonic() < served and len(loop.map) > 1:
        loop.run_once(0.05)
    print(json.dumps({"cpu_at_limit": cpu_at_limit, "listening": server.accepting,
                      "channels": len(loop.map)}), flush=True)
""")


def test_accept_under_emfile_backs_off_and_resumes(backend_name, standin):
    if standin:
        pytest.skip("runs in a subprocess on native backends only")
    proc = subprocess.Popen([sys.executable, "-c", EMFILE_SERVER, backend_name],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        port = int(proc.stdout.readline())
        client = socket.create_connection(("127.0.0.1", port), timeout=10)
        proc.stdin.write("go\n")
        proc.stdin.flush()
        client.sendall(b"ping")
        assert client.recv(10) == b"ping"  # served once fds were freed
        client.close()
        result = json.loads(proc.stdout.readline())
    finally:
        proc.kill()
        proc.wait(10)
    assert result["listening"] is True  # CPython's asyncore would have closed it
    # A busy loop would burn the whole second; the back-off polls 10 times.
    assert result["cpu_at_limit"] < 0.5, result


def test_idle_timeout_closes_idle_channels_only(loop):
    idle_a, idle_b = socket.socketpair()
    busy_a, busy_b = socket.socketpair()
    timeouts = []

    class Watched(Quiet):
        idle_timeout = 0.3

        def handle_timeout(self):
            timeouts.append(self.name)
            super().handle_timeout()

    idle = Watched(idle_a, map=loop.map)
    idle.name = "idle"
    busy = Watched(busy_a, map=loop.map)
    busy.name = "busy"
    start = time.monotonic()
    while time.monotonic() - start < 0.6:
        busy_b.send(b".")  # keeps 'busy' active
        loop.run_once(0.05)
    assert timeouts == ["idle"]
    assert idle._fileno is None and busy._fileno is not None
    busy.set_idle_timeout(None)
    assert loop.statistics()["idle_watched"] == 0
    for s in (idle_b, busy_b):
        s.close()


def test_idle_timeout_rejects_bad_values(loop):
    a, b = socket.socketpair()
    ch = Quiet(a, map=loop.map)
    with pytest.raises(ValueError, match="positive"):
        ch.set_idle_timeout(-1)
    with pytest.raises(TypeError, match="seconds"):
        ch.set_idle_timeout("10")
    b.close()


def test_pause_and_resume_reading(loop):
    a, b = socket.socketpair()
    got = []

    class Reader(Quiet):
        def handle_read(self):
            got.append(self.recv(10))

    ch = Reader(a, map=loop.map)
    ch.pause_reading()
    b.send(b"x")
    for _ in range(5):
        loop.run_once(0.01)
    assert got == []
    ch.resume_reading()
    run_until(loop, lambda: got)
    assert got == [b"x"]
    b.close()


def test_isolate_errors_closes_only_the_failing_channel(backend_name, caplog):
    lp = pollchat.Loop(backend_name, isolate_errors=True)
    try:
        bad_a, bad_b = socket.socketpair()
        good_a, good_b = socket.socketpair()
        got = []

        class Broken(Quiet):
            def handle_read(self):
                raise ValueError("bug in handler")

            def handle_error(self):
                raise RuntimeError("bug in error handler")

        class Good(Quiet):
            def handle_read(self):
                got.append(self.recv(10))

        broken = Broken(bad_a, map=lp.map)
        Good(good_a, map=lp.map)
        bad_b.send(b"x")
        good_b.send(b"y")
        with caplog.at_level(logging.ERROR, logger="pollchat"):
            run_until(lp, lambda: got and broken._fileno is None)
        assert got == [b"y"]
        assert "bug in error handler" in caplog.text
        good_b.send(b"z")
        run_until(lp, lambda: len(got) == 2)
        for s in (bad_b, good_b):
            s.close()
    finally:
        asyncore.close_all(lp.map, ignore_all=True)
        lp.close()


def test_without_isolation_a_raising_error_handler_propagates_like_cpython(loop):
    a, b = socket.socketpair()

    class Broken(Quiet):
        def handle_read(self):
            raise ValueError("bug")

        def handle_error(self):
            raise  # noqa: PLE0704 - re-raises the handler's exception, as CPython's tests do

    Broken(a, map=loop.map)
    b.send(b"x")
    with pytest.raises(ValueError, match="bug"):
        run_until(loop, lambda: False, timeout=2)
    b.close()


def test_fd_closed_behind_the_loops_back(loop):
    a, b = socket.socketpair()
    closed = []

    class Victim(Quiet):
        def handle_close(self):
            closed.append(True)
            self.close()

    Victim(a, map=loop.map)
    loop.run_once(0)
    os.close(a.fileno())  # behind everyone's back
    start = time.monotonic()
    passes = 0
    while time.monotonic() - start < 0.5 and not closed:
        loop.run_once(0.05)
        passes += 1
    if not loop.backend.reports & NVAL:
        # epoll and kqueue (and the event loops on them) drop a closed fd
        # from their set silently: no event, and above all no spin (each
        # pass waited its timeout).
        assert passes <= 12 and not closed
    else:
        assert closed == [True]  # reported invalid (NVAL): closed and unregistered
        assert not loop.map and loop.statistics()["registered"] == 0
    a.detach()
    b.close()


def test_keyboard_interrupt_in_poll_leaves_the_loop_runnable(loop, ctrl_c):
    a, b = socket.socketpair()
    got = []

    class Reader(Quiet):
        def handle_read(self):
            got.append(self.recv(10))

    Reader(a, map=loop.map)
    timer = threading.Timer(0.1, os.kill, (os.getpid(), signal.SIGINT))
    timer.start()
    with pytest.raises(KeyboardInterrupt):
        loop.run_once(5.0)
    timer.join()
    b.send(b"again")
    run_until(loop, lambda: got)  # the same loop runs on
    assert got == [b"again"]
    b.close()


def test_a_closed_socket_is_refused_with_a_clear_error():
    s = socket.socket()
    s.close()
    with pytest.raises(ValueError, match="closed"):
        asyncore.dispatcher(s, map={})
    d = asyncore.dispatcher(map={})
    with pytest.raises(ValueError, match="closed"):
        d.set_socket(s)


def test_unknown_backend_is_a_clear_value_error():
    with pytest.raises(ValueError, match="choose one of"):
        pollchat.Loop("nosuchpoller")


def test_dispatcher_does_not_delegate_to_its_socket():
    a, b = socket.socketpair()
    d = asyncore.dispatcher(a, map={})
    # CPython's dispatcher has no __getattr__ (one would also cost every
    # attribute load on every channel its specialization): a plain error.
    with pytest.raises(AttributeError, match="getsockname"):
        d.getsockname  # noqa: B018 - a socket attribute, not a dispatcher one
    assert not hasattr(type(d), "__getattr__")
    with pytest.raises(AttributeError):
        d.no_such_thing  # noqa: B018
    assert d.socket.getsockname() == a.getsockname()
    d.close()
    b.close()


def test_a_raising_predicate_goes_to_handle_error_not_out_of_the_loop(loop):
    bad_a, bad_b = socket.socketpair()
    good_a, good_b = socket.socketpair()
    errors = []
    got = []

    class BadPredicate(Quiet):
        def readable(self):
            raise ZeroDivisionError("bug in readable()")

        def handle_error(self):
            errors.append(sys.exc_info()[1])
            self.close()

    class Good(Quiet):
        def handle_read(self):
            got.append(self.recv(10))

    BadPredicate(bad_a, map=loop.map)
    Good(good_a, map=loop.map)
    good_b.send(b"ok")
    run_until(loop, lambda: got)
    assert got == [b"ok"]
    assert len(errors) == 1 and isinstance(errors[0], ZeroDivisionError)
    assert len(loop.map) == 1
    for s in (bad_b, good_b):
        s.close()
