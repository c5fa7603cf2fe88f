"""The /dev/poll stand-in of ``standins.py`` against documented /dev/poll
behaviour, and how the stand-ins are installed.

Each devpoll test takes ``dp``: the stand-in, and also the real ``select``
module where this machine has /dev/poll, so that on Solaris/illumos the same
tests check the stand-in's model against the kernel.  The kqueue stand-in is
tested with libkqueue in ``test_kqueues.py``.
"""

from __future__ import annotations

import os
import select
import socket
import time

import pytest
import standins

from pollchat import backends

pytestmark = pytest.mark.usefixtures("fd_leak_check")

DP_IMPLS = ([pytest.param(select, id="native")] if hasattr(select, "devpoll") else []) + (
    [pytest.param(standins, id="standin")] if standins.DEVPOLL_STANDIN_USABLE else [])


@pytest.fixture(params=DP_IMPLS or [pytest.param(None, marks=pytest.mark.skip("no poll"))])
def dp(request):
    return request.param


@pytest.fixture
def devpoll(dp):
    poller = dp.devpoll()
    yield poller
    poller.close()


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
