"""The TLS benchmark server: line echo over TLS, on pollchat or on asyncio.

``--impl pollchat``: the asyncore/asynchat program of ``legacy_server.py``'s
echo mode, each accepted channel calling ``start_tls()`` (pollchat's
MemoryBIO transport; the backend from ``POLLCHAT_BACKEND``).
``--impl asyncio`` (or ``uvloop``): an asyncio ``Protocol`` behind
``loop.create_server(ssl=context)``, asyncio's own TLS transport (sslproto).
Wire protocol as in ``_common`` (mode ``echo``; ``QUIT`` stops it).  Prints
``PORT <n>`` and serves until ``QUIT`` or ``--max-seconds``.
"""

from __future__ import annotations

import socket
import ssl
import sys
from typing import List

import _common

ARGS = _common.parse_args(__doc__.splitlines()[0], [
    {"flags": ["--impl"], "choices": ["pollchat", "asyncio", "uvloop"], "default": "pollchat"},
    {"flags": ["--certfile"], "required": True, "help": "PEM certificate chain"},
    {"flags": ["--keyfile"], "required": True, "help": "PEM private key"},
])


def server_context() -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(ARGS.certfile, ARGS.keyfile)
    return context


def serve_pollchat(context: ssl.SSLContext) -> None:
    from pollchat import asynchat, asyncore

    class EchoChannel(asynchat.async_chat):
        def __init__(self, sock: socket.socket) -> None:
            super().__init__(sock)
            self.set_terminator(b"\n")
            self.pieces: List[bytes] = []
            self.start_tls(context, server_side=True)

        def collect_incoming_data(self, data: bytes) -> None:
            self.pieces.append(data)

        def found_terminator(self) -> None:
            line = b"".join(self.pieces)
            self.pieces = []
            if line == b"QUIT":
                asyncore.close_all()
            else:
                self.push(line + b"\n")

    class Listener(asyncore.dispatcher):
        def __init__(self) -> None:
            super().__init__()
            self.create_socket(socket.AF_INET, socket.SOCK_STREAM)
            self.set_reuse_addr()
            self.bind((ARGS.host, ARGS.port))
            self.listen(ARGS.backlog)

        def handle_accept(self) -> None:
            for _ in range(64):  # as legacy_server.py: a batch per event
                pair = self.accept()
                if pair is None:
                    return
                EchoChannel(pair[0])

    listener = Listener()
    info = _common.runtime_info("pollchat")
    info.update(mode="echo", tls=True)
    _common.announce(listener.socket.getsockname()[1], info)
    _common.arm_deadline(ARGS.max_seconds)
    asyncore.loop(timeout=1.0)


def serve_asyncio(context: ssl.SSLContext) -> None:
    import asyncio

    if ARGS.impl == "uvloop":
        import uvloop

        asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())

    class Echo(asyncio.Protocol):
        def __init__(self, stop: asyncio.Future) -> None:
            self.stop = stop
            self.buffer = bytearray()

        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            self.transport = transport

        def data_received(self, data: bytes) -> None:
            self.buffer += data
            end = self.buffer.rfind(b"\n")
            if end < 0:
                return
            lines = bytes(self.buffer[:end]).split(b"\n")
            del self.buffer[:end + 1]
            for line in lines:
                if line == b"QUIT":
                    if not self.stop.done():
                        self.stop.set_result(None)
                    return
                self.transport.write(line + b"\n")

    async def main() -> None:
        loop = asyncio.get_running_loop()
        stop = loop.create_future()
        server = await loop.create_server(lambda: Echo(stop), ARGS.host, ARGS.port,
                                          backlog=ARGS.backlog, ssl=context)
        info = _common.runtime_info(ARGS.impl)
        info.update(mode="echo", tls=True)
        _common.announce(server.sockets[0].getsockname()[1], info)
        _common.arm_deadline(ARGS.max_seconds)
        await stop
        server.close()

    asyncio.run(main())


def main() -> int:
    _common.raise_nofile_limit()
    context = server_context()
    if ARGS.impl == "pollchat":
        serve_pollchat(context)
    else:
        serve_asyncio(context)
    return 0


if __name__ == "__main__":
    sys.exit(main())
