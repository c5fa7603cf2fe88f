"""Run the matrix: every workload x point x implementation, repeated.

One run = a fresh server process + one client process.  The result of a
(workload, point, implementation) *cell* is the median of its runs.  Runs
are interleaved (repeat 1 of every implementation, then repeat 2...) so
that a drift of the machine does not favour whoever ran first.
"""

from __future__ import annotations

import os
import signal
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, FrozenSet, List, Optional, Sequence, Tuple

from .impls import Impl
from .procs import ClientRun, ProcessFailed, Sample, Server, run_client
from .workloads import Point, Settings, Workload

HERE = Path(__file__).resolve().parent
CLIENTS_PY = HERE / "clients.py"
TLS_CLIENT_PY = HERE / "tls_client.py"
#: fds a server holds besides connections (stdio, listener, epoll, imports...).
FD_OVERHEAD = 16
#: CPU shares measured over a shorter window are not reported (tick granularity).
MIN_CPU_WINDOW = 0.1
#: A run during which other processes used more CPU than this (% of one core)
#: is noisy: it is done again, and left out of the median if every
#: implementation has a quiet run at that point.
NOISY_BACKGROUND = 30.0


@dataclass(frozen=True)
class Tools:
    """How clients are run on this machine."""

    loadgen: Optional[Path]  # the compiled loadgen.c (None: the Python twin)
    python_client: Tuple[str, ...]  # program of the Python clients
    loadgen_note: str  # what plays the scripts, for the report
    server_cpu: Optional[int]  # CPU the server is pinned to (None: not pinned)
    client_cpu: Optional[int]
    logs: Path  # per-run stderr files
    scripts: Path  # where the request/reply scripts are written

    def watched_cpus(self, client_cpu: Optional[int]) -> Optional[FrozenSet[int]]:
        """The CPUs a run occupies (None when not pinned: all of them)."""
        if self.server_cpu is None or client_cpu is None:
            return None
        return frozenset({self.server_cpu, client_cpu})

    def script_file(self, workload: Workload, point: Point) -> Path:
        """Write the script of ``point`` (once) and return its path."""
        path = self.scripts / f"{workload.key}.{point.key}.script"
        if workload.script is None:
            raise ValueError(f"workload {workload.key} has no script")
        if not path.exists():
            self.scripts.mkdir(parents=True, exist_ok=True)
            workload.script(point.params).write(path)
        return path

    def client_argv(self, workload: Workload, point: Point, settings: Settings,
                    port: int) -> List[str]:
        """The full command line of the client of one run."""
        if workload.client == "tls":
            return [self.python_client[0], str(TLS_CLIENT_PY),
                    *workload.client_args(point, settings, port)]
        if workload.client != "script":
            return [*self.python_client, workload.client,
                    *workload.client_args(point, settings, port)]
        program = [str(self.loadgen)] if self.loadgen else list(self.python_client)
        return [*program, "run", *workload.client_args(point, settings, port,
                                                       self.script_file(workload, point))]


def default_cpus() -> Tuple[Optional[int], Optional[int]]:
    """Server on one CPU, client on another, when there are two to pin to."""
    if not hasattr(os, "sched_getaffinity"):
        return None, None
    cpus = sorted(os.sched_getaffinity(0))
    return (cpus[0], cpus[1]) if len(cpus) >= 2 else (None, None)


def python_client() -> Tuple[str, ...]:
    """The Python clients under this interpreter."""
    return (sys.executable, str(CLIENTS_PY))


# -- one run ---------------------------------------------------------------


def derive_metrics(run: ClientRun, base: Optional[Sample], point: Point,
                   ncpus: int) -> Dict[str, float]:
    """The numbers of one run: the client's own, CPU shares, the server's
    CPU per unit of work, and memory."""
    metrics = {k: float(v) for k, v in run.result.items()
               if isinstance(v, (int, float)) and not isinstance(v, bool)}
    seconds = metrics.get("seconds", 0.0)
    if seconds >= MIN_CPU_WINDOW and "cpu_seconds" in metrics:
        metrics["client_cpu"] = 100.0 * metrics["cpu_seconds"] / seconds
    start, end = run.samples.get("start"), run.samples.get("end")
    if start and end and end.at - start.at >= MIN_CPU_WINDOW:
        metrics.update(cpu_shares(start, end, metrics.get("client_cpu", 0.0), ncpus))
        metrics.update(per_op(end.cpu - start.cpu, metrics.get("ops", 0.0)))
        metrics.update(user_and_kernel(start, end, metrics.get("ops", 0.0)))
    ready = run.samples.get("ready")
    idle = int(point.params.get("idle", 0))
    if ready and base:
        metrics["rss_base"] = float(base.rss)
        metrics["rss_ready"] = float(ready.rss)
        if idle:
            metrics["per_conn"] = (ready.rss - base.rss) / idle
    return metrics


def per_op(server_cpu_seconds: float, ops: float) -> Dict[str, float]:
    """The server's CPU per unit of work over the measured window: µs per op
    and ops per CPU-second (nothing when either is zero)."""
    if ops <= 0 or server_cpu_seconds <= 0:
        return {}
    return {"server_cpu_seconds": server_cpu_seconds,
            "server_us_per_op": 1e6 * server_cpu_seconds / ops,
            "ops_per_cpu_s": ops / server_cpu_seconds}


def user_and_kernel(start: Sample, end: Sample, ops: float) -> Dict[str, float]:
    """The server's user and kernel CPU per unit of work (µs), from the tick
    counters (nothing when there was no work or no tick).  The kernel's
    share is the system calls and the network stack below them, which no
    event loop in the process can make cheaper."""
    user = end.cpu_user - start.cpu_user
    system = end.cpu_system - start.cpu_system
    if ops <= 0 or user + system <= 0:
        return {}
    return {"server_user_us_per_op": 1e6 * user / ops,
            "server_sys_us_per_op": 1e6 * system / ops}


@dataclass(frozen=True)
class Job:
    """One cell of the matrix: an implementation on a workload's point."""

    workload: Workload
    point: Point
    impl: Impl

    def tag(self, repeat: int) -> str:
        """A file-name-friendly name of one run."""
        return f"{self.workload.key}.{self.point.key}.{self.impl.key}.{repeat + 1}"


def cpu_shares(start: Sample, end: Sample, client_cpu: float, ncpus: int) -> Dict[str, float]:
    """Server CPU, and what other processes used (% of one core) on the
    ``ncpus`` CPUs the server and client ran on, between two samples:
    that load makes a figure noisy."""
    server = 100.0 * (end.cpu - start.cpu) / (end.at - start.at)
    shares = {"server_cpu": server}
    total = end.cpus_total - start.cpus_total
    if total > 0:
        cores = ncpus * (end.cpus_busy - start.cpus_busy) / total
        shares["background_cpu"] = max(0.0, 100.0 * cores - server - client_cpu)
    return shares


def run_once(job: Job, settings: Settings, tools: Tools, tag: str, *,
             server_extra: Sequence[str] = (), client_extra: Sequence[str] = ()
             ) -> Tuple[Dict[str, float], str]:
    """One server + one client: the run's metrics, and a note ("" if none)
    when the server complained or exited badly.  ``server_extra`` and
    ``client_extra`` are appended to their command lines (profiling).
    Raises ProcessFailed."""
    extra = list(server_extra)
    workload, point, impl = job.workload, job.point, job.impl
    server_cpu, client_cpu = tools.server_cpu, tools.client_cpu
    if workload.same_cpu:
        client_cpu = server_cpu
    if impl.workers:
        # Workers are there to use every CPU: nothing is pinned (pinning the
        # master would pin the workers it forks to its one CPU too).
        server_cpu = client_cpu = None
    watch = tools.watched_cpus(client_cpu) if server_cpu is not None else None
    server = Server(impl.argv(workload.server_program(impl), *workload.server_args(point),
                              "--max-seconds", str(settings.server_max_seconds), *extra),
                    impl.env, tools.logs / f"{tag}.server.log", cpu=server_cpu,
                    watch=watch,
                    # A master stops on SIGTERM (gracefully); a quit line would
                    # stop the one worker that took it, and be replaced.
                    stop_signal=signal.SIGTERM if impl.workers else None,
                    announcements=max(1, impl.workers))
    server.start()
    try:
        base = server.sample()
        argv = tools.client_argv(workload, point, settings, server.port) + list(client_extra)
        try:
            run = run_client(argv, server, tools.logs / f"{tag}.client.log",
                             settings.run_timeout(), cpu=client_cpu)
        except ProcessFailed as exc:
            raise ProcessFailed(explain(str(exc), server)) from None
        if not run.result.get("ok"):
            raise ProcessFailed(explain(f"client: {run.result.get('error')}", server))
        ncpus = len(watch) if watch else os.cpu_count() or 1
        metrics = derive_metrics(run, base, point, ncpus)
        status = server.stop()
        complaint = server.error()
        note = ""
        if status or complaint:
            note = f"server exit status {status}" + (f", said: {complaint}" if complaint else "")
        return metrics, note
    finally:
        server.kill()


def explain(client_error: str, server: Server) -> str:
    """A failure message: the server's own error first when it died, else
    the client's, with what the server said about it."""
    server.wait(1.0)  # a server that crashed may still be exiting
    said = server.error()
    if server.alive():
        return f"{client_error}; server said: {said}" if said else client_error
    status = server.proc.poll() if server.proc else None
    return f"server exited with status {status}: {said or 'no message'} ({client_error})"


# -- cells -----------------------------------------------------------------


def expected_failure(impl: Impl, point: Point) -> bool:
    """Whether a failure here is the known select() limit (FD_SETSIZE)."""
    return impl.max_fd is not None and point.fds() + FD_OVERHEAD > impl.max_fd


def new_cell(workload: Workload, point: Point, impl: Impl) -> Dict[str, Any]:
    """An empty result cell (skipped if the implementation cannot run)."""
    return {"workload": workload.key, "point": point.key, "impl": impl.key,
            "status": "skipped" if impl.skip else "pending", "error": impl.skip,
            "expected_failure": False, "runs": [], "median": {}, "spread": {}, "notes": []}


def finish_cell(cell: Dict[str, Any], use_quiet: bool) -> None:
    """Medians and min-max spread of the quiet runs (``use_quiet``) or of all
    runs; the cell's final status."""
    if cell["status"] == "skipped":
        return
    if not cell["runs"]:
        cell["status"] = "failed"
        return
    cell["status"] = "ok"
    runs = [run for run in cell["runs"] if quiet(run)] if use_quiet else cell["runs"]
    cell["used_runs"] = len(runs)
    cell["noisy_point"] = not use_quiet
    keys = sorted({k for run in runs for k in run})
    for key in keys:
        values = [run[key] for run in runs if key in run]
        cell["median"][key] = statistics.median(values)
        cell["spread"][key] = [min(values), max(values)]


Progress = Callable[[str], None]


def quiet(run: Dict[str, float]) -> bool:
    """Whether other processes left this run alone (or we cannot tell)."""
    return run.get("background_cpu", 0.0) <= NOISY_BACKGROUND


@dataclass
class RetryBudget:
    """Extra runs left for redoing noisy ones, over the whole matrix: on a
    machine that stays busy, retrying everything would only cost time."""

    left: int


def wants_run(cell: Dict[str, Any], settings: Settings, budget: RetryBudget) -> bool:
    """Whether a cell needs another run: fewer quiet runs than asked for, and
    (beyond ``settings.repeats`` runs) retries left for it and in the budget."""
    if cell["status"] != "pending":
        return False  # skipped, or failed
    runs = len(cell["runs"])
    if runs < settings.repeats:
        return True
    quiet_runs = sum(1 for run in cell["runs"] if quiet(run))
    return (quiet_runs < settings.repeats and budget.left > 0
            and runs < settings.repeats + settings.noisy_retries)


def run_job(job: Job, cell: Dict[str, Any], attempt: int, settings: Settings,
            tools: Tools) -> None:
    """One run of a cell, recorded in it (numbers, or the failure)."""
    try:
        metrics, note = run_once(job, settings, tools, job.tag(attempt))
    except ProcessFailed as exc:
        cell["error"] = str(exc)
        cell["expected_failure"] = expected_failure(job.impl, job.point)
        cell["status"] = "failed" if not cell["runs"] else "flaky"
        return
    cell["runs"].append(metrics)
    if note and note not in cell["notes"]:
        cell["notes"].append(note)


def run_point(jobs: Sequence[Job], settings: Settings, tools: Tools, *,
              budget: RetryBudget, progress: Progress) -> List[Dict[str, Any]]:
    """Every job (implementation) of one point, ``settings.repeats`` times
    each, in rounds; a run other processes disturbed is done again (up to
    ``settings.noisy_retries`` times, while the budget lasts)."""
    cells = [new_cell(job.workload, job.point, job.impl) for job in jobs]
    for attempt in range(settings.repeats + settings.noisy_retries):
        for job, cell in zip(jobs, cells):
            if not wants_run(cell, settings, budget):
                continue
            if attempt >= settings.repeats:
                budget.left -= 1
            started = time.perf_counter()
            notes = len(cell["notes"])
            run_job(job, cell, attempt, settings, tools)
            for note in cell["notes"][notes:]:
                progress(f"    note: {job.impl.key}: {note}")
            progress(describe_run(job, attempt, settings, cell, time.perf_counter() - started))
    for cell in cells:
        if cell["status"] == "flaky":  # some runs passed: keep them, note the error
            cell["status"] = "pending"
    # Compare like with like: quiet runs only if every implementation has one
    # here, else every run of every implementation (and the report says so).
    measured = [cell for cell in cells if cell["runs"]]
    use_quiet = all(any(quiet(run) for run in cell["runs"]) for cell in measured)
    for cell in cells:
        finish_cell(cell, use_quiet)
    return cells


def describe_run(job: Job, attempt: int, settings: Settings, cell: Dict[str, Any],
                 seconds: float) -> str:
    """One progress line."""
    workload, point, impl = job.workload, job.point, job.impl
    head = (f"  {workload.key:<11} {point.label:<34} {impl.key:<20} "
            f"{attempt + 1}/{settings.repeats} ")
    if cell["status"] in ("failed", "flaky"):
        kind = "expected " if cell["expected_failure"] else ""
        return head + f"{kind}FAILED: {cell['error'][:150]}"
    run = cell["runs"][-1]
    shown = []
    for key in workload.metrics[:2]:
        if key in run:
            metric = workload.metric(key)
            shown.append(f"{run[key]:,.1f} {metric.unit}")
    cpu = f" client {run['client_cpu']:.0f}%" if "client_cpu" in run else ""
    srv = f" server {run['server_cpu']:.0f}%" if "server_cpu" in run else ""
    noisy = "" if quiet(run) else f" NOISY (others used {run['background_cpu']:.0f}%)"
    return head + f"{', '.join(shown) or 'no numbers'}{cpu}{srv} [{seconds:.1f}s]{noisy}"


def run_all(workloads: Sequence[Workload], impls: Sequence[Impl], settings: Settings,
            tools: Tools, progress: Progress = print) -> List[Dict[str, Any]]:
    """Every cell of the matrix (cells not meaningful for an implementation,
    e.g. ac_in_buffer_size under asyncio, are left out)."""
    cells: List[Dict[str, Any]] = []
    budget = RetryBudget(settings.noisy_budget)
    for workload in workloads:
        progress(f"{workload.title}:")
        for point in workload.points(settings):
            jobs = [Job(workload, point, impl) for impl in impls
                    if workload.applies(impl, point)]
            cells += run_point(jobs, settings, tools, budget=budget, progress=progress)
    return cells
