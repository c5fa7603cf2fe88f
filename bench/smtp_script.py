"""The mail workload's load generator script (see scripts.py): one
``size``-byte message per cycle, to ``servers/smtp_server.py``."""

from __future__ import annotations

from .scripts import Exchange, Script

#: The host name smtp_server.py greets with (its FQDN).
SMTP_HOST = b"bench.example"
ENVELOPE = b"MAIL FROM:<bench@example.com>\r\nRCPT TO:<sink@example.com>\r\nDATA\r\n"
ENVELOPE_REPLY = b"250 OK\r\n250 OK\r\n354 End data with <CR><LF>.<CR><LF>\r\n"


def message(size: int) -> bytes:
    """A ``size``-byte message (headers, then 70-byte lines), without the
    end-of-data line."""
    head = b"From: bench@example.com\r\nTo: sink@example.com\r\nSubject: bench\r\n\r\n"
    body = (b"x" * 68 + b"\r\n") * (size // 70 + 1)
    return (head + body)[:size]


def smtp(size: int) -> Script:
    """HELO once; then per cycle MAIL, RCPT and DATA in one write (pipelined,
    RFC 2920), and the message once DATA is answered 354: one message."""
    if size < 2:
        raise ValueError("size must be at least 2 bytes")
    greeting = b"220 %s Python SMTP proxy version 0.3\r\n" % SMTP_HOST
    hello = Exchange(b"HELO bench\r\n", greeting + b"250 %s\r\n" % SMTP_HOST, 0)
    return Script(hello, (Exchange(ENVELOPE, ENVELOPE_REPLY, 0),
                          Exchange(message(size) + b"\r\n.\r\n", b"250 OK\r\n", 1)))
