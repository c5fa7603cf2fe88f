"""Inside a worker process of :mod:`pollchat.workers`.

A worker is forked by the master and runs the program.  This module prepares
the process and talks to the master:

* **A clean slate.** Loops and channels inherited from the master are
  released without touching the kernel objects the master still uses (an
  epoll set is shared across ``fork()``: unregistering from it here would
  unregister there too).  The program's loops are created afresh.
* **Shared listeners.** ``dispatcher.bind()`` of a TCP socket asks the master
  (:class:`pollchat._sharing.WorkerHooks`), and every listener accepts
  through an accept queue (:mod:`pollchat.accepting`).
* **Graceful stop.** SIGTERM and SIGINT (or the master's death) make the
  worker stop accepting, let each channel's queued output drain (``async_chat``:
  ``close_when_done()``), and return from the program's loop once its map is
  empty.  Signal handlers only write to a pipe; a watcher thread turns that
  into ``loop.call_soon_threadsafe()``, so the stop runs inside the loop, at a
  safe point, whatever the program was doing when the signal came
  (:class:`StopWatcher`).
"""

from __future__ import annotations

import atexit
import logging
import os
import select
import signal
import socket
import sys
import threading
import time
import traceback
from typing import Any, Callable, Dict, List, Optional

from . import channel as _channel
from . import loop as _loop
from . import maps as _maps
from ._sharing import WorkerHooks
from .accepting import HeaderReader
from .dispatch import REraised

__all__ = ["StopWatcher", "run_worker"]

logger = logging.getLogger("pollchat.workers")

#: Seconds between two looks at the channels of a stopping loop.
SWEEP_INTERVAL = 0.05
#: A stopping worker exits by itself this long after the master's deadline
#: (the master kills it at the deadline; this covers a master that is gone).
SELF_EXIT_MARGIN = 1.0
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


# -- a clean slate -------------------------------------------------------------------------


def _forget_parent_loops() -> int:
    """Release the loops and channels inherited from the master, without
    unregistering anything (that would reach the master's epoll set, which
    the child shares).  Returns how many channels were dropped."""
    loops = _maps.loops()
    maps = [lp.map for lp in loops] + [_maps.get_socket_map()]
    for lp in loops:
        lp.close()  # closes this process's copies of the epoll fd and the waker
    dropped = 0
    seen = set()
    for map in maps:
        if id(map) in seen:
            continue
        seen.add(id(map))
        for channel in list(map.values()):
            sock = getattr(channel, "socket", None)
            if sock is not None:
                try:
                    sock.close()  # this process's copy of the fd only
                except OSError:
                    pass  # already unusable: nothing to release
            dropped += 1
        map.clear()
    return dropped


# -- graceful stop -------------------------------------------------------------------------


def _wind_down(channel: Any) -> bool:
    """Start stopping one channel; True once nothing more is to be done for
    it (False: look again at the next sweep)."""
    if isinstance(channel, HeaderReader):
        return False  # completes (and is handed to the program) or times out
    if getattr(channel, "accepting", False):
        queue = getattr(channel, "_accept_queue", None)
        if queue is not None:
            queue.draining = True  # headers still arriving are still served
        channel.close()
        return True
    if getattr(channel, "connected", False) and callable(getattr(channel, "close_when_done",
                                                                 None)):
        channel.close_when_done()
        return True
    if getattr(channel, "connected", False) and getattr(channel, "out_buffer", b""):
        return False  # dispatcher_with_send still sending: close it once sent
    channel.close()
    return True


class _Drain:
    """Stop one loop gracefully: runs in the loop's thread, re-arming itself
    every :data:`SWEEP_INTERVAL` until the map is empty, then stops the loop."""

    def __init__(self, loop: _loop.Loop) -> None:
        self.loop = loop
        self.done: Dict[int, Any] = {}  # id -> channel (kept alive: ids stay unique)

    def start(self) -> None:
        logger.info("worker %d: stopping (%d channels): no new connections; closing each "
                    "connection once its queued output is sent", os.getpid(), len(self.loop.map))
        self.sweep()

    def sweep(self) -> None:
        loop = self.loop
        if loop.closed:
            return
        for channel in list(loop.map.values()):
            if id(channel) in self.done:
                continue
            try:
                finished = _wind_down(channel)
            except REraised:
                raise
            except Exception:
                logger.exception("worker %d: stopping %r failed; closing it", os.getpid(),
                                 channel)
                finished = _close_quietly(channel)
            if finished:
                self.done[id(channel)] = channel
        if not loop.map:
            loop.stop()
            return
        loop.call_later(SWEEP_INTERVAL, self.sweep)


def _close_quietly(channel: Any) -> bool:
    try:
        channel.close()
    except REraised:
        raise
    except Exception:
        logger.exception("worker %d: close() of %r failed too", os.getpid(), channel)
    return True


class StopWatcher:
    """Turns a stop request (a signal, or the master's death) into a
    graceful stop of every loop of this process.

    Signal handlers run in the main thread between any two bytecodes, maybe
    inside the loop's own bookkeeping: they only write the signal's number to
    a pipe, which is also the process's ``signal.set_wakeup_fd``: when the
    kernel hands the signal to another thread of the program, the C-level
    handler writes it at once, while the main thread may sit in a long poll.
    This thread waits for a stop signal's number and schedules the stop with
    ``loop.call_soon_threadsafe()``, which wakes the loop.  Loops created
    later (a program still starting up) are stopped as they appear.  If the
    process is still alive ``graceful_timeout`` (plus a margin) seconds
    later, it exits with status 1.
    """

    def __init__(self, graceful_timeout: float, master_alive_fd: Optional[int]) -> None:
        self.graceful_timeout = graceful_timeout
        self._alive_fd = master_alive_fd
        self._r, self._w = os.pipe()
        os.set_blocking(self._w, False)  # set_wakeup_fd() needs a non-blocking fd
        self._thread = threading.Thread(target=self._run, name="pollchat-stop-watcher",
                                         daemon=True)

    def start(self) -> None:
        """Install the signal handlers and start watching."""
        for signum in STOP_SIGNALS:
            signal.signal(signum, self.request_stop)
        signal.signal(signal.SIGHUP, _ignore_signal)
        signal.set_wakeup_fd(self._w, warn_on_full_buffer=False)
        self._thread.start()

    def request_stop(self, signum: int = signal.SIGTERM, frame: Any = None) -> None:
        """Ask for a graceful stop.  Safe in a signal handler."""
        try:
            os.write(self._w, bytes([signum]))
        except OSError:
            pass  # the pipe is full: a stop is already requested

    def _wait_for_stop(self) -> str:
        """Block until a stop signal's number arrives or the master is gone
        (any other signal's number is ignored); say which."""
        fds = [self._r] + ([self._alive_fd] if self._alive_fd is not None else [])
        while True:
            ready, _, _ = select.select(fds, [], [])
            if self._r in ready:
                if any(signum in STOP_SIGNALS for signum in os.read(self._r, 512)):
                    return "asked to stop"
            elif ready:
                return "the master process is gone"

    def _run(self) -> None:
        # Signals must reach the main thread, whose handlers write the pipe
        # (and interrupt a blocking poll there), never this one.
        if hasattr(signal, "pthread_sigmask"):
            signal.pthread_sigmask(signal.SIG_BLOCK, {*STOP_SIGNALS, signal.SIGHUP})
        logger.info("worker %d: %s", os.getpid(), self._wait_for_stop())
        deadline = time.monotonic() + self.graceful_timeout + SELF_EXIT_MARGIN
        told: List[_loop.Loop] = []
        while True:
            loops = [lp for lp in _maps.loops() if not lp.closed]
            for lp in loops:
                if any(lp is other for other in told):
                    continue
                try:
                    lp.call_soon_threadsafe(_Drain(lp).start)
                except RuntimeError:
                    continue  # closed meanwhile
                told.append(lp)
            left = deadline - time.monotonic()
            if left <= 0:
                break
            time.sleep(min(SWEEP_INTERVAL, left))
        logger.error("worker %d: still running %g s after the stop began; exiting",
                     os.getpid(), self.graceful_timeout + SELF_EXIT_MARGIN)
        _flush_stdio()
        os._exit(1)


# -- the worker's life -----------------------------------------------------------------------


def _ignore_signal(signum: int, frame: Any) -> None:
    """SIGHUP in a worker: the master restarts workers; a terminal hang-up
    that reaches the whole process group must not kill them meanwhile."""


def _flush_stdio() -> None:
    for stream in (sys.stdout, sys.stderr):
        try:
            if stream is not None:
                stream.flush()
        except (OSError, ValueError):
            pass  # closed or broken: nothing more can be written anyway


def _exit_code(exc: SystemExit) -> int:
    """The status ``sys.exit(code)`` gives, as the interpreter computes it."""
    code = exc.code
    if code is None:
        return 0
    if isinstance(code, int) and not isinstance(code, bool):
        return code & 0xFF
    print(code, file=sys.stderr)
    return 1


def run_worker(target: Callable[[], int], control: socket.socket,
               master_alive_fd: Optional[int], graceful_timeout: float) -> int:
    """The body of a forked worker: prepare the process, run ``target``,
    return the exit status (the caller ``os._exit()``s with it).  Never raises.
    """
    status = 1
    try:
        watcher = StopWatcher(graceful_timeout, master_alive_fd)
        dropped = _forget_parent_loops()
        if dropped:
            logger.debug("worker %d: dropped %d channels inherited from the master",
                         os.getpid(), dropped)
        _channel._worker = WorkerHooks(control)
        watcher.start()
        try:
            status = target()
        except SystemExit as exc:
            status = _exit_code(exc)
        except KeyboardInterrupt:
            status = 130
        try:
            atexit._run_exitfuncs()  # as a normal exit would (os._exit skips them)
        except REraised:
            raise
        except Exception:
            traceback.print_exc()
    except SystemExit as exc:
        status = _exit_code(exc)
    except BaseException:
        traceback.print_exc()
        status = 1
    _flush_stdio()
    return status
