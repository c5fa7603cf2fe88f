"""The benchmark mail server, written against the smtpd API.

One program for pollchat and for CPython 3.11's own smtpd: the only
difference is the import below (``--impl``).  A sink: ``process_message``
counts the message and returns ``None`` (``250 OK``), the least work a real
server does, so that the figure is the cost of the SMTP machinery itself.
The greeting names a fixed host (:data:`FQDN`), as the load generator
expects exact replies; ``XQUIT`` (the mode's quit message) closes every
channel, which ends the loop.
"""

from __future__ import annotations

import socket
import sys
import warnings
from typing import Any

import _common

# This program's mode and its quit message, registered here rather than in
# _common.MODES, so that the mail workload lives in its own files.
_common.MODES.setdefault("smtp", b"XQUIT\r\n")

ARGS = _common.parse_args(__doc__.splitlines()[0], [
    {"flags": ["--impl"], "choices": ["pollchat", "stdlib"], "default": "stdlib"},
    {"flags": ["--use-poll"], "action": "store_true", "help": "asyncore.loop(use_poll=True)"},
])
warnings.filterwarnings("ignore", category=DeprecationWarning)  # 3.11: smtpd is deprecated

# -------- the one difference between the pollchat and the stdlib server --------
if ARGS.impl == "stdlib":
    import asyncore  # noqa: E402
    import smtpd  # noqa: E402
else:
    from pollchat import (  # type: ignore[import-not-found,no-redef,unused-ignore]  # noqa: E402
        asyncore,
        smtpd,
    )
# --------------------------------------------------------------------------------

#: The host name in the greeting and the HELO reply (smtp_script.SMTP_HOST).
FQDN = "bench.example"


class _FixedName:
    """smtpd looks socket.getfqdn() up in its own namespace: a fixed name
    there, everything else the socket module's."""

    def __getattr__(self, name: str) -> Any:
        return getattr(socket, name)

    @staticmethod
    def getfqdn(name: str = "") -> str:
        return FQDN


smtpd.socket = _FixedName()  # type: ignore[attr-defined,assignment]


class BenchChannel(smtpd.SMTPChannel):
    def smtp_XQUIT(self, arg: object) -> None:
        asyncore.close_all()  # asyncore.loop() returns once the map is empty


class Sink(smtpd.SMTPServer):
    """Counts messages; keeps nothing."""

    channel_class = BenchChannel
    received = 0

    def handle_accepted(self, conn: socket.socket, addr: Any) -> None:
        # As every bench server: replies go out at once.  With Nagle's
        # algorithm the second of the pipelined replies (MAIL, RCPT, DATA)
        # waits for the client's delayed ACK, and the run measures 40 ms
        # timers instead of the server.
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        super().handle_accepted(conn, addr)

    def process_message(self, peer, mailfrom, rcpttos, data, **kwargs):  # type: ignore[no-untyped-def]
        self.received += 1


def main() -> int:
    """Serve until XQUIT or the deadline."""
    _common.raise_nofile_limit()
    server = Sink((ARGS.host, ARGS.port), None)  # type: ignore[arg-type]  # (3.11's stub)
    info = _common.runtime_info(ARGS.impl, ARGS.mode)
    info.update(use_poll=ARGS.use_poll, smtpd=smtpd.__name__)
    listener: socket.socket = server.socket  # type: ignore[assignment]
    _common.announce(listener.getsockname()[1], info)
    return _common.serve(lambda: asyncore.loop(timeout=1.0, use_poll=ARGS.use_poll), ARGS)


if __name__ == "__main__":
    sys.exit(main())
