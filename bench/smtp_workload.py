"""The mail workload: 1 KB messages over 50 SMTP sessions, in messages per
server CPU-second, pollchat.smtpd against CPython 3.11's smtpd on its own
asyncore, in the same run.

``SMTP`` is the workload's entry for the table in ``workloads.py``; see
"How it plugs in" below for the three places the generic harness must learn
about it.  Until then, this module runs it by itself with the harness's own
process tools::

    python -m bench.smtp_workload            # full: 3 runs each
    python -m bench.smtp_workload --quick    # smoke: one short run each

How it plugs in (for the harness's owner):

1. ``workloads.METRICS`` gains ``msgs_per_cpu_s`` ("messages per server
   CPU-second") and ``WORKLOADS`` gains ``SMTP``.
2. The server program: for ``server_mode == "smtp"`` the legacy impls run
   ``servers/smtp_server.py`` (same ``--impl``/``--use-poll`` flags) instead
   of ``legacy_server.py``, without ``--mode``; ``Workload.applies()`` is
   false for the asyncio family (there is no asyncio smtpd to compare).
3. The client: ``client == "smtp"`` runs ``smtp_client.py`` with
   :func:`client_args` (it prints the same JSON events as ``clients.py``).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from pathlib import Path
from typing import Any, Dict, List, Optional

from .impls import HERE, Impl, discover
from .procs import ProcessFailed, Server, run_client
from .workloads import FULL, QUICK, Point, Settings, Workload

SMTP_SERVER = str(Path(HERE) / "servers" / "smtp_server.py")
SMTP_CLIENT = str(Path(HERE) / "smtp_client.py")

_POINT = Point("smtp50", "1 KB messages, 50 sessions", {"conns": 50, "size": 1024})

SMTP = Workload(
    key="smtp", title="Mail (smtpd)",
    description="50 SMTP sessions send 1 KB messages back to back (MAIL, RCPT and DATA "
                "pipelined, then the message) to an smtpd.SMTPServer subclass that "
                "counts them: the same program on pollchat.smtpd and on CPython 3.11's "
                "smtpd and asyncore. Messages per server CPU-second (the server reports "
                "its CPU time at both ends of the window).",
    server_mode="smtp", client="smtp",
    metrics=("msgs_per_cpu_s", "rate", "client_cpu", "server_cpu"),
    full=(_POINT,), quick=(_POINT,), baselines=("stdlib-select", "stdlib-poll"))


def server_argv(impl: Impl, settings: Settings) -> List[str]:
    """The mail server's command line for a legacy (pollchat/stdlib) impl."""
    flags = [arg for arg in impl.server[1:]]  # --impl X [--use-poll]
    return [impl.python, SMTP_SERVER, *flags, "--max-seconds",
            str(settings.server_max_seconds)]


def client_args(point: Point, settings: Settings, port: int) -> List[str]:
    """The client's options for ``point``."""
    return [str(a) for a in ("--port", port, "--conns", point.params["conns"], "--size",
                             point.params["size"], "--warmup", settings.warmup, "--duration",
                             settings.duration, "--timeout", settings.client_timeout)]


def run_one(impl: Impl, settings: Settings, logs: Path, tag: str) -> Dict[str, Any]:
    """One server and one client run; the client's result."""
    server = Server(server_argv(impl, settings), impl.env, logs / f"{tag}.server.log")
    server.start()
    try:
        run = run_client([sys.executable, SMTP_CLIENT, *client_args(_POINT, settings,
                                                                     server.port)],
                         server, logs / f"{tag}.client.log", settings.run_timeout())
        if not run.result.get("ok"):
            raise ProcessFailed(str(run.result.get("error")))
        server.stop()
        return run.result
    finally:
        server.kill()


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="one short run each")
    parser.add_argument("--python311", help="the interpreter for CPython 3.11's smtpd")
    args = parser.parse_args(argv)
    settings = QUICK if args.quick else FULL
    impls = [impl for impl in discover(args.python311)
             if impl.family in ("pollchat", "stdlib") and not impl.skip
             and impl.key in ("pollchat-epoll", "pollchat-poll", "stdlib-select",
                              "stdlib-poll")]
    if not any(impl.family == "stdlib" for impl in impls):
        print("no Python 3.11 found: nothing to compare with", file=sys.stderr)
        return 2
    medians: Dict[str, float] = {}
    failed = False
    with tempfile.TemporaryDirectory(prefix="pollchat-smtp-bench-") as tmp:
        for impl in impls:
            figures = []
            for repeat in range(settings.repeats):
                try:
                    result = run_one(impl, settings, Path(tmp), f"{impl.key}.{repeat}")
                except ProcessFailed as exc:
                    print(f"{impl.key:<16} failed: {exc}")
                    failed = True
                    break
                figures.append(result["msgs_per_cpu_s"])
                print(f"{impl.key:<16} {result['msgs_per_cpu_s']:>9,.0f} msgs/server CPU-s "
                      f"{result['rate']:>9,.0f} msgs/s  ({result['messages']} messages)")
            if figures:
                medians[impl.key] = statistics.median(figures)
    base = next((medians[key] for key in SMTP.baselines if key in medians), None)
    if base:
        for key, value in medians.items():
            print(f"{key:<16} median {value:>9,.0f} msgs/server CPU-s  ({value / base:.2f}x)")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
