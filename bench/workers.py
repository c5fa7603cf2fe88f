"""``pollchat run --workers 2`` vs 1 on busy ping-pong.

    python -m bench.workers            # 3 runs per figure, ~1 minute
    python -m bench.workers --quick    # 1 short run per figure, ~15 s

The server is the benchmark's legacy program (``servers/legacy_server.py
--impl pollchat --mode echo``) run unmodified under ``python -m pollchat run
--workers N`` on the best backend; the client is the C ping-pong load
generator (``loadgen.c``, 100 connections, 16-byte lines).  Reported per
worker count: round trips per second, round trips per server CPU-second
(the CPU of the master and all its workers), the server's CPU, the load
generator's own CPU, and what other processes used meanwhile.

Nothing is pinned: the point is to let the workers use every core, and the
load generator shares those cores, so requests/s alone understates what the
workers do; requests per server CPU-second says what each core-second of
serving buys.  The matrix runner (``python -m bench``) does not run this
workload yet: its servers are single processes started from an
implementation's command line.  :data:`WORKLOAD` is the table entry for it,
and :class:`TreeServer` and :func:`server_argv` are the two things the
matrix runner needs to run it (see the module's README section).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import statistics
import sys
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

import psutil

if __package__ in (None, ""):  # run as a script: make the package importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import loadgen, runner  # noqa: E402
from bench.impls import LEGACY_SERVER  # noqa: E402
from bench.procs import ProcessFailed, Sample, Server, cpus_time, run_client  # noqa: E402
from bench.workloads import FULL, QUICK, Point, Settings, Workload  # noqa: E402

BENCH = Path(__file__).resolve().parent
RESULTS = BENCH / "results"
WORKER_COUNTS = (1, 2)


def _points() -> tuple:
    return tuple(Point(f"workers{n}", f"{n} worker{'s' if n > 1 else ''}, 100 clients",
                       {"conns": 100, "workers": n}) for n in WORKER_COUNTS)


#: The table entry of this workload (bench.workloads.Workload): the echo
#: server under ``pollchat run --workers N``, 100 ping-pong clients.
WORKLOAD = Workload(
    key="workers", title="Workers (pollchat run --workers)",
    description="100 clients doing sequential ping-pong (16-byte lines) against the legacy "
                "echo server run unmodified under `pollchat run --workers N`. Round trips/s, "
                "round trips per server CPU-second (master + workers), server and load "
                "generator CPU. Not pinned: server and load generator share every CPU.",
    server_mode="echo", client="pingpong",
    metrics=("rate", "rate_per_server_cpu", "server_cpu", "client_cpu"),
    full=_points(), quick=_points(), baselines=("workers1",))


def server_argv(point: Point, settings: Settings, python: str = sys.executable) -> List[str]:
    """The server's command line at ``point``: the legacy program under
    ``pollchat run --workers N``."""
    return [python, "-m", "pollchat", "run", "--workers", str(point.params["workers"]), "-q",
            LEGACY_SERVER, "--impl", "pollchat", *WORKLOAD.server_args(point),
            "--max-seconds", str(settings.server_max_seconds)]


class TreeServer(Server):
    """A server that is a process tree: the ``pollchat run`` master and its
    workers.  Samples add up the CPU of the whole tree; stopping is SIGTERM
    to the master (a ``QUIT`` line would stop one worker, which the master
    replaces)."""

    def sample(self) -> Optional[Sample]:
        if self.ps is None:
            return None
        try:
            processes = [self.ps, *self.ps.children(recursive=True)]
        except psutil.Error:
            return None
        cpu = 0.0
        rss = 0
        for process in processes:
            try:
                times = process.cpu_times()
                cpu += times.user + times.system
                rss += process.memory_info().rss
            except psutil.Error:
                pass  # a worker that just exited: its CPU is lost from the sum
        busy, total = cpus_time(self.watch)
        return Sample(time.perf_counter(), cpu, rss, busy, total)

    def wait_for_workers(self, count: int, timeout: float = 30.0) -> None:
        """Wait until ``count`` workers announced their port."""
        deadline = time.perf_counter() + timeout
        while len(re.findall(r"^PORT ", self.log_text(), re.M)) < count:
            if time.perf_counter() > deadline or not self.alive():
                raise ProcessFailed(f"fewer than {count} workers started: {self.error()}")
            time.sleep(0.02)

    def log_text(self) -> str:
        try:
            return self.log.read_text(errors="replace")
        except OSError:
            return ""

    def stop(self, grace: float = 10.0) -> Optional[int]:
        if self.proc is not None and self.alive():
            self.proc.send_signal(signal.SIGTERM)
        self.port = 0  # the base class would send QUIT, to one worker only
        return super().stop(grace)

    def kill(self) -> Optional[int]:
        """Kill the workers, then the master (by pid, none other)."""
        if self.proc is None:
            return None
        if self.proc.poll() is None and self.ps is not None:
            try:
                children = self.ps.children(recursive=True)
            except psutil.Error:
                children = []
            for child in children:
                try:
                    child.kill()
                except psutil.Error:
                    pass  # gone already
            self.proc.kill()
        return self.proc.wait()


def measure(point: Point, settings: Settings, tools: runner.Tools, tag: str) -> Dict[str, float]:
    """One server + one load generator run at ``point``; its metrics."""
    env = {"POLLCHAT_BACKEND": "auto"}
    server = TreeServer(server_argv(point, settings), env, tools.logs / f"{tag}.server.log")
    server.start()
    try:
        server.wait_for_workers(int(point.params["workers"]))
        argv = tools.client_argv(WORKLOAD, point, settings, server.port)
        run = run_client(argv, server, tools.logs / f"{tag}.client.log", settings.run_timeout())
        if not run.result.get("ok"):
            raise ProcessFailed(f"client: {run.result.get('error')}")
        metrics = runner.derive_metrics(run, None, point, psutil.cpu_count() or 1)
        if metrics.get("server_cpu"):
            metrics["rate_per_server_cpu"] = metrics["rate"] / (metrics["server_cpu"] / 100.0)
        status = server.stop()
        if status:
            metrics["server_status"] = float(status)
        return metrics
    finally:
        server.kill()


def run_all(settings: Settings, tools: runner.Tools) -> List[Dict[str, Any]]:
    """Every point, ``settings.repeats`` times, interleaved; medians."""
    points = WORKLOAD.points(settings)
    runs: Dict[str, List[Dict[str, float]]] = {p.key: [] for p in points}
    errors: Dict[str, str] = {}
    for repeat in range(settings.repeats):
        for point in points:
            try:
                metrics = measure(point, settings, tools, f"workers.{point.key}.{repeat + 1}")
            except ProcessFailed as exc:
                errors[point.key] = str(exc)
                print(f"  {point.label:<24} run {repeat + 1}: FAILED: {exc}")
                continue
            runs[point.key].append(metrics)
            print(f"  {point.label:<24} run {repeat + 1}: {metrics['rate']:,.0f} rt/s, "
                  f"server {metrics.get('server_cpu', 0):.0f}% CPU, "
                  f"load generator {metrics.get('client_cpu', 0):.0f}% CPU")
    cells = []
    for point in points:
        done = runs[point.key]
        keys = sorted({k for run in done for k in run})
        cells.append({"point": point.key, "label": point.label, "runs": done,
                      "error": errors.get(point.key, "") if not done else "",
                      "median": {k: statistics.median(r[k] for r in done if k in r)
                                 for k in keys}})
    return cells


def markdown(cells: List[Dict[str, Any]], settings: Settings) -> str:
    """The results as a Markdown table, with the closing note."""
    base = cells[0]["median"].get("rate") if cells and cells[0]["median"] else None
    lines = ["| Workers | round trips/s | vs 1 worker | per server CPU-second | server CPU "
             "| load generator CPU | others' CPU |", "|---|---|---|---|---|---|---|"]
    for cell in cells:
        m = cell["median"]
        if not m:
            lines.append(f"| {cell['label']} | failed: {cell['error']} | | | | | |")
            continue
        ratio = f"{m['rate'] / base:.2f}x" if base else "n/a"
        lines.append(f"| {cell['label']} | {m['rate']:,.0f} | {ratio} | "
                     f"{m.get('rate_per_server_cpu', float('nan')):,.0f} | "
                     f"{m.get('server_cpu', float('nan')):.0f}% | "
                     f"{m.get('client_cpu', float('nan')):.0f}% | "
                     f"{m.get('background_cpu', float('nan')):.0f}% |")
    runs = "1 run" if settings.repeats == 1 else f"median of {settings.repeats} runs"
    lines += ["", f"{os.cpu_count()} CPUs, {runs} of {settings.duration:g} s, "
              f"{time.strftime('%Y-%m-%d')}; CPU in % of one core.", "", closing_note(cells)]
    return "\n".join(lines)


def closing_note(cells: List[Dict[str, Any]]) -> str:
    """How it scales and why, from the numbers."""
    measured = [cell["median"] for cell in cells if cell["median"].get("server_cpu")]
    if len(measured) < 2:
        return "Not every worker count produced numbers: no comparison."
    one, more = measured[0], measured[-1]
    total = 100 * (os.cpu_count() or 1)
    return (
        f"**Scaling.** {WORKER_COUNTS[-1]} workers served {more['rate'] / one['rate']:.2f}x "
        f"the round trips/s of one, and a server CPU-second bought "
        f"{more['rate_per_server_cpu'] / one['rate_per_server_cpu']:.2f}x as many: the work "
        f"per request does not change (the workers share nothing but the listening socket), "
        f"so throughput grows with the CPU the server gets, here "
        f"{one['server_cpu']:.0f}% then {more['server_cpu']:.0f}% of a core.  Of the "
        f"{total}% this machine has, the load generator took {more.get('client_cpu', 0):.0f}% "
        f"and other processes {more.get('background_cpu', 0):.0f}%: with the load generator "
        f"on the same cores, the second worker can only use what they leave, so requests per "
        f"server CPU-second is the figure to compare; on a machine with cores to spare, "
        f"throughput follows the worker count until the cores run out.")


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Entry point: run, print, and write ``workers.json``/``workers.md``."""
    parser = argparse.ArgumentParser(prog="python -m bench.workers",
                                     description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="one short run per figure")
    parser.add_argument("--out", type=Path, help="output directory")
    parser.add_argument("--python-client", action="store_true",
                        help="the Python ping-pong client even where gcc exists")
    args = parser.parse_args(argv)
    settings = QUICK if args.quick else FULL
    outdir = args.out or (RESULTS / "quick" if args.quick else RESULTS)
    tmp = RESULTS / "tmp"
    logs = tmp / "logs-workers"
    logs.mkdir(parents=True, exist_ok=True)
    binary, description = (None, "the Python client (--python-client)") \
        if args.python_client else loadgen.build(tmp)
    pingpong = (str(binary), "pingpong") if binary else (*runner.python_client(), "pingpong")
    tools = runner.Tools(pingpong=pingpong, python_client=runner.python_client(),
                         loadgen="c" if binary else "python", server_cpu=None,
                         client_cpu=None, logs=logs)
    print(f"{WORKLOAD.title}: {description}")
    cells = run_all(settings, tools)
    table = markdown(cells, settings)
    print("\n" + table)
    outdir.mkdir(parents=True, exist_ok=True)
    (outdir / "workers.json").write_text(json.dumps(
        {"workload": WORKLOAD.to_json(settings), "loadgen": description, "cells": cells},
        indent=2), encoding="utf-8")
    (outdir / "workers.md").write_text(f"## {WORKLOAD.title}\n\n{WORKLOAD.description}\n\n"
                                       f"{table}\n", encoding="utf-8")
    print(f"\nwrote {outdir / 'workers.json'} and {outdir / 'workers.md'}")
    return 0 if all(cell["median"] for cell in cells) else 1


if __name__ == "__main__":
    sys.exit(main())
