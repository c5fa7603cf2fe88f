"""async_chat, simple_producer and find_prefix_at_end: the seed's API and
CPython 3.11's behaviour, the defects fixed, linear-time buffering, and
interest managed by the loop.

Unit tests drive handle_read()/handle_write() through a stub socket; socket
tests run on every backend (the ``backend_name`` fixture) over loopback TCP,
each on its own :class:`pollchat.Loop` and map.
"""

from __future__ import annotations

import collections
import errno
import socket
import sys
import time
from typing import Any, List, Tuple

import pytest
from helpers import run_until

from pollchat import asynchat, asyncore, managed_interest
from pollchat.chat import async_chat, find_prefix_at_end, simple_producer

# -- helpers -------------------------------------------------------------------------------


class StubSocket:
    """recv() serves queued chunks (an exception instance is raised);
    send() takes up to ``send_limit`` bytes per call."""

    def __init__(self, chunks: Any = (), send_limit: int = 1 << 30) -> None:
        self.chunks = collections.deque(chunks)
        self.send_limit = send_limit
        self.sent: List[bytes] = []
        self.send_args: List[Any] = []
        self.closed = False

    def setblocking(self, flag: bool) -> None:
        pass

    def getpeername(self) -> Tuple[str, int]:
        return ("127.0.0.1", 9)

    def fileno(self) -> int:
        return -5  # the map is private: never polled

    def recv(self, size: int) -> Any:
        item = self.chunks.popleft()
        if isinstance(item, BaseException):
            raise item
        if isinstance(item, (bytes, bytearray)) and len(item) > size:
            self.chunks.appendleft(item[size:])
            item = item[:size]
        return item

    def send(self, data: Any) -> int:
        self.send_args.append(data)
        taken = bytes(data[:self.send_limit])
        self.sent.append(taken)
        return len(taken)

    def close(self) -> None:
        self.closed = True


class Recorder(async_chat):
    """Records messages as (data, terminator); optional script of
    terminators set in found_terminator()."""

    def __init__(self, sock: Any = None, map: Any = None, script: Any = ()) -> None:
        super().__init__(sock, map)
        self.script = list(script)
        self.collected: List[bytes] = []
        self.messages: List[Tuple[bytes, Any]] = []
        self.closed_by_handle_close = False
        self.errors: List[BaseException] = []

    def collect_incoming_data(self, data: bytes) -> None:
        assert data, "collect_incoming_data() got empty data"
        self.collected.append(data)
        self._collect_incoming_data(data)

    def found_terminator(self) -> None:
        self.messages.append((self._get_data(), self.terminator))
        if self.script:
            self.set_terminator(self.script.pop(0))

    def handle_close(self) -> None:
        self.closed_by_handle_close = True
        self.close()

    def handle_error(self) -> None:
        self.errors.append(sys.exc_info()[1])


def stub_chat(chunks: Any = (), terminator: Any = b"\n", cls: type = Recorder,
              send_limit: int = 1 << 30, **kwargs: Any) -> Any:
    chat = cls(map={}, **kwargs)
    chat.set_socket(StubSocket(chunks, send_limit), map={})
    chat.connected = True
    if terminator is not Ellipsis:
        chat.set_terminator(terminator)
    return chat


def feed(chat: Any) -> None:
    while chat.socket.chunks:
        chat.handle_read()


def tcp_pair() -> Tuple[socket.socket, socket.socket]:
    """Two connected loopback TCP sockets (ephemeral port)."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(1)
        client = socket.create_connection(listener.getsockname())
        server, _ = listener.accept()
    return client, server


# -- terminators ---------------------------------------------------------------------------


@pytest.mark.parametrize("term", [b"\n", b"\r\n", b"qqq", b"\r\n.\r\n"])
@pytest.mark.parametrize("chunk", [1, 2, 3, 5, 1000])
def test_bytes_terminator_split_across_reads(term: bytes, chunk: int) -> None:
    stream = b"hello world" + term + b"I'm not dead yet!" + term + b"tail"
    chat = stub_chat([stream[i:i + chunk] for i in range(0, len(stream), chunk)], term)
    feed(chat)
    assert chat.messages == [(b"hello world", term), (b"I'm not dead yet!", term)]
    # The tail is collected, except what could still start a terminator.
    assert b"".join(chat.incoming) + chat.ac_in_buffer == b"tail"


def test_partial_terminator_is_held_back_then_completed() -> None:
    chat = stub_chat([b"abc\r\n.", b"\r", b"\nnext"], b"\r\n.\r\n")
    chat.handle_read()
    assert chat.collected == [b"abc"]
    assert chat.ac_in_buffer == b"\r\n."
    chat.handle_read()
    assert chat.ac_in_buffer == b"\r\n.\r"
    chat.handle_read()
    assert chat.messages == [(b"abc", b"\r\n.\r\n")]
    assert chat.ac_in_buffer == b""
    assert chat.incoming == [b"next"]


def test_held_back_bytes_that_turn_out_to_be_data() -> None:
    chat = stub_chat([b"ab\r", b"x\r\n"], b"\r\n")
    feed(chat)
    assert chat.messages == [(b"ab\rx", b"\r\n")]
    assert chat.collected == [b"ab", b"\rx"]  # CPython's calls exactly


def test_numeric_terminator_counts_down_across_reads() -> None:
    chat = stub_chat([b"hel", b"lo wo", b"rld!!"], 11)
    chat.handle_read()
    assert chat.terminator == 8  # counts down in place, as CPython's
    chat.handle_read()
    assert chat.terminator == 3
    chat.handle_read()
    assert chat.messages == [(b"hello world", 0)]
    # With the count spent (0, falsy), the rest is collected like None.
    assert chat.incoming == [b"!!"]


def test_none_terminator_collects_everything() -> None:
    chat = stub_chat([b"abc\n", b"def"], None)
    feed(chat)
    assert chat.messages == []
    assert chat.collected == [b"abc\n", b"def"]
    assert chat.ac_in_buffer == b""


def test_empty_terminator_acts_like_none() -> None:
    chat = stub_chat([b"abc\n"], b"")
    feed(chat)
    assert chat.messages == [] and chat.collected == [b"abc\n"]


def test_empty_lines() -> None:
    chat = stub_chat([b"hello world\n\nI'm not dead yet!\n"], b"\n")
    feed(chat)
    assert [data for data, _ in chat.messages] == [b"hello world", b"", b"I'm not dead yet!"]


def test_terminator_changed_in_found_terminator_applies_to_buffered_data() -> None:
    # An HTTP-like exchange arriving in one read: header, 5-byte body, line,
    # then no terminator at all.
    chat = stub_chat([b"HEAD\r\n\r\nbody!line\nrest of it"], b"\r\n\r\n",
                     script=[5, b"\n", None])
    feed(chat)
    assert chat.messages == [(b"HEAD", b"\r\n\r\n"), (b"body!", 0), (b"line", b"\n")]
    assert chat.incoming == [b"rest of it"]


def test_many_lines_then_a_change_after_batched_scanning() -> None:
    lines = [b"line %d" % i for i in range(500)]
    stream = b"".join(line + b"\n" for line in lines) + b"12345XYZ"
    chat = stub_chat([stream], b"\n", script=[b"\n"] * 499 + [5, b"Z"])
    feed(chat)
    assert chat.messages[:500] == [(line, b"\n") for line in lines]
    assert chat.messages[500:] == [(b"12345", 0), (b"XY", b"Z")]


def test_get_terminator_override_is_asked_each_step() -> None:
    class Alternating(Recorder):
        asked = 0

        def get_terminator(self) -> Any:
            self.asked += 1
            return b";" if len(self.messages) % 2 else b","

    chat = stub_chat([b"a,b;c,d;"], b"\n", cls=Alternating)
    feed(chat)
    assert [data for data, _ in chat.messages] == [b"a", b"b", b"c", b"d"]
    assert chat.asked >= 4


def test_instance_level_get_terminator_is_honoured() -> None:
    chat = stub_chat([b"a,b;c"], b";")
    chat.get_terminator = lambda: b","
    feed(chat)
    assert [data for data, _ in chat.messages] == [b"a"]


def test_handlers_rebound_inside_found_terminator() -> None:
    # A state-machine idiom in old asynchat code: rebinding the handlers.
    class Machine(async_chat):
        def __init__(self, map: Any) -> None:
            super().__init__(map=map)
            self.log: List[Any] = []
            self.found_terminator = self.got_header

        def collect_incoming_data(self, data: bytes) -> None:
            self.log.append(("data", data))

        def got_header(self) -> None:
            self.log.append("header")
            self.collect_incoming_data = self.collect_body
            self.found_terminator = self.got_body

        def collect_body(self, data: bytes) -> None:
            self.log.append(("body", data))

        def got_body(self) -> None:
            self.log.append("body-end")

    chat = Machine({})
    chat.set_socket(StubSocket([b"h1\n" + b"b\n" * 5]), map={})
    chat.connected = True
    chat.set_terminator(b"\n")
    feed(chat)
    assert chat.log == [("data", b"h1"), "header"] + [("body", b"b"), "body-end"] * 5


# -- the pending input (ac_in_buffer) ---------------------------------------------------------


def test_ac_in_buffer_inside_found_terminator_holds_what_follows() -> None:
    seen = []

    class Peek(Recorder):
        def found_terminator(self) -> None:
            seen.append(self.ac_in_buffer)
            super().found_terminator()

    chat = stub_chat([b"a\nbb\ncc"], b"\n", cls=Peek)
    feed(chat)
    assert seen == [b"bb\ncc", b"cc"]
    assert isinstance(chat.ac_in_buffer, bytes)


def test_assigning_ac_in_buffer_in_found_terminator_replaces_the_input() -> None:
    class Rewrite(Recorder):
        def found_terminator(self) -> None:
            super().found_terminator()
            if len(self.messages) == 1:
                self.ac_in_buffer = b"injected\n" + self.ac_in_buffer

    chat = stub_chat([b"a\nb\n"], b"\n", cls=Rewrite)
    feed(chat)
    assert [data for data, _ in chat.messages] == [b"a", b"injected", b"b"]


def test_assigning_ac_in_buffer_in_collect_follows_cpython() -> None:
    # CPython drops the found message's length from whatever ac_in_buffer
    # holds after collect_incoming_data() returned.
    class Meddle(Recorder):
        def collect_incoming_data(self, data: bytes) -> None:
            super().collect_incoming_data(data)
            if data == b"ab":
                self.ac_in_buffer = b"0123456789"

    chat = stub_chat([b"x\nab\nrest"], b"\n", cls=Meddle)
    seen = []
    chat.found_terminator = lambda: seen.append(chat.ac_in_buffer)
    feed(chat)
    assert seen == [b"ab\nrest", b"3456789"]


def test_assigning_ac_in_buffer_in_collect_during_a_run_of_lines() -> None:
    class Meddle(Recorder):
        def collect_incoming_data(self, data: bytes) -> None:
            super().collect_incoming_data(data)
            if data == b"ef":
                self.ac_in_buffer = b"0123456789\n"

    chat = stub_chat([b"a\nb\nc\nd\nef\nrest\n"], b"\n", cls=Meddle)
    feed(chat)
    assert [data for data, _ in chat.messages] == [b"a", b"b", b"c", b"d", b"ef", b"3456789"]


def test_assigning_ac_in_buffer_in_collect_with_a_terminator_start_held_back() -> None:
    # CPython keeps the held-back length's worth of the end of the new buffer.
    class Meddle(Recorder):
        def collect_incoming_data(self, data: bytes) -> None:
            super().collect_incoming_data(data)
            if data == b"abc":
                self.ac_in_buffer = b"XYZ"

    chat = stub_chat([b"abc\r"], b"\r\n", cls=Meddle)
    chat.handle_read()
    assert chat.ac_in_buffer == b"Z"


def test_discard_buffers_inside_callbacks_stops_the_scan() -> None:
    class Discard(Recorder):
        def found_terminator(self) -> None:
            super().found_terminator()
            self.discard_buffers()

    chat = stub_chat([b"a\nb\nc\n"], b"\n", cls=Discard)
    feed(chat)
    assert [data for data, _ in chat.messages] == [b"a"]
    assert chat.ac_in_buffer == b""


def test_ac_in_buffer_assigned_before_reading_is_scanned_with_the_next_read() -> None:
    chat = stub_chat([b"b\n"], b"\n")
    chat.ac_in_buffer = bytearray(b"a")
    assert chat.ac_in_buffer == b"a"
    feed(chat)
    assert chat.messages == [(b"ab", b"\n")]


def test_linear_scanning_does_not_copy_the_buffer_per_line() -> None:
    """Slices handed to collect_incoming_data() are the lines themselves:
    total bytes allocated stay proportional to the input."""
    big = b"0123456789012345678\n" * 50000  # 1 MB, 50,000 lines
    chat = stub_chat([big], b"\n")
    chat.ac_in_buffer_size = len(big)
    lengths: List[int] = []
    chat.collect_incoming_data = lambda data: lengths.append(len(data))
    chat.found_terminator = lambda: None
    chat.handle_read()
    assert lengths == [19] * 50000


# -- set_terminator errors and encodings --------------------------------------------------------


@pytest.mark.parametrize("bad", [1.5, [b"\n"], object(), {b"\n"}])
def test_set_terminator_refuses_wrong_types(bad: Any) -> None:
    chat = async_chat(map={})
    with pytest.raises(TypeError, match=type(bad).__name__):
        chat.set_terminator(bad)


def test_set_terminator_refuses_negative_counts() -> None:
    chat = async_chat(map={})
    with pytest.raises(ValueError, match="negative"):
        chat.set_terminator(-1)


def test_set_terminator_refuses_str_without_use_encoding() -> None:
    chat = async_chat(map={})
    with pytest.raises(TypeError, match="use_encoding"):
        chat.set_terminator("\r\n")


def test_set_terminator_conversions() -> None:
    class Index:
        def __index__(self) -> int:
            return 7

    chat = async_chat(map={})
    chat.set_terminator(bytearray(b"\r\n"))
    assert chat.get_terminator() == b"\r\n" and type(chat.terminator) is bytes
    chat.set_terminator(memoryview(b"xy"))
    assert chat.terminator == b"xy"
    chat.set_terminator(Index())
    assert chat.terminator == 7 and type(chat.terminator) is int
    chat.set_terminator(0)
    assert chat.terminator == 0
    chat.set_terminator(None)
    assert chat.get_terminator() is None


def test_use_encoding_encodes_str_terminators_and_data() -> None:
    class Encoded(Recorder):
        use_encoding = True
        encoding = "utf-8"

    chat = stub_chat([b"caf\xc3\xa9\xc2\xa7rest"], "§", cls=Encoded)
    assert chat.terminator == "§".encode()
    feed(chat)
    assert chat.messages == [("café".encode(), "§".encode())]
    chat.push("é")  # str pushed with use_encoding: encoded, not refused
    assert chat.socket.sent == [b"\xc3\xa9"]


def test_use_encoding_str_from_recv_is_encoded() -> None:
    # CPython passes the str type itself to bytes() here (a TypeError).
    class TextRecv(Recorder):
        use_encoding = True
        encoding = "utf-8"

        def recv(self, size: int) -> Any:
            return "naïve\n"

    chat = stub_chat([], b"\n", cls=TextRecv)
    chat.handle_read()
    assert chat.messages == [("naïve".encode(), b"\n")]
    assert not chat.errors


def test_str_terminator_set_directly_is_encoded_when_reading() -> None:
    class Encoded(Recorder):
        use_encoding = True

    chat = stub_chat([b"a;b"], Ellipsis, cls=Encoded)
    chat.terminator = ";"
    feed(chat)
    assert chat.messages == [(b"a", ";")]  # used encoded, left as set


def test_push_type_errors_are_formatted() -> None:
    chat = stub_chat()
    with pytest.raises(TypeError) as info:
        chat.push(10)
    # CPython never formatted this message: "(%r)" and the type as args.
    assert "int" in str(info.value) and "%r" not in str(info.value)
    with pytest.raises(TypeError, match="use_encoding"):
        chat.push("unicode")
    with pytest.raises(TypeError, match="more"):
        chat.push_with_producer(12)
    assert not chat.producer_fifo


# -- output: push, producers, close_when_done ------------------------------------------------


class ListProducer:
    def __init__(self, *pieces: bytes) -> None:
        self.pieces = list(pieces)

    def more(self) -> bytes:
        return self.pieces.pop(0) if self.pieces else b""


def drain(chat: Any, limit: int = 10000) -> None:
    for _ in range(limit):
        if not chat.producer_fifo or not chat.connected:
            return
        chat.handle_write()
    raise AssertionError("output queue never drained")


def test_push_kinds_and_producers_go_out_in_order() -> None:
    chat = stub_chat(send_limit=3)
    source = bytearray(b"bytearray;")
    chat.push(b"bytes;")
    chat.push(source)
    source[:] = b"CHANGED"  # push() copied it
    chat.push(memoryview(b"view;"))
    chat.push_with_producer(simple_producer(b"simple producer;", buffer_size=4))
    chat.push_with_producer(ListProducer(b"list ", b"producer;"))
    chat.push_with_producer(b"raw bytes;")
    chat.push(b"")  # nothing to send: not even queued
    drain(chat)
    assert b"".join(chat.socket.sent) == (b"bytes;bytearray;view;simple producer;"
                                          b"list producer;raw bytes;")


def test_push_array_memoryview_counts_bytes() -> None:
    import array

    chat = stub_chat(send_limit=5)
    data = array.array("i", range(10))
    chat.push(memoryview(data))
    drain(chat)
    assert b"".join(chat.socket.sent) == data.tobytes()


def test_producer_is_consulted_only_when_it_reaches_the_head() -> None:
    log = []

    class Lazy:
        def more(self) -> bytes:
            log.append("more")
            return b""

    chat = stub_chat(send_limit=2)
    chat.connected = False  # nothing is sent before the connection is up
    chat.push(b"abcd")
    chat.push_with_producer(Lazy())
    assert log == []
    chat.connected = True
    chat.handle_write()
    assert log == []  # still sending "abcd"
    drain(chat)
    assert log == ["more"]


def test_large_push_is_sent_in_ac_out_buffer_size_pieces_without_copying() -> None:
    chat = stub_chat(send_limit=1000)
    chat.ac_out_buffer_size = 4096
    data = bytes(range(256)) * 64  # 16 KiB
    chat.push(data)
    # After the first partial send the head is a view of the pushed bytes.
    head = chat.producer_fifo[0]
    assert isinstance(head, memoryview) and head.obj is data
    drain(chat)
    assert b"".join(chat.socket.sent) == data
    assert max(len(arg) for arg in chat.socket.send_args) <= 4096


def test_close_when_done_closes_after_everything_before_it() -> None:
    chat = stub_chat(send_limit=4)
    chat.push(b"0123456789")
    chat.close_when_done()
    chat.push(b"never sent")
    drain(chat)
    assert b"".join(chat.socket.sent) == b"0123456789"
    assert chat.closed_by_handle_close and chat.socket.closed


def test_close_when_done_on_an_empty_queue_closes_on_the_next_write() -> None:
    chat = stub_chat()
    chat.close_when_done()
    assert chat.writable()
    assert not chat.closed_by_handle_close
    chat.handle_write()
    assert chat.closed_by_handle_close


def test_push_with_producer_none_closes_like_close_when_done() -> None:
    chat = stub_chat()
    chat.connected = False
    chat.push(b"x")
    chat.push_with_producer(None)
    chat.connected = True
    drain(chat)
    assert chat.closed_by_handle_close and chat.socket.sent == [b"x"]


def test_discard_buffers_drops_input_and_output() -> None:
    chat = stub_chat([b"partial\r"], b"\r\n")
    chat.handle_read()
    chat.connected = False
    chat.push(b"queued")
    chat.close_when_done()
    assert chat.incoming and chat.ac_in_buffer and chat.producer_fifo
    chat.discard_buffers()
    assert chat.incoming == [] and chat.ac_in_buffer == b"" and not chat.producer_fifo
    chat.connected = True
    assert not chat.writable()


@pytest.mark.parametrize("where", ["push", "handle_write"])
def test_producer_exception_goes_to_handle_error(where: str) -> None:
    class Broken:
        def more(self) -> bytes:
            raise RuntimeError("producer failed")

    chat = stub_chat()
    if where == "handle_write":
        chat.connected = False
    chat.push_with_producer(Broken())  # from push: not raised at the caller
    if where == "handle_write":
        chat.connected = True
        chat.handle_write()
    assert len(chat.errors) == 1 and str(chat.errors[0]) == "producer failed"


def test_send_oserror_goes_to_handle_error() -> None:
    chat = stub_chat()

    def failing_send(data: Any) -> int:
        raise OSError(errno.EIO, "I/O error")

    chat.socket.send = failing_send
    chat.push(b"data")
    assert isinstance(chat.errors[0], OSError)


def test_handle_read_ignores_blocking_io_error_and_reports_others() -> None:
    chat = stub_chat([BlockingIOError(errno.EAGAIN, "again"), OSError(errno.EIO, "io")])
    chat.handle_read()
    assert chat.errors == []
    chat.handle_read()
    assert len(chat.errors) == 1 and chat.errors[0].errno == errno.EIO


def test_end_of_stream_closes_and_keeps_what_was_collected() -> None:
    chat = stub_chat([b"abc", b""], b"\n")
    feed(chat)
    assert chat.incoming == [b"abc"] and chat.messages == []
    assert chat.closed_by_handle_close


def test_default_handlers_must_be_overridden() -> None:
    chat = async_chat(map={})
    with pytest.raises(NotImplementedError):
        chat.collect_incoming_data(b"x")
    with pytest.raises(NotImplementedError):
        chat.found_terminator()


def test_predicates() -> None:
    chat = async_chat(map={})
    assert chat.readable()
    assert chat.writable()  # not connected yet: watch for the connect
    chat.connected = True
    assert not chat.writable()
    chat.producer_fifo.append(b"x")
    assert chat.writable()


def test_buffer_sizes_follow_cpython_code_not_the_seed_doc() -> None:
    assert async_chat.ac_in_buffer_size == 65536
    assert async_chat.ac_out_buffer_size == 65536


# -- simple_producer and find_prefix_at_end ---------------------------------------------------


def test_simple_producer() -> None:
    producer = simple_producer(b"abcdefghij", buffer_size=4)
    assert producer.more() == b"abcd"
    assert producer.data == b"efghij"
    assert [producer.more(), producer.more(), producer.more()] == [b"efgh", b"ij", b""]
    assert simple_producer(b"x" * 600).more() == b"x" * 512  # CPython's default size


def test_find_prefix_at_end() -> None:
    assert find_prefix_at_end("qwerty\r", "\r\n") == 1
    assert find_prefix_at_end("qwertydkjf", "\r\n") == 0
    assert find_prefix_at_end(b"abc\r\n.", b"\r\n.\r\n") == 3
    assert find_prefix_at_end(b"aaaa", b"aab") == 2
    assert find_prefix_at_end(b"", b"\r\n") == 0
    assert find_prefix_at_end(b"abc", b"") == 0


# -- the compat module ------------------------------------------------------------------------


def test_compat_module_namespace() -> None:
    assert asynchat.async_chat is async_chat
    assert asynchat.simple_producer is simple_producer
    assert asynchat.find_prefix_at_end is find_prefix_at_end
    assert asynchat.asyncore is asyncore
    assert asynchat.deque is collections.deque
    assert issubclass(asynchat.async_chat, asyncore.dispatcher)
    namespace: dict = {}
    exec("from pollchat.asynchat import *", namespace)
    assert {"async_chat", "simple_producer", "find_prefix_at_end", "asyncore"} <= set(namespace)
    assert repr(async_chat(map={})).startswith("<asynchat.async_chat")


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
    client_sock, server_sock = tcp_pair()
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
    client_sock, server_sock = tcp_pair()
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
    client_sock, server_sock = tcp_pair()

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
    client_sock, server_sock = tcp_pair()
    chats = [SpyChat(server_sock, loop.map)]
    others = []
    for _ in range(5):
        a, b = tcp_pair()
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
    a_client, a_server = tcp_pair()
    b_client, b_server = tcp_pair()
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
    client_sock, server_sock = tcp_pair()
    server = LineEcho(server_sock, None)
    client = Recorder(client_sock, None)
    client.set_terminator(b"\r\n")
    client.push(b"abc\r\nQUIT\r\n")
    asyncore.loop(timeout=0.01, count=300)  # returns once both have closed
    assert [data for data, _ in client.messages] == [b"ABC", b"BYE"]
    assert server.lines == [b"abc", b"QUIT"]
    asyncore.close_all()
