"""Markdown and JSON from a results document.

Per workload: a summary table (implementations x points, the primary
metric with its ratio to the comparison), then a detail table with every
metric, client and server CPU, and failures spelled out in notes.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Dict, List, Optional

from .model import ResultSet, fmt_number, fmt_ratio
from .workloads import METRICS

HEADLINE_START = "<!-- bench:headline:start -->"
HEADLINE_END = "<!-- bench:headline:end -->"
NOISY_NOTE = ("measured while other processes kept the CPUs busy (no quiet run for every "
              "implementation here): the median of all runs, noisy ones included; "
              "rerun on a quiet machine")


def table(header: List[str], rows: List[List[str]]) -> str:
    """A Markdown table."""
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


class Notes:
    """Numbered footnotes for failures, collected while a table is built."""

    def __init__(self) -> None:
        self.items: List[str] = []

    def add(self, text: str) -> str:
        """The marker of ``text`` (the same text gets the same number)."""
        if text not in self.items:
            self.items.append(text)
        return f"[{self.items.index(text) + 1}]"

    def render(self) -> str:
        """The notes as a list ("" when none)."""
        return "\n".join(f"{i}. {text}" for i, text in enumerate(self.items, 1))


EXPECTED = "expected: select() cannot watch fds >= FD_SETSIZE (1024)"
BRIEF_ERROR = 200  # characters of an error message in a brief note


def failure_text(cell: Dict[str, Any], point_label: str, brief: bool = False) -> str:
    """One footnote for a failed or skipped cell (``brief``: the gist only)."""
    if cell["status"] == "skipped":
        return f"{cell['impl']}: skipped: {cell['error']}"
    if brief and cell["expected_failure"]:
        return f"{cell['impl']} @ {point_label}: failed as {EXPECTED}"
    kind = EXPECTED if cell["expected_failure"] else "UNEXPECTED"
    error = cell["error"][:BRIEF_ERROR] + "..." if brief else cell["error"]
    return f"{cell['impl']} @ {point_label}: failed ({kind}): {error}"


def status_cell(cell: Optional[Dict[str, Any]], point_label: str, notes: Notes,
                brief: bool = False) -> str:
    """What a table shows for a cell without numbers ("" when it has them)."""
    if cell is None:
        return "—"
    if cell["status"] == "skipped":
        return "skipped " + notes.add(failure_text(cell, point_label, brief))
    if cell["status"] == "failed":
        word = "failed" if cell["expected_failure"] else "**FAILED**"
        return word + " " + notes.add(failure_text(cell, point_label, brief))
    return ""


def summary_table(rs: ResultSet, wkey: str, notes: Notes, brief: bool = False) -> str:
    """Implementations x points: primary metric (ratio to the comparison)."""
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
                if cell.get("noisy_point"):
                    shown += " " + notes.add(NOISY_NOTE)
            row.append(shown)
        if len(header) > len(row):
            a = rs.value(wkey, points[-1]["key"], impl)
            b = rs.value(wkey, points[0]["key"], impl)
            row.append(f"{100 * a / b:.0f}%" if a is not None and b else "n/a")
        rows.append(row)
    return table(header, rows)


def detail_table(rs: ResultSet, wkey: str, notes: Notes) -> str:
    """One row per (point, implementation) with every metric and CPU."""
    workload = rs.workload(wkey)
    metrics = [METRICS[m] for m in workload["metrics"]]
    metrics.append(METRICS["background_cpu"])
    header = ["Point", "Implementation"] + [f"{m.label}" for m in metrics]
    header += ["vs comparison", "runs", "spread (min-max)"]
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
    primary = rs.primary(wkey)
    parts = [f"## {workload['title']}", "", workload["description"], ""]
    if wkey in plots:
        parts += [f"![{workload['title']}]({plots[wkey]})", ""]
    notes = Notes()
    better = "higher" if primary.higher_is_better else "lower"
    comparison = " or ".join(f"`{b}`" for b in workload["baselines"])
    parts += [f"{primary.label} ({better} is better); in brackets the ratio to the "
              f"comparison ({comparison}, the first that ran).", "",
              summary_table(rs, wkey, notes), "", "<details><summary>Details</summary>", "",
              detail_table(rs, wkey, notes), "", "</details>", ""]
    if notes.items:
        parts += [notes.render(), ""]
    return "\n".join(parts)


def targets_section(targets: List[Dict[str, Any]]) -> str:
    """The targets table."""
    rows = [[t["title"] + (" *(the bench's own threshold)*" if t["source"] == "bench" else ""),
             f"**{t['status']}**", t["detail"]] for t in targets]
    return "## Targets\n\n" + table(["Target", "Result", "Measured"], rows) + "\n"


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
    return [
        f"- Machine: {machine.get('cpu_model', '?')}, {machine.get('logical_cpus', '?')} "
        f"logical CPUs ({machine.get('physical_cores', '?')} cores), "
        f"{machine.get('memory_gb', '?')} GB RAM, {machine.get('platform', '?')}",
        f"- Python: {pythons}",
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
    """The whole report."""
    meta = rs.meta
    parts = ["# pollchat benchmark results", "",
             "Generated by `python -m bench` (bench/run.py). Competitors run the same "
             "workloads in the same run: pollchat on each backend, CPython 3.11's "
             "asyncore/asynchat (the *same* server program, only the import differs), "
             "asyncio (a Protocol) and uvloop.", "", *machine_lines(meta), ""]
    if meta.get("mode") == "quick":
        parts += ["> **Quick mode**: a smoke test that every workload runs and produces "
                  "numbers; sizes and durations are too small for the figures to mean "
                  "anything.", ""]
    parts += [targets_section(targets), competitors_section(rs)]
    for workload in rs.workloads:
        parts.append(workload_section(rs, workload["key"], plots))
    return "\n".join(parts)


def competitors_section(rs: ResultSet) -> str:
    """Which implementations ran, under what, and why some did not."""
    rows = []
    for impl in rs.impls:
        argv = impl["server"]
        server = " ".join([Path(argv[0]).name, *argv[1:]]) if argv else "-"
        env = " ".join(f"{k}={v}" for k, v in impl["env"].items())
        rows.append([f"`{impl['key']}`", f"`{(env + ' ') if env else ''}{server}`",
                     impl["version"] or "?", impl["skip"] or "ran"])
    header = ["Implementation", "Server", "Python", "Status"]
    return "## Competitors\n\n" + table(header, rows) + "\n"


def headline(rs: ResultSet, plots: Dict[str, str]) -> str:
    """The headline block for a README: idle-scaling plot and table,
    concurrency table."""
    parts = [HEADLINE_START, ""]
    for wkey in ("idle", "concurrency"):
        if rs.workload(wkey) is None:
            continue
        notes = Notes()
        title = rs.workload(wkey)["title"]
        if wkey in plots:
            parts += [f"![{title}]({plots[wkey]})", ""]
        parts += [f"**{title}** ({rs.primary(wkey).label}, ratio to stdlib asyncore):", "",
                  summary_table(rs, wkey, notes, brief=True), ""]
        if notes.items:
            parts += [notes.render(), ""]
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
