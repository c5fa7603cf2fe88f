"""pollchat.aio: legacy channels served inside a running asyncio (or uvloop)
event loop, beside asyncio code, in one thread."""

from __future__ import annotations

import asyncio
import logging
import socket
import threading
import time

import pytest
from aio_support import FLAVOURS, EchoSession, Listener, exchange, run_in
from helpers import socket_pair_on_fd

import pollchat
from pollchat import aio, asynchat, asyncore, maps
from pollchat.backends.aio import AsyncioBackend, EventLoopError

pytestmark = pytest.mark.timeout(60)


@pytest.fixture(params=FLAVOURS)
def flavour(request):
    return request.param


@pytest.fixture
def channel_map():
    """A channel map of the test's own; its channels are closed, and its
    loop released, at teardown."""
    m = {}
    yield m
    asyncore.close_all(m, ignore_all=True)
    found = maps.loop_for_map(m)
    if found is not None:
        found.close()


def test_legacy_and_asyncio_servers_serve_clients_at_the_same_time(flavour, channel_map):
    EchoSession.threads = []
    asyncio_threads = []

    async def asyncio_echo(reader, writer):
        while True:
            line = await reader.readline()
            if not line:
                break
            asyncio_threads.append(threading.get_ident())
            writer.write(line.upper())
        writer.close()

    async def main():
        listener = Listener(channel_map)
        server = await asyncio.start_server(asyncio_echo, "127.0.0.1", 0)
        asyncio_port = server.sockets[0].getsockname()[1]
        serving = asyncio.ensure_future(aio.serve(channel_map))
        lines = [b"line %d" % i for i in range(20)]
        results = await asyncio.gather(
            *(exchange(listener.port, lines) for _ in range(5)),
            *(exchange(asyncio_port, lines) for _ in range(5)))
        assert results[:5] == [lines] * 5
        assert results[5:] == [[line.upper() for line in lines]] * 5
        asyncore.close_all(channel_map)  # the map empties: serve() returns
        await serving
        server.close()
        await server.wait_closed()

    run_in(flavour, main)
    assert len(EchoSession.threads) == 100 and len(asyncio_threads) == 100
    assert set(EchoSession.threads) == set(asyncio_threads) == {threading.get_ident()}


def test_pollchat_timers_and_asyncio_sleep_keep_their_order(flavour, channel_map):
    order = []

    async def sleeper(delay, name):
        await asyncio.sleep(delay)
        order.append(name)

    async def main():
        Listener(channel_map)  # something to serve
        serving = asyncio.ensure_future(aio.serve(channel_map))
        loop = pollchat.get_loop(channel_map)
        loop.call_later(0.05, order.append, "pollchat 1")
        loop.call_later(0.25, order.append, "pollchat 2")
        await asyncio.gather(sleeper(0.15, "asyncio 1"), sleeper(0.35, "asyncio 2"))
        serving.cancel()

    run_in(flavour, main)
    assert order == ["pollchat 1", "asyncio 1", "pollchat 2", "asyncio 2"]


def test_cancelling_serve_closes_nothing_and_serving_again_works(flavour, channel_map):
    async def main():
        listener = Listener(channel_map)
        running = asyncio.get_running_loop()
        serving = asyncio.ensure_future(aio.serve(channel_map))
        connection = await asyncio.open_connection("127.0.0.1", listener.port)
        assert await exchange(0, [b"before"], connection) == [b"before"]
        serving.cancel()
        with pytest.raises(asyncio.CancelledError):
            await serving
        assert len(channel_map) == 2  # the listener and the session, open
        loop = maps.loop_for_map(channel_map)
        assert not (isinstance(loop.backend, AsyncioBackend) and loop.backend.loop is running)
        reader, writer = connection
        writer.write(b"during\n")
        with pytest.raises(asyncio.TimeoutError):  # nobody serves it now
            await asyncio.wait_for(reader.readline(), 0.3)
        serving = asyncio.ensure_future(aio.serve(channel_map))
        assert await asyncio.wait_for(reader.readline(), 5) == b"during\n"
        assert await exchange(0, [b"after"], connection) == [b"after"]
        writer.close()
        serving.cancel()

    run_in(flavour, main)


def test_serving_in_a_second_event_loop_after_the_first_closed(channel_map):
    async def one_exchange():
        serving = asyncio.ensure_future(aio.serve(channel_map))
        assert await exchange(listener.port, [b"x"]) == [b"x"]
        serving.cancel()

    listener = Listener(channel_map)
    run_in("asyncio", one_exchange)
    run_in("asyncio", one_exchange)  # a new event loop: the channels move there


def test_serve_moves_an_existing_loop_and_gives_it_back(flavour, channel_map):
    loop = pollchat.Loop("poll", channel_map)
    listener = Listener(channel_map)
    during = []

    async def main():
        serving = asyncio.ensure_future(aio.serve(channel_map))
        assert await exchange(listener.port, [b"x"]) == [b"x"]
        during.append(loop.backend.name)
        serving.cancel()

    run_in(flavour, main)
    assert during == [flavour] and loop.backend.name == "poll"
    client = socket.create_connection(("127.0.0.1", listener.port))
    client.sendall(b"still served\n")
    got = b""
    deadline = time.monotonic() + 10
    while not got.endswith(b"\n") and time.monotonic() < deadline:
        loop.run_once(0.05)
        try:
            got += client.recv(100, socket.MSG_DONTWAIT)
        except BlockingIOError:
            pass
    client.close()
    assert got == b"still served\n"


def test_a_coroutine_awaited_from_channel_code_delivers_its_result(flavour, channel_map):
    futures = []

    class Lookup(EchoSession):
        def found_terminator(self):
            key = b"".join(self.buffer)
            self.buffer = []
            future = aio.run_coroutine(self.lookup(key))
            futures.append(future)  # asyncio code awaits it too
            future.add_done_callback(lambda done: self.push(done.result() + b"\n"))

        async def lookup(self, key):
            await asyncio.sleep(0.01)
            return key[::-1]

    async def main():
        listener = Listener(channel_map, Lookup)
        serving = asyncio.ensure_future(aio.serve(channel_map, max_wait=None))
        assert await exchange(listener.port, [b"abc", b"hello"]) == [b"cba", b"olleh"]
        assert await asyncio.gather(*futures) == [b"cba", b"olleh"]
        serving.cancel()

    run_in(flavour, main)


def test_channels_made_by_asyncio_code_are_served_without_waiting(flavour, channel_map):
    """A channel added, or data pushed, by asyncio code between passes is
    taken up at once, not at the next event (here there would be none)."""
    replies = []

    class Client(asynchat.async_chat):
        def __init__(self, port):
            super().__init__(map=channel_map)
            self.set_terminator(b"\n")
            self.create_socket()
            self.connect(("127.0.0.1", port))

        def collect_incoming_data(self, data):
            replies.append(data)

        def found_terminator(self):
            self.close()

    async def asyncio_echo(reader, writer):
        writer.write(await reader.readline())
        writer.close()

    async def main():
        server = await asyncio.start_server(asyncio_echo, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        Listener(channel_map)
        serving = asyncio.ensure_future(aio.serve(channel_map, max_wait=None))
        await asyncio.sleep(0.05)  # serving, idle
        Client(port).push(b"ping\n")
        while not replies:
            await asyncio.sleep(0.01)
        serving.cancel()
        server.close()
        await server.wait_closed()

    run_in(flavour, main, timeout=5)
    assert replies == [b"ping"]


def test_a_timer_set_by_asyncio_code_fires_on_time(flavour, channel_map):
    async def main():
        Listener(channel_map)
        serving = asyncio.ensure_future(aio.serve(channel_map, max_wait=None))
        await asyncio.sleep(0.05)
        fired = asyncio.get_running_loop().create_future()
        start = time.monotonic()
        pollchat.get_loop(channel_map).call_later(0.05, fired.set_result, None)
        await asyncio.wait_for(fired, 2)
        serving.cancel()
        return time.monotonic() - start

    assert 0.045 <= run_in(flavour, main) < 2


def test_call_soon_threadsafe_reaches_the_served_loop(flavour, channel_map):
    async def main():
        Listener(channel_map)
        serving = asyncio.ensure_future(aio.serve(channel_map, max_wait=None))
        await asyncio.sleep(0.05)
        ran = asyncio.get_running_loop().create_future()
        loop = pollchat.get_loop(channel_map)
        thread = threading.Thread(target=loop.call_soon_threadsafe,
                                  args=(lambda: ran.set_result(threading.get_ident()),))
        thread.start()
        thread.join(5)
        assert await asyncio.wait_for(ran, 5) == threading.get_ident()
        serving.cancel()

    run_in(flavour, main)


def test_stop_ends_serve_and_exit_now_leaves_it(flavour, channel_map):
    class Stopper(EchoSession):
        def found_terminator(self):
            command = b"".join(self.buffer)
            self.buffer = []
            if command == b"stop":
                pollchat.get_loop(channel_map).stop()
            else:
                raise asyncore.ExitNow("exit now")

    async def main():
        listener = Listener(channel_map, Stopper)
        reader, writer = await asyncio.open_connection("127.0.0.1", listener.port)
        writer.write(b"stop\n")
        await asyncio.wait_for(aio.serve(channel_map), 5)  # returns: stopped
        writer.write(b"exit\n")
        with pytest.raises(asyncore.ExitNow, match="exit now"):
            await asyncio.wait_for(aio.serve(channel_map), 5)
        assert len(channel_map) == 2  # nothing was closed
        writer.close()

    run_in(flavour, main)


def test_keyboard_interrupt_in_a_handler_leaves_the_event_loop(flavour, channel_map):
    class Interrupted(EchoSession):
        def found_terminator(self):
            raise KeyboardInterrupt

    listener = Listener(channel_map, Interrupted)
    client = socket.create_connection(("127.0.0.1", listener.port))
    client.sendall(b"x\n")
    with pytest.raises(KeyboardInterrupt):
        run_in(flavour, lambda: aio.serve(channel_map))
    client.close()
    assert listener in channel_map.values()

    async def serve_until_empty():  # the channels can be served again
        asyncore.close_all(channel_map)
        await aio.serve(channel_map)

    run_in(flavour, serve_until_empty)


def test_fd_reused_in_one_batch_never_reaches_the_new_channel(flavour, channel_map):
    """bpo-30931 under serve(): a handler closes the other ready channel, and
    a new channel takes its fd before that channel's event is handled."""
    log = []
    keep = []

    class Peer(asyncore.dispatcher):
        def __init__(self, sock, name):
            super().__init__(sock, map=channel_map)
            self.name = name

        def writable(self):
            return False

        def handle_read(self):
            log.append(self.name)
            self.recv(10)
            if len(log) > 1:
                return
            victim = next(ch for ch in channel_map.values() if ch is not self)
            fd = victim._fileno
            victim.close()
            c_sock, c_peer = socket_pair_on_fd(fd)
            keep.append(c_peer)
            Peer(c_sock, "C")

    pairs = [socket.socketpair() for _ in range(2)]

    async def main():
        Peer(pairs[0][0], "A")
        Peer(pairs[1][0], "B")
        serving = asyncio.ensure_future(aio.serve(channel_map, max_wait=None))
        await asyncio.sleep(0.05)
        for _, peer in pairs:
            peer.send(b"x")  # both ready in one poll of the event loop
        await asyncio.sleep(0.2)
        assert len(log) == 1 and log[0] in "AB"
        keep[0].send(b"y")
        while "C" not in log:
            await asyncio.sleep(0.01)
        serving.cancel()

    run_in(flavour, main)
    assert log[1:] == ["C"]
    for s in keep + [pairs[0][1], pairs[1][1]]:
        s.close()


def test_no_read_event_arrives_after_the_data_was_read(flavour, channel_map):
    """Readiness the event loop reported before a pass read the data must not
    be delivered after it: a plain dispatcher's recv() would then raise
    BlockingIOError (asyncio's selector reports an fd again in the select
    that precedes a pass scheduled with call_soon)."""
    errors = []
    received = []

    class Strict(asyncore.dispatcher):
        def writable(self):
            return False

        def handle_read(self):
            received.append(len(self.recv(65536)))

        def handle_error(self):
            errors.append(repr(pollchat.dispatch.compact_traceback()[2]))
            self.close()

    pairs = [socket.socketpair() for _ in range(16)]

    async def main():
        for ours, _ in pairs:
            Strict(ours, map=channel_map)
        serving = asyncio.ensure_future(aio.serve(channel_map, max_wait=None))
        for _ in range(100):
            for _, theirs in pairs:
                theirs.send(b"x" * 100)
            await asyncio.sleep(0)
            await asyncio.sleep(0)
        deadline = time.monotonic() + 5
        while sum(received) < 100 * 100 * 16 and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        serving.cancel()

    run_in(flavour, main)
    for _, theirs in pairs:
        theirs.close()
    assert errors == []
    assert sum(received) == 100 * 100 * 16


def test_the_idle_audit_runs_under_serve(flavour, channel_map, caplog):
    """State changed where pollchat cannot see it (an out_buffer extended in
    place) is found by the audit of an idle pass, which serve() runs at
    least every max_wait seconds: a delay and a warning, never a hang."""

    class InPlace(asyncore.dispatcher_with_send):
        def __init__(self, sock, map):
            super().__init__(sock, map=map)
            self.out_buffer = bytearray()

    async def main():
        listener = Listener(channel_map, InPlace)
        serving = asyncio.ensure_future(aio.serve(channel_map, max_wait=0.05))
        reader, writer = await asyncio.open_connection("127.0.0.1", listener.port)
        while not listener.sessions:
            await asyncio.sleep(0.01)
        await asyncio.sleep(0.05)
        listener.sessions[0].out_buffer.extend(b"behind its back\n")
        line = await asyncio.wait_for(reader.readline(), 5)
        writer.close()
        serving.cancel()
        return line

    caplog.set_level(logging.WARNING, logger="pollchat")
    assert run_in(flavour, main) == b"behind its back\n"
    assert "could not observe" in caplog.text


def test_serving_one_map_twice_at_once_is_refused(flavour, channel_map):
    async def main():
        Listener(channel_map)
        serving = asyncio.ensure_future(aio.serve(channel_map))
        await asyncio.sleep(0.01)
        with pytest.raises(RuntimeError, match="already being served"):
            await aio.serve(channel_map)
        await asyncio.sleep(0.01)
        assert not serving.done()  # the first one serves on
        serving.cancel()

    run_in(flavour, main)


def test_serve_returns_at_once_for_an_empty_map(flavour):
    async def main():
        await aio.serve({})

    run_in(flavour, main, timeout=5)


def test_asyncore_loop_inside_a_running_event_loop_says_to_use_serve(flavour, channel_map):
    pollchat.Loop("poll", channel_map)  # a backend of its own (an event loop's: below)

    async def main():
        Listener(channel_map)
        with pytest.raises(RuntimeError, match=r"pollchat\.aio\.serve"):
            asyncore.loop(map=channel_map)
        with pytest.raises(RuntimeError, match=r"pollchat\.aio\.serve"):
            pollchat.get_loop(channel_map).run()
        asyncore.loop(timeout=0, map=channel_map, count=1)  # a bounded pass is fine

    run_in(flavour, main)


def test_a_pass_that_would_wait_inside_a_running_event_loop_says_to_use_serve(flavour):
    loop = pollchat.Loop("asyncio")
    Listener(loop.map)

    async def main():
        with pytest.raises(EventLoopError, match=r"pollchat\.aio\.serve"):
            loop.run_once(0.1)

    try:
        run_in(flavour, main)
    finally:
        asyncore.close_all(loop.map)
        loop.close()


def test_run_coroutine_without_an_event_loop_says_what_to_do(channel_map):
    Listener(channel_map)
    pollchat.Loop("poll", channel_map)

    async def nothing():
        return None

    coro = nothing()
    with pytest.raises(RuntimeError, match=r"pollchat\.aio\.serve.*POLLCHAT_BACKEND=asyncio"):
        aio.run_coroutine(coro, channel_map)
    coro.close()


def test_serve_on_an_event_loop_that_cannot_watch_sockets_says_what_to_use():
    class NoReaders(asyncio.SelectorEventLoop):
        """What Windows' ProactorEventLoop looks like to pollchat."""

        add_reader = asyncio.AbstractEventLoop.add_reader

    loop = NoReaders()
    try:
        with pytest.raises(EventLoopError, match="WindowsSelectorEventLoopPolicy"):
            loop.run_until_complete(aio.serve({}))
    finally:
        loop.close()
