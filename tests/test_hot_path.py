"""The busy path's structure: what keeps each message cheap, pinned here so
that a change which quietly makes every message dearer fails a test.  (How
fast it is gets measured in bench/, never timed in tests.)"""

from __future__ import annotations

import socket
from typing import Any, Iterator, List

import pytest

from pollchat import asynchat
from pollchat.channel import dispatcher
from pollchat.chat_input import ChatInput
from pollchat.chat_output import ChatOutput
from pollchat.loop import Loop

#: The functions every message goes through (with the loop's pass).
BUSY_PATH = [
    Loop.run_once, Loop._dispatch_events,
    dispatcher.handle_read_event, dispatcher.recv, dispatcher.send,
    ChatInput.handle_read, ChatInput._scan_delimited, ChatInput._scan_batched,
    ChatOutput.push, ChatOutput._send_now, ChatOutput._send_batch, ChatOutput.initiate_send,
]


@pytest.mark.parametrize("func", BUSY_PATH, ids=lambda func: func.__qualname__)
def test_no_cell_variables_on_the_busy_path(func: Any) -> None:
    # A local that a nested function or (before 3.12) a comprehension
    # captures becomes a cell, made anew on every call and read through it.
    assert func.__code__.co_cellvars == ()


class Chat(asynchat.async_chat):
    def collect_incoming_data(self, data: bytes) -> None:
        pass

    def found_terminator(self) -> None:
        pass


class OwnSend(Chat):
    def send(self, data: Any) -> int:
        return super().send(data)


class OwnGetter(Chat):
    def get_terminator(self) -> Any:
        return super().get_terminator()


class GetterBeforeInit(Chat):
    """Replaces get_terminator() on the instance before async_chat's
    __init__ runs: the read path must still ask it at every step."""

    def __init__(self, sock: Any, map: Any) -> None:
        self.get_terminator = lambda: b"|"  # type: ignore[method-assign]
        super().__init__(sock, map)


@pytest.fixture
def channels() -> Iterator[List[Any]]:
    made: List[Any] = []
    peers: List[socket.socket] = []

    def make(cls: type) -> Any:
        ours, theirs = socket.socketpair()
        peers.append(theirs)
        made.append(cls(ours, map={}))
        return made[-1]

    yield [make]
    for channel in made:
        channel.close()
    for peer in peers:
        peer.close()


def test_the_per_read_flags_are_instance_attributes(channels: List[Any]) -> None:
    # The read path asks for both on every read; Python 3.11 specializes
    # loads of instance attributes only, so class defaults would cost a full
    # lookup each time.
    make = channels[0]
    plain, own_send, own_getter = make(Chat), make(OwnSend), make(OwnGetter)
    assert vars(plain)["_ac_coalesce"] is True
    assert vars(plain)["_ac_stock_get_terminator"] is True
    assert vars(own_send)["_ac_coalesce"] is False
    assert vars(own_getter)["_ac_stock_get_terminator"] is False


def test_an_instance_getter_set_before_init_is_asked(channels: List[Any]) -> None:
    channel = channels[0](GetterBeforeInit)
    channel.set_terminator(b"\n")  # what the replaced getter hides
    seen: List[bytes] = []
    channel.collect_incoming_data = seen.append
    channel._ac_buf, channel._ac_pos = b"a|b\nc|", 0
    channel._scan_input()
    assert seen == [b"a", b"b\nc"]


def test_instances_keep_one_attribute_order(channels: List[Any]) -> None:
    # Python 3.11 keeps instances on the class's shared keys (fast loads)
    # only while each adds its attributes in the same order.
    make = channels[0]
    first, second = make(Chat), make(Chat)
    first.set_terminator(b"\r\n")
    second.set_terminator(3)
    first.push(b"x")
    assert list(vars(first)) == list(vars(second))
