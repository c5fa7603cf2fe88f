"""The benchmark's Python clients, run by the harness as separate processes.

Stand-alone (standard library only)::

    python bench/clients.py stream --port P --line-size 20 --total 100000000
    python bench/clients.py bulk --port P --total 1000000000
    python bench/clients.py run --script FILE --port P --conns 100 [--idle N] [--sync]

``run`` is the Python twin of ``loadgen.c`` (same options, same output),
used only when gcc is missing.  Every client prints one JSON object per line
on stdout: the events ``ready`` (``--sync`` only; then a line on stdin says
go), ``start`` and ``end`` around the measured window, and the ``result``.
Every loop is bounded in time by ``--timeout``.
"""

from __future__ import annotations

import argparse
import functools
import json
import operator
import resource
import selectors
import socket
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Dict, List, Optional

if TYPE_CHECKING or __package__:
    from .scripts import LINE_HELLO, Exchange, Script
else:  # run as a script by the harness, with the standard library only
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from scripts import LINE_HELLO, Exchange, Script

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
    return {"lines": lines_total, "ops": lines_total, "bytes": nbytes,
            "line_size": args.line_size,
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
    return {"bytes": received, "ops": received / 1e6,  # the unit of work is the MB
            "mb_per_s": received / measured["seconds"] / 1e6, **measured}


# -- scripted request/reply (fallback for loadgen.c) -------------------------


class Connection:
    """One non-blocking connection playing exchanges of a script."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.exchange = LINE_HELLO  # replaced by start() before any use
        self.sent = 0
        self.got = 0
        self.next = 0  # index of the next exchange of the cycle

    def start(self, exchange: Exchange) -> None:
        """Send ``exchange``'s request (what fits now; :meth:`flush` the rest)."""
        self.exchange, self.sent, self.got = exchange, 0, 0
        self.flush()

    def flush(self) -> None:
        """Write more of the request."""
        request = self.exchange.request
        while self.sent < len(request):
            try:
                self.sent += self.sock.send(request[self.sent:])
            except BlockingIOError:
                return

    def sending(self) -> bool:
        """Whether part of the request is still to be written."""
        return self.sent < len(self.exchange.request)

    def read(self, what: str) -> bool:
        """Read and check what arrived; True once the reply is complete."""
        reply = self.exchange.reply
        while True:
            try:
                data = self.sock.recv(65536)
            except BlockingIOError:
                return False
            if not data:
                raise ClientError(f"server closed an {what} connection")
            if reply[self.got:self.got + len(data)] != data:
                raise ClientError(f"unexpected reply on {what} connection at byte "
                                  f"{self.got} of {len(reply)}: {data[:80]!r}")
            self.got += len(data)
            if self.got == len(reply):
                return True


class ScriptClient:
    """Plays a script on many non-blocking connections (see loadgen.c)."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.script = Script.read(args.script)
        self.selector = selectors.DefaultSelector()
        self.idle: List[Connection] = []
        self.active: List[Connection] = []
        self.issued = 0
        self.outstanding = 0

    def open(self, count: int, keep: List[Connection], what: str) -> None:
        """Open ``count`` connections, each doing the hello exchange, in batches."""
        for lo in range(0, count, self.args.batch):
            batch = [Connection(self.connect_one(what, lo + i, count))
                     for i in range(min(self.args.batch, count - lo))]
            for conn in batch:
                conn.sock.setblocking(False)
                self.selector.register(conn.sock, selectors.EVENT_READ, conn)
                conn.start(self.script.hello)
            pending = set(batch)
            # Done when no connection of the batch is pending any more.
            self.pump(pending.discard, functools.partial(operator.not_, pending), what)
            if what == "idle":
                for conn in batch:
                    self.selector.unregister(conn.sock)
            keep.extend(batch)

    def connect_one(self, what: str, index: int, count: int) -> socket.socket:
        """One connection, with a helpful error."""
        try:
            return connect(self.args)
        except OSError as exc:
            raise ClientError(f"connect on {what} connection #{index + 1} of {count}: "
                              f"{exc}") from None

    def pump(self, on_reply: Callable[[Connection], None], done: Callable[[], bool],
             what: str) -> None:
        """Serve events until ``done()``; ``on_reply`` gets each connection
        whose exchange completed.  Fails after --timeout without progress."""
        last = time.perf_counter()
        while not done():
            for key, events in self.selector.select(0.05):
                conn = key.data
                if events & selectors.EVENT_WRITE:
                    conn.flush()
                    self.watch(conn)
                if events & selectors.EVENT_READ and conn.read(what):
                    on_reply(conn)
                last = time.perf_counter()
            if time.perf_counter() - last > self.args.timeout:
                raise ClientError(f"no reply for {self.args.timeout:.0f} s (server stalled?)")

    def watch(self, conn: Connection) -> None:
        """Watch for writability only while part of a request is unsent."""
        events = selectors.EVENT_READ | (selectors.EVENT_WRITE if conn.sending() else 0)
        if self.selector.get_key(conn.sock).events != events:
            self.selector.modify(conn.sock, events, conn)

    def issue(self, conn: Connection) -> None:
        """Send the next exchange of the cycle, unless --ops is reached."""
        if self.args.ops and self.issued >= self.args.ops:
            return
        exchange = self.script.cycle[conn.next]
        conn.next = (conn.next + 1) % len(self.script.cycle)
        self.issued += exchange.ops
        self.outstanding += 1
        conn.start(exchange)
        self.watch(conn)

    def run(self) -> Dict[str, Any]:
        """Open, optionally sync, then play for warmup + duration (or --ops)."""
        args = self.args
        warmup = 0.0 if args.ops else args.warmup
        self.open(args.idle, self.idle, "idle")
        self.open(args.conns, self.active, "active")
        if args.sync:
            emit("ready", idle=args.idle, conns=args.conns)
            sys.stdin.readline()
        if not self.active:
            window = Window()
            return {"round_trips": 0, "ops": 0, "rate": 0.0, "idle": args.idle, "conns": 0,
                    **window.close()}
        for conn in self.active:
            self.issue(conn)
        counts = [0, 0]  # round trips, ops: of the measured window only

        def completed(conn: Connection) -> None:
            self.outstanding -= 1
            if measuring:
                counts[0] += 1
                counts[1] += conn.exchange.ops
            self.issue(conn)

        measuring = False
        end = time.perf_counter() + warmup
        self.pump(completed, lambda: time.perf_counter() >= end, "active")
        measuring = True
        window = Window()
        end = time.perf_counter() + args.duration
        self.pump(completed, (lambda: self.outstanding == 0) if args.ops
                  else (lambda: time.perf_counter() >= end), "active")
        measured = window.close()
        return {"round_trips": counts[0], "ops": counts[1],
                "rate": counts[1] / measured["seconds"], "idle": args.idle,
                "conns": args.conns, **measured}

    def close(self) -> None:
        """Close every connection."""
        for conn in self.idle + self.active:
            conn.sock.close()
        self.selector.close()


def run(args: argparse.Namespace) -> Dict[str, Any]:
    """Play a script with the Python client."""
    if not args.script:
        raise ClientError("run needs --script")
    client = ScriptClient(args)
    try:
        return client.run()
    finally:
        client.close()


CLIENTS: Dict[str, Callable[[argparse.Namespace], Dict[str, Any]]] = {
    "stream": stream, "bulk": bulk, "run": run,
}


def parse_args(argv: Optional[List[str]] = None) -> argparse.Namespace:
    """Command line (run's options are loadgen.c's)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("client", choices=sorted(CLIENTS))
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--timeout", type=float, default=60.0)
    parser.add_argument("--line-size", type=int, default=16)
    parser.add_argument("--script", help="run: the script file (bench/scripts.py)")
    parser.add_argument("--ops", type=int, default=0,
                        help="run: count this many ops from the start instead of a duration")
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
