"""README's promises that a test can check: the CI runs exactly README's test
command, and the README's example server works."""

import os
import re
import socket
import subprocess
import sys
import time

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def read(name):
    with open(os.path.join(ROOT, name), encoding="utf-8") as f:
        return f.read()


def test_ci_runs_exactly_the_readme_test_command():
    ci = read(".ci/run")
    block = re.search(r"# -- begin README test command --\n(.*?)\n# -- end", ci, re.S)
    assert block, ".ci/run lost its README test command markers"
    assert block.group(1).strip() in read("README.md")


@pytest.mark.timeout(60)
def test_readme_echo_example_serves(tmp_path):
    code = re.search(r"## An echo server in 20 lines\n\n```python\n(.*?)```",
                     read("README.md"), re.S).group(1)
    probe = socket.socket()
    probe.bind(("127.0.0.1", 0))
    port = probe.getsockname()[1]
    probe.close()
    script = tmp_path / "echo.py"
    script.write_text(code.replace("EchoServer(7001)", f"EchoServer({port})"))
    proc = subprocess.Popen([sys.executable, str(script)])
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                client = socket.create_connection(("127.0.0.1", port), timeout=5)
                break
            except OSError:
                assert time.monotonic() < deadline, "example server did not start"
                time.sleep(0.05)
        client.sendall(b"hello\nworld\n")
        got = b""
        while got.count(b"\n") < 2:
            chunk = client.recv(100)
            assert chunk
            got += chunk
        assert got == b"hello\nworld\n"
        client.close()
    finally:
        proc.kill()
        proc.wait(10)


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
        if name != "__pycache__":
            (tree / name).symlink_to(os.path.join(source, name))
    (tree / "backends").symlink_to(os.path.join(ROOT, "src", "backends"))
    env = dict(os.environ, PYTHONPATH=str(tree.parent), PYTHONDONTWRITEBYTECODE="1")
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
