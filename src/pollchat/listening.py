"""What a listening dispatcher does when ``accept()`` cannot hand a
connection to the program: back off while the process is out of
descriptors, and refuse an fd the loop's backend cannot watch.
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING, Any

from . import maps

if TYPE_CHECKING:
    from .channel import dispatcher

__all__ = ["back_off_accepting", "refuse_unwatchable"]

logger = logging.getLogger("pollchat")

# At most one log line per listener per this many seconds about connections
# refused because select() cannot watch their fds.
_REFUSED_LOG_INTERVAL = 10.0



def refuse_unwatchable(listener: dispatcher, conn: Any, addr: Any, max_fd: int) -> None:
    # The loop could never watch this connection (select() and fds at or
    # above FD_SETSIZE): close it now, before the program greets a client
    # it cannot serve, and say so, at most once per interval.
    conn.close()
    listener._refused_fds += 1
    now = time.monotonic()
    if now - listener._refused_logged >= _REFUSED_LOG_INTERVAL:
        logger.error("%r refused %d connection(s) (the last from %r): their fds are above "
                     "%d, which the select backend cannot watch; use the epoll or poll "
                     "backend (POLLCHAT_BACKEND=epoll) to serve more clients",
                     listener, listener._refused_fds, addr, max_fd)
        listener._refused_fds = 0
        listener._refused_logged = now


def back_off_accepting(listener: dispatcher, why: OSError) -> None:
    # Level-triggered pollers would report the pending connection again
    # at once: a busy loop.  Stop watching the listener for a while.
    loop = maps.loop_for_map(listener._map)
    if loop is None:
        return  # not in a loop: the next accept() in one backs off
    if not listener._accept_failing:
        listener._accept_failing = True
        logger.warning("%r cannot accept: %s; pausing accepts, retrying every %gs",
                       listener, why.strerror or why, listener.accept_backoff)
    listener.pause_reading()
    # A module function, not a method: a subclass may well have a
    # `_resume_accepting` of its own (the chat showcase once did).
    loop.call_later(listener.accept_backoff or 0.0, _resume_accepting, listener, listener._fileno)


def _resume_accepting(listener: dispatcher, fd: Any) -> None:
    """End an accept back-off (unless the listener was closed or re-made)."""
    if listener._fileno == fd:
        listener.resume_reading()
