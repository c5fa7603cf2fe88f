"""``pollchat chat``: the chat server as a command, end to end in a
subprocess: signals, logging, and the warnings it gives at start."""

import os
import re
import signal
import subprocess
import sys
import threading
import time

import pytest
from helpers import WAIT, ChatClient

pytestmark = pytest.mark.timeout(60)


def _default_sigint():
    # A shell's background job starts with SIGINT ignored, and python keeps
    # it so: give the server its normal Ctrl-C.
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _start_chat_command(*args):
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    proc = subprocess.Popen([sys.executable, "-m", "pollchat", "chat", "--port", "0", *args],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env,
                            preexec_fn=_default_sigint)  # noqa: PLW1509
    lines = []
    deadline = time.monotonic() + 20

    def read_port():
        for raw in proc.stderr:
            line = raw.decode()
            lines.append(line)
            match = re.search(r"listening on 127\.0\.0\.1:(\d+)", line)
            if match:
                return int(match.group(1))
        return None

    result = []
    reader = threading.Thread(target=lambda: result.append(read_port()), daemon=True)
    reader.start()
    reader.join(max(0.0, deadline - time.monotonic()))
    if not result or result[0] is None:
        proc.kill()
        proc.wait(WAIT)
        pytest.fail(f"pollchat chat did not say where it listens: {''.join(lines)!r}")
    return proc, result[0], lines


@pytest.mark.parametrize("stop", [signal.SIGINT, signal.SIGTERM], ids=["ctrl-c", "sigterm"])
def test_chat_command_end_to_end(stop):
    proc, port, lines = _start_chat_command("--max-line", "32", "--verbose")
    try:
        a = ChatClient(port)
        b = ChatClient(port)
        a.sync()
        a.send("/nick alice")
        assert a.line() == "* guest1 is now alice"
        assert b.line() == "* guest1 is now alice"
        a.send("y" * 33)
        assert a.line() == "* line too long (over 32 bytes): not sent"
        a.send("hello bob")
        assert b.line() == "<alice> hello bob"
        c = ChatClient(port)
        c.reset()
        assert b.expect("* guest3 left (connection closed)") == ["* guest3 joined"]
        proc.send_signal(stop)
        assert a.eof()[-1] == "* server shutting down"
        assert b.eof()[-1] == "* server shutting down"
        assert proc.wait(WAIT) == 0
        rest = proc.stderr.read().decode()
        log = "".join(lines) + rest
        assert "guest1 connected from 127.0.0.1:" in log
        assert "guest3 disconnected from 127.0.0.1:" in log
        assert "alice: hello bob" in log  # --verbose logs the lines
        assert "shutting down (2 online)" in log
        assert "Traceback" not in log
        assert proc.stdout.read() == b""
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(WAIT)
        proc.stdout.close()
        proc.stderr.close()


def test_chat_command_logs_connect_and_disconnect_only_by_default():
    proc, port, lines = _start_chat_command()
    try:
        a = ChatClient(port)
        a.send("a secret")
        a.send("/quit")
        a.eof()
        proc.send_signal(signal.SIGINT)
        assert proc.wait(WAIT) == 0
        log = "".join(lines) + proc.stderr.read().decode()
        events = [line for line in log.splitlines() if "guest1" in line]
        assert len(events) == 2, log
        assert "connected" in events[0] and "disconnected" in events[1]
        assert "secret" not in log
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(WAIT)
        proc.stdout.close()
        proc.stderr.close()
