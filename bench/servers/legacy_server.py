"""The benchmark server written against the asyncore/asynchat API.

One program for pollchat and for CPython's own asyncore/asynchat: the only
difference between the two is the import below.  For pollchat the poller
comes from ``POLLCHAT_BACKEND``; for the standard library ``--use-poll``
passes ``use_poll=True`` to ``asyncore.loop()``.  The protocol is described
in ``_common``.  The server prints ``PORT <n>`` and serves until a ``QUIT``
line or until ``--max-seconds`` have passed.
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
if ARGS.impl == "pollchat":
    from pollchat import asynchat, asyncore  # noqa: E402
else:
    import asynchat  # noqa: E402
    import asyncore  # noqa: E402
# --------------------------------------------------------------------------------

#: Connections accepted per readable event of the listening socket.
ACCEPT_BATCH = 64


def shutdown() -> None:
    """Close every channel: ``asyncore.loop()`` returns once the map is empty."""
    asyncore.close_all()


class LineChannel(asynchat.async_chat):
    """A connection that reads ``\\n``-terminated lines and hands each to
    :meth:`on_line`, collecting pieces the way the asynchat docs do."""

    def __init__(self, sock: socket.socket) -> None:
        super().__init__(sock)
        self.set_terminator(b"\n")
        self.pieces: List[bytes] = []

    def collect_incoming_data(self, data: bytes) -> None:
        self.pieces.append(data)

    def found_terminator(self) -> None:
        line = b"".join(self.pieces)
        self.pieces = []
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


CHANNELS = {"echo": EchoChannel, "count": CountChannel, "push": PushChannel}


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

    def handle_accept(self) -> None:
        for _ in range(ACCEPT_BATCH):
            pair = self.accept()
            if pair is None:
                return
            self.handle_accepted(*pair)

    def handle_accepted(self, sock: socket.socket, addr: object) -> None:
        self.factory(sock)


def main() -> int:
    """Serve until QUIT or the deadline."""
    _common.raise_nofile_limit()
    if ARGS.in_buffer:
        LineChannel.ac_in_buffer_size = ARGS.in_buffer
    listener = Listener(ARGS.host, ARGS.port, ARGS.backlog, CHANNELS[ARGS.mode])
    info = _common.runtime_info(ARGS.impl)
    info.update(mode=ARGS.mode, use_poll=ARGS.use_poll,
                ac_in_buffer_size=LineChannel.ac_in_buffer_size)
    _common.announce(listener.socket.getsockname()[1], info)
    _common.arm_deadline(ARGS.max_seconds)
    asyncore.loop(timeout=1.0, use_poll=ARGS.use_poll)
    return 0


if __name__ == "__main__":
    sys.exit(main())
