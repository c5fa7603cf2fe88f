"""Tests of the benchmark suite's own parts (fast; no timing asserted):
``pytest bench/test_bench.py``.

What they guard: the load generators (C and Python) accept exactly the
expected replies and count work right; the scripts agree with the servers'
protocol logic; the benchmark servers frame the kv and http protocols
correctly and stop on their announced quit message; server CPU per unit
of work and the targets are computed as documented; a git revision builds
into an importable pollchat tree.
"""

from __future__ import annotations

import importlib
import json
import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence, Tuple

import pytest

from bench import instructions, loadgen, scripts, targets, trees
from bench.impls import Context, find_python, probe_pollchat, tree_env
from bench.model import ResultSet
from bench.procs import ClientRun, Sample, Server, task_cpu_seconds
from bench.runner import derive_metrics, per_op
from bench.workloads import QUICK, WORKLOADS, Point

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH / "servers"))
_common = importlib.import_module("_common")  # the servers' shared module (a script's sibling)

# -- scripts against the servers' protocol logic ---------------------------------


def serve_kv_reference(request_stream: bytes) -> bytes:
    """Replies of the servers' kv logic (_common) to a byte stream."""
    store, out, pos = _common.KVStore(), [], 0
    while pos < len(request_stream):
        end = request_stream.index(b"\r\n", pos)
        command, key, size = _common.kv_header(request_stream[pos:end])
        pos = end + 2
        if command == b"GET":
            out.append(store.get(key))
        else:
            assert request_stream[pos + size:pos + size + 2] == b"\r\n"
            out.append(store.set(key, request_stream[pos:pos + size]))
            pos += size + 2
    return b"".join(out)


@pytest.mark.parametrize("mix", ["get-set", "set"])
@pytest.mark.parametrize("depth", [1, 16])
def test_kv_script_expects_what_the_servers_answer(mix: str, depth: int) -> None:
    script = scripts.kv(mix, depth)
    assert sum(e.ops for e in script.cycle) == 16
    assert all(e.ops == depth for e in script.cycle)
    requests = b"".join(e.request for e in script.cycle)
    assert serve_kv_reference(requests) == b"".join(e.reply for e in script.cycle)
    assert serve_kv_reference(script.hello.request) == script.hello.reply


def test_http_script_expects_the_servers_response() -> None:
    script = scripts.http_keepalive()
    head = script.cycle[0].request[:-4]
    assert _common.http_reply(head) == (script.cycle[0].reply, False, False)


def test_script_file_round_trip_and_truncation(tmp_path: Path) -> None:
    path = tmp_path / "kv.script"
    script = scripts.kv("get-set", 16)
    script.write(path)
    assert scripts.Script.read(path) == script
    path.write_bytes(path.read_bytes()[:-3])
    with pytest.raises(ValueError, match="truncated"):
        scripts.Script.read(path)


def test_kv_depth_must_divide_the_round() -> None:
    with pytest.raises(ValueError, match="divide"):
        scripts.kv("get-set", 3)


# -- the load generators -----------------------------------------------------------


class StreamServer:
    """A threaded TCP server whose connections answer every chunk with
    ``transform(chunk)`` (identity: a byte-stream echo)."""

    def __init__(self, transform: Callable[[bytes], bytes] = bytes) -> None:
        self.transform = transform
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.stopping = False
        threading.Thread(target=self.accept, daemon=True).start()

    def accept(self) -> None:
        self.listener.settimeout(0.2)
        while not self.stopping:
            try:
                conn, _ = self.listener.accept()
            except (socket.timeout, OSError):
                continue
            threading.Thread(target=self.serve, args=(conn,), daemon=True).start()

    def serve(self, conn: socket.socket) -> None:
        conn.settimeout(30)
        with conn:
            try:
                while not self.stopping:
                    data = conn.recv(1 << 16)
                    if not data:
                        return
                    conn.sendall(self.transform(data))
            except OSError:
                return

    def close(self) -> None:
        self.stopping = True
        self.listener.close()


@pytest.fixture(scope="module")
def c_loadgen(tmp_path_factory: pytest.TempPathFactory) -> Optional[Path]:
    binary, why = loadgen.build(tmp_path_factory.mktemp("loadgen"))
    return binary


@pytest.fixture(params=["c", "python"])
def client(request: pytest.FixtureRequest, c_loadgen: Optional[Path]) -> List[str]:
    if request.param == "c":
        if c_loadgen is None:
            pytest.skip("no C compiler here: loadgen.c cannot be built")
        return [str(c_loadgen), "run"]
    return [sys.executable, str(BENCH / "clients.py"), "run"]


@pytest.fixture
def echo_server() -> Iterator[StreamServer]:
    server = StreamServer()
    yield server
    server.close()


def play(client: List[str], script: scripts.Script, port: int, tmp_path: Path,
         *options: str) -> Dict[str, Any]:
    path = tmp_path / "test.script"
    script.write(path)
    done = subprocess.run([*client, "--script", str(path), "--port", str(port),
                           "--timeout", "20", *options], capture_output=True, text=True,
                          timeout=90, check=False)
    lines = [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]
    assert lines and lines[-1]["event"] == "result", done.stdout + done.stderr
    result: Dict[str, Any] = lines[-1]
    return result


@pytest.mark.timeout(120)
def test_client_counts_an_exact_number_of_ops(client: List[str], echo_server: StreamServer,
                                             tmp_path: Path) -> None:
    result = play(client, scripts.pingpong(16), echo_server.port, tmp_path,
                  "--conns", "3", "--ops", "100")
    assert result["ok"], result
    assert (result["ops"], result["round_trips"]) == (100, 100)


@pytest.mark.timeout(120)
def test_client_counts_pipelined_requests(client: List[str], echo_server: StreamServer,
                                          tmp_path: Path) -> None:
    # An echo server returns each request as its "reply": a script whose
    # replies are its requests plays against it.
    kv = scripts.kv("set", 16)
    script = scripts.Script(scripts.LINE_HELLO, tuple(
        scripts.Exchange(e.request, e.request, e.ops) for e in kv.cycle))
    result = play(client, script, echo_server.port, tmp_path, "--conns", "2", "--ops", "100")
    assert result["ok"], result
    assert result["ops"] == result["round_trips"] * 16
    assert 100 <= result["ops"] < 100 + 2 * 16


@pytest.mark.timeout(120)
def test_client_writes_and_reads_a_request_bigger_than_the_socket_buffers(
        client: List[str], echo_server: StreamServer, tmp_path: Path) -> None:
    big = b"y" * (4 << 20)
    script = scripts.Script(scripts.LINE_HELLO, (scripts.Exchange(big, big),))
    result = play(client, script, echo_server.port, tmp_path, "--conns", "2", "--ops", "4")
    assert result["ok"], result
    assert result["round_trips"] == 4


@pytest.mark.timeout(120)
def test_client_fails_on_a_wrong_reply(client: List[str], tmp_path: Path) -> None:
    server = StreamServer(lambda data: data.replace(b"x", b"y"))
    try:
        result = play(client, scripts.pingpong(16), server.port, tmp_path,
                      "--conns", "1", "--duration", "0.2", "--warmup", "0")
    finally:
        server.close()
    assert result["ok"] is False
    assert "unexpected reply" in str(result["error"])


# -- the benchmark servers -------------------------------------------------------------


LEGACY = str(BENCH / "servers" / "legacy_server.py")
Command = Tuple[List[str], Dict[str, str]]


@pytest.fixture(scope="module")
def current_tree(tmp_path_factory: pytest.TempPathFactory) -> trees.Tree:
    return trees.current(tmp_path_factory.mktemp("trees"))


@pytest.fixture(params=["asyncio", "pollchat", "stdlib"])
def server_command(request: pytest.FixtureRequest, current_tree: trees.Tree) -> Command:
    """How to start each kind of benchmark server (the bench's own way)."""
    if request.param == "asyncio":
        return [sys.executable, str(BENCH / "servers" / "asyncio_server.py")], {}
    if request.param == "pollchat":
        return [sys.executable, LEGACY, "--impl", "pollchat"], tree_env(current_tree)
    python311 = find_python("3.11")
    if python311 is None:
        pytest.skip("no Python 3.11 here, and CPython's asyncore is gone in 3.12")
    return [python311, LEGACY, "--impl", "stdlib"], {}


def start(command: Command, mode: str, tmp_path: Path) -> Server:
    server = Server([*command[0], "--mode", mode, "--max-seconds", "60"], command[1],
                    tmp_path / f"{mode}.log")
    server.start()
    return server


def exchange(port: int, chunks: List[bytes], size: int = 0) -> bytes:
    """Send ``chunks`` one by one; read ``size`` bytes (0: until EOF)."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        for chunk in chunks:
            sock.sendall(chunk)
            time.sleep(0.002)  # separate reads: framing across reads is exercised
        got = b""
        while not size or len(got) < size:
            data = sock.recv(4096)
            if not data:
                break
            got += data
        return got


@pytest.mark.timeout(120)
def test_kv_server_frames_counted_payloads_across_reads(server_command: Command,
                                                        tmp_path: Path) -> None:
    server = start(server_command, "kv", tmp_path)
    try:
        request = b"SET k 10\r\n0123456789\r\nGET k\r\nSET j 0\r\n\r\nGET j\r\n"
        replies = b"+OK\r\n$10\r\n0123456789\r\n+OK\r\n$0\r\n\r\n"
        assert exchange(server.port, [bytes([b]) for b in request], len(replies)) == replies
        assert exchange(server.port, [request], len(replies)) == replies
        assert exchange(server.port, [b"GET nothing\r\n"], 5) == b"$-1\r\n"
        assert exchange(server.port, [b"SET k 3\r\nabcXY"]) == \
            b"-ERR payload not followed by CRLF\r\n"
    finally:
        status = server.stop()
    assert status == 0, server.error()  # the announced quit message stopped it


@pytest.mark.timeout(120)
def test_http_server_keeps_the_connection_alive(server_command: Command,
                                                tmp_path: Path) -> None:
    server = start(server_command, "http", tmp_path)
    try:
        request = scripts.HTTP_REQUEST
        with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
            for _ in range(3):
                sock.sendall(request)
                got = b""
                while len(got) < len(scripts.HTTP_REPLY):
                    got += sock.recv(4096)
                assert got == scripts.HTTP_REPLY
    finally:
        status = server.stop()
    assert status == 0, server.error()


# -- measurements, targets, trees ------------------------------------------------------------


def test_server_cpu_per_op() -> None:
    assert per_op(0.5, 100_000) == {"server_cpu_seconds": 0.5, "server_us_per_op": 5.0,
                                    "ops_per_cpu_s": 200_000.0}
    assert per_op(0.5, 0) == {}


def test_derive_metrics_uses_the_window_samples() -> None:
    start = Sample(at=10.0, cpu=3.0, rss=1000, cpus_busy=0, cpus_total=0)
    end = Sample(at=11.0, cpu=3.9, rss=1000, cpus_busy=0, cpus_total=0)
    run = ClientRun({"ok": True, "ops": 90_000, "seconds": 1.0, "cpu_seconds": 0.5},
                    {"start": start, "end": end})
    metrics = derive_metrics(run, None, Point("p", "p", {"conns": 1}), 2)
    assert metrics["server_us_per_op"] == pytest.approx(10.0)
    assert metrics["ops_per_cpu_s"] == pytest.approx(100_000)
    assert metrics["server_cpu"] == pytest.approx(90.0)
    assert metrics["client_cpu"] == pytest.approx(50.0)
    assert "server_user_us_per_op" not in metrics  # no tick moved: no split


def test_derive_metrics_splits_user_and_kernel_cpu() -> None:
    start = Sample(at=10.0, cpu=3.0, rss=1000, cpus_busy=0, cpus_total=0,
                   cpu_user=2.0, cpu_system=1.0)
    end = Sample(at=11.0, cpu=3.9, rss=1000, cpus_busy=0, cpus_total=0,
                 cpu_user=2.3, cpu_system=1.6)
    run = ClientRun({"ok": True, "ops": 100_000, "seconds": 1.0}, {"start": start, "end": end})
    metrics = derive_metrics(run, None, Point("p", "p", {"conns": 1}), 2)
    assert metrics["server_user_us_per_op"] == pytest.approx(3.0)
    assert metrics["server_sys_us_per_op"] == pytest.approx(6.0)


def test_exact_cpu_clock_matches_the_kernel_ticks() -> None:
    exact = task_cpu_seconds(os.getpid())
    if exact is None:
        pytest.skip("this kernel offers no /proc/PID/task/*/schedstat")
    t0 = time.process_time()
    before = task_cpu_seconds(os.getpid()) or 0.0
    while time.process_time() - t0 < 0.2:
        pass
    spent = (task_cpu_seconds(os.getpid()) or 0.0) - before
    assert spent == pytest.approx(time.process_time() - t0, abs=0.03)


def document(values: Dict[str, Dict[str, Dict[str, float]]],
             extra_impls: Sequence[Dict[str, object]] = ()) -> ResultSet:
    """A results document: ``values[workload][impl][metric]`` at each point."""
    impls = [{"key": "pollchat-epoll", "family": "pollchat", "skip": "", "version": "3.11.7",
              "tree": "current", "backend": "epoll"},
             {"key": "stdlib-select", "family": "stdlib", "skip": "", "version": "3.11.7"},
             {"key": "uvloop", "family": "asyncio", "skip": "", "version": "3.11.7"},
             *extra_impls]
    workloads = [w.to_json(QUICK) for w in WORKLOADS if w.key in values]
    cells = [{"workload": w["key"], "point": p["key"], "impl": impl, "status": "ok",
              "median": metrics, "error": ""}
             for w in workloads for p in w["points"]
             for impl, metrics in values[w["key"]].items()]
    return ResultSet({"impls": impls, "workloads": workloads, "cells": cells})


def outcome(rs: ResultSet, key: str) -> Dict[str, Any]:
    return targets.check(rs, next(t for t in targets.TARGETS if t.key == key))


def test_targets_compare_the_metric_they_name() -> None:
    rs = document({"pipeline": {"pollchat-epoll": {"ops_per_cpu_s": 160.0, "rate": 1.0},
                                "stdlib-select": {"ops_per_cpu_s": 100.0, "rate": 9.0},
                                "uvloop": {"ops_per_cpu_s": 170.0, "rate": 1.0}}})
    assert outcome(rs, "pipeline-stdlib")["status"] == "PASS"  # 1.6 >= 1.5, rate ignored
    assert outcome(rs, "pipeline-uvloop")["status"] == "MISS"  # 160 < 170


def test_cpu_per_round_trip_target_wants_less() -> None:
    rs = document({"concurrency": {"pollchat-epoll": {"server_us_per_op": 8.0},
                                   "stdlib-select": {"server_us_per_op": 9.4}}})
    assert outcome(rs, "pingpong-cpu-311")["status"] == "PASS"  # 0.85 <= 0.9
    missing = outcome(rs, "pingpong-cpu-313")
    assert missing["status"] == "N/A" and "--python313" in missing["detail"]
    rs = document({"concurrency": {"pollchat-epoll": {"server_us_per_op": 8.0},
                                   "pollchat-epoll-py313": {"server_us_per_op": 9.0},
                                   "stdlib-select": {"server_us_per_op": 9.4}}},
                  [{"key": "pollchat-epoll-py313", "family": "pollchat", "skip": "",
                    "version": "3.13.0", "tree": "current", "backend": "epoll"}])
    assert outcome(rs, "pingpong-cpu-313")["status"] == "MISS"  # 0.96 > 0.9


def test_memory_target_is_an_absolute_limit() -> None:
    for per_conn, status in ((1299.0, "PASS"), (1301.0, "MISS")):
        rs = document({"memory": {"pollchat-epoll": {"per_conn": per_conn}}})
        assert outcome(rs, "memory-1300")["status"] == status


@pytest.mark.timeout(120)
def test_a_revision_builds_into_an_importable_tree(tmp_path: Path) -> None:
    tree = trees.revision("HEAD", tmp_path)
    assert (tree.path / "pollchat" / "backends" / "__init__.py").is_file()
    backends, why = probe_pollchat(sys.executable, tree)
    assert why == "" and "select" in backends
    with pytest.raises(trees.TreeError, match="not a commit"):
        trees.revision("no-such-revision-here", tmp_path)
    assert Context(trees=[tree]).tree("base") is tree


def test_instructions_reads_the_callgrind_total() -> None:
    text = ("# callgrind format\nversion: 1\nevents: Ir\nfl=x\n0 5\n"
            "summary: 123456\ntotals: 123456\n")
    assert instructions.read_total(text) == 123456
    simulated = "events: Ir D1mr Bim\nfl=x\nsummary: 1000 9 17\n"
    assert instructions.read_totals(simulated) == {"Ir": 1000, "D1mr": 9, "Bim": 17}
    with pytest.raises(ValueError, match="not a callgrind output"):
        instructions.read_total("events: Ir\n0 5\n")
    assert instructions.find_workload("keepalive").server_mode == "http"
    with pytest.raises(ValueError, match="unknown workload"):
        instructions.find_workload("nope")
