"""async_chat's output: push() of every kind, producers, close_when_done(),
send errors, the predicates; simple_producer, find_prefix_at_end and the
compat module's namespace.  Through a stub socket, no network.
"""

from __future__ import annotations

import collections
import errno
from typing import Any

import pytest
from helpers import (
    ListProducer,
    drain,
    feed,
    stub_chat,
)

from pollchat import asynchat, asyncore
from pollchat.chat import async_chat, find_prefix_at_end, simple_producer

# -- output: push, producers, close_when_done ------------------------------------------------


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
