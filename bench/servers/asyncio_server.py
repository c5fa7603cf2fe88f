"""The benchmark server as an idiomatic asyncio Protocol (or on uvloop).

Same workloads and wire protocols as ``legacy_server.py`` (see ``_common``):
``--loop asyncio`` uses the standard event loop, ``--loop uvloop`` uvloop's.
The server prints ``PORT <n>`` and serves until its quit message or until
``--max-seconds`` have passed.

Written as an asyncio programmer would: ``data_received()`` parses every
complete request in what arrived and answers each with ``transport.write()``,
as the legacy program pushes each reply.  With ``--batch-writes`` the
replies to what one ``data_received()`` call brought are joined into one
write instead (what an application can do for a pipelined protocol; the
``uvloop-batched`` competitor).
"""

from __future__ import annotations

import asyncio
import sys
from typing import Callable, List, cast

import _common


class BufferedProtocol(asyncio.Protocol):
    """A connection with an input buffer; ``stop`` ends the server.
    Replies go through :meth:`reply`; ``data_received()`` ends with
    :meth:`flush`."""

    #: Join the replies of one data_received() into one write (--batch-writes).
    batch_writes = False

    def __init__(self, stop: Callable[[], None]) -> None:
        self.stop = stop
        self.buffer = bytearray()
        self.pending: List[bytes] = []
        self.transport: asyncio.Transport  # set by connection_made()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)

    def reply(self, data: bytes) -> None:
        """Send ``data`` now, or with the others at :meth:`flush` when batching."""
        if self.batch_writes:
            self.pending.append(data)
        else:
            self.transport.write(data)

    def flush(self) -> None:
        """Write the batched replies, if any."""
        if self.pending:
            self.transport.write(b"".join(self.pending))
            self.pending.clear()


class LineProtocol(BufferedProtocol):
    """Splits the byte stream into ``\\n``-terminated lines for :meth:`on_line`."""

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        end = self.buffer.rfind(b"\n")
        if end < 0:
            return
        lines = bytes(self.buffer[:end]).split(b"\n")
        del self.buffer[:end + 1]
        for line in lines:
            if line == b"QUIT":
                self.stop()
                return
            self.on_line(line)
        self.flush()

    def on_line(self, line: bytes) -> None:
        """Handle one line (without its newline)."""
        raise NotImplementedError


class EchoProtocol(LineProtocol):
    """Ping-pong: every line goes back."""

    def on_line(self, line: bytes) -> None:
        self.reply(line + b"\n")


class CountProtocol(LineProtocol):
    """Line parsing: count lines and bytes; ``END`` reports and resets."""

    lines = 0
    nbytes = 0

    def on_line(self, line: bytes) -> None:
        if line == b"END":
            self.reply(b"COUNT %d %d\n" % (self.lines, self.nbytes))
            self.lines = self.nbytes = 0
        else:
            self.lines += 1
            self.nbytes += len(line)


class PushProtocol(LineProtocol):
    """Bulk send: ``PUSH <n>`` writes ``n`` bytes in a single ``write()``."""

    def on_line(self, line: bytes) -> None:
        size = _common.parse_push(line)
        if size is not None:
            self.reply(bytes(size))


class KVProtocol(BufferedProtocol):
    """The kv protocol over a buffer: header lines, then counted payloads."""

    store = _common.KVStore()

    def __init__(self, stop: Callable[[], None]) -> None:
        super().__init__(stop)
        self.key = b""
        self.size = -1  # size of the SET payload awaited, -1 when reading a header

    def data_received(self, data: bytes) -> None:
        buffer = self.buffer
        buffer += data
        pos = 0
        while True:
            if self.size >= 0:  # a SET's payload and its CRLF
                end = pos + self.size
                if len(buffer) < end + 2:
                    break
                if buffer[end:end + 2] != b"\r\n":
                    self.fail("payload not followed by CRLF")
                    return
                self.reply(self.store.set(self.key, bytes(buffer[pos:end])))
                pos = end + 2
                self.size = -1
                continue
            end = buffer.find(b"\r\n", pos)
            if end < 0:
                break
            try:
                command, key, size = _common.kv_header(bytes(buffer[pos:end]))
            except _common.KVError as exc:
                self.fail(str(exc))
                return
            pos = end + 2
            if command == b"GET":
                self.reply(self.store.get(key))
            elif command == b"SET":
                self.key, self.size = key, size
            else:
                self.stop()
                return
        del buffer[:pos]
        self.flush()

    def fail(self, why: str) -> None:
        """Answer what came before, then the error, and close."""
        self.reply(_common.kv_error(why))
        self.flush()
        self.transport.close()


class HTTPProtocol(BufferedProtocol):
    """HTTP/1.1 keep-alive: heads end at a blank line; fixed response."""

    def data_received(self, data: bytes) -> None:
        buffer = self.buffer
        buffer += data
        pos = 0
        close = False
        while not close:
            end = buffer.find(b"\r\n\r\n", pos)
            if end < 0:
                break
            reply, close, quit_ = _common.http_reply(bytes(buffer[pos:end]))
            if quit_:
                self.stop()
                return
            self.reply(reply)
            pos = end + 4
        del buffer[:pos]
        self.flush()
        if close:
            self.transport.close()


PROTOCOLS = {"echo": EchoProtocol, "count": CountProtocol, "push": PushProtocol,
             "kv": KVProtocol, "http": HTTPProtocol}


def new_loop(kind: str) -> asyncio.AbstractEventLoop:
    """A fresh event loop of the standard kind or uvloop's."""
    if kind == "uvloop":
        import uvloop

        return uvloop.new_event_loop()
    return asyncio.new_event_loop()


def main() -> int:
    """Serve until QUIT or the deadline."""
    args = _common.parse_args(__doc__.splitlines()[0], [
        {"flags": ["--loop"], "choices": ["asyncio", "uvloop"], "default": "asyncio"},
        {"flags": ["--batch-writes"], "action": "store_true",
         "help": "one write for the replies to what one data_received() brought"},
    ])
    BufferedProtocol.batch_writes = args.batch_writes
    _common.raise_nofile_limit()
    loop = new_loop(args.loop)
    protocol = PROTOCOLS[args.mode]
    server = loop.run_until_complete(loop.create_server(
        lambda: protocol(loop.stop), args.host, args.port, backlog=args.backlog,
        reuse_address=True))
    info = _common.runtime_info(args.loop, args.mode)
    info.update(loop=type(loop).__module__ + "." + type(loop).__name__,
                batch_writes=args.batch_writes)
    _common.announce(server.sockets[0].getsockname()[1], info)
    try:
        return _common.serve(loop.run_forever, args)
    finally:
        server.close()
        loop.close()


if __name__ == "__main__":
    sys.exit(main())
