"""Which loop serves which channel map, and the default map.

asyncore passes ``map=None`` (the module's ``socket_map``) or a dict of its
own through every call; pollchat keeps one :class:`~pollchat.loop.Loop` per
map, found by ``id(map)`` in a table here.  A loop holds its map, so the id
cannot be reused while the entry exists.

Loops made on demand by the module-level functions (``asyncore.loop()``,
``asyncore.poll()``, :func:`pollchat.get_loop`) are *implicit*.  They must not
outlive their map: programs that poll a fresh map on each call
(``asyncore.poll(0.2, {sock: channel})``) would otherwise leave a loop, its
epoll fd and its waker behind on every call.  A plain ``dict`` cannot be
weakly referenced, so :func:`sweep` asks the interpreter instead: an implicit
loop whose map is referenced by nothing but the loop and the map's own
channels is closed.  It runs whenever an implicit loop is created, so such
loops never pile up.  Closing a loop is always safe for correctness: the next
call makes a new one and registers the map's channels again.
"""

from __future__ import annotations

import sys
import threading
from typing import TYPE_CHECKING, Any, Dict, List, Optional

if TYPE_CHECKING:
    from .loop import Loop

__all__ = ["get_socket_map", "loop_for_map", "set_socket_map", "sweep"]

_loops: Dict[int, Loop] = {}
_lock = threading.RLock()  # re-entered: get_loop() -> Loop() -> attach()

# The default channel map, asyncore.socket_map (a plain dict, as in CPython).
_default_map: Dict[Any, Any] = {}


def get_socket_map() -> Dict[Any, Any]:
    """The default channel map (``asyncore.socket_map``)."""
    return _default_map


def set_socket_map(new_map: Dict[Any, Any]) -> None:
    """Replace the default channel map (``asyncore.socket_map = ...``)."""
    global _default_map
    _default_map = new_map


def loop_for_map(map: Any) -> Optional[Loop]:
    """The loop serving ``map``, if one exists (never creates one).  O(1)."""
    return _loops.get(id(map))


def attach(loop: Loop) -> None:
    """Record ``loop`` as the loop of its map.

    Raises:
        ValueError: the map already has a loop.
    """
    with _lock:
        if id(loop.map) in _loops:
            raise ValueError("this map already has a loop; use pollchat.get_loop(map)")
        _loops[id(loop.map)] = loop


def detach(loop: Loop) -> None:
    """Forget ``loop`` (it is closing).  Idempotent."""
    with _lock:
        if _loops.get(id(loop.map)) is loop:
            del _loops[id(loop.map)]


def loops() -> List[Loop]:
    """Every loop in the table (for introspection and tests)."""
    with _lock:
        return list(_loops.values())


def sweep() -> int:
    """Close the implicit loops whose maps nobody else holds any more.

    A loop is kept while it runs, has timers or callbacks pending, or its
    map is referenced from outside (a variable, an attribute, the default
    map).  Returns how many loops were closed.  O(implicit loops + their
    channels).  Where the interpreter cannot count references (no
    ``sys.getrefcount``), nothing is swept.
    """
    if not hasattr(sys, "getrefcount"):
        return 0
    closed = 0
    for loop in loops():
        if loop.releasable() and not _held_elsewhere(loop):
            loop.close()
            closed += 1
    return closed


def _held_elsewhere(loop: Loop) -> bool:
    map = loop.map
    inside = loop.map_references + sum(
        1 for channel in map.values() if getattr(channel, "_map", None) is map)
    # getrefcount() counts its own argument and the local name `map`.
    return sys.getrefcount(map) - 2 > inside
