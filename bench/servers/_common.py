"""What the benchmark servers share: command line, limits, deadline, hand-shake.

The servers are stand-alone scripts (run under whichever interpreter the
harness picks, the stdlib competitors under Python 3.11), so this module
uses the standard library only and is imported as a sibling module.

Wire protocol, the same for every server and every mode (lines end in ``\\n``):

* ``QUIT``: stop serving (any mode, any connection).
* mode ``echo``: every other line is sent back as is.
* mode ``count``: lines are counted; ``END`` answers ``COUNT <lines> <bytes>``
  (bytes without the newlines) and resets the counters.
* mode ``push``: ``PUSH <n>`` makes the server push ``n`` bytes.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import signal
import sys
from typing import Any, Dict, List, Optional

MODES = ("echo", "count", "push")


def parse_args(description: str, extra: Optional[List[dict]] = None) -> argparse.Namespace:
    """The options every server takes, plus ``extra`` (dicts of add_argument
    keywords, each with a ``flags`` key)."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--mode", choices=MODES, default="echo")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="0: any free port")
    parser.add_argument("--backlog", type=int, default=4096)
    parser.add_argument("--max-seconds", type=float, default=300.0,
                        help="exit by itself after this long, whatever happens")
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


def runtime_info(impl: str) -> Dict[str, Any]:
    """What this server process runs on (reported to the harness)."""
    info: Dict[str, Any] = {
        "impl": impl,
        "python": platform.python_version(),
        "executable": sys.executable,
        "pid": os.getpid(),
    }
    if "pollchat" in sys.modules:
        try:
            from pollchat.backends import choose_backend

            info["backend"] = choose_backend()
        except Exception as exc:  # informative only
            info["backend"] = f"unknown ({exc})"
    return info


def announce(port: int, info: Dict[str, Any]) -> None:
    """Tell the harness where we listen: an ``INFO {json}`` then a ``PORT n`` line."""
    sys.stdout.write(f"INFO {json.dumps(info)}\nPORT {port}\n")
    sys.stdout.flush()


def parse_push(line: bytes) -> Optional[int]:
    """The byte count of a ``PUSH <n>`` line, else None."""
    if not line.startswith(b"PUSH "):
        return None
    try:
        return max(0, int(line[5:]))
    except ValueError:
        return None
