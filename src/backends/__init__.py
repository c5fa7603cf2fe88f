"""pollchat.backends: pollers with persistent registrations and neutral events.

This layer knows nothing about channels.  A backend is a
:class:`selectors.BaseSelector` extended to report ``READ``, ``WRITE``,
``PRI``, ``HUP``, ``ERR`` and ``NVAL`` apart, with an fd-level interface::

    backend = make_backend()            # or make_backend("poll")
    backend.register(fd, READ | PRI)
    backend.modify(fd, READ | WRITE)
    for fd, events in backend.poll(timeout=1.0):
        ...
    backend.unregister(fd)
    backend.close()
"""

from ._base import (
    ALL_EVENTS,
    CLOSE_EVENTS,
    ERR,
    HUP,
    INTEREST,
    NVAL,
    PRI,
    READ,
    WRITE,
    AlreadyRegisteredError,
    Backend,
    BackendError,
    EventList,
    FDSetSizeError,
    FileObj,
    NativeEvents,
    NotRegisteredError,
    UnknownBackendError,
    event_names,
    fd_of,
)
from .pollers import FD_SETSIZE, DevpollBackend, KqueueBackend, SelectBackend
from .registry import (
    AUTO,
    BY_NAME_ONLY,
    ENTRY_POINT_GROUP,
    ENV_VAR,
    PREFERENCE,
    BackendChoice,
    BackendInfo,
    BackendName,
    all_backends,
    available_backends,
    backend_status,
    best_backend,
    choose_backend,
    fd_limits,
    get_backend,
    make_backend,
    pick_best,
    register_backend,
    resolve_backend,
)

__all__ = [
    "ALL_EVENTS", "AUTO", "BY_NAME_ONLY", "CLOSE_EVENTS", "ENTRY_POINT_GROUP", "ENV_VAR", "ERR",
    "FD_SETSIZE",
    "HUP", "INTEREST", "NVAL", "PREFERENCE", "PRI", "READ", "WRITE",
    "AlreadyRegisteredError", "Backend", "BackendChoice", "BackendError", "BackendInfo",
    "BackendName",
    "DevpollBackend", "EventList", "FDSetSizeError", "FileObj", "KqueueBackend", "NativeEvents",
    "NotRegisteredError",
    "SelectBackend", "UnknownBackendError", "all_backends", "available_backends",
    "backend_status", "best_backend", "choose_backend", "event_names", "fd_limits", "fd_of",
    "get_backend", "make_backend", "pick_best", "register_backend", "resolve_backend",
]

# Defined only where the kernel has them.
try:
    from .pollers import PollBackend  # noqa: F401
    __all__.append("PollBackend")
except ImportError:  # pragma: no cover - no poll(2) (Windows)
    pass
try:
    from .pollers import EpollBackend  # noqa: F401
    __all__.append("EpollBackend")
except ImportError:  # pragma: no cover - not Linux
    pass
