"""pollchat's benchmark suite: ``python -m bench`` or ``python bench/run.py``.

    python -m bench --quick        # smoke test (< 2 min): every workload runs
    python -m bench                # full run (~15 min): bench/results/, RESULTS.md
    python -m bench --only idle,lines --impls pollchat,stdlib
    python -m bench --render bench/results/results.json   # redraw, no run

Outputs: results.json, results.md and one PNG per workload in the output
directory: bench/results/ for a complete full run, which also writes
bench/RESULTS.md and refreshes the headline block of any README that has
the markers (see report.HEADLINE_START); bench/results/quick/ for --quick,
bench/results/partial/ for a run narrowed by --only, --impls or --repeats.

Exit status: 0 when every implementation that could run produced numbers
on every workload (known select() FD_SETSIZE failures excepted), 1 when a
run failed unexpectedly, 2 on bad usage.  Missed targets are reported in
the output, not in the exit status.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

if __package__ in (None, ""):  # run as a script: make the package importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import loadgen, meta, plots, report, runner, targets  # noqa: E402
from bench.impls import Impl, discover  # noqa: E402
from bench.model import ResultSet  # noqa: E402
from bench.workloads import FULL, QUICK, Settings, Workload, select_workloads  # noqa: E402

BENCH = Path(__file__).resolve().parent
RESULTS = BENCH / "results"
RESULTS_MD = BENCH / "RESULTS.md"
READMES = (BENCH.parent / "README.md", BENCH / "README.md")


def parse_args(argv: Optional[Sequence[str]]) -> argparse.Namespace:
    """The command line."""
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.split("\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog=__doc__.split("\n", 1)[1])
    parser.add_argument("--quick", action="store_true",
                        help="smoke test: tiny sizes, one run each (under 2 minutes)")
    parser.add_argument("--only", help="comma-separated workloads "
                        "(idle, concurrency, lines, memory, bulk)")
    parser.add_argument("--impls", help="comma-separated implementations or prefixes "
                        "(e.g. pollchat,stdlib-poll,uvloop)")
    parser.add_argument("--repeats", type=int, help="runs per figure (median)")
    parser.add_argument("--out", type=Path, help="output directory")
    parser.add_argument("--python311", help="the Python 3.11 for stdlib asyncore")
    parser.add_argument("--python-client", action="store_true",
                        help="use the Python ping-pong client even if gcc is there")
    parser.add_argument("--no-pin", action="store_true",
                        help="do not pin server and client to separate CPUs")
    parser.add_argument("--list", action="store_true", help="list implementations and exit")
    parser.add_argument("--render", type=Path, metavar="RESULTS_JSON",
                        help="redraw report and plots from a results.json, run nothing")
    return parser.parse_args(argv)


def split(text: Optional[str]) -> List[str]:
    """'a, b' -> ['a', 'b']."""
    return [part.strip() for part in (text or "").split(",") if part.strip()]


def filter_impls(impls: List[Impl], wanted: List[str]) -> List[Impl]:
    """The implementations named (exactly or by prefix) in ``wanted``."""
    if not wanted:
        return impls
    chosen = [i for i in impls if any(i.key == w or i.key.startswith(w) for w in wanted)]
    if not chosen:
        raise ValueError(f"no implementation matches {', '.join(wanted)}; "
                         f"known: {', '.join(i.key for i in impls)}")
    return chosen


def settings_for(args: argparse.Namespace) -> Settings:
    """QUICK or FULL, with --repeats applied."""
    base = QUICK if args.quick else FULL
    if args.repeats:
        return Settings(**{**base.__dict__, "repeats": max(1, args.repeats)})
    return base


def prepare_tools(args: argparse.Namespace, tmp: Path) -> runner.Tools:
    """Build the load generator, choose CPUs, make the log directory."""
    logs = tmp / ("logs-quick" if args.quick else "logs")
    shutil.rmtree(logs, ignore_errors=True)
    logs.mkdir(parents=True)
    binary, description = (None, "Python ping-pong client (--python-client)") \
        if args.python_client else loadgen.build(tmp)
    server_cpu, client_cpu = (None, None) if args.no_pin else runner.default_cpus()
    if binary is None:
        print(f"NOTE: {description}")
        pingpong = (*runner.python_client(), "pingpong")
    else:
        pingpong = (str(binary), "pingpong")
    return runner.Tools(pingpong=pingpong, python_client=runner.python_client(),
                        loadgen=description, server_cpu=server_cpu, client_cpu=client_cpu,
                        logs=logs)


def warn_if_busy() -> None:
    """Say so when other processes keep the machine busy."""
    load = meta.loadavg()
    if load and load[0] > meta.BUSY_LOAD:
        print(f"WARNING: the machine is busy (load average {load[0]:.2f}): other processes "
              "compete for the CPUs and the figures will be noisy")


def print_impls(impls: List[Impl]) -> None:
    """What will run, and what will not and why."""
    for impl in impls:
        state = f"SKIPPED: {impl.skip}" if impl.skip else f"Python {impl.version}"
        print(f"  {impl.key:<16} {state}")


def collect(argv: Sequence[str], workloads: Sequence[Workload], impls: List[Impl], *,
            settings: Settings, tools: runner.Tools) -> Dict[str, Any]:
    """Run the matrix and assemble the results document."""
    started, t0, load_start = meta.now(), time.perf_counter(), meta.loadavg()
    cells = runner.run_all(workloads, impls, settings, tools,
                           progress=lambda line: print(line, flush=True))
    return {
        "schema": 1,
        "meta": {
            "mode": "quick" if settings.quick else "full", "started": started,
            "elapsed_s": time.perf_counter() - t0, "command": meta.command_line(list(argv)),
            "repeats": settings.repeats, "warmup": settings.warmup,
            "noisy_threshold": runner.NOISY_BACKGROUND, "noisy_retries": settings.noisy_retries,
            "noisy_budget": settings.noisy_budget,
            "duration": settings.duration, "loadgen": tools.loadgen,
            "server_cpu": tools.server_cpu, "client_cpu": tools.client_cpu,
            "machine": meta.machine(), "pythons": meta.pythons(impls),
            "commit": meta.git_commit(), "loadavg_start": load_start,
            "loadavg_end": meta.loadavg(), "background_cpu": meta.background(cells),
        },
        "impls": [i.to_json() for i in impls],
        "workloads": [w.to_json(settings) for w in workloads],
        "cells": cells,
    }


def annotate(data: Dict[str, Any]) -> ResultSet:
    """Add ratios and target outcomes to the document."""
    rs = ResultSet(data)
    for cell in data["cells"]:
        cell["baseline"] = rs.baseline(cell["workload"], cell["point"])
        cell["ratio"] = rs.ratio(cell["workload"], cell["point"], cell["impl"])
    data["targets"] = targets.check_all(rs)
    return rs


def publish(data: Dict[str, Any], outdir: Path, full_report: bool) -> None:
    """results.json, PNGs, results.md; for a full unfiltered run RESULTS.md and
    the README headline blocks too."""
    rs = annotate(data)
    outdir.mkdir(parents=True, exist_ok=True)
    drawn = plots.draw_all(rs, outdir)
    report.write_json(outdir / "results.json", data)
    (outdir / "results.md").write_text(
        report.markdown(rs, data["targets"], plots.plot_links(drawn, "")), encoding="utf-8")
    print(f"\nwrote {outdir / 'results.json'}, {outdir / 'results.md'} and "
          f"{len(drawn)} plot(s) in {outdir}")
    if not full_report:
        return
    rel = outdir.relative_to(BENCH).as_posix() + "/"  # RESULTS.md lives in bench/
    RESULTS_MD.write_text(report.markdown(rs, data["targets"], plots.plot_links(drawn, rel)),
                          encoding="utf-8")
    print(f"wrote {RESULTS_MD}")
    for readme in READMES:
        links = plots.plot_links(drawn, rel if readme.parent == BENCH else f"bench/{rel}")
        if report.update_headline(readme, report.headline(rs, links)):
            print(f"updated the headline block of {readme}")


def verdict(data: Dict[str, Any]) -> int:
    """Print targets and failures; 1 if something failed unexpectedly."""
    print("\nTargets:")
    for target in data["targets"]:
        print(f"  {target['status']:<4} {target['title']}\n       {target['detail']}")
    bad = [c for c in data["cells"] if c["status"] == "failed" and not c["expected_failure"]]
    expected = [c for c in data["cells"] if c["status"] == "failed" and c["expected_failure"]]
    numbers = [c for c in data["cells"] if c["status"] == "ok"]
    print(f"\n{len(numbers)} cells with numbers, {len(expected)} expected failures "
          f"(select FD_SETSIZE), {len(bad)} unexpected failures")
    for cell in bad:
        print(f"  FAILED {cell['workload']}/{cell['point']}/{cell['impl']}: {cell['error']}")
    return 1 if bad else 0


def default_outdir(settings: Settings, complete: bool) -> Path:
    """bench/results/ holds only complete full runs (RESULTS.md shows its
    plots); quick and partial runs go to subdirectories."""
    if settings.quick:
        return RESULTS / "quick"
    return RESULTS if complete else RESULTS / "partial"


def render(path: Path) -> int:
    """--render: rebuild outputs from a results.json (RESULTS.md and the
    README headline too when it is bench/results/results.json)."""
    data = json.loads(path.read_text(encoding="utf-8"))
    outdir = path.resolve().parent
    publish(data, outdir, full_report=outdir == RESULTS and data["meta"]["mode"] == "full")
    return verdict(data)


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Entry point."""
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    if args.render:
        return render(args.render)
    try:
        workloads = select_workloads(split(args.only))
        impls = filter_impls(discover(args.python311), split(args.impls))
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print("Implementations:")
    print_impls(impls)
    if args.list:
        return 0
    settings = settings_for(args)
    complete = not (args.only or args.impls or args.repeats)
    outdir = args.out or default_outdir(settings, complete)
    tools = prepare_tools(args, RESULTS / "tmp")
    warn_if_busy()
    print(f"Load generator: {tools.loadgen}\nMode: {'quick' if settings.quick else 'full'}, "
          f"{settings.repeats} run(s) per figure; output: {outdir}\n")
    data = collect(argv, workloads, impls, settings=settings, tools=tools)
    publish(data, outdir.resolve(), full_report=outdir == RESULTS)
    status = verdict(data)
    print(f"\ntotal time {data['meta']['elapsed_s']:.0f} s")
    return status


if __name__ == "__main__":
    sys.exit(main())
