"""``python -m bench --profile WORKLOAD``: one workload point with the server
under cProfile, for before/after profiles.

Each chosen implementation (default: ``pollchat-epoll``, plus
``pollchat-base-epoll`` with ``--baseline`` and ``stdlib-select`` with
``--profile-stdlib``) serves the same fixed amount of work: with a
request/reply workload the load generator stops after ``--profile-ops``
requests (100,000 by default), so that call counts compare directly.  The
server runs its event loop under cProfile (``--profile FILE``, see
servers/_common.py); the stats are written as ``.prof`` files (for
``pstats``/snakeviz) and as text: the top functions by cumulative and by own
time, with calls per unit of work.  Rates and CPU measured under the
profiler are inflated by it and only reported as such.

(Named profiling.py, not profile.py: a bench/profile.py would shadow the
standard library's ``profile``, which cProfile imports, whenever a script
runs from bench/.)
"""

from __future__ import annotations

import argparse
import pstats
from pathlib import Path
from typing import Any, Dict, List, Sequence, Tuple

from .impls import Impl
from .procs import ProcessFailed
from .runner import Job, Tools, run_once
from .workloads import Point, Settings, Workload

#: Requests a profiled run serves (the issue's profile used 100,000).
DEFAULT_OPS = 100_000
DEFAULT_TOP = 25

Row = Tuple[str, int, int, float, float]  # function, calls, primitive calls, own s, cumulative s


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The profiling options of ``python -m bench``."""
    group = parser.add_argument_group("profiling (--profile WORKLOAD)")
    group.add_argument("--profile", metavar="WORKLOAD",
                       help="run one point of WORKLOAD with the server under cProfile")
    group.add_argument("--point", help="the point to profile (default: the workload's last)")
    group.add_argument("--profile-ops", type=int, default=DEFAULT_OPS, metavar="N",
                       help=f"units of work per profiled run (default {DEFAULT_OPS:,})")
    group.add_argument("--profile-stdlib", action="store_true",
                       help="profile CPython 3.11's asyncore (stdlib-select) too")
    group.add_argument("--top", type=int, default=DEFAULT_TOP,
                       help=f"functions listed per table (default {DEFAULT_TOP})")


def default_impls(args: argparse.Namespace) -> List[str]:
    """The implementations profiled when --impls does not say."""
    keys = ["pollchat-epoll"]
    if args.baseline:
        keys.append("pollchat-base-epoll")
    if args.profile_stdlib:
        keys.append("stdlib-select")
    return keys


def pick_point(workload: Workload, settings: Settings, key: str = "") -> Point:
    """The point named ``key`` (default: the last one); ValueError if none."""
    points = workload.points(settings)
    if not key:
        return points[-1]
    for point in points:
        if point.key == key:
            return point
    raise ValueError(f"{workload.key} has no point {key!r}; choose from "
                     f"{', '.join(p.key for p in points)}")


def load_rows(path: Path) -> List[Row]:
    """Every function of a profile: (name, calls, primitive calls, own
    seconds, cumulative seconds)."""
    stats = pstats.Stats(str(path))
    rows = []
    for (filename, line, name), entry in stats.stats.items():  # type: ignore[attr-defined]
        primitive, calls, own, cumulative = entry[:4]
        rows.append((describe(filename, line, name), calls, primitive, own, cumulative))
    return rows


def describe(filename: str, line: int, name: str) -> str:
    """``pollchat/chat.py:317(_scan_input)``, or ``{method 'send' ...}`` for builtins."""
    if filename == "~":
        return name
    parts = Path(filename).parts
    return f"{'/'.join(parts[-2:])}:{line}({name})"


def top_table(rows: List[Row], by: int, count: int, ops: float) -> str:
    """A text table of the ``count`` rows with the largest column ``by``."""
    chosen = sorted(rows, key=lambda r: r[by], reverse=True)[:count]
    lines = [f"{'calls':>10} {'per op':>8} {'own s':>8} {'cum s':>8}  function"]
    for name, calls, primitive, own, cumulative in chosen:
        shown = f"{calls}" if calls == primitive else f"{calls}/{primitive}"
        per_op = f"{calls / ops:8.2f}" if ops else f"{'n/a':>8}"
        lines.append(f"{shown:>10} {per_op} {own:8.3f} {cumulative:8.3f}  {name}")
    return "\n".join(lines)


def report(title: str, metrics: Dict[str, float], rows: List[Row], top: int, op: str) -> str:
    """The text written next to a .prof file."""
    ops = metrics.get("ops", 0.0)
    head = [title,
            f"{ops:,.0f} {op}s in {metrics.get('seconds', 0):.2f} s; server CPU in the "
            f"window {metrics.get('server_cpu_seconds', 0):.2f} s "
            f"({metrics.get('server_us_per_op', float('nan')):.1f} µs per {op}, inflated by "
            "the profiler)",
            f"total own time of profiled functions: {sum(r[3] for r in rows):.2f} s", ""]
    return "\n".join(head + [f"Top {top} by cumulative time:", top_table(rows, 4, top, ops), "",
                             f"Top {top} by own time:", top_table(rows, 3, top, ops), ""])


def run(args: argparse.Namespace, workload: Workload, impls: Sequence[Impl], *,
        settings: Settings, tools: Tools, outdir: Path) -> int:
    """Profile each implementation on one point; 1 if any run failed."""
    point = pick_point(workload, settings, args.point or "")
    outdir.mkdir(parents=True, exist_ok=True)
    client_extra = ["--ops", str(args.profile_ops)] if workload.client == "script" else []
    status = 0
    summary: List[Tuple[str, Any]] = []
    for impl in impls:
        if impl.skip or not workload.applies(impl, point):
            print(f"{impl.key}: not profiled ({impl.skip or 'does not run this workload'})")
            continue
        stem = f"{workload.key}.{point.key}.{impl.key}"
        prof = outdir / f"{stem}.prof"
        prof.unlink(missing_ok=True)
        print(f"profiling {impl.key} on {workload.key} / {point.label} ...", flush=True)
        try:
            metrics, note = run_once(Job(workload, point, impl), settings, tools,
                                     f"profile.{stem}", server_extra=["--profile", str(prof)],
                                     client_extra=client_extra)
        except ProcessFailed as exc:
            print(f"  FAILED: {exc}")
            status = 1
            continue
        if not prof.exists():
            print(f"  FAILED: the server wrote no profile ({note or 'no message'})")
            status = 1
            continue
        title = (f"{impl.key} (Python {impl.version}) on {workload.title}: {point.label}, "
                 "server under cProfile")
        text = report(title, metrics, load_rows(prof), args.top, workload.op[0])
        (outdir / f"{stem}.txt").write_text(text, encoding="utf-8")
        print(text)
        summary.append((impl.key, outdir / f"{stem}.txt"))
    for key, path in summary:
        print(f"wrote {path} (and .prof) for {key}")
    return status
