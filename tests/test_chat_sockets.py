"""async_chat over loopback TCP, on every backend (the ``backend_name`` and
``loop`` fixtures): echo with connect, partial sends under a slow reader, a
peer closing mid-line, errors, interest managed by the loop (an idle chat is
not asked each pass), relays, and CPython's global-map style.
"""

from __future__ import annotations

import socket
import time
from typing import Any, List, Tuple

import pytest
from helpers import (
    ListProducer,
    Recorder,
    make_tcp_pair,
    run_until,
)

from pollchat import asyncore, managed_interest
from pollchat.chat import async_chat, simple_producer

# -- over sockets, on every backend -------------------------------------------------------------

class LineEcho(async_chat):
    """Echoes each line back, upper-cased; QUIT: reply BYE and close when done."""

    def __init__(self, sock: Any, map: Any) -> None:
        super().__init__(sock, map)
        self.set_terminator(b"\r\n")
        self.lines: List[bytes] = []

    def collect_incoming_data(self, data: bytes) -> None:
        self._collect_incoming_data(data)

    def found_terminator(self) -> None:
        line = self._get_data()
        self.lines.append(line)
        if line == b"QUIT":
            self.push(b"BYE\r\n")
            self.close_when_done()
        else:
            self.push(line.upper() + b"\r\n")


class Client(Recorder):
    def handle_connect(self) -> None:
        self.connected_at = time.monotonic()


@pytest.mark.timeout(30)
def test_echo_over_tcp_with_connect(loop: Any, fd_leak_check: Any) -> None:
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(1)
        client = Client(map=loop.map)
        client.create_socket(socket.AF_INET, socket.SOCK_STREAM)
        client.connect(listener.getsockname())
        client.set_terminator(b"\r\n")
        # Pushed before the connection is up: sent once it is.
        client.push(b"hello ")
        client.push(b"world\r\n\r\nsecond line\r\nQU")
        client.push_with_producer(simple_producer(b"IT\r\n", buffer_size=1))
        run_until(loop, lambda: client.connected)
        server_sock, _ = listener.accept()
    server = LineEcho(server_sock, loop.map)
    run_until(loop, lambda: client.closed_by_handle_close)
    assert server.lines == [b"hello world", b"", b"second line", b"QUIT"]
    assert [data for data, _ in client.messages] == [b"HELLO WORLD", b"", b"SECOND LINE",
                                                     b"BYE"]
    assert server.socket is not None and server_sock.fileno() == -1  # closed when done


@pytest.mark.timeout(30)
def test_partial_sends_under_a_slow_reader(loop: Any) -> None:
    client_sock, server_sock = make_tcp_pair(blocking=True)
    # A small send buffer, and a reader that takes little at a time: the
    # channel's sends are cut short again and again.
    server_sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    client_sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 16384)
    sends: List[Tuple[int, int]] = []

    class Pusher(Recorder):
        def send(self, data: Any) -> int:
            sent = super().send(data)
            sends.append((len(data), sent))
            return sent

    pusher = Pusher(server_sock, loop.map)
    payload = bytes(range(256)) * 4096  # 1 MiB
    pusher.push(payload)
    pusher.push_with_producer(ListProducer(b"and a ", b"producer"))
    pusher.close_when_done()
    client_sock.setblocking(False)
    received = bytearray()
    eof = []

    def slow_read() -> None:
        try:
            data = client_sock.recv(8192)
        except BlockingIOError:
            return
        if not data:
            eof.append(True)
        received.extend(data)

    run_until(loop, lambda: eof, timeout=50, between=slow_read, step=0.001)
    client_sock.close()
    assert bytes(received) == payload + b"and a producer"
    assert pusher.closed_by_handle_close
    assert any(sent < asked for asked, sent in sends if sent), "no partial send happened"
    assert max(asked for asked, _ in sends) <= async_chat.ac_out_buffer_size


@pytest.mark.timeout(30)
def test_peer_closes_mid_line(loop: Any) -> None:
    client_sock, server_sock = make_tcp_pair(blocking=True)
    chat = Recorder(server_sock, loop.map)
    chat.set_terminator(b"\r\n")
    client_sock.sendall(b"complete\r\nhalf a li")
    client_sock.close()
    run_until(loop, lambda: chat.closed_by_handle_close)
    assert chat.messages == [(b"complete", b"\r\n")]
    assert chat.incoming == [b"half a li"]
    assert not chat.errors


@pytest.mark.timeout(30)
def test_producer_error_over_a_socket_closes_via_handle_error(loop: Any) -> None:
    client_sock, server_sock = make_tcp_pair(blocking=True)

    class Broken:
        calls = 0

        def more(self) -> bytes:
            self.calls += 1
            if self.calls > 1:
                raise ValueError("out of data")
            return b"first"

    class Chat(Recorder):
        def handle_error(self) -> None:
            super().handle_error()
            self.close()

    chat = Chat(server_sock, loop.map)
    chat.push_with_producer(Broken())
    run_until(loop, lambda: chat.errors)
    assert isinstance(chat.errors[0], ValueError)
    client_sock.settimeout(5)
    assert client_sock.recv(100) == b"first"
    client_sock.close()


class SpyChat(Recorder):
    """Counts how often the loop asks the (still managed) predicates."""

    asked = 0

    @managed_interest
    def readable(self) -> bool:
        self.asked += 1
        return super().readable()

    @managed_interest
    def writable(self) -> bool:
        self.asked += 1
        return super().writable()


@pytest.mark.timeout(30)
def test_idle_chat_is_not_asked_each_pass_and_timer_push_is_sent(loop: Any) -> None:
    client_sock, server_sock = make_tcp_pair(blocking=True)
    chats = [SpyChat(server_sock, loop.map)]
    others = []
    for _ in range(5):
        a, b = make_tcp_pair(blocking=True)
        others.append(a)
        chats.append(SpyChat(b, loop.map))
    loop.run(timeout=0.0, count=3)  # settle: each is asked once, registered
    for chat in chats:
        chat.asked = 0
    loop.run(timeout=0.001, count=50)
    assert [chat.asked for chat in chats] == [0] * len(chats)
    # A push that goes out at once leaves the loop nothing to do.
    chats[1].push(b"sent at once")
    assert loop.statistics()["dirty"] == 0
    others[0].settimeout(5)
    assert others[0].recv(100) == b"sent at once"
    # A push from outside any handler (a timer) reaches the peer: the loop
    # is told that the channel now wants to write... or it is sent at once.
    big = b"x" * (8 << 20)  # more than the socket takes at once
    loop.call_later(0.01, chats[0].push, big)
    client_sock.setblocking(False)
    received = bytearray()

    def read() -> None:
        try:
            received.extend(client_sock.recv(1 << 20))
        except BlockingIOError:
            pass

    run_until(loop, lambda: len(received) == len(big), between=read)
    assert bytes(received) == big
    # Drained and idle again: not asked any more.
    loop.run(timeout=0.0, count=3)
    for chat in chats:
        chat.asked = 0
    loop.run(timeout=0.001, count=20)
    assert [chat.asked for chat in chats] == [0] * len(chats)
    client_sock.close()
    for sock in others:
        sock.close()


@pytest.mark.timeout(30)
def test_push_from_another_channels_handler_is_sent(loop: Any) -> None:
    # A relay: lines read on one connection are pushed on another.
    a_client, a_server = make_tcp_pair(blocking=True)
    b_client, b_server = make_tcp_pair(blocking=True)
    target = Recorder(b_server, loop.map)

    class Relay(Recorder):
        def found_terminator(self) -> None:
            super().found_terminator()
            target.push(self.messages[-1][0] + b"\n")

    relay = Relay(a_server, loop.map)
    relay.set_terminator(b"\n")
    loop.run(timeout=0.0, count=3)
    a_client.sendall(b"one\ntwo\n")
    b_client.setblocking(False)
    received = bytearray()

    def read() -> None:
        try:
            received.extend(b_client.recv(100))
        except BlockingIOError:
            pass

    run_until(loop, lambda: received == b"one\ntwo\n", between=read)
    a_client.close()
    b_client.close()


@pytest.mark.timeout(30)
def test_cpython_style_global_map_usage(backend_name: str, monkeypatch: Any) -> None:
    """The asyncore.loop() + default map style of CPython's own tests."""
    monkeypatch.setenv("POLLCHAT_BACKEND", backend_name)
    monkeypatch.setattr(asyncore, "socket_map", {})
    client_sock, server_sock = make_tcp_pair(blocking=True)
    server = LineEcho(server_sock, None)
    client = Recorder(client_sock, None)
    client.set_terminator(b"\r\n")
    client.push(b"abc\r\nQUIT\r\n")
    asyncore.loop(timeout=0.01, count=300)  # returns once both have closed
    assert [data for data, _ in client.messages] == [b"ABC", b"BYE"]
    assert server.lines == [b"abc", b"QUIT"]
    asyncore.close_all()
