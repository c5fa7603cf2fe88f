"""pollchat.smtpd as a module and a command: its namespace against CPython
3.11's smtpd, ``python -m pollchat.smtpd`` (on this Python and on 3.12 and
3.13, where the standard library has no smtpd), and what install() does
with ``import smtpd``."""

from __future__ import annotations

import json
import os
import signal
import smtplib
import socket
import subprocess
import sys
import textwrap
import time

import pytest
from test_install import PYTHONS, WAIT, Proc, find_python, pollchat_tree, python  # noqa: F401

import pollchat
from pollchat import smtpd


@pytest.fixture
def interpreter(python):  # noqa: F811 (the fixture imported above)
    """(interpreter, environment): test_install's ``python`` fixture, for
    the version parametrized as ``python``."""
    return python


PYTHON311 = sys.executable if sys.version_info[:2] == (3, 11) else find_python("3.11")

# What 3.11's module has and ours deliberately lacks: its deprecation
# machinery (pollchat.smtpd is not deprecated), and the registry the
# warning it issued at import left behind.
DEPRECATION_ONLY = {"_DEPRECATION_MSG", "_deprecated", "__warningregistry__"}
# Instance attributes of SMTPChannel that 3.11 has not: the per-session copy
# of command_size_limits and the incremental decoder (decode_data=True).
CHANNEL_EXTRAS = {"command_size_limits", "_decoder", "_undecodable"}
# Public names 3.11 has not, each a documented extension: the STARTTLS
# command (RFC 3207), a method because commands dispatch to smtp_<VERB>.
CLASS_EXTRAS = {"SMTPChannel": {"smtp_STARTTLS"}}

DESCRIBE = textwrap.dedent("""\
    import json, socket, sys, types, warnings
    warnings.simplefilter("ignore")
    if sys.argv[1] == "stdlib":
        import asynchat, smtpd
    else:
        from pollchat import asynchat, smtpd

    def kind(value):
        if isinstance(value, types.ModuleType):
            return "module " + value.__name__.rpartition(".")[2]
        if isinstance(value, type):
            return "class"
        if callable(value):
            return "function"
        return type(value).__name__

    server = smtpd.SMTPServer(("127.0.0.1", 0), None, decode_data=sys.argv[2] == "decode")
    a, b = socket.socketpair()
    c, d = socket.socketpair()
    channel = smtpd.SMTPChannel(server, a, "peer", decode_data=server._decode_data)
    b.sendall(b"EHLO x\\r\\nMAIL FROM:<a@b>\\r\\nRCPT TO:<c@d>\\r\\n")
    channel.handle_read()

    class Plain(asynchat.async_chat):  # the same reads and replies, no SMTP
        def collect_incoming_data(self, data):
            pass

        def found_terminator(self):
            self.push(b"250 OK\\r\\n")

    plain = Plain(c)
    plain.set_terminator(b"\\r\\n")
    d.sendall(b"EHLO x\\r\\nMAIL FROM:<a@b>\\r\\nRCPT TO:<c@d>\\r\\n")
    plain.handle_read()
    print(json.dumps({
        "module": {name: kind(getattr(smtpd, name)) for name in dir(smtpd)},
        "constants": {name: getattr(smtpd, name) for name in
                      ("NEWLINE", "COMMASPACE", "DATA_SIZE_DEFAULT", "__version__",
                       "__all__")},
        "classes": {name: sorted(n for n in vars(getattr(smtpd, name))
                                 if not n.startswith("__"))
                    for name in ("SMTPChannel", "SMTPServer", "DebuggingServer",
                                 "PureProxy", "Options", "Devnull")},
        "channel": sorted(set(vars(channel)) - set(vars(plain))),
        "server": sorted(vars(server)),
    }))
    """)


def describe(python_exe, impl, mode):
    env = dict(os.environ, PYTHONWARNINGS="ignore")
    proc = subprocess.run([python_exe, "-c", DESCRIBE, impl, mode], env=env,
                          capture_output=True, text=True, timeout=WAIT, check=False)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


@pytest.mark.parametrize("mode", ["bytes", "decode"])
def test_namespace_matches_cpython_311(mode):
    if PYTHON311 is None:
        pytest.skip("no Python 3.11 here (the reference smtpd): looked under pyenv and PATH")
    theirs = describe(PYTHON311, "stdlib", mode)
    ours = describe(sys.executable, "pollchat", mode)
    their_names = set(theirs["module"]) - DEPRECATION_ONLY
    assert their_names <= set(ours["module"])
    assert all(name.startswith("_") for name in set(ours["module"]) - their_names)
    for name in their_names:
        assert ours["module"][name] == theirs["module"][name], name
    assert ours["constants"] == theirs["constants"]
    for name, their_attributes in theirs["classes"].items():
        extras = set(ours["classes"][name]) - set(their_attributes) \
            - CLASS_EXTRAS.get(name, set())
        assert set(their_attributes) <= set(ours["classes"][name]), name
        assert all(attribute.startswith("_") for attribute in extras), (name, extras)
    assert set(ours["channel"]) - set(theirs["channel"]) == CHANNEL_EXTRAS
    assert set(theirs["channel"]) <= set(ours["channel"])
    server_extras = set(ours["server"]) - set(theirs["server"])
    assert all(name.startswith("_") for name in server_extras), server_extras


def test_importing_pollchat_smtpd_warns_nothing():
    code = ("import warnings; warnings.simplefilter('error')\n"
            "import pollchat.smtpd\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=WAIT, check=False)
    assert proc.returncode == 0, proc.stderr


# -- python -m pollchat.smtpd --------------------------------------------------------------


def _start(command, env, cwd=None):
    """Start an smtpd command line on a free port; (Proc, port) once it
    accepts connections (probed by connecting: that session just ends)."""
    for _attempt in range(3):
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
        proc = Proc([*command, f"127.0.0.1:{port}"], env, cwd=cwd)
        deadline = time.monotonic() + WAIT
        while proc.popen.poll() is None and time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=WAIT).close()
                return proc, port
            except OSError:
                time.sleep(0.05)
        status, out, err = proc.finish()
        if "Address already in use" not in err:
            pytest.fail(f"smtpd did not start (status {status}):\n{err}")
    pytest.fail("no free port after 3 attempts")


def _stop(proc):
    proc.popen.send_signal(signal.SIGINT)
    status, out, err = proc.finish()
    assert status == 0, err
    assert "Traceback" not in err, err
    return out


MESSAGE = b"From: alice@example.com\r\nSubject: hi\r\n\r\nh\xc3\xa9llo\r\n.dot\r\n"


def _debugging_server_output(exe, module, env, interrupt=True):
    """What ``-c DebuggingServer`` prints for MESSAGE.  ``interrupt``: stop
    it with Ctrl-C and check it exits cleanly; else kill it (3.11's own
    smtpd waits up to 30 s in select(), so a SIGINT that arrives just before
    the call is only seen when it returns)."""
    proc, port = _start([exe, "-m", module, "-n", "-d", "-c", "DebuggingServer"], env)
    try:
        with smtplib.SMTP("127.0.0.1", port, timeout=WAIT) as client:
            client.sendmail("alice@example.com", ["bob@example.com"], MESSAGE,
                            mail_options=["BODY=8BITMIME"])
        proc.wait_for(r"------------ END MESSAGE ------------")
        if interrupt:
            return _stop(proc)
        proc.kill()
        return "".join(proc.out)
    finally:
        proc.kill()


EXPECTED_OUTPUT = """\
---------- MESSAGE FOLLOWS ----------
mail options: ['BODY=8BITMIME']
b'From: alice@example.com'
b'Subject: hi'
b'X-Peer: 127.0.0.1'
b''
b'h\\xc3\\xa9llo'
b'.dot'
------------ END MESSAGE ------------
"""


@pytest.mark.timeout(120)
@pytest.mark.parametrize("python", PYTHONS, indirect=True)
def test_debugging_server_prints_a_message(interpreter):
    exe, env = interpreter
    assert _debugging_server_output(exe, "pollchat.smtpd", env) == EXPECTED_OUTPUT


@pytest.mark.timeout(120)
def test_debugging_server_output_is_cpython_311s():
    if PYTHON311 is None:
        pytest.skip("no Python 3.11 here (the reference smtpd): looked under pyenv and PATH")
    env = dict(os.environ, PYTHONUNBUFFERED="1", PYTHONWARNINGS="ignore")
    assert _debugging_server_output(PYTHON311, "smtpd", env, interrupt=False) == \
        EXPECTED_OUTPUT


@pytest.mark.timeout(120)
@pytest.mark.parametrize("python", PYTHONS, indirect=True)
def test_user_class_importing_smtpd_with_a_size_limit(interpreter, tmp_path):
    """-c module.Class: the module's `import smtpd` works on 3.12+ too."""
    exe, env = interpreter
    (tmp_path / "mysink.py").write_text(textwrap.dedent("""\
        import smtpd

        class Sink(smtpd.SMTPServer):
            def process_message(self, peer, mailfrom, rcpttos, data, **kwargs):
                print("SINK", mailfrom, rcpttos, len(data), smtpd.asyncore.__name__)
        """))
    proc, port = _start([exe, "-m", "pollchat.smtpd", "-n", "-d", "-s", "1000", "-c",
                         "mysink.Sink"], env, cwd=str(tmp_path))
    try:
        with smtplib.SMTP("127.0.0.1", port, timeout=WAIT) as client:
            client.ehlo()
            assert client.esmtp_features["size"] == "1000"
            with pytest.raises(smtplib.SMTPSenderRefused) as refused:
                client.sendmail("a@example.com", ["b@example.com"], b"x" * 5000)
            assert refused.value.smtp_code == 552
            client.sendmail("a@example.com", ["b@example.com"], b"small")
        proc.wait_for(r"^SINK")
        out = _stop(proc)
    finally:
        proc.kill()
    assert out == "SINK a@example.com ['b@example.com'] 5 pollchat.asyncore\n"


@pytest.mark.parametrize("args, status, stream, text", [
    (["--help"], 0, "err", "Usage: "),
    (["-V"], 0, "out", "Python SMTP proxy version 0.3\n"),
    (["-x"], 1, "err", "option -x not recognized"),
    (["-s", "big"], 1, "err", "Invalid size: big\n"),
    (["nocolon"], 1, "err", "Bad local spec: nocolon"),
    (["localhost:port"], 1, "err", "Bad local port: localhost:port"),
    (["a:1", "b"], 1, "err", "Bad remote spec: b"),
    (["a:1", "b:2", "c:3"], 1, "err", "Invalid arguments: a:1, b:2, c:3"),
    (["-n", "-c", "NoSuchServer", "127.0.0.1:0"], 1, "err",
     "cannot use -c NoSuchServer: module 'pollchat.smtpd' has no attribute 'NoSuchServer'"),
    (["-n", "-c", "no_such_module.Server", "127.0.0.1:0"], 1, "err",
     "cannot use -c no_such_module.Server: No module named 'no_such_module'"),
])
def test_command_line_mistakes(args, status, stream, text):
    proc = subprocess.run([sys.executable, "-m", "pollchat.smtpd", *args], capture_output=True,
                          text=True, timeout=WAIT, check=False)
    assert proc.returncode == status, proc.stderr
    output = proc.stdout if stream == "out" else proc.stderr
    assert text in output
    assert "Traceback" not in proc.stderr


def test_usage_text_names_every_option():
    usage = smtpd.__doc__ % {"program": "smtpd.py", "__version__": smtpd.__version__}
    for option in ("--nosetuid", "-n", "--version", "-V", "--class", "-c", "--size", "-s",
                   "--smtputf8", "-u", "--debug", "-d", "--help", "-h", "--tls-cert",
                   "--tls-key", "--require-tls"):
        assert f"\n    {option}\n" in usage or f"\n    {option} " in usage, option


# -- install() and import smtpd ---------------------------------------------------------------

SHOW_SMTPD = ("import warnings, sys; warnings.simplefilter('ignore')\n"
              "import pollchat\n"
              "pollchat.install(force='force' in sys.argv)\n"
              "import smtpd\n"
              "print(smtpd.__name__, smtpd.asyncore.__name__)\n")


@pytest.mark.parametrize("python", [p for p in PYTHONS if p.values[0] != "running"]
                         + [pytest.param("running", id="running")], indirect=True)
@pytest.mark.parametrize("force", [False, True])
def test_install_gives_smtpd_where_the_interpreter_has_none(interpreter, force):
    exe, env = interpreter
    version = subprocess.run([exe, "-c", "import sys; print(sys.version_info[:2] >= (3, 12))"],
                             capture_output=True, text=True, timeout=WAIT, check=True).stdout
    proc = subprocess.run([exe, "-c", SHOW_SMTPD] + (["force"] if force else []), env=env,
                          capture_output=True, text=True, timeout=WAIT, check=False)
    assert proc.returncode == 0, proc.stderr
    if force or version.strip() == "True":
        assert proc.stdout.split() == ["pollchat.smtpd", "pollchat.asyncore"]
    else:  # 3.11: the standard library's smtpd stays, on pollchat's asyncore
        assert proc.stdout.split() == ["smtpd", "pollchat.asyncore"]


@pytest.mark.skipif(sys.version_info < (3, 12), reason="the standard library has smtpd "
                    "before 3.12 (test_install_gives_smtpd_... covers that case)")
def test_no_smtpd_without_install_and_after_uninstall():
    from pollchat import _install

    with pytest.raises(ModuleNotFoundError):
        import smtpd as _  # noqa: F401
    pollchat.install()
    try:
        import smtpd as installed

        assert installed is smtpd
    finally:
        _install.uninstall()
    assert "smtpd" not in sys.modules
    with pytest.raises(ModuleNotFoundError):
        import smtpd as _  # noqa: F401,F811


@pytest.mark.skipif(sys.version_info >= (3, 12), reason="needs the standard library's smtpd")
def test_install_force_replaces_an_imported_stdlib_smtpd():
    code = ("import warnings\n"
            "with warnings.catch_warnings():\n"
            "    warnings.simplefilter('ignore', DeprecationWarning)\n"
            "    import smtpd\n"
            "import pollchat\n"
            "with warnings.catch_warnings(record=True) as caught:\n"
            "    warnings.simplefilter('always')\n"
            "    pollchat.install(force=True)\n"
            "import sys\n"
            "print(sys.modules['smtpd'].__name__)\n"
            "print(sorted(str(w.message).split(' module')[0] for w in caught))\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=WAIT, check=False)
    assert proc.returncode == 0, proc.stderr
    name, warned = proc.stdout.splitlines()
    assert name == "pollchat.smtpd"
    assert "replacing the smtpd" in warned and "replacing the asyncore" in warned
