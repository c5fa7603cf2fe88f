"""The benchmark mail server, written against the smtpd API.

One program for pollchat and for CPython 3.11's own smtpd: the only
difference is the import below (``--impl``).  A sink: ``process_message``
counts the message and returns ``None`` (``250 OK``), the cheapest work a
real server does, so the figure is the cost of the SMTP machinery itself.

Beyond SMTP, for the harness and the client:

* ``XCPU``: replies ``250 <seconds>``, this process's user + system CPU
  time, so that the client can measure messages per server CPU-second;
* ``XCOUNT``: replies ``250 <messages received>``;
* a bare ``QUIT\\n`` line (the harness's stop request, not SMTP's CRLF):
  every channel is closed and the server exits.

Prints ``INFO``/``PORT`` like the other servers and exits by itself after
``--max-seconds``.
"""

from __future__ import annotations

import resource
import sys
import warnings

import _common

ARGS = _common.parse_args(__doc__.splitlines()[0], [
    {"flags": ["--impl"], "choices": ["pollchat", "stdlib"], "default": "stdlib"},
    {"flags": ["--use-poll"], "action": "store_true", "help": "asyncore.loop(use_poll=True)"},
])
warnings.filterwarnings("ignore", category=DeprecationWarning)  # 3.11: smtpd is deprecated

# -------- the one difference between the pollchat and the stdlib server --------
if ARGS.impl == "pollchat":
    from pollchat import asyncore, smtpd  # noqa: E402
else:
    import asyncore  # noqa: E402
    import smtpd  # noqa: E402
# --------------------------------------------------------------------------------

HARNESS_STOP = b"QUIT\n"


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


class BenchChannel(smtpd.SMTPChannel):
    """An SMTP session with the two measuring commands."""

    def collect_incoming_data(self, data: bytes) -> None:
        if data == HARNESS_STOP and self.smtp_state == self.COMMAND:
            asyncore.close_all()  # asyncore.loop() returns once the map is empty
            return
        super().collect_incoming_data(data)

    def smtp_XCPU(self, arg: object) -> None:
        self.push("250 %.6f" % cpu_seconds())

    def smtp_XCOUNT(self, arg: object) -> None:
        self.push("250 %d" % self.smtp_server.received)


class Sink(smtpd.SMTPServer):
    """Counts messages; keeps nothing."""

    channel_class = BenchChannel

    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)
        self.received = 0

    def process_message(self, peer, mailfrom, rcpttos, data, **kwargs):  # type: ignore[no-untyped-def]
        self.received += 1


def main() -> int:
    """Serve until the harness's QUIT or the deadline."""
    _common.raise_nofile_limit()
    server = Sink((ARGS.host, ARGS.port), None)
    info = _common.runtime_info(ARGS.impl)
    info.update(mode="smtp", use_poll=ARGS.use_poll, smtpd=smtpd.__name__)
    _common.announce(server.socket.getsockname()[1], info)
    _common.arm_deadline(ARGS.max_seconds)
    asyncore.loop(timeout=1.0, use_poll=ARGS.use_poll)
    return 0


if __name__ == "__main__":
    sys.exit(main())
