"""The PROXY protocol: the parser (pure, exhaustive), listeners with
``proxy_protocol = True`` on every backend, the chat server behind it, and
HAProxy end to end where it is installed.

Headers here are built by the test's own encoder (below), written from the
specification independently of :mod:`pollchat.proxy`.
"""

import logging
import os
import re
import shutil
import signal
import socket
import struct
import subprocess
import sys
import time

import pytest
from helpers import run_until
from hypothesis import given, settings
from hypothesis import strategies as st

from pollchat import asynchat, asyncore
from pollchat.accepting import HeaderReader, ProxiedSocket
from pollchat.chatserver import ChatServer
from pollchat.proxy import (
    V1_MAX_LENGTH,
    V2_MAX_LENGTH,
    HeaderParser,
    Incomplete,
    ProxyHeader,
    ProxyProtocolError,
    parse_header,
)

SIG = b"\r\n\r\n\x00\r\nQUIT\n"
WAIT = 20.0


def v2(*, command=1, family=1, transport=1, addresses=b"", tlvs=(), version=2):
    """A v2 header: 16-byte prefix, then the address block and TLVs."""
    body = addresses + b"".join(bytes([kind]) + struct.pack("!H", len(value)) + value
                                for kind, value in tlvs)
    return SIG + bytes([version << 4 | command, family << 4 | transport]) \
        + struct.pack("!H", len(body)) + body


def inet4(src, dst, sport, dport):
    return socket.inet_aton(src) + socket.inet_aton(dst) + struct.pack("!HH", sport, dport)


def inet6(src, dst, sport, dport):
    return (socket.inet_pton(socket.AF_INET6, src) + socket.inet_pton(socket.AF_INET6, dst)
            + struct.pack("!HH", sport, dport))


def unix(src, dst):
    return src.ljust(108, b"\0") + dst.ljust(108, b"\0")


V1_TCP4 = b"PROXY TCP4 203.0.113.7 198.51.100.1 51234 443\r\n"
V1_TCP6 = b"PROXY TCP6 2001:DB8::7 2001:db8::1 51234 443\r\n"
V1_UNKNOWN = b"PROXY UNKNOWN\r\n"
V1_UNKNOWN_LONG = b"PROXY UNKNOWN ffff::1 ffff::2 65535 65535\r\n"
V2_TCP4 = v2(addresses=inet4("203.0.113.7", "198.51.100.1", 51234, 443))
V2_TCP6_TLVS = v2(family=2, addresses=inet6("2001:db8::7", "2001:db8::1", 51234, 443),
                  tlvs=[(0x01, b"h2"), (0x04, b"\0" * 5), (0xE0, b"")])
V2_LOCAL = v2(command=0, family=0, transport=0)

#: Valid headers, and what parsing each must give: (source, destination, family).
VALID = [
    (V1_TCP4, ("203.0.113.7", 51234), ("198.51.100.1", 443), socket.AF_INET),
    (V1_TCP6, ("2001:db8::7", 51234, 0, 0), ("2001:db8::1", 443, 0, 0), socket.AF_INET6),
    (V1_UNKNOWN, None, None, None),
    (V1_UNKNOWN_LONG, None, None, None),
    (b"PROXY TCP4 0.0.0.0 255.255.255.255 0 65535\r\n", ("0.0.0.0", 0),
     ("255.255.255.255", 65535), socket.AF_INET),
    (b"PROXY TCP6 ::ffff:1.2.3.4 :: 1 2\r\n", ("::ffff:1.2.3.4", 1, 0, 0), ("::", 2, 0, 0),
     socket.AF_INET6),
    (V2_TCP4, ("203.0.113.7", 51234), ("198.51.100.1", 443), socket.AF_INET),
    (V2_TCP6_TLVS, ("2001:db8::7", 51234, 0, 0), ("2001:db8::1", 443, 0, 0), socket.AF_INET6),
    (v2(family=3, addresses=unix(b"/run/client.sock", b"/run/server.sock")),
     "/run/client.sock", "/run/server.sock", socket.AF_UNIX),
    (v2(family=0, transport=0, tlvs=[(0x02, b"example.org")]), None, None, None),
    (V2_LOCAL, None, None, None),
    # LOCAL: the address block is discarded whatever its family says.
    (v2(command=0, family=1, addresses=inet4("1.2.3.4", "5.6.7.8", 1, 2)), None, None, None),
    (v2(command=0, family=0xF, transport=0xF, addresses=b"junk"), None, None, None),
]


def ids(cases):
    return [repr(case[0][:24]) for case in cases]


# -- the parser: valid headers ----------------------------------------------------------


@pytest.mark.parametrize(("data", "source", "destination", "family"), VALID, ids=ids(VALID))
def test_a_valid_header_is_parsed(data, source, destination, family):
    header = parse_header(data + b"GET / HTTP/1.0\r\n")  # the connection's data after it
    assert isinstance(header, ProxyHeader)
    assert header.length == len(data)
    assert (header.source, header.destination, header.family) == (source, destination, family)
    assert header.version == (2 if data.startswith(SIG) else 1)


def test_v2_fields_commands_transports_and_tlvs():
    header = parse_header(V2_TCP6_TLVS)
    assert header.command == "PROXY" and header.transport == socket.SOCK_STREAM
    assert header.tlvs == ((0x01, b"h2"), (0x04, b"\0" * 5), (0xE0, b""))
    assert parse_header(V2_LOCAL).command == "LOCAL"
    dgram = parse_header(v2(transport=2, addresses=inet4("1.1.1.1", "2.2.2.2", 53, 53)))
    assert dgram.transport == socket.SOCK_DGRAM
    abstract = parse_header(v2(family=3, addresses=unix(b"\0abstract", b"/x")))
    assert abstract.source == b"\0abstract" and abstract.destination == "/x"
    assert parse_header(V1_TCP4).describe() == "v1 PROXY 203.0.113.7:51234"
    assert parse_header(V2_LOCAL).describe() == "v2 LOCAL no address"


@pytest.mark.parametrize(("data", "source", "destination", "family"), VALID, ids=ids(VALID))
def test_every_split_point_gives_the_same_header(data, source, destination, family):
    whole = parse_header(data)
    stream = data + b"rest"
    for cut in range(1, len(stream)):
        parser = HeaderParser()
        used = parser.feed(stream[:cut])
        if parser.header is None:
            assert used == cut
            used += parser.feed(stream[cut:])
        assert parser.header == whole, cut
        assert used == len(data), cut  # not a byte of "rest" was taken


@pytest.mark.parametrize(("data", "source", "destination", "family"), VALID, ids=ids(VALID))
def test_one_byte_at_a_time(data, source, destination, family):
    parser = HeaderParser()
    for i, byte in enumerate(data):
        assert parser.header is None
        assert parser.received == i
        assert 0 < parser.wanted <= V2_MAX_LENGTH
        assert parser.feed(bytes([byte])) == 1
    assert parser.header == parse_header(data)
    assert parser.wanted == 0 and parser.received == len(data)
    with pytest.raises(RuntimeError, match="already complete"):
        parser.feed(b"x")


def test_incomplete_says_how_long_the_header_can_be():
    assert parse_header(b"") == Incomplete(V1_MAX_LENGTH)
    assert parse_header(b"PROXY TCP4 1.2") == Incomplete(V1_MAX_LENGTH)
    assert parse_header(V2_TCP4[:7]) == Incomplete(16)
    assert parse_header(V2_TCP4[:16]) == Incomplete(len(V2_TCP4))
    assert parse_header(V2_TCP4[:-1]) == Incomplete(len(V2_TCP4))


def test_the_longest_headers_are_accepted():
    longest_v1 = (b"PROXY UNKNOWN ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff "
                  b"ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff 65535 65535\r\n")
    assert len(longest_v1) == V1_MAX_LENGTH
    assert parse_header(longest_v1).length == V1_MAX_LENGTH
    tcp6 = parse_header(longest_v1.replace(b"UNKNOWN", b"TCP6"))
    assert tcp6.source == ("ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff", 65535, 0, 0)
    biggest = v2(addresses=inet4("1.1.1.1", "2.2.2.2", 1, 2),
                 tlvs=[(0xEE, b"\0" * (0xFFFF - 12 - 3))])
    assert len(biggest) == V2_MAX_LENGTH
    assert parse_header(biggest).length == V2_MAX_LENGTH


# -- the parser: refusals -----------------------------------------------------------------

INVALID = [
    (b"GET / HTTP/1.1\r\n", "no PROXY protocol header"),
    (b"\x16\x03\x01\x02\x00", "no PROXY protocol header"),  # a TLS ClientHello
    (b"PROXX", "no PROXY protocol header"),
    (b"\r\n\r\n\x00\r\nQUIZ", "no PROXY protocol header"),
    (b"PROXY TCP5 1.2.3.4 5.6.7.8 1 2\r\n", "must be TCP4, TCP6 or UNKNOWN"),
    (b"PROXY tcp4 1.2.3.4 5.6.7.8 1 2\r\n", "must be TCP4, TCP6 or UNKNOWN"),
    (b"PROXY  TCP4 1.2.3.4 5.6.7.8 1 2\r\n", "must be TCP4, TCP6 or UNKNOWN"),
    (b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\n", "CR or LF that is not a CRLF"),
    (b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\rX", "CR or LF that is not a CRLF"),
    (b"PROXY UNKNOWN\n", "CR or LF that is not a CRLF"),
    (b"PROXY UNKNOWN x\ry\r\n", "CR or LF that is not a CRLF"),
    (b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2 3\r\n", "needs 4 fields"),
    (b"PROXY TCP4 1.2.3.4 5.6.7.8 1\r\n", "needs 4 fields"),
    (b"PROXY TCP4 1.2.3.4  5.6.7.8 1 2\r\n", "needs 4 fields"),
    (b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2 \r\n", "needs 4 fields"),
    (b"PROXY TCP4\r\n", "needs 4 fields"),
    (b"PROXY TCP4 01.2.3.4 5.6.7.8 1 2\r\n", "source address '01.2.3.4'"),
    (b"PROXY TCP4 1.2.3.256 5.6.7.8 1 2\r\n", "not an IPv4 address"),
    (b"PROXY TCP4 1.2.3 5.6.7.8 1 2\r\n", "not an IPv4 address"),
    (b"PROXY TCP4 1.2.3.4 ::1 1 2\r\n", "destination address '::1'"),
    (b"PROXY TCP6 1.2.3.4 ::1 1 2\r\n", "not an IPv6 address"),
    (b"PROXY TCP6 ::1 ::g 1 2\r\n", "the byte b'g'"),
    (b"PROXY TCP4 1.2.3.4 5.6.7.8 080 2\r\n", "source port '080'"),
    (b"PROXY TCP4 1.2.3.4 5.6.7.8 1 65536\r\n", "destination port '65536'"),
    (b"PROXY TCP4 1.2.3.4 5.6.7.8 1 -2\r\n", "the byte b'-'"),
    (b"PROXY TCP4 1.2.3.4 5.6.7.8 \xff 2\r\n", "the byte"),
    (b"PROXY TCP4 " + b"1" * 100, "longer than 107 bytes"),
    (b"PROXY UNKNOWN" + b"x" * 94, "longer than 107 bytes"),
    (v2(version=1), "version 1, not 2"),
    (v2(version=3), "version 3, not 2"),
    (v2(command=2), "unknown command 2"),
    (v2(family=4, addresses=b"\0" * 12), "unknown address family"),
    (v2(transport=3, addresses=inet4("1.1.1.1", "2.2.2.2", 1, 2)), "unknown address family"),
    (v2(addresses=b"\0" * 11), "too short for its family"),
    (v2(family=2, addresses=inet4("1.1.1.1", "2.2.2.2", 1, 2)), "too short for its family"),
    (v2(addresses=inet4("1.1.1.1", "2.2.2.2", 1, 2) + b"\x01\x00"), "ends inside a TLV"),
    (v2(addresses=inet4("1.1.1.1", "2.2.2.2", 1, 2) + b"\x01\x00\x05ab"), "claims 5 bytes"),
]


@pytest.mark.parametrize(("data", "message"), INVALID, ids=ids(INVALID))
def test_an_invalid_header_is_refused_with_a_reason(data, message):
    with pytest.raises(ProxyProtocolError, match=re.escape(message)):
        parse_header(data)
    # Fed in pieces, it fails too, and never as "complete".
    parser = HeaderParser()
    with pytest.raises(ProxyProtocolError, match=re.escape(message)):
        for byte in data:
            parser.feed(bytes([byte]))
    assert parser.header is None


@pytest.mark.parametrize("data", [b"G", b"PROXY X", b"PROXY TCP4 1.2.3.4 x", b"\r\n\r\n\x01",
                                  SIG + b"\x31", SIG + b"\x25"])
def test_garbage_is_refused_without_waiting_for_more(data):
    with pytest.raises(ProxyProtocolError):
        parse_header(data)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=200))
def test_arbitrary_bytes_never_fail_otherwise(data):
    try:
        result = parse_header(data)
    except ProxyProtocolError:
        return
    if isinstance(result, ProxyHeader):
        assert 0 < result.length <= len(data)
    else:
        assert result.limit > len(data)


@settings(max_examples=200, deadline=None)
@given(st.sampled_from([case[0] for case in VALID]), st.binary(max_size=50),
       st.lists(st.integers(min_value=1, max_value=40), max_size=20))
def test_random_chunking_finds_the_header_and_leaves_the_rest(header, rest, sizes):
    stream = header + rest
    parser = HeaderParser()
    at = used = 0
    for size in [*sizes, len(stream)]:
        if parser.header is not None or at >= len(stream):
            break
        chunk = stream[at:at + size]
        used += parser.feed(chunk)
        at += len(chunk)
    assert parser.header == parse_header(header)
    assert used == len(header)


# -- listeners with proxy_protocol, on every backend ------------------------------------------


class Collector(asyncore.dispatcher):
    """A listener expecting PROXY headers; keeps what it accepted."""

    proxy_protocol = True
    proxy_protocol_timeout = 5.0

    def __init__(self, loop, legacy_accept=False):
        super().__init__(map=loop.map)
        self.loop = loop
        self.accepted = []  # (addr from accept, channel)
        self.legacy_accept = legacy_accept
        self.open = True
        self.create_socket()
        self.bind(("127.0.0.1", 0))
        self.listen(16)
        self.port = self.socket.getsockname()[1]

    def readable(self):
        return self.open

    def handle_accept(self):
        if self.legacy_accept:
            conn, addr = self.accept()  # never None here: only ready pairs are offered
            self.handle_accepted(conn, addr)
        else:
            super().handle_accept()

    def handle_accepted(self, sock, addr):
        channel = Reader(sock, self.loop)
        self.accepted.append((addr, channel))


class Reader(asynchat.async_chat):
    def __init__(self, sock, loop):
        super().__init__(sock, map=loop.map)
        self.set_terminator(b"\n")
        self.lines, self.pieces = [], []

    def collect_incoming_data(self, data):
        self.pieces.append(data)

    def found_terminator(self):
        self.lines.append(b"".join(self.pieces))
        self.pieces = []


def connect(port):
    sock = socket.create_connection(("127.0.0.1", port), timeout=WAIT)
    return sock


def readers(loop):
    return [ch for ch in loop.map.values() if isinstance(ch, HeaderReader)]


def closed_by_peer(sock):
    """Whether the other side closed the connection (EOF or reset)."""
    sock.settimeout(WAIT)
    try:
        return sock.recv(100) == b""
    except ConnectionResetError:
        return True


def proxy_log_lines(caplog):
    return [r for r in caplog.records if r.name == "pollchat.proxy"]


@pytest.mark.parametrize("header", [V1_TCP4, V2_TCP4, V1_TCP6, V2_TCP6_TLVS],
                         ids=["v1-tcp4", "v2-tcp4", "v1-tcp6", "v2-tcp6-tlvs"])
def test_a_header_split_across_reads_gives_the_client_address(loop, header):
    listener = Collector(loop)
    client = connect(listener.port)
    cuts = [0, 1, len(header) // 2, len(header) - 1]
    for start, end in zip(cuts, cuts[1:]):
        client.sendall(header[start:end])
        # Each piece is read on its own (the reader waits in the map meanwhile).
        run_until(loop, lambda end=end: readers(loop) and readers(loop)[0].parser.received == end)
        assert not listener.accepted
    client.sendall(header[cuts[-1]:] + b"hello\nworld\n")  # last byte and data together
    run_until(loop, lambda: listener.accepted and len(listener.accepted[0][1].lines) == 2)
    addr, channel = listener.accepted[0]
    expected = parse_header(header).source
    assert addr == expected
    assert channel.addr == expected
    assert channel.socket.getpeername() == expected
    assert isinstance(channel.socket, ProxiedSocket)
    assert channel.socket.proxy_peername() == client.getsockname()
    assert channel.lines == [b"hello", b"world"]  # nothing after the header was eaten
    assert not readers(loop)
    client.close()


@pytest.mark.parametrize("legacy_accept", [False, True], ids=["handle_accepted", "accept"])
def test_a_header_with_data_in_one_segment_is_served_at_once(loop, legacy_accept):
    listener = Collector(loop, legacy_accept=legacy_accept)
    clients = [connect(listener.port) for _ in range(3)]
    for n, client in enumerate(clients):
        client.sendall(b"PROXY TCP4 192.0.2.%d 192.0.2.200 %d 80\r\nline\n" % (n, 1000 + n))
    run_until(loop, lambda: len(listener.accepted) == 3
              and all(ch.lines == [b"line"] for _, ch in listener.accepted))
    assert sorted(addr for addr, _ in listener.accepted) == \
        [("192.0.2.%d" % n, 1000 + n) for n in range(3)]
    for client in clients:
        client.close()


def test_v2_local_and_v1_unknown_keep_the_real_peer(loop):
    listener = Collector(loop)
    local, unknown = connect(listener.port), connect(listener.port)
    local.sendall(V2_LOCAL)
    unknown.sendall(V1_UNKNOWN_LONG)
    run_until(loop, lambda: len(listener.accepted) == 2)
    got = {addr for addr, _ in listener.accepted}
    assert got == {local.getsockname(), unknown.getsockname()}
    for _, channel in listener.accepted:
        assert channel.socket.proxy_header.source is None
    local.close()
    unknown.close()


def test_a_local_header_then_a_reset_leaves_the_listener_serving(loop):
    # HAProxy's health checks: a v2 LOCAL header, then a reset at once.  The
    # connection's own peer is gone by the time its header is read.
    listener = Collector(loop)
    for _ in range(3):
        check = connect(listener.port)
        check.sendall(V2_LOCAL)
        check.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        expected = check.getsockname()
        check.close()
        run_until(loop, lambda expected=expected: listener.accepted
                  and listener.accepted[-1][0] == expected)
    assert listener.accepting and listener in loop.map.values()
    client = connect(listener.port)
    client.sendall(V1_TCP4)
    run_until(loop, lambda: listener.accepted[-1][0] == ("203.0.113.7", 51234))
    client.close()


@pytest.mark.parametrize(("sent", "reason"), [
    (b"GET / HTTP/1.0\r\n\r\n", "no PROXY protocol header: the connection starts with b'GET / HT'"),
    (b"PROXY TCP4 1.2.3.4 5.6.7.8 99999 1\r\n", "source port '99999'"),
    (v2(version=1), "version 1, not 2"),
], ids=["http", "bad-port", "bad-v2"])
def test_garbage_closes_that_connection_with_one_log_line(loop, caplog, sent, reason):
    caplog.set_level(logging.INFO, logger="pollchat.proxy")
    listener = Collector(loop)
    bad = connect(listener.port)
    bad.sendall(sent)
    run_until(loop, lambda: proxy_log_lines(caplog))
    assert closed_by_peer(bad)
    lines = proxy_log_lines(caplog)
    assert len(lines) == 1 and lines[0].levelno == logging.WARNING
    assert reason in lines[0].getMessage()
    assert "closing the connection from 127.0.0.1:%d" % bad.getsockname()[1] in \
        lines[0].getMessage()
    assert not listener.accepted and not readers(loop)
    # The listener goes on serving.
    good = connect(listener.port)
    good.sendall(V1_TCP4)
    run_until(loop, lambda: listener.accepted)
    assert listener.accepted[0][0] == ("203.0.113.7", 51234)
    bad.close()
    good.close()


@pytest.mark.parametrize("sent", [b"", b"PROXY TCP4 203.0."], ids=["nothing", "partial"])
def test_a_missing_header_times_out(loop, caplog, sent):
    caplog.set_level(logging.INFO, logger="pollchat.proxy")
    listener = Collector(loop)
    listener.proxy_protocol_timeout = 0.3
    client = connect(listener.port)
    client.sendall(sent)
    started = time.monotonic()
    run_until(loop, lambda: proxy_log_lines(caplog), timeout=WAIT)
    assert time.monotonic() - started >= 0.25
    message = proxy_log_lines(caplog)[0].getMessage()
    assert "no complete PROXY header within 0.3 s (%d bytes received)" % len(sent) in message
    assert closed_by_peer(client)
    assert not readers(loop) and not listener.accepted
    assert len(proxy_log_lines(caplog)) == 1
    client.close()


def test_a_peer_that_leaves_before_its_header_is_logged(loop, caplog):
    caplog.set_level(logging.INFO, logger="pollchat.proxy")
    listener = Collector(loop)
    silent, partial = connect(listener.port), connect(listener.port)
    partial.sendall(b"PROXY TCP4 ")
    run_until(loop, lambda: len(readers(loop)) == 2)
    silent.close()
    partial.close()
    run_until(loop, lambda: len(proxy_log_lines(caplog)) == 2)
    levels = sorted((r.levelno, r.getMessage().split(": ", 1)[1]) for r in proxy_log_lines(caplog))
    assert levels == [(logging.INFO, "it closed without sending a PROXY header"),
                      (logging.WARNING, "it closed after 11 bytes of its PROXY header")]
    assert not readers(loop)


def test_a_completed_connection_waits_while_the_listener_is_not_readable(loop):
    listener = Collector(loop)
    client = connect(listener.port)
    client.sendall(b"PROXY TCP4 ")
    run_until(loop, lambda: readers(loop))
    listener.open = False  # e.g. paused for lack of file descriptors
    client.sendall(b"203.0.113.7 198.51.100.1 51234 443\r\n")
    run_until(loop, lambda: not readers(loop))
    for _ in range(10):
        loop.run_once(0.01)
    assert not listener.accepted  # queued, not offered
    listener.open = True
    run_until(loop, lambda: listener.accepted)  # offered again without a new kernel event
    assert listener.accepted[0][0] == ("203.0.113.7", 51234)
    client.close()


def test_closing_the_listener_drops_connections_still_reading_their_header(loop):
    listener = Collector(loop)
    client = connect(listener.port)
    client.sendall(b"PROXY TCP4 ")
    run_until(loop, lambda: readers(loop))
    listener.close()
    client.sendall(b"203.0.113.7 198.51.100.1 51234 443\r\n")
    run_until(loop, lambda: not readers(loop))
    assert closed_by_peer(client)
    assert not listener.accepted
    client.close()


def test_no_file_descriptor_is_leaked(loop, fd_leak_check):
    listener = Collector(loop)
    listener.proxy_protocol_timeout = 0.2
    clients = [connect(listener.port) for _ in range(4)]
    clients[0].sendall(V2_TCP4)
    clients[1].sendall(b"garbage")
    clients[2].sendall(b"PROXY ")  # times out
    clients[3].close()
    run_until(loop, lambda: len(listener.accepted) == 1 and not readers(loop))
    for client in clients:
        client.close()
    asyncore.close_all(loop.map)


def test_a_plain_listener_is_untouched(loop):
    server = Collector(loop)
    server.proxy_protocol = False
    client = connect(server.port)
    client.sendall(V1_TCP4)
    run_until(loop, lambda: server.accepted and server.accepted[0][1].lines)
    addr, channel = server.accepted[0]
    assert addr == client.getsockname()
    assert type(channel.socket) is socket.socket
    assert server._accept_queue is None  # no queue for a listener without the protocol
    client.close()


def test_the_chat_server_shows_the_clients_real_address(loop, caplog):
    caplog.set_level(logging.INFO, logger="pollchat.chat")
    server = ChatServer("127.0.0.1", 0, loop=loop, proxy_protocol=True)
    client = connect(server.address[1])
    client.sendall(b"PROXY TCP6 2001:db8::42 2001:db8::1 40000 7000\r\n/who\n")
    run_until(loop, lambda: "online" in "".join(r.getMessage() for r in caplog.records))
    assert "guest1 connected from [2001:db8::42]:40000" in caplog.text
    client.close()
    server.close()


def test_the_chat_command_with_proxy_protocol():
    from test_chatserver_command import start_chat_command

    proc, port = start_chat_command("--proxy-protocol")
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=WAIT) as client:
            client.sendall(b"PROXY TCP4 203.0.113.5 192.0.2.1 40000 7000\r\n/who\n")
            replies = client.makefile("rb")
            while b"online" not in replies.readline():
                pass
            with socket.create_connection(("127.0.0.1", port), timeout=WAIT) as bad:
                bad.sendall(b"hello\n")
                assert closed_by_peer(bad)
        proc.popen.send_signal(signal.SIGTERM)
        status, _, log = proc.finish(WAIT)
    finally:
        proc.kill()
    assert status == 0, log
    assert "PROXY protocol expected" in log
    assert "guest1 connected from 203.0.113.5:40000" in log
    assert "no PROXY protocol header: the connection starts with b'hello\\n'" in log, log


# -- HAProxy end to end -----------------------------------------------------------------------

HAPROXY = shutil.which("haproxy")
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def readme_block(title, language):
    with open(os.path.join(ROOT, "README.md"), encoding="utf-8") as f:
        text = f.read()
    match = re.search(rf"{re.escape(title)}.*?```{language}\n(.*?)```", text, re.S)
    assert match, f"README lost its {title!r} {language} block"
    return match.group(1)


def free_port():
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.mark.timeout(120)
@pytest.mark.skipif(HAPROXY is None, reason="haproxy is not installed (apt-get install haproxy)")
@pytest.mark.skipif(not hasattr(os, "fork"), reason="pollchat run --workers needs os.fork")
def test_haproxy_recipe_of_the_readme_end_to_end(tmp_path):
    program = readme_block("HAProxy in front of", "python")
    config = readme_block("HAProxy in front of", "haproxy")
    front, one, two = free_port(), free_port(), free_port()
    (tmp_path / "hello.py").write_text(program)
    (tmp_path / "haproxy.cfg").write_text(
        config.replace(":7000", f":{front}").replace(":7001", f":{one}")
        .replace(":7002", f":{two}"))
    processes = []

    def start(argv, name):
        log = open(tmp_path / f"{name}.log", "wb")
        proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, cwd=tmp_path,
                                stdin=subprocess.DEVNULL, start_new_session=True)
        log.close()
        processes.append(proc)
        return tmp_path / f"{name}.log"

    try:
        logs = [start([sys.executable, "-m", "pollchat", "run", "--workers", "2",
                       "--proxy-protocol", "hello.py", str(port)], f"hello{port}")
                for port in (one, two)]
        haproxy_log = start([HAPROXY, "-f", "haproxy.cfg", "-db"], "haproxy")
        served_by = set()  # the instances whose log showed a client of ours
        deadline = time.monotonic() + 60
        while len(served_by) < 2:
            assert time.monotonic() < deadline, "not both instances answered:\n" + "\n".join(
                path.read_text(errors="replace") for path in [*logs, haproxy_log])
            try:
                with socket.socket() as client:
                    client.settimeout(10)
                    client.bind(("127.0.0.5", 0))  # an address HAProxy does not have
                    client.connect(("127.0.0.1", front))
                    port = client.getsockname()[1]
                    reply = client.makefile("rb").readline()
            except OSError:  # HAProxy or the instances still starting
                time.sleep(0.2)
                continue
            if not reply:
                time.sleep(0.2)
                continue
            assert reply == b"hello 127.0.0.5\r\n"  # the program saw the client's address
            seen = f"connection from 127.0.0.5:{port}"
            served_by.update(path for path in logs if seen in path.read_text())
        # HAProxy's health checks (v2 LOCAL headers) are served, never refused.
        time.sleep(2.5)
        for path in logs:
            text = path.read_text(errors="replace")
            assert "connection from 127.0.0.1:" in text, text  # a health check
            assert "closing the connection" not in text and "Traceback" not in text, text
            assert "restarting it" not in text, text  # no worker died meanwhile
    finally:
        for proc in processes:
            try:
                os.killpg(proc.pid, 9)
            except ProcessLookupError:
                pass
            proc.wait(10)
