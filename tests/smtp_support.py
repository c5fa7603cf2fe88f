"""Helpers for the smtpd tests: a server that stores what it receives, a
non-blocking SMTP client driven from the test's own loop, and a way to run
a blocking client (smtplib, swaks) in a thread while the loop serves."""

from __future__ import annotations

import socket
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional

from helpers import run_until

from pollchat import smtpd

LOCALHOST = "127.0.0.1"


@dataclass
class Message:
    peer: Any
    mailfrom: str
    rcpttos: List[str]
    data: Any
    options: Dict[str, Any] = field(default_factory=dict)


class StoringServer(smtpd.SMTPServer):
    """An unmodified-style subclass: keeps every message it is given."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.messages: List[Message] = []

    def process_message(self, peer, mailfrom, rcpttos, data, **kwargs):
        self.messages.append(Message(peer, mailfrom, list(rcpttos), data, kwargs))


def start_server(loop, cls=StoringServer, **kwargs):
    """``cls`` listening on an ephemeral loopback port, in ``loop``'s map."""
    return cls((LOCALHOST, 0), (LOCALHOST, 25), map=loop.map, **kwargs)


def port_of(server) -> int:
    return server.socket.getsockname()[1]


def serve_while(loop, client: Callable[[], Any], timeout: float = 60.0) -> Any:
    """Run the blocking ``client()`` in a thread while ``loop`` serves here;
    its result, or its exception re-raised."""
    outcome: Dict[str, Any] = {}

    def run():
        try:
            outcome["value"] = client()
        except BaseException as exc:  # handed to the test thread
            outcome["error"] = exc

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    run_until(loop, lambda: not thread.is_alive(), timeout=timeout)
    thread.join(timeout)
    if "error" in outcome:
        raise outcome["error"]
    return outcome.get("value")


class Client:
    """A non-blocking SMTP client for single-threaded tests: each call
    runs ``loop`` until the server has answered (every wait bounded)."""

    def __init__(self, loop, port: int, timeout: float = 20.0) -> None:
        self.loop = loop
        self.timeout = timeout
        self.sock = socket.create_connection((LOCALHOST, port), timeout=timeout)
        self.sock.setblocking(False)
        self.pending = b""
        self.eof = False

    def close(self) -> None:
        self.sock.close()

    def _fill(self) -> None:
        try:
            data = self.sock.recv(65536)
        except BlockingIOError:
            return
        except ConnectionResetError:
            data = b""
        if not data:
            self.eof = True
        self.pending += data

    def _complete_reply(self) -> Optional[int]:
        """End offset of the first complete (multi-line) reply pending."""
        start = 0
        while True:
            end = self.pending.find(b"\r\n", start)
            if end < 0:
                return None
            if self.pending[start + 3:start + 4] != b"-":
                return end + 2
            start = end + 2

    def reply(self) -> List[str]:
        """The next reply, as its lines (str, without CRLF)."""
        run_until(self.loop, lambda: self._complete_reply() is not None or self.eof,
                  timeout=self.timeout, between=self._fill)
        end = self._complete_reply()
        assert end is not None, f"connection closed; pending {self.pending[:200]!r}"
        text, self.pending = self.pending[:end], self.pending[end:]
        return text.decode("utf-8", "backslashreplace").split("\r\n")[:-1]

    def send(self, data: bytes) -> None:
        """Send all of ``data``, serving the loop meanwhile."""
        view = memoryview(data)
        deadline = time.monotonic() + self.timeout
        while view:
            assert time.monotonic() < deadline, "send did not finish in time"
            try:
                sent = self.sock.send(view)
            except BlockingIOError:
                sent = 0
            view = view[sent:]
            self.loop.run_once(0.001)

    def command(self, line: bytes) -> str:
        """Send one command line; its reply's last line."""
        self.send(line + b"\r\n")
        return self.reply()[-1]

    def open_data(self) -> None:
        """MAIL, RCPT and DATA, each accepted: the message text may follow."""
        assert self.command(b"MAIL FROM:<a@example.com>") == "250 OK"
        assert self.command(b"RCPT TO:<b@example.com>") == "250 OK"
        assert self.command(b"DATA").startswith("354 ")

    def wait_closed(self) -> None:
        """Until the server closed the connection."""
        run_until(self.loop, lambda: self.eof, timeout=self.timeout, between=self._fill)


def transaction(sender: str, recipients: List[str], body: bytes,
                greeting: bytes = b"EHLO client.example") -> bytes:
    """A whole pipelined session: greeting, one message (dot-stuffed), QUIT."""
    lines = [greeting, b"MAIL FROM:<" + sender.encode() + b">"]
    lines += [b"RCPT TO:<" + rcpt.encode() + b">" for rcpt in recipients]
    lines.append(b"DATA")
    stuffed = b"\r\n".join(b"." + line if line.startswith(b".") else line
                           for line in body.split(b"\r\n"))
    return b"\r\n".join(lines) + b"\r\n" + stuffed + b"\r\n.\r\nQUIT\r\n"
