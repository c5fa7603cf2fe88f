"""pollchat.smtpd end to end, on every backend: smtplib and raw clients
against a subclass that stores what it gets; large, refused, pipelined and
garbage input; errors confined to one session.

Reply texts are CPython 3.11's (test_smtpd_reference.py checks them against
3.11 itself); where 3.11 dropped or hung a session on bad input, the reply
pollchat gives instead is asserted here."""

from __future__ import annotations

import smtplib
import socket
import struct

import pytest
from helpers import run_until
from hypothesis import given
from hypothesis import strategies as st
from smtp_support import Client, StoringServer, port_of, serve_while, start_server, transaction

from pollchat import smtpd

BODY = (b"Subject: test\r\n\r\nline one\r\n.starts with a dot\r\n..two dots\r\n"
        b"8-bit: h\xc3\xa9llo\r\nlast line")


def expected_data(body: bytes) -> bytes:
    """What process_message gets for ``body`` (sent dot-stuffed): the same
    lines, joined with \\n."""
    return body.replace(b"\r\n", b"\n")


# -- smtplib --------------------------------------------------------------------------


def test_smtplib_message_reaches_the_subclass(loop):
    server = start_server(loop)

    def client():
        with smtplib.SMTP(*server.socket.getsockname(), timeout=20) as smtp:
            refused = smtp.sendmail("alice@example.com", ["bob@example.com", "c@example.org"],
                                    BODY, mail_options=["BODY=8BITMIME"])
            return refused, smtp.sock.getsockname()

    refused, client_addr = serve_while(loop, client)
    assert refused == {}
    [message] = server.messages
    assert message.peer == client_addr
    assert message.mailfrom == "alice@example.com"
    assert message.rcpttos == ["bob@example.com", "c@example.org"]
    assert message.data == expected_data(BODY)
    assert message.options == {"mail_options": [f"SIZE={len(BODY)}", "BODY=8BITMIME"],
                               "rcpt_options": []}


def test_decode_data_gives_str_and_no_options(loop):
    server = start_server(loop, decode_data=True)
    body = "Subject: t\r\n\r\n.dot\r\nna\u00efve"

    def client():
        with smtplib.SMTP(*server.socket.getsockname(), timeout=20) as smtp:
            smtp.ehlo()
            assert not smtp.has_extn("8bitmime")
            return smtp.sendmail("a@example.com", ["b@example.com"], body.encode())

    assert serve_while(loop, client) == {}
    [message] = server.messages
    assert message.data == "Subject: t\n\n.dot\nna\u00efve"
    assert message.options == {}


@pytest.mark.timeout(180)
def test_ten_megabyte_message(loop):
    server = start_server(loop)
    line = b"x" * 70 + b"\r\n"
    body = b"Subject: big\r\n\r\n" + (line * 50 + b".leading dot\r\n") * 2800 + b"end"
    assert len(body) > 10_000_000

    def client():
        with smtplib.SMTP(*server.socket.getsockname(), timeout=60) as smtp:
            return smtp.sendmail("a@example.com", ["b@example.com"], body)

    assert serve_while(loop, client, timeout=150) == {}
    [message] = server.messages
    assert len(message.data) == len(expected_data(body))
    assert message.data == expected_data(body)


def test_size_announced_and_refused_at_mail(loop):
    server = start_server(loop, data_size_limit=1000)

    def client():
        with smtplib.SMTP(*server.socket.getsockname(), timeout=20) as smtp:
            smtp.ehlo()
            assert smtp.esmtp_features["size"] == "1000"
            with pytest.raises(smtplib.SMTPSenderRefused) as info:
                smtp.sendmail("a@example.com", ["b@example.com"], b"x" * 5000)
            # The session goes on: a message within the limit is taken.
            return info.value, smtp.sendmail("a@example.com", ["b@example.com"], b"small")

    error, refused = serve_while(loop, client)
    assert error.smtp_code == 552
    assert error.smtp_error == b"Error: message size exceeds fixed maximum message size"
    assert refused == {}
    assert [m.data for m in server.messages] == [b"small"]


class BufferWatchingChannel(smtpd.SMTPChannel):
    """Records the most input the channel held at once."""

    most_held = 0

    def collect_incoming_data(self, data):
        super().collect_incoming_data(data)
        held = sum(len(piece) for piece in self.received_lines)
        type(self).most_held = max(type(self).most_held, held)


class WatchedServer(StoringServer):
    channel_class = BufferWatchingChannel


def test_too_much_data_is_refused_with_552_and_the_session_goes_on(loop):
    BufferWatchingChannel.most_held = 0
    server = start_server(loop, WatchedServer, data_size_limit=1000)
    client = Client(loop, port_of(server))
    try:
        assert client.reply()[0].startswith("220 ")
        client.command(b"EHLO client")
        client.open_data()  # MAIL without SIZE
        client.send(b"y" * 1_000_000 + b"\r\n.\r\n")
        assert client.reply() == ["552 Error: Too much mail data"]
        # Back in the command state (3.11 stayed in DATA and never answered again).
        assert client.command(b"RSET") == "250 OK"
        client.open_data()
        assert client.command(b"fits\r\n.") == "250 OK"
    finally:
        client.close()
    assert [m.data for m in server.messages] == [b"fits"]
    # Past the limit, input was counted and dropped, not kept.
    assert BufferWatchingChannel.most_held < 1000 + 65536 + 100


# -- pipelining and concurrency --------------------------------------------------------------


def test_pipelined_session_in_one_segment(loop):
    server = start_server(loop)
    client = Client(loop, port_of(server))
    first = transaction("a@example.com", ["b@example.com", "c@example.com"],
                        b"Subject: one\r\n\r\nbody").replace(b"QUIT\r\n", b"")
    second = transaction("d@example.com", ["e@example.com"], b"second",
                         greeting=b"RSET")
    try:
        client.send(first + second)  # one send(): the server reads it at once
        replies = [client.reply() for _ in range(13)]
        client.wait_closed()
    finally:
        client.close()
    fqdn = replies[1][0][4:]
    assert replies[0] == [f"220 {fqdn} {smtpd.__version__}"]
    assert replies[1:] == [
        [f"250-{fqdn}", "250-SIZE 33554432", "250-8BITMIME", "250 HELP"],
        ["250 OK"], ["250 OK"], ["250 OK"], ["354 End data with <CR><LF>.<CR><LF>"],
        ["250 OK"],
        ["250 OK"], ["250 OK"], ["250 OK"], ["354 End data with <CR><LF>.<CR><LF>"],
        ["250 OK"], ["221 Bye"]]
    assert client.pending == b""
    assert [(m.mailfrom, m.rcpttos, m.data) for m in server.messages] == [
        ("a@example.com", ["b@example.com", "c@example.com"], b"Subject: one\n\nbody"),
        ("d@example.com", ["e@example.com"], b"second")]


# -- bad input ------------------------------------------------------------------------------


def test_over_long_command_lines_get_500_and_the_session_goes_on(loop):
    BufferWatchingChannel.most_held = 0
    server = start_server(loop, WatchedServer)
    client = Client(loop, port_of(server))
    try:
        client.reply()
        client.command(b"EHLO client")
        assert client.command(b"MAIL FROM:<" + b"a" * 2_000_000 + b"@x>") == \
            "500 Error: line too long"
        assert client.command(b"X" * 600) == "500 Error: line too long"
        assert client.command(b"NOOP") == "250 OK"
        assert client.command(b"MAIL FROM:<a@example.com>") == "250 OK"
    finally:
        client.close()
    assert BufferWatchingChannel.most_held < 1000 + 65536


def test_per_session_command_limits(loop):
    """EHLO lengthens MAIL's limit for that session only (3.11 shared one
    dict between sessions, and each new connection reset it)."""
    server = start_server(loop, enable_SMTPUTF8=True)
    long_mail = b"MAIL FROM:<" + b"a" * 520 + b"@example.com>"
    assert 512 < len(long_mail) <= 512 + 26 + 10
    extended, plain = Client(loop, port_of(server)), Client(loop, port_of(server))
    try:
        extended.reply()
        plain.reply()
        extended.command(b"EHLO client")
        assert plain.command(b"HELO client") .startswith("250 ")
        assert plain.command(long_mail) == "500 Error: line too long"
        late = Client(loop, port_of(server))  # a new session must change nothing
        late.reply()
        assert extended.command(long_mail) == "250 OK"
        assert late.command(b"HELO other").startswith("250 ")
        assert late.command(long_mail) == "500 Error: line too long"
        late.close()
    finally:
        extended.close()
        plain.close()


@pytest.mark.parametrize("command, reply", [
    (b"MAIL FROM:<", "501 Syntax: MAIL FROM: <address> [SP <mail-parameters>]"),
    (b'MAIL FROM:<"', "501 Syntax: MAIL FROM: <address> [SP <mail-parameters>]"),
    (b"MAIL FROM:<a@[1.2>", "501 Syntax: MAIL FROM: <address> [SP <mail-parameters>]"),
    (b"MAIL FROM:<a@example.com> SIZE", "501 Syntax: MAIL FROM: <address> "
                                        "[SP <mail-parameters>]"),
    ("MAIL FROM:<a@example.com> SIZE=\u00b2".encode(), "501 Syntax: MAIL FROM: <address> "
                                                      "[SP <mail-parameters>]"),
    (b"VRFY <", "502 Could not VRFY <"),
    ("VRFY na\u00efve".encode(), "252 Cannot VRFY user, but will accept message and "
                                 "attempt delivery"),
    ("VRFY <<\u00e9>>".encode(), "502 Could not VRFY <<\\xe9>>"),
    ("CAF\u00c9 au lait".encode(), '500 Error: command "CAF\\xc9" not recognized'),
    (b"\xff\xfe garbage", "500 Error: bad syntax"),
    (b"", "500 Error: bad syntax"),
])
def test_garbage_gets_a_reply_not_a_dropped_session(loop, command, reply):
    """All but the plain VRFY and the empty line made 3.11 raise inside the
    channel and close the connection."""
    server = start_server(loop)
    client = Client(loop, port_of(server))
    try:
        client.reply()
        client.command(b"EHLO client")
        assert client.command(command) == reply
        assert client.command(b"NOOP") == "250 OK"
    finally:
        client.close()


def test_garbage_and_disconnects_mid_data_affect_no_other_session(loop):
    server = start_server(loop)
    port = port_of(server)
    good, garbage, quitter = (Client(loop, port) for _ in range(3))
    try:
        for client in (good, garbage, quitter):
            client.reply()
            client.command(b"EHLO client")
            client.command(b"MAIL FROM:<a@example.com>")
            client.command(b"RCPT TO:<b@example.com>")
        assert good.command(b"DATA").startswith("354")
        good.send(b"Subject: first half\r\n\r\n")
        assert quitter.command(b"DATA").startswith("354")
        quitter.send(b"half a message, then gone")
        quitter.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        quitter.close()  # a reset, mid-DATA
        garbage.send(bytes(range(256)) * 40 + b"\r\n\x00\x00\r\n")
        good.send(b"second half\r\n")
        assert garbage.reply() == ["500 Error: line too long"]
        assert garbage.reply() == ['500 Error: command "\x00\x00" not recognized']
        run_until(loop, lambda: len(loop.map) == 3)  # the listener, good and garbage
        assert good.command(b".") == "250 OK"
        assert garbage.command(b"NOOP") == "250 OK"  # still served
    finally:
        good.close()
        garbage.close()
    assert [m.data for m in server.messages] == [b"Subject: first half\n\nsecond half"]
    # The listener still accepts.
    late = Client(loop, port)
    try:
        assert late.reply()[0].startswith("220 ")
    finally:
        late.close()


class RecordingChannel(smtpd.SMTPChannel):
    errors: list = []

    def handle_error(self):
        import sys

        type(self).errors.append((self, sys.exc_info()[1]))
        self.close()


class FailingServer(StoringServer):
    channel_class = RecordingChannel

    def process_message(self, peer, mailfrom, rcpttos, data, **kwargs):
        if b"explode" in data:
            raise RuntimeError("process_message failed on purpose")
        return super().process_message(peer, mailfrom, rcpttos, data, **kwargs)


def test_process_message_raising_reaches_that_channels_handle_error_only(loop):
    RecordingChannel.errors = []
    server = start_server(loop, FailingServer)
    port = port_of(server)
    victim, bystander = Client(loop, port), Client(loop, port)
    victim_addr = victim.sock.getsockname()
    try:
        for client in (victim, bystander):
            client.reply()
            client.command(b"HELO client")
            client.command(b"MAIL FROM:<a@example.com>")
            client.command(b"RCPT TO:<b@example.com>")
            client.command(b"DATA")
        bystander.send(b"still going")
        victim.send(b"explode\r\n.\r\n")
        victim.wait_closed()
        assert bystander.command(b"\r\n.") == "250 OK"
    finally:
        victim.close()
        bystander.close()
    [(channel, error)] = RecordingChannel.errors
    assert isinstance(error, RuntimeError)
    assert channel.peer == victim_addr
    assert [m.data for m in server.messages] == [b"still going"]


# -- the API --------------------------------------------------------------------------------


def test_renamed_private_attributes_warn_and_forward(loop):
    server = start_server(loop)
    client = Client(loop, port_of(server))
    try:
        run_until(loop, lambda: len(loop.map) == 2)
        [channel] = [c for c in loop.map.values() if c is not server]
        with pytest.warns(DeprecationWarning, match="use 'smtp_server' instead"):
            assert channel._SMTPChannel__server is server
        with pytest.warns(DeprecationWarning, match="set 'received_lines' instead"):
            channel._SMTPChannel__line = ["x"]
        assert channel.received_lines == ["x"]
    finally:
        client.close()


def test_smtpchannel_refuses_smtputf8_with_decode_data_before_joining_the_map(loop):
    server = start_server(loop)
    a, b = socket.socketpair()
    try:
        with pytest.raises(ValueError, match="cannot be set to True at the same time"):
            smtpd.SMTPChannel(server, a, ("peer", 0), map=loop.map, enable_SMTPUTF8=True,
                              decode_data=True)
        assert list(loop.map.values()) == [server]
    finally:
        a.close()
        b.close()


def test_decode_data_refuses_what_is_not_utf8(loop):
    """decode_data=True: a command or a message that is not UTF-8 gets a
    reply (3.11 raised UnicodeDecodeError and closed the connection)."""
    server = start_server(loop, decode_data=True)
    client = Client(loop, port_of(server))
    try:
        client.reply()
        client.command(b"HELO client")
        assert client.command(b"NOOP \xff") == "500 Error: bad syntax"
        client.open_data()
        assert client.command(b"caf\xc3\r\n.") == "554 Error: message is not valid UTF-8"
        assert client.command(b"DATA") == "503 Error: need RCPT command"  # transaction over
        client.open_data()
        assert client.command(b"caf\xc3\xa9\r\n.") == "250 OK"
    finally:
        client.close()
    assert [m.data for m in server.messages] == ["caf\u00e9"]


ATEXT = "aZ09!#$%&'*+/=?^_`{|}~-"
DOT_ATOM = st.lists(st.text(alphabet=ATEXT, min_size=1, max_size=6), min_size=1,
                    max_size=3).map(".".join)
TAIL = st.sampled_from(["", " SIZE=10", "  BODY=8BITMIME SMTPUTF8", "\tX=1", " (comment) X",
                        "(comment)", "SIZE=1", " ", "\t ", "\r", "\n", ">", " <", "\u00e9"])


@given(local=DOT_ATOM, domain=DOT_ATOM, tail=TAIL, noise=st.text(max_size=3),
       extra_dot=st.sampled_from(["", ".", ".."]))
def test_the_fast_address_path_agrees_with_the_email_parser(local, domain, tail, noise,
                                                            extra_dot):
    """_getaddr() answers simple <local@domain> paths without the email
    parser: wherever it does, the parser (3.11's way) must give the same."""
    for arg in (f"<{local}@{domain}>{tail}{noise}", f"<{local}{extra_dot}@{domain}>{tail}",
                f"<{local}@{domain}{extra_dot}>{tail}", f" <{local}@{domain}>{tail}"):
        fast = smtpd._SIMPLE_PATH.match(arg)
        if fast is not None:
            assert (fast.group(1), arg[fast.end():]) == smtpd._parse_path(arg), arg


def test_the_fast_address_path_leaves_odd_whitespace_to_the_parser():
    # Found by the property above: the parser strips U+001F as whitespace.
    for arg in ("<0@0> \x1f", "<0@0> \x85X", "<a@b>\t\u2003SIZE=1"):
        assert smtpd._SIMPLE_PATH.match(arg) is None, arg


def test_the_fast_address_path_takes_what_clients_send():
    for arg in ("<alice@example.com>", "<a.b+tag@mail.example.org> SIZE=1024 BODY=8BITMIME"):
        assert smtpd._SIMPLE_PATH.match(arg), arg
