"""Smoke test of the whole benchmark suite: ``pytest bench/test_quick.py``
(CI runs ``pytest bench``: see .ci/run).

Runs ``python -m bench --quick`` into a temporary directory and checks that
it succeeded, that every workload produced numbers for every implementation
that could run here (including server CPU per unit of work where the
workload has a measured window), that the load generator replies were
validated by the C client when a compiler exists, and that every target of
issues 12 to 15 was evaluated.  Not how fast: quick mode is too short for that.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any, Dict

import pytest

from bench.loadgen import compiler
from bench.runner import MIN_CPU_WINDOW
from bench.targets import TARGETS

REPO = Path(__file__).resolve().parent.parent
#: Seconds: --quick should take about a minute; this bound only catches a
#: quick mode that has grown far beyond that (the machine may be shared).
QUICK_BUDGET = 240


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory: pytest.TempPathFactory) -> Dict[str, Any]:
    out = tmp_path_factory.mktemp("quick")
    done = subprocess.run([sys.executable, "-m", "bench", "--quick", "--out", str(out)],
                          cwd=REPO, capture_output=True, text=True, timeout=QUICK_BUDGET * 2,
                          check=False)
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-4000:]
    data: Dict[str, Any] = json.loads((out / "results.json").read_text(encoding="utf-8"))
    data["_out"] = out
    return data


@pytest.mark.timeout(QUICK_BUDGET * 2 + 60)
def test_quick_mode_measures_every_workload(quick_run: Dict[str, Any]) -> None:
    data = quick_run
    assert data["meta"]["elapsed_s"] < QUICK_BUDGET
    ran = {i["key"] for i in data["impls"] if not i["skip"]}
    assert any(key.startswith("pollchat-") for key in ran), data["impls"]
    assert {"stdlib-select", "asyncio"} <= ran, "a competitor could not run"
    cells = {(c["workload"], c["point"], c["impl"]): c for c in data["cells"]}
    for workload in data["workloads"]:
        for point in workload["points"]:
            measured = [c for (w, p, _), c in cells.items()
                        if (w, p) == (workload["key"], point["key"])]
            assert measured, f"nothing ran on {workload['key']}/{point['key']}"
            for cell in measured:
                if cell["impl"] not in ran:
                    continue
                assert cell["status"] == "ok", cell
                # CPU figures need a window long enough to mean something; the
                # quick streams are over in milliseconds.
                long_enough = cell["median"].get("seconds", 0) >= MIN_CPU_WINDOW
                for metric in workload["metrics"] if long_enough else workload["metrics"][:1]:
                    assert isinstance(cell["median"].get(metric), float), (metric, cell)
    for workload in ("idle", "concurrency", "pipeline", "keepalive", "smtp", "tls_echo",
                     "tls_idle", "workers"):  # timed windows
        timed = [c for c in data["cells"] if c["workload"] == workload and c["impl"] in ran]
        assert timed and all("server_us_per_op" in c["median"] for c in timed), workload


@pytest.mark.timeout(QUICK_BUDGET * 2 + 60)
def test_quick_mode_evaluates_the_targets(quick_run: Dict[str, Any]) -> None:
    outcomes = {t["key"]: t for t in quick_run["targets"]}
    for target in TARGETS:
        if not target.source.startswith("issue ") or target.key == "pingpong-cpu-313":
            continue  # 3.13 needs --python313
        wanted = ("INFO",) if target.op == "info" else ("PASS", "MISS")
        assert outcomes[target.key]["status"] in wanted, outcomes[target.key]
    report = (quick_run["_out"] / "results.md").read_text(encoding="utf-8")
    assert report.index("## Targets") < report.index("## Server CPU per unit of work")
    for workload in quick_run["workloads"]:
        assert (quick_run["_out"] / f"{workload['key']}.png").stat().st_size > 0


@pytest.mark.timeout(QUICK_BUDGET * 2 + 60)
def test_quick_mode_uses_the_c_load_generator(quick_run: Dict[str, Any]) -> None:
    if compiler() is None:
        pytest.skip("no C compiler here: the Python load generator is used, as reported")
    assert quick_run["meta"]["loadgen"].startswith("C load generator")
