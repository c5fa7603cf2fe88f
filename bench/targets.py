"""The targets of the issue, checked against a results document.

Every target compares two medians: ``a / b`` against a threshold.  A
target whose numbers are missing (a competitor not run, or failed) is
``N/A`` with the reason; a miss is ``MISS``, never hidden.
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


@dataclass(frozen=True)
class Target:
    """``value(a) <op> threshold * value(b)``.

    ``impl`` names: ``"pollchat"`` is the pollchat backend under test,
    ``"baseline"`` the workload's comparison (stdlib asyncore).  ``op`` is
    ``">="``, ``"<="`` or ``"within"`` (min/max of the two >= threshold),
    or ``"info"``: no threshold, the ratio is shown for comparison.
    """

    key: str
    title: str
    workload: str
    a: Tuple[PointPick, str]
    b: Tuple[PointPick, str]
    op: str
    threshold: float
    source: str = "issue"  # where the threshold comes from: issue, bench or context


TARGETS: Tuple[Target, ...] = (
    Target("idle-scaling", "Idle scaling: rate at the most idle connections >= 90% of the "
           "rate at 0", "idle", (last, "pollchat"), (first, "pollchat"), ">=", 0.90),
    Target("idle-scaling-stdlib", "For comparison: stdlib asyncore (use_poll=True), same ratio",
           "idle", (last, "stdlib-poll"), (first, "stdlib-poll"), "info", 0, source="context"),
    Target("concurrency-stdlib", "Concurrency: at least as fast as stdlib asyncore (select)",
           "concurrency", (first, "pollchat"), (first, "stdlib-select"), ">=", 1.0),
    Target("concurrency-uvloop", "Concurrency: within 10% of uvloop",
           "concurrency", (first, "pollchat"), (first, "uvloop"), ">=", 0.90),
    Target("lines-3x", "Line parsing: >= 3x stdlib asynchat on 20-byte lines",
           "lines", (stream(20), "pollchat"), (stream(20), "baseline"), ">=", 3.0),
    Target("in-buffer-flat", "Line parsing: ac_in_buffer_size 4 KiB vs 1 MiB within 15%",
           "lines", (stream(20, in_buffer=4096), "pollchat"),
           (stream(20, in_buffer=1 << 20), "pollchat"), "within", 0.85),
    Target("in-buffer-stdlib", "For comparison: stdlib asynchat, 1 MiB vs 4 KiB in-buffer",
           "lines", (stream(20, in_buffer=1 << 20), "stdlib-poll"),
           (stream(20, in_buffer=4096), "stdlib-poll"), "info", 0, source="context"),
    Target("memory", "Memory per idle connection <= stdlib asyncore's",
           "memory", (first, "pollchat"), (first, "baseline"), "<=", 1.0),
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
    workload = rs.workload(target.workload)
    if workload is None:
        return None, None
    point = side[0](workload["points"])
    name = side[1]
    if point is None:
        return None, None
    if name == "pollchat":
        return point, rs.pollchat_key()
    if name == "baseline":
        return point, rs.baseline(target.workload, point["key"])
    return point, name


def _why_missing(rs: ResultSet, workload: str, point: Optional[Dict[str, Any]],
                 impl: Optional[str], wanted: str) -> str:
    if point is None:
        return f"workload {workload!r} (or the point) was not run"
    if impl is None:
        reasons = {i["skip"] for i in rs.impls if i["key"].startswith(wanted) and i["skip"]}
        return f"no {wanted} implementation ran" + (f" ({'; '.join(sorted(reasons))})"
                                                     if reasons else "")
    cell = rs.cell(workload, point["key"], impl)
    if cell is None:
        return f"{impl} was not run on {point['label']}"
    if cell["status"] == "skipped":
        return f"{impl} skipped: {cell['error']}"
    return f"{impl} failed on {point['label']}: {cell['error'][:200]}"


def _cpu_note(rs: ResultSet, workload: str, point: Dict[str, Any], impl: str) -> str:
    cpu = rs.value(workload, point["key"], impl, "client_cpu")
    if cpu is None:
        return ""
    bound = ", CLIENT-BOUND" if cpu >= CLIENT_BOUND else ""
    return f" (client CPU {cpu:.0f}%{bound})"


def _noisy(rs: ResultSet, workload: str, point: Dict[str, Any], impl: str) -> bool:
    cell = rs.cell(workload, point["key"], impl)
    return bool(cell and cell.get("noisy_point"))


def check(rs: ResultSet, target: Target) -> Dict[str, Any]:
    """Evaluate one target: ``{"key", "title", "status", "detail"}``."""
    out = {"key": target.key, "title": target.title, "source": target.source}
    (pa, ia), (pb, ib) = _resolve(rs, target, target.a), _resolve(rs, target, target.b)
    va = rs.value(target.workload, pa["key"], ia) if pa and ia else None
    vb = rs.value(target.workload, pb["key"], ib) if pb and ib else None
    if va is None or vb is None or vb == 0:
        missing = (pa, ia, target.a[1]) if va is None else (pb, ib, target.b[1])
        return {**out, "status": "N/A",
                "detail": _why_missing(rs, target.workload, *missing)}
    ratio = va / vb
    if target.op == "info":
        ok = None
    elif target.op == ">=":
        ok = ratio >= target.threshold
    elif target.op == "<=":
        ok = ratio <= target.threshold
    else:
        ratio = min(va, vb) / max(va, vb)
        ok = ratio >= target.threshold
    unit = rs.primary(target.workload).unit
    detail = (f"{ia} @ {pa['label']}: {fmt_number(va)} {unit}"
              f"{_cpu_note(rs, target.workload, pa, ia)} vs {ib} @ {pb['label']}: "
              f"{fmt_number(vb)} {unit}{_cpu_note(rs, target.workload, pb, ib)} "
              f"-> {ratio:.2f}")
    if _noisy(rs, target.workload, pa, ia) or _noisy(rs, target.workload, pb, ib):
        detail += " [measured while other processes kept the CPUs busy]"
    if ok is None:
        return {**out, "status": "INFO", "ratio": ratio, "detail": detail}
    detail += f" (need {target.op} {target.threshold:g})"
    return {**out, "status": "PASS" if ok else "MISS", "ratio": ratio, "detail": detail}


def check_all(rs: ResultSet) -> List[Dict[str, Any]]:
    """Every target whose workload was run."""
    return [check(rs, t) for t in TARGETS if rs.workload(t.workload) is not None]
