"""The TLS ping-pong client of the TLS benchmark (standard library only).

    python bench/tls_client.py --port P [--cafile CA.pem] --conns 100 [--idle N] [--sync]

``clients.py pingpong`` over TLS: ``--idle`` connections are opened first
(each completes its handshake and one round trip, so that the server holds
a full TLS session for it), then ``--conns`` active ones do sequential
ping-pong for ``--warmup`` + ``--duration`` seconds.  Events and the result
are printed as ``clients.py`` prints them (one JSON object per line), so the
harness's ``procs.run_client`` samples the server's CPU at ``start`` and
``end``; the result has ``ops`` (round trips) and ``seconds``.
"""

from __future__ import annotations

import argparse
import selectors
import socket
import ssl
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Dict, List, Optional, cast

if TYPE_CHECKING or __package__:
    from .clients import ClientError, Window, emit, raise_nofile_limit
else:  # run as a script by the harness, with the standard library only
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from clients import ClientError, Window, emit, raise_nofile_limit


class TLSPingPong:
    """Sequential ping-pong on many non-blocking TLS connections."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.line = b"x" * (args.line_size - 1) + b"\n"
        self.context = ssl.create_default_context(cafile=args.cafile)
        if not args.cafile:  # a benchmark, not a security check
            self.context.check_hostname = False
            self.context.verify_mode = ssl.CERT_NONE
        self.selector = selectors.DefaultSelector()
        self.idle: List[ssl.SSLSocket] = []
        self.active: List[ssl.SSLSocket] = []
        self.got: Dict[ssl.SSLSocket, int] = {}

    def connect_one(self, what: str, index: int, count: int) -> ssl.SSLSocket:
        """One TLS connection (handshake done) with one round trip."""
        try:
            raw = socket.create_connection((self.args.host, self.args.port),
                                           timeout=self.args.timeout)
            raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            sock = self.context.wrap_socket(raw, server_hostname="localhost")
            sock.sendall(b"x\n")
            if sock.recv(100) != b"x\n":
                raise ClientError(f"bad echo on {what} connection")
        except OSError as exc:
            raise ClientError(f"TLS connect on {what} connection #{index + 1} of {count}: "
                              f"{exc}") from None
        sock.setblocking(False)
        return sock

    def run(self) -> Dict[str, Any]:
        args = self.args
        t0 = time.perf_counter()
        self.idle = [self.connect_one("idle", i, args.idle) for i in range(args.idle)]
        self.active = [self.connect_one("active", i, args.conns) for i in range(args.conns)]
        opened = time.perf_counter() - t0
        if args.sync:
            emit("ready", idle=args.idle, conns=args.conns)
            sys.stdin.readline()
        for sock in self.active:
            self.selector.register(sock, selectors.EVENT_READ)
            self.send(sock)
        self.exchange(args.warmup)
        window = Window()
        count = self.exchange(args.duration)
        measured = window.close()
        return {"ops": count, "round_trips": count, "rate": count / measured["seconds"],
                "idle": args.idle, "conns": args.conns, "line_size": args.line_size,
                "open_seconds": opened, **measured}

    def send(self, sock: ssl.SSLSocket) -> None:
        self.got[sock] = 0
        sock.send(self.line)

    def exchange(self, seconds: float) -> int:
        size, count = len(self.line), 0
        end = time.perf_counter() + seconds
        last = time.perf_counter()
        while time.perf_counter() < end:
            for key, _ in self.selector.select(0.05):
                sock = cast(ssl.SSLSocket, key.fileobj)
                try:
                    data = sock.recv(65536)
                except ssl.SSLWantReadError:
                    continue  # half a record, or a session ticket
                if not data:
                    raise ClientError("server closed an active connection")
                self.got[sock] += len(data)
                if self.got[sock] >= size:
                    count += 1
                    self.send(sock)
                last = time.perf_counter()
            if time.perf_counter() - last > self.args.timeout:
                raise ClientError(f"no echo for {self.args.timeout:.0f} s (server stalled?)")
        return count

    def close(self) -> None:
        for sock in self.idle + self.active:
            sock.close()
        self.selector.close()


def parse_args(argv: Optional[List[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--cafile", help="the CA that signed the server's certificate "
                        "(default: no verification)")
    parser.add_argument("--timeout", type=float, default=60.0)
    parser.add_argument("--line-size", type=int, default=16)
    parser.add_argument("--conns", type=int, default=1)
    parser.add_argument("--idle", type=int, default=0)
    parser.add_argument("--warmup", type=float, default=0.5)
    parser.add_argument("--duration", type=float, default=2.0)
    parser.add_argument("--sync", action="store_true")
    return parser.parse_args(argv)


def main(argv: Optional[List[str]] = None) -> int:
    args = parse_args(argv)
    raise_nofile_limit()
    client = TLSPingPong(args)
    try:
        result = client.run()
    except (ClientError, OSError) as exc:
        emit("result", ok=False, client="python-tls", error=str(exc))
        return 1
    finally:
        client.close()
    emit("result", ok=True, client="python-tls", **result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
