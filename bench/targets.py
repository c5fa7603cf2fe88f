"""The targets, checked against a results document: issue 12's first (the
hot path: server CPU per unit of work against CPython 3.11's asyncore and
uvloop, memory, no regression), then issues 13-15's (smtpd against 3.11's,
TLS against asyncio's, idle TLS, workers), then earlier ones and context.

A target compares two medians (``a / b`` against a threshold) or one
median with an absolute limit.  A target whose numbers are missing (a
competitor not run, or failed) is ``N/A`` with the reason; a miss is
``MISS``, never hidden.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Optional, Tuple

from .model import ResultSet, fmt_number

PointPick = Callable[[List[Dict[str, Any]]], Optional[Dict[str, Any]]]

#: Client CPU (% of one core) above which a rate is reported as client-bound.
CLIENT_BOUND = 90.0


def first(points: List[Dict[str, Any]]) -> Optional[Dict[str, Any]]:
    """The first point."""
    return points[0] if points else None


def last(points: List[Dict[str, Any]]) -> Optional[Dict[str, Any]]:
    """The last point."""
    return points[-1] if points else None


def stream(line_size: int, biggest: bool = True, in_buffer: int = 0) -> PointPick:
    """The biggest (or smallest) stream of ``line_size``-byte lines with the
    given ac_in_buffer_size (0: the default)."""

    def pick(points: List[Dict[str, Any]]) -> Optional[Dict[str, Any]]:
        found = [p for p in points if p["params"].get("line_size") == line_size
                 and p["params"].get("in_buffer", 0) == in_buffer]
        found.sort(key=lambda p: p["params"]["total"])
        return (found[-1] if biggest else found[0]) if found else None

    return pick


def point(key: str) -> PointPick:
    """The point named ``key``."""

    def pick(points: List[Dict[str, Any]]) -> Optional[Dict[str, Any]]:
        return next((p for p in points if p["key"] == key), None)

    return pick


@dataclass(frozen=True)
class Target:
    """``value(a) <op> threshold * value(b)``, or ``value(a) <op> threshold``
    when ``b`` is None (an absolute limit).

    Implementation names: ``"pollchat"`` is the working tree's pollchat under
    the harness's interpreter (epoll if it ran), ``"pollchat@3.13"`` the same
    under Python 3.13 (``--python313``), ``"baseline"`` the workload's
    comparison; anything else is an implementation key.  ``op`` is ``">="``,
    ``"<="``, ``"within"`` (min/max of the two >= threshold), or ``"info"``: no
    threshold, the ratio is shown for comparison.  ``metric`` defaults to the
    workload's primary one.
    """

    key: str
    title: str
    workload: str
    a: Tuple[PointPick, str]
    b: Optional[Tuple[PointPick, str]]
    op: str
    threshold: float
    metric: Optional[str] = None
    source: str = "issue 12"  # where the threshold comes from (see SOURCES)


#: What a target's ``source`` means, for the report.
SOURCES = {
    "issue 12": "issue 12 (hot path)",
    "issue 13": "issue 13 (smtpd)",
    "issue 14": "issue 14 (TLS)",
    "issue 15": "issue 15 (workers)",
    "issue 16": "issue 16 (asyncio and uvloop as backends)",
    "earlier": "the first benchmark issue",
    "bench": "the bench's own threshold",
    "context": "for comparison",
}

US = "server_us_per_op"
PER_CPU = "ops_per_cpu_s"

TARGETS: Tuple[Target, ...] = (
    # -- issue 12 ---------------------------------------------------------------
    Target("pingpong-cpu-311", "Busy ping-pong (100 connections): server CPU per round trip "
           "<= 0.9x CPython 3.11 asyncore (select), on 3.11", "concurrency",
           (first, "pollchat@3.11"), (first, "stdlib-select"), "<=", 0.9, metric=US),
    Target("pingpong-cpu-313", "Busy ping-pong: the same on Python 3.13 (--python313)",
           "concurrency", (first, "pollchat@3.13"), (first, "stdlib-select"), "<=", 0.9,
           metric=US),
    Target("pipeline-stdlib", "Pipelined kv requests (GET/SET, 16 per write): requests per "
           "server CPU-second >= 1.5x CPython 3.11 asyncore (select)", "pipeline",
           (point("get-set-x16"), "pollchat"), (point("get-set-x16"), "stdlib-select"), ">=",
           1.5, metric=PER_CPU),
    Target("pipeline-uvloop", "Pipelined kv requests (GET/SET, 16 per write): >= uvloop "
           "(asyncio Protocol) per server CPU-second", "pipeline",
           (point("get-set-x16"), "pollchat"), (point("get-set-x16"), "uvloop"), ">=", 1.0,
           metric=PER_CPU),
    Target("pipeline-set-stdlib", "Pipelined kv SETs (every request has a counted payload, "
           "16 per write): >= 1.5x CPython 3.11 asyncore (select) per server CPU-second",
           "pipeline", (point("set-x16"), "pollchat"), (point("set-x16"), "stdlib-select"),
           ">=", 1.5, metric=PER_CPU),
    Target("pipeline-set-uvloop", "Pipelined kv SETs: >= uvloop per server CPU-second",
           "pipeline", (point("set-x16"), "pollchat"), (point("set-x16"), "uvloop"), ">=",
           1.0, metric=PER_CPU),
    Target("keepalive-stdlib", "HTTP/1.1 keep-alive (100 connections): requests per server "
           "CPU-second >= 1.0x CPython 3.11 asyncore (select)", "keepalive",
           (first, "pollchat"), (first, "stdlib-select"), ">=", 1.0, metric=PER_CPU),
    Target("memory-1300", "Memory per idle async_chat connection <= 1,300 bytes", "memory",
           (first, "pollchat"), None, "<=", 1300),
    Target("idle-scaling", "No regression: idle scaling, rate at the most idle connections "
           ">= 90% of the rate at 0", "idle", (last, "pollchat"), (first, "pollchat"), ">=",
           0.90),
    Target("lines-3x", "No regression: 20-byte line parsing >= 3x stdlib asynchat",
           "lines", (stream(20), "pollchat"), (stream(20), "baseline"), ">=", 3.0),
    Target("in-buffer-flat", "No regression: 20-byte lines flat across ac_in_buffer_size "
           "(4 KiB vs 1 MiB within 15%)", "lines", (stream(20, in_buffer=4096), "pollchat"),
           (stream(20, in_buffer=1 << 20), "pollchat"), "within", 0.85),
    # -- issues 13-15: smtpd, TLS, workers -----------------------------------------
    Target("smtp-stdlib", "Mail (smtpd, 50 sessions, 1 KB messages): messages per server "
           "CPU-second >= 1.0x CPython 3.11's smtpd on its asyncore (select)", "smtp",
           (first, "pollchat"), (first, "stdlib-select"), ">=", 1.0, metric=PER_CPU,
           source="issue 13"),
    Target("tls-echo-asyncio", "TLS echo (100 connections): round trips per server "
           "CPU-second >= asyncio's TLS transport", "tls_echo", (first, "pollchat"),
           (first, "asyncio"), ">=", 1.0, metric=PER_CPU, source="issue 14"),
    Target("tls-idle", "Idle TLS connections: rate at the most idle TLS connections >= 90% "
           "of the rate at 0", "tls_idle", (last, "pollchat"), (first, "pollchat"), ">=",
           0.90, source="issue 14"),
    Target("workers-throughput", "pollchat run --workers 2 vs 1: round trips/s (the load "
           "generator shares the CPUs)", "workers", (first, "pollchat-workers2"),
           (first, "pollchat-workers1"), "info", 0, source="issue 15"),
    Target("workers-cpu", "pollchat run --workers 2 vs 1: round trips per server CPU-second "
           "(master + workers) >= 0.8x: a second worker adds no cost per round trip",
           "workers", (first, "pollchat-workers2"), (first, "pollchat-workers1"), ">=", 0.8,
           metric=PER_CPU, source="bench"),
    # -- issue 16: the event loops as backends ---------------------------------------
    *(target
      for name in ("asyncio", "uvloop")
      for target in (
          Target(f"idle-scaling-{name}", f"pollchat on {name}: rate at the most idle "
                 "connections >= 90% of the rate at 0", "idle", (last, f"pollchat-{name}"),
                 (first, f"pollchat-{name}"), ">=", 0.90, source="issue 16"),
          Target(f"pingpong-cpu-{name}", f"pollchat on {name}: busy ping-pong (100 "
                 "connections) server CPU per round trip <= 1.2x on epoll", "concurrency",
                 (first, f"pollchat-{name}"), (first, "pollchat-epoll"), "<=", 1.2, metric=US,
                 source="issue 16"))),
    # -- earlier targets and context ---------------------------------------------
    Target("concurrency-stdlib", "Concurrency: round trips/s at least stdlib asyncore's "
           "(select)", "concurrency", (first, "pollchat"), (first, "stdlib-select"), ">=",
           1.0, source="earlier"),
    Target("concurrency-uvloop", "Concurrency: round trips/s within 10% of uvloop",
           "concurrency", (first, "pollchat"), (first, "uvloop"), ">=", 0.90,
           source="earlier"),
    Target("memory", "Memory per idle connection <= stdlib asyncore's", "memory",
           (first, "pollchat"), (first, "baseline"), "<=", 1.0, source="earlier"),
    Target("pipeline-uvloop-batched", "Pipelined kv SETs: vs uvloop with the application "
           "batching its replies (one write per read)", "pipeline",
           (point("set-x16"), "pollchat"), (point("set-x16"), "uvloop-batched"), "info", 0,
           metric=PER_CPU, source="context"),
    Target("idle-scaling-stdlib", "stdlib asyncore (use_poll=True), idle scaling ratio",
           "idle", (last, "stdlib-poll"), (first, "stdlib-poll"), "info", 0, source="context"),
    Target("in-buffer-stdlib", "stdlib asynchat, 1 MiB vs 4 KiB in-buffer", "lines",
           (stream(20, in_buffer=1 << 20), "stdlib-poll"),
           (stream(20, in_buffer=4096), "stdlib-poll"), "info", 0, source="context"),
    Target("lines-linear", "20-byte lines: big stream rate >= 75% of small stream rate "
           "(no super-linear slowdown)", "lines", (stream(20), "pollchat"),
           (stream(20, biggest=False), "pollchat"), ">=", 0.75, source="bench"),
    Target("long-lines-linear", "64 KiB lines: big stream rate >= 75% of small stream rate",
           "lines", (stream(65536), "pollchat"), (stream(65536, biggest=False), "pollchat"),
           ">=", 0.75, source="bench"),
    Target("bulk-linear", "Bulk push: biggest push rate >= 75% of smallest (no super-linear "
           "slowdown)", "bulk", (last, "pollchat"), (first, "pollchat"), ">=", 0.75,
           source="bench"),
)


def _resolve(rs: ResultSet, target: Target, side: Tuple[PointPick, str]
             ) -> Tuple[Optional[Dict[str, Any]], Optional[str]]:
    if not rs.has_workload(target.workload):
        return None, None
    picked = side[0](rs.workload(target.workload)["points"])
    name = side[1]
    if picked is None:
        return None, None
    if name == "pollchat":
        return picked, rs.pollchat_key()
    if name.startswith("pollchat@"):
        return picked, rs.pollchat_key(minor=name.split("@", 1)[1])
    if name == "baseline":
        return picked, rs.baseline(target.workload, picked["key"])
    return picked, name


def _why_missing(rs: ResultSet, workload: str, picked: Optional[Dict[str, Any]],
                 impl: Optional[str], wanted: str) -> str:
    if picked is None:
        return f"workload {workload!r} (or the point) was not run"
    if impl is None:
        if wanted.startswith("pollchat@"):
            minor = wanted.split("@", 1)[1]
            return (f"no pollchat implementation ran under Python {minor} (add "
                    f"--python{minor.replace('.', '')} PATH)")
        reasons = {i["skip"] for i in rs.impls if i["key"].startswith(wanted) and i["skip"]}
        return f"no {wanted} implementation ran" + (f" ({'; '.join(sorted(reasons))})"
                                                     if reasons else "")
    cell = rs.cell(workload, picked["key"], impl)
    if cell is None:
        return f"{impl} was not run on {picked['label']}"
    if cell["status"] == "skipped":
        return f"{impl} skipped: {cell['error']}"
    if cell["status"] == "ok":
        return f"{impl} has no such figure on {picked['label']}"
    return f"{impl} failed on {picked['label']}: {cell['error'][:200]}"


@dataclass(frozen=True)
class Measured:
    """One side of a target: the point, the implementation, its median."""

    point: Dict[str, Any]
    impl: str
    value: float

    def shown(self, rs: ResultSet, workload: str, unit: str) -> str:
        """``impl @ point: value unit (client CPU n%)``."""
        return (f"{self.impl} @ {self.point['label']}: {fmt_number(self.value)} {unit}"
                f"{_cpu_note(rs, workload, self.point, self.impl)}")

    def noisy(self, rs: ResultSet, workload: str) -> bool:
        """Whether the figure was measured while others kept the CPUs busy."""
        cell = rs.cell(workload, self.point["key"], self.impl)
        return bool(cell and cell.get("noisy_point"))


def _measure(rs: ResultSet, target: Target, side: Tuple[PointPick, str], metric: str
             ) -> Tuple[Optional[Measured], str]:
    """The figure for one side of ``target``, or None and why it is missing."""
    picked, impl = _resolve(rs, target, side)
    value = rs.value(target.workload, picked["key"], impl, metric) if picked and impl else None
    if picked is None or impl is None or value is None:
        return None, _why_missing(rs, target.workload, picked, impl, side[1])
    return Measured(picked, impl, value), ""


def _cpu_note(rs: ResultSet, workload: str, picked: Dict[str, Any], impl: str) -> str:
    cpu = rs.value(workload, picked["key"], impl, "client_cpu")
    if cpu is None:
        return ""
    bound = ", CLIENT-BOUND" if cpu >= CLIENT_BOUND else ""
    return f" (client CPU {cpu:.0f}%{bound})"


def _passes(op: str, value: float, threshold: float) -> Optional[bool]:
    """Whether ``value <op> threshold`` (None for "info")."""
    if op in (">=", "within"):
        return value >= threshold
    if op == "<=":
        return value <= threshold
    return None


def check(rs: ResultSet, target: Target) -> Dict[str, Any]:
    """Evaluate one target: ``{"key", "title", "status", "detail", ...}``;
    status PASS, MISS, INFO or N/A (numbers missing, with the reason)."""
    out: Dict[str, Any] = {"key": target.key, "title": target.title, "source": target.source}
    metric = (rs.metric(target.workload, target.metric) if target.metric
              else rs.primary(target.workload))
    a, why = _measure(rs, target, target.a, metric.key)
    if a is None:
        return {**out, "status": "N/A", "detail": why}
    detail = a.shown(rs, target.workload, metric.unit)
    noisy = a.noisy(rs, target.workload)
    ratio: Optional[float] = None
    if target.b is None:
        ok = _passes(target.op, a.value, target.threshold)
        detail += f" (need {target.op} {fmt_number(target.threshold)} {metric.unit})"
    else:
        b, why = _measure(rs, target, target.b, metric.key)
        if b is None or b.value == 0:
            return {**out, "status": "N/A", "detail": why or f"{target.b[1]} measured 0"}
        ratio = (min(a.value, b.value) / max(a.value, b.value) if target.op == "within"
                 else a.value / b.value)
        ok = _passes(target.op, ratio, target.threshold)
        detail += f" vs {b.shown(rs, target.workload, metric.unit)} -> {ratio:.2f}"
        if ok is not None:
            detail += f" (need {target.op} {target.threshold:g})"
        noisy = noisy or b.noisy(rs, target.workload)
    if noisy:
        detail += " [measured while other processes kept the CPUs busy]"
    status = "INFO" if ok is None else "PASS" if ok else "MISS"
    return {**out, "status": status, "ratio": ratio, "value": a.value, "detail": detail}


def check_all(rs: ResultSet) -> List[Dict[str, Any]]:
    """Every target whose workload was run."""
    return [check(rs, t) for t in TARGETS if rs.has_workload(t.workload)]
