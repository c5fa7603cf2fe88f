"""STARTTLS in pollchat.smtpd (RFC 3207; an extension over CPython's smtpd),
on every backend: smtplib's starttls(), a command pipelined behind STARTTLS
never executed, the session forgotten after the upgrade, STARTTLS twice or
with an argument, ``require_tls``, a failed handshake confined to its
session, settings checked when the server is made, the command line's
``--tls-cert``/``--tls-key``/``--require-tls``, and README's example.

Without a context nothing changes: STARTTLS is an unknown command and EHLO
does not announce it (CPython's own test_smtpd.py, in the conformance
runner, and test_smtpd_reference.py check the rest of the plain dialogue).
"""

from __future__ import annotations

import logging
import os
import re
import smtplib
import socket
import subprocess
import sys
import textwrap
from typing import List

import pytest
from smtp_support import LOCALHOST, Client, StoringServer, port_of, serve_while, start_server

from pollchat import smtpd

pytestmark = pytest.mark.timeout(60)

WAIT = 20.0
READY = "220 Ready to start TLS"


class RecordingChannel(smtpd.SMTPChannel):
    """Records each command line it acts on, and whether TLS was on, in
    its server's ``commands``; and any exception that reached it."""

    def found_terminator(self):
        if self.smtp_state == self.COMMAND:
            line = b"".join(self.received_lines)
            self.smtp_server.commands.append((line, self.get_ssl_object() is not None))
        super().found_terminator()

    def handle_error(self):
        self.smtp_server.errors.append(sys.exc_info()[1])
        self.close()


class TLSServer(StoringServer):
    channel_class = RecordingChannel

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.commands: List[tuple] = []
        self.errors: List[BaseException] = []


class Dialogue:
    """A blocking SMTP client on a raw socket (for a thread run by
    ``serve_while``): plaintext, then TLS after :meth:`start_tls`.  Reads
    byte by byte, so that nothing after a reply is taken from the socket
    before the handshake."""

    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection((LOCALHOST, port), timeout=WAIT)

    def close(self) -> None:
        self.sock.close()

    def _line(self) -> str:
        line = b""
        while not line.endswith(b"\r\n"):
            byte = self.sock.recv(1)
            assert byte, f"connection closed after {line!r}"
            line += byte
        return line[:-2].decode()

    def reply(self) -> List[str]:
        lines = [self._line()]
        while lines[-1][3:4] == "-":
            lines.append(self._line())
        return lines

    def command(self, line: bytes) -> List[str]:
        self.sock.sendall(line + b"\r\n")
        return self.reply()

    def start_tls(self, context) -> None:
        self.sock = context.wrap_socket(self.sock, server_hostname="localhost")


def ehlo_lines(server, tls: bool) -> List[str]:
    """The EHLO reply of a server with the default settings, bytes mode."""
    fqdn = socket.getfqdn()
    return [f"250-{fqdn}", f"250-SIZE {smtpd.DATA_SIZE_DEFAULT}", "250-8BITMIME",
            *([] if tls else ["250-STARTTLS"]), "250 HELP"]


def channel_of(loop) -> smtpd.SMTPChannel:
    [channel] = [c for c in loop.map.values() if isinstance(c, smtpd.SMTPChannel)]
    return channel


# -- end to end -----------------------------------------------------------------------


def test_smtplib_starttls_then_a_message(loop, tls_server_context, tls_client_context):
    server = start_server(loop, TLSServer, ssl_context=tls_server_context)

    def client():
        with smtplib.SMTP(LOCALHOST, port_of(server), timeout=WAIT) as smtp:
            smtp.ehlo("before.example")
            assert smtp.has_extn("starttls")
            assert smtp.starttls(context=tls_client_context) == (220, b"Ready to start TLS")
            smtp.ehlo("after.example")
            assert not smtp.has_extn("starttls")
            refused = smtp.sendmail("alice@example.com", ["bob@example.com"],
                                    b"Subject: secret\r\n\r\nover TLS")
            return refused, smtp.sock.version()

    refused, version = serve_while(loop, client)
    assert refused == {}
    assert version in ("TLSv1.2", "TLSv1.3")
    [message] = server.messages
    assert (message.mailfrom, message.rcpttos) == ("alice@example.com", ["bob@example.com"])
    assert message.data == b"Subject: secret\n\nover TLS"
    verbs = [(line.split()[0].upper(), tls) for line, tls in server.commands]
    assert verbs == [(b"EHLO", False), (b"STARTTLS", False), (b"EHLO", True),
                     (b"MAIL", True), (b"RCPT", True), (b"DATA", True), (b"QUIT", True)]
    assert server.errors == []


def test_a_command_pipelined_behind_starttls_is_never_executed(loop, caplog,
                                                               tls_server_context,
                                                               tls_client_context):
    """The command-injection hole (CVE-2011-0411 and kin): ``RSET`` in the
    same packet as ``STARTTLS`` is discarded, neither run in plaintext nor
    after the upgrade; and the session starts over (RFC 3207, 4.2)."""
    caplog.set_level(logging.WARNING, logger="pollchat")
    server = start_server(loop, TLSServer, ssl_context=tls_server_context)
    limits = []

    def client():
        talk = Dialogue(port_of(server))
        try:
            assert talk.reply()[0].startswith("220 ")
            assert talk.command(b"EHLO before.example") == ehlo_lines(server, tls=False)
            assert talk.command(b"STARTTLS\r\nRSET") == [READY]
            talk.start_tls(tls_client_context)
            # The greeting before TLS no longer counts.
            assert talk.command(b"MAIL FROM:<a@example.com>") == [
                "503 Error: send HELO first"]
            assert talk.command(b"EHLO after.example") == ehlo_lines(server, tls=True)
            limits.append(dict(channel_of(loop).command_size_limits))
            assert talk.command(b"NOOP") == ["250 OK"]
        finally:
            talk.close()

    serve_while(loop, client)
    assert server.commands == [(b"EHLO before.example", False), (b"STARTTLS", False),
                               (b"MAIL FROM:<a@example.com>", True),
                               (b"EHLO after.example", True), (b"NOOP", True)]
    # One EHLO's worth of room for SIZE=, not two: the limits were reset too.
    assert limits == [{"MAIL": smtpd.SMTPChannel.command_size_limit + 26}]
    assert any("discarding 6 bytes" in record.getMessage() for record in caplog.records)
    assert server.errors == []


def test_starttls_twice_or_with_an_argument(loop, tls_server_context, tls_client_context):
    server = start_server(loop, TLSServer, ssl_context=tls_server_context)

    def client():
        talk = Dialogue(port_of(server))
        try:
            talk.reply()
            assert talk.command(b"STARTTLS now") == ["501 Syntax: STARTTLS"]
            assert talk.command(b"NOOP") == ["250 OK"]  # still plaintext, still there
            assert talk.command(b"starttls") == [READY]
            talk.start_tls(tls_client_context)
            assert talk.command(b"STARTTLS") == ["503 Error: TLS already active"]
            assert talk.command(b"EHLO x.example") == ehlo_lines(server, tls=True)
            assert talk.command(b"QUIT") == ["221 Bye"]
        finally:
            talk.close()

    serve_while(loop, client)
    assert [tls for _, tls in server.commands] == [False, False, False, True, True, True]
    assert server.errors == []


def test_require_tls_refuses_everything_but_ehlo_noop_quit_starttls(loop, tls_server_context,
                                                                   tls_client_context):
    server = start_server(loop, TLSServer, ssl_context=tls_server_context, require_tls=True)
    refused = ["530 Must issue a STARTTLS command first"]

    def client():
        talk = Dialogue(port_of(server))
        try:
            talk.reply()
            assert talk.command(b"EHLO x.example") == ehlo_lines(server, tls=False)
            assert talk.command(b"NOOP") == ["250 OK"]
            for command in (b"HELO x.example", b"MAIL FROM:<a@example.com>",
                            b"RCPT TO:<b@example.com>", b"DATA", b"RSET", b"VRFY a",
                            b"HELP", b"EXPN x"):
                assert talk.command(command) == refused, command
            assert talk.command(b"STARTTLS") == [READY]
            talk.start_tls(tls_client_context)
            talk.command(b"EHLO x.example")
            assert talk.command(b"MAIL FROM:<a@example.com>") == ["250 OK"]
            assert talk.command(b"RCPT TO:<b@example.com>") == ["250 OK"]
            assert talk.command(b"DATA")[0].startswith("354 ")
            assert talk.command(b"private\r\n.") == ["250 OK"]
            assert talk.command(b"QUIT") == ["221 Bye"]
        finally:
            talk.close()

    serve_while(loop, client)
    assert [m.data for m in server.messages] == [b"private"]


def test_help_names_starttls_only_with_a_context(loop, tls_server_context):
    plain = start_server(loop)
    tls = start_server(loop, ssl_context=tls_server_context)
    plain_client, tls_client = Client(loop, port_of(plain)), Client(loop, port_of(tls))
    try:
        plain_client.reply()
        tls_client.reply()
        base = "250 Supported commands: EHLO HELO MAIL RCPT DATA RSET NOOP QUIT VRFY"
        assert plain_client.command(b"HELP") == base
        assert tls_client.command(b"HELP") == base + " STARTTLS"
        assert tls_client.command(b"HELP STARTTLS") == "250 Syntax: STARTTLS"
        assert plain_client.command(b"HELP STARTTLS").startswith("501 Supported commands: ")
    finally:
        plain_client.close()
        tls_client.close()


def test_without_a_context_starttls_is_an_unknown_command_as_in_3_11(loop):
    server = start_server(loop)
    client = Client(loop, port_of(server))
    try:
        client.reply()
        client.send(b"EHLO x.example\r\n")
        assert client.reply() == [f"250-{socket.getfqdn()}",
                                  f"250-SIZE {smtpd.DATA_SIZE_DEFAULT}", "250-8BITMIME",
                                  "250 HELP"]
        assert client.command(b"STARTTLS") == '500 Error: command "STARTTLS" not recognized'
        assert client.command(b"NOOP") == "250 OK"
    finally:
        client.close()


def test_a_failed_handshake_closes_that_session_only(loop, caplog, tls_server_context):
    caplog.set_level(logging.INFO, logger="pollchat")
    server = start_server(loop, TLSServer, ssl_context=tls_server_context)
    bystander, victim = Client(loop, port_of(server)), Client(loop, port_of(server))
    try:
        bystander.reply()
        victim.reply()
        assert victim.command(b"STARTTLS") == READY
        victim.send(b"MAIL FROM:<not@tls.example>\r\n" * 20)  # not a ClientHello
        victim.wait_closed()
        assert bystander.command(b"NOOP") == "250 OK"
    finally:
        bystander.close()
        victim.close()
    assert server.errors == []
    assert [line for line, _ in server.commands] == [b"STARTTLS", b"NOOP"]
    assert any("TLS handshake failed" in r.getMessage() for r in caplog.records)
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]


# -- settings checked when the server is made ---------------------------------------------


class ThreeElevenChannel(smtpd.SMTPChannel):
    """A channel class written for 3.11: its own __init__, no keywords."""

    def __init__(self, server, conn, addr, data_size_limit, map,  # noqa: PLR0917
                 enable_SMTPUTF8, decode_data):
        super().__init__(server, conn, addr, data_size_limit, map, enable_SMTPUTF8,
                         decode_data)


class KeywordsChannel(ThreeElevenChannel):
    def __init__(self, *args, **kwargs):
        smtpd.SMTPChannel.__init__(self, *args, **kwargs)


def test_settings_that_cannot_work_are_refused_before_anything_is_made(tls_server_context):
    socket_map: dict = {}
    with pytest.raises(ValueError, match="require_tls needs an ssl_context"):
        smtpd.SMTPServer((LOCALHOST, 0), None, map=socket_map, require_tls=True)
    with pytest.raises(TypeError, match="ssl_context must be an ssl.SSLContext, not str"):
        smtpd.SMTPServer((LOCALHOST, 0), None, map=socket_map, ssl_context="server.pem")

    class OldServer(StoringServer):
        channel_class = ThreeElevenChannel

    with pytest.raises(TypeError, match=r"ThreeElevenChannel does not take the "
                                        r"ssl_context= and require_tls="):
        OldServer((LOCALHOST, 0), None, map=socket_map, ssl_context=tls_server_context)
    assert socket_map == {}  # no half-made listener left behind
    # Without TLS, a 3.11 channel class works as it always did.
    OldServer((LOCALHOST, 0), None, map=socket_map).close()

    class NewServer(StoringServer):
        channel_class = KeywordsChannel

    NewServer((LOCALHOST, 0), None, map=socket_map, ssl_context=tls_server_context).close()
    a, b = socket.socketpair()
    try:
        with pytest.raises(ValueError, match="require_tls needs an ssl_context"):
            smtpd.SMTPChannel(None, a, "peer", map=socket_map, require_tls=True)
        assert socket_map == {}
    finally:
        a.close()
        b.close()


def test_a_3_11_channel_class_without_tls_gets_3_11s_call(loop):
    class OldServer(StoringServer):
        channel_class = ThreeElevenChannel

    server = start_server(loop, OldServer)
    client = Client(loop, port_of(server))
    try:
        assert client.reply()[0].startswith("220 ")
        assert client.command(b"NOOP") == "250 OK"
    finally:
        client.close()


# -- the command line and README -------------------------------------------------------------


@pytest.fixture
def cert_files(tls_ca, tmp_path):
    """(certfile, keyfile) of the test server certificate, on disk."""
    _, cert = tls_ca
    certfile, keyfile = tmp_path / "server.pem", tmp_path / "server.key"
    with open(certfile, "wb") as f:
        for pem in cert.cert_chain_pems:
            f.write(pem.bytes())
    cert.private_key_pem.write_to_path(str(keyfile))
    return str(certfile), str(keyfile)


@pytest.mark.timeout(120)
def test_command_line_tls_options(cert_files, tls_client_context):
    from test_smtpd_cli import _start, _stop

    certfile, keyfile = cert_files
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    proc, port = _start([sys.executable, "-m", "pollchat.smtpd", "-n", "-c", "DebuggingServer",
                         "--tls-cert", certfile, "--tls-key", keyfile, "--require-tls"], env)
    try:
        with smtplib.SMTP(LOCALHOST, port, timeout=WAIT) as client:
            with pytest.raises(smtplib.SMTPSenderRefused) as refused:
                client.sendmail("a@example.com", ["b@example.com"], b"in the clear")
            assert refused.value.smtp_code == 530
            client.starttls(context=tls_client_context)
            client.sendmail("a@example.com", ["b@example.com"], b"Subject: s\r\n\r\nsealed")
        proc.wait_for(r"END MESSAGE")
        out = _stop(proc)
    finally:
        proc.kill()
    assert "b'sealed'" in out
    assert "in the clear" not in out


@pytest.mark.parametrize("args, text", [
    (["--tls-key", "k.pem"], "--tls-key and --require-tls need --tls-cert"),
    (["--require-tls"], "--tls-key and --require-tls need --tls-cert"),
    (["--tls-cert", "no-such.pem", "127.0.0.1:0"], "cannot use --tls-cert no-such.pem: "),
])
def test_command_line_tls_mistakes(args, text):
    proc = subprocess.run([sys.executable, "-m", "pollchat.smtpd", "-n", *args],
                          capture_output=True, text=True, timeout=WAIT, check=False)
    assert proc.returncode == 1, proc.stderr
    assert text in proc.stderr
    assert "Traceback" not in proc.stderr


def test_command_line_class_without_tls_keywords(cert_files, tmp_path):
    (tmp_path / "oldsink.py").write_text(textwrap.dedent("""\
        from pollchat import smtpd

        class Channel(smtpd.SMTPChannel):
            def __init__(self, server, conn, addr, size, map, utf8, decode):
                super().__init__(server, conn, addr, size, map, utf8, decode)

        class Sink(smtpd.SMTPServer):
            channel_class = Channel
        """))
    certfile, keyfile = cert_files
    proc = subprocess.run([sys.executable, "-m", "pollchat.smtpd", "-n", "-c", "oldsink.Sink",
                           "--tls-cert", certfile, "--tls-key", keyfile, "127.0.0.1:0"],
                          capture_output=True, text=True, timeout=WAIT, check=False,
                          cwd=str(tmp_path))
    assert proc.returncode == 1, proc.stderr
    assert "cannot offer STARTTLS with -c oldsink.Sink: Channel does not take" in proc.stderr
    assert "Traceback" not in proc.stderr


def _readme_blocks(language: str) -> List[str]:
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    with open(os.path.join(root, "README.md"), encoding="utf-8") as f:
        readme = f.read()
    section = readme.split("#### STARTTLS (pollchat's extension)", 1)[1].split("\n### ", 1)[0]
    return re.findall(rf"^```{language}\n(.*?)^```", section, re.S | re.M)


@pytest.mark.timeout(120)
def test_readme_starttls_example_runs(tmp_path):
    """README's STARTTLS sink and its smtplib client, as written (only the
    port changed), with the certificate made by README's command."""
    pytest.importorskip("trustme", reason="the README's certificate command needs trustme")
    from helpers import Proc, free_port
    from test_readme import connect

    server_code, client_code = _readme_blocks("python")
    assert "8587" in server_code and "8587" in client_code
    subprocess.run([sys.executable, "-m", "trustme", "-q"], cwd=tmp_path, check=True,
                   timeout=WAIT)
    port = free_port()
    (tmp_path / "tls_sink.py").write_text(server_code.replace("8587", str(port)))
    (tmp_path / "send.py").write_text(client_code.replace("8587", str(port)))
    proc = Proc([sys.executable, "tls_sink.py"], cwd=str(tmp_path))
    try:
        connect(port, proc).close()
        sent = subprocess.run([sys.executable, "send.py"], cwd=tmp_path, timeout=WAIT,
                              capture_output=True, text=True, check=False)
        assert sent.returncode == 0, sent.stderr
        assert re.fullmatch(r"sending over TLSv1\.[23]\n", sent.stdout)
        proc.wait_for(r"^alice@example\.com -> bob@example\.com: 18 bytes$")
    finally:
        proc.kill()
