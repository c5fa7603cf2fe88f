"""The benchmark's Python clients, run by the harness as separate processes.

Stand-alone (standard library only)::

    python bench/clients.py stream --port P --line-size 20 --total 100000000
    python bench/clients.py bulk --port P --total 1000000000
    python bench/clients.py pingpong --port P --conns 100 [--idle N] [--sync]

``pingpong`` is the Python twin of ``loadgen.c`` (same options, same output),
used only when gcc is missing.  Every client prints one JSON object per line
on stdout: the events ``ready`` (``--sync`` only; then a line on stdin says
go), ``start`` and ``end`` around the measured window, and the ``result``.
Every loop is bounded in time by ``--timeout``.
"""

from __future__ import annotations

import argparse
import json
import resource
import selectors
import socket
import sys
import time
from typing import Any, Callable, Dict, List, Optional

BLOCK = 1 << 20  # bytes per send()/recv_into() call of the streaming clients


class ClientError(Exception):
    """The run failed; the message says how."""


def emit(event: str, **fields: Any) -> None:
    """Print one event line for the harness."""
    sys.stdout.write(json.dumps({"event": event, **fields}) + "\n")
    sys.stdout.flush()


def cpu_seconds() -> float:
    """User + system CPU time of this process."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def raise_nofile_limit() -> None:
    """Raise the soft RLIMIT_NOFILE to the hard limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def connect(args: argparse.Namespace) -> socket.socket:
    """A blocking TCP connection to the server, Nagle off, bounded by --timeout."""
    sock = socket.create_connection((args.host, args.port), timeout=args.timeout)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


class Window:
    """The measured window: wall time and this process's CPU time."""

    def __init__(self) -> None:
        emit("start")
        self.t0 = time.perf_counter()
        self.cpu0 = cpu_seconds()
        self.seconds = 0.0
        self.cpu = 0.0

    def close(self) -> Dict[str, float]:
        """End the window; return its ``seconds`` and ``cpu_seconds``."""
        self.seconds = time.perf_counter() - self.t0
        self.cpu = cpu_seconds() - self.cpu0
        emit("end")
        return {"seconds": self.seconds, "cpu_seconds": self.cpu}


def check_deadline(t0: float, args: argparse.Namespace, what: str) -> None:
    """Fail once the run has taken longer than --timeout."""
    if time.perf_counter() - t0 > args.timeout:
        raise ClientError(f"time limit of {args.timeout:.0f} s reached while {what}")


def read_line(sock: socket.socket, limit: int = 4096) -> bytes:
    """Read one short ``\\n``-terminated reply (socket timeout bounds the wait)."""
    data = b""
    while not data.endswith(b"\n"):
        chunk = sock.recv(limit)
        if not chunk:
            raise ClientError(f"server closed the connection (got {data[:80]!r})")
        data += chunk
    return data.rstrip(b"\n")


# -- line parsing ----------------------------------------------------------


def stream(args: argparse.Namespace) -> Dict[str, Any]:
    """Send ``--total`` bytes of ``--line-size``-byte lines, then ``END``;
    the server's count must match."""
    lines_total = args.total // args.line_size
    line = b"x" * (args.line_size - 1) + b"\n"
    per_block = max(1, BLOCK // args.line_size)
    block = line * per_block
    with connect(args) as sock:
        window = Window()
        remaining = lines_total
        while remaining:
            count = min(per_block, remaining)
            sock.sendall(block if count == per_block else line * count)
            remaining -= count
            check_deadline(window.t0, args, "streaming lines")
        sock.sendall(b"END\n")
        reply = read_line(sock)
        measured = window.close()
    fields = reply.split()
    if len(fields) != 3 or fields[0] != b"COUNT":
        raise ClientError(f"unexpected reply to END: {reply[:80]!r}")
    counted = int(fields[1])
    if counted != lines_total:
        raise ClientError(f"server counted {counted} lines, {lines_total} were sent")
    nbytes = lines_total * args.line_size
    return {"lines": lines_total, "bytes": nbytes, "line_size": args.line_size,
            "lines_per_s": lines_total / measured["seconds"],
            "mb_per_s": nbytes / measured["seconds"] / 1e6, **measured}


# -- bulk send -------------------------------------------------------------


def bulk(args: argparse.Namespace) -> Dict[str, Any]:
    """Ask for ``--total`` bytes (``PUSH n``) and read them all."""
    buffer = memoryview(bytearray(BLOCK))
    with connect(args) as sock:
        window = Window()
        sock.sendall(b"PUSH %d\n" % args.total)
        received = 0
        while received < args.total:
            n = sock.recv_into(buffer)
            if not n:
                raise ClientError(f"server closed after {received} of {args.total} bytes")
            received += n
            check_deadline(window.t0, args, f"reading ({received} of {args.total} bytes)")
        measured = window.close()
    return {"bytes": received, "mb_per_s": received / measured["seconds"] / 1e6, **measured}


# -- ping-pong (fallback for loadgen.c) ------------------------------------


class PingPong:
    """Sequential ping-pong on many non-blocking connections (see loadgen.c)."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.line = b"x" * (args.line_size - 1) + b"\n"
        self.selector = selectors.DefaultSelector()
        self.idle: List[socket.socket] = []
        self.active: List[socket.socket] = []
        self.got: Dict[socket.socket, int] = {}

    def open(self, count: int, keep: List[socket.socket], what: str) -> None:
        """Open ``count`` connections with one round trip each, in batches."""
        for lo in range(0, count, self.args.batch):
            batch = [self.connect_one(what, lo + i, count)
                     for i in range(min(self.args.batch, count - lo))]
            for sock in batch:
                sock.sendall(b"x\n")
            for sock in batch:
                if read_line(sock) != b"x":
                    raise ClientError(f"bad echo on {what} connection")
                sock.setblocking(False)
            keep.extend(batch)

    def connect_one(self, what: str, index: int, count: int) -> socket.socket:
        """One connection, with a helpful error."""
        try:
            return connect(self.args)
        except OSError as exc:
            raise ClientError(f"connect on {what} connection #{index + 1} of {count}: "
                              f"{exc}") from None

    def run(self) -> Dict[str, Any]:
        """Open, optionally sync, then ping-pong for warmup + duration."""
        args = self.args
        self.open(args.idle, self.idle, "idle")
        self.open(args.conns, self.active, "active")
        if args.sync:
            emit("ready", idle=args.idle, conns=args.conns)
            sys.stdin.readline()
        for sock in self.active:
            self.selector.register(sock, selectors.EVENT_READ)
            self.send(sock)
        count = self.exchange(args.warmup) if self.active else 0
        window = Window()
        count = self.exchange(args.duration) if self.active else 0
        measured = window.close()
        return {"round_trips": count, "rate": count / measured["seconds"],
                "idle": args.idle, "conns": args.conns, "line_size": args.line_size,
                **measured}

    def send(self, sock: socket.socket) -> None:
        """Start one round trip."""
        self.got[sock] = 0
        sock.send(self.line)

    def exchange(self, seconds: float) -> int:
        """Round trips completed within ``seconds``."""
        size, count = len(self.line), 0
        end = time.perf_counter() + seconds
        last = time.perf_counter()
        while time.perf_counter() < end:
            for key, _ in self.selector.select(0.05):
                sock = key.fileobj
                data = sock.recv(65536)
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
        """Close every connection."""
        for sock in self.idle + self.active:
            sock.close()
        self.selector.close()


def pingpong(args: argparse.Namespace) -> Dict[str, Any]:
    """Ping-pong with the Python client."""
    client = PingPong(args)
    try:
        return client.run()
    finally:
        client.close()


CLIENTS: Dict[str, Callable[[argparse.Namespace], Dict[str, Any]]] = {
    "stream": stream, "bulk": bulk, "pingpong": pingpong,
}


def parse_args(argv: Optional[List[str]] = None) -> argparse.Namespace:
    """Command line (pingpong's options are loadgen.c's)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("client", choices=sorted(CLIENTS))
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--timeout", type=float, default=60.0)
    parser.add_argument("--line-size", type=int, default=16)
    parser.add_argument("--total", type=int, default=1 << 20)
    parser.add_argument("--conns", type=int, default=1)
    parser.add_argument("--idle", type=int, default=0)
    parser.add_argument("--warmup", type=float, default=0.5)
    parser.add_argument("--duration", type=float, default=2.0)
    parser.add_argument("--batch", type=int, default=500)
    parser.add_argument("--sync", action="store_true")
    return parser.parse_args(argv)


def main(argv: Optional[List[str]] = None) -> int:
    """Run one client; the result is the last line printed."""
    args = parse_args(argv)
    raise_nofile_limit()
    try:
        result = CLIENTS[args.client](args)
    except (ClientError, OSError) as exc:
        emit("result", ok=False, client="python", error=f"{type(exc).__name__}: {exc}"
             if isinstance(exc, OSError) else str(exc))
        return 1
    emit("result", ok=True, client="python", **result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
