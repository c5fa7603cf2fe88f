"""The two loop features TLS needs (issue 14), on every backend:
transport interest (``_pc_extra_interest``/``_pc_withheld_interest``) and
synthetic readiness (``Loop.add_ready``), parked while not wanted."""

import socket
import time

import pytest
from helpers import run_until
from tlsapps import LineClient, LineSession, Listener

from pollchat import asyncore
from pollchat.backends import PRI, READ, WRITE

pytestmark = pytest.mark.timeout(60)


class Quiet(asyncore.dispatcher):
    """Wants to read, not to write; counts its events."""

    def __init__(self, sock, map):
        asyncore.dispatcher.__init__(self, sock, map=map)
        self.reads = 0
        self.writes = 0

    def writable(self):
        return False

    def handle_read(self):
        self.reads += 1

    def handle_write(self):
        self.writes += 1


@pytest.fixture
def quiet(loop):
    a, b = socket.socketpair()
    channel = Quiet(a, loop.map)
    yield channel
    channel.close()
    b.close()


def test_add_ready_dispatches_without_a_kernel_event_and_without_waiting(loop, quiet):
    loop.run_once(0)
    loop.add_ready(quiet._fileno, READ)
    started = time.monotonic()
    loop.run_once(5.0)  # must not wait: an event is already there
    assert time.monotonic() - started < 1.0
    assert quiet.reads == 1
    loop.run_once(0)
    assert quiet.reads == 1  # one-shot


def test_add_ready_is_parked_until_the_channel_wants_it(loop, quiet):
    loop.run_once(0)
    loop.pause_reading(quiet._fileno)
    loop.add_ready(quiet._fileno, READ)
    loop.run_once(0)
    loop.run_once(0)
    assert quiet.reads == 0 and loop.statistics()["parked"] == 1
    loop.resume_reading(quiet._fileno)
    loop.run_once(0)
    assert quiet.reads == 1 and loop.statistics()["parked"] == 0


def test_parked_events_do_not_make_the_loop_spin(loop, quiet, monkeypatch):
    """While a parked event cannot be delivered, passes block in poll as
    usual: a paused reader holding decrypted bytes costs no CPU."""
    loop.run_once(0)
    loop.pause_reading(quiet._fileno)
    loop.add_ready(quiet._fileno, READ)
    loop.run_once(0)  # parks it
    timeouts = []
    real_poll = loop.backend.poll

    def poll(timeout):
        timeouts.append(timeout)
        return real_poll(timeout)

    monkeypatch.setattr(loop.backend, "poll", poll)
    loop.run_once(0.05)
    loop.run_once(0.05)
    assert timeouts == [0.05, 0.05]
    assert quiet.reads == 0


def test_add_ready_is_dropped_for_a_closed_channel(loop, quiet):
    loop.run_once(0)
    loop.add_ready(quiet._fileno, READ)
    quiet.close()
    loop.run_once(0)
    assert quiet.reads == 0 and loop.statistics()["ready"] == 0


def test_extra_and_withheld_interest(loop, quiet):
    loop.run_once(0)
    fd = quiet._fileno
    assert loop.registered_events(fd) == READ | PRI
    quiet._pc_extra_interest = WRITE
    quiet._interest_changed()
    loop.run_once(0)
    assert loop.registered_events(fd) == READ | PRI | WRITE
    assert quiet.writes == 1  # a socket pair is writable at once
    quiet._pc_extra_interest = 0
    quiet._pc_withheld_interest = READ | PRI
    quiet._interest_changed()
    loop.run_once(0)
    assert loop.registered_events(fd) == 0  # wants nothing: unregistered
    quiet._pc_withheld_interest = 0
    quiet._interest_changed()
    loop.run_once(0)
    assert loop.registered_events(fd) == READ | PRI


def test_paused_reading_with_decrypted_bytes_resumes_without_traffic(
        loop, tls_server_context, tls_client_context):
    """A TLS reader that pauses with decrypted bytes still buffered gets
    them when it resumes, though the peer sends nothing more."""
    message = b"z" * 50_000
    received = bytearray()

    class Pausing(LineSession):
        context = tls_server_context

        def handle_read(self):
            received.extend(self.recv(1000))
            if len(received) == 10_000:
                self.pause_reading()

    server = Listener(loop, Pausing)
    client = LineClient(loop, server.address, tls_client_context)
    client.handle_handshake = lambda: client.push(message)
    run_until(loop, lambda: len(received) >= 10_000)
    loop.run(timeout=0.01, count=10)
    assert len(received) == 10_000
    server.sessions[0].resume_reading()
    run_until(loop, lambda: len(received) >= len(message))
    assert bytes(received) == message


def test_plaintext_programs_do_not_import_ssl():
    """TLS costs a plaintext program nothing, not even the ssl import."""
    import subprocess
    import sys

    code = ("import sys, pollchat, pollchat.asyncore, pollchat.asynchat, pollchat.chatserver; "
            "print('ssl' in sys.modules)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=60, check=True)
    assert done.stdout.strip() == "False"
