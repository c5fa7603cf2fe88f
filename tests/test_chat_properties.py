"""Property tests for async_chat's input scanning and output queue.

Input: for any byte stream, any way of cutting it into recv() chunks, any
``ac_in_buffer_size``, and terminators that change inside
``found_terminator()`` (bytes of any length, counts, None, b"", 0), the
messages handed out equal those of a reference model that processes the
whole stream at once in the most obvious (quadratic) way.  On CPython 3.11
the exact sequence of ``collect_incoming_data()`` calls is also compared with
the standard library's own asynchat, run on the same chunks.

Output: for any mix of pushes and producers and any pattern of partial
sends, the bytes sent are everything queued, in order, no send() is larger
than ``ac_out_buffer_size``, and ``close_when_done()`` closes only after.

No sockets: a stub socket feeds recv() and takes send().
"""

from __future__ import annotations

import importlib.util
import os
import sys
import sysconfig
import warnings
from typing import Any, List, Optional, Tuple
from unittest import mock

import pytest
from helpers import ListProducer, StubSocket
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from pollchat import asynchat
from pollchat import chat_input as chat_module

SETTINGS = settings(max_examples=200, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow])


def reraise() -> None:
    """A handle_error() that lets the exception being handled out, so that a
    failure in the code under test fails the test."""
    exc = sys.exc_info()[1]
    assert exc is not None
    raise exc


# -- the reference model ---------------------------------------------------------------


def reference(stream: bytes, initial: Any, script: List[Any]) -> Tuple[list, bytes, Any]:
    """Process ``stream`` at once, as the documentation describes.

    Returns ``(messages, pending, terminator)``: ``messages`` lists
    ``(data, terminator at found_terminator())`` per message; ``pending`` is
    the data after the last message (collected or held back); ``terminator``
    the final one (a count counts down).
    """
    script = list(script)
    term = initial
    messages = []
    pending = b""
    i = 0

    def found(data: bytes, at_call: Any) -> Any:
        messages.append((data, at_call))
        return script.pop(0) if script else at_call

    while i < len(stream):
        if not term:  # None, b"" and 0 take everything
            pending += stream[i:]
            i = len(stream)
        elif isinstance(term, int):
            piece = stream[i:i + term]
            pending += piece
            i += len(piece)
            if len(piece) == term:
                term = found(pending, 0)
                pending = b""
            else:
                term -= len(piece)
        else:
            j = stream.find(term, i)
            if j < 0:
                pending += stream[i:]
                i = len(stream)
            else:
                data = pending + stream[i:j]
                i = j + len(term)
                pending = b""
                term = found(data, term)
    return messages, pending, term


def longest_partial(data: bytes, term: Any) -> int:
    """The longest proper prefix of ``term`` that ``data`` ends with."""
    if not isinstance(term, bytes) or not term:
        return 0
    return max(k for k in range(len(term)) if data.endswith(term[:k]))


# -- recording channels -----------------------------------------------------------------


def make_recorder(base: type, *, override_get: bool = False) -> type:
    class Recorder(base):
        def setup(self, script: List[Any], direct: bool) -> None:
            self.script = list(script)
            self.direct = direct
            self.parts: List[bytes] = []
            self.calls: List[Any] = []  # ("c", data) / ("f", terminator)
            self.messages: List[Tuple[bytes, Any]] = []

        def collect_incoming_data(self, data: bytes) -> None:
            self.calls.append(("c", bytes(data)))
            self.parts.append(bytes(data))

        def found_terminator(self) -> None:
            at_call = self.get_terminator()
            self.calls.append(("f", at_call))
            self.messages.append((b"".join(self.parts), at_call))
            self.parts = []
            if self.script:
                new = self.script.pop(0)
                if self.direct:
                    self.terminator = new
                else:
                    self.set_terminator(new)

        def handle_close(self) -> None:
            pass

        def handle_error(self) -> None:
            reraise()

        if override_get:
            def get_terminator(self) -> Any:
                return self.terminator

    return Recorder


def run_chat(base: type, stream: bytes, cuts: List[int], initial: Any, script: List[Any],
             *, direct: bool = False, in_size: int = 1 << 20,
             override_get: bool = False, batching: Tuple[int, int] = (2, 2048)) -> Any:
    with mock.patch.object(chat_module, "_BATCH_AFTER", batching[0]), \
            mock.patch.object(chat_module, "_FIRST_WINDOW", batching[1]):
        return _run_chat(base, stream, cuts, initial, script, direct=direct, in_size=in_size,
                         override_get=override_get)


def _run_chat(base: type, stream: bytes, cuts: List[int], initial: Any, script: List[Any],
              *, direct: bool, in_size: int, override_get: bool) -> Any:
    bounds = [0, *sorted(set(c for c in cuts if 0 < c < len(stream))), len(stream)]
    chunks = [stream[a:b] for a, b in zip(bounds, bounds[1:]) if b > a]
    sock = StubSocket(chunks)
    chat = make_recorder(base, override_get=override_get)(map={})
    chat.setup(script, direct)
    chat.ac_in_buffer_size = in_size
    chat.set_terminator(initial)
    chat.set_socket(sock, map={})
    chat.connected = True
    while sock.chunks:
        chat.handle_read()
    return chat


# -- strategies -------------------------------------------------------------------------------

ALPHABET = b"ab\r\n"
byte_strings = st.lists(st.sampled_from(list(ALPHABET)), max_size=6).map(bytes)
terminators = st.one_of(
    st.none(),
    st.integers(min_value=0, max_value=12),
    byte_strings,  # includes b"" (acts as None)
    st.sampled_from([b"\r\n", b"\n", b"\r\n.\r\n", b"aab", b"abab"]),
)
# Runs of the same terminator, so that the batched scanning (which starts
# after a few messages with an unchanged terminator) meets changes too.
scripts = st.lists(st.tuples(terminators, st.integers(1, 8)), max_size=8).map(
    lambda runs: [term for term, times in runs for _ in range(times)])
streams = st.lists(
    st.one_of(st.sampled_from(list(ALPHABET)),
              st.sampled_from([b"\r\n", b"aab", b"abab", b"\r\n.\r\n", b"x" * 30])),
    max_size=120,
).map(lambda parts: b"".join(p if isinstance(p, bytes) else bytes([p]) for p in parts))


# How soon and in what windows the scan switches to batches (small windows
# put window edges everywhere, through terminators too).
batchings = st.one_of(st.just((2, 2048)),
                      st.tuples(st.integers(0, 3), st.integers(1, 24)))


# -- input properties ------------------------------------------------------------------------------


@SETTINGS
@given(stream=streams, cuts=st.lists(st.integers(0, 400), max_size=30),
       initial=terminators, script=scripts,
       direct=st.booleans(), in_size=st.sampled_from([1, 2, 3, 7, 64, 1 << 20]),
       override_get=st.booleans(), batching=batchings)
def test_messages_equal_reference_model(stream, cuts, initial, script, direct, in_size,  # noqa: PLR0917
                                        override_get, batching):
    chat = run_chat(asynchat.async_chat, stream, cuts, initial, script, direct=direct,
                    in_size=in_size, override_get=override_get, batching=batching)
    messages, pending, final_term = reference(stream, initial, script)
    assert chat.messages == messages
    # Everything after the last message was collected or is held back...
    held = chat.ac_in_buffer
    assert b"".join(chat.parts) + held == pending
    # ...and only what could still start the terminator is held back.
    assert len(held) == longest_partial(pending, final_term)
    assert chat.get_terminator() == final_term
    # collect_incoming_data() is never given empty data.
    assert all(data for kind, data in chat.calls if kind == "c")


def _stdlib_asynchat() -> Any:
    """CPython's own asynchat, loaded by path (None where it does not exist)."""
    path = os.path.join(sysconfig.get_paths()["stdlib"], "asynchat.py")
    if sys.version_info >= (3, 12) or not os.path.exists(path):
        return None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        spec = importlib.util.spec_from_file_location("_stdlib_asynchat_oracle", path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    return module


STDLIB = _stdlib_asynchat()


@pytest.mark.skipif(STDLIB is None, reason="CPython's asynchat exists only up to 3.11")
@SETTINGS
@given(stream=streams, cuts=st.lists(st.integers(0, 400), max_size=30),
       initial=terminators, script=scripts,
       in_size=st.sampled_from([1, 3, 64, 1 << 20]), batching=batchings)
def test_calls_equal_cpython_asynchat(stream, cuts, initial, script, in_size, batching):  # noqa: PLR0917
    """Call for call: the same data in each collect_incoming_data()."""
    ours = run_chat(asynchat.async_chat, stream, cuts, initial, script, in_size=in_size,
                    batching=batching)
    theirs = run_chat(STDLIB.async_chat, stream, cuts, initial, script, in_size=in_size)
    assert ours.calls == theirs.calls
    assert ours.ac_in_buffer == theirs.ac_in_buffer
    assert ours.terminator == theirs.terminator


def make_meddler(base: type) -> type:
    class Meddler(base):
        """Callbacks that read, replace or discard the pending input, or
        change the terminator, following a script; every call is recorded
        with what ``ac_in_buffer`` held at that moment."""

        def setup(self, actions: List[Any]) -> None:
            self.actions = list(actions)
            self.calls: List[Any] = []

        def _act(self) -> None:
            if not self.actions:
                return
            action = self.actions.pop(0)
            if action is None:
                return
            if action[0] == "term":
                self.set_terminator(action[1])
            elif action[0] == "discard":
                self.discard_buffers()
            else:
                self.ac_in_buffer = action[1]

        def collect_incoming_data(self, data: bytes) -> None:
            self.calls.append(("c", bytes(data), bytes(self.ac_in_buffer)))
            self._act()

        def found_terminator(self) -> None:
            self.calls.append(("f", self.terminator, bytes(self.ac_in_buffer)))
            self._act()

        def handle_close(self) -> None:
            pass

        def handle_error(self) -> None:
            reraise()

    return Meddler


actions = st.lists(st.one_of(
    st.none(), st.none(), st.none(),
    st.tuples(st.just("term"), terminators),
    st.tuples(st.just("discard")),
    st.tuples(st.just("set"), byte_strings),
), max_size=40)


@pytest.mark.skipif(STDLIB is None, reason="CPython's asynchat exists only up to 3.11")
@SETTINGS
@given(stream=streams, cuts=st.lists(st.integers(0, 400), max_size=20), initial=terminators,
       script=actions, in_size=st.sampled_from([2, 64, 1 << 20]))
def test_callbacks_touching_the_buffer_like_cpython(stream, cuts, initial, script, in_size):
    """Callbacks that read ac_in_buffer, assign it, call discard_buffers() or
    set_terminator() see and get what they would with CPython."""
    results = []
    for base in (asynchat.async_chat, STDLIB.async_chat):
        bounds = [0, *sorted(set(c for c in cuts if 0 < c < len(stream))), len(stream)]
        chunks = [stream[a:b] for a, b in zip(bounds, bounds[1:]) if b > a]
        sock = StubSocket(chunks)
        chat = make_meddler(base)(map={})
        chat.setup(script)
        chat.ac_in_buffer_size = in_size
        chat.set_terminator(initial)
        chat.set_socket(sock, map={})
        chat.connected = True
        outcome = None
        while sock.chunks:
            try:
                chat.handle_read()
            except TypeError as exc:
                # A callback set None as the terminator while a count was
                # running out: CPython's count-down then fails, and so do we.
                outcome = type(exc)
                break
            except ValueError:
                # ...or set a smaller count, which the count-down took below
                # zero: CPython then hands out garbage, we refuse.
                assert base is asynchat.async_chat
                assume(False)
        results.append((chat.calls, bytes(chat.ac_in_buffer), chat.terminator, outcome))
    assert results[0] == results[1]


@SETTINGS
@given(lines=st.lists(st.binary(max_size=40).filter(lambda b: b"\n" not in b), max_size=300),
       chunk=st.integers(1, 5000), term=st.sampled_from([b"\n", b"\r\n", b"\r\n.\r\n"]),
       batching=batchings)
def test_many_lines_batched(lines, chunk, term, batching):
    """Long runs of messages with a stable terminator (the batched path)."""
    lines = [line.replace(term[:1], b"") for line in lines]
    stream = b"".join(line + term for line in lines)
    cuts = list(range(chunk, len(stream), chunk))
    chat = run_chat(asynchat.async_chat, stream, cuts, term, [], batching=batching)
    assert chat.messages == [(line, term) for line in lines]


@SETTINGS
@given(lines=st.lists(st.binary(max_size=30).filter(lambda b: b"\n" not in b), min_size=3,
                      max_size=200),
       switch_at=st.integers(0, 200), then=terminators, tail=st.binary(max_size=300),
       chunk=st.integers(1, 5000), batching=batchings)
def test_change_after_a_run_of_lines(lines, switch_at, then, tail, chunk, batching):  # noqa: PLR0917
    """A terminator changed after a long run of lines applies to the data
    already received (which the batched path has already cut up)."""
    stream = b"".join(line + b"\n" for line in lines) + tail
    cuts = list(range(chunk, len(stream), chunk))
    script = [b"\n"] * min(switch_at, len(lines)) + [then]
    chat = run_chat(asynchat.async_chat, stream, cuts, b"\n", script, batching=batching)
    messages, pending, _ = reference(stream, b"\n", script)
    assert chat.messages == messages
    assert b"".join(chat.parts) + chat.ac_in_buffer == pending


# -- output properties -------------------------------------------------------------------------


items = st.one_of(
    st.tuples(st.just("bytes"), st.binary(max_size=300)),
    st.tuples(st.just("bytearray"), st.binary(max_size=300)),
    st.tuples(st.just("memoryview"), st.binary(max_size=300)),
    st.tuples(st.just("simple"), st.binary(max_size=300), st.integers(-1, 50)),
    st.tuples(st.just("producer"), st.lists(st.binary(min_size=1, max_size=80), max_size=5)),
    st.tuples(st.just("raw"), st.binary(max_size=300)),  # push_with_producer(bytes)
)


class Sender(asynchat.async_chat):
    closed_after: Optional[int] = None

    def collect_incoming_data(self, data: bytes) -> None:
        pass

    def found_terminator(self) -> None:
        pass

    def handle_close(self) -> None:
        self.closed_after = sum(len(s) for s in self.socket.sent)
        self.close()

    def handle_error(self) -> None:
        reraise()


@SETTINGS
@given(queue=st.lists(items, max_size=12),
       send_sizes=st.lists(st.integers(0, 200), min_size=1, max_size=10).filter(any),
       out_size=st.sampled_from([1, 7, 64, 65536]),
       close=st.booleans())
def test_output_in_order(queue, send_sizes, out_size, close):
    sock = StubSocket(send_sizes=send_sizes)
    chat = Sender(map={})
    chat.ac_out_buffer_size = out_size
    chat.set_socket(sock, map={})
    chat.connected = True
    expected = b""
    for kind, *args in queue:
        data = args[0]
        if kind == "bytes":
            chat.push(data)
        elif kind == "bytearray":
            source = bytearray(data)
            chat.push(source)
            source[:] = b"changed after push"  # a bytearray is copied by push()
        elif kind == "memoryview":
            chat.push(memoryview(data))
        elif kind == "simple":
            chat.push_with_producer(asynchat.simple_producer(data, buffer_size=args[1]))
        elif kind == "producer":
            chat.push_with_producer(ListProducer(*data))
            data = b"".join(data)
        else:
            chat.push_with_producer(data)
        expected += data
    if close:
        chat.close_when_done()
    for _ in range(100000):
        if not chat.producer_fifo or not chat.connected:
            break
        chat.handle_write()
    assert b"".join(sock.sent) == expected
    assert all(len(data) <= out_size for data in sock.send_args)
    assert not chat.producer_fifo
    if close:
        assert chat.closed_after == len(expected)
        assert sock.closed
    else:
        assert chat.closed_after is None


@SETTINGS
@given(data=st.binary(max_size=2000), size=st.integers(-3, 300))
def test_simple_producer_pieces(data, size):
    producer = asynchat.simple_producer(data, buffer_size=size)
    pieces = []
    while True:
        piece = producer.more()
        if not piece:
            break
        pieces.append(piece)
        assert size <= 0 or len(piece) <= size
        assert len(pieces) <= len(data) + 1
    assert b"".join(pieces) == data
    assert producer.data == b""


@SETTINGS
@given(haystack=st.binary(max_size=30), needle=st.binary(max_size=6))
def test_find_prefix_at_end_is_longest_proper_prefix(haystack, needle):
    if needle and haystack.endswith(needle):
        return  # undefined when the needle itself ends the haystack
    expected = max((k for k in range(1, len(needle)) if haystack.endswith(needle[:k])),
                   default=0)
    assert asynchat.find_prefix_at_end(haystack, needle) == expected
