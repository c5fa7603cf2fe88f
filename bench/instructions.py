"""Instructions per unit of work, counted by valgrind's callgrind.

The server's user-space instructions per request do not move with the load
of a shared machine (the same count twice, whatever else runs), so they
show a change of a few percent that the timed workloads cannot.  They count
no kernel work and no cache misses: the timed workloads (their user/kernel
CPU split) stay the judges of speed; this is the microscope.

    python -m bench.instructions --workload keepalive
    python -m bench.instructions --workload concurrency --impl stdlib
    python -m bench.instructions --workload pipeline --point set-x16 --seconds 10

Each run: the asyncore/asynchat benchmark server (servers/legacy_server.py,
``--impl pollchat`` on epoll, or ``--impl stdlib``: CPython's own modules,
3.11 only) under ``valgrind --tool=callgrind``, the C load generator on the
workload's point; the counters are zeroed when the load generator starts its
measured window and dumped when it ends, so instructions and requests cover
the same window.  Prints instructions per unit of work; ``--out`` keeps the
callgrind file for ``callgrind_annotate``.  Needs valgrind and gcc.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Dict, List, Optional, Sequence

from .loadgen import build
from .workloads import WORKLOADS, Workload

BENCH = Path(__file__).resolve().parent
SERVER = BENCH / "servers" / "legacy_server.py"


def read_totals(callgrind_out: str) -> Dict[str, int]:
    """The totals of a callgrind output file's text, by event name (``Ir``
    for instructions; with the cache simulation also ``D1mr``, ``Bim``...),
    from its ``events:`` and ``summary:`` (or ``totals:``) lines."""
    names: List[str] = []
    for line in callgrind_out.splitlines():
        if line.startswith("events:"):
            names = line.split()[1:]
        match = re.match(r"(?:summary|totals):\s+([\d ]+)$", line)
        if match and names:
            return dict(zip(names, map(int, match.group(1).split())))
    raise ValueError("no events and summary lines: not a callgrind output file")


def read_total(callgrind_out: str) -> int:
    """The instruction total of a callgrind output file's text."""
    return read_totals(callgrind_out)["Ir"]


def find_workload(key: str) -> Workload:
    for workload in WORKLOADS:
        if workload.key == key:
            return workload
    raise ValueError(f"unknown workload {key!r}")


def count(workload: Workload, point_key: Optional[str], impl: str, *, seconds: float,
          out: Path, loadgen: Path, cache_sim: bool = False) -> Dict[str, float]:
    """Run one measurement; returns ops, instructions and their ratio."""
    points = {point.key: point for point in workload.full}
    point = points[point_key] if point_key else workload.full[-1]
    script = out.parent / f"{workload.key}.script"
    if workload.script is None:
        raise ValueError(f"{workload.key} has no client script")
    workload.script(point.params).write(script)
    env = dict(os.environ, POLLCHAT_BACKEND="epoll")
    server = subprocess.Popen(
        ["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}",
         *(["--cache-sim=yes", "--branch-sim=yes"] if cache_sim else []), sys.executable,
         str(SERVER), "--impl", impl, "--mode", workload.server_mode, "--port", "0",
         "--max-seconds", str(seconds + 300)],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=env, text=True)
    try:
        assert server.stdout is not None
        port = 0
        while not port:
            line = server.stdout.readline()
            if not line:
                raise RuntimeError("the server exited before announcing its port")
            if line.startswith("PORT "):
                port = int(line[5:])
        client = subprocess.Popen(
            [str(loadgen), "run", "--script", str(script), "--port", str(port),
             "--conns", str(point.params.get("conns", 1)), "--warmup", "2",
             "--duration", str(seconds), "--timeout", "120", "--sync"],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        assert client.stdin is not None and client.stdout is not None
        result: Dict[str, float] = {}
        for line in client.stdout:
            event = json.loads(line)
            kind = event.get("event")
            if kind == "ready":
                client.stdin.write("go\n")
                client.stdin.flush()
            elif kind in ("start", "end"):
                flag = "-z" if kind == "start" else "-d"
                subprocess.run(["callgrind_control", flag, str(server.pid)],
                               capture_output=True, check=True, timeout=120)
            elif kind == "result":
                if not event.get("ok"):
                    raise RuntimeError(f"the load generator failed: {event}")
                result = event
        client.wait(timeout=60)
    finally:
        server.kill()
        server.wait()
    dumps = sorted(out.parent.glob(out.name + ".*"), key=lambda p: p.stat().st_mtime)
    if not dumps or not result:
        raise RuntimeError("no callgrind dump or no result")
    totals = read_totals(dumps[-1].read_text(errors="replace"))
    ops = float(result["ops"])
    numbers = {"ops": ops, "instructions": float(totals["Ir"]),
               "per_op": totals["Ir"] / ops if ops else 0.0}
    for event in ("D1mr", "Bim"):  # with the cache simulation, per 1,000 instructions
        if event in totals and totals["Ir"]:
            numbers[event] = 1000.0 * totals[event] / totals["Ir"]
    return numbers


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workload", default="keepalive",
                        help="concurrency, keepalive or pipeline (a script workload)")
    parser.add_argument("--point", help="the workload's point (default: its last)")
    parser.add_argument("--impl", action="append", choices=["pollchat", "stdlib"],
                        help="repeatable (default: both)")
    parser.add_argument("--seconds", type=float, default=6.0,
                        help="the measured window (valgrind runs the server ~50x slower)")
    parser.add_argument("--out", type=Path, help="directory to keep the callgrind files in")
    parser.add_argument("--cache-sim", action="store_true",
                        help="also simulate the caches and branch predictors: L1 data read "
                             "misses and indirect-branch mispredictions per 1,000 "
                             "instructions (slower)")
    args = parser.parse_args(argv)
    missing = [tool for tool in ("valgrind", "callgrind_control") if not shutil.which(tool)]
    if missing:
        print(f"needs {', '.join(missing)} (Debian: apt-get install valgrind)", file=sys.stderr)
        return 2
    workload = find_workload(args.workload)
    if workload.client != "script":
        print(f"{workload.key} is not a script workload", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory() as tmp:
        where = args.out or Path(tmp)
        where.mkdir(parents=True, exist_ok=True)
        loadgen, how = build(Path(tmp) / "loadgen")
        if loadgen is None:
            print(how, file=sys.stderr)
            return 2
        rows: List[str] = []
        for impl in args.impl or ["pollchat", "stdlib"]:
            numbers = count(workload, args.point, impl, seconds=args.seconds,
                            out=where / f"callgrind.{workload.key}.{impl}", loadgen=loadgen,
                            cache_sim=args.cache_sim)
            rows.append(f"{impl:9} {numbers['per_op']:>10,.0f} instructions per "
                        f"{workload.op[0]} ({numbers['ops']:,.0f} {workload.op[1]})")
            if "D1mr" in numbers:
                rows[-1] += (f"; per 1,000 instructions {numbers['D1mr']:.1f} L1 data read "
                             f"misses, {numbers['Bim']:.1f} indirect-branch mispredictions")
            print(rows[-1], flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
