"""The competitors: which implementations this machine can run, and how.

An implementation is a *runtime* for one of the two kinds of server
program a workload has (see ``Workload.servers``):

* ``api="legacy"``: a program written against asyncore/asynchat
  (``servers/legacy_server.py``), run on pollchat (``--impl pollchat``, one
  implementation per backend, ``POLLCHAT_BACKEND``) or on CPython 3.11's own
  modules (``--impl stdlib``, always under a Python 3.11, with ``select()``
  and with ``use_poll=True``).  Only the import differs.
* ``api="asyncio"``: an idiomatic ``asyncio.Protocol`` program
  (``servers/asyncio_server.py``) on asyncio's loop or uvloop's.

The fixed competitors are the table :data:`IMPLS`; the pollchat ones are
made per backend, per tree (the working tree, and ``--baseline REV`` as
``pollchat-base-<backend>``) and per interpreter (``--python313 PATH``
adds ``pollchat-<backend>-py313``).  Adding a competitor is adding an
:class:`ImplSpec` to :data:`IMPLS`.  An implementation that cannot run here
is listed with the reason, so that the report shows it as skipped rather
than leaving it out silently.
"""

from __future__ import annotations

import glob
import json
import os
import shutil
import sys
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

from .procs import probe, python_version
from .trees import Tree

#: select(2) cannot watch fds at or above this.
FD_SETSIZE = 1024
#: Preferred backend for the extra interpreters (first available wins).
BEST_BACKENDS = ("epoll", "kqueue", "devpoll", "poll", "select")


@dataclass(frozen=True)
class Impl:
    """One competitor, resolved for this machine."""

    key: str  # e.g. "pollchat-epoll"
    family: str  # "pollchat", "stdlib" or "asyncio"
    api: str  # the kind of server program: "legacy" or "asyncio"
    python: str  # the interpreter that runs its server
    flags: Tuple[str, ...] = ()  # server options that choose the library
    env: Mapping[str, str] = field(default_factory=dict)
    launcher: Tuple[str, ...] = ()  # between interpreter and script, e.g. -m pollchat run
    max_fd: Optional[int] = None  # largest fd it can watch (select: 1023)
    version: str = ""  # of the interpreter
    skip: str = ""  # why it cannot run here ("" when it can)
    tree: str = ""  # pollchat tree: "current" or "base"
    backend: str = ""  # pollchat backend
    workloads: Optional[Tuple[str, ...]] = None  # None: every workload that has its api
    workers: int = 0  # N: the server is a `pollchat run --workers N` master (0: one process)

    @property
    def legacy(self) -> bool:
        """Whether it runs the asyncore/asynchat program (has ac_in_buffer_size)."""
        return self.api == "legacy"

    def argv(self, script: str, *extra: str) -> List[str]:
        """The server's full command line for server program ``script``."""
        return [self.python, *self.launcher, script, *self.flags, *extra]

    def to_json(self) -> Dict[str, Any]:
        """A JSON-able description."""
        data = asdict(self)
        data["env"] = dict(self.env)
        data["flags"] = list(self.flags)
        data["launcher"] = list(self.launcher)
        data["workloads"] = list(self.workloads) if self.workloads is not None else None
        return data


@dataclass(frozen=True)
class ImplSpec:
    """A row of the competitor table, before it is resolved for this machine.

    ``python`` is ``"harness"`` (the interpreter running the bench),
    ``"3.11"`` (a Python 3.11, for CPython's asyncore) or a path.
    ``requires`` names a module that must import under it.  ``tree``
    ``"current"`` puts the working tree's pollchat on PYTHONPATH (``"base"``
    the baseline's)."""

    key: str
    family: str
    api: str
    python: str
    flags: Tuple[str, ...] = ()
    requires: str = ""
    max_fd: Optional[int] = None
    env: Mapping[str, str] = field(default_factory=dict)
    launcher: Tuple[str, ...] = ()
    tree: str = ""
    backend: str = ""
    workloads: Optional[Tuple[str, ...]] = None
    skip: str = ""  # known already not to run here, and why
    workers: int = 0  # run the program under `pollchat run --workers N` (issue 15)


IMPLS: Tuple[ImplSpec, ...] = (
    ImplSpec("stdlib-select", "stdlib", "legacy", "3.11", ("--impl", "stdlib"),
             max_fd=FD_SETSIZE - 1),
    ImplSpec("stdlib-poll", "stdlib", "legacy", "3.11", ("--impl", "stdlib", "--use-poll")),
    ImplSpec("asyncio", "asyncio", "asyncio", "harness", ("--loop", "asyncio")),
    ImplSpec("uvloop", "asyncio", "asyncio", "harness", ("--loop", "uvloop"), requires="uvloop"),
    # Context for the pipelined workload: the application joins the replies to
    # one read into one write, the batching that issue 12 asks pollchat to do.
    ImplSpec("uvloop-batched", "asyncio", "asyncio", "harness",
             ("--loop", "uvloop", "--batch-writes"), requires="uvloop", workloads=("pipeline",)),
    # The unmodified legacy program under `pollchat run --workers N` (issue 15),
    # on the best backend, on the workers workload only: a master and N
    # worker processes, measured whole, never pinned.
    *(ImplSpec(f"pollchat-workers{n}", "pollchat", "legacy", "harness", ("--impl", "pollchat"),
               env={"POLLCHAT_BACKEND": "auto"}, tree="current", workers=n,
               workloads=("workers",)) for n in (1, 2)),
)


def workers_launcher(workers: int) -> Tuple[str, ...]:
    """What goes between the interpreter and the program for ``workers``
    worker processes (nothing for 0)."""
    if not workers:
        return ()
    return ("-m", "pollchat", "run", "--workers", str(workers), "-q")


def find_python(version: str, explicit: Optional[str] = None) -> Optional[str]:
    """A Python ``version`` (e.g. ``"3.11"``): ``explicit``, this one,
    ``python3.11`` on PATH, or the newest under pyenv's root."""
    candidates = [explicit] if explicit else []
    if "%d.%d" % sys.version_info[:2] == version:
        candidates.append(sys.executable)
    candidates.append(shutil.which(f"python{version}") or "")
    root = os.environ.get("PYENV_ROOT", os.path.expanduser("~/.pyenv"))
    candidates += sorted(glob.glob(os.path.join(root, "versions", f"{version}.*", "bin",
                                                "python")), reverse=True)
    for candidate in filter(None, candidates):
        found = python_version(candidate)
        if found and found.startswith(version + "."):
            return candidate
    return None


_POLLCHAT_PROBE = """
import json, os
import pollchat
from pollchat import asynchat, asyncore
from pollchat.backends import available_backends
print(json.dumps({"file": os.path.abspath(pollchat.__file__),
                  "backends": available_backends()}))
"""


@dataclass
class Context:
    """What discovery works from: the interpreters and the pollchat trees."""

    python: str = sys.executable  # the harness's
    python311: Optional[str] = None
    extra_pythons: Sequence[str] = ()  # each adds pollchat-<best backend>-pyXY
    trees: Sequence[Tree] = ()  # current first, then the baseline if any
    _versions: Dict[str, Optional[str]] = field(default_factory=dict)

    def version(self, python: str) -> Optional[str]:
        """``X.Y.Z`` of ``python`` (cached), None if it does not run."""
        if python not in self._versions:
            self._versions[python] = python_version(python)
        return self._versions[python]

    def tree(self, label: str) -> Optional[Tree]:
        """The tree with ``label``, if built."""
        return next((t for t in self.trees if t.label == label), None)


def tree_env(tree: Tree) -> Dict[str, str]:
    """The environment that makes a server import ``tree``'s pollchat."""
    return {"PYTHONPATH": str(tree.path)}


def probe_pollchat(python: str, tree: Tree) -> Tuple[List[str], str]:
    """``(backends, "")`` if ``tree``'s pollchat imports under ``python``,
    else ``([], why not)``."""
    done = probe(python, _POLLCHAT_PROBE, env=tree_env(tree))
    if done.returncode != 0:
        reason = (done.stderr.strip().splitlines() or ["import failed"])[-1]
        return [], f"pollchat ({tree.label} tree) not importable: {reason}"
    found = json.loads(done.stdout.strip().splitlines()[-1])
    if Path(tree.path).resolve() not in Path(found["file"]).resolve().parents:
        return [], (f"pollchat imported from {found['file']}, not from the {tree.label} tree "
                    f"{tree.path} (an installed copy shadows PYTHONPATH)")
    return list(found["backends"]), ""


def pollchat_specs(ctx: Context, tree: Tree, python: str, suffix: str,
                   best_only: bool) -> List[ImplSpec]:
    """One spec per backend of ``tree`` under ``python`` (the best backend
    only when ``best_only``); a single skipped spec when it cannot run."""
    prefix = "pollchat" if tree.label == "current" else f"pollchat-{tree.label}"
    backends, why = probe_pollchat(python, tree)
    if why:
        return [ImplSpec(f"{prefix}{suffix}", "pollchat", "legacy", python, tree=tree.label,
                         skip=why)]
    if best_only:
        backends = [next((b for b in BEST_BACKENDS if b in backends), backends[0])]
    return [ImplSpec(f"{prefix}-{name}{suffix}", "pollchat", "legacy", python,
                     ("--impl", "pollchat"), env={"POLLCHAT_BACKEND": name}, tree=tree.label,
                     backend=name, max_fd=FD_SETSIZE - 1 if name == "select" else None)
            for name in backends]


def resolve(spec: ImplSpec, ctx: Context) -> Impl:
    """The spec made concrete for this machine, or skipped with the reason."""
    python = {"harness": ctx.python, "3.11": ctx.python311}.get(spec.python, spec.python)
    version = ctx.version(python) if python else None
    env = dict(spec.env)
    skip = ""
    if not version:
        skip = ("no Python 3.11 interpreter found (stdlib asyncore is gone in 3.12)"
                if spec.python == "3.11" else f"interpreter {python or spec.python} does not run")
    elif spec.skip:
        skip = spec.skip
    elif python and spec.requires and probe(python, f"import {spec.requires}").returncode:
        skip = f"{spec.requires} is not installed for {python} (pip install {spec.requires})"
    if spec.tree:
        tree = ctx.tree(spec.tree)
        if tree is None:
            skip = skip or f"no {spec.tree} pollchat tree was built"
        else:
            env.update(tree_env(tree))
    return Impl(key=spec.key, family=spec.family, api=spec.api, python=python or spec.python,
                flags=spec.flags, env=env,
                launcher=spec.launcher + workers_launcher(spec.workers), max_fd=spec.max_fd,
                version=version or "", skip=skip, tree=spec.tree, backend=spec.backend,
                workloads=spec.workloads, workers=spec.workers)


def python_suffix(version: Optional[str]) -> str:
    """``"3.13.0"`` -> ``"-py313"``."""
    parts = (version or "").split(".")
    return f"-py{parts[0]}{parts[1]}" if len(parts) >= 2 else "-py"


def discover(ctx: Context) -> List[Impl]:
    """Every competitor, runnable or not, in report order: pollchat on the
    working tree (each backend), on the baseline (each backend), on each
    extra interpreter (best backend, both trees), then :data:`IMPLS`."""
    specs: List[ImplSpec] = []
    for tree in ctx.trees:
        specs += pollchat_specs(ctx, tree, ctx.python, "", best_only=False)
    for python in ctx.extra_pythons:
        suffix = python_suffix(ctx.version(python))
        for tree in ctx.trees:
            specs += pollchat_specs(ctx, tree, python, suffix, best_only=True)
    specs += IMPLS
    impls = [resolve(spec, ctx) for spec in specs]
    seen: Dict[str, int] = {}
    for n, impl in enumerate(impls):  # e.g. --python313 pointing at the harness's own
        if impl.key in seen:
            impls[n] = replace(impl, skip=f"duplicate of {impl.key}")
        seen[impl.key] = n
    return impls
