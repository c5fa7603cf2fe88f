"""Markdown and JSON from a results document.

The report opens with the targets, the server CPU per unit of work of
every workload side by side, and before/after tables when a baseline
revision ran (overview.py).  Then per workload: a summary table (each
metric with its ratio to the comparison: rates next to server CPU per unit
of work), and a detail table with every metric, client and server CPU,
runs and spread, failures spelled out in notes.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Dict, List, Optional

from .model import ResultSet, fmt_number, fmt_ratio
from .overview import before_after_section, overview_section
from .tables import NOISY_NOTE, Notes, status_cell, table
from .targets import SOURCES
from .workloads import Metric

HEADLINE_START = "<!-- bench:headline:start -->"
HEADLINE_END = "<!-- bench:headline:end -->"
#: Metrics shown as shares of a core, not compared by ratio.
SHARES = ("client_cpu", "server_cpu", "background_cpu")


def wide_table(rs: ResultSet, wkey: str, notes: Notes, brief: bool = False) -> str:
    """Implementations x points: primary metric (ratio to the comparison),
    with a last-over-first column for a workload with an axis (the README
    headline's form)."""
    workload = rs.workload(wkey)
    points = workload["points"]
    header = ["Implementation"] + [p["label"] for p in points]
    if workload["axis"] and len(points) > 1:
        header.append(f"{points[-1]['label']} / {points[0]['label']}")
    rows = []
    for impl in rs.impls_of(wkey):
        row = [f"`{impl}`"]
        for point in points:
            cell = rs.cell(wkey, point["key"], impl)
            shown = status_cell(cell, point["label"], notes, brief)
            if not shown:
                value = rs.value(wkey, point["key"], impl)
                shown = f"{fmt_number(value)} ({fmt_ratio(rs.ratio(wkey, point['key'], impl))})"
                if cell and cell.get("noisy_point"):
                    shown += " " + notes.add(NOISY_NOTE)
            row.append(shown)
        if len(header) > len(row):
            a = rs.value(wkey, points[-1]["key"], impl)
            b = rs.value(wkey, points[0]["key"], impl)
            row.append(f"{100 * a / b:.0f}%" if a is not None and b else "n/a")
        rows.append(row)
    return table(header, rows)


def _heading(metric: Metric) -> str:
    """A column heading: what, in what unit, and which way is better."""
    better = "higher" if metric.higher_is_better else "lower"
    return f"{metric.title()}, {better} is better"


def summary_table(rs: ResultSet, wkey: str, notes: Notes) -> str:
    """One row per (point, implementation): each of the workload's metrics
    with its ratio to the comparison (rates and server CPU per unit of work
    side by side), then the server and client CPU shares."""
    workload = rs.workload(wkey)
    compared = [rs.metric(wkey, m) for m in workload["metrics"] if m not in SHARES]
    shares = [rs.metric(wkey, m) for m in workload["metrics"] if m in SHARES]
    header = ["Point", "Implementation"]
    for metric in compared:
        header += [_heading(metric), "ratio"]
    header += [m.label for m in shares]
    rows = []
    for point in workload["points"]:
        for impl in rs.impls_of(wkey):
            cell = rs.cell(wkey, point["key"], impl)
            if cell is None:
                continue
            shown = status_cell(cell, point["label"], notes)
            if shown:
                rows.append([point["label"], f"`{impl}`", shown] + [""] * (len(header) - 3))
                continue
            row = [point["label"], f"`{impl}`"]
            for metric in compared:
                value = rs.value(wkey, point["key"], impl, metric.key)
                row += [fmt_number(value),
                        fmt_ratio(rs.ratio(wkey, point["key"], impl, metric.key))]
            row += [fmt_number(cell["median"].get(m.key), "%") for m in shares]
            if cell.get("noisy_point"):
                row[1] += " " + notes.add(NOISY_NOTE)
            rows.append(row)
    return table(header, rows)


def detail_table(rs: ResultSet, wkey: str, notes: Notes) -> str:
    """One row per (point, implementation) with every metric and CPU."""
    workload = rs.workload(wkey)
    metrics = [rs.metric(wkey, m) for m in workload["metrics"]]
    metrics.append(rs.metric(wkey, "background_cpu"))
    header = ["Point", "Implementation"] + [f"{m.label}" for m in metrics]
    header += ["vs comparison", "runs", f"spread of {metrics[0].label} (min-max)"]
    rows = []
    for point in workload["points"]:
        base = rs.baseline(wkey, point["key"]) or "n/a"
        for impl in rs.impls_of(wkey):
            cell = rs.cell(wkey, point["key"], impl)
            shown = status_cell(cell, point["label"], notes)
            if cell is None:
                continue
            if shown:
                rows.append([point["label"], f"`{impl}`", shown] + [""] * (len(header) - 3))
                continue
            values = [fmt_number(cell["median"].get(m.key), m.unit) for m in metrics]
            low, high = cell["spread"].get(metrics[0].key, [None, None])
            ratio = rs.ratio(wkey, point["key"], impl)
            used = cell.get("used_runs", len(cell["runs"]))
            noisy = len(cell["runs"]) - used
            runs = f"{used}" + (f" (+{noisy} noisy, left out)" if noisy else "")
            if cell.get("noisy_point"):
                runs += " " + notes.add(NOISY_NOTE)
            rows.append([point["label"], f"`{impl}`", *values,
                         f"{fmt_ratio(ratio)} {base}", runs,
                         f"{fmt_number(low)}-{fmt_number(high)}"])
            for note in cell.get("notes", []) + ([cell["error"]] if cell["error"] else []):
                rows[-1][1] += " " + notes.add(f"{impl} @ {point['label']}: {note}")
    return table(header, rows)


def workload_section(rs: ResultSet, wkey: str, plots: Dict[str, str]) -> str:
    """Heading, description, plot, summary and details of one workload."""
    workload = rs.workload(wkey)
    parts = [f"## {workload['title']}", "", workload["description"], ""]
    if wkey in plots:
        parts += [f"![{workload['title']}]({plots[wkey]})", ""]
    notes = Notes()
    comparison = " or ".join(f"`{b}`" for b in workload["baselines"])
    parts += [f"Medians, each with its ratio to the comparison ({comparison}, the first "
              "that ran). Server CPU is the server's CPU time in the measured window "
              "(scheduler nanoseconds where /proc offers them).", "",
              summary_table(rs, wkey, notes), "", "<details><summary>Details</summary>", "",
              detail_table(rs, wkey, notes), "", "</details>", ""]
    if notes.items:
        parts += [notes.render(), ""]
    return "\n".join(parts)


def targets_section(targets: List[Dict[str, Any]]) -> str:
    """The targets table."""
    rows = [[t["title"], f"**{t['status']}**", t["detail"],
             SOURCES.get(t["source"], t["source"])] for t in targets]
    return "## Targets\n\n" + table(["Target", "Result", "Measured", "From"], rows) + "\n"


def fmt_load(load: Optional[List[float]]) -> str:
    """1/5/15-minute load averages."""
    return "/".join(f"{x:.2f}" for x in load) if load else "n/a"


def noisy_policy(meta: Dict[str, Any]) -> str:
    """How runs disturbed by other processes were handled ("" if unknown)."""
    if not meta.get("noisy_retries"):
        return ""
    return (f"; a run during which other processes used more than "
            f"{meta['noisy_threshold']:.0f}% of a core on its CPUs was redone (up to "
            f"{meta['noisy_retries']} extra runs per figure, {meta.get('noisy_budget', '?')} "
            "in all) and left out of the median")


def machine_lines(meta: Dict[str, Any]) -> List[str]:
    """Where and how it was measured."""
    machine = meta.get("machine", {})
    background = meta.get("background_cpu", {})
    pythons = ", ".join(f"`{k}` {v}" for k, v in meta.get("pythons", {}).items())
    trees = ", ".join(f"{label} {revision}" for label, revision in meta.get("trees", {}).items())
    return [
        f"- Machine: {machine.get('cpu_model', '?')}, {machine.get('logical_cpus', '?')} "
        f"logical CPUs ({machine.get('physical_cores', '?')} cores), "
        f"{machine.get('memory_gb', '?')} GB RAM, {machine.get('platform', '?')}",
        f"- Python: {pythons}",
        f"- pollchat trees: {trees or 'n/a'}",
        f"- Load generator: {meta.get('loadgen', '?')}; server pinned to CPU "
        f"{meta.get('server_cpu')}, client to CPU {meta.get('client_cpu')} (to the "
        "server's CPU for single-connection ping-pong: see Idle scaling)",
        f"- Mode: {meta.get('mode')}; every figure is the median of {meta.get('repeats')} "
        f"run(s); ping-pong windows {meta.get('duration')} s after {meta.get('warmup')} s "
        f"warm-up; loopback only{noisy_policy(meta)}",
        f"- Date: {meta.get('started')}; commit {meta.get('commit') or 'n/a'} (plus any "
        f"uncommitted changes); took {meta.get('elapsed_s', 0):.0f} s; "
        f"command: `{meta.get('command')}`",
        f"- Load from other processes: load average {fmt_load(meta.get('loadavg_start'))} "
        f"at the start, {fmt_load(meta.get('loadavg_end'))} at the end; CPU used by others "
        "during the "
        f"measured windows: median {fmt_number(background.get('median'), '%')}, max "
        f"{fmt_number(background.get('max'), '%')} of one core",
    ]


def markdown(rs: ResultSet, targets: List[Dict[str, Any]], plots: Dict[str, str]) -> str:
    """The whole report: targets first, then CPU per unit of work across
    workloads, before/after, how it was measured, and each workload."""
    meta = rs.meta
    parts = ["# pollchat benchmark results", "",
             "Generated by `python -m bench` (bench/run.py). Competitors run the same "
             "workloads in the same run: pollchat on each backend, CPython 3.11's "
             "asyncore/asynchat (the *same* server program, only the import differs), "
             "asyncio (a Protocol) and uvloop.", ""]
    if meta.get("mode") == "quick":
        parts += ["> **Quick mode**: a smoke test that every workload runs and produces "
                  "numbers; sizes and durations are too small for the figures to mean "
                  "anything.", ""]
    parts += [targets_section(targets), overview_section(rs), before_after_section(rs),
              "## How it was measured", "", *machine_lines(meta), "", competitors_section(rs)]
    for workload in rs.workloads:
        parts.append(workload_section(rs, workload["key"], plots))
    return "\n".join(part for part in parts if part is not None)


def competitors_section(rs: ResultSet) -> str:
    """Which implementations ran, under what, and why some did not."""
    rows = []
    for impl in rs.impls:
        command = " ".join([*impl.get("launcher", []), "<server>", *impl.get("flags", [])])
        env = " ".join(f"{k}={v}" if k != "PYTHONPATH" else f"{k}=<{impl.get('tree')} tree>"
                       for k, v in impl["env"].items())
        rows.append([f"`{impl['key']}`", f"`{(env + ' ') if env else ''}{command}`",
                     impl["version"] or "?", impl["skip"] or "ran"])
    header = ["Implementation", "Server command (after the interpreter)", "Python", "Status"]
    return ("## Competitors\n\n`<server>` is the workload's program for the "
            "implementation's kind: servers/legacy_server.py (asyncore/asynchat API) or "
            "servers/asyncio_server.py (asyncio Protocol).\n\n" + table(header, rows) + "\n")


def headline(rs: ResultSet, plots: Dict[str, str]) -> str:
    """The headline block for a README: idle-scaling plot and table, the
    concurrency table, and server CPU per unit of work on every workload."""
    parts = [HEADLINE_START, ""]
    for wkey in ("idle", "concurrency"):
        if not rs.has_workload(wkey):
            continue
        notes = Notes()
        title = rs.workload(wkey)["title"]
        if wkey in plots:
            parts += [f"![{title}]({plots[wkey]})", ""]
        parts += [f"**{title}** ({rs.primary(wkey).label}, ratio to stdlib asyncore):", "",
                  wide_table(rs, wkey, notes, brief=True), ""]
        if notes.items:
            parts += [notes.render(), ""]
    parts += [overview_section(rs, brief=True)]
    parts += [f"Measured {rs.meta.get('started', '?')[:10]} on "
              f"{rs.meta.get('machine', {}).get('logical_cpus', '?')} CPUs; full results "
              "in bench/RESULTS.md.", "", HEADLINE_END]
    return "\n".join(parts)


def update_headline(readme: Path, block: str) -> bool:
    """Replace the headline block of ``readme`` (between the markers) if it
    has one.  Returns whether the file was changed."""
    if not readme.exists():
        return False
    text = readme.read_text(encoding="utf-8")
    start, end = text.find(HEADLINE_START), text.find(HEADLINE_END)
    if start < 0 or end < start:
        return False
    new = text[:start] + block + text[end + len(HEADLINE_END):]
    if new != text:
        readme.write_text(new, encoding="utf-8")
    return new != text


def write_json(path: Path, data: Dict[str, Any]) -> None:
    """results.json, stable and readable."""
    path.write_text(json.dumps(data, indent=1, sort_keys=False) + "\n", encoding="utf-8")
