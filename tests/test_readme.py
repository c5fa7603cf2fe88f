"""README's code runs as written: the CI runs exactly README's test command,
every Python block compiles, and the examples that serve (the echo server,
the Loop snippet, CPython 3.11's smtpd under ``pollchat run``) serve, each
in a subprocess with bounded waits.  Only the port is changed, so that a
test never depends on a fixed one being free."""

import ast
import os
import re
import shutil
import socket
import subprocess
import sys
import time

import pytest
from helpers import PROCESS_WAIT, Proc, free_port, smtpd_roundtrip

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def read(name):
    with open(os.path.join(ROOT, name), encoding="utf-8") as f:
        return f.read()


README = read("README.md")


def code_block(section, language):
    """The first ``language`` code block after the heading ``section``."""
    match = re.search(rf"^#+ {re.escape(section)}\n.*?^```{language}\n(.*?)^```", README,
                      re.S | re.M)
    assert match, f"README has no {language} block under {section!r}"
    return match.group(1)


def with_port(code, old, new):
    """``code`` with the port ``old`` replaced by ``new``; it must be there."""
    assert str(old) in code, f"the example no longer uses port {old}"
    return code.replace(str(old), str(new))


def connect(port, proc):
    """A connection to the example serving on ``port``: retried until it
    listens, failing if the example exits first or takes too long."""
    deadline = time.monotonic() + PROCESS_WAIT
    while time.monotonic() < deadline and proc.popen.poll() is None:
        try:
            return socket.create_connection(("127.0.0.1", port), timeout=PROCESS_WAIT)
        except ConnectionRefusedError:
            time.sleep(0.05)
    status, out, err = proc.finish()
    pytest.fail(f"the example did not listen on {port} (status {status}):\n{out}\n{err}")


def echo_round_trip(sock, lines):
    sock.sendall(b"".join(line + b"\n" for line in lines))
    got = b""
    while got.count(b"\n") < len(lines):
        chunk = sock.recv(100)
        assert chunk, f"connection closed; got {got!r}"
        got += chunk
    assert got == b"".join(line + b"\n" for line in lines)


def test_ci_runs_exactly_the_readme_test_command():
    ci = read(".ci/run")
    block = re.search(r"# -- begin README test command --\n(.*?)\n# -- end", ci, re.S)
    assert block, ".ci/run lost its README test command markers"
    assert block.group(1).strip() in README


def test_every_python_block_compiles():
    blocks = re.findall(r"^```python\n(.*?)^```", README, re.S | re.M)
    assert len(blocks) >= 2
    for block in blocks:
        ast.parse(block)  # a SyntaxError names the line


@pytest.mark.timeout(60)
def test_readme_echo_example_serves(tmp_path):
    port = free_port()
    script = tmp_path / "echo.py"
    script.write_text(with_port(code_block("An echo server in 20 lines", "python"), 7001, port))
    proc = Proc([sys.executable, str(script)])
    try:
        with connect(port, proc) as client:
            echo_round_trip(client, [b"hello", b"world"])
    finally:
        proc.kill()


@pytest.mark.timeout(60)
def test_readme_loop_snippet_serves_and_runs_a_thread_callback(tmp_path):
    port = free_port()
    script = tmp_path / "loop.py"
    script.write_text(with_port(code_block("The loop, timers and threads", "python"), 7002,
                                port))
    proc = Proc([sys.executable, "-u", str(script)])
    try:
        with connect(port, proc) as client:
            echo_round_trip(client, [b"on the loop's own map"])
        proc.wait_for(r"^hello from a thread$")
    finally:
        proc.kill()
    assert "".join(proc.err) == ""


@pytest.mark.timeout(60)
def test_readme_asyncio_migration_example_serves_both_kinds_at_once(tmp_path):
    legacy_port, asyncio_port = free_port(), free_port()
    code = code_block("Migrating to asyncio one channel at a time", "python")
    script = tmp_path / "migrating.py"
    script.write_text(with_port(with_port(code, 7003, legacy_port), 7004, asyncio_port))
    proc = Proc([sys.executable, str(script)])
    try:
        with connect(legacy_port, proc) as legacy, connect(asyncio_port, proc) as migrated:
            legacy.sendall(b"later\n")  # answered after a coroutine's sleep...
            migrated.sendall(b"abc\n")  # ...while the asyncio server answers
            assert read_line(migrated) == b"ABC\n"
            assert read_line(legacy) == b"done\n"
            echo_round_trip(legacy, [b"hello", b"world"])
    finally:
        proc.kill()


def read_line(sock):
    got = b""
    while not got.endswith(b"\n"):
        chunk = sock.recv(100)
        assert chunk, f"connection closed; got {got!r}"
        got += chunk
    return got


@pytest.mark.timeout(120)
def test_readme_smtpd_example_runs():
    if shutil.which("bash") is None:
        pytest.skip("the example is a POSIX shell snippet; no bash here")
    if sys.version_info < (3, 11):
        pytest.skip("3.11's smtpd.py imports warnings._deprecated, new in Python 3.11 (README "
                    "says so)")
    if shutil.which("python3.11") is None:
        pytest.skip("the example takes smtpd.py from a python3.11 on PATH; there is none here")
    blocks = re.findall(r"^```sh\n(.*?)^```", README, re.S | re.M)
    [snippet] = [block for block in blocks if "smtpd_py" in block]
    script = snippet.replace(".venv/bin/python", f"exec {sys.executable}")
    script = with_port(script, " 127.0.0.1:8025", ' "$1"')
    err = smtpd_roundtrip(["bash", "-c", script, "bash"],
                          dict(os.environ, PYTHONUNBUFFERED="1"))
    assert "pollchat: running " in err and "smtpd.py on the " in err, err


@pytest.mark.timeout(90)
def test_readme_smtpd_sink_runs_unmodified_under_pollchat_run(tmp_path):
    """README's "Mail servers (smtpd)": the 3.11-era sink, as written, under
    `pollchat run` on Python 3.13 (else 3.12, else this Python)."""
    import smtplib

    from test_install import find_python

    code = re.search(r"### Mail servers \(smtpd\)\n.*?```python\n(.*?)```",
                     read("README.md"), re.S).group(1)
    assert 'Sink(("127.0.0.1", 8025), None)' in code
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    (tmp_path / "sink.py").write_text(code.replace("8025", str(port)))
    exe = find_python("3.13") or find_python("3.12") or sys.executable
    tree = tmp_path / "tree" / "pollchat"  # this pollchat, importable by that Python
    tree.mkdir(parents=True)
    source = os.path.join(ROOT, "src", "pollchat")
    for name in os.listdir(source):
        if name not in ("__pycache__", "backends"):
            (tree / name).symlink_to(os.path.join(source, name))
    (tree / "backends").symlink_to(os.path.join(ROOT, "src", "backends"))
    env = dict(os.environ, PYTHONPATH=str(tree.parent), PYTHONDONTWRITEBYTECODE="1")
    if exe != sys.executable:  # that interpreter lacks this venv's packages (uvloop)
        env.pop("POLLCHAT_BACKEND", None)
    proc = subprocess.Popen([exe, "-m", "pollchat", "run", "-q", "sink.py"], cwd=tmp_path,
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                client = smtplib.SMTP("127.0.0.1", port, timeout=10)
                break
            except OSError:
                assert proc.poll() is None, proc.stderr.read().decode()
                assert time.monotonic() < deadline, "the sink did not start"
                time.sleep(0.05)
        with client:
            client.sendmail("alice@example.com", ["bob@example.com", "carol@example.com"],
                            b"Subject: hi\r\n\r\nhello")
        line = proc.stdout.readline().decode()
        assert line == "alice@example.com -> bob@example.com, carol@example.com: 18 bytes\n"
    finally:
        proc.kill()
        proc.wait(10)
        proc.stdout.close()
        proc.stderr.close()
