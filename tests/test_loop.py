"""The dispatcher core: persistent registration, interest tracking, maps,
races, timers, wake-up, several loops.  Every test runs on every backend."""

import os
import socket
import threading
import time

import pytest
from helpers import receive_all, run_until, socket_pair_on_fd

import pollchat
from pollchat import asyncore
from pollchat.backends import READ, WRITE

pytestmark = pytest.mark.timeout(30)


def spy(lp):
    """Count the backend calls ``lp`` makes from now on (the backend object
    is shared by the loop and its interest tracker: its methods are wrapped
    in place)."""
    calls = {"register": 0, "modify": 0, "unregister": 0, "poll": 0}
    backend = lp.backend
    for name in calls:
        method = getattr(backend, name)

        def counted(*args, _name=name, _method=method, **kwargs):
            calls[_name] += 1
            return _method(*args, **kwargs)
        setattr(backend, name, counted)
    return calls


def count_predicate_checks(monkeypatch):
    """Count how often the loop asks a channel what it wants (every ask of
    readable()/writable() by the loop goes through wanted_events)."""
    asked = []
    original = pollchat.interest.wanted_events

    def counting(channel):
        asked.append(channel)
        return original(channel)
    monkeypatch.setattr(pollchat.interest, "wanted_events", counting)
    return asked


class Echo(asyncore.dispatcher_with_send):
    def handle_read(self):
        data = self.recv(4096)
        if data:
            self.send(data)


class Listener(asyncore.dispatcher):
    def __init__(self, map, handler=Echo):
        super().__init__(map=map)
        self.handler = handler
        self.accepted = []
        self.create_socket()
        self.set_reuse_addr()
        self.bind(("127.0.0.1", 0))
        self.listen(128)
        self.port = self.socket.getsockname()[1]

    def handle_accepted(self, sock, addr):
        self.accepted.append(self.handler(sock, map=self._map))


class Predicates(asyncore.dispatcher):
    """Counts how often the loop asks; overrides nothing."""

    asked = 0

    def readable(self):
        Predicates.asked += 1
        return True


def test_idle_channels_cost_no_backend_calls_and_no_predicates(loop, monkeypatch):
    server = Listener(loop.map)
    clients = [socket.create_connection(("127.0.0.1", server.port)) for _ in range(20)]
    run_until(loop, lambda: len(server.accepted) == 20)
    loop.run_once(0)  # settle the interest of the new channels
    assert all(loop.registered_events(ch._fileno) & READ for ch in server.accepted)
    calls = spy(loop)
    asked = count_predicate_checks(monkeypatch)
    for _ in range(50):
        loop.run_once(0)
    assert calls["poll"] == 50
    assert calls["register"] == calls["modify"] == calls["unregister"] == 0
    assert asked == []
    # The same passes in strict mode ask every channel every time: the
    # counter above is able to see it.
    loop._interest.strict = True
    loop.run_once(0)
    assert len(asked) == len(loop.map)
    for c in clients:
        c.close()


def test_echo_round_trip_needs_no_interest_change(loop):
    server = Listener(loop.map)
    client = socket.create_connection(("127.0.0.1", server.port))
    run_until(loop, lambda: server.accepted)
    loop.run_once(0)
    calls = spy(loop)
    client.sendall(b"ping")
    client.settimeout(5)
    run_until(loop, lambda: not server.accepted[0].out_buffer and calls["poll"] > 1)
    assert client.recv(10) == b"ping"
    # Data went out in the read handler itself: the channel never needed
    # WRITE interest, so no modify() call at all.
    assert calls["modify"] == 0
    client.close()


def test_output_that_waits_turns_write_interest_on_once_and_off_once(loop):
    a, b = socket.socketpair()
    ch = asyncore.dispatcher_with_send(a, map=loop.map)
    ch.handle_read = lambda: None
    loop.run_once(0)
    assert loop.registered_events(ch._fileno) & (READ | WRITE) == READ
    calls = spy(loop)
    big = b"x" * (4 << 20)  # more than the socket takes at once
    ch.send(big)
    loop.run_once(0)
    assert loop.registered_events(ch._fileno) & WRITE
    assert calls["modify"] == 1
    assert receive_all(loop, b, len(big)) == big
    loop.run_once(0)
    assert loop.registered_events(ch._fileno) & (READ | WRITE) == READ
    assert calls["modify"] == 2  # on once, off once, whatever the passes between
    b.close()


def test_overriding_channel_is_asked_each_pass_and_backend_told_on_change(loop):
    a, b = socket.socketpair()

    class Gate(asyncore.dispatcher):
        open = False
        asked = 0

        def readable(self):
            Gate.asked += 1
            return self.open

        def writable(self):
            return False

        def handle_read(self):
            self.got = self.recv(10)

    gate = Gate(a, map=loop.map)
    loop.run_once(0)
    calls = spy(loop)
    Gate.asked = 0
    b.send(b"x")
    for _ in range(5):
        loop.run_once(0)
    assert Gate.asked == 5
    assert calls["register"] == 0  # not readable: not registered
    assert not hasattr(gate, "got")
    gate.open = True
    run_until(loop, lambda: hasattr(gate, "got"))
    assert gate.got == b"x"
    assert calls["register"] == 1
    gate.close()
    b.close()


def test_strict_mode_asks_every_channel(backend_name):
    lp = pollchat.Loop(backend_name, strict=True)
    try:
        a, b = socket.socketpair()
        ch = asyncore.dispatcher_with_send(a, map=lp.map)
        lp.run_once(0)
        ch.out_buffer = b"raw"  # legacy code writing state directly
        b.settimeout(5)
        run_until(lp, lambda: not ch.out_buffer)
        assert b.recv(10) == b"raw"
        b.close()
    finally:
        asyncore.close_all(lp.map)
        lp.close()


def test_direct_map_mutation_is_noticed(loop):
    a, b = socket.socketpair()
    ch = asyncore.dispatcher(a, map=loop.map)
    loop.run_once(0)
    assert loop.statistics()["registered"] == 1
    del loop.map[ch._fileno]  # behind the loop's back, as CPython's tests do
    b.send(b"x")
    loop.run_once(0)
    assert loop.statistics()["registered"] == 0
    loop.map[a.fileno()] = ch  # and back, raw
    loop.run_once(0)
    assert loop.statistics()["registered"] == 1
    loop.map.clear()
    loop.run_once(0)
    assert loop.statistics()["registered"] == 0
    a.close()
    b.close()


def assert_dispatch_tables_match_the_backend(lp):
    interest = lp._interest
    live = {fd: reg for fd, reg in interest.keys.items() if reg.data is not None}
    assert interest.channels == {fd: reg.data for fd, reg in live.items()}
    assert interest.object_keys == {fd: reg.fileobj for fd, reg in live.items()
                                    if type(reg.fileobj) is not int}


def test_dispatch_tables_follow_every_registration_change(loop):
    """The pass finds an event's channel in Interest.channels (and a non-int
    map key in Interest.object_keys), not in the backend's keys: both must
    agree with the backend after every change."""
    pairs = [socket.socketpair() for _ in range(3)]
    channels = [asyncore.dispatcher(a, map=loop.map) for a, _ in pairs]
    loop.run_once(0)
    assert len(loop._interest.channels) == 3
    assert_dispatch_tables_match_the_backend(loop)
    c, d = socket.socketpair()
    keyed = asyncore.dispatcher(c, map={})
    loop.map[c] = keyed  # keyed by the socket object, as IRC bots do
    loop.run_once(0)
    assert loop._interest.object_keys == {c.fileno(): c}
    assert_dispatch_tables_match_the_backend(loop)
    channels[0].close()  # unregistered at once, before the socket closes
    assert_dispatch_tables_match_the_backend(loop)
    del loop.map[c]  # behind the loop's back
    loop.run_once(0)
    assert_dispatch_tables_match_the_backend(loop)
    assert loop._interest.object_keys == {}
    loop.map.clear()
    loop.run_once(0)
    assert loop._interest.channels == {}
    assert_dispatch_tables_match_the_backend(loop)
    for sock in (c, d, *(s for pair in pairs for s in pair)):
        sock.close()


@pytest.mark.parametrize("how", ["close", "raw"])
def test_fd_reused_in_the_same_pass_gets_no_stale_events(loop, how):
    """bpo-30931: the first channel dispatched removes the other one, and a
    new channel C takes the removed one's fd in the same pass; the removed
    one's pending event must reach neither it nor C.  Removed by ``close()``
    (its registration goes at once), or by raw writes, as legacy code does:
    its socket closed and its map entry deleted behind the library's back
    (the registration is still there: the dispatch-time map check stops it).
    """
    keep = []
    log = []

    class Peer(asyncore.dispatcher):
        def __init__(self, sock, name, map):
            super().__init__(sock, map=map)
            self.name = name

        def writable(self):
            return False

        def handle_read(self):
            log.append(self.name)
            self.recv(10)
            if len(log) > 1:
                return
            victim = next(ch for ch in loop.map.values() if ch is not self)
            fd = victim._fileno
            if how == "close":
                victim.close()
            else:
                victim.socket.close()
                del loop.map[fd]
            c_sock, c_peer = socket_pair_on_fd(fd)  # C really reuses the fd
            keep.append(c_peer)
            if how == "close":
                Peer(c_sock, "C", loop.map)
            else:
                loop.map[fd] = Peer(c_sock, "C", {})  # a raw write again

    pairs = [socket.socketpair() for _ in range(2)]
    Peer(pairs[0][0], "A", loop.map)
    Peer(pairs[1][0], "B", loop.map)
    loop.run_once(0)
    for _, peer in pairs:
        peer.send(b"x")  # both readable: one pass reports both
    loop.run_once(0.5)
    assert len(log) == 1 and log[0] in "AB"  # the other one's event was dropped
    loop.run_once(0)  # C is registered now, but has no data of its own
    assert log == log[:1]
    keep[0].send(b"y")  # C works normally
    run_until(loop, lambda: "C" in log)
    for s in keep + [pairs[0][1], pairs[1][1]]:
        s.close()


def test_close_unregisters_before_the_socket_is_closed(loop):
    """close() takes the channel out of the kernel's set while its fd is still
    open: once closed, a duplicate of the socket held elsewhere (a forked
    child, os.dup) must not keep the old registration alive and reporting."""
    a, b = socket.socketpair()
    ch = asyncore.dispatcher(a, map=loop.map)
    ch.handle_read = lambda: None
    ch.writable = lambda: False
    loop.run_once(0)
    fd = ch._fileno
    assert loop.registered_events(fd)
    dup = os.dup(fd)
    try:
        ch.close()
        b.send(b"pending")  # readable, through the duplicate's file
        assert fd not in dict(loop.backend.poll(0))
    finally:
        os.close(dup)
        b.close()


def test_handle_close_runs_once_per_pass(loop):
    """bpo-30985: a read handler that closes the channel, on an event set
    that also carries HUP, must not see handle_close() twice."""
    a, b = socket.socketpair()
    closes = []

    class Once(asyncore.dispatcher):
        def writable(self):
            return False

        def handle_read(self):
            self.recv(10)
            self.close()

        def handle_close(self):
            closes.append(1)
            self.close()

    Once(a, map=loop.map)
    loop.run_once(0)
    b.send(b"x")
    b.close()  # READ (+HUP where the backend reports it) in one event set
    loop.run_once(0.5)
    assert closes == []  # read closed it; nothing after that
    assert not loop.map


def test_peer_close_reaches_handle_close(loop):
    a, b = socket.socketpair()
    closed = []

    class Reader(asyncore.dispatcher):
        def writable(self):
            return False

        def handle_read(self):
            self.recv(10)

        def handle_close(self):
            closed.append(True)
            self.close()

    Reader(a, map=loop.map)
    b.close()
    run_until(loop, lambda: closed)
    assert closed == [True]


def test_out_of_band_data_reaches_handle_expt(loop):
    if not loop.backend.reports & 4:  # PRI
        pytest.skip(f"{loop.backend.name} cannot report priority data (see README table)")
    server = socket.create_server(("127.0.0.1", 0))
    client = socket.create_connection(server.getsockname())
    conn, _ = server.accept()
    got = []

    class Expt(asyncore.dispatcher):
        def writable(self):
            return False

        def handle_read(self):
            self.recv(10)

        def handle_expt(self):
            got.append(self.socket.recv(1, socket.MSG_OOB))

    Expt(conn, map=loop.map)
    loop.run_once(0)
    client.send(b"!", socket.MSG_OOB)
    run_until(loop, lambda: got)
    assert got == [b"!"]
    for s in (client, server):
        s.close()


def test_connect_refused_goes_to_handle_error(loop, request):
    if request.node.callspec.id.startswith(("kqueue-standin", "kqueue-libkqueue")):
        pytest.skip("kqueue on Linux (the stand-in, libkqueue) must read SO_ERROR to report "
                    "EV_EOF's fflags, which on Linux clears it; BSD keeps it for "
                    "handle_connect_event() (tests/standins.py, 'Simplified'; README)")
    probe = socket.socket()
    probe.bind(("127.0.0.1", 0))
    port = probe.getsockname()[1]
    probe.close()  # nothing listens there now
    errors = []

    class Client(asyncore.dispatcher):
        def handle_connect(self):
            errors.append("connected?!")

        def handle_error(self):
            import sys

            errors.append(sys.exc_info()[1])
            self.close()

    c = Client(map=loop.map)
    c.create_socket()
    try:
        c.connect(("127.0.0.1", port))
    except OSError as exc:  # refused at once: also acceptable
        errors.append(exc)
    run_until(loop, lambda: errors or not loop.map)
    assert errors and isinstance(errors[0], OSError)


def test_timers_run_in_order_and_shrink_the_poll_timeout(loop):
    a, b = socket.socketpair()
    asyncore.dispatcher(a, map=loop.map).writable = lambda: False
    fired = []
    loop.call_later(0.05, fired.append, 2)
    loop.call_later(0.01, fired.append, 1)
    cancelled = loop.call_later(0.02, fired.append, "cancelled")
    cancelled.cancel()
    start = time.monotonic()
    while len(fired) < 2:
        loop.run_once(30.0)  # would block 30 s without the timers
        assert time.monotonic() - start < 5
    assert fired == [1, 2]
    assert loop.time() >= start
    b.close()


def test_run_returns_when_map_empty_and_timers_done(loop):
    fired = []
    loop.call_later(0.01, fired.append, "x")
    loop.run(timeout=30.0)
    assert fired == ["x"]


def test_timer_exception_is_logged_not_raised(loop, caplog):
    def boom():
        raise RuntimeError("boom")

    loop.call_later(0, boom)
    ok = []
    loop.call_later(0, ok.append, 1)
    loop.run(timeout=1)
    assert ok == [1]
    assert "boom" in caplog.text


def test_call_soon_threadsafe_wakes_a_blocked_loop(loop):
    a, b = socket.socketpair()
    ch = asyncore.dispatcher(a, map=loop.map)
    ch.writable = lambda: False
    loop.run_once(0)
    done = []

    def later():
        time.sleep(0.1)
        loop.call_soon_threadsafe(lambda: done.append(threading.get_ident()))

    t = threading.Thread(target=later)
    t.start()
    start = time.monotonic()
    loop.run_once(None)  # no timeout: only the wake-up can end this pass
    t.join()
    assert time.monotonic() - start < 5
    assert done == [threading.get_ident()]  # ran in the loop's thread, in that pass
    b.close()


def test_loop_refuses_a_second_thread(loop):
    a, b = socket.socketpair()
    asyncore.dispatcher(a, map=loop.map).writable = lambda: False
    inside = threading.Event()
    release = threading.Event()
    errors = []

    class Blocker(asyncore.dispatcher):
        def writable(self):
            return False

        def handle_read(self):
            self.recv(1)
            inside.set()
            release.wait(5)

    c, d = socket.socketpair()
    Blocker(c, map=loop.map)
    d.send(b"x")
    t = threading.Thread(target=loop.run_once, args=(1.0,))
    t.start()
    assert inside.wait(5)
    try:
        loop.run_once(0)
    except RuntimeError as exc:
        errors.append(str(exc))
    release.set()
    t.join()
    assert errors and "another thread" in errors[0]
    for s in (b, d):
        s.close()


def test_several_loops_each_on_its_own_backend(backend_name):
    loops = [pollchat.Loop(backend_name), pollchat.Loop("select")]
    try:
        assert loops[0].backend is not loops[1].backend
        listeners = [Listener(lp.map) for lp in loops]
        clients = [socket.create_connection(("127.0.0.1", s.port)) for s in listeners]
        for c in clients:
            c.sendall(b"hello")
            c.settimeout(5)
        deadline = time.monotonic() + 5
        got = [b"", b""]
        for c in clients:
            c.setblocking(False)
        while got != [b"hello", b"hello"] and time.monotonic() < deadline:
            for lp in loops:
                lp.run_once(0.01)
            for i, c in enumerate(clients):
                try:
                    got[i] += c.recv(10)
                except BlockingIOError:
                    pass
        assert got == [b"hello", b"hello"]
        assert [lp.backend.name for lp in loops] == [backend_name, "select"]
        for c in clients:
            c.close()
    finally:
        for lp in loops:
            asyncore.close_all(lp.map)
            lp.close()


def test_one_map_one_loop():
    m = {}
    lp = pollchat.Loop(map=m)
    try:
        with pytest.raises(ValueError, match="already has a loop"):
            pollchat.Loop(map=m)
        assert pollchat.get_loop(m) is lp
    finally:
        lp.close()


def test_module_loop_uses_env_backend(monkeypatch, backend_name):
    monkeypatch.setenv("POLLCHAT_BACKEND", backend_name)
    m = {}
    a, b = socket.socketpair()
    got = []

    class Reader(asyncore.dispatcher):
        def writable(self):
            return False

        def handle_read(self):
            got.append(self.recv(10))
            lp = pollchat.get_loop(m)
            got.append(lp.backend.name)
            self.close()

    Reader(a, map=m)
    b.send(b"x")
    asyncore.loop(timeout=0.01, map=m, count=100)
    assert got == [b"x", backend_name]
    assert pollchat.loop.loop_for_map(m) is None  # released once the map emptied
    b.close()


def test_select_backend_refuses_fds_past_fd_setsize_with_a_clear_error(caplog):
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard < 1100:
        pytest.skip(f"the hard fd limit ({hard}) is too low to reach fd 1024")
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, 1100) if hard ==
                       resource.RLIM_INFINITY else hard, hard))
    lp = pollchat.Loop("select")
    a, b = socket.socketpair()
    high = os.dup2(a.fileno(), 1050)
    try:
        closed = []

        class High(asyncore.dispatcher):
            def handle_close(self):
                closed.append(True)
                self.close()

        High(socket.socket(fileno=high), map=lp.map)
        lp.run_once(0)
        assert closed == [True]
        assert "FD_SETSIZE" in caplog.text and "epoll" in caplog.text
    finally:
        a.close()
        b.close()
        asyncore.close_all(lp.map)
        lp.close()
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
# libkqueue runs a thread of its own (signals blocked, fork handlers set), so
# Python 3.12+ warns about forking: nothing to warn about here.
@pytest.mark.filterwarnings("ignore:This process .* is multi-threaded:DeprecationWarning")
def test_forked_child_gets_fresh_kernel_objects(loop):
    a, b = socket.socketpair()
    asyncore.dispatcher(a, map=loop.map).writable = lambda: False
    loop.run_once(0)
    parent_backend = loop.backend
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # child
        try:
            ch = next(iter(loop.map.values()))
            ch.handle_read = lambda: ch.recv(10)
            loop.run_once(0)
            ok = loop.backend is not parent_backend and loop.statistics()["registered"] == 1
            os.write(w, b"1" if ok else b"0")
        finally:
            os._exit(0)
    os.close(w)
    _, status = os.waitpid(pid, 0)
    assert os.read(r, 1) == b"1"
    os.close(r)
    assert loop.backend is parent_backend
    b.close()


def test_interest_sync_happens_for_push_from_a_timer(loop):
    a, b = socket.socketpair()
    ch = asyncore.dispatcher_with_send(a, map=loop.map)
    ch.handle_read = lambda: None
    loop.run_once(0)
    assert loop.registered_events(ch._fileno) & (READ | WRITE) == READ
    big = b"x" * (4 << 20)  # more than the socket takes at once

    loop.call_later(0, ch.send, big)
    assert receive_all(loop, b, len(big)) == big
    b.close()


def test_stop_wakes_a_blocked_run_from_another_thread(loop):
    a, b = socket.socketpair()
    ch = asyncore.dispatcher(a, map=loop.map)
    ch.writable = lambda: False
    timer = threading.Timer(0.1, loop.stop)
    timer.start()
    start = time.monotonic()
    loop.run(timeout=None)  # blocks in poll until stop() wakes it
    timer.join()
    assert time.monotonic() - start < 5
    assert loop.map  # returned because of stop(), not an empty map
    b.close()


def test_a_timer_a_handler_sets_for_now_runs_in_the_same_pass(loop):
    """call_later(0) from a handler runs at the end of that pass, before
    the next poll (the chat server's departure notices rely on it)."""
    a, b = socket.socketpair()
    ran = []

    class Reader(asyncore.dispatcher):
        def writable(self):
            return False

        def handle_read(self):
            self.recv(10)
            loop.call_later(0, ran.append, "soon")

    Reader(a, map=loop.map)
    loop.call_later(60, lambda: None)  # a pending timer: the heap is not empty
    loop.run_once(0)
    b.send(b"x")  # a socketpair: readable at once
    loop.run_once(5)  # this pass dispatches the read...
    assert ran == ["soon"]  # ...and runs what its handler scheduled for now
    b.close()
