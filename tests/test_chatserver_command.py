"""``pollchat chat``: the chat server as a command, end to end in a
subprocess: signals, logging, and the warnings it gives at start."""

import os
import re
import signal
import sys

import pytest
from helpers import ChatClient, Proc, default_sigint, nofile_limit_in_child

from pollchat import backends

pytestmark = pytest.mark.timeout(60)


def start_chat_command(*args, preexec_fn=default_sigint):
    """``python -m pollchat chat --port 0 ARGS`` in a subprocess, once it
    said where it listens: ``(Proc, port)``."""
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    proc = Proc([sys.executable, "-m", "pollchat", "chat", "--port", "0", *args], env,
                preexec_fn=preexec_fn)
    try:
        port = int(proc.wait_for(r"listening on 127\.0\.0\.1:(\d+)", stream="err").group(1))
    except BaseException:
        proc.kill()
        raise
    return proc, port


@pytest.mark.parametrize("stop", [signal.SIGINT, signal.SIGTERM], ids=["ctrl-c", "sigterm"])
def test_chat_command_end_to_end(stop):
    proc, port = start_chat_command("--max-line", "32", "--verbose")
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
        proc.popen.send_signal(stop)
        assert a.eof()[-1] == "* server shutting down"
        assert b.eof()[-1] == "* server shutting down"
        status, out, log = proc.finish()
        assert status == 0
        assert "guest1 connected from 127.0.0.1:" in log
        assert "guest3 disconnected from 127.0.0.1:" in log
        assert "alice: hello bob" in log  # --verbose logs the lines
        assert "shutting down (2 online)" in log
        assert "Traceback" not in log
        assert out == ""
    finally:
        proc.kill()


def test_chat_command_logs_connect_and_disconnect_only_by_default():
    proc, port = start_chat_command()
    try:
        a = ChatClient(port)
        a.send("a secret")
        a.send("/quit")
        a.eof()
        proc.popen.send_signal(signal.SIGINT)
        status, _, log = proc.finish()
        assert status == 0
        events = [line for line in log.splitlines() if "guest1" in line]
        assert len(events) == 2, log
        assert "connected" in events[0] and "disconnected" in events[1]
        assert "secret" not in log
    finally:
        proc.kill()


@pytest.mark.parametrize("backend, soft, warned", [
    ("select", 4096, True),
    ("select", 1024, False),  # select can watch every fd this process may open
    ("poll", 4096, False),
])
def test_chat_command_warns_when_the_backend_caps_the_clients(backend, soft, warned):
    resource = pytest.importorskip("resource")
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    if hard != resource.RLIM_INFINITY and hard < soft:
        pytest.skip(f"the hard open-file limit ({hard}) is below {soft}")
    proc, _ = start_chat_command("--backend", backend, "--no-raise-fd-limit",
                                 preexec_fn=nofile_limit_in_child(soft))
    try:
        proc.popen.send_signal(signal.SIGINT)
        status, _, log = proc.finish()
    finally:
        proc.kill()
    assert status == 0, log
    warnings = [line for line in log.splitlines() if "capped" in line]
    if not warned:
        assert warnings == [], log
        return
    uncapped = " or ".join(name for name in backends.available_backends()
                           if name != "select" and name not in backends.BY_NAME_ONLY)
    assert len(warnings) == 1, log
    assert re.search(r"the select backend cannot watch fds >= 1024, so this server is capped "
                     r"at about 1,0\d\d clients although the open-file limit is 4096; "
                     rf"--backend {uncapped} has no such cap$", warnings[0]), warnings[0]
