"""The backends, run on every backend: what registration refuses, fds
closed behind the backend's back, regular files, close(), and more fds than
select() can watch (``FD_SETSIZE``).
"""

from __future__ import annotations

import errno
import os
import socket
import time

import pytest
from helpers import checked_poll, wait_until

from pollchat import backends
from pollchat.backends import (
    ERR,
    HUP,
    INTEREST,
    NVAL,
    READ,
    WRITE,
    AlreadyRegisteredError,
    FDSetSizeError,
)

pytestmark = pytest.mark.usefixtures("fd_leak_check")


# -- registration errors ------------------------------------------------------------------


def test_double_registration(backend, pair):
    a, _ = pair
    backend.register(a, READ)
    for fileobj in (a, a.fileno()):
        with pytest.raises(AlreadyRegisteredError) as info:
            backend.register(fileobj, WRITE)
        assert isinstance(info.value, KeyError)
        assert isinstance(info.value, ValueError)
        assert "modify()" in str(info.value)
        assert not str(info.value).startswith("'")  # not KeyError's repr
    assert backend.get_key(a).events == READ
    assert len(backend.get_map()) == 1


@pytest.mark.parametrize("events", [0, HUP, ERR, NVAL, READ | HUP, WRITE | ERR, 64, -1,
                                    INTEREST | NVAL])
def test_bad_event_values(backend, pair, events):
    with pytest.raises(ValueError, match="invalid events"):
        backend.register(pair[0], events)
    assert len(backend.get_map()) == 0
    backend.register(pair[0], READ | WRITE)  # nothing half-registered in the kernel
    wait_until(backend, pair[0].fileno(), WRITE)


@pytest.mark.parametrize("events", ["READ", 1.0, None, True, [READ]])
def test_bad_event_types(backend, pair, events):
    with pytest.raises(TypeError):
        backend.register(pair[0], events)
    assert len(backend.get_map()) == 0


def test_register_closed_socket(backend):
    sock = socket.socket()
    sock.close()
    with pytest.raises(ValueError, match="closed") as info:
        backend.register(sock, READ)
    assert not isinstance(info.value, OSError)
    with pytest.raises(ValueError):
        backend.register(-1, READ)
    assert len(backend.get_map()) == 0


@pytest.mark.parametrize("fileobj", ["not a file", object(), 1.5, None])
def test_register_non_file_object_is_type_error(backend, fileobj):
    with pytest.raises(TypeError, match="fileno"):
        backend.register(fileobj, READ)
    assert len(backend.get_map()) == 0


# -- closed behind the backend's back ---------------------------------------------------------

#: What a backend reports for an fd closed while registered: NVAL (select
#: finds it after EBADF, poll(2) and /dev/poll say POLLNVAL), or nothing
#: (epoll and kqueue drop a closed fd silently).
CLOSED_FD_REPORT = {"select": NVAL, "poll": NVAL, "devpoll": NVAL, "epoll": 0, "kqueue": 0,
                    "asyncio": 0, "uvloop": 0}  # the event loops run on epoll here


def test_fd_closed_behind_the_backends_back(backend, pair):
    a, b = pair
    fd = a.detach()  # the pair fixture's close() of `a` is then a no-op
    backend.register(fd, READ)
    backend.register(b, WRITE)
    os.close(fd)
    ready = checked_poll(backend, 0.1)
    expected = CLOSED_FD_REPORT[backend.name]
    assert ready.get(fd, 0) == expected
    if expected:
        assert backend.reports & NVAL
    backend.unregister(fd)  # no error: the kernel forgot it already
    assert checked_poll(backend, 0).get(b.fileno(), 0) & WRITE
    assert fd not in checked_poll(backend, 0)


def test_regular_file_closed_behind_the_backends_back(backend, backend_variant, tmp_path):
    path = tmp_path / "f"
    path.write_bytes(b"content")
    with open(path, "rb", buffering=0) as f:
        fd = os.dup(f.fileno())
    backend.register(fd, READ)
    os.close(fd)
    expected = CLOSED_FD_REPORT[backend.name]
    if backend_variant[1] == "libkqueue":
        # libkqueue departs from BSD, which drops the knotes at close: it
        # cannot see the close and keeps reporting the file (through an
        # always-ready eventfd of its own) until it is unregistered (README).
        expected = READ
    try:
        assert checked_poll(backend, 0).get(fd, 0) == expected
    finally:
        backend.unregister(fd)


def test_register_closed_raw_fd(backend):
    """Bookkeeping follows the kernel: a backend whose kernel keeps a registry
    refuses a closed fd (EBADF) and records nothing; select/poll/devpoll take
    it and then report it as their documented closed-fd event."""
    a, b = socket.socketpair()
    fd = a.detach()
    os.close(fd)
    b.close()
    if backend.name in ("epoll", "kqueue", "asyncio", "uvloop"):
        with pytest.raises(OSError) as info:
            backend.register(fd, READ)
        assert info.value.errno == errno.EBADF
        assert len(backend.get_map()) == 0
    else:
        backend.register(fd, READ)
        assert checked_poll(backend, 0.05).get(fd, 0) == CLOSED_FD_REPORT[backend.name]
        backend.unregister(fd)


def test_unregister_after_close(backend, pair):
    a, b = pair
    backend.register(a, READ | WRITE, data="x")
    b.close()
    a.close()
    key = backend.unregister(a)  # found by identity although fileno() is now -1
    assert key.data == "x"
    assert len(backend.get_map()) == 0


def test_unregister_after_close_and_fd_reuse(backend):
    a, b = socket.socketpair()
    fd = a.fileno()
    backend.register(a, READ | WRITE)
    a.close()
    b.close()
    c, d = socket.socketpair()
    try:
        if c.fileno() != fd:
            pytest.skip("the fd number was not reused")
        backend.unregister(a)  # must not touch c's (absent) registration wrongly
        backend.register(c, READ | WRITE)
        d.send(b"x")
        wait_until(backend, fd, READ | WRITE)
        backend.unregister(c)
        assert fd not in checked_poll(backend, 0)
    finally:
        c.close()
        d.close()


def test_unregister_raw_fd_after_close(backend):
    a, b = socket.socketpair()
    fd = os.dup(a.fileno())
    a.close()
    b.close()
    backend.register(fd, WRITE)
    os.close(fd)
    assert backend.unregister(fd).fd == fd


# -- files, close, misc ----------------------------------------------------------------------


def test_regular_file_is_ready(backend, tmp_path):
    path = tmp_path / "f"
    path.write_bytes(b"content")
    with open(path, "r+b", buffering=0) as f:
        backend.register(f, READ | WRITE)
        wait_until(backend, f.fileno(), READ | WRITE)
        backend.modify(f, WRITE)
        events = wait_until(backend, f.fileno(), WRITE)
        assert not events & READ
        backend.unregister(f)
        assert f.fileno() not in checked_poll(backend, 0)


def test_close_and_context_manager(make_backend, pair):
    backend = make_backend()
    with backend as same:
        assert same is backend
        backend.register(pair[0], READ)
        fileno = backend.fileno() if backend.kernel_registry else None
    assert backend.get_map() is None
    if fileno is not None:
        with pytest.raises(OSError):
            os.fstat(fileno)
    backend.close()  # twice is fine


def test_describe_and_attributes(backend):
    assert backend.name in backends.all_backends()
    assert backend.describe().startswith(f"{backend.name}: reports ")
    assert backend.name in repr(backend)
    assert backend.reports & (READ | WRITE) == READ | WRITE
    assert not backend.reports & ~backends.ALL_EVENTS
    assert isinstance(backend.limits, str) and backend.limits
    assert backend.kernel_registry == (backend.name in {"epoll", "kqueue", "devpoll"})


# -- many fds ----------------------------------------------------------------------------------


@pytest.fixture
def raised_fd_limit():
    """RLIMIT_NOFILE's soft limit raised to the hard one (restored after)."""
    resource = pytest.importorskip("resource")
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = hard if hard != resource.RLIM_INFINITY else max(soft, 8192)
    if target != resource.RLIM_INFINITY and target < 2600:
        pytest.skip(f"RLIMIT_NOFILE hard limit {hard} is too low")
    resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    yield
    resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


@pytest.mark.timeout(60)
@pytest.mark.usefixtures("raised_fd_limit")
def test_more_than_fd_setsize_sockets(backend):
    if backend.max_fd is not None:
        pytest.skip(f"{backend.name} is limited to fds <= {backend.max_fd}")
    pairs = []
    try:
        while len(pairs) * 2 <= 1100 or pairs[-1][1].fileno() < 1100:
            pairs.append(socket.socketpair())
        socks = [s for p in pairs for s in p]
        assert len(socks) > 1024 and max(s.fileno() for s in socks) >= 1100
        for sock in socks:
            backend.register(sock, READ)
        assert len(backend.get_map()) == len(socks)
        # Readiness on the highest fds (and one low one) only.
        highest = sorted(socks, key=socket.socket.fileno)[-3:]
        lowest = min(socks, key=socket.socket.fileno)
        peer = {a: b for a, b in pairs} | {b: a for a, b in pairs}
        for sock in [*highest, lowest]:
            peer[sock].send(b"x")
        expected = {s.fileno() for s in [*highest, lowest]}
        deadline = time.monotonic() + 10
        while True:
            ready = checked_poll(backend, 0.1)
            if set(ready) >= expected or time.monotonic() > deadline:
                break
        assert set(ready) == expected
        assert all(ready[fd] & READ for fd in expected)
        # Everything readable: every fd reported within a few polls (epoll
        # returns at most 1023 per call; level-triggered, the rest next time).
        for a, b in pairs:
            a.send(b"y")
            b.send(b"y")
        seen = set()
        for _ in range(6):
            ready = checked_poll(backend, 1)
            seen |= {fd for fd, events in ready.items() if events & READ}
            if len(seen) == len(socks):
                break
        assert seen == {s.fileno() for s in socks}
    finally:
        for a, b in pairs:
            a.close()
            b.close()


def _free_fd_at_or_above(start):
    fd = start
    while True:
        try:
            os.fstat(fd)
        except OSError:
            return fd
        fd += 1


@pytest.mark.usefixtures("raised_fd_limit")
def test_select_refuses_fds_at_or_above_fd_setsize(pair):
    a, b = pair
    backend = backends.SelectBackend()
    big = os.dup2(a.fileno(), _free_fd_at_or_above(backends.FD_SETSIZE))
    try:
        assert big >= 1024
        with pytest.raises(FDSetSizeError) as info:
            backend.register(big, READ)
        assert isinstance(info.value, ValueError)
        message = str(info.value)
        assert "epoll" in message and "poll" in message and "1024" in message
        assert len(backend.get_map()) == 0
    finally:
        os.close(big)
        backend.close()


@pytest.mark.usefixtures("raised_fd_limit")
def test_select_accepts_fd_setsize_minus_one(pair):
    a, b = pair
    top = backends.FD_SETSIZE - 1
    try:
        os.fstat(top)
        pytest.skip(f"fd {top} is in use")
    except OSError:
        pass
    os.dup2(a.fileno(), top)
    backend = backends.SelectBackend()
    try:
        backend.register(top, READ)
        b.send(b"x")
        assert wait_until(backend, top, READ) & READ
    finally:
        backend.close()
        os.close(top)


def test_backends_use_only_the_public_selectors_api():
    """The standard selectors' private bookkeeping (_BaseSelectorImpl,
    _fd_to_key...) moved between Python 3.12 and 3.13: the backends must
    depend on none of it, only on BaseSelector and SelectorKey."""
    import ast
    import pathlib
    import selectors

    root = pathlib.Path(backends.__file__).parent
    private = []
    for path in sorted(root.glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name)
                    and node.value.id == "selectors" and node.attr.startswith("_")):
                private.append(f"{path.name}:{node.lineno}: selectors.{node.attr}")
    assert private == []
    assert [c for c in backends.Backend.__mro__ if c.__module__ == "selectors"] == [
        selectors.BaseSelector]
