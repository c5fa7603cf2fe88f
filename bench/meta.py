"""What the report records about the machine and the run."""

from __future__ import annotations

import datetime
import os
import platform
import statistics
import subprocess
import sys
from pathlib import Path
from typing import Any, Dict, List, Optional

import psutil

from .impls import Impl

REPO = Path(__file__).resolve().parent.parent
#: 1-minute load average above which the machine counts as busy.
BUSY_LOAD = 0.5


def cpu_model() -> str:
    """The CPU's model name (Linux), else platform.processor()."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def machine() -> Dict[str, Any]:
    """Cores, memory, OS."""
    return {
        "cpu_model": cpu_model(),
        "logical_cpus": os.cpu_count(),
        "physical_cores": psutil.cpu_count(logical=False),
        "memory_gb": round(psutil.virtual_memory().total / 2**30, 1),
        "platform": platform.platform(),
        "nofile_limit": _nofile(),
    }


def _nofile() -> Optional[List[int]]:
    try:
        import resource
    except ImportError:
        return None
    return list(resource.getrlimit(resource.RLIMIT_NOFILE))


def git_commit() -> str:
    """The checked-out commit of the repository ("" if none)."""
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO,
                             capture_output=True, text=True, timeout=10, check=False)
    except (OSError, subprocess.SubprocessError):
        return ""
    return out.stdout.strip() if out.returncode == 0 else ""


def pythons(impls: List[Impl]) -> Dict[str, str]:
    """Interpreter version per group of implementations."""
    groups: Dict[str, List[str]] = {}
    versions: Dict[str, str] = {}
    for impl in impls:
        if impl.skip or not impl.version:
            continue
        groups.setdefault(impl.python, []).append(impl.key)
        versions[impl.python] = impl.version
    if not groups:
        return {"harness": platform.python_version()}
    return {", ".join(keys): versions[python] for python, keys in groups.items()}


def now() -> str:
    """The current local time, ISO 8601 to the second."""
    return datetime.datetime.now().astimezone().isoformat(timespec="seconds")


def command_line(argv: List[str]) -> str:
    """How this run was started."""
    if Path(sys.argv[0]).name == "__main__.py":
        return " ".join(["python -m bench", *argv])
    return " ".join(["python", "bench/run.py", *argv])


def loadavg() -> Optional[List[float]]:
    """The 1, 5 and 15-minute load averages (None where unknown)."""
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return None


def background(cells: List[Dict[str, Any]]) -> Dict[str, float]:
    """Median and max CPU (% of one core) other processes used during the
    measured windows of all runs."""
    values = [run["background_cpu"] for cell in cells for run in cell["runs"]
              if "background_cpu" in run]
    if not values:
        return {}
    return {"median": statistics.median(values), "max": max(values)}
