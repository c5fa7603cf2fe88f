"""The benchmark server as an idiomatic asyncio Protocol (or on uvloop).

Same workloads and wire protocol as ``legacy_server.py`` (see ``_common``):
``--loop asyncio`` uses the standard event loop, ``--loop uvloop`` uvloop's.
The server prints ``PORT <n>`` and serves until a ``QUIT`` line or until
``--max-seconds`` have passed.
"""

from __future__ import annotations

import asyncio
import sys
from typing import Callable, Optional

import _common


class LineProtocol(asyncio.Protocol):
    """Splits the byte stream into ``\\n``-terminated lines for :meth:`on_line`."""

    def __init__(self, stop: Callable[[], None]) -> None:
        self.stop = stop
        self.buffer = bytearray()
        self.transport: Optional[asyncio.Transport] = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

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

    def on_line(self, line: bytes) -> None:
        """Handle one line (without its newline)."""
        raise NotImplementedError


class EchoProtocol(LineProtocol):
    """Ping-pong: every line goes back."""

    def on_line(self, line: bytes) -> None:
        self.transport.write(line + b"\n")


class CountProtocol(LineProtocol):
    """Line parsing: count lines and bytes; ``END`` reports and resets."""

    lines = 0
    nbytes = 0

    def on_line(self, line: bytes) -> None:
        if line == b"END":
            self.transport.write(b"COUNT %d %d\n" % (self.lines, self.nbytes))
            self.lines = self.nbytes = 0
        else:
            self.lines += 1
            self.nbytes += len(line)


class PushProtocol(LineProtocol):
    """Bulk send: ``PUSH <n>`` writes ``n`` bytes in a single ``write()``."""

    def on_line(self, line: bytes) -> None:
        size = _common.parse_push(line)
        if size is not None:
            self.transport.write(bytes(size))


PROTOCOLS = {"echo": EchoProtocol, "count": CountProtocol, "push": PushProtocol}


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
    ])
    _common.raise_nofile_limit()
    loop = new_loop(args.loop)
    protocol = PROTOCOLS[args.mode]
    server = loop.run_until_complete(loop.create_server(
        lambda: protocol(loop.stop), args.host, args.port, backlog=args.backlog,
        reuse_address=True))
    info = _common.runtime_info(args.loop)
    info.update(mode=args.mode, loop=type(loop).__module__ + "." + type(loop).__name__)
    _common.announce(server.sockets[0].getsockname()[1], info)
    _common.arm_deadline(args.max_seconds)
    try:
        loop.run_forever()
    finally:
        server.close()
        loop.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
