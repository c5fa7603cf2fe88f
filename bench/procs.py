"""Server and client processes: start, sample, talk to, and always stop.

Every wait here is bounded: a server that does not announce its port, a
client that does not finish, a server that does not quit are killed after
their deadline and the run is reported as failed, with the reason.
"""

from __future__ import annotations

import json
import os
import selectors
import signal
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, Dict, FrozenSet, Iterator, List, Mapping, Optional, Sequence, Tuple

import psutil

STDERR_TAIL = 4000  # bytes of a process's stderr kept for error reports


class ProcessFailed(Exception):
    """A benchmark process did not do what it should; the message says what."""


@dataclass
class Sample:
    """A server's counters at one moment, and the load of the CPUs it and its
    client run on."""

    at: float  # time.perf_counter()
    cpu: float  # user + system seconds of the server and its child processes
    rss: int  # the server process's resident set, bytes
    cpus_busy: float  # seconds the watched CPUs spent not idle, since boot (summed)
    cpus_total: float  # seconds of the watched CPUs, since boot (summed)
    # The server's CPU split into user and kernel (system) seconds, from the
    # 10 ms tick counters (``cpu`` is exact where the kernel allows): what the
    # program's own code costs, apart from its system calls.
    cpu_user: float = 0.0
    cpu_system: float = 0.0


def cpus_time(cpus: Optional[FrozenSet[int]]) -> Tuple[float, float]:
    """(busy, total) seconds of the CPUs in ``cpus`` (all when None), summed."""
    busy = total = 0.0
    for n, times in enumerate(psutil.cpu_times(percpu=True)):
        if cpus is None or n in cpus:
            all_ = sum(times)
            total += all_
            busy += all_ - times.idle - getattr(times, "iowait", 0.0)
    return busy, total


def task_cpu_seconds(pid: int) -> Optional[float]:
    """CPU time of every live thread of process ``pid``, from the scheduler's
    nanosecond counters (``/proc/PID/task/*/schedstat``); None where the
    kernel does not offer them.

    The tick-based user and system times that ``psutil`` reads move in steps
    of 10 ms: 1% of a 1-second window.  The scheduler's counters are exact,
    which is what CPU per request needs."""
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
        total = 0
        for task in tasks:
            with open(f"/proc/{pid}/task/{task}/schedstat", "rb") as f:
                total += int(f.read().split()[0])
    except (OSError, ValueError, IndexError):
        return None
    return total / 1e9


def cpu_clock() -> str:
    """Which clock server CPU is read from here (for the report)."""
    if task_cpu_seconds(os.getpid()) is not None:
        return "scheduler nanoseconds (/proc/PID/task/*/schedstat)"
    return "user + system time from psutil (10 ms ticks)"


def process_cpu_seconds(process: psutil.Process) -> float:
    """User + system seconds of one process (exact where the kernel allows)."""
    exact = task_cpu_seconds(process.pid)
    if exact is not None:
        return exact
    times = process.cpu_times()
    return times.user + times.system


def _own_cpu(process: psutil.Process) -> Tuple[float, float, float]:
    times = process.cpu_times()
    return process_cpu_seconds(process), times.user, times.system


def tree_cpu(process: psutil.Process) -> Tuple[float, float, float]:
    """CPU of ``process`` and its live descendants (a server that forks
    workers is measured whole), in one walk of the tree: exact seconds
    (where the kernel allows), and the user and system seconds of the tick
    counters.  Raises psutil.Error if ``process`` is gone; a descendant that
    exits meanwhile is skipped."""
    exact, user, system = _own_cpu(process)
    for child in process.children(recursive=True):
        try:
            child_exact, child_user, child_system = _own_cpu(child)
        except psutil.Error:
            continue
        exact += child_exact
        user += child_user
        system += child_system
    return exact, user, system


def pin(pid: int, cpu: Optional[int]) -> None:
    """Pin ``pid`` to one CPU (no-op when ``cpu`` is None or unsupported)."""
    if cpu is None or not hasattr(os, "sched_setaffinity"):
        return
    try:
        os.sched_setaffinity(pid, {cpu})
    except OSError:
        pass  # the process may be gone already; the run will tell


def tail(path: Path, limit: int = STDERR_TAIL) -> str:
    """The end of a log file, decoded leniently."""
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(0, f.tell() - limit))
            return f.read().decode("utf-8", "replace")
    except OSError:
        return ""


def last_error_line(text: str) -> str:
    """The line of a traceback (or log) that says what went wrong."""
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    for line in reversed(lines):
        if not line.startswith(("File ", "^", "~")) and not line.startswith("Traceback"):
            return line
    return ""


def read_lines(stream: IO[bytes], deadline: float) -> Iterator[str]:
    """Lines from a pipe until EOF or ``deadline`` (perf_counter time).

    Reads the raw fd, so that a line is seen as soon as it is written (a
    buffered reader could hold it back while select() waits for more)."""
    fd = stream.fileno()
    pending = b""
    with selectors.DefaultSelector() as sel:
        sel.register(fd, selectors.EVENT_READ)
        while True:
            while b"\n" in pending:
                line, pending = pending.split(b"\n", 1)
                yield line.decode("utf-8", "replace")
            left = deadline - time.perf_counter()
            if left <= 0:
                raise ProcessFailed("timed out")
            if not sel.select(min(left, 1.0)):
                continue
            chunk = os.read(fd, 65536)
            if not chunk:
                if pending:
                    yield pending.decode("utf-8", "replace")
                return
            pending += chunk


@dataclass
class Server:
    """A benchmark server process (or process tree: a master and workers).

    It is stopped by its quit message (the ``quit`` of its ``INFO`` line),
    or by SIGTERM when it announces ``"stop": "SIGTERM"`` (a server whose
    connections a plain quit line cannot reach, e.g. TLS) or when
    ``stop_signal`` is set (a ``pollchat run --workers`` master: a quit line
    would stop the one worker that took it)."""

    argv: Sequence[str]
    env: Mapping[str, str]
    log: Path
    cpu: Optional[int] = None
    host: str = "127.0.0.1"
    proc: Optional[subprocess.Popen[bytes]] = None
    port: int = 0
    info: Dict[str, Any] = field(default_factory=dict)
    ps: Optional[psutil.Process] = None
    watch: Optional[FrozenSet[int]] = None  # CPUs whose load samples report (None: all)
    stop_signal: Optional[int] = None  # stop by this signal rather than the quit message
    announcements: int = 1  # PORT lines to wait for (one per worker process)

    def start(self, timeout: float = 30.0) -> None:
        """Launch and wait for the ``PORT`` line (``announcements`` of them).

        stdout and stderr both go to the log file, never to a pipe: asyncore's
        ``log_info()`` prints to stdout, and a pipe nobody reads would
        eventually block the server."""
        with open(self.log, "wb") as log:
            self.proc = subprocess.Popen(list(self.argv), stdin=subprocess.DEVNULL,
                                         stdout=log, stderr=subprocess.STDOUT,
                                         env={**os.environ, **self.env})
        pin(self.proc.pid, self.cpu)
        self.ps = psutil.Process(self.proc.pid)
        deadline = time.perf_counter() + timeout
        while time.perf_counter() < deadline and self.alive():
            if self._read_announcement():
                return
            time.sleep(0.01)
        if self._read_announcement():  # it may have exited right after
            return
        self.kill()
        raise ProcessFailed(f"server did not start: {self.error() or 'no PORT line'}")

    def _read_announcement(self) -> bool:
        """Parse the ``INFO``/``PORT`` lines from the log; True once the port
        is known and every expected process has announced it."""
        ports = 0
        for line in tail(self.log, limit=1 << 16).splitlines():
            if line.startswith("INFO "):
                self.info = json.loads(line[5:])
            elif line.startswith("PORT "):
                self.port = int(line[5:])
                ports += 1
        return self.port > 0 and ports >= self.announcements

    def alive(self) -> bool:
        """Whether the server is still running."""
        return self.proc is not None and self.proc.poll() is None

    def wait(self, timeout: float) -> Optional[int]:
        """Wait up to ``timeout`` for the server to exit; its status or None."""
        if self.proc is None:
            return None
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            return None

    def sample(self) -> Optional[Sample]:
        """CPU (of the server and its child processes) and RSS (of the server
        process) now; None if the server is gone."""
        if self.ps is None:
            return None
        try:
            cpu, user, system = tree_cpu(self.ps)
            rss = self.ps.memory_info().rss
        except psutil.Error:
            return None
        busy, total = cpus_time(self.watch)
        return Sample(time.perf_counter(), cpu, rss, busy, total, user, system)

    def error(self) -> str:
        """The last thing the server said besides its announcement ("" if
        nothing): why it failed, or what it complained about."""
        said = [line for line in tail(self.log).splitlines()
                if not line.startswith(("INFO ", "PORT "))]
        return last_error_line("\n".join(said))

    def stop(self, grace: float = 5.0) -> Optional[int]:
        """Ask the server to quit (its quit message, or SIGTERM: see the
        class); kill it if it does not.  Returns its exit status."""
        if self.proc is None:
            return None
        stop_signal = self.stop_signal
        if stop_signal is None and self.info.get("stop") == "SIGTERM":
            stop_signal = signal.SIGTERM
        if stop_signal is not None:
            if self.alive():
                self.proc.send_signal(stop_signal)
        elif self.alive() and self.port:
            quit_message = self.info.get("quit", "QUIT\n").encode("latin-1")
            try:
                with socket.create_connection((self.host, self.port), timeout=2) as sock:
                    sock.sendall(quit_message)
            except OSError:
                pass
        try:
            return self.proc.wait(grace)
        except subprocess.TimeoutExpired:
            return self.kill()

    def kill(self) -> Optional[int]:
        """Kill the server: its child processes (workers), then itself, each
        by its pid."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            children: List[psutil.Process] = []
            if self.ps is not None:
                try:
                    children = self.ps.children(recursive=True)
                except psutil.Error:
                    pass  # gone meanwhile
            for child in children:
                try:
                    child.kill()
                except psutil.Error:
                    pass  # exited meanwhile
            self.proc.kill()
        return self.proc.wait()


@dataclass
class ClientRun:
    """What a client reported, and the server samples taken at its events."""

    result: Dict[str, Any]
    samples: Dict[str, Sample]


def run_client(argv: Sequence[str], server: Server, log: Path, timeout: float,
               cpu: Optional[int] = None) -> ClientRun:
    """Run a client to completion, sampling the server at each of its events.

    On ``ready`` the server is sampled and the client told to go; ``start``
    and ``end`` are sampled too.  Raises ProcessFailed when there is no result.
    """
    samples: Dict[str, Sample] = {}
    result: Optional[Dict[str, Any]] = None
    with open(log, "wb") as err:
        proc = subprocess.Popen(list(argv), stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                stderr=err)
    pin(proc.pid, cpu)
    try:
        stdout = proc.stdout
        if stdout is None:  # cannot happen with stdout=PIPE; keeps the types honest
            raise ProcessFailed("client has no stdout pipe")
        for line in read_lines(stdout, time.perf_counter() + timeout):
            event = _parse_event(line)
            name = event.get("event")
            if name in ("ready", "start", "end"):
                sample = server.sample()
                if sample is not None:
                    samples[name] = sample
                if name == "ready":
                    _tell(proc, b"go\n")
            elif name == "result":
                result = event
    except ProcessFailed:
        proc.kill()
        raise ProcessFailed(f"client timed out after {timeout:.0f} s") from None
    finally:
        _reap(proc)
    if result is None:
        raise ProcessFailed(f"client gave no result: {last_error_line(tail(log)) or 'no output'}")
    return ClientRun(result, samples)


def _parse_event(line: str) -> Dict[str, Any]:
    try:
        event = json.loads(line)
    except ValueError:
        return {}
    return event if isinstance(event, dict) else {}


def _tell(proc: subprocess.Popen[bytes], data: bytes) -> None:
    try:
        if proc.stdin is not None:
            proc.stdin.write(data)
            proc.stdin.flush()
    except OSError:
        pass  # the client is gone; its result (or lack of one) will say why


def _reap(proc: subprocess.Popen[bytes], grace: float = 10.0) -> None:
    for stream in (proc.stdin, proc.stdout):
        if stream:
            try:
                stream.close()
            except OSError:
                pass
    try:
        proc.wait(grace)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def python_version(python: str) -> Optional[str]:
    """``X.Y.Z`` of an interpreter, or None if it does not run."""
    try:
        out = subprocess.run([python, "-c", "import platform; print(platform.python_version())"],
                             capture_output=True, text=True, timeout=30, check=True)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip()


def probe(python: str, code: str, timeout: float = 60.0,
          env: Optional[Mapping[str, str]] = None) -> subprocess.CompletedProcess[str]:
    """Run ``code`` in ``python`` (capturing output), with ``env`` added to
    the environment; never raises."""
    try:
        return subprocess.run([python, "-c", code], capture_output=True, text=True,
                              timeout=timeout, check=False, env={**os.environ, **(env or {})})
    except (OSError, subprocess.SubprocessError) as exc:
        return subprocess.CompletedProcess([python], 1, "", str(exc))

