"""What the request/reply load generators send, and the exact replies they
expect: one *script* per workload point.

A script is a hello exchange (done once when a connection opens, so that
the server has accepted and registered it before anything is measured) and
a cycle of exchanges that every active connection repeats: send the
request bytes in one write, read until exactly the expected reply bytes
have arrived (any other byte fails the run), count the exchange's ``ops``
(requests), send the next.  A pipelined exchange holds several requests.

The harness writes the script to a file that ``loadgen.c`` and its Python
twin in ``clients.py`` both read, so that the protocol knowledge lives here
only and the C generator stays protocol-agnostic.  File format::

    pollchat-loadgen-script 1\\n
    <number of exchanges, hello included>\\n
    then per exchange: <request length> <reply length> <ops>\\n<request><reply>

Adding a protocol is adding a builder below; a server that speaks first
(a greeting) is a hello with an empty request.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, List, Sequence, Tuple

MAGIC = b"pollchat-loadgen-script 1\n"
#: Largest request or reply of one exchange (loadgen.c's limit too).
MAX_EXCHANGE = 1 << 24


@dataclass(frozen=True)
class Exchange:
    """One write and the exact reply it must get."""

    request: bytes
    reply: bytes
    ops: int = 1  # requests in ``request``

    def __post_init__(self) -> None:
        if len(self.request) > MAX_EXCHANGE or len(self.reply) > MAX_EXCHANGE:
            raise ValueError(f"an exchange is limited to {MAX_EXCHANGE} bytes each way")
        if not self.reply:
            raise ValueError("an exchange needs a reply to wait for")
        if self.ops < 0:
            raise ValueError("ops must be >= 0")


@dataclass(frozen=True)
class Script:
    """A hello exchange and the cycle every active connection repeats."""

    hello: Exchange
    cycle: Tuple[Exchange, ...]

    def __post_init__(self) -> None:
        if not self.cycle:
            raise ValueError("a script needs at least one exchange in its cycle")

    def write(self, path: Path) -> None:
        """Save in the file format above."""
        with open(path, "wb") as f:
            f.write(MAGIC)
            f.write(b"%d\n" % (1 + len(self.cycle)))
            for exchange in (self.hello, *self.cycle):
                f.write(b"%d %d %d\n" % (len(exchange.request), len(exchange.reply),
                                         exchange.ops))
                f.write(exchange.request)
                f.write(exchange.reply)

    @classmethod
    def read(cls, path: Path) -> Script:
        """Load a file written by :meth:`write`; ValueError if it is not one."""
        with open(path, "rb") as f:
            if f.readline() != MAGIC:
                raise ValueError(f"{path} is not a load generator script")
            count = int(f.readline())
            exchanges = [_read_exchange(f) for _ in range(count)]
        if len(exchanges) < 2:
            raise ValueError(f"{path}: a script needs a hello and a cycle")
        return cls(exchanges[0], tuple(exchanges[1:]))


def _read_exchange(f: BinaryIO) -> Exchange:
    fields = f.readline().split()
    if len(fields) != 3:
        raise ValueError("truncated script")
    request_len, reply_len, ops = (int(x) for x in fields)
    request, reply = f.read(request_len), f.read(reply_len)
    if len(request) != request_len or len(reply) != reply_len:
        raise ValueError("truncated script")
    return Exchange(request, reply, ops)


# -- builders --------------------------------------------------------------------

LINE_HELLO = Exchange(b"x\n", b"x\n")


def pingpong(line_size: int) -> Script:
    """Echo of one ``line_size``-byte line (newline included)."""
    if line_size < 2:
        raise ValueError("line_size must be >= 2 (the newline is included)")
    line = b"x" * (line_size - 1) + b"\n"
    return Script(LINE_HELLO, (Exchange(line, line),))


#: Keys one kv script cycles through.
KV_KEYS = 8


def kv_value(index: int, size: int) -> bytes:
    """The value stored under key ``index``: the same on every connection, so
    that concurrent SETs of one key never change what a GET returns."""
    return (b"v%d:" % index + b"0123456789abcdef" * (size // 16 + 1))[:size]


def kv_requests(mix: str, value_size: int) -> List[Tuple[bytes, bytes]]:
    """One round of (request, reply) pairs: ``mix`` ``"get-set"`` is SET k,
    GET k for each key (every GET finds its value); ``"set"`` is SETs only."""
    if mix not in ("get-set", "set"):
        raise ValueError(f"unknown kv mix {mix!r}: 'get-set' or 'set'")
    pairs = []
    for index in range(KV_KEYS if mix == "get-set" else 2 * KV_KEYS):
        key = b"key:%d" % (index % KV_KEYS)
        value = kv_value(index % KV_KEYS, value_size)
        pairs.append((b"SET %s %d\r\n%s\r\n" % (key, len(value), value), b"+OK\r\n"))
        if mix == "get-set":
            pairs.append((b"GET %s\r\n" % key, b"$%d\r\n%s\r\n" % (len(value), value)))
    return pairs


def kv(mix: str, depth: int, value_size: int = 32) -> Script:
    """The kv protocol, ``depth`` requests per write (1: one at a time)."""
    pairs = kv_requests(mix, value_size)
    if depth < 1 or len(pairs) % depth:
        raise ValueError(f"depth must divide {len(pairs)}")
    return Script(Exchange(b"GET hello\r\n", b"$-1\r\n"), tuple(
        _batch(pairs[i:i + depth]) for i in range(0, len(pairs), depth)))


def _batch(pairs: Sequence[Tuple[bytes, bytes]]) -> Exchange:
    return Exchange(b"".join(p[0] for p in pairs), b"".join(p[1] for p in pairs), len(pairs))


HTTP_REQUEST = (b"GET /hello HTTP/1.1\r\nHost: bench\r\nUser-Agent: pollchat-loadgen\r\n"
                b"Accept: */*\r\n\r\n")
HTTP_BODY = b"Hello, world!\n"
HTTP_REPLY = (b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: %d\r\n\r\n%s"
              % (len(HTTP_BODY), HTTP_BODY))


def http_keepalive() -> Script:
    """One keep-alive GET per write; the fixed response."""
    hello = Exchange(HTTP_REQUEST, HTTP_REPLY)
    return Script(hello, (hello,))
