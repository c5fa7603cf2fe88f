"""README's TLS examples run as written: the certificate command, the TLS
echo server and the TLS client, as separate processes."""

import os
import re
import socket
import subprocess
import sys
import time

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

pytestmark = pytest.mark.timeout(60)


def readme_block(heading, language):
    with open(os.path.join(ROOT, "README.md"), encoding="utf-8") as f:
        text = f.read()
    section = text.split(heading, 1)[1]
    return re.search(rf"```{language}\n(.*?)```", section, re.S).group(1)


def free_port():
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_readme_tls_server_and_client(tmp_path):
    pytest.importorskip("trustme", reason="the README's certificate command needs trustme")
    command = readme_block("## TLS", "sh").strip()
    assert command == "python -m trustme"
    subprocess.run([sys.executable, "-m", "trustme", "-q"], cwd=tmp_path, check=True,
                   timeout=30)
    port = free_port()
    server = tmp_path / "server.py"
    server.write_text(readme_block("### A TLS server", "python")
                      .replace("EchoServer(7002)", f"EchoServer({port})"))
    client = tmp_path / "client.py"
    client.write_text(readme_block("### A TLS client", "python")
                      .replace('"localhost", 7002', f'"localhost", {port}'))
    proc = subprocess.Popen([sys.executable, str(server)], cwd=tmp_path)
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=5).close()
                break
            except OSError:
                assert time.monotonic() < deadline, "the README's TLS server did not start"
                time.sleep(0.05)
        done = subprocess.run([sys.executable, str(client)], cwd=tmp_path, timeout=30,
                              capture_output=True, text=True, check=False)
    finally:
        proc.kill()
        proc.wait(10)
    assert done.returncode == 0, done.stderr
    assert re.search(r"connected with TLSv1\.[23] to \(\('DNS', 'localhost'\)", done.stdout)
    assert "got b'hello over TLS'" in done.stdout
