"""The master process of :mod:`pollchat.workers`: starts, supervises,
restarts and stops the workers.

Single-threaded, and it never runs an event loop: it waits in ``poll()`` on a
wake-up socket (written by the C-level signal handler through
``signal.set_wakeup_fd``) and on one message socket per worker, then handles
signals, reaps exited workers by pid, answers bind requests
(:mod:`pollchat._sharing`) and acts on its deadlines (readiness, back-off,
graceful timeouts).  The behaviour is described in :mod:`pollchat.workers`
and docs/design.md.
"""

from __future__ import annotations

import collections
import logging
import os
import selectors
import signal
import socket
import sys
import threading
import time
from typing import Any, Callable, Deque, Dict, Optional, Tuple, Union

from . import _worker
from ._sharing import SharedListeners, receive_message, send_message

__all__ = ["BACKOFF_FIRST", "BACKOFF_MAX", "DEFAULT_GRACEFUL_TIMEOUT", "EXIT_CLEAN",
           "EXIT_GAVE_UP", "EXIT_UNCLEAN", "READY_AFTER", "Master", "check_timeout", "cpu_count",
           "parse_workers"]

logger = logging.getLogger("pollchat.workers")

#: A worker that exits sooner than this many seconds after it started died at start.
READY_AFTER = 1.0
BACKOFF_FIRST = 0.5
BACKOFF_MAX = 30.0
DEFAULT_GRACEFUL_TIMEOUT = 30.0

EXIT_CLEAN = 0
EXIT_UNCLEAN = 1
EXIT_GAVE_UP = 3

# Worker states.
STARTING, READY, RETIRING, STOPPING = "starting", "ready", "retiring", "stopping"
# Master phases.
RUNNING, STOPPING_ALL, GIVING_UP = "running", "stopping", "giving up"

_CONTROL_TYPE = getattr(socket, "SOCK_SEQPACKET", socket.SOCK_DGRAM)


def cpu_count() -> int:
    """The CPUs this process may run on (its affinity mask, where the
    platform has one), at least 1."""
    if hasattr(os, "sched_getaffinity"):
        return max(1, len(os.sched_getaffinity(0)))
    return max(1, os.cpu_count() or 1)


def parse_workers(value: Union[int, str]) -> int:
    """A worker count: a positive number, or ``"auto"`` for :func:`cpu_count`.

    Raises:
        ValueError: anything else (the message says what to give).
    """
    if isinstance(value, str):
        text = value.strip().lower()
        if text == "auto":
            return cpu_count()
        if not text.isdigit():
            raise ValueError(f"workers must be a number of processes or 'auto', not {value!r}")
        value = int(text)
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"workers must be an int or 'auto', not {type(value).__name__}")
    if value < 1:
        raise ValueError(f"workers must be at least 1, not {value}")
    return value


def check_timeout(seconds: Any) -> float:
    if isinstance(seconds, bool) or not isinstance(seconds, (int, float)):
        raise TypeError(f"graceful_timeout must be a number of seconds, not {seconds!r}")
    if not seconds > 0:
        raise ValueError(f"graceful_timeout must be positive, not {seconds!r}")
    return float(seconds)


def _workers(count: int) -> str:
    return f"{count} worker" if count == 1 else f"{count} workers"


def _describe_exit(code: int) -> str:
    if code >= 0:
        return f"exited with status {code}"
    try:
        name = signal.Signals(-code).name
    except ValueError:
        name = f"signal {-code}"
    return f"was killed by {name}"


class _Worker:
    """The master's record of one worker process."""

    __slots__ = ("pid", "slot", "control", "started", "state", "deadline", "killed")

    def __init__(self, pid: int, slot: _Slot, control: socket.socket, started: float) -> None:
        self.pid = pid
        self.slot = slot
        self.control: Optional[socket.socket] = control
        self.started = started
        self.state = STARTING
        self.deadline = 0.0  # when stopping or retiring: kill after this
        self.killed = False


class _Slot:
    """One of the N places a worker runs in; keeps the restart history."""

    __slots__ = ("index", "worker", "failures", "restart_at")

    def __init__(self, index: int) -> None:
        self.index = index
        self.worker: Optional[_Worker] = None
        self.failures = 0  # consecutive deaths at start
        self.restart_at: Optional[float] = None


class Master:
    """Starts, supervises, restarts and stops the workers.  Single-threaded;
    :meth:`run` blocks until the workers are stopped.

    Args:
        target: what a worker runs after the fork; returns its exit status.
        workers: how many workers.
        graceful_timeout: seconds a stopping worker has before it is killed.
        ready_after: seconds after which a worker no longer counts as
            starting (:data:`READY_AFTER`).
    """

    def __init__(self, target: Callable[[], int], workers: int,
                 graceful_timeout: float = DEFAULT_GRACEFUL_TIMEOUT, *,
                 ready_after: float = READY_AFTER) -> None:
        if not callable(target):
            raise TypeError(f"target must be callable, not {target!r}")
        self._target = target
        self._slots = [_Slot(i) for i in range(parse_workers(workers))]
        self._graceful_timeout = check_timeout(graceful_timeout)
        self._ready_after = ready_after
        self._workers: Dict[int, _Worker] = {}
        self._listeners = SharedListeners()
        self._phase = RUNNING
        self._status = EXIT_CLEAN
        self._signals: Deque[int] = collections.deque()
        self._rolling: Deque[_Slot] = collections.deque()
        self._replacement: Optional[_Worker] = None
        self._roll_again = False
        self._selector: Optional[selectors.BaseSelector] = None
        self._wake: Tuple[Optional[socket.socket], Optional[socket.socket]] = (None, None)
        self._alive: Tuple[int, int] = (-1, -1)  # a pipe whose EOF tells workers we are gone
        self._saved_signals: Dict[int, Any] = {}
        self._saved_wakeup = -1

    # -- running ------------------------------------------------------------------------

    def run(self) -> int:
        """Start the workers and supervise them until they are stopped.

        Returns:
            the exit status (see the module's documentation).

        Raises:
            RuntimeError: threads are running, or not in the main thread.
        """
        others = [t.name for t in threading.enumerate() if t is not threading.current_thread()]
        if others:
            raise RuntimeError(f"cannot start workers with other threads running "
                               f"({', '.join(others)}): fork() copies only the calling "
                               "thread; start the workers before any thread")
        if threading.current_thread() is not threading.main_thread():
            raise RuntimeError("the workers' master must run in the main thread (signals)")
        self._open()
        try:
            logger.info("master %d: starting %s", os.getpid(), _workers(len(self._slots)))
            for slot in self._slots:
                self._spawn(slot)
            while self._workers or self._phase == RUNNING:
                self._wait(self._next_deadline())
                self._handle_signals()
                self._reap()
                self._tick(time.monotonic())
            if self._status == EXIT_CLEAN:
                logger.info("master %d: every worker stopped cleanly", os.getpid())
            return self._status
        finally:
            self._kill_remaining()
            self._close()

    def _open(self) -> None:
        # poll/select: no kernel object for the forked workers to inherit.
        selector_class = getattr(selectors, "PollSelector", selectors.SelectSelector)
        self._selector = selector_class()
        wake_r, wake_w = socket.socketpair()
        wake_r.setblocking(False)
        wake_w.setblocking(False)
        self._wake = (wake_r, wake_w)
        self._selector.register(wake_r, selectors.EVENT_READ, None)
        self._alive = os.pipe()
        self._saved_wakeup = signal.set_wakeup_fd(wake_w.fileno(), warn_on_full_buffer=False)
        for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGCHLD):
            self._saved_signals[signum] = signal.signal(signum, self._on_signal)

    def _close(self) -> None:
        for signum, handler in self._saved_signals.items():
            signal.signal(signum, handler)
        self._saved_signals.clear()
        signal.set_wakeup_fd(self._saved_wakeup)
        self._listeners.close_all()
        for sock in self._wake:
            if sock is not None:
                sock.close()
        for fd in self._alive:
            if fd >= 0:
                os.close(fd)
        self._alive = (-1, -1)
        if self._selector is not None:
            self._selector.close()

    def _on_signal(self, signum: int, frame: Any) -> None:
        # Runs between two bytecodes of the master; the C-level handler has
        # already written to the wake-up socket, so the wait returns.
        self._signals.append(signum)

    def _next_deadline(self) -> Optional[float]:
        times = [slot.restart_at for slot in self._slots if slot.restart_at is not None]
        for worker in self._workers.values():
            if worker.state == STARTING:
                times.append(worker.started + self._ready_after)
            elif worker.state in (RETIRING, STOPPING) and not worker.killed:
                times.append(worker.deadline)
        return min(times) if times else None

    def _wait(self, deadline: Optional[float]) -> None:
        assert self._selector is not None
        timeout = None if deadline is None else max(0.0, deadline - time.monotonic())
        for key, _ in self._selector.select(timeout):
            if key.data is None:
                self._drain_wake()
            else:
                self._serve_request(key.data)

    def _drain_wake(self) -> None:
        wake_r = self._wake[0]
        assert wake_r is not None
        try:
            while wake_r.recv(4096):
                pass
        except (BlockingIOError, InterruptedError):
            pass

    def _handle_signals(self) -> None:
        while self._signals:
            signum = self._signals.popleft()
            if signum in (signal.SIGTERM, signal.SIGINT):
                self._begin_stop(signal.Signals(signum).name)
            elif signum == signal.SIGHUP:
                self._begin_rolling()

    # -- workers ------------------------------------------------------------------------

    def _spawn(self, slot: _Slot, replacing: bool = False) -> _Worker:
        ours, theirs = socket.socketpair(socket.AF_UNIX, _CONTROL_TYPE)
        for stream in (sys.stdout, sys.stderr):  # or the child writes our buffer again
            try:
                stream.flush()
            except (OSError, ValueError, AttributeError):
                pass  # closed or missing: nothing buffered to duplicate
        pid = os.fork()
        if pid == 0:  # the worker: never returns into the master's code
            status = 1
            try:
                self._become_worker(ours)
                status = _worker.run_worker(self._target, theirs, self._alive[0],
                                            self._graceful_timeout)
            finally:
                os._exit(status)
        theirs.close()
        ours.setblocking(False)
        worker = _Worker(pid, slot, ours, time.monotonic())
        self._workers[pid] = worker
        assert self._selector is not None
        self._selector.register(ours, selectors.EVENT_READ, worker)
        slot.restart_at = None
        if not replacing:
            slot.worker = worker
        logger.info("worker %d started (%d of %d)", pid, slot.index + 1, len(self._slots))
        return worker

    def _become_worker(self, ours: socket.socket) -> None:
        """In the child, first: drop the master's signal handling and fds."""
        signal.set_wakeup_fd(-1)
        for signum in self._saved_signals:
            signal.signal(signum, signal.SIG_DFL)
        ours.close()
        for worker in self._workers.values():
            if worker.control is not None:
                worker.control.close()
        self._listeners.close_all()  # this process's copies only
        for sock in self._wake:
            if sock is not None:
                sock.close()
        os.close(self._alive[1])  # keep the read end: its EOF means we are gone
        if self._selector is not None:
            self._selector.close()

    def _reap(self) -> None:
        for pid, worker in list(self._workers.items()):
            try:
                done, status = os.waitpid(pid, os.WNOHANG)
            except ChildProcessError:  # reaped elsewhere: its status is lost
                done, status = pid, 255 << 8
            if done:
                self._on_exit(worker, os.waitstatus_to_exitcode(status))

    def _on_exit(self, worker: _Worker, code: int) -> None:
        now = time.monotonic()
        del self._workers[worker.pid]
        self._drop_control(worker)
        self._listeners.release(worker.pid)
        slot = worker.slot
        how = _describe_exit(code)
        age = now - worker.started
        if slot.worker is worker:
            slot.worker = None
        if worker.state in (RETIRING, STOPPING):
            clean = code == 0 and not worker.killed
            if worker.state == STOPPING and not clean:
                self._status = max(self._status, EXIT_UNCLEAN)
            logger.log(logging.INFO if clean else logging.WARNING, "worker %d %s",
                       worker.pid, "stopped" if clean else how)
            return
        if worker is self._replacement:
            self._replacement = None
            self._rolling.clear()
            self._roll_again = False
            logger.error("the new worker %d %s after %.1f s: restart abandoned; the running "
                         "workers stay", worker.pid, how, age)
            return
        if self._phase != RUNNING:
            return
        if self._replacement is not None and self._replacement.slot is slot:
            logger.warning("worker %d %s; its replacement takes over", worker.pid, how)
            return
        at_start = worker.state == STARTING
        slot.failures = slot.failures + 1 if at_start else 0
        if at_start and self._every_slot_failed():
            self._give_up(worker.pid, how)
            return
        delay = min(BACKOFF_MAX, BACKOFF_FIRST * 2 ** (slot.failures - 1)) if at_start else 0.0
        slot.restart_at = now + delay
        logger.warning("worker %d %s %s; restarting it%s", worker.pid, how,
                       "at start" if at_start else f"after {age:.1f} s",
                       f" in {delay:g} s" if delay else "")

    def _every_slot_failed(self) -> bool:
        if any(w.state in (READY, RETIRING) for w in self._workers.values()):
            return False
        return all(slot.failures > 0 for slot in self._slots)

    def _give_up(self, pid: int, how: str) -> None:
        self._phase = GIVING_UP
        self._status = EXIT_GAVE_UP
        logger.error("every worker died at start (the last, %d, %s); not restarting them: "
                     "see the program's error above", pid, how)
        self._stop_workers(signal.SIGTERM)

    def _drop_control(self, worker: _Worker) -> None:
        if worker.control is not None:
            assert self._selector is not None
            self._selector.unregister(worker.control)
            worker.control.close()
            worker.control = None

    def _signal(self, worker: _Worker, signum: int) -> None:
        try:
            os.kill(worker.pid, signum)
        except ProcessLookupError:
            pass  # exited already; the reaper will see it

    def _tick(self, now: float) -> None:
        for worker in list(self._workers.values()):
            if worker.state == STARTING and now >= worker.started + self._ready_after:
                self._ready(worker)
            elif worker.state in (RETIRING, STOPPING) and not worker.killed \
                    and now >= worker.deadline:
                logger.warning("worker %d still running %g s after it was asked to stop; "
                               "killing it", worker.pid, self._graceful_timeout)
                worker.killed = True
                self._signal(worker, signal.SIGKILL)
        if self._phase == RUNNING:
            for slot in self._slots:
                if slot.restart_at is not None and now >= slot.restart_at and slot.worker is None:
                    self._spawn(slot)

    def _ready(self, worker: _Worker) -> None:
        worker.state = READY
        if worker is self._replacement:
            slot = worker.slot
            old, slot.worker = slot.worker, worker
            slot.failures = 0
            self._replacement = None
            if old is not None:
                self._retire(old)
            self._roll_next()
        elif worker.slot.worker is worker:
            worker.slot.failures = 0

    # -- stopping and restarting ----------------------------------------------------------

    def _stop_workers(self, signum: int) -> None:
        deadline = time.monotonic() + self._graceful_timeout
        for worker in self._workers.values():
            if worker.state != STOPPING:
                worker.deadline = deadline if worker.state != RETIRING else worker.deadline
                worker.state = STOPPING
                self._signal(worker, signum)
        for slot in self._slots:
            slot.restart_at = None
        self._rolling.clear()
        self._replacement = None

    def _begin_stop(self, signame: str) -> None:
        if self._phase != RUNNING:
            if self._workers:
                logger.warning("%s again: killing the remaining %s now", signame,
                               _workers(len(self._workers)))
                for worker in self._workers.values():
                    worker.killed = True
                    self._signal(worker, signal.SIGKILL)
                self._status = max(self._status, EXIT_UNCLEAN)
            return
        self._phase = STOPPING_ALL
        logger.info("%s: stopping %s (allowing %g s to finish)", signame,
                    _workers(len(self._workers)), self._graceful_timeout)
        # Once the workers close theirs, new connections are refused at once
        # instead of waiting in a queue nobody will serve.
        self._listeners.close_all()
        self._stop_workers(signal.SIGTERM)

    def _begin_rolling(self) -> None:
        if self._phase != RUNNING:
            return
        if self._replacement is not None or self._rolling:
            self._roll_again = True
            logger.info("SIGHUP: a restart is under way; another will follow it")
            return
        logger.info("SIGHUP: restarting %s one by one", _workers(len(self._slots)))
        self._rolling.extend(self._slots)
        self._roll_next()

    def _roll_next(self) -> None:
        while self._rolling:
            slot = self._rolling.popleft()
            if slot.worker is None:
                continue  # dead: its restart starts a new worker anyway
            self._replacement = self._spawn(slot, replacing=True)
            return
        logger.info("every worker was restarted")
        self._listeners.close_unused()
        if self._roll_again:
            self._roll_again = False
            self._begin_rolling()

    def _retire(self, worker: _Worker) -> None:
        worker.state = RETIRING
        worker.deadline = time.monotonic() + self._graceful_timeout
        self._signal(worker, signal.SIGTERM)

    def _kill_remaining(self) -> None:
        """Leave no child behind, whatever happened (an error in the master)."""
        for worker in list(self._workers.values()):
            self._signal(worker, signal.SIGKILL)
            try:
                os.waitpid(worker.pid, 0)
            except ChildProcessError:
                pass  # already reaped
            self._drop_control(worker)
        self._workers.clear()

    def _serve_request(self, worker: _Worker) -> None:
        """Answer one message from ``worker`` (a bind request)."""
        if worker.control is None:
            return
        try:
            message, fds = receive_message(worker.control)
        except (BlockingIOError, InterruptedError):
            return
        except (EOFError, OSError, ValueError) as exc:
            if not isinstance(exc, EOFError):
                logger.error("bad message from worker %d: %s", worker.pid, exc)
            self._drop_control(worker)  # it is exiting; the reaper will see it
            return
        reply, send = self._listeners.answer(worker.pid, message, fds)
        try:
            send_message(worker.control, reply, send)
        except OSError as exc:
            logger.warning("cannot answer worker %d: %s", worker.pid, exc)
