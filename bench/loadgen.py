"""Build the C load generator (loadgen.c) with the machine's gcc.

A Python client that does 100 connections of ping-pong saturates its own
core before a fast server does, and then the figure measures the client.
The C load generator keeps the server the bottleneck.  When gcc is missing
the harness falls back to the Python twin in clients.py, and says so.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import Optional, Tuple

SOURCE = Path(__file__).resolve().parent / "loadgen.c"


def compiler() -> Optional[str]:
    """gcc (or cc) on PATH, else None."""
    return shutil.which("gcc") or shutil.which("cc")


def compiler_version(cc: str) -> str:
    """First line of ``cc --version``."""
    try:
        out = subprocess.run([cc, "--version"], capture_output=True, text=True, timeout=30,
                             check=False)
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return (out.stdout.splitlines() or ["unknown"])[0]


def build(outdir: Path) -> Tuple[Optional[Path], str]:
    """Compile loadgen.c into ``outdir``.

    Returns ``(binary, description)``; ``binary`` is None when it cannot be
    built, and the description then says why.
    """
    cc = compiler()
    if cc is None:
        return None, "no C compiler on PATH: using the Python ping-pong client (slower)"
    outdir.mkdir(parents=True, exist_ok=True)
    binary = outdir / "loadgen"
    cmd = [cc, "-O2", "-Wall", "-o", str(binary), str(SOURCE)]
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=120, check=False)
    except (OSError, subprocess.SubprocessError) as exc:
        return None, f"compiling loadgen.c failed ({exc}): using the Python client"
    if done.returncode != 0:
        first = (done.stderr.strip().splitlines() or ["?"])[0]
        return None, f"compiling loadgen.c failed ({first}): using the Python client"
    return binary, f"C load generator built with {compiler_version(cc)}"
