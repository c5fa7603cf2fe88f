"""Find, or build once, the libkqueue shared library the tests run kqueue on.

libkqueue (https://github.com/mheily/libkqueue) implements the BSD
kqueue/kevent API in user space on Linux.  Its source is not part of this
project: it sits, as a ``git archive`` tarball, in ``../shared/vendor/``
next to the checkout (see the README there).  :func:`locate` decides where the
library comes from, in this order:

1. ``POLLCHAT_LIBKQUEUE``: the path of a built ``libkqueue.so``, used as is.
   If it names no file that is an error, not a skip: someone asked for it.
2. A build cached by an earlier run under ``<repo>/.cache/libkqueue/`` (a
   directory named after the archive, so a new archive builds afresh).
3. A build made now from the newest ``libkqueue-*.tar.gz`` in
   ``../shared/vendor/`` (for a git worktree, also the one next to the main
   checkout), when ``cmake``, ``make`` and a C compiler are on ``PATH``: a
   few seconds, once.  Concurrent callers wait on a lock and share the
   result.

With none of these it says why, and the tests that need libkqueue skip with
that reason, so a clone of the project alone still runs its suite.

Run as a script (``.ci/run`` does), it prints the library's path, building it
if need be, and exits with status 1 and the reason when it cannot.
"""

from __future__ import annotations

import fcntl
import functools
import glob
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
from typing import List, NamedTuple, Optional

ENV_VAR = "POLLCHAT_LIBKQUEUE"
ARCHIVE_PATTERN = "libkqueue-*.tar.gz"
LIBRARY_NAME = "libkqueue.so"
#: The generated public header, kept beside the built library so that the
#: tests can check the constants of ``kqueue_libkqueue`` against it.
HEADER_NAME = "event.h"

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CACHE_ROOT = os.path.join(REPO_ROOT, ".cache", "libkqueue")
_BUILD_TIMEOUT = 300  # seconds, for each of configure and build


class Located(NamedTuple):
    """Where libkqueue is, or why it is not there."""

    path: Optional[str]  # the shared library, when usable
    reason: str  # where it came from, or why it is missing
    broken: bool  # True: asked for or built, and it failed (an error, not a skip)


def _main_checkout(repo: str) -> Optional[str]:
    """The main checkout of the git worktree ``repo`` (None if it is not one).

    A worktree's ``.git`` is a file ``gitdir: <main>/.git/worktrees/<name>``.
    """
    dot_git = os.path.join(repo, ".git")
    if not os.path.isfile(dot_git):
        return None
    with open(dot_git, encoding="utf-8") as f:
        line = f.readline().strip()
    if not line.startswith("gitdir:"):
        return None
    gitdir = os.path.normpath(os.path.join(repo, line[len("gitdir:"):].strip()))
    try:
        with open(os.path.join(gitdir, "commondir"), encoding="utf-8") as f:
            common = os.path.normpath(os.path.join(gitdir, f.read().strip()))
    except OSError:
        return None
    return os.path.dirname(common)


def vendor_dirs(repo: str = REPO_ROOT) -> List[str]:
    """Where the source archive may be: ``../shared/vendor`` of the checkout
    (and of the main checkout, for a worktree)."""
    dirs = [os.path.join(os.path.dirname(repo), "shared", "vendor")]
    main = _main_checkout(repo)
    if main is not None:
        dirs.append(os.path.join(os.path.dirname(main), "shared", "vendor"))
    return dirs


def find_archive(repo: str = REPO_ROOT) -> Optional[str]:
    """The newest-named libkqueue source archive, or None."""
    for directory in vendor_dirs(repo):
        found = sorted(glob.glob(os.path.join(directory, ARCHIVE_PATTERN)))
        if found:
            return found[-1]
    return None


def _cached_dir(archive: str) -> str:
    return os.path.join(CACHE_ROOT, os.path.basename(archive)[: -len(".tar.gz")])


def _missing_tools() -> List[str]:
    missing = [tool for tool in ("cmake", "make") if shutil.which(tool) is None]
    if not any(shutil.which(cc) for cc in ("cc", "gcc", "clang")):
        missing.append("a C compiler (cc, gcc or clang)")
    return missing


def _extract(archive: str, into: str) -> str:
    """Unpack ``archive`` into ``into``; return its top directory."""
    with tarfile.open(archive) as tar:
        if hasattr(tarfile, "data_filter"):  # 3.12, and security backports
            tar.extractall(into, filter="data")
        else:
            for member in tar.getmembers():  # refuse paths out of ``into``
                target = os.path.realpath(os.path.join(into, member.name))
                if not target.startswith(os.path.realpath(into) + os.sep):
                    raise ValueError(f"{archive}: unsafe member {member.name!r}")
            tar.extractall(into)  # noqa: S202 -- members checked above
    tops = os.listdir(into)
    return os.path.join(into, tops[0]) if len(tops) == 1 else into


def _run(cmd: List[str], log: str) -> None:
    with open(log, "a", encoding="utf-8") as out:
        out.write("$ " + " ".join(cmd) + "\n")
        out.flush()
        env = dict(os.environ, CMAKE_BUILD_PARALLEL_LEVEL="2")
        subprocess.run(cmd, stdout=out, stderr=subprocess.STDOUT, env=env, check=True,
                       timeout=_BUILD_TIMEOUT)


def build(archive: str) -> str:
    """Build the shared library from ``archive`` into the cache; return its path.

    Only the shared library target is built (no static library, no tests), in
    a scratch directory that is renamed into place when complete, under a
    lock, so a partial build is never used and concurrent runs build once.

    Raises:
        RuntimeError: the build failed (the message ends with its log).
    """
    dest = _cached_dir(archive)
    library = os.path.join(dest, LIBRARY_NAME)
    os.makedirs(CACHE_ROOT, exist_ok=True)
    with open(os.path.join(CACHE_ROOT, ".lock"), "w", encoding="utf-8") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if os.path.exists(library):  # built while we waited
            return library
        scratch = tempfile.mkdtemp(prefix="build-", dir=CACHE_ROOT)
        log = os.path.join(scratch, "build.log")
        try:
            source = _extract(archive, os.path.join(scratch, "src"))
            objdir = os.path.join(scratch, "obj")
            _run(["cmake", "-S", source, "-B", objdir, "-DCMAKE_BUILD_TYPE=Release",
                  "-DENABLE_STATIC=OFF", "-DENABLE_TESTING=OFF"], log)
            _run(["cmake", "--build", objdir, "--target", "kqueue"], log)
            out = os.path.join(scratch, "out")
            os.mkdir(out)
            # libkqueue.so is a symlink to the versioned file: copy the file.
            shutil.copyfile(os.path.join(objdir, LIBRARY_NAME), os.path.join(out, LIBRARY_NAME))
            shutil.copyfile(os.path.join(objdir, "include", "sys", HEADER_NAME),
                            os.path.join(out, HEADER_NAME))
            os.replace(out, dest)
        except (OSError, ValueError, tarfile.TarError, subprocess.SubprocessError) as exc:
            tail = ""
            if os.path.exists(log):
                with open(log, encoding="utf-8", errors="replace") as f:
                    tail = f.read()[-3000:]
            raise RuntimeError(f"building libkqueue from {archive} failed: {exc}\n{tail}") from exc
        finally:
            shutil.rmtree(scratch, ignore_errors=True)
    return library


@functools.cache
def locate(allow_build: bool = True) -> Located:
    """Where libkqueue is (see the module docstring for the order), building it
    from the vendored archive if allowed and needed.  The answer is cached for
    the process."""
    if sys.platform != "linux":
        return Located(None, "libkqueue is used here to test kqueue on Linux only "
                             f"(this is {sys.platform})", False)
    requested = os.environ.get(ENV_VAR)
    if requested:
        if os.path.isfile(requested):
            return Located(os.path.abspath(requested), f"{ENV_VAR}={requested}", False)
        return Located(None, f"{ENV_VAR}={requested} names no file: point it at a built "
                             f"{LIBRARY_NAME}, or unset it to build from the archive", True)
    archive = find_archive()
    if archive is None:
        return Located(None, f"no {ARCHIVE_PATTERN} in {' or '.join(vendor_dirs())} and "
                             f"{ENV_VAR} is not set (libkqueue is not part of this project)",
                       False)
    cached = os.path.join(_cached_dir(archive), LIBRARY_NAME)
    if os.path.isfile(cached):
        return Located(cached, f"built earlier from {archive}", False)
    missing = _missing_tools()
    if missing:
        return Located(None, f"cannot build libkqueue from {archive}: {', '.join(missing)} "
                             f"not found (install them, or set {ENV_VAR})", False)
    if not allow_build:
        return Located(None, f"libkqueue is not built yet from {archive}", False)
    try:
        return Located(build(archive), f"built from {archive}", False)
    except RuntimeError as exc:
        return Located(None, str(exc), True)


def header_for(library: str) -> Optional[str]:
    """The ``sys/event.h`` that ``library`` was built with, if known: beside a
    cached build, or in the build tree of a library built by hand."""
    directory = os.path.dirname(library)
    for candidate in (os.path.join(directory, HEADER_NAME),
                      os.path.join(directory, "include", "sys", HEADER_NAME)):
        if os.path.isfile(candidate):
            return candidate
    return None


def main() -> int:
    located = locate()
    if located.path is None:
        sys.stderr.write(f"libkqueue: {located.reason}\n")
        return 1
    sys.stdout.write(located.path + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
