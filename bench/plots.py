"""PNG plots (matplotlib) from a results document.

A workload with a numeric ``axis`` (idle connections) is drawn as lines
(log x); any other as grouped bars, one group per point.  A failed
measurement is drawn as a red cross with "failed", never left blank.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, List, Tuple

from .model import ResultSet, fmt_number


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _colors(rs: ResultSet) -> Dict[str, Any]:
    plt = _pyplot()
    palette = plt.get_cmap("tab10" if len(rs.impls) <= 10 else "tab20").colors
    return {impl["key"]: palette[i % len(palette)] for i, impl in enumerate(rs.impls)}


def _subtitle(rs: ResultSet) -> str:
    meta = rs.meta
    cpus = meta.get("machine", {}).get("logical_cpus", "?")
    pythons = sorted(set(meta.get("pythons", {}).values()))
    return (f"median of {meta.get('repeats', '?')} run(s), {cpus} CPUs, "
            f"Python {'/'.join(pythons)}, {meta.get('mode', '?')} mode")


def _failed(rs: ResultSet, wkey: str, point: str, impl: str) -> bool:
    cell = rs.cell(wkey, point, impl)
    return cell is not None and cell["status"] == "failed"


def _mark_failures(ax: Any, failures: List[Tuple[float, str]], colors: Dict[str, Any]) -> None:
    """A cross per failed (x, implementation) at the bottom of the plot, and
    one red label per x listing who failed there."""
    bottom = ax.get_ylim()[0]
    by_x: Dict[float, List[str]] = {}
    for x, impl in failures:
        by_x.setdefault(x, []).append(impl)
    for x, impls in by_x.items():
        for impl in impls:
            ax.plot([x], [bottom], marker="X", markersize=12, color=colors[impl], linestyle="")
        ax.annotate("failed:\n" + "\n".join(impls), (x, bottom), textcoords="offset points",
                    xytext=(-8, 10), ha="right", color="red", fontsize=7)


def line_chart(rs: ResultSet, wkey: str, path: Path) -> None:
    """Primary metric against the workload's numeric axis, one line per implementation."""
    plt = _pyplot()
    workload = rs.workload(wkey)
    axis, points, primary = workload["axis"], workload["points"], rs.primary(wkey)
    colors = _colors(rs)
    fig, ax = plt.subplots(figsize=(9, 5.5))
    failures = []
    for impl in rs.impls_of(wkey):
        xs, ys = [], []
        for point in points:
            value = rs.value(wkey, point["key"], impl)
            if value is not None:
                xs.append(point["params"][axis])
                ys.append(value)
            elif _failed(rs, wkey, point["key"], impl):
                failures.append((point["params"][axis], impl))
        if xs:
            ax.plot(xs, ys, marker="o", label=impl, color=colors[impl])
    ax.set_xscale("symlog", linthresh=100)
    ax.set_yscale("log")
    _mark_failures(ax, failures, colors)
    ax.set_xticks([p["params"][axis] for p in points])
    ax.set_xticklabels([f"{p['params'][axis]:,}" for p in points])
    ax.set_xlabel(f"{axis} connections (symmetric log scale)")
    ax.set_ylabel(f"{primary.label} (log scale)")
    ax.set_title(f"{workload['title']}: {primary.label}\n{_subtitle(rs)}", fontsize=11)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8, loc="best")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def bar_chart(rs: ResultSet, wkey: str, path: Path) -> None:
    """Primary metric as grouped bars: one group per point, one bar per implementation."""
    plt = _pyplot()
    workload = rs.workload(wkey)
    points, primary = workload["points"], rs.primary(wkey)
    impls = rs.impls_of(wkey)
    colors = _colors(rs)
    width = 0.8 / max(1, len(impls))
    fig, ax = plt.subplots(figsize=(max(7, 1.6 * len(points) + 4), 5.5))
    values = [v for p in points for i in impls
              if (v := rs.value(wkey, p["key"], i)) is not None]
    log = bool(values) and min(values) > 0 and max(values) / min(values) > 30
    for n, impl in enumerate(impls):
        for g, point in enumerate(points):
            x = g + (n - (len(impls) - 1) / 2) * width
            value = rs.value(wkey, point["key"], impl)
            if value is not None:
                ax.bar(x, value, width, color=colors[impl], label=impl if g == 0 else None)
                ax.annotate(fmt_number(value), (x, value), ha="center", va="bottom",
                            fontsize=6, rotation=90, textcoords="offset points",
                            xytext=(0, 2))
            elif _failed(rs, wkey, point["key"], impl):
                ax.annotate(f"{impl}: failed", (x, 0.01), ha="center", va="bottom",
                            color="red", fontsize=7, rotation=90,
                            xycoords=("data", "axes fraction"))
    if log:
        ax.set_yscale("log")
    ax.margins(y=0.12)  # room for the value labels
    ax.set_xticks(range(len(points)))
    ax.set_xticklabels([p["label"] for p in points], fontsize=8)
    better = "higher" if primary.higher_is_better else "lower"
    ax.set_ylabel(f"{primary.title()} ({better} is better{', log scale' if log else ''})")
    ax.set_title(f"{workload['title']}: {primary.label}\n{_subtitle(rs)}", fontsize=11)
    ax.grid(True, axis="y", which="both", alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def draw_all(rs: ResultSet, outdir: Path) -> Dict[str, str]:
    """One PNG per workload in ``outdir``; returns workload key -> file name.
    Without matplotlib, draws nothing and says so."""
    try:
        _pyplot()
    except ImportError:
        print("matplotlib is not installed: no plots (pip install matplotlib)")
        return {}
    drawn: Dict[str, str] = {}
    for workload in rs.workloads:
        wkey = workload["key"]
        name = f"{wkey}.png"
        chart = line_chart if workload["axis"] and len(workload["points"]) > 1 else bar_chart
        chart(rs, wkey, outdir / name)
        drawn[wkey] = name
    return drawn


def plot_links(drawn: Dict[str, str], prefix: str) -> Dict[str, str]:
    """File names as links relative to where the Markdown lives."""
    return {k: f"{prefix}{v}" for k, v in drawn.items()}

