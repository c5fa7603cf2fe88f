"""Tables across workloads: what the server's CPU buys on every workload,
side by side (the form of issue 12's table), and, when a baseline revision
ran (``--baseline REV``), before/after for each pollchat backend.

Both work from the results document alone (see model.py).
"""

from __future__ import annotations

from typing import List, Optional, Tuple

from .model import ResultSet, fmt_number, fmt_ratio
from .tables import Notes, status_cell, table
from .workloads import Metric


def efficiency_rows(rs: ResultSet) -> List[Tuple[str, str, str]]:
    """``(workload key, point key, label)`` of every point of every workload
    that has a server-CPU-per-work metric."""
    rows = []
    for workload in rs.workloads:
        if not workload.get("efficiency"):
            continue
        for point in workload["points"]:
            rows.append((workload["key"], point["key"], f"{workload['title']}: {point['label']}"))
    return rows


def _present(rs: ResultSet, rows: List[Tuple[str, str, str]]) -> List[str]:
    """Implementations with a cell in any of ``rows``' workloads, report order."""
    wanted = {w for w, _, _ in rows}
    present = {key for w in wanted for key in rs.impls_of(w)}
    return [i["key"] for i in rs.impls if i["key"] in present]


def overview_section(rs: ResultSet, brief: bool = False) -> str:
    """One row per workload point, one column per implementation: the
    workload's efficiency metric (server CPU per unit of work, or units of
    work per server CPU-second) with its ratio to the comparison."""
    rows = efficiency_rows(rs)
    if not rows:
        return ""
    impls = _present(rs, rows)
    notes = Notes()
    body = []
    for wkey, pkey, label in rows:
        metric = rs.efficiency(wkey)
        if metric is None:  # efficiency_rows() lists only workloads that have one
            continue
        values = {impl: rs.value(wkey, pkey, impl, metric.key) for impl in impls}
        if all(value is None for value in values.values()):
            continue  # e.g. streams too short for a CPU figure
        base = rs.baseline(wkey, pkey)
        point_label = label.split(": ", 1)[1]
        line = [label, metric.label, f"`{base}`" if base else "n/a"]
        for impl, value in values.items():
            shown = status_cell(rs.cell(wkey, pkey, impl), point_label, notes, brief=True)
            if not shown:
                ratio = rs.ratio(wkey, pkey, impl, metric.key)
                shown = fmt_number(value) + (f" ({fmt_ratio(ratio)})" if ratio else "")
            line.append(shown)
        body.append(line)
    parts = ["## Server CPU per unit of work" if not brief else
             "**Server CPU per unit of work** (ratio to the comparison):", ""]
    if not brief:
        parts += ["The server's CPU time in the measured window, per unit of work (or units "
                  "of work per CPU-second), medians; in brackets the ratio to the comparison "
                  "named in the third column. Ratios of CPU per unit below 1, and of units "
                  "per CPU-second above 1, mean cheaper than the comparison.", ""]
    parts += [table(["Workload", "Metric", "Comparison", *[f"`{i}`" for i in impls]], body), ""]
    if notes.items:
        parts += [notes.render(), ""]
    return "\n".join(parts)


def base_pairs(rs: ResultSet) -> List[Tuple[str, str]]:
    """``(current, base)`` implementation pairs that both ran."""
    pairs = []
    for impl in rs.impls:
        base: Optional[str] = rs.base_of(impl["key"]) if not impl["skip"] else None
        if base:
            pairs.append((impl["key"], base))
    return pairs


def before_after_section(rs: ResultSet) -> str:
    """For each workload point and each (current, baseline) pair: the primary
    metric and the efficiency metric, before, after, and after/before."""
    pairs = base_pairs(rs)
    if not pairs:
        return ""
    revision = rs.meta.get("trees", {}).get("base", "")
    body = []
    for workload in rs.workloads:
        wkey = workload["key"]
        metrics: List[Metric] = []
        for candidate in (rs.primary(wkey), rs.efficiency(wkey),
                          rs.metric(wkey, "rate") if "rate" in workload["metrics"] else None):
            if candidate and candidate.key not in [m.key for m in metrics]:
                metrics.append(candidate)
        for point in workload["points"]:
            for current, base in pairs:
                if rs.cell(wkey, point["key"], current) is None:
                    continue
                for metric in metrics:
                    before = rs.value(wkey, point["key"], base, metric.key)
                    after = rs.value(wkey, point["key"], current, metric.key)
                    change = fmt_ratio(after / before) if after is not None and before else "n/a"
                    body.append([f"{workload['title']}: {point['label']}",
                                 f"`{base}` -> `{current}`",
                                 metric.title(),
                                 fmt_number(before), fmt_number(after), change])
    intro = ("The working tree against the baseline revision" +
             (f" {revision}" if revision else "") + ", measured in the same run (interleaved "
             "runs, medians). After/before above 1 is more of the metric: better for rates "
             "and units per CPU-second, worse for CPU per unit and memory.")
    header = ["Workload", "Before -> after", "Metric", "Before", "After", "After / before"]
    return "\n".join(["## Before / after", "", intro, "", table(header, body), ""])
