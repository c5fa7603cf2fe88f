"""pollchat's benchmark suite: ``python -m bench`` or ``python bench/run.py``.

    python -m bench --quick        # smoke test (~1 min): every workload runs
    python -m bench                # full run (~20 min): bench/results/, RESULTS.md
    python -m bench --only pipeline,keepalive --impls pollchat-epoll,stdlib-select,uvloop
    python -m bench --baseline main~5 --python313   # before/after, and 3.13, in one run
    python -m bench --profile pipeline --point set-x16   # cProfile of one workload
    python -m bench --render bench/results/results.json   # redraw, no run

Outputs: results.json, results.md and one PNG per workload in the output
directory: bench/results/ for a complete full run, which also writes
bench/RESULTS.md and refreshes the headline block of any README that has
the markers (see report.HEADLINE_START); bench/results/quick/ for --quick,
bench/results/partial/ for a run narrowed by --only, --impls, --repeats,
--baseline or an extra interpreter.

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

from bench import loadgen, meta, plots, profiling, report, runner, targets  # noqa: E402
from bench import trees as trees_mod  # noqa: E402
from bench.impls import Context, Impl, discover, find_python  # noqa: E402
from bench.model import ResultSet  # noqa: E402
from bench.procs import cpu_clock  # noqa: E402
from bench.trees import TreeError  # noqa: E402
from bench.workloads import (  # noqa: E402
    FULL,
    QUICK,
    WORKLOADS,
    Settings,
    Workload,
    select_workloads,
)

BENCH = Path(__file__).resolve().parent
RESULTS = BENCH / "results"
RESULTS_MD = BENCH / "RESULTS.md"
READMES = (BENCH.parent / "README.md", BENCH / "README.md")
#: Version of the results.json layout (2: per-op metrics, trees, impl apis).
SCHEMA = 2


def parse_args(argv: Optional[Sequence[str]]) -> argparse.Namespace:
    """The command line."""
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.split("\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog=__doc__.split("\n", 1)[1])
    parser.add_argument("--quick", action="store_true",
                        help="smoke test: tiny sizes, one run each (about a minute)")
    parser.add_argument("--only", help="comma-separated workloads "
                        f"({', '.join(w.key for w in WORKLOADS)})")
    parser.add_argument("--impls", help="comma-separated implementations or prefixes "
                        "(e.g. pollchat-epoll,stdlib-select,uvloop)")
    parser.add_argument("--repeats", type=int, help="runs per figure (median)")
    parser.add_argument("--out", type=Path, help="output directory")
    parser.add_argument("--baseline", metavar="REV",
                        help="also run pollchat as of git revision REV (pollchat-base-<backend>)")
    parser.add_argument("--python311", help="the Python 3.11 for stdlib asyncore")
    parser.add_argument("--python313", nargs="?", const="auto", metavar="PATH",
                        help="also run pollchat under this Python 3.13 (default: pyenv's)")
    parser.add_argument("--extra-python", action="append", default=[], metavar="PATH",
                        help="also run pollchat under this interpreter (repeatable)")
    parser.add_argument("--python-client", action="store_true",
                        help="use the Python load generator even if gcc is there")
    parser.add_argument("--no-pin", action="store_true",
                        help="do not pin server and client to separate CPUs")
    parser.add_argument("--list", action="store_true", help="list implementations and exit")
    parser.add_argument("--render", type=Path, metavar="RESULTS_JSON",
                        help="redraw report and plots from a results.json, run nothing")
    profiling.add_arguments(parser)
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
    """Build the load generator, choose CPUs, make the log and script directories."""
    logs = tmp / ("logs-quick" if args.quick else "logs")
    scripts = tmp / "scripts"
    for directory in (logs, scripts):
        shutil.rmtree(directory, ignore_errors=True)
        directory.mkdir(parents=True)
    binary, description = (None, "Python load generator (--python-client)") \
        if args.python_client else loadgen.build(tmp)
    server_cpu, client_cpu = (None, None) if args.no_pin else runner.default_cpus()
    if binary is None:
        print(f"NOTE: {description}")
    return runner.Tools(loadgen=binary, python_client=runner.python_client(),
                        loadgen_note=description, server_cpu=server_cpu,
                        client_cpu=client_cpu, logs=logs, scripts=scripts)


def build_context(args: argparse.Namespace, tmp: Path) -> Context:
    """The interpreters and the pollchat trees to run (TreeError or
    ValueError when one asked for cannot be had)."""
    extra = list(args.extra_python)
    if args.python313:
        python313 = find_python("3.13", None if args.python313 == "auto" else args.python313)
        if python313 is None:
            raise ValueError("--python313: no Python 3.13 found"
                             + ("" if args.python313 == "auto" else f" at {args.python313}"))
        extra.insert(0, python313)
    tree_dir = tmp / "trees"
    trees = [trees_mod.current(tree_dir)]
    if args.baseline:
        trees.append(trees_mod.revision(args.baseline, tree_dir))
    return Context(python=sys.executable, python311=find_python("3.11", args.python311),
                   extra_pythons=extra, trees=trees)


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
        print(f"  {impl.key:<26} {state}")


def collect(argv: Sequence[str], workloads: Sequence[Workload], impls: List[Impl], *,
            settings: Settings, tools: runner.Tools, ctx: Context) -> Dict[str, Any]:
    """Run the matrix and assemble the results document."""
    started, t0, load_start = meta.now(), time.perf_counter(), meta.loadavg()
    cells = runner.run_all(workloads, impls, settings, tools,
                           progress=lambda line: print(line, flush=True))
    return {
        "schema": SCHEMA,
        "meta": {
            "mode": "quick" if settings.quick else "full", "started": started,
            "elapsed_s": time.perf_counter() - t0, "command": meta.command_line(list(argv)),
            "repeats": settings.repeats, "warmup": settings.warmup,
            "noisy_threshold": runner.NOISY_BACKGROUND, "noisy_retries": settings.noisy_retries,
            "noisy_budget": settings.noisy_budget,
            "duration": settings.duration, "loadgen": tools.loadgen_note,
            "trees": {tree.label: tree.revision for tree in ctx.trees},
            "cpu_clock": cpu_clock(),
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
    if data.get("schema") != SCHEMA:
        print(f"error: {path} has schema {data.get('schema')}; this version renders schema "
              f"{SCHEMA} only (run the bench again)", file=sys.stderr)
        return 2
    outdir = path.resolve().parent
    publish(data, outdir, full_report=outdir == RESULTS and data["meta"]["mode"] == "full")
    return verdict(data)


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Entry point."""
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    if args.render:
        return render(args.render)
    tmp = RESULTS / "tmp"
    try:
        workloads = select_workloads(split(args.only or args.profile))
        ctx = build_context(args, tmp)
        impls = filter_impls(discover(ctx), split(args.impls) or
                             (profiling.default_impls(args) if args.profile else []))
    except (ValueError, TreeError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print("Implementations:")
    print_impls(impls)
    if args.list:
        return 0
    settings = settings_for(args)
    tools = prepare_tools(args, tmp)
    warn_if_busy()
    if args.profile:
        return profiling.run(args, workloads[0], impls, settings=settings, tools=tools,
                             outdir=(args.out or RESULTS / "profile").resolve())
    complete = not (args.only or args.impls or args.repeats or args.baseline
                    or args.python313 or args.extra_python)
    outdir = args.out or default_outdir(settings, complete)
    print(f"Load generator: {tools.loadgen_note}\nMode: "
          f"{'quick' if settings.quick else 'full'}, {settings.repeats} run(s) per figure; "
          f"output: {outdir}\n")
    data = collect(argv, workloads, impls, settings=settings, tools=tools, ctx=ctx)
    publish(data, outdir.resolve(), full_report=outdir == RESULTS)
    status = verdict(data)
    print(f"\ntotal time {data['meta']['elapsed_s']:.0f} s")
    return status


if __name__ == "__main__":
    sys.exit(main())
