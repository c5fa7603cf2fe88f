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
