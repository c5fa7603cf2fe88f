"""Run legacy asyncore/asynchat programs unmodified.

:func:`install` makes ``import asyncore`` and ``import asynchat`` give
pollchat's modules, for code you cannot edit (a third-party package, a
vendored copy of CPython 3.11's ``smtpd``), and ``import smtpd`` give
:mod:`pollchat.smtpd` where the interpreter has none (3.12+)::

    import pollchat
    pollchat.install()          # before anything imports asyncore
    pollchat.raise_fd_limit()   # optional: soft RLIMIT_NOFILE up to the hard limit

    import asyncore             # pollchat.asyncore

``python -m pollchat run program.py`` does both before running the program.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import logging
import os
import sys
import threading
import types
import warnings
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

__all__ = ["ModuleAlreadyImportedError", "install", "installed", "raise_fd_limit",
           "uninstall"]

logger = logging.getLogger("pollchat")

#: Legacy name -> pollchat module that replaces it.
MODULES: Dict[str, str] = {"asyncore": "pollchat.asyncore", "asynchat": "pollchat.asynchat"}
#: Legacy name -> pollchat module used only where nothing else provides the
#: name (the standard library's smtpd stays on 3.11: it runs on pollchat's
#: asyncore anyway), or always after ``install(force=True)``.
FALLBACKS: Dict[str, str] = {"smtpd": "pollchat.smtpd"}

#: CPython 3.11 marks asyncore, asynchat and smtpd (and only those) with
#: ``warnings._deprecated(__name__, ..., remove=(3, 12))``.
_REVIVED_REMOVAL = (3, 12)

_lock = threading.RLock()
# What install() replaced, for uninstall(): name -> previous sys.modules entry.
_saved: Dict[str, Optional[types.ModuleType]] = {}


class ModuleAlreadyImportedError(RuntimeError):
    """Another ``asyncore`` or ``asynchat`` (usually the standard library's,
    on Python 3.11 and older) was imported before :func:`install`.

    Channels made with that module would live on its own event loop, unseen
    by pollchat's, so :func:`install` refuses rather than leave two loops
    side by side.

    Attributes:
        name: ``'asyncore'`` or ``'asynchat'``.
        origin: the file the other module came from (or its repr).
        importers: names of modules that hold a reference to it.
    """

    def __init__(self, name: str, origin: str, importers: Sequence[str]) -> None:
        self.name = name
        self.origin = origin
        self.importers = list(importers)
        stdlib = _is_stdlib_file(origin)
        what = (f"the standard library's {name}" if stdlib
                else f"another {name} module")
        by = ""
        if self.importers:
            shown = ", ".join(self.importers[:5])
            more = f" and {len(self.importers) - 5} more" if len(self.importers) > 5 else ""
            by = f", imported by {shown}{more}"
        super().__init__(
            f"pollchat.install(): {what} was already imported (from {origin}{by}); "
            f"its channels would run on a second event loop that pollchat does not "
            f"drive. Call pollchat.install() before anything imports {name} (first "
            f"thing in your main module), or run the program with "
            f"'python -m pollchat run', or pass force=True to replace it anyway.")


def _is_stdlib_file(path: str) -> bool:
    import sysconfig

    try:
        stdlib = sysconfig.get_paths()["stdlib"]
    except KeyError:  # pragma: no cover - unusual installation
        return False
    return os.path.dirname(os.path.abspath(path)) == os.path.abspath(stdlib)


def _origin(module: Any) -> str:
    return getattr(module, "__file__", None) or repr(module)


def _importers(module: Any) -> List[str]:
    """Modules whose globals hold ``module``: who imported it (best effort)."""
    found = []
    for mod_name, mod in list(sys.modules.items()):
        if mod is module or mod is None:
            continue
        try:
            values = list(vars(mod).values())
        except TypeError:
            continue
        if any(value is module for value in values):
            found.append(mod_name)
    return sorted(found)


class _Finder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Answers ``import asyncore`` (etc.) with pollchat's module of that
    name, even after ``del sys.modules['asyncore']`` (as test helpers such
    as ``import_fresh_module`` do).  Where it sits in ``sys.meta_path``
    decides whether it comes before the standard library or after it."""

    def __init__(self, names: Dict[str, str]) -> None:
        self.names = names  # legacy name -> pollchat module

    def find_spec(self, fullname: str, path: Any = None,
                  target: Any = None) -> Optional[importlib.machinery.ModuleSpec]:
        if fullname not in self.names:
            return None
        return importlib.machinery.ModuleSpec(fullname, self, origin=self.names[fullname])

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> types.ModuleType:
        return importlib.import_module(self.names[spec.name])

    def exec_module(self, module: types.ModuleType) -> None:
        pass  # already executed, under its pollchat name


# First in sys.meta_path: asyncore, asynchat (and smtpd after force=True).
_finder = _Finder(dict(MODULES))
# Last in sys.meta_path: smtpd, for interpreters without one.
_fallback_finder = _Finder(dict(FALLBACKS))


def _ours(names: Dict[str, str]) -> Dict[str, types.ModuleType]:
    try:
        return {name: importlib.import_module(target) for name, target in names.items()}
    except ModuleNotFoundError as exc:  # pragma: no cover - broken installation
        if exc.name in names.values():
            raise ImportError(f"pollchat.install(): {exc.name} is missing from this "
                              f"pollchat installation ({os.path.dirname(__file__)})") from exc
        raise


def install(*, force: bool = False) -> None:
    """Make ``import asyncore`` and ``import asynchat`` give pollchat's
    modules from now on, and ``import smtpd`` give :mod:`pollchat.smtpd`
    where nothing else provides an ``smtpd`` (Python 3.12+).  Idempotent.

    Call it before anything imports asyncore.  It also lets copies of
    CPython 3.11's asyncore-era modules (``smtpd.py``...) import on Python
    3.12+: their ``warnings._deprecated(..., remove=(3, 12))`` call, which
    raises ``RuntimeError`` past 3.12, issues the ``DeprecationWarning`` it
    issued on 3.11 instead.  Nothing else about ``warnings`` changes.

    Args:
        force: replace another ``asyncore``/``asynchat`` already imported
            (with a :class:`RuntimeWarning`) instead of raising.  Modules
            that imported the old one keep it, and its channels are not
            driven by pollchat's loop.  Also makes ``import smtpd`` give
            :mod:`pollchat.smtpd` even where the standard library has one
            (3.11), replacing one already imported (with a warning).

    Raises:
        ModuleAlreadyImportedError: another ``asyncore`` or ``asynchat`` is
            already in ``sys.modules`` and ``force`` is false.
    """
    with _lock:
        ours = _ours(MODULES)
        foreign = {name: mod for name, mod in ((n, sys.modules.get(n)) for n in MODULES)
                   if mod is not None and mod is not ours[name]}
        for name, mod in foreign.items():
            if not force:
                raise ModuleAlreadyImportedError(name, _origin(mod), _importers(mod))
            _warn_replacing(name, mod)
        if force:
            # smtpd only now: importing it earlier would import it for nothing.
            forced = _ours(FALLBACKS)
            for name, mod in forced.items():
                previous = sys.modules.get(name)
                if previous is not None and previous is not mod:
                    _warn_replacing(name, previous)
            ours.update(forced)
            _finder.names.update(FALLBACKS)
        for name, module in ours.items():
            if sys.modules.get(name) is not module:
                _saved.setdefault(name, sys.modules.get(name))
                sys.modules[name] = module
        if _finder not in sys.meta_path:
            sys.meta_path.insert(0, _finder)
        if _fallback_finder not in sys.meta_path:
            sys.meta_path.append(_fallback_finder)
        _relax_removal_guard()


def _warn_replacing(name: str, module: Any) -> None:
    warnings.warn(f"pollchat.install(force=True): replacing the {name} module "
                  f"already imported from {_origin(module)}; code that imported it "
                  f"keeps it (and the channels of an asyncore it uses are not driven "
                  f"by pollchat)", RuntimeWarning, stacklevel=3)


def installed() -> bool:
    """Whether ``import asyncore`` currently gives pollchat's module."""
    ours = sys.modules.get(MODULES["asyncore"])
    return ours is not None and sys.modules.get("asyncore") is ours


def uninstall() -> None:
    """Undo :func:`install`: restore the ``sys.modules`` entries it replaced
    and ``warnings._deprecated``.  Mainly for tests.  Modules that imported
    pollchat's asyncore meanwhile keep it."""
    with _lock:
        for finder in (_finder, _fallback_finder):
            if finder in sys.meta_path:
                sys.meta_path.remove(finder)
        _finder.names = dict(MODULES)
        for name in (*MODULES, *FALLBACKS):
            if name not in _saved:
                # Imported through a finder (smtpd on 3.12+): forget it too.
                if name in FALLBACKS and sys.modules.get(name) is sys.modules.get(
                        FALLBACKS[name], ()):
                    del sys.modules[name]
                continue
            previous = _saved.pop(name)
            if previous is None:
                sys.modules.pop(name, None)
            else:
                sys.modules[name] = previous
        current = getattr(warnings, "_deprecated", None)
        if getattr(current, "_pollchat", False):
            warnings._deprecated = current.__wrapped__  # type: ignore[attr-defined,union-attr]


def _relax_removal_guard() -> None:
    """Wrap ``warnings._deprecated`` (a private CPython 3.11+ helper that only
    standard library modules call) so that the ``remove=(3, 12)`` deadline of
    asyncore, asynchat and smtpd warns instead of raising ``RuntimeError``."""
    original: Optional[Callable[..., Any]] = getattr(warnings, "_deprecated", None)
    if original is None or getattr(original, "_pollchat", False):
        return  # before 3.11 there is no guard; or already wrapped

    def _deprecated(name: str, message: Optional[str] = None, *, remove: Tuple[int, int],
                    _version: Any = sys.version_info) -> None:
        if tuple(remove[:2]) == _REVIVED_REMOVAL and tuple(_version[:2]) >= _REVIVED_REMOVAL:
            text: str = (message or getattr(warnings, "_DEPRECATED_MSG", "")
                         or "{name!r} is deprecated")
            warnings.warn(text.format(name=name, remove=f"{remove[0]}.{remove[1]}"),
                          DeprecationWarning, stacklevel=3)
            return
        if message is None:
            original(name, remove=remove, _version=_version)
        else:
            original(name, message, remove=remove, _version=_version)

    _deprecated.__wrapped__ = original  # type: ignore[attr-defined]
    _deprecated._pollchat = True  # type: ignore[attr-defined]
    _deprecated.__doc__ = original.__doc__
    warnings._deprecated = _deprecated  # type: ignore[attr-defined]


def raise_fd_limit() -> Tuple[Optional[int], Optional[int]]:
    """Raise this process's soft ``RLIMIT_NOFILE`` to its hard limit.

    On most systems the soft limit (often 1024) is what stops a legacy
    server first, before select()'s ``FD_SETSIZE``.  Never lowers the limit;
    a no-op when the soft limit already equals the hard one.  Where the
    kernel refuses the hard limit (macOS caps an unlimited hard limit at
    ``kern.maxfilesperproc``), the highest value it accepts is used.

    Returns:
        ``(old_soft, new_soft)``; ``None`` means unlimited (or, for both, that
        the platform has no ``resource`` module).
    """
    try:
        import resource
    except ImportError:  # not POSIX
        return None, None
    inf = resource.RLIM_INFINITY
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)

    def public(value: int) -> Optional[int]:
        return None if value == inf else value

    if soft in (inf, hard):
        return public(soft), public(soft)
    candidates = [hard]
    if hard == inf or sys.platform == "darwin":
        # An unlimited (or macOS) hard limit is refused above the kernel's own
        # ceiling: Linux's fs.nr_open (2**20 by default), macOS's OPEN_MAX.
        ceiling = 10240 if sys.platform == "darwin" else 1 << 20
        if hard != inf:
            ceiling = min(ceiling, hard)
        candidates.append(ceiling)
        while ceiling // 2 > soft:  # settle for less, halving, rather than nothing
            ceiling //= 2
            candidates.append(ceiling)
    for target in candidates:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        except (ValueError, OSError) as exc:
            logger.debug("setrlimit(RLIMIT_NOFILE, (%s, %s)) refused: %s", target, hard, exc)
            continue
        new_soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
        return public(soft), public(new_soft)
    return public(soft), public(soft)
