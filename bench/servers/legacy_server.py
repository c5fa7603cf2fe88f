"""The benchmark server written against the asyncore/asynchat API.

One program for pollchat and for CPython's own asyncore/asynchat: the only
difference between the two is the import below.  For pollchat the poller
comes from ``POLLCHAT_BACKEND``; for the standard library ``--use-poll``
passes ``use_poll=True`` to ``asyncore.loop()``.  The protocols are described
in ``_common``.  The server prints ``PORT <n>`` and serves until its quit
message or until ``--max-seconds`` have passed.

The channels are written as asynchat programs are: one ``push()`` per reply,
pieces collected in ``collect_incoming_data()``, and for the kv protocol a
``set_terminator(b"\\r\\n")`` for each header and ``set_terminator(n)`` for
each counted payload.
"""

from __future__ import annotations

import socket
import sys
import warnings
from typing import Callable, List

import _common

ARGS = _common.parse_args(__doc__.splitlines()[0], [
    {"flags": ["--impl"], "choices": ["pollchat", "stdlib"], "default": "stdlib"},
    {"flags": ["--use-poll"], "action": "store_true", "help": "asyncore.loop(use_poll=True)"},
    {"flags": ["--in-buffer"], "type": int, "default": 0,
     "help": "async_chat.ac_in_buffer_size (0: the library default)"},
])
warnings.filterwarnings("ignore", category=DeprecationWarning)  # 3.11: asyncore is deprecated

# -------- the one difference between the pollchat and the stdlib server --------
if ARGS.impl == "stdlib":
    import asynchat  # noqa: E402
    import asyncore  # noqa: E402
else:
    from pollchat import (  # type: ignore[import-not-found,no-redef,unused-ignore]  # noqa: E402
        asynchat,
        asyncore,
    )
# --------------------------------------------------------------------------------

#: Connections accepted per readable event of the listening socket.
ACCEPT_BATCH = 64


def shutdown() -> None:
    """Close every channel: ``asyncore.loop()`` returns once the map is empty."""
    asyncore.close_all()


class CollectingChannel(asynchat.async_chat):
    """A channel that starts with terminator :attr:`first_terminator` and
    collects the pieces of each message the way the asynchat docs do."""

    first_terminator = b"\n"

    def __init__(self, sock: socket.socket) -> None:
        super().__init__(sock)
        self.set_terminator(self.first_terminator)
        self.pieces: List[bytes] = []

    def collect_incoming_data(self, data: bytes) -> None:
        self.pieces.append(data)

    def take(self) -> bytes:
        """The message collected so far (and forget it)."""
        data = b"".join(self.pieces)
        self.pieces = []
        return data


class LineChannel(CollectingChannel):
    """A connection that reads ``\\n``-terminated lines and hands each to
    :meth:`on_line`."""

    def found_terminator(self) -> None:
        line = self.take()
        if line == b"QUIT":
            shutdown()
        else:
            self.on_line(line)

    def on_line(self, line: bytes) -> None:
        """Handle one line (without its newline)."""
        raise NotImplementedError


class EchoChannel(LineChannel):
    """Ping-pong: every line goes back."""

    def on_line(self, line: bytes) -> None:
        self.push(line + b"\n")


class CountChannel(LineChannel):
    """Line parsing: count lines and bytes; ``END`` reports and resets."""

    def __init__(self, sock: socket.socket) -> None:
        super().__init__(sock)
        self.lines = 0
        self.nbytes = 0

    def on_line(self, line: bytes) -> None:
        if line == b"END":
            self.push(b"COUNT %d %d\n" % (self.lines, self.nbytes))
            self.lines = self.nbytes = 0
        else:
            self.lines += 1
            self.nbytes += len(line)


class PushChannel(LineChannel):
    """Bulk send: ``PUSH <n>`` pushes ``n`` bytes in a single ``push()``."""

    def on_line(self, line: bytes) -> None:
        size = _common.parse_push(line)
        if size is not None:
            self.push(bytes(size))


class KVChannel(CollectingChannel):
    """The kv protocol: a ``b"\\r\\n"`` terminator for each header line, a
    count terminator (payload plus its ``\\r\\n``) for each SET's value."""

    store = _common.KVStore()
    first_terminator = b"\r\n"

    def __init__(self, sock: socket.socket) -> None:
        super().__init__(sock)
        self.key = b""  # the key of the SET whose payload is being read
        self.in_payload = False

    def found_terminator(self) -> None:
        data = self.take()
        if self.in_payload:
            self.in_payload = False
            self.set_terminator(b"\r\n")
            if not data.endswith(b"\r\n"):
                self.fail("payload not followed by CRLF")
                return
            self.push(self.store.set(self.key, data[:-2]))
            return
        try:
            command, key, size = _common.kv_header(data)
        except _common.KVError as exc:
            self.fail(str(exc))
            return
        if command == b"GET":
            self.push(self.store.get(key))
        elif command == b"SET":
            self.key = key
            self.in_payload = True
            self.set_terminator(size + 2)
        else:
            shutdown()

    def fail(self, why: str) -> None:
        """Answer an error and close: a framing error cannot be resynchronised."""
        self.push(_common.kv_error(why))
        self.close_when_done()


class HTTPChannel(CollectingChannel):
    """HTTP/1.1 keep-alive: the terminator ``b"\\r\\n\\r\\n"`` ends each
    request head; every request gets one push of the fixed response."""

    first_terminator = b"\r\n\r\n"

    def found_terminator(self) -> None:
        reply, close, quit_ = _common.http_reply(self.take())
        if quit_:
            shutdown()
            return
        self.push(reply)
        if close:
            self.close_when_done()


CHANNELS = {"echo": EchoChannel, "count": CountChannel, "push": PushChannel,
            "kv": KVChannel, "http": HTTPChannel}


class Listener(asyncore.dispatcher):
    """The listening socket; accepts up to ``ACCEPT_BATCH`` connections per
    readable event (so that opening 10,000 connections does not take 10,000
    loop passes) and wraps each in ``factory``."""

    def __init__(self, host: str, port: int, backlog: int,
                 factory: Callable[[socket.socket], asynchat.async_chat]) -> None:
        super().__init__()
        self.factory = factory
        self.create_socket(socket.AF_INET, socket.SOCK_STREAM)
        self.set_reuse_addr()
        self.bind((host, port))
        self.listen(backlog)
        self.port: int = self.socket.getsockname()[1] if self.socket else 0

    def handle_accept(self) -> None:
        for _ in range(ACCEPT_BATCH):
            pair = self.accept()
            if pair is None:
                return
            self.handle_accepted(*pair)

    def handle_accepted(self, sock: socket.socket, addr: object) -> None:
        # Replies go out as soon as they are pushed, as asyncio and uvloop do
        # by default: with Nagle's algorithm, the second of several small
        # replies in a row would wait for the client's delayed ACK (40 ms).
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.factory(sock)


def main() -> int:
    """Serve until QUIT or the deadline."""
    _common.raise_nofile_limit()
    if ARGS.in_buffer:
        LineChannel.ac_in_buffer_size = ARGS.in_buffer
    listener = Listener(ARGS.host, ARGS.port, ARGS.backlog, CHANNELS[ARGS.mode])
    info = _common.runtime_info(ARGS.impl, ARGS.mode)
    info.update(use_poll=ARGS.use_poll, ac_in_buffer_size=LineChannel.ac_in_buffer_size)
    _common.announce(listener.port, info)
    return _common.serve(lambda: asyncore.loop(timeout=1.0, use_poll=ARGS.use_poll), ARGS)


if __name__ == "__main__":
    sys.exit(main())
