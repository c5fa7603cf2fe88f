"""The tests' access to libkqueue: finding or building it
(``libkqueue_build.py``) and the constants of ``kqueue_libkqueue.py``.

Its kqueue semantics are tested with the stand-in's, in ``test_kqueues.py``.
"""

from __future__ import annotations

import os
import re
import sys
from typing import Dict

import kqueue_libkqueue
import libkqueue_build
import pytest
from kqueue_api import KQUEUE_CONSTANTS


@pytest.fixture
def fresh_locate(monkeypatch, tmp_path):
    """``locate()`` forgetting its cached answer, with the cache directory and
    the environment variable under the test's control."""
    monkeypatch.delenv(libkqueue_build.ENV_VAR, raising=False)
    monkeypatch.setattr(libkqueue_build, "CACHE_ROOT", str(tmp_path / "cache"))
    libkqueue_build.locate.cache_clear()
    yield libkqueue_build.locate
    libkqueue_build.locate.cache_clear()


def parse_header(path: str) -> Dict[str, int]:
    """The ``#define NAME number`` of a generated <sys/event.h>: in its
    ``#if 0`` blocks none, and ``#undef`` takes one back.  (Its other
    conditionals hold no numbers; both of their branches are read.)"""
    defined: Dict[str, int] = {}
    skipping = [False]  # per open conditional: inside an ``#if 0``
    with open(path, encoding="utf-8") as f:
        for line in f:
            directive = re.match(r"#\s*(\w+)\s*(.*)", line)
            word, rest = directive.groups() if directive else ("", "")
            rest = re.sub(r"/\*.*?\*/", "", rest.split("//")[0]).strip()
            if word in ("if", "ifdef", "ifndef"):
                skipping.append(skipping[-1] or (word == "if" and rest == "0"))
            elif word == "endif":
                skipping.pop()
            elif skipping[-1]:
                continue
            elif word == "define":
                value = re.fullmatch(r"(\w+)\s+\(?(-?(?:0x[0-9a-fA-F]+|\d+))\)?", rest)
                if value:
                    defined[value.group(1)] = int(value.group(2), 0)
            elif word == "undef":
                defined.pop(rest, None)
    return defined


def c_name(python_name: str) -> str:
    """``KQ_FILTER_READ`` -> ``EVFILT_READ``, ``KQ_EV_ADD`` -> ``EV_ADD``..."""
    return re.sub(r"^KQ_(FILTER_|EV_|NOTE_)",
                  lambda m: {"FILTER_": "EVFILT_", "EV_": "EV_", "NOTE_": "NOTE_"}[m.group(1)],
                  python_name)


def test_constants_match_the_header_libkqueue_was_built_with(libkqueue):
    kqueue_libkqueue.require(libkqueue)
    header = libkqueue_build.header_for(libkqueue.path)
    if header is None:
        pytest.skip(f"no sys/event.h beside {libkqueue.path} to compare with")
    defined = parse_header(header)
    for name in KQUEUE_CONSTANTS:  # every name CPython's select module may define
        if c_name(name) in defined:
            assert kqueue_libkqueue.LIBKQUEUE_CONSTANTS.get(name) == defined[c_name(name)], name
        else:
            assert name not in kqueue_libkqueue.LIBKQUEUE_CONSTANTS, name
    assert defined["EV_RECEIPT"] == 0x0040


def test_installing_puts_exactly_libkqueues_names_into_select(libkqueue, monkeypatch):
    kqueue_libkqueue.require(libkqueue)
    import select

    kqueue_libkqueue.install_libkqueue(monkeypatch)
    assert select.kqueue is kqueue_libkqueue.kqueue
    assert select.kevent is kqueue_libkqueue.kevent
    for name in KQUEUE_CONSTANTS:
        assert getattr(select, name, None) == kqueue_libkqueue.LIBKQUEUE_CONSTANTS.get(name)


def test_fromfd_adopts_the_fd(libkqueue):
    kqueue_libkqueue.require(libkqueue)
    first = kqueue_libkqueue.kqueue()
    second = kqueue_libkqueue.kqueue.fromfd(first.fileno())
    assert second.fileno() == first.fileno()
    assert second.control(None, 1, 0) == []
    second.close()
    assert second.closed and not first.closed
    first.close()  # its number is closed already: ignored, as by CPython


# -- finding and building -----------------------------------------------------------


def test_the_environment_variable_names_the_library(fresh_locate, monkeypatch, tmp_path):
    library = tmp_path / "libkqueue.so"
    library.write_bytes(b"")
    monkeypatch.setenv(libkqueue_build.ENV_VAR, str(library))
    located = fresh_locate()
    assert (located.path, located.broken) == (str(library), False)


def test_a_variable_naming_no_file_is_an_error_not_a_skip(fresh_locate, monkeypatch, tmp_path):
    monkeypatch.setenv(libkqueue_build.ENV_VAR, str(tmp_path / "missing.so"))
    located = fresh_locate()
    assert located.path is None and located.broken
    assert "names no file" in located.reason


def test_without_the_archive_the_reason_says_where_it_looked(fresh_locate, monkeypatch,
                                                              tmp_path):
    monkeypatch.setattr(libkqueue_build, "vendor_dirs", lambda repo=None: [str(tmp_path)])
    located = fresh_locate()
    if sys.platform != "linux":
        assert "Linux only" in located.reason
        return
    assert located.path is None and not located.broken
    assert str(tmp_path) in located.reason and "not part of this project" in located.reason


def test_without_build_tools_the_reason_names_them(fresh_locate, monkeypatch, tmp_path):
    if sys.platform != "linux":
        pytest.skip("libkqueue is built on Linux only")
    (tmp_path / "libkqueue-0000000.tar.gz").write_bytes(b"")
    monkeypatch.setattr(libkqueue_build, "vendor_dirs", lambda repo=None: [str(tmp_path)])
    monkeypatch.setattr(libkqueue_build.shutil, "which", lambda tool: None)
    located = fresh_locate()
    assert located.path is None and not located.broken
    assert "cmake" in located.reason and libkqueue_build.ENV_VAR in located.reason


def test_a_failed_build_is_an_error_with_its_cause(fresh_locate, monkeypatch, tmp_path):
    if sys.platform != "linux":
        pytest.skip("libkqueue is built on Linux only")
    (tmp_path / "libkqueue-0000000.tar.gz").write_bytes(b"not a tarball")
    monkeypatch.setattr(libkqueue_build, "vendor_dirs", lambda repo=None: [str(tmp_path)])
    monkeypatch.setattr(libkqueue_build.shutil, "which", lambda tool: "/usr/bin/" + tool)
    located = fresh_locate()
    assert located.path is None and located.broken
    assert "building libkqueue from" in located.reason
    assert os.listdir(libkqueue_build.CACHE_ROOT) == [".lock"]  # no partial build left


def test_a_worktree_also_looks_beside_its_main_checkout(tmp_path):
    main = tmp_path / "main"
    gitdir = main / ".git" / "worktrees" / "wt"
    gitdir.mkdir(parents=True)
    (gitdir / "commondir").write_text("../..\n")
    worktree = tmp_path / "wt" / "kqueue"
    worktree.mkdir(parents=True)
    (worktree / ".git").write_text(f"gitdir: {gitdir}\n")
    assert libkqueue_build.vendor_dirs(str(worktree)) == [
        str(tmp_path / "wt" / "shared" / "vendor"), str(tmp_path / "shared" / "vendor")]
    assert libkqueue_build.vendor_dirs(str(main)) == [str(tmp_path / "shared" / "vendor")]
