"""The workloads, as a table: what the server does, what the client does,
which parameter points are measured (quick and full), and which metrics
are reported.

Adding a workload is adding an entry to :data:`WORKLOADS`; the runner,
the report and the plots know nothing specific to any one of them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Dict, List, Mapping, Optional, Tuple

from .impls import Impl

MB = 1_000_000
KIB = 1024
MIB = 1024 * KIB


@dataclass(frozen=True)
class Settings:
    """How long and how often: the difference between --quick and full."""

    quick: bool
    repeats: int
    warmup: float  # seconds of ping-pong before the measured window
    duration: float  # seconds of the measured ping-pong window
    client_timeout: float  # a client phase making no progress this long fails
    server_max_seconds: float  # a server exits by itself after this long
    noisy_retries: int  # extra runs allowed per figure when others disturbed some
    noisy_budget: int  # extra runs allowed in all

    def run_timeout(self) -> float:
        """Upper bound on one client process, whatever it does."""
        return self.client_timeout * 2 + self.warmup + self.duration + 10


QUICK = Settings(quick=True, repeats=1, warmup=0.1, duration=0.4, client_timeout=20,
                 server_max_seconds=90, noisy_retries=0, noisy_budget=0)
FULL = Settings(quick=False, repeats=3, warmup=0.3, duration=1.5, client_timeout=60,
                server_max_seconds=300, noisy_retries=2, noisy_budget=40)


@dataclass(frozen=True)
class Metric:
    """A reported quantity of a run."""

    key: str
    label: str
    unit: str
    higher_is_better: bool = True


METRICS: Dict[str, Metric] = {m.key: m for m in (
    Metric("rate", "round trips/s", "rt/s"),
    Metric("lines_per_s", "lines/s", "lines/s"),
    Metric("mb_per_s", "MB/s", "MB/s"),
    Metric("per_conn", "RSS per idle connection", "bytes", higher_is_better=False),
    Metric("client_cpu", "client CPU", "%", higher_is_better=False),
    Metric("server_cpu", "server CPU", "%", higher_is_better=False),
    Metric("background_cpu", "others' CPU", "%", higher_is_better=False),
)}


@dataclass(frozen=True)
class Point:
    """One parameter setting of a workload."""

    key: str
    label: str
    params: Mapping[str, Any]

    def fds(self) -> int:
        """Connections the server holds at once."""
        return int(self.params.get("idle", 0)) + int(self.params.get("conns", 1))

    def to_json(self) -> Dict[str, Any]:
        """A JSON-able description."""
        return {"key": self.key, "label": self.label, "params": dict(self.params)}


@dataclass(frozen=True)
class Workload:
    """One workload: a server mode, a client, points and metrics."""

    key: str
    title: str
    description: str
    server_mode: str  # legacy_server.py / asyncio_server.py --mode
    client: str  # "pingpong" (loadgen.c), "stream" or "bulk" (clients.py)
    metrics: Tuple[str, ...]  # the first is the one ratios and plots use
    full: Tuple[Point, ...]
    quick: Tuple[Point, ...]
    baselines: Tuple[str, ...]  # ratios are to the first of these that ran
    axis: str = ""  # a numeric param to plot against (else bars per point)
    same_cpu: bool = False  # pin client and server to the same CPU (see README)

    def points(self, settings: Settings) -> Tuple[Point, ...]:
        """The points measured in this mode."""
        return self.quick if settings.quick else self.full

    def applies(self, impl: Impl, point: Point) -> bool:
        """Whether ``point`` means anything for ``impl`` (ac_in_buffer_size
        exists only in asynchat)."""
        return impl.legacy or not point.params.get("in_buffer")

    def primary(self) -> Metric:
        """The metric ratios, targets and plots use."""
        return METRICS[self.metrics[0]]

    def server_args(self, point: Point) -> List[str]:
        """Server options for ``point``."""
        args = ["--mode", self.server_mode]
        if point.params.get("in_buffer"):
            args += ["--in-buffer", str(point.params["in_buffer"])]
        return args

    def client_args(self, point: Point, settings: Settings, port: int) -> List[str]:
        """Client options for ``point`` (after the client's program and mode)."""
        params = point.params
        args = ["--port", str(port), "--timeout", str(settings.client_timeout)]
        if self.client == "pingpong":
            conns = params.get("conns", 1)
            timed = conns > 0  # no active connection: nothing to time
            args += ["--conns", conns, "--idle", params.get("idle", 0),
                     "--warmup", settings.warmup if timed else 0,
                     "--duration", settings.duration if timed else 0,
                     "--line-size", params.get("line_size", 16), "--sync"]
        elif self.client == "stream":
            args += ["--line-size", params["line_size"], "--total", params["total"]]
        elif self.client == "bulk":
            args += ["--total", params["total"]]
        else:
            raise ValueError(f"unknown client {self.client!r}")
        return [str(a) for a in args]

    def to_json(self, settings: Settings) -> Dict[str, Any]:
        """A JSON-able description (with the points of this mode)."""
        return {"key": self.key, "title": self.title, "description": self.description,
                "metrics": list(self.metrics), "baselines": list(self.baselines),
                "axis": self.axis, "client": self.client, "server_mode": self.server_mode,
                "same_cpu": self.same_cpu,
                "points": [p.to_json() for p in self.points(settings)]}


def size_label(nbytes: int) -> str:
    """1000000 -> '1 MB', 65536 -> '64 KiB', 20 -> '20 B'."""
    for unit, size in (("GB", 1000 * MB), ("MB", MB), ("MiB", MIB), ("KiB", KIB)):
        if nbytes >= size and nbytes % size == 0:
            return f"{nbytes // size} {unit}"
    return f"{nbytes} B"


def idle_points(counts: Tuple[int, ...]) -> Tuple[Point, ...]:
    """Ping-pong on one connection beside ``n`` idle ones."""
    return tuple(Point(f"idle{n}", f"{n:,} idle", {"idle": n, "conns": 1}) for n in counts)


def stream_point(line_size: int, total: int, in_buffer: Optional[int] = None) -> Point:
    """One client streaming ``total`` bytes of ``line_size``-byte lines."""
    key = f"{size_label(line_size)}-lines-{size_label(total)}"
    key += f"-in{size_label(in_buffer)}" if in_buffer else ""
    label = f"{size_label(line_size)} lines, {size_label(total)}"
    params: Dict[str, Any] = {"line_size": line_size, "total": total}
    if in_buffer:
        label += f", in-buffer {size_label(in_buffer)}"
        params["in_buffer"] = in_buffer
    return Point(key.replace(" ", ""), label, params)


def stream_points(short: Tuple[int, int], long: Tuple[int, int], inbuf_total: int
                  ) -> Tuple[Point, ...]:
    """Small vs big streams of 20-byte and of 64 KiB lines (``short`` and
    ``long``: the two stream sizes), and the ac_in_buffer_size pair."""
    return (*(stream_point(20, total) for total in short),
            *(stream_point(64 * KIB, total) for total in long),
            stream_point(20, inbuf_total, 4 * KIB), stream_point(20, inbuf_total, MIB))


def bulk_points(sizes: Tuple[int, ...]) -> Tuple[Point, ...]:
    """One reader, the server pushes ``n`` bytes."""
    return tuple(Point("push" + size_label(n).replace(" ", ""), f"push {size_label(n)}",
                       {"total": n}) for n in sizes)


def memory_point(n: int) -> Point:
    """``n`` idle connections and nothing else."""
    return Point(f"mem{n}", f"{n:,} idle", {"idle": n, "conns": 0})


LEGACY_FIRST = ("stdlib-poll", "stdlib-select", "asyncio")

WORKLOADS: Tuple[Workload, ...] = (
    Workload(
        key="idle", title="Idle scaling",
        description="One client does sequential line ping-pong (16-byte lines) while N "
                    "idle connections are open. Round trips per second. Client and server "
                    "share one CPU, so that a round trip costs what the two processes do "
                    "rather than two cross-CPU wake-ups (which dominate in a VM).",
        server_mode="echo", client="pingpong", metrics=("rate", "client_cpu", "server_cpu"),
        full=idle_points((0, 1000, 5000, 10000)), quick=idle_points((0, 200)),
        baselines=LEGACY_FIRST, axis="idle", same_cpu=True),
    Workload(
        key="concurrency", title="Concurrency",
        description="100 clients, each doing sequential ping-pong (16-byte lines). "
                    "Total round trips per second.",
        server_mode="echo", client="pingpong", metrics=("rate", "client_cpu", "server_cpu"),
        full=(Point("conns100", "100 clients", {"conns": 100}),),
        quick=(Point("conns100", "100 clients", {"conns": 100}),),
        baselines=("stdlib-select", "stdlib-poll", "asyncio")),
    Workload(
        key="lines", title="Line parsing",
        description="One client streams lines as fast as it can; the server counts them "
                    "(async_chat with terminator b'\\n', collecting each line as the "
                    "asynchat docs do; asyncio splits its buffer into lines). Small vs big "
                    "streams show linearity; the in-buffer pair sets "
                    "async_chat.ac_in_buffer_size to 4 KiB and 1 MiB (default 64 KiB).",
        server_mode="count", client="stream",
        metrics=("lines_per_s", "mb_per_s", "client_cpu", "server_cpu"),
        full=stream_points((MB, 100 * MB), (10 * MB, 1000 * MB), 10 * MB),
        quick=stream_points((256 * KIB, 4 * MB), (256 * KIB, 4 * MB), MB),
        baselines=LEGACY_FIRST),
    Workload(
        key="memory", title="Memory per idle connection",
        description="Server RSS growth (psutil) from start to N open idle connections, "
                    "divided by N.",
        server_mode="echo", client="pingpong", metrics=("per_conn",),
        full=(memory_point(10000),), quick=(memory_point(200),),
        baselines=LEGACY_FIRST),
    Workload(
        key="bulk", title="Bulk send",
        description="The server pushes N bytes to one reader in a single push()/write(). MB/s.",
        server_mode="push", client="bulk", metrics=("mb_per_s", "client_cpu", "server_cpu"),
        full=bulk_points((100 * MB, 1000 * MB)), quick=bulk_points((MB, 16 * MB)),
        baselines=LEGACY_FIRST),
)


def select_workloads(keys: Optional[List[str]]) -> Tuple[Workload, ...]:
    """The workloads named in ``keys`` (all when None); unknown names raise."""
    if not keys:
        return WORKLOADS
    known = {w.key: w for w in WORKLOADS}
    unknown = [k for k in keys if k not in known]
    if unknown:
        raise ValueError(f"unknown workload(s) {', '.join(unknown)}; "
                         f"choose from {', '.join(known)}")
    return tuple(known[k] for k in keys)
