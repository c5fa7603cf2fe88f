"""The stand-ins of ``standins.py`` against documented kqueue and /dev/poll
behaviour, so that the backend tests run on them can be trusted.

Each test takes ``kq`` (or ``dp``): the stand-in, and also the real
``select`` module where this machine has kqueue (or /dev/poll), so that on a
BSD the same tests check the stand-in's model against the kernel.
"""

from __future__ import annotations

import errno
import os
import select
import socket
import threading
import time

import pytest
import standins
from helpers import reset
from hypothesis import given, settings
from hypothesis import strategies as st

from pollchat import backends

pytestmark = pytest.mark.usefixtures("fd_leak_check")

KQ_IMPLS = ([pytest.param(select, id="native")] if hasattr(select, "kqueue") else []) + (
    [pytest.param(standins, id="standin")] if standins.KQUEUE_STANDIN_USABLE else [])
DP_IMPLS = ([pytest.param(select, id="native")] if hasattr(select, "devpoll") else []) + (
    [pytest.param(standins, id="standin")] if standins.DEVPOLL_STANDIN_USABLE else [])


@pytest.fixture(params=KQ_IMPLS or [pytest.param(None, marks=pytest.mark.skip("no kqueue"))])
def kq(request):
    """The module holding kqueue/kevent/KQ_*: ``select`` or ``standins``."""
    return request.param


@pytest.fixture
def kqueue(kq):
    queue = kq.kqueue()
    yield queue
    queue.close()


@pytest.fixture(params=DP_IMPLS or [pytest.param(None, marks=pytest.mark.skip("no poll"))])
def dp(request):
    return request.param


@pytest.fixture
def devpoll(dp):
    poller = dp.devpoll()
    yield poller
    poller.close()


def ident_filters(events):
    return sorted((kev.ident, kev.filter) for kev in events)


def by_filter(events, kq):
    """{filter: kevent}, asserting at most one event per filter."""
    result = {}
    for kev in events:
        assert kev.filter not in result, f"two events for one knote: {events}"
        result[kev.filter] = kev
    return result


def wait_events(queue, n, want, timeout=5.0):
    """control() until ``want(events)`` holds; return those events."""
    deadline = time.monotonic() + timeout
    while True:
        events = queue.control(None, n, 0.05)
        if want(events):
            return events
        if time.monotonic() > deadline:
            raise AssertionError(f"no matching events in {timeout}s; last: {events}")


# -- kevent ---------------------------------------------------------------------


def test_kevent_defaults_and_attributes(kq, pair):
    kev = kq.kevent(5)
    assert (kev.ident, kev.filter, kev.flags, kev.fflags, kev.data, kev.udata) == (
        5, kq.KQ_FILTER_READ, kq.KQ_EV_ADD, 0, 0, 0)
    kev = kq.kevent(pair[0], kq.KQ_FILTER_WRITE, kq.KQ_EV_ADD | kq.KQ_EV_ONESHOT, 0, 7, 9)
    assert kev.ident == pair[0].fileno()
    assert kev.filter == kq.KQ_FILTER_WRITE
    assert kev.flags == kq.KQ_EV_ADD | kq.KQ_EV_ONESHOT
    assert (kev.data, kev.udata) == (7, 9)
    kev.data = 11  # the members are writable
    assert kev.data == 11
    assert kq.kevent(ident=3, filter=kq.KQ_FILTER_WRITE, udata=1).udata == 1


def test_kevent_bad_idents(kq):
    class Negative:
        def fileno(self):
            return -1

    with pytest.raises(OverflowError):
        kq.kevent(-1)
    with pytest.raises(ValueError, match="negative"):
        kq.kevent(Negative())
    with pytest.raises(TypeError):
        kq.kevent("abc")
    with pytest.raises(TypeError):
        kq.kevent(1, "read")
    with pytest.raises(OverflowError):
        kq.kevent(1, 2**20)


def test_kevent_compare_and_hash(kq):
    assert kq.kevent(3) == kq.kevent(3)
    assert kq.kevent(3) != kq.kevent(3, udata=1)
    assert kq.kevent(3) < kq.kevent(4)
    assert kq.kevent(3, kq.KQ_FILTER_WRITE) < kq.kevent(3, kq.KQ_FILTER_READ)  # -2 < -1
    assert kq.kevent(3) != "kevent"
    with pytest.raises(TypeError):
        kq.kevent(3) < 3  # noqa: B015
    with pytest.raises(TypeError):
        hash(kq.kevent(3))
    assert repr(kq.kevent(3)).startswith("<select.kevent ident=3 filter=-1 flags=0x1")


def test_constants_are_bsd_values(kq):
    assert (kq.KQ_FILTER_READ, kq.KQ_FILTER_WRITE) == (-1, -2)
    assert (kq.KQ_EV_ADD, kq.KQ_EV_DELETE, kq.KQ_EV_ENABLE, kq.KQ_EV_DISABLE) == (1, 2, 4, 8)
    assert (kq.KQ_EV_ONESHOT, kq.KQ_EV_CLEAR) == (0x10, 0x20)
    assert (kq.KQ_EV_EOF, kq.KQ_EV_ERROR) == (0x8000, 0x4000)


# -- kqueue object ----------------------------------------------------------------


def test_kqueue_fileno_close_closed(kq):
    queue = kq.kqueue()
    fd = queue.fileno()
    assert isinstance(fd, int) and fd >= 0
    os.fstat(fd)
    assert not os.get_inheritable(fd)
    assert queue.closed is False
    queue.close()
    assert queue.closed is True
    queue.close()  # idempotent
    with pytest.raises(OSError):
        os.fstat(fd)
    with pytest.raises(ValueError, match="closed"):
        queue.fileno()
    with pytest.raises(ValueError, match="closed"):
        queue.control(None, 1, 0)


def test_kqueue_takes_no_arguments(kq):
    with pytest.raises(TypeError):
        kq.kqueue(1)


def test_control_argument_errors(kqueue, kq):
    with pytest.raises(ValueError, match="0 or positive"):
        kqueue.control(None, -1, 0)
    with pytest.raises(ValueError, match="positive or None"):
        kqueue.control(None, 1, -1)
    with pytest.raises(TypeError):
        kqueue.control(None, 1, "1")
    with pytest.raises(TypeError):
        kqueue.control(None, 1.5, 0)
    with pytest.raises(TypeError, match="not iterable"):
        kqueue.control(5, 1, 0)
    with pytest.raises(TypeError, match="kevent"):
        kqueue.control([1], 1, 0)


# -- registration -------------------------------------------------------------------


def test_filters_are_registered_independently(kqueue, kq, pair):
    a, b = pair
    fd = a.fileno()
    assert kqueue.control([kq.kevent(a, kq.KQ_FILTER_READ)], 0) == []
    assert kqueue.control(None, 4, 0) == []  # nothing to read, write not watched
    kqueue.control([kq.kevent(a, kq.KQ_FILTER_WRITE)], 0)
    assert ident_filters(kqueue.control(None, 4, 0)) == [(fd, kq.KQ_FILTER_WRITE)]
    b.send(b"abc")
    events = wait_events(kqueue, 4, lambda evs: len(evs) == 2)
    assert ident_filters(events) == sorted([(fd, kq.KQ_FILTER_READ), (fd, kq.KQ_FILTER_WRITE)])
    read = by_filter(events, kq)[kq.KQ_FILTER_READ]
    assert read.data == 3  # bytes available
    assert not read.flags & (kq.KQ_EV_EOF | kq.KQ_EV_ERROR | kq.KQ_EV_ADD)
    # Deleting one filter leaves the other.
    kqueue.control([kq.kevent(a, kq.KQ_FILTER_WRITE, kq.KQ_EV_DELETE)], 0)
    assert ident_filters(kqueue.control(None, 4, 0)) == [(fd, kq.KQ_FILTER_READ)]
    kqueue.control([kq.kevent(a, kq.KQ_FILTER_READ, kq.KQ_EV_DELETE)], 0)
    assert kqueue.control(None, 4, 0) == []


def test_readding_updates_not_duplicates(kqueue, kq, pair):
    a, _ = pair
    kqueue.control([kq.kevent(a, kq.KQ_FILTER_WRITE, udata=1)], 0)
    kqueue.control([kq.kevent(a, kq.KQ_FILTER_WRITE, udata=2)], 0)
    events = kqueue.control(None, 4, 0)
    assert len(events) == 1
    assert events[0].udata == 2


def test_delete_missing_filter_is_enoent(kqueue, kq, pair):
    a, _ = pair
    with pytest.raises(FileNotFoundError) as info:
        kqueue.control([kq.kevent(a, kq.KQ_FILTER_READ, kq.KQ_EV_DELETE)], 0)
    assert info.value.errno == errno.ENOENT
    kqueue.control([kq.kevent(a, kq.KQ_FILTER_READ)], 0)
    with pytest.raises(FileNotFoundError):  # the write filter is not registered
        kqueue.control([kq.kevent(a, kq.KQ_FILTER_WRITE, kq.KQ_EV_DELETE)], 0)
    with pytest.raises(FileNotFoundError):
        kqueue.control([kq.kevent(a, kq.KQ_FILTER_WRITE, kq.KQ_EV_ENABLE)], 0)


def test_errors_become_events_when_there_is_room(kqueue, kq, pair):
    a, _ = pair
    changes = [kq.kevent(a, kq.KQ_FILTER_READ, kq.KQ_EV_DELETE, udata=5),
               kq.kevent(a, kq.KQ_FILTER_WRITE)]
    start = time.monotonic()
    events = kqueue.control(changes, 4, None)  # errors: no wait, despite timeout None
    assert time.monotonic() - start < 2
    assert len(events) == 1
    (kev,) = events
    assert (kev.ident, kev.filter, kev.flags, kev.data, kev.udata) == (
        a.fileno(), kq.KQ_FILTER_READ, kq.KQ_EV_ERROR, errno.ENOENT, 5)
    # The change after the failed one was applied.
    assert ident_filters(kqueue.control(None, 4, 0)) == [(a.fileno(), kq.KQ_FILTER_WRITE)]


def test_add_closed_fd_is_ebadf(kqueue, kq):
    a, b = socket.socketpair()
    fd = a.fileno()
    a.close()
    b.close()
    with pytest.raises(OSError) as info:
        kqueue.control([kq.kevent(fd, kq.KQ_FILTER_READ)], 0)
    assert info.value.errno == errno.EBADF


def test_unknown_filter_is_einval(kqueue, kq, pair):
    with pytest.raises(OSError) as info:
        kqueue.control([kq.kevent(pair[0], -100)], 0)
    assert info.value.errno == errno.EINVAL


def test_closed_fd_drops_its_filters_silently(kqueue, kq, pair):
    a, b = pair
    fd = a.fileno()
    kqueue.control([kq.kevent(a, kq.KQ_FILTER_READ), kq.kevent(a, kq.KQ_FILTER_WRITE)], 0)
    b.send(b"x")
    assert len(wait_events(kqueue, 4, lambda evs: len(evs) == 2)) == 2
    a.close()
    assert kqueue.control(None, 4, 0) == []
    with pytest.raises(OSError) as info:
        kqueue.control([kq.kevent(fd, kq.KQ_FILTER_READ, kq.KQ_EV_DELETE)], 0)
    assert info.value.errno == errno.EBADF
    # The number reused by a new socket: its filters are not there.
    c, d = socket.socketpair()
    try:
        if c.fileno() != fd:
            pytest.skip("the fd number was not reused")
        with pytest.raises(FileNotFoundError):
            kqueue.control([kq.kevent(c, kq.KQ_FILTER_READ, kq.KQ_EV_DELETE)], 0)
        assert kqueue.control(None, 4, 0) == []
        kqueue.control([kq.kevent(c, kq.KQ_FILTER_WRITE)], 0)
        assert ident_filters(kqueue.control(None, 4, 0)) == [(fd, kq.KQ_FILTER_WRITE)]
    finally:
        c.close()
        d.close()


def test_disable_and_enable(kqueue, kq, pair):
    a, _ = pair
    kqueue.control([kq.kevent(a, kq.KQ_FILTER_WRITE, kq.KQ_EV_ADD | kq.KQ_EV_DISABLE)], 0)
    assert kqueue.control(None, 4, 0) == []
    kqueue.control([kq.kevent(a, kq.KQ_FILTER_WRITE, kq.KQ_EV_ENABLE)], 0)
    assert len(kqueue.control(None, 4, 0)) == 1
    kqueue.control([kq.kevent(a, kq.KQ_FILTER_WRITE, kq.KQ_EV_DISABLE)], 0)
    assert kqueue.control(None, 4, 0) == []
    # Disabled is still registered: delete works.
    kqueue.control([kq.kevent(a, kq.KQ_FILTER_WRITE, kq.KQ_EV_DELETE)], 0)


def test_oneshot_is_deleted_once_delivered(kqueue, kq, pair):
    a, _ = pair
    kqueue.control([kq.kevent(a, kq.KQ_FILTER_WRITE, kq.KQ_EV_ADD | kq.KQ_EV_ONESHOT)], 0)
    (kev,) = kqueue.control(None, 4, 0)
    assert kev.flags & kq.KQ_EV_ONESHOT
    assert kqueue.control(None, 4, 0) == []
    with pytest.raises(FileNotFoundError):
        kqueue.control([kq.kevent(a, kq.KQ_FILTER_WRITE, kq.KQ_EV_DELETE)], 0)


def test_clear_is_edge_triggered(kqueue, kq, pair):
    a, b = pair
    kqueue.control([kq.kevent(a, kq.KQ_FILTER_READ, kq.KQ_EV_ADD | kq.KQ_EV_CLEAR)], 0)
    b.send(b"x")
    assert len(wait_events(kqueue, 4, lambda evs: len(evs) == 1)) == 1
    assert kqueue.control(None, 4, 0) == []  # still unread, but already reported
    b.send(b"y")
    (kev,) = wait_events(kqueue, 4, lambda evs: len(evs) == 1)
    assert kev.data == 2


# -- EOF and errors -------------------------------------------------------------------


def test_peer_close_sets_eof_on_both_filters_of_a_socketpair(kqueue, kq, pair):
    a, b = pair
    kqueue.control([kq.kevent(a, kq.KQ_FILTER_READ), kq.kevent(a, kq.KQ_FILTER_WRITE)], 0)
    b.send(b"last")
    b.close()
    events = by_filter(wait_events(kqueue, 4, lambda evs: len(evs) == 2 and all(
        kev.flags & kq.KQ_EV_EOF for kev in evs)), kq)
    read = events[kq.KQ_FILTER_READ]
    assert read.data == 4  # EOF, but still data to read
    assert read.fflags == 0  # no error
    assert events[kq.KQ_FILTER_WRITE].fflags == 0
    assert a.recv(10) == b"last"
    assert a.recv(10) == b""


@pytest.mark.timeout(30)
def test_tcp_half_close_is_read_eof_only(kqueue, kq, tcp_pair):
    client, server = tcp_pair
    kqueue.control([kq.kevent(client, kq.KQ_FILTER_READ),
                    kq.kevent(client, kq.KQ_FILTER_WRITE)], 0)
    server.shutdown(socket.SHUT_WR)
    events = by_filter(wait_events(kqueue, 4, lambda evs: any(
        kev.flags & kq.KQ_EV_EOF for kev in evs)), kq)
    assert events[kq.KQ_FILTER_READ].flags & kq.KQ_EV_EOF
    assert events[kq.KQ_FILTER_READ].fflags == 0
    # We can still send: the write filter is not at EOF.
    assert not events[kq.KQ_FILTER_WRITE].flags & kq.KQ_EV_EOF


@pytest.mark.timeout(30)
def test_tcp_reset_sets_eof_with_the_error(kqueue, kq, tcp_pair):
    client, server = tcp_pair
    kqueue.control([kq.kevent(client, kq.KQ_FILTER_READ),
                    kq.kevent(client, kq.KQ_FILTER_WRITE)], 0)
    reset(server)
    events = by_filter(wait_events(kqueue, 4, lambda evs: len(evs) == 2 and all(
        kev.flags & kq.KQ_EV_EOF for kev in evs)), kq)
    assert events[kq.KQ_FILTER_READ].fflags == errno.ECONNRESET
    assert events[kq.KQ_FILTER_WRITE].fflags == errno.ECONNRESET
    # Still reported, with the error, on the next call (level-triggered).
    again = by_filter(kqueue.control(None, 4, 0), kq)
    assert again[kq.KQ_FILTER_READ].fflags == errno.ECONNRESET


# -- waiting --------------------------------------------------------------------------


def test_timeouts(kqueue, kq, pair):
    kqueue.control([kq.kevent(pair[0], kq.KQ_FILTER_READ)], 0)
    start = time.monotonic()
    assert kqueue.control(None, 4, 0) == []
    assert time.monotonic() - start < 1
    start = time.monotonic()
    assert kqueue.control(None, 4, 0.2) == []
    assert 0.18 <= time.monotonic() - start < 5


def test_long_and_overflowing_timeouts(kqueue, kq, pair):
    a, _ = pair
    kqueue.control([kq.kevent(a, kq.KQ_FILTER_WRITE)], 0)
    # 30 days: more milliseconds than an int holds (epoll's limit), fine for kqueue
    assert len(kqueue.control(None, 4, 30 * 86400)) == 1
    for timeout in (float("inf"), 1e10, 10**20):
        with pytest.raises(OverflowError):
            kqueue.control(None, 4, timeout)


def test_zero_max_events_does_not_wait(kqueue, kq, pair):
    a, _ = pair
    start = time.monotonic()
    assert kqueue.control([kq.kevent(a, kq.KQ_FILTER_READ)], 0, None) == []
    assert kqueue.control(None, 0, None) == []
    assert time.monotonic() - start < 2
    # The change was applied.
    with pytest.raises(FileNotFoundError):
        kqueue.control([kq.kevent(a, kq.KQ_FILTER_WRITE, kq.KQ_EV_DELETE)], 0)
    kqueue.control([kq.kevent(a, kq.KQ_FILTER_READ, kq.KQ_EV_DELETE)], 0)


@pytest.mark.timeout(30)
def test_none_blocks_until_an_event(kqueue, kq, pair):
    a, b = pair
    kqueue.control([kq.kevent(a, kq.KQ_FILTER_READ)], 0)
    timer = threading.Timer(0.2, b.send, (b"x",))
    start = time.monotonic()
    timer.start()
    try:
        events = kqueue.control(None, 4, None)
    finally:
        timer.join()
    assert ident_filters(events) == [(a.fileno(), kq.KQ_FILTER_READ)]
    assert time.monotonic() - start >= 0.15


def test_max_events_caps_and_is_fair(kqueue, kq, pair):
    a, b = pair
    kqueue.control([kq.kevent(a, kq.KQ_FILTER_READ), kq.kevent(a, kq.KQ_FILTER_WRITE)], 0)
    b.send(b"x")
    wait_events(kqueue, 4, lambda evs: len(evs) == 2)
    seen = set()
    for _ in range(4):
        events = kqueue.control(None, 1, 0)
        assert len(events) == 1
        seen.add(events[0].filter)
    assert seen == {kq.KQ_FILTER_READ, kq.KQ_FILTER_WRITE}


def test_regular_files(kqueue, kq, tmp_path):
    path = tmp_path / "data"
    path.write_bytes(b"0123456789")
    with open(path, "rb", buffering=0) as f:
        kqueue.control([kq.kevent(f, kq.KQ_FILTER_READ), kq.kevent(f, kq.KQ_FILTER_WRITE)], 0)
        events = by_filter(kqueue.control(None, 4, 0), kq)
        assert events[kq.KQ_FILTER_READ].data == 10
        f.read(4)
        assert by_filter(kqueue.control(None, 4, 0), kq)[kq.KQ_FILTER_READ].data == 6
        f.read()
        # At the end of the file: not readable; writable always.
        assert ident_filters(kqueue.control(None, 4, 0)) == [(f.fileno(), kq.KQ_FILTER_WRITE)]
        fd = f.fileno()
    assert kqueue.control(None, 4, 0) == []  # closed: dropped
    with pytest.raises(OSError) as info:
        kqueue.control([kq.kevent(fd, kq.KQ_FILTER_WRITE, kq.KQ_EV_DELETE)], 0)
    assert info.value.errno == errno.EBADF


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(["add", "delete", "disable", "enable"]),
                          st.sampled_from(["read", "write"])), max_size=12),
       st.booleans())
def test_model_of_add_delete_enable_disable(ops, readable):
    """Random change sequences against a model of BSD's rules."""
    kq = standins
    if not kq.KQUEUE_STANDIN_USABLE:
        pytest.skip("no epoll")
    filters = {"read": kq.KQ_FILTER_READ, "write": kq.KQ_FILTER_WRITE}
    actions = {"add": kq.KQ_EV_ADD, "delete": kq.KQ_EV_DELETE,
               "disable": kq.KQ_EV_DISABLE, "enable": kq.KQ_EV_ENABLE}
    queue = kq.kqueue()
    a, b = socket.socketpair()
    try:
        if readable:
            b.send(b"x")
        model = {}  # filter -> enabled
        for action, name in ops:
            kfilter = filters[name]
            change = kq.kevent(a, kfilter, actions[action])
            if kfilter not in model and action != "add":
                with pytest.raises(FileNotFoundError):
                    queue.control([change], 0)
                continue
            queue.control([change], 0)
            if action == "add":
                model.setdefault(kfilter, True)
            elif action == "delete":
                del model[kfilter]
            else:
                model[kfilter] = action == "enable"
        ready = {kq.KQ_FILTER_WRITE} | ({kq.KQ_FILTER_READ} if readable else set())
        expected = sorted((a.fileno(), f) for f, on in model.items() if on and f in ready)
        assert ident_filters(queue.control(None, 4, 0)) == expected
    finally:
        queue.close()
        a.close()
        b.close()


# -- installing -------------------------------------------------------------------------


@pytest.mark.skipif(not standins.KQUEUE_STANDIN_USABLE, reason="needs epoll")
def test_install_kqueue_makes_the_backend_available():
    had = hasattr(select, "kqueue")
    with pytest.MonkeyPatch.context() as mp:
        standins.install_kqueue(mp)
        assert select.kqueue is standins.kqueue
        assert select.KQ_EV_EOF == 0x8000
        assert "kqueue" in backends.available_backends()
        with backends.make_backend("kqueue") as backend:
            assert isinstance(backend, backends.KqueueBackend)
            assert isinstance(backend._selector, standins.kqueue)
    assert hasattr(select, "kqueue") == had
    if not had:
        assert not hasattr(select, "KQ_EV_EOF")
        assert "kqueue" not in backends.available_backends()


@pytest.mark.skipif(not standins.DEVPOLL_STANDIN_USABLE, reason="needs poll")
def test_install_devpoll_makes_the_backend_available():
    had = hasattr(select, "devpoll")
    with pytest.MonkeyPatch.context() as mp:
        standins.install_devpoll(mp)
        assert "devpoll" in backends.available_backends()
        with backends.make_backend("devpoll") as backend:
            assert isinstance(backend, backends.DevpollBackend)
            assert backend.fileno() == backend._selector.fileno()
    assert hasattr(select, "devpoll") == had


def test_install_unknown_standin():
    with pytest.MonkeyPatch.context() as mp, pytest.raises(ValueError, match="kqueue"):
        standins.install_standin("epoll", mp)


# -- devpoll ------------------------------------------------------------------------------


def test_devpoll_register_ors_into_an_existing_registration(devpoll, pair):
    a, b = pair
    fd = a.fileno()
    devpoll.register(a, select.POLLIN)
    assert devpoll.poll(0) == []
    devpoll.register(a, select.POLLOUT)  # now POLLIN|POLLOUT, not just POLLOUT
    b.send(b"x")
    deadline = time.monotonic() + 5
    while True:
        events = dict(devpoll.poll(50))
        if events.get(fd, 0) & select.POLLIN or time.monotonic() > deadline:
            break
    assert events[fd] & select.POLLIN
    assert events[fd] & select.POLLOUT


def test_devpoll_modify_replaces(devpoll, pair):
    a, _ = pair
    devpoll.register(a, select.POLLIN | select.POLLOUT)
    assert dict(devpoll.poll(0))[a.fileno()] & select.POLLOUT
    devpoll.modify(a, select.POLLIN)
    assert devpoll.poll(0) == []


def test_devpoll_default_mask_and_unregister(devpoll, pair):
    a, _ = pair
    devpoll.register(a)  # POLLIN|POLLPRI|POLLOUT
    assert devpoll.poll(0) == [(a.fileno(), select.POLLOUT)]
    devpoll.unregister(a)
    assert devpoll.poll(0) == []
    devpoll.unregister(a)  # not registered: ignored
    devpoll.unregister(12345)


def test_devpoll_closed_fd_is_pollnval(devpoll):
    a, b = socket.socketpair()
    fd = a.fileno()
    devpoll.register(fd, select.POLLIN)
    a.close()
    b.close()
    assert devpoll.poll(0) == [(fd, select.POLLNVAL)]
    devpoll.unregister(fd)
    assert devpoll.poll(0) == []


def test_devpoll_timeouts(devpoll, pair):
    devpoll.register(pair[0], select.POLLIN)
    start = time.monotonic()
    assert devpoll.poll(0) == []
    assert devpoll.poll(200) == []  # milliseconds
    assert 0.18 <= time.monotonic() - start < 5
    with pytest.raises(OverflowError):
        devpoll.poll(-2)
    with pytest.raises(OverflowError):
        devpoll.poll(2**31)  # more milliseconds than an int holds
    with pytest.raises(TypeError):
        devpoll.poll("1")


def test_devpoll_fileno_close_closed(dp):
    poller = dp.devpoll()
    fd = poller.fileno()
    os.fstat(fd)
    assert not os.get_inheritable(fd)
    assert poller.closed is False
    poller.close()
    assert poller.closed is True
    poller.close()
    with pytest.raises(OSError):
        os.fstat(fd)
    for call in (poller.fileno, lambda: poller.poll(0), lambda: poller.register(0),
                 lambda: poller.modify(0), lambda: poller.unregister(0)):
        with pytest.raises(ValueError, match="closed"):
            call()


def test_devpoll_bad_arguments(devpoll):
    with pytest.raises(ValueError):
        devpoll.register(-1)
    with pytest.raises(TypeError):
        devpoll.register("abc")
    with pytest.raises(OverflowError):
        devpoll.register(0, 1 << 20)
