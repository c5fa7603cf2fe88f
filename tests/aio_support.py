"""Helpers for the asyncio/uvloop tests: event loops of each kind, and a
line echo pair (a pollchat listener with async_chat sessions)."""

from __future__ import annotations

import asyncio
import importlib.util
import threading
from typing import Any, Awaitable, Callable, Dict, List, Optional

import pytest
from helpers import WAIT

from pollchat import asynchat, asyncore

HAVE_UVLOOP = importlib.util.find_spec("uvloop") is not None
NO_UVLOOP = "uvloop is not installed (the test extra installs it where it has wheels)"

#: The event loops pollchat.aio.serve() is tested in.
FLAVOURS = [pytest.param("asyncio", id="asyncio"),
            pytest.param("uvloop", id="uvloop",
                         marks=pytest.mark.skipif(not HAVE_UVLOOP, reason=NO_UVLOOP))]


def new_event_loop(flavour: str) -> asyncio.AbstractEventLoop:
    """A new event loop of ``flavour`` ("asyncio" or "uvloop")."""
    if flavour == "uvloop":
        import uvloop

        return uvloop.new_event_loop()
    return asyncio.new_event_loop()


def run_in(flavour: str, main: Callable[[], Awaitable[Any]], timeout: float = WAIT) -> Any:
    """Run ``main()`` to completion in a new event loop of ``flavour``,
    failing after ``timeout`` seconds; the loop is closed afterwards."""
    loop = new_event_loop(flavour)
    try:
        return loop.run_until_complete(asyncio.wait_for(main(), timeout))
    finally:
        for task in asyncio.all_tasks(loop):
            task.cancel()
        loop.run_until_complete(asyncio.sleep(0))
        loop.close()


class EchoSession(asynchat.async_chat):
    """Echoes each line, recording the thread that served it."""

    threads: List[int] = []

    def __init__(self, sock: Any, map: Dict[Any, Any]) -> None:
        super().__init__(sock, map=map)
        self.set_terminator(b"\n")
        self.buffer: List[bytes] = []

    def collect_incoming_data(self, data: bytes) -> None:
        self.buffer.append(data)

    def found_terminator(self) -> None:
        EchoSession.threads.append(threading.get_ident())
        self.push(b"".join(self.buffer) + b"\n")
        self.buffer = []


class Listener(asyncore.dispatcher):
    """A listener on an ephemeral loopback port, making ``session_class``
    sessions in its map."""

    def __init__(self, map: Dict[Any, Any], session_class: Any = EchoSession) -> None:
        super().__init__(map=map)
        self.session_class = session_class
        self.sessions: List[Any] = []
        self.create_socket()
        self.bind(("127.0.0.1", 0))
        self.listen(64)
        self.port = self.socket.getsockname()[1]

    def handle_accepted(self, sock: Any, addr: Any) -> None:
        self.sessions.append(self.session_class(sock, self._map))


async def exchange(port: int, lines: List[bytes],
                   reader_writer: Optional[Any] = None) -> List[bytes]:
    """Send each line to ``port`` and read one reply line after each."""
    reader, writer = reader_writer or await asyncio.open_connection("127.0.0.1", port)
    replies = []
    for line in lines:
        writer.write(line + b"\n")
        await writer.drain()
        replies.append((await reader.readline()).rstrip(b"\n"))
    if reader_writer is None:
        writer.close()
    return replies
