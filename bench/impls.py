"""The competitors: which implementations this machine can run, and how.

* ``pollchat-<backend>``: ``servers/legacy_server.py --impl pollchat`` under
  the harness's interpreter, one per available backend (``POLLCHAT_BACKEND``).
* ``stdlib-select`` / ``stdlib-poll``: the *same* program with ``--impl
  stdlib`` (CPython's own asyncore/asynchat, gone in 3.12), always under a
  Python 3.11 interpreter, with ``use_poll`` off and on.
* ``asyncio`` / ``uvloop``: ``servers/asyncio_server.py`` under the
  harness's interpreter; uvloop only when it is installed there.

An implementation that cannot run here is listed with the reason, so that
the report shows it as skipped rather than leaving it out silently.
"""

from __future__ import annotations

import glob
import json
import os
import shutil
import sys
from dataclasses import asdict, dataclass, field
from typing import Any, Dict, List, Mapping, Optional, Tuple

from .procs import probe, python_version

HERE = os.path.dirname(os.path.abspath(__file__))
LEGACY_SERVER = os.path.join(HERE, "servers", "legacy_server.py")
ASYNCIO_SERVER = os.path.join(HERE, "servers", "asyncio_server.py")

#: select(2) cannot watch fds at or above this.
FD_SETSIZE = 1024


@dataclass(frozen=True)
class Impl:
    """One competitor."""

    key: str  # e.g. "pollchat-epoll"
    family: str  # "pollchat", "stdlib" or "asyncio"
    python: str  # the interpreter that runs its server
    server: Tuple[str, ...]  # script and arguments, after the interpreter
    env: Mapping[str, str] = field(default_factory=dict)
    max_fd: Optional[int] = None  # largest fd it can watch (select: 1023)
    legacy: bool = False  # asyncore/asynchat API (has ac_in_buffer_size)
    version: str = ""  # of the interpreter
    skip: str = ""  # why it cannot run here ("" when it can)

    def argv(self, *extra: str) -> List[str]:
        """The server's full command line."""
        return [self.python, *self.server, *extra]

    def to_json(self) -> Dict[str, Any]:
        """A JSON-able description."""
        data = asdict(self)
        data["env"] = dict(self.env)
        data["server"] = list(self.server)
        return data


def find_python311(explicit: Optional[str] = None) -> Optional[str]:
    """A Python 3.11 interpreter: ``explicit``, this one, ``python3.11`` on
    PATH, or the newest 3.11 under pyenv's root."""
    candidates = [explicit] if explicit else []
    if sys.version_info[:2] == (3, 11):
        candidates.append(sys.executable)
    candidates.append(shutil.which("python3.11") or "")
    root = os.environ.get("PYENV_ROOT", os.path.expanduser("~/.pyenv"))
    candidates += sorted(glob.glob(os.path.join(root, "versions", "3.11.*", "bin", "python")),
                         reverse=True)
    for candidate in filter(None, candidates):
        version = python_version(candidate)
        if version and version.startswith("3.11."):
            return candidate
    return None


_POLLCHAT_PROBE = """
import json
from pollchat import asynchat, asyncore
from pollchat.backends import available_backends
print(json.dumps(available_backends()))
"""


def pollchat_impls(python: str, version: str) -> List[Impl]:
    """One implementation per backend pollchat has here; a single skipped
    ``pollchat`` entry, with the import error, when pollchat cannot run."""
    done = probe(python, _POLLCHAT_PROBE)
    if done.returncode != 0:
        reason = (done.stderr.strip().splitlines() or ["import failed"])[-1]
        return [Impl(key="pollchat", family="pollchat", python=python, server=(),
                     version=version, skip=f"pollchat not importable: {reason}")]
    available = json.loads(done.stdout.strip().splitlines()[-1])
    return [Impl(key=f"pollchat-{name}", family="pollchat", python=python,
                 server=(LEGACY_SERVER, "--impl", "pollchat"), env={"POLLCHAT_BACKEND": name},
                 max_fd=FD_SETSIZE - 1 if name == "select" else None, legacy=True,
                 version=version)
            for name in available]


def stdlib_impls(python311: Optional[str]) -> List[Impl]:
    """CPython 3.11's asyncore with select() and with use_poll=True."""
    version = python_version(python311) if python311 else None
    skip = "" if version else "no Python 3.11 interpreter found (stdlib asyncore is gone in 3.12)"
    variants = (("stdlib-select", (), FD_SETSIZE - 1), ("stdlib-poll", ("--use-poll",), None))
    return [Impl(key=key, family="stdlib", python=python311 or "python3.11",
                 server=(LEGACY_SERVER, "--impl", "stdlib", *flags), max_fd=max_fd,
                 legacy=True, version=version or "", skip=skip)
            for key, flags, max_fd in variants]


def asyncio_impls(python: str, version: str) -> List[Impl]:
    """asyncio's own loop, and uvloop's when it is installed."""
    has_uvloop = probe(python, "import uvloop").returncode == 0
    return [
        Impl(key="asyncio", family="asyncio", python=python,
             server=(ASYNCIO_SERVER, "--loop", "asyncio"), version=version),
        Impl(key="uvloop", family="asyncio", python=python,
             server=(ASYNCIO_SERVER, "--loop", "uvloop"), version=version,
             skip="" if has_uvloop else "uvloop is not installed (pip install uvloop)"),
    ]


def discover(python311: Optional[str] = None) -> List[Impl]:
    """Every competitor, runnable or not, in report order."""
    python = sys.executable
    version = python_version(python) or ""
    return (pollchat_impls(python, version) + stdlib_impls(find_python311(python311))
            + asyncio_impls(python, version))
