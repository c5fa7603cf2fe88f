"""The TLS benchmark: pollchat's MemoryBIO transport vs asyncio's TLS transport.

    python -m bench.tls_bench --quick     # a smoke run: seconds, small numbers
    python -m bench.tls_bench             # 100 busy connections; 10,000 idle ones

Two workloads, each in the same run for every implementation
(``pollchat-<backend>`` for each backend here, ``asyncio``, and ``uvloop``
when installed), servers from ``servers/tls_server.py``, the client
``tls_client.py`` (Python: TLS on both ends costs far more than the client
loop):

* ``tls-echo``: 100 TLS connections doing sequential line ping-pong.  The
  figure is **round trips per server CPU-second** (the server's user+system
  time over the measured window), so the client's own speed does not decide
  it.  Target (issue 14): pollchat >= asyncio.
* ``tls-idle``: one TLS ping-pong connection beside 0 and N idle TLS
  connections (N = 10,000; 200 with ``--quick``).  Target: the rate per
  server CPU-second with N idle >= 0.9 of the rate with none.

Certificates are made for the run with ``trustme`` (the test extra).  Results:
a table on stdout and ``results.json`` under ``--out`` (default
``bench/results/tls``, ``bench/results/tls-quick`` for ``--quick``).

How it plugs into the main harness (``python -m bench``): the server
program serves both apis (``--impl pollchat`` for "legacy", ``--loop
asyncio|uvloop`` for "asyncio") and makes its own certificate; the client
speaks the harness's event protocol and reports ``ops`` and ``seconds``.
So a workload entry ``servers={"legacy": "tls_server.py", "asyncio":
"tls_server.py"}``, ``server_mode="echo"``, ``client="tls"``, plus a
``"tls"`` client kind running ``tls_client.py`` with the ``script`` kind's
``--conns/--idle/--warmup/--duration/--sync`` arguments, is all it takes
(see the report of issue 14).  Until then this module runs them itself, with
the harness's process helpers only (``procs.Server``, ``procs.run_client``).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

if __package__ in (None, ""):  # run as a script: make the package importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.procs import ProcessFailed, Server, run_client  # noqa: E402

HERE = Path(__file__).resolve().parent
TLS_SERVER = str(HERE / "servers" / "tls_server.py")
TLS_CLIENT = str(HERE / "tls_client.py")
FD_SETSIZE = 1024


@dataclass(frozen=True)
class Impl:
    """A TLS server to measure: its server options and environment."""

    key: str
    flags: Tuple[str, ...]
    env: Mapping[str, str] = field(default_factory=dict)
    skip: str = ""


@dataclass(frozen=True)
class Point:
    key: str
    label: str
    params: Mapping[str, int]


@dataclass(frozen=True)
class Workload:
    key: str
    title: str
    full: Tuple[Point, ...]
    quick: Tuple[Point, ...]

#: The two workloads (the main harness's entries would carry the same points).
TLS_WORKLOADS = (
    Workload("tls-echo", "TLS echo: 100 connections, sequential ping-pong",
             full=(Point("tls100", "100 TLS clients", {"conns": 100}),),
             quick=(Point("tls100", "100 TLS clients", {"conns": 100}),)),
    Workload("tls-idle", "TLS idle scaling: one ping-pong connection beside N idle ones",
             full=(Point("idle0", "0 idle", {"conns": 1, "idle": 0}),
                   Point("idle10000", "10,000 idle", {"conns": 1, "idle": 10000})),
             quick=(Point("idle0", "0 idle", {"conns": 1, "idle": 0}),
                    Point("idle200", "200 idle", {"conns": 1, "idle": 200}))),
)


def make_certificates(directory: Path) -> Dict[str, str]:
    """A CA and a ``localhost`` certificate, written as PEM files."""
    try:
        import trustme
    except ImportError:
        raise SystemExit("the TLS benchmark needs trustme: pip install -e '.[test]'") from None
    ca = trustme.CA()
    cert = ca.issue_cert("localhost", "127.0.0.1")
    paths = {"cafile": directory / "ca.pem", "certfile": directory / "cert.pem",
             "keyfile": directory / "key.pem"}
    ca.cert_pem.write_to_path(str(paths["cafile"]))
    paths["certfile"].write_bytes(b"".join(p.bytes() for p in cert.cert_chain_pems))
    cert.private_key_pem.write_to_path(str(paths["keyfile"]))
    return {k: str(v) for k, v in paths.items()}


def tls_impls() -> List[Impl]:
    """pollchat on each backend here, asyncio, and uvloop if installed."""
    from pollchat.backends import available_backends

    impls = [Impl(f"pollchat-{name}", ("--impl", "pollchat"), {"POLLCHAT_BACKEND": name})
             for name in available_backends()]
    impls.append(Impl("asyncio", ("--loop", "asyncio")))
    try:
        import uvloop  # noqa: F401
        missing = ""
    except ImportError:
        missing = "uvloop is not installed (pip install uvloop)"
    impls.append(Impl("uvloop", ("--loop", "uvloop"), skip=missing))
    return impls


def run_point(impl: Impl, point: Point, certs: Dict[str, str], args: argparse.Namespace,
              workdir: Path) -> Dict[str, Any]:
    """One server, one client run: the client's result plus server CPU."""
    params = point.params
    if impl.key.endswith("-select") and params.get("idle", 0) + 200 > FD_SETSIZE:
        return {"ok": False, "error": "select() cannot watch fds >= FD_SETSIZE (1024)"}
    log = workdir / f"{impl.key}-{point.key}"
    argv = [sys.executable, TLS_SERVER, *impl.flags, "--certfile", certs["certfile"],
            "--keyfile", certs["keyfile"], "--max-seconds", str(args.timeout * 3)]
    server = Server(argv, env=dict(impl.env), log=log.with_suffix(".server.log"))
    try:
        server.start()
        client = [sys.executable, TLS_CLIENT, "--port", str(server.port),
                  "--cafile", certs["cafile"], "--conns", str(params.get("conns", 1)),
                  "--idle", str(params.get("idle", 0)), "--warmup", str(args.warmup),
                  "--duration", str(args.duration), "--timeout", str(args.timeout), "--sync"]
        run = run_client(client, server, log.with_suffix(".client.log"),
                         timeout=args.timeout * 3)
    except ProcessFailed as exc:
        return {"ok": False, "error": str(exc)}
    finally:
        server.stop()
    result = dict(run.result)
    start, end = run.samples.get("start"), run.samples.get("end")
    if result.get("ok") and start and end and end.cpu > start.cpu:
        result["server_cpu_s"] = end.cpu - start.cpu
        result["per_server_cpu_s"] = result["round_trips"] / (end.cpu - start.cpu)
        result["server_rss"] = end.rss
    return result


def summarize(results: Dict[str, Dict[str, List[Dict[str, Any]]]]) -> List[str]:
    """Medians per implementation and point, and the two targets."""

    def median(runs: List[Dict[str, Any]], key: str) -> Optional[float]:
        values = [r[key] for r in runs if r.get("ok") and key in r]
        return statistics.median(values) if values else None

    lines = ["| workload | point | implementation | round trips / server CPU-s | "
             "round trips / s |", "|---|---|---|---|---|"]
    medians: Dict[tuple, Optional[float]] = {}
    for workload in TLS_WORKLOADS:
        for point_key, by_impl in results.get(workload.key, {}).items():
            for impl_key, runs in by_impl.items():
                per_cpu, rate = median(runs, "per_server_cpu_s"), median(runs, "rate")
                medians[workload.key, point_key, impl_key] = per_cpu
                why = "; ".join(r.get("error", "?") for r in runs)[:120]
                shown = (f"{per_cpu:,.0f} | {rate:,.0f}" if per_cpu and rate else
                         f"{'' if why.startswith('skipped') else 'failed: '}{why} |")
                lines.append(f"| {workload.key} | {point_key} | {impl_key} | {shown} |")
    lines.append("")
    for impl_key in sorted({k[2] for k in medians if k[2].startswith("pollchat")}):
        ours = medians.get(("tls-echo", "tls100", impl_key))
        theirs = medians.get(("tls-echo", "tls100", "asyncio"))
        if ours and theirs:
            verdict = "PASS" if ours >= theirs else "MISS"
            lines.append(f"- {verdict} tls-echo, {impl_key} vs asyncio: {ours / theirs:.2f} "
                         "(need >= 1)")
        idle = [v for (w, p, i), v in medians.items() if w == "tls-idle" and i == impl_key]
        if len(idle) == 2 and all(idle):
            ratio = idle[1] / idle[0]
            verdict = "PASS" if ratio >= 0.9 else "MISS"
            if impl_key.endswith(("-poll", "-select")):
                verdict = "INFO (poll(2)/select(2) scan every fd in the kernel)"
            lines.append(f"- {verdict} tls-idle, {impl_key}: busy rate with idle connections "
                         f"/ without: {ratio:.2f} (need >= 0.9)")
    return lines


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.tls_bench",
                                     description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small numbers, one run each")
    parser.add_argument("--repeats", type=int, help="runs per figure (median)")
    parser.add_argument("--impls", help="comma-separated implementation names or prefixes")
    parser.add_argument("--only", help="one workload: tls-echo or tls-idle")
    parser.add_argument("--out", type=Path, help="output directory")
    args = parser.parse_args(argv)
    args.warmup, args.duration = (0.2, 0.5) if args.quick else (0.5, 2.0)
    args.timeout = 60.0 if args.quick else 180.0
    repeats = args.repeats or (1 if args.quick else 3)
    out = args.out or HERE / "results" / ("tls-quick" if args.quick else "tls")
    out.mkdir(parents=True, exist_ok=True)
    wanted = args.impls.split(",") if args.impls else None
    impls = [i for i in tls_impls()
             if not wanted or any(i.key.startswith(w) for w in wanted)]
    results: Dict[str, Dict[str, Dict[str, List[Dict[str, Any]]]]] = {}
    with tempfile.TemporaryDirectory(prefix="pollchat-tls-bench-") as tmp:
        certs = make_certificates(Path(tmp))
        for workload in TLS_WORKLOADS:
            if args.only and workload.key != args.only:
                continue
            for point in workload.quick if args.quick else workload.full:
                for impl in impls:
                    runs = results.setdefault(workload.key, {}).setdefault(
                        point.key, {}).setdefault(impl.key, [])
                    for _ in range(repeats):
                        if impl.skip:
                            runs.append({"ok": False, "error": f"skipped: {impl.skip}"})
                            break
                        runs.append(run_point(impl, point, certs, args, Path(tmp)))
                        print(f"{workload.key} {point.key} {impl.key}: "
                              f"{runs[-1].get('per_server_cpu_s', runs[-1].get('error'))}",
                              file=sys.stderr)
    (out / "results.json").write_text(json.dumps(results, indent=1))
    report = summarize(results)
    (out / "results.md").write_text("\n".join(report) + "\n")
    print("\n".join(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
