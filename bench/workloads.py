"""The workloads, as a table: what the server does, what the client does,
which parameter points are measured (quick and full), and which metrics
are reported.

Adding a workload is adding an entry to :data:`WORKLOADS` (with, for a new
protocol, a server ``--mode`` and a script builder in bench/scripts.py);
the runner, the report and the plots know nothing specific to any one of
them.  See bench/README.md, "Adding a workload".
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple

from . import scripts, smtp_script
from .impls import Impl
from .scripts import Script

SERVERS_DIR = Path(__file__).resolve().parent / "servers"

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


QUICK = Settings(quick=True, repeats=1, warmup=0.05, duration=0.25, client_timeout=20,
                 server_max_seconds=90, noisy_retries=0, noisy_budget=0)
FULL = Settings(quick=False, repeats=3, warmup=0.3, duration=1.5, client_timeout=60,
                server_max_seconds=300, noisy_retries=2, noisy_budget=40)


@dataclass(frozen=True)
class Metric:
    """A reported quantity of a run.  ``{op}``/``{ops}`` in the label and unit
    stand for the workload's unit of work (round trip, request, line...)."""

    key: str
    label: str
    unit: str
    higher_is_better: bool = True

    def title(self) -> str:
        """The label, with the unit when the label does not already say it."""
        return self.label if self.unit in self.label else f"{self.label} ({self.unit})"

    def for_op(self, op: Sequence[str]) -> Metric:
        """This metric named for a workload whose unit of work is ``op``
        (singular, plural)."""
        return replace(self, label=self.label.format(op=op[0], ops=op[1]),
                       unit=self.unit.format(op=op[0], ops=op[1]))


METRICS: Dict[str, Metric] = {m.key: m for m in (
    Metric("rate", "{ops}/s", "{ops}/s"),
    Metric("ops_per_cpu_s", "{ops} per server CPU-second", "{ops}/CPU-s"),
    Metric("server_us_per_op", "server CPU per {op}", "µs", higher_is_better=False),
    Metric("server_user_us_per_op", "server user CPU per {op}", "µs",
           higher_is_better=False),
    Metric("server_sys_us_per_op", "server kernel CPU per {op}", "µs",
           higher_is_better=False),
    Metric("lines_per_s", "lines/s", "lines/s"),
    Metric("mb_per_s", "MB/s", "MB/s"),
    Metric("per_conn", "RSS per idle connection", "bytes", higher_is_better=False),
    Metric("client_cpu", "client CPU", "%", higher_is_better=False),
    Metric("server_cpu", "server CPU", "%", higher_is_better=False),
    Metric("background_cpu", "others' CPU", "%", higher_is_better=False),
)}
#: The metrics that say what the server's CPU buys, the first a workload
#: lists is its *efficiency* metric (overview table, before/after).
EFFICIENCY = ("server_us_per_op", "ops_per_cpu_s")

#: Server programs (in bench/servers/) per kind of implementation api.
DEFAULT_SERVERS: Mapping[str, str] = {"legacy": "legacy_server.py",
                                      "asyncio": "asyncio_server.py"}
CLIENT_KINDS = ("script", "stream", "bulk", "tls")


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


ScriptBuilder = Callable[[Mapping[str, Any]], Script]


@dataclass(frozen=True)
class Workload:
    """One workload: a server mode, a client, points and metrics.

    ``client`` is ``"script"`` (the request/reply load generator, loadgen.c
    or its Python twin, playing ``script(point.params)``), ``"stream"`` or
    ``"bulk"`` (clients.py), or ``"tls"`` (tls_client.py: ping-pong over
    TLS, which the C generator does not speak).  ``servers`` maps an
    implementation's api (``"legacy"``, ``"asyncio"``) to the server program
    in bench/servers/ that speaks the workload's ``server_mode``;
    implementations whose api is not there do not run the workload, nor do
    those ``impls`` (keys or key prefixes) does not name, when given."""

    key: str
    title: str
    description: str
    server_mode: str  # the server program's --mode
    client: str
    metrics: Tuple[str, ...]  # the first is the one plots use
    full: Tuple[Point, ...]
    quick: Tuple[Point, ...]
    baselines: Tuple[str, ...]  # ratios are to the first of these that ran
    op: Tuple[str, str] = ("round trip", "round trips")  # the unit of work
    script: Optional[ScriptBuilder] = None  # for client "script"
    servers: Mapping[str, str] = field(default_factory=lambda: dict(DEFAULT_SERVERS))
    axis: str = ""  # a numeric param to plot against (else bars per point)
    same_cpu: bool = False  # pin client and server to the same CPU (see README)
    impls: Optional[Tuple[str, ...]] = None  # only these implementations (keys or prefixes)

    def __post_init__(self) -> None:
        if self.client not in CLIENT_KINDS:
            raise ValueError(f"workload {self.key}: unknown client {self.client!r}")
        if (self.client == "script") != (self.script is not None):
            raise ValueError(f"workload {self.key}: client 'script' needs a script builder, "
                             "and only it")

    def points(self, settings: Settings) -> Tuple[Point, ...]:
        """The points measured in this mode."""
        return self.quick if settings.quick else self.full

    def applies(self, impl: Impl, point: Point) -> bool:
        """Whether ``impl`` runs ``point``: it has a server program here, is
        not restricted to other workloads, and the point means something for
        it (ac_in_buffer_size exists only in asynchat)."""
        if impl.api not in self.servers:
            return False
        if impl.workloads is not None and self.key not in impl.workloads:
            return False
        if self.impls is not None and not any(impl.key.startswith(k) for k in self.impls):
            return False
        return impl.legacy or not point.params.get("in_buffer")

    def server_program(self, impl: Impl) -> str:
        """Path of the server program ``impl`` runs for this workload."""
        return str(SERVERS_DIR / self.servers[impl.api])

    def metric(self, key: str) -> Metric:
        """Metric ``key`` named for this workload's unit of work."""
        return METRICS[key].for_op(self.op)

    def efficiency(self) -> Optional[str]:
        """The metric that says what the server's CPU buys (None: none)."""
        return next((m for m in self.metrics if m in EFFICIENCY), None)

    def server_args(self, point: Point) -> List[str]:
        """Server options for ``point``."""
        args = ["--mode", self.server_mode]
        if point.params.get("in_buffer"):
            args += ["--in-buffer", str(point.params["in_buffer"])]
        return args

    def client_args(self, point: Point, settings: Settings, port: int,
                    script: Optional[Path] = None) -> List[str]:
        """Client options for ``point`` (after the client's program and
        mode); ``script`` is the file :meth:`script` was written to."""
        params = point.params
        args: List[Any] = ["--port", port, "--timeout", settings.client_timeout]
        if self.client in ("script", "tls"):
            conns = params.get("conns", 1)
            timed = conns > 0  # no active connection: nothing to time
            if self.client == "script":
                args += ["--script", script]
            args += ["--conns", conns, "--idle", params.get("idle", 0),
                     "--warmup", settings.warmup if timed else 0,
                     "--duration", settings.duration if timed else 0, "--sync"]
        elif self.client == "stream":
            args += ["--line-size", params["line_size"], "--total", params["total"]]
        else:
            args += ["--total", params["total"]]
        return [str(a) for a in args]

    def to_json(self, settings: Settings) -> Dict[str, Any]:
        """A JSON-able description (with the points of this mode)."""
        return {"key": self.key, "title": self.title, "description": self.description,
                "metrics": list(self.metrics), "baselines": list(self.baselines),
                "axis": self.axis, "client": self.client, "server_mode": self.server_mode,
                "same_cpu": self.same_cpu, "op": list(self.op),
                "impls": list(self.impls) if self.impls is not None else None,
                "efficiency": self.efficiency(), "servers": dict(self.servers),
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


def kv_point(mix: str, depth: int, conns: int = 50) -> Point:
    """The kv protocol on ``conns`` connections, ``depth`` requests per write."""
    what = "GET/SET" if mix == "get-set" else "SET only"
    how = "1 request per write" if depth == 1 else f"{depth} pipelined per write"
    return Point(f"{mix}-x{depth}", f"{what}, {how}",
                 {"conns": conns, "mix": mix, "depth": depth, "value_size": 32})


def pingpong_script(params: Mapping[str, Any]) -> Script:
    """Line ping-pong (16-byte lines unless ``line_size`` says otherwise)."""
    return scripts.pingpong(params.get("line_size", 16))


def kv_script(params: Mapping[str, Any]) -> Script:
    """The kv protocol at ``params``' mix, depth and value size."""
    return scripts.kv(params["mix"], params["depth"], params["value_size"])


def smtp_messages(params: Mapping[str, Any]) -> Script:
    """One ``size``-byte message per cycle (bench/smtp_script.py)."""
    return smtp_script.smtp(params["size"])


LEGACY_FIRST = ("stdlib-poll", "stdlib-select", "asyncio")
SELECT_FIRST = ("stdlib-select", "stdlib-poll", "asyncio")
CPU_METRICS = ("client_cpu", "server_cpu")
#: The server's CPU per unit of work split into its user and kernel parts.
USER_AND_KERNEL = ("server_user_us_per_op", "server_sys_us_per_op")
#: Units of work per server CPU-second first (plotted), then the rate.
PER_CPU_FIRST = ("ops_per_cpu_s", "rate", "server_us_per_op", *CPU_METRICS)
ROUND_TRIPS = ("round trip", "round trips")
REQUESTS = ("request", "requests")
#: The TLS server program serves both apis (--impl pollchat, --loop asyncio|uvloop).
TLS_SERVERS = {"legacy": "tls_server.py", "asyncio": "tls_server.py"}

WORKLOADS: Tuple[Workload, ...] = (
    Workload(
        key="idle", title="Idle scaling",
        description="One client does sequential line ping-pong (16-byte lines) while N "
                    "idle connections are open. Round trips per second. Client and server "
                    "share one CPU, so that a round trip costs what the two processes do "
                    "rather than two cross-CPU wake-ups (which dominate in a VM).",
        server_mode="echo", client="script", script=pingpong_script,
        metrics=("rate", "server_us_per_op", *CPU_METRICS), op=ROUND_TRIPS,
        full=idle_points((0, 1000, 5000, 10000)), quick=idle_points((0, 200)),
        baselines=LEGACY_FIRST, axis="idle", same_cpu=True),
    Workload(
        key="concurrency", title="Concurrency (busy ping-pong)",
        description="100 clients, each doing sequential ping-pong (16-byte lines): total "
                    "round trips per second, and the server's CPU per round trip.",
        server_mode="echo", client="script", script=pingpong_script,
        metrics=("rate", "server_us_per_op", "ops_per_cpu_s", *USER_AND_KERNEL, *CPU_METRICS),
        op=ROUND_TRIPS,
        full=(Point("conns100", "100 clients", {"conns": 100}),),
        quick=(Point("conns100", "100 clients", {"conns": 100}),),
        baselines=SELECT_FIRST),
    Workload(
        key="pipeline", title="Key-value protocol (pipelined requests)",
        description="A key-value protocol like Redis's RESP, line headers plus "
                    "count-terminated payloads (`SET key n` + n bytes -> `+OK`, `GET key` -> "
                    "`$n` + n bytes), 32-byte values, 50 connections. Each connection writes "
                    "1 request, or 16 pipelined in one write, and waits for all the replies. "
                    "The async_chat program switches between set_terminator(b'\\r\\n') "
                    "and set_terminator(n) and pushes each reply; the asyncio Protocol "
                    "writes each reply (`uvloop-batched`: one write per read). Requests "
                    "per server CPU-second.",
        server_mode="kv", client="script", script=kv_script,
        metrics=PER_CPU_FIRST, op=REQUESTS,
        full=(kv_point("get-set", 1), kv_point("get-set", 16), kv_point("set", 1),
              kv_point("set", 16)),
        quick=(kv_point("get-set", 1), kv_point("get-set", 16), kv_point("set", 16)),
        baselines=SELECT_FIRST),
    Workload(
        key="keepalive", title="HTTP/1.1 keep-alive",
        description="100 connections, each sending HTTP/1.1 GET requests one at a time on "
                    "one keep-alive connection; the server parses the head (async_chat "
                    "terminator b'\\r\\n\\r\\n') and sends a small fixed response. "
                    "Requests per server CPU-second.",
        server_mode="http", client="script", script=lambda params: scripts.http_keepalive(),
        metrics=(*PER_CPU_FIRST, *USER_AND_KERNEL), op=REQUESTS,
        full=(Point("conns100", "100 connections", {"conns": 100}),),
        quick=(Point("conns100", "100 connections", {"conns": 100}),),
        baselines=SELECT_FIRST),
    Workload(
        key="lines", title="Line parsing",
        description="One client streams lines as fast as it can; the server counts them "
                    "(async_chat with terminator b'\\n', collecting each line as the "
                    "asynchat docs do; asyncio splits its buffer into lines). Small vs big "
                    "streams show linearity; the in-buffer pair sets "
                    "async_chat.ac_in_buffer_size to 4 KiB and 1 MiB (default 64 KiB).",
        server_mode="count", client="stream",
        metrics=("lines_per_s", "mb_per_s", "server_us_per_op", *CPU_METRICS),
        op=("line", "lines"),
        full=stream_points((MB, 100 * MB), (10 * MB, 1000 * MB), 10 * MB),
        quick=stream_points((256 * KIB, 4 * MB), (256 * KIB, 4 * MB), MB),
        baselines=LEGACY_FIRST),
    Workload(
        key="memory", title="Memory per idle connection",
        description="Server RSS growth (psutil) from start to N open idle connections, "
                    "divided by N (async_chat channels in the asyncore program, Protocol "
                    "instances and transports in the asyncio one).",
        server_mode="echo", client="script", script=pingpong_script, metrics=("per_conn",),
        full=(memory_point(10000),), quick=(memory_point(200),),
        baselines=LEGACY_FIRST),
    Workload(
        key="bulk", title="Bulk send",
        description="The server pushes N bytes to one reader in a single push()/write(). MB/s.",
        server_mode="push", client="bulk",
        metrics=("mb_per_s", "server_us_per_op", *CPU_METRICS), op=("MB", "MB"),
        full=bulk_points((100 * MB, 1000 * MB)), quick=bulk_points((MB, 16 * MB)),
        baselines=LEGACY_FIRST),
    Workload(
        key="smtp", title="Mail (smtpd), 1 KB messages",
        description="50 SMTP sessions, each sending 1 KB messages one after another "
                    "(MAIL, RCPT and DATA pipelined in one write, then the message) to a "
                    "sink written against the smtpd API (`servers/smtp_server.py`): "
                    "pollchat.smtpd, or CPython 3.11's smtpd on its asyncore, only the "
                    "import differing. Messages per server CPU-second (issue 13).",
        server_mode="smtp", servers={"legacy": "smtp_server.py"}, client="script",
        script=smtp_messages,
        metrics=PER_CPU_FIRST,
        op=("message", "messages"),
        full=(Point("conns50", "50 connections", {"conns": 50, "size": 1024}),),
        quick=(Point("conns50", "50 connections", {"conns": 50, "size": 1024}),),
        baselines=SELECT_FIRST),
    Workload(
        key="tls_echo", title="TLS echo (100 connections)",
        description="100 TLS connections, each doing sequential line ping-pong (16-byte "
                    "lines), against the echo server over TLS: an async_chat calling "
                    "start_tls() (pollchat's MemoryBIO transport) or an asyncio Protocol "
                    "behind create_server(ssl=...) (asyncio's TLS transport, on asyncio's "
                    "loop and uvloop's). The client is Python (`tls_client.py`), so round "
                    "trips per server CPU-second is the figure (issue 14).",
        server_mode="echo", servers=TLS_SERVERS, client="tls",
        metrics=PER_CPU_FIRST, op=ROUND_TRIPS,
        full=(Point("conns100", "100 TLS clients", {"conns": 100}),),
        quick=(Point("conns100", "100 TLS clients", {"conns": 100}),),
        baselines=("asyncio",), impls=("pollchat", "asyncio", "uvloop")),
    Workload(
        key="tls_idle", title="Idle TLS connections",
        description="One TLS connection does sequential line ping-pong while N idle TLS "
                    "connections (each past its handshake and one round trip) are open. "
                    "Round trips per second: idle TLS sessions must cost nothing per loop "
                    "pass (issue 14). Client and server share one CPU, as in Idle scaling.",
        server_mode="echo", servers=TLS_SERVERS, client="tls",
        metrics=("rate", "ops_per_cpu_s", "server_us_per_op", *CPU_METRICS), op=ROUND_TRIPS,
        full=idle_points((0, 10000)), quick=idle_points((0, 500)),
        baselines=("asyncio",), axis="idle", same_cpu=True,
        impls=("pollchat", "asyncio", "uvloop")),
    Workload(
        key="workers", title="Workers (pollchat run --workers)",
        description="100 clients doing sequential ping-pong (16-byte lines) against the "
                    "legacy echo program run unmodified under `pollchat run --workers N` "
                    "(`pollchat-workersN`, best backend). Nothing is pinned: the workers and "
                    "the load generator share every CPU. Round trips/s, and round trips "
                    "per server CPU-second with the CPU of the master and every worker "
                    "(issue 15). How it scales, and why: the workers share nothing but "
                    "the listening socket, so a round trip costs a worker what it costs "
                    "one process, and throughput follows the CPU the server gets. With "
                    "cores to spare it grows with the worker count; on a 2-CPU machine "
                    "the load generator (its CPU is in the table) takes its share of the "
                    "same cores, and a second worker can only use what it leaves, so "
                    "round trips per server CPU-second is the figure to compare.",
        server_mode="echo", client="script", script=pingpong_script,
        metrics=("rate", "ops_per_cpu_s", "server_us_per_op", *CPU_METRICS), op=ROUND_TRIPS,
        full=(Point("conns100", "100 clients", {"conns": 100}),),
        quick=(Point("conns100", "100 clients", {"conns": 100}),),
        baselines=("pollchat-workers1",), impls=("pollchat-workers",)),
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
