"""Importable pollchat trees: the working tree, and a git revision to
compare it with (``--baseline REV``).

The repository keeps the core in ``src/pollchat/`` and the pollers in
``src/backends/``, installed together as ``pollchat`` and
``pollchat.backends``.  A benchmark server gets the tree it measures on
``PYTHONPATH``: a directory holding ``pollchat/`` (the core) with
``pollchat/backends/`` inside.  Both trees are copies, so that editing the
source while a run is going does not change what the rest of the run
measures, and so that any interpreter (``--python313``) can import them
without installing anything.
"""

from __future__ import annotations

import io
import shutil
import subprocess
import tarfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, List, Optional, Set

REPO = Path(__file__).resolve().parent.parent


class TreeError(Exception):
    """A tree cannot be built; the message says why."""


@dataclass(frozen=True)
class Tree:
    """An importable pollchat: put ``path`` on PYTHONPATH."""

    label: str  # "current", or "base" for --baseline
    path: Path  # holds pollchat/
    revision: str  # the commit (with "+ uncommitted changes" for current)


def _git(*args: str, binary: bool = False, repo: Path = REPO
         ) -> subprocess.CompletedProcess[Any]:
    try:
        return subprocess.run(["git", *args], cwd=repo, capture_output=True, text=not binary,
                              timeout=120, check=False)
    except (OSError, subprocess.SubprocessError) as exc:
        raise TreeError(f"git {' '.join(args)} failed: {exc}") from None


def assemble(src: Path, dest: Path) -> None:
    """Make ``dest/pollchat`` from a checkout's ``src/``: ``src/pollchat``,
    plus ``src/backends`` as ``pollchat/backends`` when the pollers live
    there (as they do since the layers were split; older trees carry
    ``src/pollchat/backends`` themselves)."""
    core = src / "pollchat"
    if not (core / "__init__.py").is_file():
        raise TreeError(f"{core} is not the pollchat package")
    package = dest / "pollchat"
    shutil.rmtree(dest, ignore_errors=True)
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    backends = src / "backends"

    def ignore_in_core(directory: str, names: List[str]) -> Set[str]:
        skipped = set(ignore(directory, names))
        if Path(directory) == core and (core / "backends").is_symlink():
            skipped.add("backends")  # the type checkers' link to src/backends, copied below
        return skipped

    shutil.copytree(core, package, ignore=ignore_in_core)
    if backends.is_dir():
        if (package / "backends").exists():
            raise TreeError(f"{src} has both src/backends and src/pollchat/backends")
        shutil.copytree(backends, package / "backends", ignore=ignore)
    elif not (package / "backends" / "__init__.py").is_file():
        raise TreeError(f"{src} has no backends package (src/backends or src/pollchat/backends)")


def current(workdir: Path, repo: Path = REPO) -> Tree:
    """The working tree as it is now, uncommitted changes included."""
    head = _git("rev-parse", "--short=12", "HEAD", repo=repo)
    dirty = _git("status", "--porcelain", "--", "src", repo=repo)
    revision = head.stdout.strip() if head.returncode == 0 else "unknown"
    if dirty.returncode == 0 and dirty.stdout.strip():
        revision += " + uncommitted changes"
    dest = workdir / "current"
    assemble(repo / "src", dest)
    return Tree("current", dest, revision)


def resolve(rev: str, repo: Path = REPO) -> str:
    """The full commit hash ``rev`` names; TreeError if none."""
    done = _git("rev-parse", "--verify", "--quiet", f"{rev}^{{commit}}", repo=repo)
    if done.returncode != 0 or not done.stdout.strip():
        raise TreeError(f"--baseline {rev}: not a commit of this repository")
    return str(done.stdout.strip())


def revision(rev: str, workdir: Path, repo: Path = REPO) -> Tree:
    """``src/`` of commit ``rev`` (``git archive``), assembled into an
    importable tree under ``workdir``; reused when already built."""
    commit = resolve(rev, repo)
    dest = workdir / f"base-{commit[:12]}"
    if (dest / "pollchat" / "__init__.py").is_file():
        return Tree("base", dest, commit[:12])
    archive = _git("archive", "--format=tar", commit, "src", binary=True, repo=repo)
    if archive.returncode != 0:
        raise TreeError(f"git archive {commit[:12]} src failed: "
                        f"{archive.stderr.decode('utf-8', 'replace').strip()}")
    checkout = workdir / f"checkout-{commit[:12]}"
    shutil.rmtree(checkout, ignore_errors=True)
    with tarfile.open(fileobj=io.BytesIO(archive.stdout)) as tar:
        _extract(tar, checkout)
    try:
        assemble(checkout / "src", dest)
    finally:
        shutil.rmtree(checkout, ignore_errors=True)
    return Tree("base", dest, commit[:12])


def _extract(tar: tarfile.TarFile, dest: Path) -> None:
    """Extract git's own archive: nothing outside ``dest``, no links or
    devices (the 'data' filter where this Python has extraction filters)."""
    data_filter: Optional[object] = getattr(tarfile, "data_filter", None)
    if data_filter is not None:
        tar.extractall(dest, filter="data")
        return
    for member in tar.getmembers():
        target = (dest / member.name).resolve()
        if not (member.isfile() or member.isdir()) or dest.resolve() not in target.parents:
            raise TreeError(f"unexpected entry {member.name!r} in git archive")
    tar.extractall(dest)  # noqa: S202 (every member checked above)
