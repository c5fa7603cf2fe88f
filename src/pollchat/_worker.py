"""Inside a worker process of :mod:`pollchat.workers`.

A worker is forked by the master and runs the program.  This module prepares
the process and talks to the master:

* **A clean slate.** Loops and channels inherited from the master are
  released without touching the kernel objects the master still uses (an
  epoll set is shared across ``fork()``: unregistering from it here would
  unregister there too).  The program's loops are created afresh.
* **Shared listeners.** ``dispatcher.bind()`` of a TCP socket asks the master
  (:class:`WorkerHooks`): the first worker to bind an address has the master
  bind *its* socket and keep a copy; the others receive that socket and take
  it in place of theirs (``dup2`` onto the same fd number, so the program's
  socket object and the map entry stay valid).  All workers then accept from
  one kernel queue, which the master holds open across worker restarts.
* **Graceful stop.** SIGTERM and SIGINT (or the master's death) make the
  worker stop accepting, let each channel's queued output drain (``async_chat``:
  ``close_when_done()``), and return from the program's loop once its map is
  empty.  Signal handlers only write to a pipe; a watcher thread turns that
  into ``loop.call_soon_threadsafe()``, so the stop runs inside the loop, at a
  safe point, whatever the program was doing when the signal came.
"""

from __future__ import annotations

import atexit
import collections
import json
import logging
import os
import select
import signal
import socket
import sys
import threading
import time
import traceback
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

from . import channel as _channel
from . import loop as _loop
from .accepting import HeaderReader
from .dispatch import REraised

__all__ = ["WorkerHooks", "receive_message", "run_worker", "send_message"]

logger = logging.getLogger("pollchat.workers")

#: Seconds a worker waits for the master to answer a request.
CONTROL_TIMEOUT = 30.0
#: Seconds between two looks at the channels of a stopping loop.
SWEEP_INTERVAL = 0.05
#: A stopping worker exits by itself this long after the master's deadline
#: (the master kills it at the deadline; this covers a master that is gone).
SELF_EXIT_MARGIN = 1.0
MAX_MESSAGE = 65536
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


# -- messages between master and worker ------------------------------------------------


def send_message(sock: socket.socket, message: Dict[str, Any], fds: Sequence[int] = ()) -> None:
    """Send one JSON message (and file descriptors) on a message socket."""
    data = json.dumps(message).encode("utf-8")
    if fds:
        socket.send_fds(sock, [data], list(fds))
    else:
        sock.send(data)


def receive_message(sock: socket.socket) -> Tuple[Dict[str, Any], List[int]]:
    """Receive one message and the fds sent with it (the caller owns them).

    Raises:
        EOFError: the other side closed its end.
        ValueError: not a JSON object (the fds are closed).
    """
    data, fds, _flags, _address = socket.recv_fds(sock, MAX_MESSAGE, 4)
    if not data:
        for fd in fds:
            os.close(fd)
        raise EOFError("the other process closed the control socket")
    try:
        message = json.loads(data.decode("utf-8"))
        if not isinstance(message, dict):
            raise ValueError("not a JSON object")
    except ValueError:
        for fd in fds:
            os.close(fd)
        raise
    return message, list(fds)


# -- binding through the master -----------------------------------------------------------


def _shareable(sock: Any, address: Any) -> bool:
    """A TCP socket bound to ``(host, port, ...)``: what the workers share."""
    return (isinstance(sock, socket.socket) and sock.type == socket.SOCK_STREAM
            and sock.family in (socket.AF_INET, socket.AF_INET6)
            and isinstance(address, tuple) and len(address) >= 2
            and isinstance(address[1], int) and not isinstance(address[1], bool))


class WorkerHooks:
    """Installed as ``pollchat.channel._worker`` in a worker process.

    Args:
        control: this worker's end of its message socket to the master.
    """

    def __init__(self, control: socket.socket) -> None:
        self.control = control
        control.settimeout(CONTROL_TIMEOUT)
        self._lock = threading.Lock()  # one request at a time on the socket
        # Binds to port 0 made so far, per address: the n-th one of each
        # worker shares the n-th listener (every worker runs the same program).
        self._ephemeral: Dict[Tuple[int, str], int] = collections.Counter()

    def bind(self, channel: Any, address: Any) -> None:
        """``channel.bind(address)`` in a worker.

        Raises:
            OSError: the bind failed (with the kernel's errno, as a local
                bind would), or the master did not answer.
        """
        sock = channel.socket
        if not _shareable(sock, address):
            sock.bind(address)  # unix sockets, UDP...: each worker its own
            return
        nth = 0
        if address[1] == 0:
            key = (int(sock.family), repr(address))
            nth = self._ephemeral[key]
            self._ephemeral[key] = nth + 1
        request = {"op": "bind", "family": int(sock.family), "type": int(sock.type),
                   "proto": sock.proto, "address": list(address), "nth": nth}
        reply, fds = self._request(request, [sock.fileno()])
        if not reply.get("ok"):
            for fd in fds:
                os.close(fd)
            raise OSError(reply.get("errno"), reply.get("strerror", "bind failed"))
        if fds:
            _adopt(channel, sock, fds[0])

    def _request(self, message: Dict[str, Any], fds: Sequence[int]
                 ) -> Tuple[Dict[str, Any], List[int]]:
        with self._lock:
            try:
                send_message(self.control, message, fds)
                return receive_message(self.control)
            except (OSError, EOFError, ValueError) as exc:
                raise OSError(f"pollchat worker: no answer from the master process to a "
                              f"{message['op']} request: {exc}") from None


def _adopt(channel: Any, sock: socket.socket, shared_fd: int) -> None:
    """Make ``sock`` (the channel's socket) the shared listener: the same fd
    number, now naming the master's socket.  The channel leaves its map and
    joins it again so that the loop registers the new open file."""
    channel.del_channel()
    try:
        os.dup2(shared_fd, sock.fileno(), inheritable=False)
    finally:
        os.close(shared_fd)
    channel.set_socket(sock)


# -- a clean slate -------------------------------------------------------------------------


def _forget_parent_loops() -> int:
    """Release the loops and channels inherited from the master, without
    unregistering anything (that would reach the master's epoll set, which
    the child shares).  Returns how many channels were dropped."""
    with _loop._loops_lock:
        loops = list(_loop._loops.values())
    maps = [lp.map for lp in loops] + [_loop.get_socket_map()]
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
    inside the loop's own bookkeeping: they only write a byte to a pipe.  This
    thread waits for it and schedules the stop with
    ``loop.call_soon_threadsafe()``.  Loops created later (a program still
    starting up) are stopped as they appear.  If the process is still alive
    ``graceful_timeout`` (plus a margin) seconds later, it exits with status 1.
    """

    def __init__(self, graceful_timeout: float, master_alive_fd: Optional[int]) -> None:
        self.graceful_timeout = graceful_timeout
        self._alive_fd = master_alive_fd
        self._r, self._w = os.pipe()
        os.set_blocking(self._w, False)
        self._thread = threading.Thread(target=self._run, name="pollchat-stop-watcher",
                                         daemon=True)

    def start(self) -> None:
        self._thread.start()

    def request_stop(self, signum: int = 0, frame: Any = None) -> None:
        """Ask for a graceful stop.  Safe in a signal handler."""
        try:
            os.write(self._w, b"s")
        except OSError:
            pass  # the pipe is full: a stop is already requested

    def _run(self) -> None:
        # Signals must reach the main thread, whose handlers write the pipe
        # (and interrupt a blocking poll there), never this one.
        if hasattr(signal, "pthread_sigmask"):
            signal.pthread_sigmask(signal.SIG_BLOCK, {*STOP_SIGNALS, signal.SIGHUP})
        fds = [self._r] + ([self._alive_fd] if self._alive_fd is not None else [])
        ready, _, _ = select.select(fds, [], [])
        reason = "asked to stop" if self._r in ready else "the master process is gone"
        logger.info("worker %d: %s", os.getpid(), reason)
        deadline = time.monotonic() + self.graceful_timeout + SELF_EXIT_MARGIN
        told: List[_loop.Loop] = []
        while True:
            with _loop._loops_lock:
                loops = [lp for lp in _loop._loops.values() if not lp.closed]
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
        for signum in STOP_SIGNALS:
            signal.signal(signum, watcher.request_stop)
        signal.signal(signal.SIGHUP, _ignore_signal)
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
