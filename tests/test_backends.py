"""The backends, run on every backend: readiness, hang-up and errors,
priority data, timeouts.

Every backend (native, or kqueue/devpoll through ``standins.py``) goes
through the same tests, parametrized by the ``backend_name`` fixture of
``conftest.py``.  What a backend must report is what it documents
(``backend.reports`` and the ``pollers`` docstring), no more: every poll
result is checked against ``backend.reports`` (``helpers.checked_poll``).
Registration is in test_backends_registration.py, the registry of names in
test_backends_registry.py.
"""

from __future__ import annotations

import errno
import select
import socket
import threading
import time

import kqueue_libkqueue
import pytest
import standins
from helpers import checked_poll, reset, wait_until

from pollchat.backends import (
    ERR,
    HUP,
    PRI,
    READ,
    WRITE,
    BackendError,
    NotRegisteredError,
    event_names,
)
from pollchat.backends._base import NativeEvents

pytestmark = pytest.mark.usefixtures("fd_leak_check")

network = pytest.mark.timeout(30)


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
        # The stand-in read SO_ERROR, which clears it on Linux (standins.py).
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


def test_native_events_translate_only_what_differs():
    flags = NativeEvents(((select.POLLIN, READ), (select.POLLOUT, WRITE),
                          (select.POLLPRI, PRI), (select.POLLHUP, HUP)))
    assert flags.unchanged == frozenset({select.POLLIN})  # POLLIN is READ (1)
    plain = [(5, select.POLLIN), (6, select.POLLIN)]
    assert flags.translate(plain) is plain  # nothing to translate: the list itself
    mixed = [(5, select.POLLIN), (6, select.POLLOUT | select.POLLIN), (7, select.POLLPRI)]
    assert flags.translate(mixed) == [(5, READ), (6, READ | WRITE), (7, PRI)]
    # Bits nobody translates (POLLRDNORM...) are dropped, so the mask differs.
    assert flags.translate([(5, select.POLLIN | select.POLLRDNORM)]) == [(5, READ)]
    assert flags.translate(iter([(8, select.POLLHUP)])) == [(8, HUP)]
    assert flags.translate([]) == []
