"""Which backends exist, which this machine has, and which one to use.

Selection, in this order (see :func:`choose_backend`):

1. an explicit name passed by the program;
2. the ``POLLCHAT_BACKEND`` environment variable;
3. the legacy ``use_poll=True`` hint of ``asyncore.loop()``, meaning "not
   select": the best backend other than ``select``;
4. ``auto``: the best this platform has (:func:`pick_best`).

``asyncio`` and ``uvloop`` (:mod:`pollchat.backends.aio`: an asyncio event
loop as the poller) are chosen only by name, never by ``auto`` or
``use_poll``: they exist to share a thread with asyncio code, not to poll
faster.

An unknown or unavailable name is an error naming the valid choices; there is
no silent fallback except under ``auto``.

Third parties add backends with :func:`register_backend`, or with an entry
point in the group ``pollchat.backends`` whose object is a backend class (or
any callable returning a :class:`~pollchat.backends.Backend`).
"""

from __future__ import annotations

import importlib
import logging
import os
import select
import sys
import threading
from typing import (
    Callable,
    Dict,
    Iterable,
    List,
    Literal,
    Mapping,
    NamedTuple,
    Optional,
    Tuple,
    Union,
)

from . import pollers
from ._base import Backend, UnknownBackendError

ENV_VAR = "POLLCHAT_BACKEND"
ENTRY_POINT_GROUP = "pollchat.backends"
AUTO = "auto"

#: Most scalable first: kernel-side registries, then the O(n) pollers.
PREFERENCE = ("epoll", "kqueue", "devpoll", "poll", "select")
#: Backends that are another event loop: chosen only by name.
BY_NAME_ONLY = frozenset({"asyncio", "uvloop"})

#: The built-in names (and ``auto``).  Backends registered by others have
#: names of their own, so the functions that take a name accept any ``str``;
#: this says which ones are always meant.
BackendName = Literal["auto", "epoll", "kqueue", "devpoll", "poll", "select"]

BackendFactory = Callable[[], Backend]

logger = logging.getLogger("pollchat.backends")


class BackendInfo(NamedTuple):
    """What :func:`backend_status` says of one backend."""

    name: str
    available: bool
    reason: str  # why it is not available, or where it comes from


class _Entry(NamedTuple):
    factory: BackendFactory
    available: Callable[[], bool]
    missing: str  # said when not available


def _defined_later(class_name: str) -> BackendFactory:
    # PollBackend and EpollBackend exist only where the kernel has them.
    def factory() -> Backend:
        backend: Backend = getattr(pollers, class_name)()
        return backend
    return factory


class _ImportedWhenMade:
    """The factory of a backend whose module is imported only when one is
    made (or :attr:`backend_class` is asked for): importing asyncio costs
    every other program, and imports ssl."""

    def __init__(self, module_name: str, class_name: str) -> None:
        self._module_name = module_name
        self._class_name = class_name

    @property
    def backend_class(self) -> Callable[[], Backend]:
        module = importlib.import_module(f"{__package__}.{self._module_name}")
        return getattr(module, self._class_name)  # type: ignore[no-any-return]

    def __call__(self) -> Backend:
        return self.backend_class()


def _uvloop_installed() -> bool:
    from importlib.util import find_spec

    return find_spec("uvloop") is not None


def _has(attribute: str) -> Callable[[], bool]:
    # Looked up at call time so that a stand-in patched into `select` counts.
    return lambda: hasattr(select, attribute)


_registry: Dict[str, _Entry] = {
    "epoll": _Entry(_defined_later("EpollBackend"), _has("epoll"),
                    "select.epoll is missing: epoll is Linux only"),
    "kqueue": _Entry(pollers.KqueueBackend, _has("kqueue"),
                     "select.kqueue is missing: kqueue is BSD/macOS only"),
    "devpoll": _Entry(pollers.DevpollBackend, _has("devpoll"),
                      "select.devpoll is missing: /dev/poll is Solaris/illumos only"),
    "poll": _Entry(_defined_later("PollBackend"), _has("poll"),
                   "select.poll is missing on this platform"),
    "select": _Entry(pollers.SelectBackend, lambda: True, ""),
    "asyncio": _Entry(_ImportedWhenMade("aio", "AsyncioBackend"), lambda: True, ""),
    "uvloop": _Entry(_ImportedWhenMade("aio_uvloop", "UvloopBackend"), _uvloop_installed,
                     "uvloop is not installed (pip install uvloop; not on Windows)"),
}
_lock = threading.Lock()
_entry_points_loaded = False


def register_backend(name: str, factory: BackendFactory, *,
                     available: Union[bool, Callable[[], bool]] = True,
                     replace: bool = False) -> None:
    """Add a backend under ``name``.

    Args:
        name: the name users select it by (lower case, no spaces).
        factory: a zero-argument callable returning a new :class:`Backend`.
        available: whether this machine has it (or a callable that says).
        replace: allow replacing an existing backend of that name.

    Raises:
        TypeError: ``factory`` is not callable.
        ValueError: bad name, or the name is taken and ``replace`` is false.
    """
    if not isinstance(name, str) or not name or not name.isidentifier() or name == AUTO:
        raise ValueError(f"backend name must be a non-empty identifier other than "
                         f"{AUTO!r}, not {name!r}")
    if not callable(factory):
        raise TypeError(f"factory must be callable (a Backend class or function), "
                        f"not {factory!r}")
    check = available if callable(available) else (lambda: bool(available))
    name = name.lower()  # selection is case-insensitive
    with _lock:
        if name in _registry and not replace:
            raise ValueError(f"a backend named {name!r} is already registered; "
                             "pass replace=True to replace it")
        _registry[name] = _Entry(factory, check, f"{name} reports it is not available here")


def _load_entry_points() -> None:
    global _entry_points_loaded
    if _entry_points_loaded:
        return
    _entry_points_loaded = True
    from importlib import metadata

    if sys.version_info >= (3, 10):
        found = metadata.entry_points(group=ENTRY_POINT_GROUP)
    else:  # 3.9: a dict of groups
        found = metadata.entry_points().get(ENTRY_POINT_GROUP, ())
    for ep in found:
        if ep.name.lower() in _registry:
            continue  # never let an installed package shadow a built-in
        try:
            register_backend(ep.name, ep.load())
        except Exception:  # a broken plug-in must not break pollchat
            logger.exception("cannot load backend entry point %r", ep.name)


def _ordered_names() -> List[str]:
    _load_entry_points()
    with _lock:
        names = list(_registry)
    return [n for n in PREFERENCE if n in names] + sorted(n for n in names if n not in PREFERENCE)


def _is_available(name: str) -> bool:
    _load_entry_points()
    entry = _registry.get(name)
    return entry is not None and entry.available()


def available_backends() -> List[str]:
    """Names of the backends this machine has, most scalable first."""
    return [name for name in _ordered_names() if _is_available(name)]


def all_backends() -> List[str]:
    """Every registered name, available or not, most scalable first."""
    return _ordered_names()


def backend_status() -> List[BackendInfo]:
    """Every backend with whether it is available and, if not, why."""
    status = []
    for name in _ordered_names():
        entry = _registry[name]
        ok = entry.available()
        status.append(BackendInfo(name, ok, "" if ok else entry.missing))
    return status


def pick_best(available: Iterable[str]) -> str:
    """The best of ``available`` names: the first in :data:`PREFERENCE`,
    else the first third-party one (never one of :data:`BY_NAME_ONLY`).
    A pure function.

    Raises:
        UnknownBackendError: ``available`` is empty.
    """
    names = list(available)
    for name in PREFERENCE:
        if name in names:
            return name
    names = [name for name in names if name not in BY_NAME_ONLY]
    if names:
        return names[0]
    raise UnknownBackendError("no poller backend is available on this platform")


def best_backend() -> str:
    """The name ``auto`` picks on this machine."""
    return pick_best(available_backends())


def _unknown(name: str, origin: str) -> UnknownBackendError:
    choices = ", ".join(available_backends() + [AUTO])
    status = {info.name: info for info in backend_status()}
    if name in status:
        what = f"backend {name!r} ({origin}) is not available here: {status[name].reason}"
    else:
        what = f"unknown backend {name!r} ({origin})"
    return UnknownBackendError(f"{what}; choose one of: {choices}")


def get_backend(name: str) -> BackendFactory:
    """The factory (usually the class) of the backend called ``name``.

    Raises:
        UnknownBackendError: no such backend, or not available here.
    """
    if not isinstance(name, str):
        raise TypeError(f"backend name must be a str, not {type(name).__name__}")
    name = name.strip().lower()
    if name == AUTO:
        name = best_backend()
    if not _is_available(name):
        raise _unknown(name, "requested")
    return _registry[name].factory


class BackendChoice(NamedTuple):
    """What :func:`resolve_backend` decided, and why."""

    name: str  # a concrete, available backend name (never 'auto')
    origin: str  # what decided: 'argument', '$POLLCHAT_BACKEND', 'use_poll=True' or 'auto'

    def describe(self) -> str:
        """The choice as a user reads it: ``'epoll (auto: the best here)'``."""
        why = {"argument": "requested", "auto": "auto: the best here",
               "use_poll=True": "use_poll=True: the best here other than select"}
        return f"{self.name} ({why.get(self.origin, 'from ' + self.origin)})"


def resolve_backend(name: Union[BackendName, str, None] = None, *, use_poll: bool = False,
                    environ: Optional[Mapping[str, str]] = None) -> BackendChoice:
    """Resolve the backend by pollchat's precedence (module docstring) and
    say what decided.

    ``use_poll=True`` is the legacy ``asyncore.loop()`` argument.  It meant
    "not select()"; it now picks the best backend other than ``select``
    (epoll, kqueue, devpoll or poll), so legacy programs that pass it keep the
    scaling instead of getting poll(2)'s O(n) passes.

    Raises:
        TypeError: ``name`` is not a str.
        UnknownBackendError: the name that decides is unknown or unavailable.
    """
    if environ is None:
        environ = os.environ
    if name is not None:
        origin = "argument"
    elif environ.get(ENV_VAR, "").strip():
        name, origin = environ[ENV_VAR], f"${ENV_VAR}"
    elif use_poll:
        scalable = [n for n in available_backends() if n != "select"]
        return BackendChoice(pick_best(scalable) if scalable else "select", "use_poll=True")
    else:
        return BackendChoice(best_backend(), AUTO)
    if not isinstance(name, str):
        raise TypeError(f"backend name must be a str, not {type(name).__name__}")
    name = name.strip().lower()
    if name == AUTO:
        return BackendChoice(best_backend(), AUTO)
    if not _is_available(name):
        raise _unknown(name, "requested" if origin == "argument" else f"from {origin}")
    return BackendChoice(name, origin)


def choose_backend(name: Union[BackendName, str, None] = None, *, use_poll: bool = False,
                   environ: Optional[Mapping[str, str]] = None) -> str:
    """The name :func:`resolve_backend` picks (a concrete, available name)."""
    return resolve_backend(name, use_poll=use_poll, environ=environ).name


def make_backend(name: Union[BackendName, str, Backend, None] = None, *, use_poll: bool = False,
                 environ: Optional[Mapping[str, str]] = None) -> Backend:
    """Create a backend chosen by :func:`choose_backend` (an instance passes through)."""
    if isinstance(name, Backend):
        return name
    return get_backend(choose_backend(name, use_poll=use_poll, environ=environ))()


def fd_limits() -> Tuple[Optional[int], Optional[int]]:
    """This process's (soft, hard) ``RLIMIT_NOFILE``; ``(None, None)`` if unknown.
    ``None`` inside the pair means unlimited."""
    try:
        import resource
    except ImportError:  # not POSIX
        return None, None
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    inf = resource.RLIM_INFINITY
    return (None if soft == inf else soft), (None if hard == inf else hard)


