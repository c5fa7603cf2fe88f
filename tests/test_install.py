"""Legacy programs, unmodified: pollchat.install(), raise_fd_limit(), and
``python -m pollchat run`` on the running Python and on 3.12 and 3.13
(found under $PYENV_ROOT or on PATH), with a small legacy program written
for the test and with CPython 3.11's own smtpd.py."""

import glob
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import types
import warnings

import pytest
from helpers import Proc, default_sigint, nofile_limit_in_child, smtpd_roundtrip

import pollchat
from pollchat import _install

HERE = os.path.dirname(os.path.abspath(__file__))
LEGACY = os.path.join(HERE, "legacy_prog")
ECHO = os.path.join(LEGACY, "echo_legacy.py")
RUNNING = f"{sys.version_info[0]}.{sys.version_info[1]}"
WAIT = 20.0

try:
    import resource
except ImportError:  # pragma: no cover - not POSIX
    resource = None


def _pyenv_root():
    return os.environ.get("PYENV_ROOT") or os.path.expanduser("~/.pyenv")


def find_python(version):
    """An interpreter of ``version`` ('3.12'): pyenv's newest, else PATH."""
    found = sorted(glob.glob(os.path.join(_pyenv_root(), "versions", f"{version}.*", "bin",
                                          "python")))
    return found[-1] if found else shutil.which(f"python{version}")


def find_smtpd_311():
    """CPython 3.11's smtpd.py: the running stdlib's on 3.11, else pyenv's."""
    if RUNNING == "3.11":
        here = os.path.join(os.path.dirname(os.__file__), "smtpd.py")
        if os.path.exists(here):
            return here
    found = sorted(glob.glob(os.path.join(_pyenv_root(), "versions", "3.11*", "lib",
                                          "python3.11", "smtpd.py")))
    return found[-1] if found else None


SMTPD_311 = find_smtpd_311()

#: The running Python, plus 3.12 and 3.13 when the running one is another.
PYTHONS = [pytest.param("running", id=f"python{RUNNING}")] + [
    pytest.param(version, id=f"python{version}")
    for version in ("3.12", "3.13") if version != RUNNING]


@pytest.fixture(scope="session")
def pollchat_tree(tmp_path_factory):
    """A directory that makes this pollchat importable by another Python
    (PYTHONPATH): symlinks to the package and its backends subpackage, which
    in the source tree live apart (src/pollchat, src/backends)."""
    root = tmp_path_factory.mktemp("pollchat-import")
    package = root / "pollchat"
    package.mkdir()
    source = pollchat.__path__[0]
    for name in os.listdir(source):
        if name not in ("__pycache__", "backends"):
            (package / name).symlink_to(os.path.join(source, name))
    (package / "backends").symlink_to(pollchat.backends.__path__[0])
    return str(root)


@pytest.fixture
def python(request, pollchat_tree):
    """(interpreter, environment) for the parametrized Python version."""
    version = request.param
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    env.pop("POLLCHAT_BACKEND", None)
    if version == "running":
        return sys.executable, env
    exe = find_python(version)
    if exe is None:
        pytest.skip(f"no Python {version} here (looked under {_pyenv_root()}/versions and "
                    f"for python{version} on PATH)")
    env.update(PYTHONPATH=pollchat_tree, PYTHONDONTWRITEBYTECODE="1")
    return exe, env


def capture(args, **options):
    """subprocess.run() with text output captured and a bounded wait."""
    return subprocess.run(args, check=False, capture_output=True, text=True, timeout=WAIT,
                          **options)


def run_pollchat(python, *args, cwd=None, preexec_fn=default_sigint, timeout=WAIT):
    exe, env = python
    proc = Proc([exe, "-m", "pollchat", *args], env, cwd=cwd, preexec_fn=preexec_fn)
    return proc.finish(timeout)


def info_of(stdout):
    match = re.search(r"^INFO (.*)$", stdout, re.M)
    assert match, stdout
    return json.loads(match.group(1))


def pollchat_lines(stderr):
    return [line for line in stderr.splitlines() if line.startswith("pollchat:")]


# -- install() in this process ------------------------------------------------------------------


@pytest.fixture
def clean_modules(monkeypatch):
    """No asyncore/asynchat in sys.modules during the test; everything
    install() changed is undone afterwards."""
    for name in ("asyncore", "asynchat"):
        monkeypatch.delitem(sys.modules, name, raising=False)
    yield
    _install.uninstall()


def test_install_makes_imports_give_pollchat_modules(clean_modules):
    import pollchat.asynchat
    import pollchat.asyncore

    assert not _install.installed()
    pollchat.install()
    pollchat.install()  # idempotent
    assert _install.installed()
    assert sys.meta_path.count(_install._finder) == 1
    import asynchat
    import asyncore
    from asyncore import dispatcher

    assert asyncore is pollchat.asyncore
    assert asynchat is pollchat.asynchat
    assert dispatcher is pollchat.asyncore.dispatcher
    # Even after a test helper drops the entry, the import finds ours again.
    del sys.modules["asyncore"]
    import importlib

    assert importlib.import_module("asyncore") is pollchat.asyncore
    _install.uninstall()
    assert "asyncore" not in sys.modules and _install._finder not in sys.meta_path


def _fake_foreign_asyncore(monkeypatch, path="/opt/vendor/asyncore.py"):
    fake = types.ModuleType("asyncore")
    fake.__file__ = path
    importer = types.ModuleType("legacy_app.server")
    importer.asyncore = fake
    monkeypatch.setitem(sys.modules, "asyncore", fake)
    monkeypatch.setitem(sys.modules, "legacy_app.server", importer)
    return fake


def test_install_refuses_another_asyncore_already_imported(clean_modules, monkeypatch):
    fake = _fake_foreign_asyncore(monkeypatch)
    with pytest.raises(pollchat.ModuleAlreadyImportedError) as info:
        pollchat.install()
    error = info.value
    assert isinstance(error, RuntimeError)
    assert error.name == "asyncore" and error.origin == "/opt/vendor/asyncore.py"
    assert "legacy_app.server" in error.importers
    text = str(error)
    assert "another asyncore module" in text and "/opt/vendor/asyncore.py" in text
    assert "imported by legacy_app.server" in text
    assert "before anything imports asyncore" in text and "pollchat run" in text
    assert sys.modules["asyncore"] is fake  # nothing changed
    assert "asynchat" not in sys.modules


def test_install_force_replaces_with_a_warning(clean_modules, monkeypatch):
    import pollchat.asyncore

    _fake_foreign_asyncore(monkeypatch)
    with pytest.warns(RuntimeWarning, match="replacing the asyncore module already imported"):
        pollchat.install(force=True)
    assert sys.modules["asyncore"] is pollchat.asyncore


@pytest.mark.skipif(sys.version_info >= (3, 12), reason="the standard library has no "
                    "asyncore on Python 3.12+ (the fake-module tests cover the check)")
def test_install_after_the_stdlib_asyncore_says_so_clearly():
    code = ("import warnings; warnings.simplefilter('ignore')\n"
            "import asynchat\n"  # imports the stdlib asyncore too
            "import pollchat\n"
            "try:\n"
            "    pollchat.install()\n"
            "except pollchat.ModuleAlreadyImportedError as exc:\n"
            "    print(exc)\n"
            "else:\n"
            "    print('no error')\n")
    out = capture([sys.executable, "-c", code]).stdout
    assert "the standard library's asyncore was already imported" in out
    assert os.path.dirname(os.__file__) in out  # where it came from
    assert "imported by asynchat" in out


@pytest.mark.skipif(sys.version_info >= (3, 12), reason="the standard library has no "
                    "asyncore or smtpd on Python 3.12+")
def test_install_first_shadows_the_stdlib_modules_for_everyone():
    code = ("import warnings; warnings.simplefilter('ignore')\n"
            "import pollchat; pollchat.install()\n"
            "import asyncore, asynchat, smtpd\n"
            "print(asyncore.__name__, asynchat.__name__, smtpd.asyncore.__name__,\n"
            "      smtpd.asynchat.async_chat.__module__)\n")
    out = capture([sys.executable, "-c", code])
    assert out.stdout.split() == ["pollchat.asyncore", "pollchat.asynchat",
                                  "pollchat.asyncore", "pollchat.chat"], out.stderr


@pytest.mark.skipif(not hasattr(warnings, "_deprecated"),
                    reason="warnings._deprecated is new in Python 3.11")
def test_install_lets_the_asyncore_trio_past_its_removal_deadline(clean_modules):
    deprecated = warnings._deprecated
    pollchat.install()
    assert warnings._deprecated is not deprecated
    for version in ((3, 12, 0, "final", 0), (3, 13, 0, "final", 0)):
        with pytest.warns(DeprecationWarning, match="'smtpd' is deprecated"):
            warnings._deprecated("smtpd", remove=(3, 12), _version=version)
    # Other deadlines are untouched: past them, still an error.
    with pytest.raises(RuntimeError, match="slated for removal"):
        warnings._deprecated("cgi", remove=(3, 13), _version=(3, 13, 0, "final", 0))
    with pytest.warns(DeprecationWarning):
        warnings._deprecated("cgi", remove=(3, 13), _version=(3, 11, 0, "final", 0))
    pollchat.install()
    assert warnings._deprecated.__wrapped__ is deprecated  # wrapped once
    _install.uninstall()
    assert warnings._deprecated is deprecated


# -- raise_fd_limit() ------------------------------------------------------------------------


@pytest.mark.skipif(resource is None, reason="no resource module (not POSIX)")
def test_raise_fd_limit_raises_soft_to_hard_in_a_subprocess():
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    if hard != resource.RLIM_INFINITY and hard <= 300:
        pytest.skip(f"the hard open-file limit is only {hard}")
    code = ("import resource, pollchat\n"
            "print(pollchat.raise_fd_limit(), pollchat.raise_fd_limit(),\n"
            "      resource.getrlimit(resource.RLIMIT_NOFILE))\n")
    proc = capture([sys.executable, "-c", code], preexec_fn=nofile_limit_in_child(256))
    first, second, now = re.findall(r"\(([^)]*)\)", proc.stdout)
    soft_now, hard_now = (int(x) for x in now.split(", "))
    assert first == f"256, {soft_now}"
    assert second == f"{soft_now}, {soft_now}"  # already raised: a no-op
    assert hard == resource.RLIM_INFINITY or soft_now == hard_now == hard


@pytest.mark.skipif(resource is None, reason="no resource module (not POSIX)")
def test_raise_fd_limit_settles_for_what_the_kernel_accepts(monkeypatch):
    inf = resource.RLIM_INFINITY
    limits = {"soft": 256, "hard": inf}
    refused_above = 100_000  # like macOS, or Linux past fs.nr_open

    def getrlimit(which):
        return limits["soft"], limits["hard"]

    def setrlimit(which, pair):
        soft, hard = pair
        if soft == inf or soft > refused_above:
            raise ValueError("not allowed")
        limits["soft"] = soft

    monkeypatch.setattr(resource, "getrlimit", getrlimit)
    monkeypatch.setattr(resource, "setrlimit", setrlimit)
    old, new = pollchat.raise_fd_limit()
    assert old == 256 and 256 < new <= refused_above
    assert new == limits["soft"]
    # Never lowers, and an unlimited soft limit is left alone.
    limits["soft"] = inf
    assert pollchat.raise_fd_limit() == (None, None)


@pytest.mark.skipif(resource is None, reason="no resource module (not POSIX)")
def test_raise_fd_limit_is_a_no_op_at_the_hard_limit(monkeypatch):
    monkeypatch.setattr(resource, "getrlimit", lambda which: (4096, 4096))
    monkeypatch.setattr(resource, "setrlimit", lambda *a: pytest.fail("setrlimit called"))
    assert pollchat.raise_fd_limit() == (4096, 4096)


# -- pollchat run: the legacy echo program ---------------------------------------------------


@pytest.mark.timeout(90)
@pytest.mark.parametrize("python", PYTHONS, indirect=True)
def test_run_serves_a_legacy_program_and_keeps_its_exit_code(python):
    exe, env = python
    proc = Proc([exe, "-m", "pollchat", "run", "--backend", "poll", ECHO,
                 "--lines", "2", "--exit-code", "7"], env)
    try:
        port = int(proc.wait_for(r"^PORT (\d+)").group(1))
        with socket.create_connection(("127.0.0.1", port), timeout=WAIT) as client:
            client.sendall(b"first\r\nsecond\n")
            received = b""
            while received.count(b"\n") < 2:
                data = client.recv(4096)
                assert data, received
                received += data
        assert received == b"echo: first\necho: second\n"
        status, out, err = proc.finish()
    finally:
        proc.kill()
    assert status == 7, err
    assert "SERVED 2" in out
    info = info_of(out)
    assert info["argv"] == [ECHO, "--lines", "2", "--exit-code", "7"]
    assert info["name"] == "__main__" and info["main_is_me"]
    assert info["file"] == ECHO
    assert info["path0"] == os.path.dirname(os.path.realpath(ECHO))
    assert info["asyncore"] == "pollchat.asyncore" and info["asynchat"] == "pollchat.asynchat"
    assert info["backend"] == "poll" and info["env_backend"] == "poll"
    assert pollchat_lines(err) == [pollchat_lines(err)[0]]
    assert "on the poll backend (--backend)" in err
    assert "Traceback" not in err


@pytest.mark.parametrize("python", PYTHONS, indirect=True)
def test_run_passes_the_program_every_argument_after_it(python):
    status, out, err = run_pollchat(python, "run", "-q", ECHO, "--exit-code", "3",
                                    "--info-only", "-m", "x", "--backend", "bogus", "--",
                                    "-q")
    assert status == 3, err
    assert info_of(out)["argv"] == [ECHO, "--exit-code", "3", "--info-only", "-m", "x",
                                    "--backend", "bogus", "--", "-q"]
    assert pollchat_lines(err) == []  # -q


@pytest.mark.parametrize("python", PYTHONS, indirect=True)
def test_run_module_as_python_dash_m(python):
    status, out, err = run_pollchat(python, "run", "-m", "echo_legacy", "--info-only",
                                    cwd=LEGACY)
    assert status == 0, err
    info = info_of(out)
    assert info["argv"] == [ECHO, "--info-only"]  # argv[0]: the module's file, as -m
    assert info["name"] == "__main__"
    assert info["path0"] == LEGACY
    assert info["asyncore"] == "pollchat.asyncore"


@pytest.mark.parametrize("python", PYTHONS, indirect=True)
def test_run_prints_the_programs_traceback_without_pollchats_frames(python):
    status, out, err = run_pollchat(python, "run", "-q", ECHO, "--crash")
    assert status == 1
    assert "Traceback (most recent call last):" in err
    assert f'File "{ECHO}", line' in err and "in explode" in err
    assert "RuntimeError: legacy program crashed on purpose" in err
    assert "cli.py" not in err and "runpy" not in err, err
    first_frame = err.split("Traceback (most recent call last):\n", 1)[1].splitlines()[0]
    assert first_frame.strip().startswith(f'File "{ECHO}"'), err


@pytest.mark.parametrize("python", PYTHONS, indirect=True)
def test_run_sys_exit_with_a_message(python):
    status, out, err = run_pollchat(python, "run", "-q", ECHO, "--bogus")
    assert status == 1
    assert err.strip() == "echo_legacy: unknown argument '--bogus'"


@pytest.mark.skipif(os.name != "posix", reason="signals")
def test_run_uncaught_ctrl_c_ends_the_process_by_sigint():
    python = (sys.executable, dict(os.environ))
    status, out, err = run_pollchat(python, "run", "-q", ECHO, "--interrupt")
    assert status == -signal.SIGINT, err
    assert err.rstrip().endswith("KeyboardInterrupt")
    assert "cli.py" not in err


@pytest.mark.skipif(resource is None, reason="no resource module (not POSIX)")
@pytest.mark.parametrize("python", PYTHONS, indirect=True)
def test_run_raises_the_open_file_limit_first_and_says_so(python):
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    if hard != resource.RLIM_INFINITY and hard <= 600:
        pytest.skip(f"the hard open-file limit is only {hard}")
    status, out, err = run_pollchat(python, "run", ECHO, "--info-only",
                                    preexec_fn=nofile_limit_in_child(512))
    assert status == 0, err
    [line] = pollchat_lines(err)
    raised = info_of(out)["nofile"]
    assert raised > 512
    assert line.endswith(f"raised the soft open-file limit from 512 to {raised}")
    assert "backend (auto, unless the program picks one; use_poll=True gets it too)" in line

    status, out, err = run_pollchat(python, "run", "--no-raise-fd-limit", ECHO, "--info-only",
                                    preexec_fn=nofile_limit_in_child(512))
    assert status == 0, err
    assert info_of(out)["nofile"] == 512
    [line] = pollchat_lines(err)
    assert "open-file limit left at 512" in line


def test_run_takes_the_backend_from_the_environment():
    env = dict(os.environ, POLLCHAT_BACKEND="select")
    status, out, err = run_pollchat((sys.executable, env), "run", ECHO, "--info-only")
    assert status == 0, err
    assert info_of(out)["backend"] == "select"
    assert "on the select backend ($POLLCHAT_BACKEND)" in err


@pytest.mark.parametrize("args, message", [
    (["--backend", "bogus", ECHO], "pollchat run: unknown backend 'bogus' (requested); "
                                   "choose one of: "),
    (["--backend", "kqueue", ECHO], None),
    (["no-such-file.py"], "pollchat run: can't open file "),
    (["-m", "no_such_module_here"], "pollchat run: "),
    ([], "pollchat run: give the program to run: SCRIPT or -m MODULE"),
])
def test_run_errors_are_one_line(args, message):
    if message is None:  # kqueue: unavailable here, or a real backend
        if "kqueue" in pollchat.backends.available_backends():
            pytest.skip("kqueue is available here")
        message = "pollchat run: backend 'kqueue' (requested) is not available here: "
    env = dict(os.environ)
    env.pop("POLLCHAT_BACKEND", None)
    status, out, err = run_pollchat((sys.executable, env), "run", *args)
    lines = [line for line in err.splitlines() if not line.startswith("pollchat: running")]
    assert status in (1, 2)
    assert len(lines) == 1, err
    assert lines[0].startswith(message), err
    assert "Traceback" not in err


def test_run_refuses_a_bad_backend_in_the_environment():
    env = dict(os.environ, POLLCHAT_BACKEND="nonsense")
    status, out, err = run_pollchat((sys.executable, env), "run", ECHO, "--info-only")
    assert status == 2
    assert err.strip().startswith("pollchat run: unknown backend 'nonsense' "
                                  "(from $POLLCHAT_BACKEND)")


# -- pollchat run: CPython 3.11's smtpd.py ----------------------------------------------------


@pytest.fixture(params=["in-place", "copied"])
def smtpd_311(request, tmp_path):
    """CPython 3.11's smtpd.py, unmodified: run where it is (as the issue's
    command does: its directory, 3.11's library, then comes first on
    sys.path, as under python itself), or from a directory of its own."""
    if SMTPD_311 is None:
        pytest.skip(f"CPython 3.11's smtpd.py not found (the running Python's library on "
                    f"3.11, else {_pyenv_root()}/versions/3.11*/lib/python3.11/smtpd.py)")
    if request.param == "in-place":
        return SMTPD_311
    copy = tmp_path / "smtpd.py"
    shutil.copyfile(SMTPD_311, copy)
    return str(copy)


@pytest.mark.timeout(120)
@pytest.mark.parametrize("python", PYTHONS, indirect=True)
def test_run_cpython_311_smtpd_unmodified(python, smtpd_311):
    exe, env = python
    newer = capture([exe, "-c", "import sys; print(sys.version_info >= (3, 11))"]).stdout
    if newer.strip() != "True":
        pytest.skip("3.11's smtpd.py imports warnings._deprecated, new in Python 3.11 "
                    "(test_run_stdlib_smtpd_module covers this Python's own smtpd)")
    err = smtpd_roundtrip([exe, "-m", "pollchat", "run", smtpd_311, "-n", "-c",
                            "DebuggingServer"], env)
    assert f"pollchat: running {smtpd_311} on the " in err


@pytest.mark.parametrize("python", [p for p in PYTHONS if p.values[0] != "running"],
                         indirect=True)
def test_smtpd_311_does_not_run_without_pollchat_on_312_plus(python, tmp_path):
    exe, env = python
    if SMTPD_311 is None:
        pytest.skip("CPython 3.11's smtpd.py not found")
    copy = tmp_path / "smtpd.py"
    shutil.copyfile(SMTPD_311, copy)
    proc = capture([exe, str(copy), "-n", "-c", "DebuggingServer", "127.0.0.1:1"], env=env)
    assert proc.returncode == 1
    assert "RuntimeError: 'smtpd' was slated for removal" in proc.stderr \
        or "RuntimeError: '__main__' was slated for removal" in proc.stderr, proc.stderr


@pytest.mark.timeout(120)
@pytest.mark.skipif(sys.version_info >= (3, 12), reason="the standard library has no "
                    "smtpd on Python 3.12+ (test_run_cpython_311_smtpd_unmodified covers it)")
def test_run_stdlib_smtpd_module():
    env = dict(os.environ, PYTHONUNBUFFERED="1", PYTHONWARNINGS="ignore")
    err = smtpd_roundtrip([sys.executable, "-m", "pollchat", "run", "-m", "smtpd", "-n",
                            "-c", "DebuggingServer"], env)
    assert "pollchat: running smtpd on the " in err
