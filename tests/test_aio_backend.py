"""The asyncio and uvloop backends (pollchat.backends.aio): selection, what
they report, an asyncore program run by an asyncio loop of its own, and
libuv's ways.  (Every backend test of the suite runs on them too, through
the ``backend_name`` fixture.)"""

from __future__ import annotations

import asyncio
import os
import re
import signal
import socket
import struct
import subprocess
import sys
import textwrap
import threading
import time

import pytest
from aio_support import FLAVOURS, HAVE_UVLOOP, NO_UVLOOP, EchoSession, Listener
from helpers import WAIT, run_until

import pollchat
from pollchat import aio, asyncore, backends
from pollchat.backends import ERR, PRI, READ, WRITE
from pollchat.backends.aio import AsyncioBackend, EventLoopError, check_event_loop

pytestmark = pytest.mark.timeout(60)


@pytest.fixture(params=FLAVOURS)
def name(request):
    """"asyncio" or "uvloop" (skipped where uvloop is not installed)."""
    return request.param


@pytest.fixture
def loop(name, uvloop_started):
    lp = pollchat.Loop(name)
    yield lp
    asyncore.close_all(lp.map, ignore_all=True)
    lp.close()


def line_client(port, line):
    """Connect, send ``line``, return the reply line (blocking, bounded)."""
    with socket.create_connection(("127.0.0.1", port), timeout=WAIT) as client:
        client.sendall(line + b"\n")
        reply = b""
        while not reply.endswith(b"\n"):
            chunk = client.recv(100)
            if not chunk:
                break
            reply += chunk
        return reply


# -- selection ---------------------------------------------------------------------------


def test_chosen_by_name_and_environment_never_by_auto(monkeypatch):
    assert {"asyncio", "uvloop"} <= set(backends.all_backends())
    assert "asyncio" in backends.available_backends()
    assert ("uvloop" in backends.available_backends()) == HAVE_UVLOOP
    assert backends.choose_backend(environ={"POLLCHAT_BACKEND": "asyncio"}) == "asyncio"
    assert backends.choose_backend(environ={}) not in backends.BY_NAME_ONLY
    assert backends.choose_backend(environ={}, use_poll=True) not in backends.BY_NAME_ONLY
    assert backends.pick_best(["asyncio", "uvloop", "select"]) == "select"
    assert backends.pick_best(["asyncio", "uvloop", "other"]) == "other"  # a plug-in first
    with pytest.raises(backends.UnknownBackendError):
        backends.pick_best(["asyncio", "uvloop"])


def test_uvloop_missing_is_explained(monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda mod, *a: None if mod == "uvloop" else real(mod, *a))
    with pytest.raises(backends.UnknownBackendError, match="pip install uvloop"):
        backends.make_backend("uvloop")


def test_listed_by_the_cli():
    done = subprocess.run([sys.executable, "-m", "pollchat", "backends"], capture_output=True,
                          text=True, timeout=60, check=True)
    assert re.search(r"^asyncio +yes +READ\|WRITE$", done.stdout, re.M), done.stdout
    assert re.search(r"^uvloop +(yes +READ\|WRITE\|ERR|no +\?)$", done.stdout, re.M)


def test_importing_pollchat_does_not_import_asyncio():
    code = ("import sys, pollchat, pollchat.asyncore, pollchat.backends; "
            "pollchat.backends.available_backends(); print('asyncio' in sys.modules)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=60, check=True)
    assert done.stdout.strip() == "False"


def test_an_event_loop_without_add_reader_is_refused_with_what_to_use():
    class NoReaders(asyncio.SelectorEventLoop):
        add_reader = asyncio.AbstractEventLoop.add_reader  # as Windows' Proactor

    loop = NoReaders()
    try:
        with pytest.raises(EventLoopError, match="WindowsSelectorEventLoopPolicy"):
            check_event_loop(loop)
        with pytest.raises(EventLoopError, match="select"):
            AsyncioBackend(loop)
    finally:
        loop.close()


# -- what they report ------------------------------------------------------------------------


def test_priority_interest_is_accepted_and_never_reported(name, make_backend, monkeypatch):
    backend = backends.make_backend(name)
    a, b = socket.socketpair()
    try:
        backend.register(a, PRI)  # nothing asyncio can watch: kept, silent
        b.send(b"x")
        assert backend.poll(0.05) == []
        backend.modify(a, READ | PRI)
        assert dict(backend.poll(1.0)) == {a.fileno(): READ}
        assert not backend.reports & PRI
    finally:
        backend.close()
        a.close()
        b.close()


def test_a_reset_after_data_delivers_the_data_then_closes(loop):
    """libuv stops watching an fd after a poll error; the uvloop backend
    notices and reports ERR, so the channel is closed, as with epoll."""
    closed = []

    class Session(EchoSession):
        def handle_close(self):
            closed.append(b"".join(self.buffer))
            self.close()

    listener = Listener(loop.map, Session)
    client = socket.create_connection(("127.0.0.1", listener.port))
    run_until(loop, lambda: listener.sessions)
    client.sendall(b"no newline")
    client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    client.close()  # data, then RST
    run_until(loop, lambda: closed)
    assert closed == [b"no newline"]


# -- an asyncore program on an event loop of its own ------------------------------------------


def test_asyncore_loop_runs_coroutines_of_its_channels(loop):
    class Lookup(EchoSession):
        def found_terminator(self):
            key = b"".join(self.buffer)
            self.buffer = []
            aio.run_coroutine(self.lookup(key), self._map).add_done_callback(
                lambda done: self.push(done.result() + b"\n"))

        async def lookup(self, key):
            assert asyncio.get_running_loop() is loop.backend.loop
            await asyncio.sleep(0.01)
            return key.upper()

    listener = Listener(loop.map, Lookup)
    replies = []
    client = threading.Thread(target=lambda: replies.append(line_client(listener.port, b"ab")))
    client.start()
    loop.call_later(0.01, lambda: client.is_alive() or listener.close())
    timer = loop.call_later(WAIT, asyncore.close_all, loop.map)  # a deadline

    def stop_when_done():
        if not client.is_alive():
            asyncore.close_all(loop.map)
        else:
            loop.call_later(0.01, stop_when_done)

    loop.call_later(0.01, stop_when_done)
    loop.run(timeout=1.0, wait_for_timers=False)  # driven by the event loop
    timer.cancel()
    client.join(WAIT)
    assert replies == [b"AB\n"]


def test_polls_run_the_event_loop_even_when_no_channel_waits(loop):
    """Where CPython's poll() would time.sleep(), the event loop runs: its
    tasks advance while the program polls."""
    a, b = socket.socketpair()
    ch = asyncore.dispatcher(a, map=loop.map)
    ch.readable = lambda: False
    ch.writable = lambda: False
    done = []

    async def task():
        await asyncio.sleep(0.05)
        done.append(True)

    aio.run_coroutine(task(), loop.map)
    start = time.monotonic()
    while not done and time.monotonic() - start < WAIT:
        asyncore.poll(0.25, loop.map)
    assert done and time.monotonic() - start < 1.0
    b.close()


def test_exit_now_and_a_failing_handle_error_leave_asyncore_loop(loop):
    class Exiting(EchoSession):
        def found_terminator(self):
            raise asyncore.ExitNow("bye")

    listener = Listener(loop.map, Exiting)
    client = socket.create_connection(("127.0.0.1", listener.port))
    client.sendall(b"x\n")
    with pytest.raises(asyncore.ExitNow, match="bye"):
        loop.run(timeout=1.0)
    assert len(loop.map) == 2  # ExitNow closes nothing
    client.close()
    run_until(loop, lambda: len(loop.map) == 1)  # the loop runs on, by passes too


def test_keyboard_interrupt_while_waiting_leaves_the_loop_runnable(loop, ctrl_c):
    listener = Listener(loop.map)
    interrupter = threading.Thread(target=interrupt_when_waiting,
                                   args=(threading.get_native_id(),), daemon=True)
    interrupter.start()
    try:
        with pytest.raises(KeyboardInterrupt):
            loop.run(timeout=5.0)  # driven by the event loop, waiting
    finally:
        interrupter.join(WAIT)
    assert line_client_in_thread(loop, listener.port, b"again") == b"again\n"


def interrupt_when_waiting(thread_id, timeout=WAIT):
    """SIGINT to this process once the thread ``thread_id`` (a native id)
    sleeps in the kernel's poll: what this test is about is an interrupt
    while waiting, not one in the middle of the event loop's set-up (where
    uvloop itself cannot be interrupted safely).  Without /proc, after a
    fixed delay."""
    wchan = f"/proc/self/task/{thread_id}/wchan"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with open(wchan) as f:
                where = f.read()
        except OSError:
            time.sleep(0.2)
            break
        if "poll" in where or "select" in where:
            break
        time.sleep(0.002)
    os.kill(os.getpid(), signal.SIGINT)


def line_client_in_thread(loop, port, line):
    replies = []
    client = threading.Thread(target=lambda: replies.append(line_client(port, line)))
    client.start()
    run_until(loop, lambda: replies)
    client.join(WAIT)
    return replies[0]


def test_closing_the_loop_in_a_handler_ends_asyncore_loop(loop):
    class Closing(EchoSession):
        def found_terminator(self):
            loop.close()

    listener = Listener(loop.map, Closing)
    client = socket.create_connection(("127.0.0.1", listener.port))
    client.sendall(b"x\n")
    with pytest.raises(RuntimeError, match="closed"):
        loop.run(timeout=1.0)
    client.close()


# -- libuv: fds closed behind its back -----------------------------------------------------------

UVLOOP_CLOSED_BEHIND = textwrap.dedent("""
    import os, socket, sys
    import pollchat
    from pollchat import asynchat

    loop = pollchat.Loop("uvloop")
    closed = []

    class Session(asynchat.async_chat):
        def collect_incoming_data(self, data):
            pass

        def found_terminator(self):
            pass

        def handle_close(self):
            closed.append(True)
            self.close()

    a, b = socket.socketpair()
    session = Session(a, map=loop.map)
    session.set_terminator(b"\\n")
    loop.run_once(0)                      # watched for reading
    os.close(a.fileno())                  # behind everyone's back...
    c, d = socket.socketpair()            # ...and the number reused
    assert c.fileno() == session._fileno or os.dup2(c.fileno(), session._fileno)
    session.push(b"x" * 4_000_000)        # wants to write now: the watch changes
    for _ in range(20):
        loop.run_once(0.01)
    print("alive", closed, flush=True)
""")


@pytest.mark.skipif(not HAVE_UVLOOP, reason=NO_UVLOOP)
def test_uvloop_spare_fds_are_never_closed_twice(monkeypatch):
    """The uvloop backend keeps two spare fds and closes them around each run
    of the event loop.  A KeyboardInterrupt between two of those closes must
    not leave a closed number listed: closing it again later would close
    whatever socket got that number meanwhile."""
    if threading.current_thread() is not threading.main_thread():
        pytest.skip("the spare fds are handed over in the main thread only")
    backend = backends.make_backend("uvloop")
    try:
        assert len(backend._spare_fds) == 2
        real_close = os.close
        calls = []

        def close_then_interrupt(fd):
            real_close(fd)
            calls.append(fd)
            if len(calls) == 1:
                raise KeyboardInterrupt

        monkeypatch.setattr(os, "close", close_then_interrupt)
        with pytest.raises(KeyboardInterrupt):
            with backend._running():
                pass
        monkeypatch.setattr(os, "close", real_close)
        newcomer = os.open(os.devnull, os.O_RDONLY)  # likely the number just closed
        try:
            backend.close()
            os.fstat(newcomer)  # still open: the backend closed only its own fds
        finally:
            real_close(newcomer)
    finally:
        backend.close()


@pytest.mark.skipif(not HAVE_UVLOOP, reason=NO_UVLOOP)
def test_uvloop_survives_a_watched_fd_closed_and_reused_behind_its_back():
    """libuv aborts the process when the kernel refuses a watch change it
    makes lazily; the backend checks the fd first and refuses the change."""
    done = subprocess.run([sys.executable, "-c", UVLOOP_CLOSED_BEHIND], capture_output=True,
                          text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == "alive [True]"


def test_every_close_path_unwatches_the_fd_while_it_is_open(loop):
    """The core removes an fd from the event loop before it closes it
    (libuv aborts when a watched fd is closed before its next poll)."""
    unwatched, closed_first = [], []
    real_unwatch = loop.backend._unwatch

    def checked_unwatch(fd, events):
        unwatched.append(fd)
        try:
            os.fstat(fd)
        except OSError:
            closed_first.append(fd)
        real_unwatch(fd, events)

    loop.backend._unwatch = checked_unwatch
    listener = Listener(loop.map)
    listener_fd = listener._fileno
    assert line_client_in_thread(loop, listener.port, b"x") == b"x\n"
    run_until(loop, lambda: len(loop.map) == 1)  # the session closed itself on EOF
    session = listener.sessions[0]
    assert session.socket.fileno() == -1
    listener.close()  # close()
    a, b = socket.socketpair()
    asyncore.dispatcher(a, map=loop.map)
    loop.run_once(0)
    asyncore.close_all(loop.map)  # close_all()
    c, d = socket.socketpair()
    asyncore.dispatcher(c, map=loop.map)
    loop.run_once(0)
    loop.use_backend(None)  # moved to another backend: unwatched, left open
    assert {listener_fd, c.fileno()} <= set(unwatched)
    assert closed_first == []
    for s in (b, c, d):
        s.close()


def test_poll_waits_at_least_its_timeout_even_on_uvloop(name):
    backend = backends.make_backend(name)
    try:
        for timeout in (0.001, 0.02):
            start = time.perf_counter()
            assert backend.poll(timeout) == []
            assert time.perf_counter() - start >= timeout * 0.9
    finally:
        backend.close()


@pytest.mark.skipif(not HAVE_UVLOOP, reason=NO_UVLOOP)
def test_uvloop_reports_err_where_libuv_stopped_watching(uvloop_started):
    backend = backends.make_backend("uvloop")
    assert backend.reports & ERR
    listener = socket.create_server(("127.0.0.1", 0))
    tcp = socket.create_connection(listener.getsockname())
    peer, _ = listener.accept()
    try:
        backend.register(tcp, READ | WRITE)
        peer.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        peer.close()
        deadline = time.monotonic() + WAIT
        seen = 0
        while not seen & ERR and time.monotonic() < deadline:
            seen |= dict(backend.poll(0.05)).get(tcp.fileno(), 0)
        assert seen & ERR
    finally:
        backend.close()
        for s in (tcp, listener):
            s.close()


def test_use_backend_moves_the_channels_and_keeps_the_rest(name):
    """Loop.use_backend(), which serve() moves a map's loop with: the
    channels are watched by the new backend only, timers and paused reading
    stay, and a pass cannot be interrupted by it."""
    loop = pollchat.Loop(name)
    a, b = socket.socketpair()
    got, fired = [], []

    class Reader(asyncore.dispatcher):
        def writable(self):
            return False

        def handle_read(self):
            got.append(self.recv(10))
            with pytest.raises(RuntimeError, match="running a pass"):
                loop.use_backend("poll")

    try:
        reader = Reader(a, map=loop.map)
        loop.call_later(0.05, fired.append, True)
        loop.run_once(0)
        old = loop.backend
        reader.pause_reading()
        loop.use_backend("poll")
        assert loop.backend.name == "poll" and old.get_map() is None  # closed
        b.send(b"x")
        loop.run_once(0.1)
        assert got == []  # still paused
        reader.resume_reading()
        run_until(loop, lambda: got and fired)
        loop.use_backend(name)  # and back to an event loop
        b.send(b"y")
        run_until(loop, lambda: len(got) == 2)
        assert got == [b"x", b"y"]
    finally:
        asyncore.close_all(loop.map)
        loop.close()
        b.close()
    with pytest.raises(RuntimeError, match="closed"):
        loop.use_backend("poll")
