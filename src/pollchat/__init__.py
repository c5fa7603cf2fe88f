"""pollchat: asyncore and asynchat for modern Python, on scalable pollers.

* ``from pollchat import asyncore, asynchat``: drop-in modules.
* :class:`Loop`: an explicit loop (backend, channel map, timers).
* :func:`get_loop`: the loop serving a map (default: ``asyncore.socket_map``).
* :mod:`pollchat.backends`: the pollers, and backend selection.
"""

from __future__ import annotations

from typing import Any, Callable

from ._install import ModuleAlreadyImportedError, install, raise_fd_limit
from .chat import InputLimitExceeded
from .interest import managed_interest
from .loop import Loop, get_loop
from .timers import TimerHandle

__version__ = "0.1.0"

__all__ = ["InputLimitExceeded", "Loop", "ModuleAlreadyImportedError", "TimerHandle",
           "call_at", "call_later", "call_soon_threadsafe", "get_loop", "install",
           "managed_interest", "raise_fd_limit", "__version__"]


def call_later(delay: float, callback: Callable[..., Any], *args: Any) -> TimerHandle:
    """``get_loop().call_later(...)``: a timer on the default map's loop."""
    return get_loop().call_later(delay, callback, *args)


def call_at(when: float, callback: Callable[..., Any], *args: Any) -> TimerHandle:
    """``get_loop().call_at(...)``: a timer on the default map's loop."""
    return get_loop().call_at(when, callback, *args)


def call_soon_threadsafe(callback: Callable[..., Any], *args: Any) -> None:
    """``get_loop().call_soon_threadsafe(...)`` on the default map's loop."""
    get_loop().call_soon_threadsafe(callback, *args)
