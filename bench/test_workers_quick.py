"""Smoke test of ``python -m bench.workers --quick``: both worker counts
produce numbers (not how fast: quick mode is too short for that)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


@pytest.mark.timeout(300)
def test_workers_bench_quick_produces_numbers(tmp_path: Path) -> None:
    done = subprocess.run([sys.executable, "-m", "bench.workers", "--quick", "--out",
                           str(tmp_path)], cwd=REPO, capture_output=True, text=True,
                          timeout=240, check=False)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    data = json.loads((tmp_path / "workers.json").read_text())
    assert [cell["point"] for cell in data["cells"]] == ["workers1", "workers2"]
    for cell in data["cells"]:
        for metric in ("rate", "rate_per_server_cpu", "server_cpu", "client_cpu"):
            assert cell["median"][metric] > 0, (metric, cell)
    assert "**Scaling.**" in (tmp_path / "workers.md").read_text()
