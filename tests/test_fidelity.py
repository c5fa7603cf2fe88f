"""Legacy idioms that touch asyncore's state directly (issue: drop-in fidelity).

Each idiom runs on every backend through pollchat's modules, and, where this
interpreter has the standard library's asyncore/asynchat (3.11), through
those too as the reference: the same program, only the modules differ.
"""

from __future__ import annotations

import collections
import gc
import importlib.util
import logging
import os
import socket
import sys
import time
import tracemalloc
import types
import warnings
from typing import Any, Callable, List, Optional

import psutil
import pytest
import standins
from conftest import NATIVE_BACKENDS, STANDIN_BACKENDS

import pollchat
from pollchat import asynchat, asyncore, maps
from pollchat.backends import BY_NAME_ONLY, READ, WRITE

pytestmark = pytest.mark.timeout(60)


def _load_stdlib_pair() -> Optional[types.SimpleNamespace]:
    """CPython's own asyncore and asynchat, loaded under private names (so
    that nothing else sees them), or None where the interpreter has none."""
    if sys.version_info[:2] != (3, 11):
        return None
    stdlib = os.path.dirname(os.__file__)
    loaded = {}
    saved = sys.modules.get("asyncore")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            for name in ("asyncore", "asynchat"):
                spec = importlib.util.spec_from_file_location(
                    f"_reference_{name}", os.path.join(stdlib, f"{name}.py"))
                assert spec is not None and spec.loader is not None
                module = importlib.util.module_from_spec(spec)
                if name == "asynchat":
                    sys.modules["asyncore"] = loaded["asyncore"]  # what it imports
                spec.loader.exec_module(module)
                loaded[name] = module
    finally:
        if saved is None:
            sys.modules.pop("asyncore", None)
        else:
            sys.modules["asyncore"] = saved
    return types.SimpleNamespace(name="stdlib", asyncore=loaded["asyncore"],
                                 asynchat=loaded["asynchat"])


STDLIB = _load_stdlib_pair()
POLLCHAT = types.SimpleNamespace(name="pollchat", asyncore=asyncore, asynchat=asynchat)


IMPL_PARAMS = [pytest.param(("pollchat", name), id=f"pollchat-{name}")
               for name in NATIVE_BACKENDS] + [
    pytest.param(("pollchat", name), id=f"pollchat-{name}-standin")
    for name in STANDIN_BACKENDS] + [pytest.param(("stdlib", None), id="stdlib")]


@pytest.fixture(params=IMPL_PARAMS)
def impl(request: Any, monkeypatch: Any) -> types.SimpleNamespace:
    """pollchat's modules on each backend (the one the module functions make
    loops with), and the standard library's as the reference."""
    kind, backend = request.param
    if kind == "stdlib":
        if STDLIB is None:
            pytest.skip("the reference needs the standard library's asyncore (Python 3.11)")
        return STDLIB
    if backend in STANDIN_BACKENDS:
        standins.install_standin(backend, monkeypatch)
    monkeypatch.setenv("POLLCHAT_BACKEND", backend)
    return POLLCHAT


def serve(impl: types.SimpleNamespace, map: dict, until: Callable[[], bool],
          timeout: float = 10.0) -> None:
    """Run passes of ``impl``'s loop over ``map`` until ``until()``."""
    deadline = time.monotonic() + timeout
    while not until():
        assert time.monotonic() < deadline, "no progress: the program hangs"
        impl.asyncore.loop(timeout=0.01, map=map, count=1)


def reply_to(client: socket.socket, request: bytes, want: int) -> Callable[[], bool]:
    """Send ``request``; the returned predicate reads what has arrived and is
    true once ``want`` bytes did (they are in ``got``)."""
    client.sendall(request)
    client.setblocking(False)
    got = bytearray()

    def arrived() -> bool:
        try:
            got.extend(client.recv(65536))
        except BlockingIOError:
            pass
        return len(got) >= want
    arrived.got = got  # type: ignore[attr-defined]
    return arrived


def pair() -> tuple[socket.socket, socket.socket]:
    return socket.socketpair()


# -- writing output state directly ------------------------------------------------


def test_out_buffer_added_to_in_handle_read_is_sent(impl: Any) -> None:
    class Replier(impl.asyncore.dispatcher_with_send):
        def handle_read(self) -> None:
            data = self.recv(100)
            self.out_buffer += b"re: " + data  # no send(): legacy code does this

    a, b = pair()
    m: dict = {}
    Replier(a, map=m)
    arrived = reply_to(b, b"ping", 8)
    serve(impl, m, arrived)
    assert bytes(arrived.got) == b"re: ping"
    impl.asyncore.close_all(m)
    b.close()


def line_server(impl: Any, on_line: Callable[[Any, bytes], None]) -> Any:
    """A legacy line server on ``impl``'s asynchat: ``on_line(channel,
    line)`` for each line received."""

    class LineChat(impl.asynchat.async_chat):  # type: ignore[name-defined,misc]
        def __init__(self, sock: socket.socket, map: dict) -> None:
            super().__init__(sock, map=map)
            self.set_terminator(b"\n")
            self.buf: List[bytes] = []

        def collect_incoming_data(self, data: bytes) -> None:
            self.buf.append(data)

        def found_terminator(self) -> None:
            line = b"".join(self.buf)
            self.buf = []
            on_line(self, line)

    return LineChat


def exchange(impl: Any, server: Any, request: bytes, want: int) -> bytes:
    """Serve one connection of ``server`` until ``want`` bytes came back."""
    a, b = pair()
    m: dict = {}
    server(a, m)
    arrived = reply_to(b, request, want)
    serve(impl, m, arrived)
    impl.asyncore.close_all(m)
    b.close()
    return bytes(arrived.got)  # type: ignore[attr-defined]


@pytest.mark.parametrize("how", ["append", "appendleft", "extend", "iadd", "insert",
                                 "assign_deque", "assign_list_of_one"])
def test_producer_fifo_written_in_found_terminator_is_sent(impl: Any, how: str) -> None:
    def on_line(chat: Any, line: bytes) -> None:
        reply = line + b"!\n"
        fifo = chat.producer_fifo
        if how == "append":
            fifo.append(reply)
        elif how == "appendleft":
            fifo.appendleft(reply)
        elif how == "extend":
            fifo.extend([reply])
        elif how == "iadd":
            fifo += [reply]
            chat.producer_fifo = fifo  # (what `self.producer_fifo += ...` does)
        elif how == "insert":
            fifo.insert(0, reply)
        elif how == "assign_deque":
            chat.producer_fifo = collections.deque([reply])
        else:
            chat.producer_fifo = collections.deque()
            chat.producer_fifo.append(reply)  # a container the library did not make

    assert exchange(impl, line_server(impl, on_line), b"hello\n", 7) == b"hello!\n"


def test_push_then_direct_append_keep_their_order(impl: Any) -> None:
    def on_line(chat: Any, line: bytes) -> None:
        chat.push(b"1")
        chat.producer_fifo.append(b"2")
        chat.push(b"3")

    assert exchange(impl, line_server(impl, on_line), b"x\ny\n", 6) == b"123123"


def test_accepting_set_directly_on_an_inherited_listener(impl: Any) -> None:
    # A listening socket made elsewhere (systemd, a parent process), adopted
    # with set_socket(); the program then flips `accepting` itself.
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)
    accepted: List[Any] = []

    class Server(impl.asyncore.dispatcher):
        def handle_accepted(self, sock: socket.socket, addr: Any) -> None:
            accepted.append(sock)

    m: dict = {}
    server = Server(map=m)
    server.set_socket(listener)
    server.accepting = True
    client = socket.create_connection(listener.getsockname())
    serve(impl, m, lambda: bool(accepted))
    if impl is POLLCHAT:
        loop = pollchat.get_loop(m)
        assert loop.registered_events(server._fileno) & (READ | WRITE) == READ
    for s in accepted:
        s.close()
    client.close()
    impl.asyncore.close_all(m)


def test_connected_set_directly_is_observed(loop: Any) -> None:
    # An async_chat adopted on a socket connected elsewhere, made without
    # the socket (so not "connected"), then marked connected by the program.
    a, b = pair()

    class Chat(asynchat.async_chat):
        def collect_incoming_data(self, data: bytes) -> None:
            pass

        def found_terminator(self) -> None:
            pass

    chat = Chat(map=loop.map)
    chat.set_socket(a)
    loop.run_once(0)
    assert loop.registered_events(chat._fileno) & WRITE  # not connected: CPython watches
    chat.connected = True
    loop.run_once(0)
    assert not loop.registered_events(chat._fileno) & WRITE
    chat.close()
    b.close()


def test_class_attribute_shadowing_an_observed_one_becomes_its_default() -> None:
    class Legacy(asyncore.dispatcher):
        connected = True  # redundant, as some old programs have it

    assert Legacy().connected is True
    assert asyncore.dispatcher().connected is False
    ch = Legacy()
    ch.connected = False
    assert ch.connected is False and Legacy().connected is True

    class Own(asyncore.dispatcher):
        @property
        def connected(self) -> bool:  # a property of the program's own
            return True

    assert Own._pc_unobserved_class is True
    assert pollchat.interest.polls_predicates(Own(map={}), {})


def test_state_changed_where_it_cannot_be_observed_is_found_and_reported(
        loop: Any, caplog: Any) -> None:
    # out_buffer assigned a bytearray (observed), then extended in place (not
    # observable): the loop's idle-pass audit must notice, send, and say how
    # to avoid the delay.
    a, b = pair()

    class InPlace(asyncore.dispatcher_with_send):
        def handle_read(self) -> None:
            self.recv(100)
            self.out_buffer.extend(b"late")

    ch = InPlace(a, map=loop.map)
    ch.out_buffer = bytearray()
    loop.run_once(0)
    arrived = reply_to(b, b"go", 4)
    caplog.set_level(logging.WARNING, logger="pollchat")
    deadline = time.monotonic() + 10
    while not arrived():
        assert time.monotonic() < deadline, "the change was never noticed: a silent hang"
        loop.run_once(0.05)
    assert bytes(arrived.got) == b"late"
    [record] = [r for r in caplog.records if "could not observe" in r.getMessage()]
    assert "POLLCHAT_STRICT=1" in record.getMessage()
    ch.close()
    b.close()


def test_check_mode_reports_an_unobserved_change_on_the_next_pass(
        backend_name: str, caplog: Any) -> None:
    lp = pollchat.Loop(backend_name, strict="check")
    a, b = pair()
    try:
        ch = asyncore.dispatcher_with_send(a, map=lp.map)
        ch.handle_read = lambda: None  # type: ignore[method-assign]
        ch.out_buffer = bytearray()
        lp.run_once(0)
        caplog.set_level(logging.WARNING, logger="pollchat")
        ch.out_buffer.extend(b"x")
        lp.run_once(0)
        assert any("could not observe" in r.getMessage() for r in caplog.records)
        lp.run_once(0)
        assert lp.registered_events(ch._fileno) & WRITE
    finally:
        asyncore.close_all(lp.map)
        lp.close()
        b.close()


def test_strict_mode_serves_unobservable_changes_at_once(backend_name: str) -> None:
    lp = pollchat.Loop(backend_name, strict=True)
    a, b = pair()
    try:
        ch = asyncore.dispatcher_with_send(a, map=lp.map)
        ch.handle_read = lambda: None  # type: ignore[method-assign]
        ch.out_buffer = bytearray()
        lp.run_once(0)
        ch.out_buffer.extend(b"raw")  # in place: only strict mode sees it at once
        lp.run_once(0)
        lp.run_once(0)
        b.settimeout(5)
        assert b.recv(10) == b"raw"
    finally:
        asyncore.close_all(lp.map)
        lp.close()
        b.close()


def test_replacing_a_predicate_on_an_instance_is_noticed(loop: Any) -> None:
    a, b = pair()
    ch = asyncore.dispatcher(a, map=loop.map)
    ch.handle_read = lambda: None  # type: ignore[method-assign]
    ch.writable = lambda: False  # type: ignore[method-assign]
    loop.run_once(0)
    assert not loop.registered_events(ch._fileno) & WRITE
    ch.readable = lambda: False  # type: ignore[method-assign]
    loop.run_once(0)
    assert loop.registered_events(ch._fileno) == 0  # wants nothing: unregistered
    del ch.readable
    loop.run_once(0)
    assert loop.registered_events(ch._fileno) & READ
    ch.close()
    b.close()


# -- maps keyed by socket objects ---------------------------------------------------------


@pytest.mark.parametrize("call", ["poll", "poll2", "loop"])
def test_map_keyed_by_socket_objects_gets_events(impl: Any, call: str) -> None:
    if impl is STDLIB and call == "poll2":
        # CPython's poll2() registers the socket but gets int fds back from
        # select.poll(), finds no channel under them and drops the event:
        # the hang this test exists for.  Its poll() (select) serves them.
        pytest.skip("CPython's own poll2() drops events for socket-keyed maps")
    a, b = pair()
    got: List[bytes] = []

    class Reader(impl.asyncore.dispatcher):
        def handle_read(self) -> None:
            got.append(self.recv(100))

        def writable(self) -> bool:
            return False

    reader = Reader(a, map={})  # its own map: only the socket-keyed one is run
    b.sendall(b"PING")
    deadline = time.monotonic() + 10
    while not got:
        assert time.monotonic() < deadline, "the event never reached the channel"
        fresh = {a: reader}  # what an IRC bot library passes on every call
        if call == "loop":
            impl.asyncore.loop(timeout=0.01, map=fresh, count=1)
        else:
            getattr(impl.asyncore, call)(0.01, fresh)
    assert got == [b"PING"]
    reader.close()
    b.close()


# -- transient maps -------------------------------------------------------------------------


@pytest.mark.timeout(120)
def test_fresh_map_per_call_keeps_no_loop_no_fd_no_memory(backend_name: str,
                                                           monkeypatch: Any) -> None:
    monkeypatch.setenv("POLLCHAT_BACKEND", backend_name)
    a, b = pair()
    reader = asyncore.dispatcher(a, map={})
    reader.handle_read = lambda: None  # type: ignore[method-assign]
    process = psutil.Process()

    def calls(n: int) -> None:
        for i in range(n):
            if i % 2:
                asyncore.poll(0, {a: reader})
            else:
                asyncore.loop(timeout=0, map={a.fileno(): reader}, count=1)

    calls(200)  # warm up: caches, first allocations
    gc.collect()
    fds_before = process.num_fds()
    tracemalloc.start()
    try:
        calls(50)
        gc.collect()
        base, _ = tracemalloc.get_traced_memory()
        calls(10_000)
        gc.collect()
        after, _ = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert process.num_fds() <= fds_before + 4  # the last loop or two at most
    assert after - base < 256 * 1024, f"{after - base} bytes kept by 10,000 calls"
    assert len([lp for lp in maps.loops() if lp._implicit]) <= 3
    reader.close()
    b.close()


def test_long_lived_map_keeps_its_loop_and_registrations(backend_name: str,
                                                         monkeypatch: Any) -> None:
    monkeypatch.setenv("POLLCHAT_BACKEND", backend_name)
    a, b = pair()
    m: dict = {}
    reader = asyncore.dispatcher(a, map=m)
    reader.handle_read = lambda: None  # type: ignore[method-assign]
    asyncore.loop(timeout=0, map=m, count=1)
    first = pollchat.get_loop(m)
    for _ in range(50):
        asyncore.loop(timeout=0, map=m, count=1)
        asyncore.poll(0, {})  # another module call: a sweep must not take m's loop
        asyncore.poll(0, {b: asyncore.dispatcher(map={})})
    assert pollchat.get_loop(m) is first and not first.closed
    reader.close()
    b.close()
    first.close()


# -- the module namespace -----------------------------------------------------------------


def _cpython311_names(module: str) -> Optional[List[str]]:
    """dir() of CPython 3.11's module, from a 3.11 interpreter if there is one."""
    import glob
    import subprocess

    candidates = [sys.executable] if sys.version_info[:2] == (3, 11) else []
    root = os.environ.get("PYENV_ROOT", os.path.expanduser("~/.pyenv"))
    candidates += sorted(glob.glob(os.path.join(root, "versions", "3.11*", "bin", "python3.11")))
    for python in candidates:
        code = (f"import warnings; warnings.simplefilter('ignore'); import {module}; "
                f"print('\\n'.join(dir({module})))")
        proc = subprocess.run([python, "-I", "-c", code], capture_output=True, text=True,
                              timeout=60, check=False)
        if proc.returncode == 0:
            return proc.stdout.split()
    return None


@pytest.mark.parametrize("name", ["asyncore", "asynchat"])
def test_namespace_has_every_name_of_cpython_311(name: str) -> None:
    names = _cpython311_names(name)
    if names is None:
        pytest.skip("no Python 3.11 here to read the reference namespace from")
    ours = getattr(pollchat, name)
    # __warningregistry__ is left behind by the deprecation warning CPython's
    # modules give on import: a by-product, not part of the module.
    missing = sorted(n for n in names if not hasattr(ours, n) and n != "__warningregistry__")
    assert missing == []
    # `from module import *` gives the same public names as CPython's (which
    # has no __all__: every name without a leading underscore).
    star: dict = {}
    exec(f"from pollchat.{name} import *", star)
    public = {n for n in names if not n.startswith("_")}
    assert public <= set(star) and set(star) - {"__builtins__"} <= public


def test_module_globals_are_the_modules_cpython_exposes() -> None:
    import errno
    import select as select_module

    assert asyncore.socket is socket and asyncore.select is select_module
    assert asyncore.os is os and asyncore.sys is sys and asyncore.time is time
    assert asyncore.warnings is warnings and asyncore.errorcode is errno.errorcode
    assert asyncore.EWOULDBLOCK == errno.EWOULDBLOCK and asyncore.ECONNRESET == errno.ECONNRESET
    assert asynchat.asyncore is asyncore and asynchat.deque is collections.deque


class _FakeSocketModule:
    """A stand-in socket module, as test suites rebind asyncore.socket to."""

    AF_INET = socket.AF_INET
    SOCK_STREAM = socket.SOCK_STREAM
    SOL_SOCKET = socket.SOL_SOCKET
    SO_REUSEADDR = socket.SO_REUSEADDR
    SO_ERROR = socket.SO_ERROR

    def __init__(self) -> None:
        self.made: List[Any] = []

    def socket(self, family: int, type: int) -> Any:
        fake = types.SimpleNamespace(setblocking=lambda flag: None, fileno=lambda: 0,
                                     family=family, type=type,
                                     setsockopt=lambda *a: None, getsockopt=lambda *a: 0)
        self.made.append(fake)
        return fake


def test_rebinding_socket_reaches_create_socket(impl: Any) -> None:
    fake = _FakeSocketModule()
    original = impl.asyncore.socket
    impl.asyncore.socket = fake
    try:
        ch = impl.asyncore.dispatcher(map={})
        ch.create_socket(socket.AF_INET, socket.SOCK_STREAM)
        ch.set_reuse_addr()
    finally:
        impl.asyncore.socket = original
    assert [f.family for f in fake.made] == [socket.AF_INET]
    assert ch.socket is fake.made[0]


def test_rebinding_the_disconnect_errnos_reaches_send(impl: Any) -> None:
    class Broken:
        def send(self, data: bytes) -> int:
            raise ConnectionResetError(104, "reset")

    closed: List[bool] = []
    ch = impl.asyncore.dispatcher(map={})
    ch.socket = Broken()
    ch.handle_close = lambda: closed.append(True)  # type: ignore[method-assign]
    assert ch.send(b"x") == 0 and closed == [True]  # a disconnect: closed quietly
    original = impl.asyncore._DISCONNECTED
    impl.asyncore._DISCONNECTED = frozenset()
    try:
        with pytest.raises(ConnectionResetError):
            ch.send(b"x")  # no longer a disconnect: the error surfaces
    finally:
        impl.asyncore._DISCONNECTED = original


def test_rebinding_time_reaches_the_sleep_when_nothing_is_watched(impl: Any) -> None:
    if impl.name == "pollchat" and os.environ.get("POLLCHAT_BACKEND") in BY_NAME_ONLY:
        pytest.skip("the asyncio and uvloop backends wait in their event loop, whose tasks "
                    "must run, never in time.sleep() (tests/test_aio_backend.py)")
    slept: List[float] = []
    fake_time = types.SimpleNamespace(sleep=slept.append, time=time.time,
                                      monotonic=time.monotonic)
    a, b = pair()
    ch = impl.asyncore.dispatcher(a, map={})
    ch.readable = lambda: False  # type: ignore[method-assign]
    ch.writable = lambda: False  # type: ignore[method-assign]
    m = {a.fileno(): ch}
    original = impl.asyncore.time
    impl.asyncore.time = fake_time
    try:
        impl.asyncore.poll(0.25, m)
    finally:
        impl.asyncore.time = original
    assert slept == [0.25]
    ch.close()
    b.close()


def test_rebinding_poll_reaches_loop(impl: Any) -> None:
    passes: List[Any] = []
    m = {1: object()}
    original = impl.asyncore.poll
    impl.asyncore.poll = lambda timeout, map: passes.append((timeout, map))
    try:
        impl.asyncore.loop(timeout=0.5, map=m, count=3)
    finally:
        impl.asyncore.poll = original
    assert passes == [(0.5, m)] * 3


def test_rebinding_select_reaches_the_select_backend(monkeypatch: Any) -> None:
    import select as select_module

    calls: List[Any] = []

    def fake_select(r: Any, w: Any, x: Any, timeout: Any) -> Any:
        calls.append(timeout)
        return select_module.select(r, w, x, timeout)

    fake = types.SimpleNamespace(select=fake_select, poll=select_module.poll,
                                 POLLIN=select_module.POLLIN, POLLOUT=select_module.POLLOUT,
                                 POLLPRI=select_module.POLLPRI, POLLHUP=select_module.POLLHUP,
                                 POLLERR=select_module.POLLERR,
                                 POLLNVAL=select_module.POLLNVAL)
    monkeypatch.setenv("POLLCHAT_BACKEND", "select")
    a, b = pair()
    ch = asyncore.dispatcher(a, map={})
    ch.handle_read = lambda: None  # type: ignore[method-assign]
    m = {a.fileno(): ch}
    asyncore.select = fake
    try:
        asyncore.poll(0.01, m)
    finally:
        asyncore.select = select_module
    assert calls == [0.01]
    ch.close()
    b.close()
    pollchat.get_loop(m).close()


# -- use_poll ---------------------------------------------------------------------------------


def test_use_poll_picks_the_best_backend_but_select(monkeypatch: Any) -> None:
    monkeypatch.delenv("POLLCHAT_BACKEND", raising=False)
    a, b = pair()
    m: dict = {}
    ch = asyncore.dispatcher(a, map=m)
    ch.handle_read = lambda: None  # type: ignore[method-assign]
    asyncore.loop(timeout=0, use_poll=True, map=m, count=1)
    best = pollchat.backends.pick_best(
        n for n in pollchat.backends.available_backends() if n != "select")
    assert pollchat.get_loop(m).backend.name == best
    assert best in ("epoll", "kqueue", "devpoll") or best == "poll"
    ch.close()
    b.close()


def test_an_entry_swapped_into_the_map_is_served_after_an_idle_pass(loop: Any,
                                                                   caplog: Any) -> None:
    # map[fd] = another channel, same size, over an entry that wanted nothing
    # (so not registered, and no event to trip over): only the idle-pass
    # check can notice the newcomer.
    a, b = pair()
    first = asyncore.dispatcher_with_send(a, map=loop.map)
    first.pause_reading()  # connected, nothing to send, not reading: wants nothing
    loop.run_once(0)
    assert loop.registered_events(first._fileno) == 0
    got: List[bytes] = []

    class Second(asyncore.dispatcher_with_send):
        def handle_read(self) -> None:
            got.append(self.recv(10))

    second = Second(map={})
    second.set_socket(a, map={})
    second.connected = True
    caplog.set_level(logging.WARNING, logger="pollchat")
    loop.map[a.fileno()] = second  # a raw swap, as some legacy code does
    b.sendall(b"x")
    deadline = time.monotonic() + 10
    while not got:
        assert time.monotonic() < deadline, "the swapped-in channel never got its event"
        loop.run_once(0.05)
    assert got == [b"x"]
    # A map write is not an unobservable state change: no warning about one.
    assert not [r for r in caplog.records if "could not observe" in r.getMessage()]
    del loop.map[a.fileno()]
    a.close()
    b.close()
