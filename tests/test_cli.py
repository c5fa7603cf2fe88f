"""The ``pollchat`` command: ``backends``, help for every subcommand, and
errors that are one clear line with a non-zero status, never a traceback."""

import os
import re
import socket
import subprocess
import sys

import pytest

from pollchat import __version__, backends, cli, runprog

WAIT = 20.0

try:
    import resource
except ImportError:  # pragma: no cover - not POSIX
    resource = None


def pollchat_command(*args, env=None, preexec_fn=None):
    """``python -m pollchat ARGS`` in a subprocess: (status, stdout, stderr)."""
    environ = dict(os.environ)
    environ.pop(backends.ENV_VAR, None)
    environ.update(env or {})
    proc = subprocess.run([sys.executable, "-m", "pollchat", *args], check=False,
                          capture_output=True, text=True, timeout=WAIT, env=environ,
                          preexec_fn=preexec_fn)  # noqa: PLW1509
    return proc.returncode, proc.stdout, proc.stderr


# -- backends -------------------------------------------------------------------------------


@pytest.fixture
def no_env_backend(monkeypatch):
    monkeypatch.delenv(backends.ENV_VAR, raising=False)


def _row(out, name):
    match = re.search(rf"^{name} +(yes|no) +(\S+)(  <- auto)?$", out, re.M)
    assert match, f"no row for {name}:\n{out}"
    return match


def test_backends_lists_every_backend_available_or_not(capsys, no_env_backend):
    assert cli.main(["backends"]) == 0
    out = capsys.readouterr().out
    status = {info.name: info for info in backends.backend_status()}
    assert {"select", "poll", "epoll", "kqueue", "devpoll"} <= set(status)
    best = backends.best_backend()
    for name, info in status.items():
        row = _row(out, name)
        assert row.group(1) == ("yes" if info.available else "no")
        assert (row.group(3) is not None) == (name == best)
        if not info.available:  # and why not
            assert f"why not: {info.reason}" in out
    # What each reports, e.g. select: READ|WRITE|PRI|NVAL, and its limits.
    assert _row(out, "select").group(2) == backends.event_names(backends.SelectBackend.reports)
    assert _row(out, "kqueue").group(2) == backends.event_names(backends.KqueueBackend.reports)
    assert f"limits:  {backends.SelectBackend.limits}" in out
    assert re.search(rf"^auto picks: +{best} \(the first available of: "
                     rf"{', '.join(backends.PREFERENCE)}\)$", out, re.M)
    assert re.search(rf"^\$POLLCHAT_BACKEND: +unset, so programs use {best} \(auto\)$", out,
                     re.M)
    assert re.search(rf"^FD_SETSIZE: +{backends.FD_SETSIZE} ", out, re.M)
    soft, hard = backends.fd_limits()
    if soft is not None or hard is not None:
        shown = [("unlimited" if v is None else str(v)) for v in (soft, hard)]
        assert re.search(rf"^open files: +soft {shown[0]}, hard {shown[1]} \(RLIMIT_NOFILE",
                         out, re.M)
    assert out.startswith(f"pollchat {__version__}, Python ")


@pytest.mark.skipif(sys.platform.startswith(("darwin", "freebsd", "openbsd", "netbsd",
                                             "sunos", "illumos")),
                    reason="checks the Linux view: kqueue and devpoll missing")
def test_backends_says_why_kqueue_and_devpoll_are_missing_on_linux(capsys, no_env_backend):
    cli.main(["backends"])
    out = capsys.readouterr().out
    assert _row(out, "kqueue").group(1) == "no"
    assert _row(out, "devpoll").group(1) == "no"
    assert "why not: select.kqueue is missing: kqueue is BSD/macOS only" in out
    assert "why not: select.devpoll is missing: /dev/poll is Solaris/illumos only" in out


@pytest.mark.parametrize("value", ["select", "POLL", "auto"])
def test_backends_shows_what_the_environment_selects(capsys, monkeypatch, value):
    monkeypatch.setenv(backends.ENV_VAR, value)
    assert cli.main(["backends"]) == 0
    out = capsys.readouterr().out
    chosen = backends.choose_backend(value)
    assert re.search(rf"^\$POLLCHAT_BACKEND: +'{value}', so programs use {chosen}$", out, re.M)


def test_backends_reports_a_bad_environment_value(capsys, monkeypatch):
    monkeypatch.setenv(backends.ENV_VAR, "bogus")
    assert cli.main(["backends"]) == 0  # still a report, with the problem in it
    out = capsys.readouterr().out
    assert re.search(r"^\$POLLCHAT_BACKEND: +'bogus': ERROR: unknown backend 'bogus' "
                     r"\(from \$POLLCHAT_BACKEND\); choose one of: ", out, re.M)


def test_backends_command_end_to_end():
    status, out, err = pollchat_command("backends")
    assert status == 0 and err == ""
    for name in ("epoll", "kqueue", "devpoll", "poll", "select"):
        _row(out, name)


# -- help -------------------------------------------------------------------------------------


@pytest.mark.parametrize("command", ["run", "backends", "chat"])
def test_every_subcommand_has_helpful_help(capsys, command):
    with pytest.raises(SystemExit) as info:
        cli.main([command, "--help"])
    assert info.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith(f"usage: pollchat {command}")
    assert "examples:" in out
    assert "pollchat " + command in out.split("examples:", 1)[1]


def test_run_help_explains_the_arguments(capsys):
    with pytest.raises(SystemExit):
        cli.main(["run", "-h"])
    out = capsys.readouterr().out
    for option in ("--backend", "--no-raise-fd-limit", "-q", "-m MODULE", "SCRIPT"):
        assert option in out
    assert "POLLCHAT_BACKEND" in out


def test_chat_help_lists_its_options(capsys):
    with pytest.raises(SystemExit):
        cli.main(["chat", "--help"])
    out = capsys.readouterr().out
    for option in ("--host", "--port", "--backend", "--max-line", "--verbose", "/nick", "nc "):
        assert option in out


def test_no_command_prints_help_and_fails(capsys):
    assert cli.main([]) == 2
    out = capsys.readouterr().out
    assert out.startswith("usage: pollchat")
    for command in ("run", "backends", "chat"):
        assert command in out


def test_version(capsys):
    with pytest.raises(SystemExit) as info:
        cli.main(["--version"])
    assert info.value.code == 0
    assert capsys.readouterr().out.startswith(f"pollchat {__version__} (Python ")


def test_python_dash_m_pollchat_and_its_help():
    status, out, err = pollchat_command("--help")
    assert status == 0 and out.startswith("usage: pollchat ")


# -- errors: one line, non-zero, no traceback --------------------------------------------------


def _one_line(err):
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert "Traceback" not in err
    return lines[0]


@pytest.mark.parametrize("command", ["run", "chat"])
def test_bad_backend_name_is_one_line(capsys, command):
    args = [command, "--backend", "nonsense"] + (["x.py"] if command == "run" else [])
    assert cli.main(args) == 2
    line = _one_line(capsys.readouterr().err)
    assert line.startswith(f"pollchat {command}: unknown backend 'nonsense' (requested); "
                           "choose one of: ")
    assert "auto" in line


def test_chat_port_in_use_is_one_line():
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        status, out, err = pollchat_command("chat", "--port", str(port))
    assert status == 1
    assert _one_line(err) == (f"pollchat chat: cannot listen on 127.0.0.1:{port}: "
                              "Address already in use")


def test_chat_unresolvable_host_is_one_line():
    status, out, err = pollchat_command("chat", "--host", "no-such-host.invalid", "--port", "0")
    assert status == 1
    assert _one_line(err).startswith("pollchat chat: cannot listen on no-such-host.invalid:0: ")


@pytest.mark.parametrize("args, message", [
    (["chat", "--port", "70000"], "argument --port: port must be 0-65535, not 70000"),
    (["chat", "--port", "http"], "argument --port: not a port number: 'http'"),
    (["chat", "--max-line", "0"], "argument --max-line: must be at least 1, not 0"),
    (["run", "--bogus", "x.py"], "unrecognized arguments: --bogus"),
    (["backends", "--all"], "unrecognized arguments: --all"),
    (["frobnicate"], "invalid choice: 'frobnicate'"),
])
def test_usage_errors(capsys, args, message):
    with pytest.raises(SystemExit) as info:
        cli.main(args)
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert message in err
    assert "Traceback" not in err
    assert err.splitlines()[0].startswith("usage: pollchat")


# -- the select backend's cap on connections ----------------------------------------------------


def test_fd_cap_warning_only_when_the_backend_cannot_watch_every_fd(monkeypatch):
    limit = backends.FD_SETSIZE
    assert cli._fd_cap_warning("select", limit, "server", "clients") is None
    assert cli._fd_cap_warning("poll", limit * 10, "server", "clients") is None
    for soft in (limit + 1, None):  # None: unlimited
        warning = cli._fd_cap_warning("select", soft, "server", "clients")
        assert warning is not None
        assert f"cannot watch fds >= {limit}, so this server is capped at about " in warning
        assert f"although the open-file limit is {'unlimited' if soft is None else soft}" \
            in warning
    monkeypatch.setattr(backends, "available_backends", lambda: ["select"])
    assert cli._fd_cap_warning("select", None, "program", "connections").endswith(
        " connections although the open-file limit is unlimited; no backend without that "
        "cap is available here")


def test_run_warns_when_select_caps_the_program(tmp_path):
    if resource is None:
        pytest.skip("needs RLIMIT_NOFILE (POSIX)")
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    if hard != resource.RLIM_INFINITY and hard < 4096:
        pytest.skip(f"the hard open-file limit ({hard}) is below 4096")

    def soft_4096():
        resource.setrlimit(resource.RLIMIT_NOFILE, (4096, hard))

    script = tmp_path / "prog.py"
    script.write_text("print('ran')\n")
    args = ["run", "-q", "--no-raise-fd-limit"]
    status, out, err = pollchat_command(*args, "--backend", "select", str(script),
                                        preexec_fn=soft_4096)
    assert (status, out) == (0, "ran\n")
    assert re.fullmatch(r"pollchat: the select backend cannot watch fds >= 1024, so this "
                        r"program is capped at about 1,0\d\d connections although the "
                        r"open-file limit is 4096; --backend .* has no such cap\n", err), err
    status, out, err = pollchat_command(*args, "--backend", "poll", str(script),
                                        preexec_fn=soft_4096)
    assert (status, out, err) == (0, "ran\n", "")


# -- how pollchat run reads its arguments --------------------------------------------------------


@pytest.mark.parametrize("tokens, mine, program", [
    (["s.py", "-n", "-c", "X", "h:1"], ["s.py"], ["-n", "-c", "X", "h:1"]),
    (["--backend", "poll", "s.py", "--backend", "x"], ["--backend", "poll", "s.py"],
     ["--backend", "x"]),
    (["--backend=poll", "-q", "s.py", "-q"], ["--backend=poll", "-q", "s.py"], ["-q"]),
    (["-m", "pkg.mod", "-m", "x", "-v"], ["-m", "pkg.mod"], ["-m", "x", "-v"]),
    (["-mpkg.mod", "a"], ["-mpkg.mod"], ["a"]),
    (["--no-raise-fd-limit", "--", "-weird.py", "a"], ["--no-raise-fd-limit", "--", "-weird.py"],
     ["a"]),
    (["-q"], ["-q"], []),
    ([], [], []),
])
def test_run_splits_its_options_from_the_programs(tokens, mine, program):
    assert runprog.split_run_args(tokens) == (mine, program)
