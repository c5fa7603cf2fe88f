"""Shared fixtures: every backend, native or through a stand-in.

``backend_name`` runs a test once per backend: each one this machine has
(:func:`pollchat.backends.available_backends`), plus ``kqueue`` and
``devpoll`` through the stand-ins of ``standins.py`` where they are not
native (test ids ``kqueue-standin``, ``devpoll-standin``), plus ``kqueue``
on libkqueue, an independent user-space kqueue for Linux
(``kqueue_libkqueue.py``, test id ``kqueue-libkqueue``; skipped with the
reason when libkqueue cannot be found or built, see ``libkqueue_build.py``).
For a stand-in the fixture installs it into :mod:`select` for the whole
test, so that ``pollchat.backends.make_backend(backend_name)`` works anywhere
inside it.
"""

from __future__ import annotations

import asyncio
import gc
import os
import signal
import socket
import threading

import kqueue_libkqueue
import libkqueue_build
import psutil
import pytest
import standins

from pollchat import backends

#: ``POLLCHAT_TEST_BACKENDS=asyncio`` (comma-separated names): the
#: backend-parametrized tests run on those backends only.  For a tox env that
#: tests its ``POLLCHAT_BACKEND`` end to end (py311-asyncio...), when the
#: plain envs already run every backend.
_ONLY = {name.strip() for name in os.environ.get("POLLCHAT_TEST_BACKENDS", "").split(",")
         if name.strip()}


def _chosen(names):
    return tuple(name for name in names if not _ONLY or name in _ONLY)


#: Backends this machine has, decided once at collection.
NATIVE_BACKENDS = _chosen(backends.available_backends())
#: Backends tested through a stand-in here.
STANDIN_BACKENDS = _chosen(
    name for name, usable in (("kqueue", standins.KQUEUE_STANDIN_USABLE),
                              ("devpoll", standins.DEVPOLL_STANDIN_USABLE))
    if usable and name not in backends.available_backends())

#: kqueue on libkqueue, where kqueue is not native (libkqueue is built for Linux).
LIBKQUEUE_BACKENDS = _chosen(("kqueue",) if "kqueue" not in NATIVE_BACKENDS else ())

# Each param is (backend name, how it runs here); the test id says both.
BACKEND_PARAMS = [pytest.param((name, "native"), id=name) for name in NATIVE_BACKENDS] + [
    pytest.param((name, "standin"), id=f"{name}-standin") for name in STANDIN_BACKENDS] + [
    pytest.param((name, "libkqueue"), id=f"{name}-libkqueue") for name in LIBKQUEUE_BACKENDS]


@pytest.fixture(scope="session")
def libkqueue():
    """Where libkqueue is (:class:`libkqueue_build.Located`), built on first use.

    Session-scoped, so that it is set up before any function-scoped fixture
    of a test: loading libkqueue opens two fds for the life of the process,
    which ``fd_leak_check`` must not count against that test.
    """
    located = libkqueue_build.locate()
    if located.path is not None:
        kqueue_libkqueue.load()
    return located


@pytest.fixture(scope="session")
def uvloop_started():
    """libuv opens a process-wide pipe (for signals) the first time one of
    its loops runs in the main thread, and keeps it for the life of the
    process: run one at once, so that ``fd_leak_check`` does not count it
    against the first uvloop test."""
    if "uvloop" in NATIVE_BACKENDS:
        import uvloop

        loop = uvloop.new_event_loop()
        loop.run_until_complete(asyncio.sleep(0))
        loop.close()


@pytest.fixture(params=BACKEND_PARAMS)
def backend_variant(request, monkeypatch, libkqueue, uvloop_started):
    """``(name, how)``: a backend, and whether it runs ``"native"``, on a
    ``"standin"`` or on ``"libkqueue"`` (installed into :mod:`select` for the
    whole test)."""
    name, how = request.param
    if how == "standin":
        standins.install_standin(name, monkeypatch)
    elif how == "libkqueue":
        kqueue_libkqueue.require(libkqueue)
        kqueue_libkqueue.install_libkqueue(monkeypatch)
    return name, how


@pytest.fixture
def backend_name(backend_variant) -> str:
    """A backend name usable with ``pollchat.backends.make_backend()`` for the
    whole test (its stand-in installed if it is not native)."""
    return backend_variant[0]


@pytest.fixture
def make_backend(backend_name):
    """A factory of new backends of ``backend_name``; all closed at teardown."""
    made = []

    def make():
        backend = backends.make_backend(backend_name)
        made.append(backend)
        return backend

    yield make
    for backend in made:
        backend.close()


@pytest.fixture
def backend(make_backend):
    """One backend of ``backend_name``, closed at teardown."""
    return make_backend()


@pytest.fixture
def pair():
    """A connected AF_UNIX socketpair, closed at teardown."""
    a, b = socket.socketpair()
    yield a, b
    a.close()
    b.close()


@pytest.fixture
def fd_leak_check():
    """Fail the test if it leaves more (or fewer) fds open than it found."""
    gc.collect()
    process = psutil.Process()
    before = process.num_fds()
    yield
    gc.collect()
    after = process.num_fds()
    assert after == before, f"the test leaked {after - before} file descriptor(s)"


@pytest.fixture
def standin(backend_variant):
    """True when ``backend_name`` runs on a stand-in or libkqueue here, not
    natively (for tests that start subprocesses, where neither is installed)."""
    return backend_variant[1] != "native"


@pytest.fixture
def loop(backend_name):
    """A :class:`pollchat.Loop` on ``backend_name`` with its own map; its
    channels are closed and the loop released at teardown."""
    import pollchat
    from pollchat import asyncore

    lp = pollchat.Loop(backend_name)
    yield lp
    asyncore.close_all(lp.map, ignore_all=True)
    lp.close()


@pytest.fixture
def start_chat_server(backend_name):
    """A factory: ``start_chat_server(**options)`` starts a
    :class:`pollchat.chatserver.ChatServer` on ``backend_name`` in a thread
    and returns it; every one is shut down, and its thread joined, at
    teardown."""
    import threading

    from helpers import WAIT

    from pollchat.chatserver import ChatServer

    running = []

    def start(**options):
        server = ChatServer("127.0.0.1", 0, backend=backend_name, **options)
        thread = threading.Thread(target=server.serve_forever, kwargs={"grace": 2.0},
                                  daemon=True)
        thread.start()
        running.append((server, thread))
        return server

    yield start
    for server, thread in running:
        if thread.is_alive():
            server.request_shutdown()
        thread.join(WAIT)
        assert not thread.is_alive(), "serve_forever() did not return after shutdown"


@pytest.fixture
def chat_client():
    """A factory: ``chat_client(server, **options)`` connects a
    :class:`helpers.ChatClient` (its welcome line read); all closed at
    teardown."""
    from helpers import ChatClient

    made = []

    def connect(server, **options):
        client = ChatClient(server.address[1], **options)
        made.append(client)
        return client

    yield connect
    for client in made:
        client.close()


@pytest.fixture
def tcp_pair():
    """A connected, non-blocking TCP pair over loopback, ``(client, server
    side)`` (:func:`helpers.make_tcp_pair`), closed at teardown."""
    from helpers import make_tcp_pair

    client, server = make_tcp_pair()
    yield client, server
    client.close()
    server.close()


# -- TLS (issue 14): certificates made for the test run ------------------------------


@pytest.fixture(scope="session")
def tls_ca():
    """A throw-away certificate authority (trustme), with a certificate for
    ``localhost`` issued by an intermediate CA (so the server sends a chain)."""
    trustme = pytest.importorskip("trustme", reason="TLS tests need trustme (the test extra)")
    ca = trustme.CA()
    return ca, ca.create_child_ca().issue_cert("localhost", "127.0.0.1")


@pytest.fixture
def tls_server_context(tls_ca):
    """A fresh server-side ``ssl.SSLContext`` for ``localhost``."""
    import ssl

    _, cert = tls_ca
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    cert.configure_cert(context)
    return context


@pytest.fixture
def tls_client_context(tls_ca):
    """A fresh client-side ``ssl.SSLContext`` trusting the test CA."""
    import ssl

    ca, _ = tls_ca
    context = ssl.create_default_context()
    ca.configure_trust(context)
    return context


@pytest.fixture
def ctrl_c():
    """Python's own SIGINT handler (KeyboardInterrupt) for the test, in the
    main thread: a shell's background job, such as a CI script started with
    ``&``, runs pytest with SIGINT ignored, and a test that sends itself
    SIGINT would then wait for an interrupt that never comes."""
    if threading.current_thread() is not threading.main_thread():
        pytest.skip("signals are delivered to the main thread")
    saved = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, saved)
