"""What the benchmark servers share: command line, limits, deadline, hand-shake,
profiling, and the application logic of each protocol.

The servers are stand-alone scripts (run under whichever interpreter the
harness picks, the stdlib competitors under Python 3.11), so this module
uses the standard library only and is imported as a sibling module.

Every server script takes ``--mode`` (one of :data:`MODES`), ``--host``,
``--port``, ``--backlog``, ``--max-seconds`` and ``--profile``, prints an
``INFO {json}`` line (with ``"quit"``: the bytes that stop it) and a
``PORT <n>`` line, and serves until it receives its quit message or until
``--max-seconds`` have passed.

Wire protocols, the same for every server:

* ``echo``, ``count``, ``push``: lines ending in ``\\n``; ``QUIT`` stops.
  ``echo`` sends every other line back; ``count`` counts lines and answers
  ``END`` with ``COUNT <lines> <bytes>`` (bytes without the newlines);
  ``push`` answers ``PUSH <n>`` with ``n`` bytes in one push.
* ``kv``: a key-value protocol in the style of Redis's RESP, line headers
  plus count-terminated payloads: ``SET <key> <n>\\r\\n<n bytes>\\r\\n`` ->
  ``+OK\\r\\n``; ``GET <key>\\r\\n`` -> ``$<n>\\r\\n<n bytes>\\r\\n`` (``$-1\\r\\n``
  if unset); ``QUIT\\r\\n`` stops.  An error gets ``-ERR <why>\\r\\n`` and the
  connection is closed (a framing error leaves nothing to resynchronise on).
* ``http``: HTTP/1.1 keep-alive GET; every request gets :data:`HTTP_OK`;
  ``GET /quit`` stops.

The framing (where a request ends) is each server's own business, as in a
real program; what a complete request means (:class:`KVStore`,
:func:`http_reply`) is shared, so that only the framework differs.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import platform
import signal
import sys
from typing import Any, Callable, Dict, List, Optional, Tuple

#: mode -> the message that stops the server.
MODES: Dict[str, bytes] = {
    "echo": b"QUIT\n",
    "count": b"QUIT\n",
    "push": b"QUIT\n",
    "kv": b"QUIT\r\n",
    "http": b"GET /quit HTTP/1.1\r\nHost: bench\r\n\r\n",
}


def parse_args(description: str, extra: Optional[List[Dict[str, Any]]] = None
               ) -> argparse.Namespace:
    """The options every server takes, plus ``extra`` (dicts of add_argument
    keywords, each with a ``flags`` key)."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--mode", choices=sorted(MODES), default="echo")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="0: any free port")
    parser.add_argument("--backlog", type=int, default=4096)
    parser.add_argument("--max-seconds", type=float, default=300.0,
                        help="exit by itself after this long, whatever happens")
    parser.add_argument("--profile", metavar="FILE",
                        help="run the event loop under cProfile and write the stats here")
    for option in extra or ():
        keywords = {k: v for k, v in option.items() if k != "flags"}
        parser.add_argument(*option["flags"], **keywords)
    return parser.parse_args()


def raise_nofile_limit() -> None:
    """Raise the soft RLIMIT_NOFILE to the hard limit (10,000 connections)."""
    try:
        import resource
    except ImportError:  # not POSIX
        return
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


class DeadlinePassed(SystemExit):
    """Raised (from SIGALRM) when the server outlives ``--max-seconds``."""


def arm_deadline(seconds: float) -> None:
    """Make the process exit with status 3 after ``seconds``, even if its event
    loop never returns (asyncore re-raises SystemExit out of handlers)."""

    def expire(signum: int, frame: Any) -> None:
        sys.stderr.write(f"server: deadline of {seconds:.0f} s passed, exiting\n")
        raise DeadlinePassed(3)

    signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, max(seconds, 0.001))


def runtime_info(impl: str, mode: str) -> Dict[str, Any]:
    """What this server process runs on (reported to the harness)."""
    info: Dict[str, Any] = {
        "impl": impl,
        "mode": mode,
        "quit": MODES[mode].decode("latin-1"),
        "python": platform.python_version(),
        "executable": sys.executable,
        "pid": os.getpid(),
    }
    if "pollchat" in sys.modules:
        try:
            pollchat = importlib.import_module("pollchat")
            backends = importlib.import_module("pollchat.backends")
            info["pollchat"] = os.path.dirname(os.path.abspath(pollchat.__file__ or ""))
            info["backend"] = backends.choose_backend()
        except Exception as exc:  # informative only
            info["backend"] = f"unknown ({exc})"
    return info


def announce(port: int, info: Dict[str, Any]) -> None:
    """Tell the harness where we listen: an ``INFO {json}`` then a ``PORT n`` line."""
    sys.stdout.write(f"INFO {json.dumps(info)}\nPORT {port}\n")
    sys.stdout.flush()


def serve(run_loop: Callable[[], None], args: argparse.Namespace) -> int:
    """Arm the deadline and run the event loop, under cProfile with
    ``--profile`` (the stats are written however the loop ends)."""
    arm_deadline(args.max_seconds)
    if not args.profile:
        run_loop()
        return 0
    import cProfile

    profiler = cProfile.Profile()
    profiler.enable()
    try:
        run_loop()
    finally:
        profiler.disable()
        profiler.dump_stats(args.profile)
    return 0


# -- line protocols ----------------------------------------------------------


def parse_push(line: bytes) -> Optional[int]:
    """The byte count of a ``PUSH <n>`` line, else None."""
    if not line.startswith(b"PUSH "):
        return None
    try:
        return max(0, int(line[5:]))
    except ValueError:
        return None


# -- kv ------------------------------------------------------------------------

KV_OK = b"+OK\r\n"
KV_NIL = b"$-1\r\n"
#: Largest value a SET may carry.
KV_MAX_VALUE = 1 << 20


class KVError(ValueError):
    """A request the kv protocol cannot serve; the message is the reply text."""


class KVStore:
    """The data of the kv protocol, shared by every connection of a server."""

    def __init__(self) -> None:
        self.values: Dict[bytes, bytes] = {}

    def get(self, key: bytes) -> bytes:
        """The reply to ``GET key``."""
        value = self.values.get(key)
        if value is None:
            return KV_NIL
        return b"$%d\r\n%s\r\n" % (len(value), value)

    def set(self, key: bytes, value: bytes) -> bytes:
        """Store ``value``; the reply to ``SET``."""
        self.values[key] = value
        return KV_OK


def kv_header(line: bytes) -> Tuple[bytes, bytes, int]:
    """Parse one header line (without its ``\\r\\n``): ``(b"GET", key, -1)``,
    ``(b"SET", key, size)`` or ``(b"QUIT", b"", -1)``.  Raises KVError."""
    parts = line.split()
    command = parts[0].upper() if parts else b""
    if command == b"GET" and len(parts) == 2:
        return b"GET", parts[1], -1
    if command == b"SET" and len(parts) == 3:
        try:
            size = int(parts[2])
        except ValueError:
            raise KVError("bad length") from None
        if not 0 <= size <= KV_MAX_VALUE:
            raise KVError("bad length")
        return b"SET", parts[1], size
    if command == b"QUIT" and len(parts) == 1:
        return b"QUIT", b"", -1
    raise KVError("unknown command")


def kv_error(why: str) -> bytes:
    """The error reply."""
    return b"-ERR %s\r\n" % why.encode("ascii", "replace")


# -- http ----------------------------------------------------------------------

HTTP_BODY = b"Hello, world!\n"
HTTP_OK = (b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: %d\r\n\r\n%s"
           % (len(HTTP_BODY), HTTP_BODY))
HTTP_BAD = b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
HTTP_QUIT_PATH = b"/quit"


def http_reply(head: bytes) -> Tuple[bytes, bool, bool]:
    """Answer one request head (request line and headers, without the blank
    line).  Returns ``(reply, close_after, quit)``.

    Parses what a small keep-alive server must: the request line, the
    headers into a dict, and ``Connection``.  Requests with a body are
    refused (the benchmark sends none)."""
    lines = head.split(b"\r\n")
    request = lines[0].split(b" ")
    if len(request) != 3 or not request[2].startswith(b"HTTP/1."):
        return HTTP_BAD, True, False
    method, path, version = request
    headers: Dict[bytes, bytes] = {}
    for line in lines[1:]:
        name, sep, value = line.partition(b":")
        if not sep:
            return HTTP_BAD, True, False
        headers[name.strip().lower()] = value.strip()
    if method != b"GET" or headers.get(b"content-length", b"0") != b"0":
        return HTTP_BAD, True, False
    if path == HTTP_QUIT_PATH:
        return b"", True, True
    connection = headers.get(b"connection", b"").lower()
    close = connection == b"close" or (version == b"HTTP/1.0" and connection != b"keep-alive")
    return HTTP_OK, close, False
