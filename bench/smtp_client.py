"""The mail benchmark's client: ``--conns`` SMTP sessions, each sending
``--size``-byte messages back to back, against ``servers/smtp_server.py``.

Stand-alone (standard library only)::

    python bench/smtp_client.py --port P --conns 50 --size 1024 --duration 2

Each session greets once (EHLO), then per message sends ``MAIL``, ``RCPT``
and ``DATA`` in one segment (RFC 2920 style), waits for 250/250/354, sends
the message and waits for its 250.  A control session asks the server for
its CPU time (``XCPU``) at both ends of the measured window, so the main
figure, ``msgs_per_cpu_s``, is messages per server CPU-second.  Output:
JSON events, one per line, as ``clients.py`` prints them (``ready`` with
``--sync``, ``start``, ``end``, ``result``); every wait is bounded by
``--timeout``.
"""

from __future__ import annotations

import argparse
import selectors
import socket
import sys
import time
from typing import Any, Dict, List, Optional

from clients import ClientError, cpu_seconds, emit  # a sibling when run as a script

ENVELOPE = b"MAIL FROM:<bench@example.com>\r\nRCPT TO:<sink@example.com>\r\nDATA\r\n"


def message(size: int) -> bytes:
    """A ``size``-byte message (headers, 70-byte lines), with the end-of-data
    line after it."""
    head = b"From: bench@example.com\r\nTo: sink@example.com\r\nSubject: bench\r\n\r\n"
    body = b""
    while len(head) + len(body) < size:
        body += b"x" * 68 + b"\r\n"
    return (head + body)[:size] + b"\r\n.\r\n"


class Session:
    """One SMTP session, driven by replies: ``expect`` final reply lines are
    awaited before the next step."""

    def __init__(self, sock: socket.socket, payload: bytes) -> None:
        self.sock = sock
        self.payload = payload
        self.pending = b""
        self.expect = 1  # the greeting
        self.step = "greeting"
        self.replies: List[bytes] = []
        self.done = 0  # messages accepted (250 after the data)

    def feed(self, data: bytes) -> None:
        self.pending += data
        while self.expect:
            end = self.pending.find(b"\r\n")
            if end < 0:
                return
            line, self.pending = self.pending[:end], self.pending[end + 2:]
            if line[3:4] == b"-":
                continue  # a line of a multi-line reply
            self.replies.append(line)
            self.expect -= 1
        self.advance()

    def advance(self) -> None:
        replies, self.replies = self.replies, []
        codes = [reply[:3] for reply in replies]
        if self.step == "greeting":
            self._check(codes, [b"220"])
            self._send(b"EHLO bench.example\r\n", "ehlo", 1)
        elif self.step == "ehlo":
            self._check(codes, [b"250"])
            self.step = "idle"  # the window starts it
        elif self.step == "envelope":
            self._check(codes, [b"250", b"250", b"354"])
            self._send(self.payload, "data", 1)
        elif self.step == "data":
            self._check(codes, [b"250"])
            self.done += 1
            self.start_message()

    def start_message(self) -> None:
        self._send(ENVELOPE, "envelope", 3)

    def _send(self, data: bytes, step: str, expect: int) -> None:
        self.step = step
        self.expect = expect
        self.sock.sendall(data)  # small; the socket is blocking with a timeout

    def _check(self, codes: List[bytes], wanted: List[bytes]) -> None:
        if codes != wanted:
            raise ClientError(f"at {self.step}: replies {codes}, expected {wanted}")


class Control:
    """A blocking session for XCPU/XCOUNT."""

    def __init__(self, host: str, port: int, timeout: float) -> None:
        self.sock = socket.create_connection((host, port), timeout=timeout)
        self.file = self.sock.makefile("rb")
        self.reply()

    def reply(self) -> bytes:
        line = self.file.readline()
        if not line:
            raise ClientError("the server closed the control session")
        return line.rstrip(b"\r\n")

    def ask(self, command: bytes) -> float:
        self.sock.sendall(command + b"\r\n")
        reply = self.reply()
        if not reply.startswith(b"250 "):
            raise ClientError(f"{command.decode()}: {reply[:80]!r}")
        return float(reply[4:])

    def close(self) -> None:
        self.file.close()
        self.sock.close()


def run(args: argparse.Namespace) -> Dict[str, Any]:
    t0 = time.perf_counter()
    selector = selectors.DefaultSelector()
    payload = message(args.size)
    sessions = []
    for _ in range(args.conns):
        sock = socket.create_connection((args.host, args.port), timeout=args.timeout)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        session = Session(sock, payload)
        sessions.append(session)
        selector.register(sock, selectors.EVENT_READ, session)
    control = Control(args.host, args.port, args.timeout)

    def pump(until: float, what: str, stop: Optional[Any] = None) -> None:
        while time.perf_counter() < until and not (stop and stop()):
            if time.perf_counter() - t0 > args.timeout:
                raise ClientError(f"time limit of {args.timeout:.0f} s reached while {what}")
            for key, _ in selector.select(0.5):
                data = key.fileobj.recv(65536)
                if not data:
                    raise ClientError(f"the server closed a session while {what}")
                key.data.feed(data)

    pump(t0 + args.timeout, "greeting", lambda: all(s.step == "idle" for s in sessions))
    if args.sync:
        emit("ready")
        sys.stdin.readline()
    for session in sessions:
        session.start_message()
    pump(time.perf_counter() + args.warmup, "warming up")
    before = sum(s.done for s in sessions)
    server_cpu0 = control.ask(b"XCPU")
    emit("start")
    start, cpu0 = time.perf_counter(), cpu_seconds()
    pump(start + args.duration, "sending mail")
    messages = sum(s.done for s in sessions) - before
    server_cpu = control.ask(b"XCPU") - server_cpu0
    seconds, cpu = time.perf_counter() - start, cpu_seconds() - cpu0
    emit("end")
    received = control.ask(b"XCOUNT")
    if received < before + messages:
        raise ClientError(f"the server counted {received:.0f} messages, "
                          f"{before + messages} were accepted")
    for session in sessions:
        session.sock.close()
    control.close()
    selector.close()
    return {"messages": messages, "seconds": seconds, "cpu_seconds": cpu,
            "rate": messages / seconds, "server_cpu_seconds": server_cpu,
            "msgs_per_cpu_s": messages / server_cpu if server_cpu > 0 else 0.0,
            "conns": args.conns, "size": args.size}


def parse_args(argv: Optional[List[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--conns", type=int, default=50)
    parser.add_argument("--size", type=int, default=1024, help="bytes per message")
    parser.add_argument("--warmup", type=float, default=0.3)
    parser.add_argument("--duration", type=float, default=1.5)
    parser.add_argument("--timeout", type=float, default=60.0)
    parser.add_argument("--sync", action="store_true",
                        help="say 'ready' once connected, then wait for a line on stdin")
    return parser.parse_args(argv)


def main(argv: Optional[List[str]] = None) -> int:
    args = parse_args(argv)
    try:
        result = run(args)
    except (ClientError, OSError) as exc:
        emit("result", ok=False, client="smtp", error=f"{type(exc).__name__}: {exc}")
        return 1
    emit("result", ok=True, client="smtp", **result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
