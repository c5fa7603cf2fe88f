"""Shared fixtures: every backend, native or through a stand-in.

``backend_name`` runs a test once per backend: each one this machine has
(:func:`pollchat.backends.available_backends`), plus ``kqueue`` and
``devpoll`` through the stand-ins of ``standins.py`` where they are not
native (test ids ``kqueue-standin``, ``devpoll-standin``).  For a stand-in
the fixture installs it into :mod:`select` for the whole test, so that
``pollchat.backends.make_backend(backend_name)`` works anywhere inside it.
"""

from __future__ import annotations

import gc

import psutil
import pytest
import standins

from pollchat import backends

#: Backends this machine has, decided once at collection.
NATIVE_BACKENDS = tuple(backends.available_backends())
#: Backends tested through a stand-in here.
STANDIN_BACKENDS = tuple(
    name for name, usable in (("kqueue", standins.KQUEUE_STANDIN_USABLE),
                              ("devpoll", standins.DEVPOLL_STANDIN_USABLE))
    if usable and name not in NATIVE_BACKENDS)

BACKEND_PARAMS = [pytest.param(name, id=name) for name in NATIVE_BACKENDS] + [
    pytest.param(name, id=f"{name}-standin") for name in STANDIN_BACKENDS]


@pytest.fixture(params=BACKEND_PARAMS)
def backend_name(request, monkeypatch) -> str:
    """A backend name usable with ``pollchat.backends.make_backend()`` for the
    whole test (its stand-in installed if it is not native)."""
    name = request.param
    if name in STANDIN_BACKENDS:
        standins.install_standin(name, monkeypatch)
    return name


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
def standin(backend_name):
    """True when ``backend_name`` runs on a stand-in here, not natively (for
    tests that start subprocesses, where the stand-in is not installed)."""
    return backend_name in STANDIN_BACKENDS


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
