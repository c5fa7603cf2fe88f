"""The TLS benchmark server: line echo over TLS, on pollchat or on asyncio.

``--impl pollchat`` (the harness's "legacy" api): the asyncore/asynchat
program of ``legacy_server.py``'s echo mode, each accepted channel calling
``start_tls()`` (pollchat's MemoryBIO transport; the backend from
``POLLCHAT_BACKEND``).  ``--loop asyncio`` or ``--loop uvloop`` (the
"asyncio" api): an asyncio ``Protocol`` behind
``loop.create_server(ssl=context)``, asyncio's own TLS transport.  One
program for both, so that it can be each api's server of a workload.

Wire protocol as in ``_common`` (mode ``echo``; ``QUIT`` over TLS stops
it).  Prints ``INFO``/``PORT`` and serves until ``QUIT``, SIGTERM (exit
status 0; the ``INFO`` line says ``"stop": "SIGTERM"``, since the harness's
quit message, sent in plaintext, cannot reach a TLS server) or
``--max-seconds``.  Without ``--certfile`` a certificate for ``localhost``
is made at start (trustme).
"""

from __future__ import annotations

import os
import signal
import socket
import ssl
import sys
from typing import Any, Dict, List

import _common

ARGS = _common.parse_args(__doc__.splitlines()[0], [
    {"flags": ["--impl"], "choices": ["pollchat"], "default": "pollchat"},
    {"flags": ["--loop"], "choices": ["asyncio", "uvloop"],
     "help": "serve with asyncio's TLS transport instead of pollchat's"},
    {"flags": ["--certfile"], "help": "PEM certificate chain (default: made at start)"},
    {"flags": ["--keyfile"], "help": "PEM private key"},
])


def server_context() -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    if ARGS.certfile:
        context.load_cert_chain(ARGS.certfile, ARGS.keyfile)
    else:
        import trustme

        trustme.CA().issue_cert("localhost", "127.0.0.1").configure_cert(context)
    return context


def info(impl: str) -> Dict[str, Any]:
    return {"impl": impl, "mode": "echo", "tls": True, "stop": "SIGTERM",
            "python": sys.version.split()[0], "pid": os.getpid(),
            "backend": os.environ.get("POLLCHAT_BACKEND", "auto")}


def serve_pollchat(context: ssl.SSLContext) -> None:
    # (The harness's mypy runs without pollchat on its path: Any.)
    from pollchat import asynchat, asyncore  # type: ignore[import-not-found,unused-ignore]

    class EchoChannel(asynchat.async_chat):  # type: ignore[misc,unused-ignore]
        def __init__(self, sock: socket.socket) -> None:
            # As legacy_server.py, and as asyncio does by default: with
            # Nagle's algorithm a small record (a session ticket, an echo)
            # behind another waits for the client's delayed ACK.
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
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

    class Listener(asyncore.dispatcher):  # type: ignore[misc,unused-ignore]
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

    def stop(signum: int, frame: object) -> None:
        raise SystemExit(0)  # leaves asyncore.loop(), as SIGALRM's deadline does

    signal.signal(signal.SIGTERM, stop)
    listener = Listener()
    _common.announce(listener.socket.getsockname()[1], info("pollchat"))
    _common.arm_deadline(ARGS.max_seconds)
    asyncore.loop(timeout=1.0)


def serve_asyncio(context: ssl.SSLContext) -> None:
    import asyncio

    from asyncio_server import EchoProtocol  # the same line echo as the plain runs

    if ARGS.loop == "uvloop":
        import uvloop

        asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())

    async def main() -> None:
        loop = asyncio.get_running_loop()
        stop: asyncio.Future[None] = loop.create_future()

        def stop_now() -> None:
            if not stop.done():
                stop.set_result(None)

        loop.add_signal_handler(signal.SIGTERM, stop_now)
        server = await loop.create_server(lambda: EchoProtocol(stop_now), ARGS.host, ARGS.port,
                                          backlog=ARGS.backlog, ssl=context)
        _common.announce(server.sockets[0].getsockname()[1], info(ARGS.loop))
        _common.arm_deadline(ARGS.max_seconds)
        await stop
        server.close()

    asyncio.run(main())


def main() -> int:
    _common.raise_nofile_limit()
    context = server_context()
    if ARGS.loop:
        serve_asyncio(context)
    else:
        serve_pollchat(context)
    return 0


if __name__ == "__main__":
    sys.exit(main())
