"""Smoke test of the benchmark suite: ``pytest bench/test_quick.py``.

Runs ``python -m bench --quick`` into a temporary directory and checks that
every workload ran and produced numbers for every implementation that could
run here (not how fast: quick mode is too short for that).  Copy or import
it from tests/ to make it part of the test suite.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
QUICK_LIMIT = 120  # seconds: the budget for --quick


@pytest.mark.timeout(QUICK_LIMIT * 3)
def test_quick_mode_produces_numbers(tmp_path: Path) -> None:
    done = subprocess.run([sys.executable, "-m", "bench", "--quick", "--out", str(tmp_path)],
                          cwd=REPO, capture_output=True, text=True, timeout=QUICK_LIMIT * 3,
                          check=False)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    data = json.loads((tmp_path / "results.json").read_text())
    assert data["meta"]["elapsed_s"] < QUICK_LIMIT
    ran = {i["key"] for i in data["impls"] if not i["skip"]}
    assert ran, "no implementation could run"
    for workload in data["workloads"]:
        primary = workload["metrics"][0]
        for point in workload["points"]:
            for cell in data["cells"]:
                if (cell["workload"], cell["point"]) != (workload["key"], point["key"]):
                    continue
                if cell["impl"] in ran:
                    assert cell["status"] == "ok", cell
                    assert isinstance(cell["median"].get(primary), float), cell
    for name in ("results.md", *(f"{w['key']}.png" for w in data["workloads"])):
        assert (tmp_path / name).stat().st_size > 0, name
