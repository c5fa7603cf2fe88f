"""The backends layer: one suite run on every backend, then the registry.

Every backend (native, or kqueue/devpoll through ``standins.py``) goes
through the same tests, parametrized by the ``backend_name`` fixture of
``conftest.py``.  What a backend must report is what it documents
(``backend.reports`` and the ``pollers`` docstring), no more: every poll
result is checked against ``backend.reports``.
"""

from __future__ import annotations

import errno
import importlib.metadata
import logging
import os
import select
import socket
import struct
import sys
import threading
import time

import kqueue_libkqueue
import pytest
import standins

from pollchat import backends

registry = backends.registry
READ, WRITE, PRI, HUP, ERR, NVAL = (backends.READ, backends.WRITE, backends.PRI, backends.HUP,
                                    backends.ERR, backends.NVAL)
INTEREST, event_names = backends.INTEREST, backends.event_names
AlreadyRegisteredError = backends.AlreadyRegisteredError
BackendError = backends.BackendError
FDSetSizeError = backends.FDSetSizeError
NotRegisteredError = backends.NotRegisteredError
UnknownBackendError = backends.UnknownBackendError

pytestmark = pytest.mark.usefixtures("fd_leak_check")

network = pytest.mark.timeout(30)


# -- helpers ----------------------------------------------------------------------


def make_tcp_pair():
    """A connected TCP pair over loopback (ephemeral port): (client, server)."""
    with socket.create_server(("127.0.0.1", 0)) as listener:
        client = socket.create_connection(listener.getsockname(), timeout=5)
        server, _ = listener.accept()
    for sock in (client, server):
        sock.setblocking(False)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return client, server


@pytest.fixture
def tcp_pair():
    client, server = make_tcp_pair()
    yield client, server
    client.close()
    server.close()


def reset(sock):
    """Close ``sock`` so that its peer gets a RST (SO_LINGER 0)."""
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()


def checked_poll(backend, timeout):
    """``backend.poll(timeout)`` as a dict, checked against the contract: each
    fd once, non-empty events, nothing beyond what the backend reports."""
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
    """Poll until ``fd`` is reported with every bit of ``wanted``; return its events."""
    deadline = time.monotonic() + timeout
    while True:
        events = checked_poll(backend, 0.05).get(fd, 0)
        if events & wanted == wanted:
            return events
        if time.monotonic() > deadline:
            raise AssertionError(
                f"{backend.name}: fd {fd} not reported with {event_names(wanted)} within "
                f"{timeout}s (last: {event_names(events)})")


def kqueue_reads_so_error():
    """Whether kqueue here is one on Linux (the stand-in, or libkqueue) that
    reads ``SO_ERROR`` to report it with ``EV_EOF``: on Linux that clears it,
    which BSD does not (standins.py, "Simplified"; README)."""
    return getattr(select, "kqueue", None) in (standins.kqueue, kqueue_libkqueue.kqueue)


# -- readiness ------------------------------------------------------------------------


def test_read_readiness(backend, pair):
    a, b = pair
    key = backend.register(a, READ, data="payload")
    assert (key.fileobj, key.fd, key.events, key.data) == (a, a.fileno(), READ, "payload")
    assert a.fileno() not in checked_poll(backend, 0)
    b.send(b"x")
    events = wait_until(backend, a.fileno(), READ)
    assert not events & (WRITE | PRI), "reported what was not asked for"
    assert [(k.fileobj, ev & READ) for k, ev in backend.select(0)] == [(a, READ)]
    assert a.recv(10) == b"x"
    assert a.fileno() not in checked_poll(backend, 0)


def test_write_readiness(backend, pair):
    a, _ = pair
    backend.register(a, WRITE)
    events = wait_until(backend, a.fileno(), WRITE)
    assert not events & (READ | PRI)


def test_read_and_write_on_many_fds(backend):
    pairs = [socket.socketpair() for _ in range(20)]
    try:
        for i, (a, _) in enumerate(pairs):
            backend.register(a, READ if i % 2 else READ | WRITE)
        for _, b in pairs[:10]:
            b.send(b"x")
        deadline = time.monotonic() + 5
        while True:
            ready = checked_poll(backend, 0.05)
            if all(ready.get(a.fileno(), 0) & READ for a, _ in pairs[:10]) or (
                    time.monotonic() > deadline):
                break
        for i, (a, _) in enumerate(pairs):
            events = ready.get(a.fileno(), 0)
            assert bool(events & READ) == (i < 10), (i, event_names(events))
            assert bool(events & WRITE) == (i % 2 == 0), (i, event_names(events))
    finally:
        for a, b in pairs:
            a.close()
            b.close()


def test_modify(backend, pair):
    a, b = pair
    fd = a.fileno()
    backend.register(a, READ, data=1)
    b.send(b"x")
    wait_until(backend, fd, READ)
    key = backend.modify(a, WRITE, data=2)
    assert (key.events, key.data) == (WRITE, 2)
    assert backend.get_key(a) == key
    events = wait_until(backend, fd, WRITE)
    assert not events & READ, "still reports READ after modify() dropped it"
    backend.modify(a, READ | WRITE, data=2)
    wait_until(backend, fd, READ | WRITE)
    key = backend.modify(a, READ | WRITE, data=3)  # same events, new data
    assert key.data == 3 and backend.get_key(a).data == 3
    with pytest.raises(ValueError):
        backend.modify(a, HUP)
    assert backend.get_key(a).events == READ | WRITE  # unchanged by the failure
    wait_until(backend, fd, READ | WRITE)


def test_modify_unregistered(backend, pair):
    with pytest.raises(NotRegisteredError) as info:
        backend.modify(pair[0], READ)
    assert isinstance(info.value, KeyError)
    assert isinstance(info.value, BackendError)


def test_unregister(backend, pair):
    a, b = pair
    backend.register(a, READ, data="d")
    b.send(b"x")
    wait_until(backend, a.fileno(), READ)
    key = backend.unregister(a)
    assert (key.fileobj, key.data) == (a, "d")
    assert a.fileno() not in checked_poll(backend, 0.05)
    assert len(backend.get_map()) == 0
    with pytest.raises(NotRegisteredError) as info:
        backend.unregister(a)
    assert isinstance(info.value, KeyError) and isinstance(info.value, ValueError)
    backend.register(a, READ)  # and again
    wait_until(backend, a.fileno(), READ)


# -- hang-up and errors -----------------------------------------------------------------


def test_peer_close_socketpair(backend, pair):
    """The peer closes: readable (EOF), and HUP where the backend reports it
    (kqueue: EV_EOF on the write filter)."""
    a, b = pair
    backend.register(a, READ | WRITE)
    b.send(b"bye")
    b.close()
    wanted = READ | (backend.reports & HUP)
    events = wait_until(backend, a.fileno(), wanted)
    assert not events & ERR, "a clean close reported as an error"
    assert a.recv(10) == b"bye"
    assert a.recv(10) == b""


def test_peer_close_read_only_interest(backend, pair):
    a, b = pair
    backend.register(a, READ)
    b.close()
    events = wait_until(backend, a.fileno(), READ)
    assert not events & (WRITE | ERR)
    assert a.recv(10) == b""


@network
def test_peer_close_tcp(backend, tcp_pair):
    client, server = tcp_pair
    backend.register(client, READ | WRITE)
    server.close()
    events = wait_until(backend, client.fileno(), READ)
    assert not events & ERR
    assert client.recv(10) == b""


@network
def test_peer_reset_tcp(backend, tcp_pair):
    """The peer resets (SO_LINGER 0): readable, and ERR where reported."""
    client, server = tcp_pair
    backend.register(client, READ | WRITE)
    reset(server)
    wanted = READ | (backend.reports & ERR)
    wait_until(backend, client.fileno(), wanted)
    if kqueue_reads_so_error():
        # The kqueue read SO_ERROR, which clears it on Linux.
        try:
            assert client.recv(10) == b""
        except ConnectionResetError:
            pass
    else:
        with pytest.raises(ConnectionResetError):
            client.recv(10)


@network
def test_connect_refused_reports_error(backend):
    """A non-blocking connect to a closed port: the failure is reported
    (ERR where the backend reports it, else at least WRITE)."""
    with socket.create_server(("127.0.0.1", 0)) as listener:
        address = listener.getsockname()  # now closed: nobody listens there
    with socket.socket() as sock:
        sock.setblocking(False)
        try:
            sock.connect(address)
        except (BlockingIOError, InterruptedError):
            pass
        except ConnectionRefusedError:
            pytest.skip("the connect failed at once")
        backend.register(sock, READ | WRITE)
        wait_until(backend, sock.fileno(), (backend.reports & ERR) or WRITE)
        assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR) in (0, errno.ECONNREFUSED)


# -- priority data -------------------------------------------------------------------------


@network
def test_out_of_band_data(backend, tcp_pair):
    client, server = tcp_pair
    fd = server.fileno()
    backend.register(server, READ | PRI)
    assert fd not in checked_poll(backend, 0)
    client.send(b"ab")
    client.send(b"!", socket.MSG_OOB)
    if backend.reports & PRI:
        events = wait_until(backend, fd, PRI | READ)
    else:  # kqueue: PRI accepted as interest, never reported
        events = wait_until(backend, fd, READ)
        for _ in range(5):
            checked_poll(backend, 0.02)  # would fail on PRI
    assert events & READ
    assert server.recv(10) == b"ab"
    deadline = time.monotonic() + 5
    while True:
        try:
            assert server.recv(1, socket.MSG_OOB) == b"!"
            break
        except (BlockingIOError, OSError) as exc:  # EINVAL: not arrived yet
            if time.monotonic() > deadline:
                raise AssertionError("the urgent byte never arrived") from exc
            time.sleep(0.01)


def test_priority_only_interest_on_idle_socket(backend, pair):
    a, b = pair
    backend.register(a, PRI)
    b.send(b"normal data")  # not priority data
    assert a.fileno() not in checked_poll(backend, 0.05)


# -- timeouts ----------------------------------------------------------------------------------


def test_timeout_zero_and_negative_return_at_once(backend, pair):
    backend.register(pair[0], READ)
    for timeout in (0, 0.0, -1, -0.5):
        start = time.monotonic()
        assert checked_poll(backend, timeout) == {}
        assert time.monotonic() - start < 1


@pytest.mark.parametrize("timeout", [0.2, 0.05, 0.001, 0.0005])
def test_positive_timeout_waits_at_least_that_long(backend, pair, timeout):
    backend.register(pair[0], READ)
    start = time.perf_counter()
    assert checked_poll(backend, timeout) == {}
    elapsed = time.perf_counter() - start
    assert timeout * 0.9 <= elapsed < timeout + 5


def test_empty_backend_timeout(backend):
    start = time.monotonic()
    assert checked_poll(backend, 0.05) == {}
    assert 0.045 <= time.monotonic() - start < 5


@pytest.mark.parametrize("timeout", [30 * 86400, float("inf")], ids=["30days", "inf"])
def test_very_long_timeout_is_accepted(backend, pair, timeout):
    """A timeout longer than poll(2)/epoll_wait() can take (INT_MAX ms, about
    24.8 days), or infinite, must not raise.  An fd is ready, so no wait."""
    a, _ = pair
    backend.register(a, WRITE)
    assert checked_poll(backend, timeout).get(a.fileno(), 0) & WRITE


@network
def test_none_blocks_until_woken_by_another_thread(backend, pair):
    a, b = pair
    backend.register(a, READ)
    timer = threading.Timer(0.2, b.send, (b"wake",))
    start = time.monotonic()
    timer.start()
    try:
        ready = checked_poll(backend, None)
    finally:
        timer.join()
    assert ready.get(a.fileno(), 0) & READ
    assert time.monotonic() - start >= 0.15


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
CLOSED_FD_REPORT = {"select": NVAL, "poll": NVAL, "devpoll": NVAL, "epoll": 0, "kqueue": 0}


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
    if backend.name in ("epoll", "kqueue"):
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


# -- the registry ---------------------------------------------------------------------------


@pytest.fixture
def registry_state(monkeypatch):
    """Let a test change the registry; it is restored afterwards."""
    monkeypatch.setattr(registry, "_registry", dict(registry._registry))
    monkeypatch.setattr(registry, "_entry_points_loaded", registry._entry_points_loaded)


def test_available_backends():
    names = backends.available_backends()
    assert "select" in names
    assert set(names) <= set(backends.all_backends())
    assert {"epoll", "kqueue", "devpoll", "poll", "select"} <= set(backends.all_backends())
    ordered = [n for n in backends.PREFERENCE if n in names]
    assert names[:len(ordered)] == ordered  # most scalable first
    for name in ("epoll", "poll", "kqueue", "devpoll"):
        assert (name in names) == hasattr(select, name)
    status = {info.name: info for info in backends.backend_status()}
    for name, info in status.items():
        assert info.available == (name in names)
        if not info.available:
            assert info.reason, f"no reason given why {name} is unavailable"


def test_available_backends_with_standins(monkeypatch):
    if not (standins.KQUEUE_STANDIN_USABLE and standins.DEVPOLL_STANDIN_USABLE):
        pytest.skip("needs epoll and poll")
    standins.install_kqueue(monkeypatch)
    standins.install_devpoll(monkeypatch)
    names = backends.available_backends()
    assert names[:5] == ["epoll", "kqueue", "devpoll", "poll", "select"]


@pytest.mark.parametrize(("available", "best"), [
    (["select", "poll"], "poll"),
    (["poll", "epoll", "select"], "epoll"),
    (["select", "poll", "devpoll"], "devpoll"),
    (["devpoll", "kqueue"], "kqueue"),
    (["select", "kqueue", "epoll"], "epoll"),
    (["thirdparty", "select"], "select"),
    (["thirdparty", "other"], "thirdparty"),
    (iter(["poll", "select"]), "poll"),
])
def test_pick_best(available, best):
    assert backends.pick_best(available) == best


def test_pick_best_of_nothing():
    with pytest.raises(UnknownBackendError):
        backends.pick_best([])


def test_best_backend():
    assert backends.best_backend() == backends.pick_best(backends.available_backends())
    if sys.platform.startswith("linux"):
        assert backends.best_backend() == "epoll"


def test_get_backend():
    factory = backends.get_backend(" SELECT ")
    assert factory is backends.SelectBackend
    backend = backends.get_backend("auto")()
    try:
        assert backend.name == backends.best_backend()
    finally:
        backend.close()
    with pytest.raises(TypeError):
        backends.get_backend(None)


def test_get_backend_unknown_lists_choices():
    with pytest.raises(UnknownBackendError) as info:
        backends.get_backend("nosuch")
    assert isinstance(info.value, ValueError)
    message = str(info.value)
    assert "nosuch" in message
    for name in [*backends.available_backends(), "auto"]:
        assert name in message


def test_get_backend_unavailable_says_why():
    missing = [info for info in backends.backend_status() if not info.available]
    if not missing:
        pytest.skip("every backend is available here")
    with pytest.raises(UnknownBackendError) as info:
        backends.get_backend(missing[0].name)
    assert "not available" in str(info.value)
    assert missing[0].reason in str(info.value)


def test_choose_backend_precedence(monkeypatch):
    env = backends.ENV_VAR
    best = backends.best_backend()
    # explicit > environment > use_poll > auto
    assert backends.choose_backend("select", use_poll=True, environ={env: "poll"}) == "select"
    assert backends.choose_backend(None, use_poll=True, environ={env: "select"}) == "select"
    # use_poll=True means "not select": the best of the others
    not_select = backends.pick_best(n for n in backends.available_backends() if n != "select")
    assert backends.choose_backend(use_poll=True, environ={}) == not_select != "select"
    assert backends.resolve_backend(use_poll=True, environ={}).origin == "use_poll=True"
    assert backends.resolve_backend(environ={env: "poll"}).origin == f"${env}"
    assert backends.resolve_backend("select", environ={}).origin == "argument"
    assert backends.choose_backend(environ={}) == best
    assert backends.choose_backend("auto", environ={env: "select"}) == best
    assert backends.choose_backend(environ={env: "auto"}) == best
    assert backends.choose_backend(environ={env: "  "}) == best  # blank: unset
    assert backends.choose_backend(environ={env: " Poll "}) == "poll"
    # environ=None reads os.environ
    monkeypatch.setenv(env, "select")
    assert backends.choose_backend() == "select"
    monkeypatch.delenv(env)
    assert backends.choose_backend() == best


def test_choose_backend_bad_environment_names_the_variable():
    with pytest.raises(UnknownBackendError) as info:
        backends.choose_backend(environ={backends.ENV_VAR: "nosuch"})
    assert "POLLCHAT_BACKEND" in str(info.value)
    assert "nosuch" in str(info.value)
    with pytest.raises(UnknownBackendError, match="requested"):
        backends.choose_backend("nosuch", environ={backends.ENV_VAR: "select"})


def test_make_backend():
    backend = backends.make_backend(environ={backends.ENV_VAR: "select"})
    try:
        assert isinstance(backend, backends.SelectBackend)
        assert backends.make_backend(backend) is backend  # an instance passes through
    finally:
        backend.close()


class PluggedBackend(backends.SelectBackend):
    name = "plugged"


@pytest.mark.usefixtures("registry_state")
def test_register_backend():
    backends.register_backend("plugged", PluggedBackend)
    names = backends.all_backends()
    assert names.index("plugged") > names.index("select")  # after the built-in ones
    assert "plugged" in backends.available_backends()
    assert backends.get_backend("plugged") is PluggedBackend
    assert backends.best_backend() != "plugged"
    with backends.make_backend("plugged") as backend:
        assert isinstance(backend, PluggedBackend)
    with pytest.raises(ValueError, match="already registered"):
        backends.register_backend("plugged", PluggedBackend)
    backends.register_backend("plugged", backends.SelectBackend, replace=True)
    assert backends.get_backend("plugged") is backends.SelectBackend
    with pytest.raises(ValueError, match="already registered"):
        backends.register_backend("epoll", PluggedBackend)


@pytest.mark.usefixtures("registry_state")
def test_register_backend_unavailable():
    backends.register_backend("elsewhere", PluggedBackend, available=False)
    assert "elsewhere" in backends.all_backends()
    assert "elsewhere" not in backends.available_backends()
    with pytest.raises(UnknownBackendError, match="not available"):
        backends.get_backend("elsewhere")
    flag = []
    backends.register_backend("someday", PluggedBackend, available=lambda: bool(flag))
    assert "someday" not in backends.available_backends()
    flag.append(1)
    assert "someday" in backends.available_backends()


@pytest.mark.usefixtures("registry_state")
@pytest.mark.parametrize("name", ["", "auto", "two words", "a-b", None, 3])
def test_register_backend_bad_names(name):
    with pytest.raises(ValueError):
        backends.register_backend(name, PluggedBackend)


@pytest.mark.usefixtures("registry_state")
def test_register_backend_not_callable():
    with pytest.raises(TypeError):
        backends.register_backend("plugged", "PluggedBackend")


@pytest.mark.usefixtures("registry_state")
def test_register_backend_mixed_case_name_is_selectable():
    """Selection lower()s the name, so registration must not keep a name
    that could never be selected."""
    backends.register_backend("MyPoller", PluggedBackend)
    assert backends.get_backend("MyPoller") is PluggedBackend
    assert backends.choose_backend("mypoller") in backends.available_backends()


class FakeEntryPoint:
    def __init__(self, name, obj=None, error=None):
        self.name = name
        self.obj = obj
        self.error = error

    def load(self):
        if self.error is not None:
            raise self.error
        return self.obj


def fake_entry_points(monkeypatch, entries):
    """Make importlib.metadata.entry_points() return ``entries`` for
    pollchat's group; returns the list of calls made."""
    calls = []

    def entry_points(**kwargs):
        calls.append(kwargs)
        if sys.version_info >= (3, 10):
            assert kwargs == {"group": backends.ENTRY_POINT_GROUP}
            return list(entries)
        assert not kwargs  # 3.9: a dict of every group
        return {backends.ENTRY_POINT_GROUP: list(entries),
                "other.group": [FakeEntryPoint("nope", PluggedBackend)]}

    monkeypatch.setattr(importlib.metadata, "entry_points", entry_points)
    monkeypatch.setattr(registry, "_entry_points_loaded", False)
    return calls


class ImpostorBackend(backends.SelectBackend):
    name = "epoll"


@pytest.mark.usefixtures("registry_state")
def test_entry_points(monkeypatch, caplog):
    calls = fake_entry_points(monkeypatch, [
        FakeEntryPoint("plugged", PluggedBackend),
        FakeEntryPoint("broken", error=ImportError("no such module")),
        FakeEntryPoint("epoll", ImpostorBackend),  # may not shadow a built-in
        FakeEntryPoint("bad name", PluggedBackend),
    ])
    builtin_epoll = registry._registry["epoll"]
    with caplog.at_level(logging.ERROR, logger="pollchat.backends"):
        names = backends.available_backends()
    assert "plugged" in names
    assert names.index("plugged") > names.index("select")
    assert "broken" not in backends.all_backends()
    assert "bad name" not in backends.all_backends()
    assert "nope" not in backends.all_backends()
    assert registry._registry["epoll"] is builtin_epoll
    assert "broken" in caplog.text and "bad name" in caplog.text
    with backends.make_backend("plugged") as backend:
        assert isinstance(backend, PluggedBackend)
    backends.all_backends()
    assert len(calls) == 1  # loaded once


@pytest.mark.usefixtures("registry_state")
@pytest.mark.parametrize("first_call", ["get_backend", "choose_backend", "make_backend"])
def test_entry_point_backend_selectable_on_first_call(monkeypatch, first_call):
    """The entry points must be loaded before a name is looked up, not only
    when the names are listed."""
    fake_entry_points(monkeypatch, [FakeEntryPoint("plugged", PluggedBackend)])
    if first_call == "get_backend":
        assert backends.get_backend("plugged") is PluggedBackend
    elif first_call == "choose_backend":
        assert backends.choose_backend(environ={backends.ENV_VAR: "plugged"}) == "plugged"
    else:
        with backends.make_backend("plugged") as backend:
            assert isinstance(backend, PluggedBackend)


@pytest.mark.usefixtures("registry_state")
def test_entry_point_mixed_case_cannot_shadow_a_builtin(monkeypatch):
    fake_entry_points(monkeypatch, [FakeEntryPoint("EPOLL", ImpostorBackend)])
    assert backends.all_backends().count("epoll") == 1
    assert registry._registry["epoll"].factory is not ImpostorBackend
