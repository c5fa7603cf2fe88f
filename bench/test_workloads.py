"""Tests of the workloads of issues 13-15 in the harness (fast; no timing
asserted): ``pytest bench/test_workloads.py``.

What they guard: the mail script expects exactly what both smtpd servers
answer, and the XQUIT stops them; the TLS server echoes over TLS on
pollchat and on asyncio and stops cleanly on SIGTERM, as its INFO line
says; a ``pollchat run --workers`` implementation is a master plus its
workers, whose CPU is summed, whose every worker is waited for, and which
SIGTERM stops whole; which implementations run which workload; the tls
client kind's command line; the new targets; and the tree assembly that
reads ``src/pollchat/backends`` as the symlink it is.
"""

from __future__ import annotations

import os
import signal
import socket
import ssl
import sys
import time
from pathlib import Path
from typing import Dict, List, Tuple

import psutil
import pytest

from bench import smtp_script, trees
from bench.impls import IMPLS, Context, Impl, find_python, resolve, tree_env
from bench.procs import Server
from bench.runner import TLS_CLIENT_PY, Tools
from bench.test_bench import document, outcome
from bench.workloads import QUICK, WORKLOADS, Workload

BENCH = Path(__file__).resolve().parent
SERVERS = BENCH / "servers"
Command = Tuple[List[str], Dict[str, str]]


def workload(key: str) -> Workload:
    return next(w for w in WORKLOADS if w.key == key)


@pytest.fixture(scope="module")
def current_tree(tmp_path_factory: pytest.TempPathFactory) -> trees.Tree:
    return trees.current(tmp_path_factory.mktemp("trees"))


def recv_exactly(sock: socket.socket, size: int) -> bytes:
    got = b""
    while len(got) < size:
        data = sock.recv(size - len(got))
        assert data, f"connection closed after {got!r}"
        got += data
    return got


# -- mail ------------------------------------------------------------------------------


@pytest.fixture(params=["pollchat", "stdlib"])
def smtp_command(request: pytest.FixtureRequest,
                 current_tree: trees.Tree) -> Command:
    if request.param == "pollchat":
        return [sys.executable, str(SERVERS / "smtp_server.py"), "--impl", "pollchat"], \
            tree_env(current_tree)
    python311 = find_python("3.11")
    if python311 is None:
        pytest.skip("no Python 3.11 here, and CPython's smtpd is gone in 3.12")
    return [python311, str(SERVERS / "smtp_server.py"), "--impl", "stdlib"], {}


@pytest.mark.timeout(120)
def test_the_mail_script_gets_exactly_the_replies_it_expects(
        smtp_command: Command, tmp_path: Path) -> None:
    server = Server([*smtp_command[0], "--mode", "smtp", "--max-seconds", "60"],
                    smtp_command[1], tmp_path / "smtp.log")
    server.start()
    try:
        script = smtp_script.smtp(1024)
        with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
            for exchange in (script.hello, *script.cycle, *script.cycle):
                sock.sendall(exchange.request)
                assert recv_exactly(sock, len(exchange.reply)) == exchange.reply
    finally:
        status = server.stop()
    assert status == 0, server.error()  # XQUIT, the announced quit message


# -- TLS ----------------------------------------------------------------------------------


@pytest.fixture(params=["pollchat", "asyncio"])
def tls_command(request: pytest.FixtureRequest,
                current_tree: trees.Tree) -> Command:
    pytest.importorskip("trustme", reason="the TLS server makes its certificate with trustme")
    program = [sys.executable, str(SERVERS / "tls_server.py")]
    if request.param == "pollchat":
        return [*program, "--impl", "pollchat"], tree_env(current_tree)
    return [*program, "--loop", "asyncio"], {}


@pytest.mark.timeout(120)
def test_the_tls_server_echoes_and_stops_on_sigterm(tls_command: Command,
                                                    tmp_path: Path) -> None:
    server = Server([*tls_command[0], "--mode", "echo", "--max-seconds", "60"],
                    tls_command[1], tmp_path / "tls.log")
    server.start()
    try:
        assert server.info["stop"] == "SIGTERM"
        context = ssl.create_default_context()
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
        raw = socket.create_connection(("127.0.0.1", server.port), timeout=10)
        with context.wrap_socket(raw, server_hostname="localhost") as sock:
            for line in (b"one\n", b"two\n"):
                sock.sendall(line)
                assert recv_exactly(sock, len(line)) == line
    finally:
        status = server.stop()
    assert status == 0, server.error()


def test_the_tls_client_kind_runs_tls_client_with_the_timed_options(tmp_path: Path) -> None:
    tools = Tools(loadgen=None, python_client=(sys.executable, "clients.py"), loadgen_note="",
                  server_cpu=None, client_cpu=None, logs=tmp_path, scripts=tmp_path)
    tls_idle = workload("tls_idle")
    point = tls_idle.quick[-1]
    argv = tools.client_argv(tls_idle, point, QUICK, 4321)
    assert argv[:2] == [sys.executable, str(TLS_CLIENT_PY)]
    options = dict(zip(argv[2::2], argv[3::2]))
    assert options["--port"] == "4321"
    assert options["--idle"] == str(point.params["idle"])
    assert options["--duration"] == str(QUICK.duration)
    assert "--script" not in argv and argv[-1] == "--sync"


# -- workers ---------------------------------------------------------------------------------


@pytest.mark.timeout(120)
def test_a_workers_master_is_measured_whole_and_stopped_by_sigterm(
        current_tree: trees.Tree, tmp_path: Path) -> None:
    spec = next(s for s in IMPLS if s.key == "pollchat-workers2")
    impl = resolve(spec, Context(trees=[current_tree]))
    assert impl.skip == "" and impl.workers == 2
    argv = impl.argv(str(SERVERS / "legacy_server.py"), "--mode", "echo", "--max-seconds", "60")
    assert argv[1:7] == ["-m", "pollchat", "run", "--workers", "2", "-q"]
    server = Server(argv, impl.env, tmp_path / "workers.log", stop_signal=signal.SIGTERM,
                    announcements=2)
    server.start()
    try:
        assert server.log.read_text().count("PORT ") >= 2  # every worker was waited for
        assert server.ps is not None
        workers = server.ps.children(recursive=True)
        assert len(workers) == 2
        before = server.sample()
        deadline = time.monotonic() + 10
        with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
            while time.monotonic() < deadline:  # make the workers use some CPU
                sock.sendall(b"x" * 15 + b"\n")
                recv_exactly(sock, 16)
                after = server.sample()
                assert before is not None and after is not None
                if after.cpu - before.cpu > 0.05:
                    break
        worker_cpu = sum(w.cpu_times().user + w.cpu_times().system for w in workers)
        assert after is not None and after.cpu >= worker_cpu * 0.9  # workers' CPU included
    finally:
        status = server.stop()
    assert status == 0, server.error()  # a graceful stop, not a kill
    assert not [w for w in workers if w.is_running() and w.status() != psutil.STATUS_ZOMBIE]


def test_server_kill_ends_its_children_too(tmp_path: Path) -> None:
    code = ("import os, subprocess, sys, time\n"
            "child = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)'])\n"
            "print('PORT 1', flush=True)\n"
            "time.sleep(60)\n")
    server = Server([sys.executable, "-c", code], {}, tmp_path / "tree.log")
    server.start()
    assert server.ps is not None
    deadline = time.monotonic() + 10
    while not server.ps.children() and time.monotonic() < deadline:
        time.sleep(0.02)
    [child] = server.ps.children()
    server.kill()
    child.wait(10)
    assert not child.is_running() or child.status() == psutil.STATUS_ZOMBIE


# -- which implementation runs what -------------------------------------------------------


def impl(key: str, family: str, api: str, workloads: Tuple[str, ...] = (),
         workers: int = 0) -> Impl:
    return Impl(key, family, api, sys.executable, workloads=workloads or None,
                workers=workers)


def test_each_new_workload_runs_on_the_implementations_it_is_for() -> None:
    epoll = impl("pollchat-epoll", "pollchat", "legacy")
    stdlib = impl("stdlib-select", "stdlib", "legacy")
    asyncio = impl("asyncio", "asyncio", "asyncio")
    uvloop = impl("uvloop", "asyncio", "asyncio")
    workers = impl("pollchat-workers2", "pollchat", "legacy", ("workers",), 2)
    everyone = (epoll, stdlib, asyncio, uvloop, workers)

    def runs(key: str) -> List[str]:
        w = workload(key)
        return [i.key for i in everyone if w.applies(i, w.quick[0])]

    assert runs("smtp") == ["pollchat-epoll", "stdlib-select"]
    assert runs("tls_echo") == runs("tls_idle") == ["pollchat-epoll", "asyncio", "uvloop"]
    assert runs("workers") == ["pollchat-workers2"]
    assert runs("concurrency") == ["pollchat-epoll", "stdlib-select", "asyncio", "uvloop"]


def test_the_new_targets() -> None:
    rs = document({"smtp": {"pollchat-epoll": {"ops_per_cpu_s": 99.0, "rate": 500.0},
                            "stdlib-select": {"ops_per_cpu_s": 100.0, "rate": 1.0}}})
    assert outcome(rs, "smtp-stdlib")["status"] == "MISS"  # per CPU-second, not per second
    asyncio: Dict[str, object] = {"key": "asyncio", "family": "asyncio", "skip": "",
                                  "version": "3.11.7"}
    rs = document({"tls_echo": {"pollchat-epoll": {"ops_per_cpu_s": 101.0},
                                "asyncio": {"ops_per_cpu_s": 100.0}}}, [asyncio])
    assert outcome(rs, "tls-echo-asyncio")["status"] == "PASS"
    workers: List[Dict[str, object]] = [
        {"key": f"pollchat-workers{n}", "family": "pollchat", "skip": "", "version": "3.11.7",
         "tree": "current", "workers": n} for n in (1, 2)]
    rs = document({"workers": {"pollchat-workers1": {"rate": 100.0, "ops_per_cpu_s": 100.0},
                               "pollchat-workers2": {"rate": 150.0, "ops_per_cpu_s": 79.0}}},
                  workers)
    throughput = outcome(rs, "workers-throughput")
    assert throughput["status"] == "INFO" and throughput["ratio"] == pytest.approx(1.5)
    assert outcome(rs, "workers-cpu")["status"] == "MISS"  # 0.79 < 0.8
    # "pollchat" in a target is never a workers master, even when listed first.
    assert rs.pollchat_key() == "pollchat-epoll"


# -- trees ------------------------------------------------------------------------------------


def test_a_tree_with_the_backends_symlink_gets_the_pollers_once(tmp_path: Path) -> None:
    """src/pollchat/backends is a symlink to ../backends (for mypy): the
    pollers are copied from src/backends, once, as a real directory."""
    src = tmp_path / "src"
    (src / "pollchat").mkdir(parents=True)
    (src / "pollchat" / "__init__.py").write_text("")
    (src / "backends").mkdir()
    (src / "backends" / "__init__.py").write_text("KIND = 'pollers'\n")
    os.symlink("../backends", src / "pollchat" / "backends")
    trees.assemble(src, tmp_path / "tree")
    copied = tmp_path / "tree" / "pollchat" / "backends"
    assert not copied.is_symlink()
    assert (copied / "__init__.py").read_text() == "KIND = 'pollers'\n"
