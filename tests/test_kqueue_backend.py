"""The kqueue backend relies on nothing that differs between kqueues.

``test_kqueues.py`` records where the kqueues the tests run on differ:
FreeBSD, macOS, our stand-in and libkqueue (README, backend table).  These
tests pin that ``KqueueBackend`` works the same on each:

* it never hands kevent() changes and room for events in one call, so a
  failed change is always an ``OSError`` (libkqueue would otherwise lose the
  error, and wait);
* it reads an event's filter, ``EV_EOF``, ``EV_ERROR`` and ``fflags`` only:
  neither the other flags (``EV_ADD`` is returned by macOS and libkqueue, not
  by FreeBSD) nor ``data`` (the room to write on BSD, 0 on libkqueue);
* closed in a forked child, which BSD gives no kqueue, it does not close the
  fd number, which may name a file of the child's by then.

They run on each kqueue this machine has (native, the stand-in, libkqueue).
"""

from __future__ import annotations

import errno
import os
import select
import socket

import pytest
import standins

from pollchat.backends import ERR, HUP, NVAL, READ, WRITE, make_backend

KQUEUE_VARIANTS = (
    [pytest.param(("kqueue", "native"), id="kqueue")] if hasattr(select, "kqueue") else
    [pytest.param(("kqueue", "standin"), id="kqueue-standin")]
    if standins.KQUEUE_STANDIN_USABLE else []) + [
    pytest.param(("kqueue", "libkqueue"), id="kqueue-libkqueue")]

on_every_kqueue = pytest.mark.parametrize("backend_variant", KQUEUE_VARIANTS, indirect=True)


class ControlSpy:
    """Wraps a kqueue object; records ``(changes, max_events)`` of each call."""

    def __init__(self, kqueue):
        self.kqueue = kqueue
        self.calls = []

    def control(self, changelist, max_events, timeout=None):
        self.calls.append((list(changelist or ()), max_events))
        return self.kqueue.control(changelist, max_events, timeout)

    def __getattr__(self, name):
        return getattr(self.kqueue, name)


@on_every_kqueue
def test_changes_never_share_a_call_with_room_for_events(backend):
    spy = backend._selector = ControlSpy(backend._selector)
    a, b = socket.socketpair()
    closed_a, closed_b = socket.socketpair()
    closed_fd = closed_a.detach()
    os.close(closed_fd)
    closed_b.close()
    try:
        backend.register(a, READ | WRITE)
        b.send(b"x")
        backend.poll(0.05)
        backend.modify(a, READ)
        with pytest.raises(OSError) as info:  # the failure arrives as an exception
            backend.register(closed_fd, READ | WRITE)
        assert info.value.errno == errno.EBADF
        backend.poll(0)
        backend.unregister(a)
    finally:
        a.close()
        b.close()
    changing = [(changes, room) for changes, room in spy.calls if changes]
    assert changing, "no change was made through control()"
    assert all(room == 0 for _, room in changing), spy.calls
    assert any(room for changes, room in spy.calls if not changes), "no poll went through"


class FakeKqueue:
    """Returns the kevents it is given, as a kqueue would from a poll."""

    def __init__(self, events):
        self.events = events

    def control(self, changelist, max_events, timeout=None):
        assert not changelist
        return self.events

    def close(self):
        pass


# The flags every event of a knote carries: none (FreeBSD) or the flags it was
# added with (macOS, libkqueue).  The room to write: BSD's, or libkqueue's 0.
EV_ADD = 0x0001  # the same on every kqueue (FreeBSD, macOS, libkqueue)
STYLES = [pytest.param(0, 65536, id="freebsd"), pytest.param(EV_ADD, 65536, id="macos"),
          pytest.param(EV_ADD, 0, id="libkqueue")]


@on_every_kqueue
@pytest.mark.parametrize(("added", "write_room"), STYLES)
def test_events_are_read_from_filter_eof_error_and_fflags_only(backend, added, write_room):
    kevent = select.kevent
    read, write = select.KQ_FILTER_READ, select.KQ_FILTER_WRITE
    eof, error = select.KQ_EV_EOF, select.KQ_EV_ERROR
    reset = errno.ECONNRESET
    cases = {
        10: ([kevent(10, read, added, 0, 5)], READ),
        11: ([kevent(11, write, added, 0, write_room)], WRITE),
        12: ([kevent(12, read, added, 0, 5), kevent(12, write, added, 0, write_room)],
             READ | WRITE),
        13: ([kevent(13, read, added | eof, 0, 0)], READ),  # half-closed: read b""
        14: ([kevent(14, read, added | eof, reset, 0)], READ | ERR),
        15: ([kevent(15, write, added | eof, 0, write_room)], WRITE | HUP),
        16: ([kevent(16, write, added | eof, reset, write_room)], WRITE | ERR),
        17: ([kevent(17, read, added | error, 0, errno.EBADF)], NVAL),
        18: ([kevent(18, write, added | error, 0, errno.EIO)], ERR),
    }
    backend.close()  # its kqueue; the fake one stands in for it
    backend._selector = FakeKqueue([kev for kevs, _ in cases.values() for kev in kevs])
    assert dict(backend.poll(0)) == {fd: events for fd, (_, events) in cases.items()}


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork()")
# libkqueue runs a thread of its own (signals blocked, fork handlers set), so
# Python 3.12+ warns about forking: nothing to warn about here.
@pytest.mark.filterwarnings("ignore:This process .* is multi-threaded:DeprecationWarning")
@on_every_kqueue
def test_close_in_a_forked_child_leaves_the_fd_number_alone(backend_name):
    backend = make_backend(backend_name)
    number = backend.fileno()
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # child
        try:
            # The child has no kqueue (kqueue(2)): let a file of its own take
            # the number, as any open() might, then close the backend.
            fd = os.open(os.devnull, os.O_RDONLY)  # may take the number itself
            if fd != number:
                os.dup2(fd, number)
                os.close(fd)
            backend.close()
            try:
                os.fstat(number)
                os.write(w, b"kept")
            except OSError:
                os.write(w, b"closed")
        finally:
            os._exit(0)
    os.close(w)
    os.waitpid(pid, 0)
    with os.fdopen(r, "rb") as answer:
        said = answer.read()
    backend.close()
    assert said == b"kept", "closing the backend in a forked child closed a file of the child's"
