"""The registry of backends: which exist and which this machine has, the
choice by name, ``POLLCHAT_BACKEND``, ``use_poll`` and ``auto``, and
backends added by ``register_backend()`` or entry points.
"""

from __future__ import annotations

import importlib.metadata
import logging
import select
import sys

import pytest
import standins

from pollchat import backends
from pollchat.backends import UnknownBackendError

registry = backends.registry

pytestmark = pytest.mark.usefixtures("fd_leak_check")


# -- the registry ---------------------------------------------------------------------------


@pytest.fixture
def registry_state(monkeypatch):
    """Let a test change the registry; it is restored afterwards."""
    monkeypatch.setattr(registry, "_registry", dict(registry._registry))
    monkeypatch.setattr(registry, "_entry_points_loaded", registry._entry_points_loaded)


def test_available_backends():
    names = backends.available_backends()
    assert "select" in names
    assert set(names) <= set(backends.all_backends())
    assert {"epoll", "kqueue", "devpoll", "poll", "select"} <= set(backends.all_backends())
    ordered = [n for n in backends.PREFERENCE if n in names]
    assert names[:len(ordered)] == ordered  # most scalable first
    for name in ("epoll", "poll", "kqueue", "devpoll"):
        assert (name in names) == hasattr(select, name)
    status = {info.name: info for info in backends.backend_status()}
    for name, info in status.items():
        assert info.available == (name in names)
        if not info.available:
            assert info.reason, f"no reason given why {name} is unavailable"


def test_available_backends_with_standins(monkeypatch):
    if not (standins.KQUEUE_STANDIN_USABLE and standins.DEVPOLL_STANDIN_USABLE):
        pytest.skip("needs epoll and poll")
    standins.install_kqueue(monkeypatch)
    standins.install_devpoll(monkeypatch)
    names = backends.available_backends()
    assert names[:5] == ["epoll", "kqueue", "devpoll", "poll", "select"]


@pytest.mark.parametrize(("available", "best"), [
    (["select", "poll"], "poll"),
    (["poll", "epoll", "select"], "epoll"),
    (["select", "poll", "devpoll"], "devpoll"),
    (["devpoll", "kqueue"], "kqueue"),
    (["select", "kqueue", "epoll"], "epoll"),
    (["thirdparty", "select"], "select"),
    (["thirdparty", "other"], "thirdparty"),
    (iter(["poll", "select"]), "poll"),
])
def test_pick_best(available, best):
    assert backends.pick_best(available) == best


def test_pick_best_of_nothing():
    with pytest.raises(UnknownBackendError):
        backends.pick_best([])


def test_best_backend():
    assert backends.best_backend() == backends.pick_best(backends.available_backends())
    if sys.platform.startswith("linux"):
        assert backends.best_backend() == "epoll"


def test_get_backend():
    factory = backends.get_backend(" SELECT ")
    assert factory is backends.SelectBackend
    backend = backends.get_backend("auto")()
    try:
        assert backend.name == backends.best_backend()
    finally:
        backend.close()
    with pytest.raises(TypeError):
        backends.get_backend(None)


def test_get_backend_unknown_lists_choices():
    with pytest.raises(UnknownBackendError) as info:
        backends.get_backend("nosuch")
    assert isinstance(info.value, ValueError)
    message = str(info.value)
    assert "nosuch" in message
    for name in [*backends.available_backends(), "auto"]:
        assert name in message


def test_get_backend_unavailable_says_why():
    missing = [info for info in backends.backend_status() if not info.available]
    if not missing:
        pytest.skip("every backend is available here")
    with pytest.raises(UnknownBackendError) as info:
        backends.get_backend(missing[0].name)
    assert "not available" in str(info.value)
    assert missing[0].reason in str(info.value)


def test_choose_backend_precedence(monkeypatch):
    env = backends.ENV_VAR
    best = backends.best_backend()
    # explicit > environment > use_poll > auto
    assert backends.choose_backend("select", use_poll=True, environ={env: "poll"}) == "select"
    assert backends.choose_backend(None, use_poll=True, environ={env: "select"}) == "select"
    # use_poll=True means "not select": the best of the others
    not_select = backends.pick_best(n for n in backends.available_backends() if n != "select")
    assert backends.choose_backend(use_poll=True, environ={}) == not_select != "select"
    assert backends.resolve_backend(use_poll=True, environ={}).origin == "use_poll=True"
    assert backends.resolve_backend(environ={env: "poll"}).origin == f"${env}"
    assert backends.resolve_backend("select", environ={}).origin == "argument"
    assert backends.choose_backend(environ={}) == best
    assert backends.choose_backend("auto", environ={env: "select"}) == best
    assert backends.choose_backend(environ={env: "auto"}) == best
    assert backends.choose_backend(environ={env: "  "}) == best  # blank: unset
    assert backends.choose_backend(environ={env: " Poll "}) == "poll"
    # environ=None reads os.environ
    monkeypatch.setenv(env, "select")
    assert backends.choose_backend() == "select"
    monkeypatch.delenv(env)
    assert backends.choose_backend() == best


def test_choose_backend_bad_environment_names_the_variable():
    with pytest.raises(UnknownBackendError) as info:
        backends.choose_backend(environ={backends.ENV_VAR: "nosuch"})
    assert "POLLCHAT_BACKEND" in str(info.value)
    assert "nosuch" in str(info.value)
    with pytest.raises(UnknownBackendError, match="requested"):
        backends.choose_backend("nosuch", environ={backends.ENV_VAR: "select"})


def test_make_backend():
    backend = backends.make_backend(environ={backends.ENV_VAR: "select"})
    try:
        assert isinstance(backend, backends.SelectBackend)
        assert backends.make_backend(backend) is backend  # an instance passes through
    finally:
        backend.close()


class PluggedBackend(backends.SelectBackend):
    name = "plugged"


@pytest.mark.usefixtures("registry_state")
def test_register_backend():
    backends.register_backend("plugged", PluggedBackend)
    names = backends.all_backends()
    assert names.index("plugged") > names.index("select")  # after the built-in ones
    assert "plugged" in backends.available_backends()
    assert backends.get_backend("plugged") is PluggedBackend
    assert backends.best_backend() != "plugged"
    with backends.make_backend("plugged") as backend:
        assert isinstance(backend, PluggedBackend)
    with pytest.raises(ValueError, match="already registered"):
        backends.register_backend("plugged", PluggedBackend)
    backends.register_backend("plugged", backends.SelectBackend, replace=True)
    assert backends.get_backend("plugged") is backends.SelectBackend
    with pytest.raises(ValueError, match="already registered"):
        backends.register_backend("epoll", PluggedBackend)


@pytest.mark.usefixtures("registry_state")
def test_register_backend_unavailable():
    backends.register_backend("elsewhere", PluggedBackend, available=False)
    assert "elsewhere" in backends.all_backends()
    assert "elsewhere" not in backends.available_backends()
    with pytest.raises(UnknownBackendError, match="not available"):
        backends.get_backend("elsewhere")
    flag = []
    backends.register_backend("someday", PluggedBackend, available=lambda: bool(flag))
    assert "someday" not in backends.available_backends()
    flag.append(1)
    assert "someday" in backends.available_backends()


@pytest.mark.usefixtures("registry_state")
@pytest.mark.parametrize("name", ["", "auto", "two words", "a-b", None, 3])
def test_register_backend_bad_names(name):
    with pytest.raises(ValueError):
        backends.register_backend(name, PluggedBackend)


@pytest.mark.usefixtures("registry_state")
def test_register_backend_not_callable():
    with pytest.raises(TypeError):
        backends.register_backend("plugged", "PluggedBackend")


@pytest.mark.usefixtures("registry_state")
def test_register_backend_mixed_case_name_is_selectable():
    """Selection lower()s the name, so registration must not keep a name
    that could never be selected."""
    backends.register_backend("MyPoller", PluggedBackend)
    assert backends.get_backend("MyPoller") is PluggedBackend
    assert backends.choose_backend("mypoller") in backends.available_backends()


class FakeEntryPoint:
    def __init__(self, name, obj=None, error=None):
        self.name = name
        self.obj = obj
        self.error = error

    def load(self):
        if self.error is not None:
            raise self.error
        return self.obj


def fake_entry_points(monkeypatch, entries):
    """Make importlib.metadata.entry_points() return ``entries`` for
    pollchat's group; returns the list of calls made."""
    calls = []

    def entry_points(**kwargs):
        calls.append(kwargs)
        if sys.version_info >= (3, 10):
            assert kwargs == {"group": backends.ENTRY_POINT_GROUP}
            return list(entries)
        assert not kwargs  # 3.9: a dict of every group
        return {backends.ENTRY_POINT_GROUP: list(entries),
                "other.group": [FakeEntryPoint("nope", PluggedBackend)]}

    monkeypatch.setattr(importlib.metadata, "entry_points", entry_points)
    monkeypatch.setattr(registry, "_entry_points_loaded", False)
    return calls


class ImpostorBackend(backends.SelectBackend):
    name = "epoll"


@pytest.mark.usefixtures("registry_state")
def test_entry_points(monkeypatch, caplog):
    calls = fake_entry_points(monkeypatch, [
        FakeEntryPoint("plugged", PluggedBackend),
        FakeEntryPoint("broken", error=ImportError("no such module")),
        FakeEntryPoint("epoll", ImpostorBackend),  # may not shadow a built-in
        FakeEntryPoint("bad name", PluggedBackend),
    ])
    builtin_epoll = registry._registry["epoll"]
    with caplog.at_level(logging.ERROR, logger="pollchat.backends"):
        names = backends.available_backends()
    assert "plugged" in names
    assert names.index("plugged") > names.index("select")
    assert "broken" not in backends.all_backends()
    assert "bad name" not in backends.all_backends()
    assert "nope" not in backends.all_backends()
    assert registry._registry["epoll"] is builtin_epoll
    assert "broken" in caplog.text and "bad name" in caplog.text
    with backends.make_backend("plugged") as backend:
        assert isinstance(backend, PluggedBackend)
    backends.all_backends()
    assert len(calls) == 1  # loaded once


@pytest.mark.usefixtures("registry_state")
@pytest.mark.parametrize("first_call", ["get_backend", "choose_backend", "make_backend"])
def test_entry_point_backend_selectable_on_first_call(monkeypatch, first_call):
    """The entry points must be loaded before a name is looked up, not only
    when the names are listed."""
    fake_entry_points(monkeypatch, [FakeEntryPoint("plugged", PluggedBackend)])
    if first_call == "get_backend":
        assert backends.get_backend("plugged") is PluggedBackend
    elif first_call == "choose_backend":
        assert backends.choose_backend(environ={backends.ENV_VAR: "plugged"}) == "plugged"
    else:
        with backends.make_backend("plugged") as backend:
            assert isinstance(backend, PluggedBackend)


@pytest.mark.usefixtures("registry_state")
def test_entry_point_mixed_case_cannot_shadow_a_builtin(monkeypatch):
    fake_entry_points(monkeypatch, [FakeEntryPoint("EPOLL", ImpostorBackend)])
    assert backends.all_backends().count("epoll") == 1
    assert registry._registry["epoll"].factory is not ImpostorBackend
