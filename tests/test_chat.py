"""async_chat's input: terminators (bytes, counts, None) split across reads,
changed inside found_terminator(), the pending input (``ac_in_buffer``)
read and assigned from the callbacks, linear-time scanning, and
set_terminator()'s errors and encodings.  Through a stub socket, no network.
"""

from __future__ import annotations

from typing import Any, List

import pytest
from helpers import (
    Recorder,
    StubSocket,
    feed,
    stub_chat,
)

from pollchat.chat import async_chat

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
