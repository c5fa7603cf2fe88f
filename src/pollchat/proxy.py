"""The PROXY protocol, versions 1 and 2, receiving side: a pure parser.

A load balancer that relays TCP connections (HAProxy with ``send-proxy`` or
``send-proxy-v2``, nginx with ``proxy_protocol on``, most cloud balancers)
can start each connection with a header that names the client it relays:

* **version 1**, one text line of at most 107 bytes, e.g.
  ``PROXY TCP4 203.0.113.7 198.51.100.1 51234 443\\r\\n``;
* **version 2**, a 16-byte binary prefix (a 12-byte signature, version and
  command, family and transport, a length) then that many bytes: the
  addresses, then type-length-value records (TLVs).

This module only parses bytes; it does no I/O and keeps no state between
connections, so it can be tested exhaustively.  :mod:`pollchat.accepting`
reads headers from sockets with it.  The grammar follows HAProxy's
``proxy-protocol.txt`` (the protocol's specification):

* v1: ``PROXY``, one space, ``TCP4``/``TCP6``/``UNKNOWN``; for TCP4/TCP6 one
  space-separated source address, destination address, source port and
  destination port, then CRLF.  IPv4 addresses and ports have no leading
  zeros (no octal confusion); a lone CR or LF does not end the line; with
  ``UNKNOWN`` everything up to the CRLF is ignored.
* v2: version 2; command ``LOCAL`` (a connection the balancer made itself,
  e.g. a health check: use the real peer) or ``PROXY``; families UNSPEC,
  INET, INET6, UNIX; transports UNSPEC, STREAM, DGRAM.  A length shorter than
  the family's address block is an error.  TLVs are split into
  ``(type, value)`` pairs and otherwise skipped (not interpreted, CRC32C not
  checked).

Use :func:`parse_header` on everything received so far, or feed bytes to a
:class:`HeaderParser` as they arrive.
"""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass
from typing import Any, Optional, Tuple, Union

__all__ = ["V1_MAX_LENGTH", "V2_MAX_LENGTH", "V2_SIGNATURE", "HeaderParser", "Incomplete",
           "ProxyHeader", "ProxyProtocolError", "parse_header"]

V1_PREFIX = b"PROXY "
#: The longest v1 header, CRLF included (``PROXY UNKNOWN`` + two full IPv6
#: addresses and ports): a sender never sends more.
V1_MAX_LENGTH = 107
V2_SIGNATURE = b"\r\n\r\n\x00\r\nQUIT\n"
V2_FIXED_LENGTH = 16  # signature, version/command, family/transport, length
#: The longest v2 header: the fixed part plus a 16-bit length.
V2_MAX_LENGTH = V2_FIXED_LENGTH + 0xFFFF

# v2 address families (high nibble of byte 14) -> (socket family, address block size).
_V2_FAMILIES = {0x0: (None, 0), 0x1: (socket.AF_INET, 12), 0x2: (socket.AF_INET6, 36),
                0x3: (getattr(socket, "AF_UNIX", None), 216)}
_V2_TRANSPORTS = {0x0: None, 0x1: socket.SOCK_STREAM, 0x2: socket.SOCK_DGRAM}
_V2_COMMANDS = {0x0: "LOCAL", 0x1: "PROXY"}
_UNIX_PATH_SIZE = 108

# Bytes a v1 TCP4/TCP6 line may contain before its CRLF: checked as bytes
# arrive, so that garbage after "PROXY TCP4 " is refused at once rather than
# after 107 bytes or the timeout.
_V1_ADDRESS_BYTES = frozenset(b"0123456789abcdefABCDEF:. ")


class ProxyProtocolError(ValueError):
    """The bytes are not a valid PROXY protocol header; the message says why."""


@dataclass(frozen=True)
class ProxyHeader:
    """A complete PROXY protocol header.

    Attributes:
        version: 1 or 2.
        command: ``"PROXY"`` (a relayed connection) or ``"LOCAL"`` (v2: a
            connection the balancer made itself, such as a health check).
        family: ``socket.AF_INET``, ``AF_INET6`` or ``AF_UNIX``; ``None`` when
            the header carries no address (v1 ``UNKNOWN``, v2 ``LOCAL`` or
            family UNSPEC).
        source: the client's address in the form ``getpeername()`` gives for
            ``family`` (``(host, port)``, ``(host, port, 0, 0)`` or a path),
            or ``None`` when there is none: then the connection's own peer is
            the address to use.
        destination: the address the client connected to, same form.
        length: how many bytes the header occupies.
        transport: ``socket.SOCK_STREAM``, ``SOCK_DGRAM`` or ``None`` (v2).
        tlvs: the v2 type-length-value records, as ``(type, value)`` pairs.
    """

    version: int
    command: str
    family: Optional[int]
    source: Any
    destination: Any
    length: int
    transport: Optional[int] = None
    tlvs: Tuple[Tuple[int, bytes], ...] = ()

    def describe(self) -> str:
        """A short text for logs: ``v2 PROXY 203.0.113.7:51234``."""
        shown = "no address" if self.source is None else _format_address(self.source)
        return f"v{self.version} {self.command} {shown}"


@dataclass(frozen=True)
class Incomplete:
    """Not a whole header yet, but a valid start of one.

    Attributes:
        limit: the header is at most this many bytes long, given the bytes
            seen so far (reading up to it cannot pass the end of a v2 header
            whose length is known; a v1 header ends at its CRLF).
    """

    limit: int


def _format_address(address: Any) -> str:
    if isinstance(address, tuple) and len(address) >= 2:
        host, port = address[:2]
        return f"[{host}]:{port}" if ":" in str(host) else f"{host}:{port}"
    return repr(address)


def parse_header(data: bytes) -> Union[ProxyHeader, Incomplete]:
    """Parse the PROXY header at the start of ``data``.

    Args:
        data: every byte received on the connection so far (bytes after the
            header are allowed and ignored).

    Returns:
        the :class:`ProxyHeader` once ``data`` holds a whole one (its
        ``length`` says where the connection's own data starts), else
        :class:`Incomplete`.

    Raises:
        ProxyProtocolError: ``data`` cannot be the start of a valid header
            (garbage, a bad address, a v1 line over 107 bytes...).  Decided as
            early as the bytes allow.

    Complexity: O(len(header)); only the header's bytes are looked at.
    """
    data = bytes(data)
    if not data:
        return Incomplete(V1_MAX_LENGTH)
    if data[0] == V2_SIGNATURE[0]:
        return _parse_v2(data)
    if data[0] == V1_PREFIX[0]:
        return _parse_v1(data)
    raise ProxyProtocolError(f"no PROXY protocol header: the connection starts with {data[:8]!r}")


# -- version 1 --------------------------------------------------------------------------


def _parse_v1(data: bytes) -> Union[ProxyHeader, Incomplete]:
    start = data[:len(V1_PREFIX)]
    if not V1_PREFIX.startswith(start):
        raise ProxyProtocolError(f"no PROXY protocol header: the connection starts with "
                                 f"{data[:8]!r}")
    window = data[:V1_MAX_LENGTH]
    end = window.find(b"\r\n")
    line = window if end < 0 else window[:end]
    _check_v1_prefix(line)
    if end < 0:
        if len(data) >= V1_MAX_LENGTH:
            raise ProxyProtocolError(f"PROXY v1 header longer than {V1_MAX_LENGTH} bytes "
                                     "(no CRLF)")
        return Incomplete(V1_MAX_LENGTH)
    # Only UNKNOWN lines may hold non-ASCII bytes, and their rest is ignored.
    return _v1_header(line[len(V1_PREFIX):].decode("ascii", "replace"), end + 2)


def _check_v1_prefix(line: bytes) -> None:
    """Refuse a line that cannot become valid, before its CRLF arrives.

    ``line`` is the header up to (not including) its CRLF, or everything so
    far when no CRLF arrived yet (it may end with the CR of the CRLF).
    """
    body = line[len(V1_PREFIX):]
    if body.endswith(b"\r"):
        body = body[:-1]  # maybe the CR of the CRLF still to come
    if b"\r" in body or b"\n" in body:
        raise ProxyProtocolError("PROXY v1 header has a CR or LF that is not a CRLF")
    if body.startswith(b"UNKNOWN"):
        return  # anything may follow UNKNOWN before the CRLF
    if body.startswith((b"TCP4 ", b"TCP6 ")):
        bad = next((byte for byte in body[5:] if byte not in _V1_ADDRESS_BYTES), None)
        if bad is not None:
            raise ProxyProtocolError(f"PROXY v1 header has the byte {bytes([bad])!r} in its "
                                     "addresses")
        return
    if not any(known.startswith(body) for known in (b"TCP4 ", b"TCP6 ", b"UNKNOWN")):
        raise ProxyProtocolError(f"PROXY v1 protocol must be TCP4, TCP6 or UNKNOWN: the line "
                                 f"is {bytes(line[:40])!r}")


def _v1_header(line: str, length: int) -> ProxyHeader:
    """Build the header from a complete v1 line (without ``PROXY `` and CRLF)."""
    fields = line.split(" ")
    protocol = fields[0]
    if protocol == "UNKNOWN":
        return ProxyHeader(1, "PROXY", None, None, None, length)
    if len(fields) != 5:
        raise ProxyProtocolError(f"PROXY v1 {protocol} line needs 4 fields after the protocol "
                                 f"(source, destination, source port, destination port), "
                                 f"each after one space: got {line!r}")
    _, src, dst, sport, dport = fields
    if protocol == "TCP4":
        family = socket.AF_INET
        source: Any = (_v1_ipv4(src, "source"), _v1_port(sport, "source"))
        destination: Any = (_v1_ipv4(dst, "destination"), _v1_port(dport, "destination"))
    else:
        family = socket.AF_INET6
        source = (_v1_ipv6(src, "source"), _v1_port(sport, "source"), 0, 0)
        destination = (_v1_ipv6(dst, "destination"), _v1_port(dport, "destination"), 0, 0)
    return ProxyHeader(1, "PROXY", family, source, destination, length,
                       transport=socket.SOCK_STREAM)


def _decimal(text: str) -> Optional[int]:
    """A decimal number without leading zeros, else None."""
    if not text.isdigit() or not text.isascii() or (len(text) > 1 and text[0] == "0"):
        return None
    return int(text)


def _v1_ipv4(text: str, which: str) -> str:
    parts = text.split(".")
    numbers = [_decimal(part) for part in parts]
    if len(parts) != 4 or any(n is None or n > 255 for n in numbers):
        raise ProxyProtocolError(f"PROXY v1 {which} address {text!r} is not an IPv4 address "
                                 "(four numbers 0-255, no leading zeros)")
    return text


def _v1_ipv6(text: str, which: str) -> str:
    try:
        packed = socket.inet_pton(socket.AF_INET6, text)
    except (OSError, ValueError):
        raise ProxyProtocolError(f"PROXY v1 {which} address {text!r} is not an IPv6 "
                                 "address") from None
    return socket.inet_ntop(socket.AF_INET6, packed)  # as getpeername() would write it


def _v1_port(text: str, which: str) -> int:
    port = _decimal(text)
    if port is None or port > 0xFFFF:
        raise ProxyProtocolError(f"PROXY v1 {which} port {text!r} is not a number 0-65535 "
                                 "without leading zeros")
    return port


# -- version 2 --------------------------------------------------------------------------


def _parse_v2(data: bytes) -> Union[ProxyHeader, Incomplete]:
    seen = data[:len(V2_SIGNATURE)]
    if not V2_SIGNATURE.startswith(seen):
        raise ProxyProtocolError(f"no PROXY protocol header: the connection starts with "
                                 f"{data[:8]!r}")
    if len(data) >= 13:  # refuse a bad version or command without waiting for more
        _v2_command(data[12])
    if len(data) < V2_FIXED_LENGTH:
        return Incomplete(V2_FIXED_LENGTH)
    command = _v2_command(data[12])
    total = V2_FIXED_LENGTH + int.from_bytes(data[14:16], "big")
    if len(data) < total:
        return Incomplete(total)
    if command == "LOCAL":
        # The balancer's own connection: the address block (whatever its
        # family says) is to be discarded; the real peer is the address.
        return ProxyHeader(2, "LOCAL", None, None, None, total)
    family_byte = data[13]
    if family_byte >> 4 not in _V2_FAMILIES or family_byte & 0xF not in _V2_TRANSPORTS:
        raise ProxyProtocolError(f"PROXY v2 header has an unknown address family or "
                                 f"transport (byte 0x{family_byte:02x})")
    family, size = _V2_FAMILIES[family_byte >> 4]
    transport = _V2_TRANSPORTS[family_byte & 0xF]
    payload = data[V2_FIXED_LENGTH:total]
    if len(payload) < size:
        raise ProxyProtocolError(f"PROXY v2 address block is {len(payload)} bytes, too short "
                                 f"for its family (needs {size})")
    source, destination = _v2_addresses(family_byte >> 4, payload[:size])
    return ProxyHeader(2, "PROXY", family if source is not None else None, source,
                       destination, total, transport, _tlvs(payload[size:]))


def _v2_command(byte: int) -> str:
    if byte >> 4 != 2:
        raise ProxyProtocolError(f"PROXY v2 header has version {byte >> 4}, not 2")
    command = _V2_COMMANDS.get(byte & 0xF)
    if command is None:
        raise ProxyProtocolError(f"PROXY v2 header has an unknown command {byte & 0xF}")
    return command


def _v2_addresses(family: int, block: bytes) -> Tuple[Any, Any]:
    if family == 0x1:
        return ((socket.inet_ntop(socket.AF_INET, block[0:4]), int.from_bytes(block[8:10], "big")),
                (socket.inet_ntop(socket.AF_INET, block[4:8]), int.from_bytes(block[10:12], "big")))
    if family == 0x2:
        return ((socket.inet_ntop(socket.AF_INET6, block[0:16]),
                 int.from_bytes(block[32:34], "big"), 0, 0),
                (socket.inet_ntop(socket.AF_INET6, block[16:32]),
                 int.from_bytes(block[34:36], "big"), 0, 0))
    if family == 0x3:
        return (_unix_path(block[:_UNIX_PATH_SIZE]), _unix_path(block[_UNIX_PATH_SIZE:]))
    return None, None  # UNSPEC: the sender does not know; use the real peer


def _unix_path(raw: bytes) -> Union[str, bytes]:
    """A sockaddr_un path as getpeername() gives it: text up to the first
    NUL, or bytes for the abstract namespace (a leading NUL)."""
    if raw[:1] == b"\0":
        return raw.rstrip(b"\0")
    return os.fsdecode(raw.split(b"\0", 1)[0])


def _tlvs(data: bytes) -> Tuple[Tuple[int, bytes], ...]:
    records = []
    at = 0
    while at < len(data):
        if len(data) - at < 3:
            raise ProxyProtocolError(f"PROXY v2 header ends inside a TLV ({len(data) - at} "
                                     "bytes left, a TLV takes at least 3)")
        kind = data[at]
        size = int.from_bytes(data[at + 1:at + 3], "big")
        end = at + 3 + size
        if end > len(data):
            raise ProxyProtocolError(f"PROXY v2 TLV of type 0x{kind:02x} claims {size} bytes; "
                                     f"only {len(data) - at - 3} remain in the header")
        records.append((kind, data[at + 3:end]))
        at = end
    return tuple(records)


# -- incremental -------------------------------------------------------------------------


class HeaderParser:
    """Parse a header from bytes that arrive in pieces.

    ``feed()`` each piece received; it says how many of its bytes belong to
    the header, so that nothing after the header is lost::

        parser = HeaderParser()
        used = parser.feed(chunk)            # raises ProxyProtocolError on garbage
        if parser.header is not None:        # complete: chunk[used:] is the connection's data
            ...

    Before the header is complete every byte fed belongs to it, so a reader
    that peeks at a socket (``MSG_PEEK``) can consume exactly ``used`` bytes
    and leave the connection's own data in the kernel.  Each ``feed()``
    re-parses what was kept, at most :data:`V2_MAX_LENGTH` bytes.
    """

    def __init__(self) -> None:
        self._buffer = b""
        self._limit = V1_MAX_LENGTH
        #: The header, once complete (then ``feed()`` may not be called again).
        self.header: Optional[ProxyHeader] = None

    @property
    def wanted(self) -> int:
        """At most how many more bytes may belong to the header (0 once
        complete).  Peeking this many never reaches past a v2 header."""
        if self.header is not None:
            return 0
        return self._limit - len(self._buffer)

    @property
    def received(self) -> int:
        """Header bytes fed so far."""
        return len(self._buffer) if self.header is None else self.header.length

    def feed(self, data: bytes) -> int:
        """Add ``data``; return how many of its bytes belong to the header
        (all of them until the header is complete).

        Raises:
            ProxyProtocolError: the bytes cannot form a valid header.
            RuntimeError: the header was already complete.
        """
        if self.header is not None:
            raise RuntimeError("the PROXY header is already complete; the rest of the "
                               "connection's bytes are its own data")
        before = len(self._buffer)
        result = parse_header(self._buffer + bytes(data))
        if isinstance(result, Incomplete):
            self._buffer += bytes(data)
            self._limit = result.limit
            return len(data)
        self.header = result
        self._buffer = b""
        return result.length - before
