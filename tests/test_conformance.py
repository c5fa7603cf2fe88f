"""CPython 3.11's own test_asyncore.py, test_asynchat.py and test_smtpd.py, and
the asyncore parts of test_ssl.py, run against pollchat on every backend, in a
subprocess each (they use the default map and module state).  On Python 3.12+
the files are read from the pyenv 3.11 installation, never copied here."""

import glob
import os
import re
import subprocess
import sys

import pytest

# What a backend cannot do by design (README, "What differs"): reported by
# the runner as skips with this reason, never silently.
DIVERGENCES = {
    "kqueue": ["test_handle_expt=kqueue has no filter for priority (out-of-band) data"],
    "asyncio": ["test_handle_expt=asyncio's add_reader() reports no priority (out-of-band) data"],
    "uvloop": ["test_handle_expt=uvloop's add_reader() reports no priority (out-of-band) data"],
}

RUNNER = os.path.join(os.path.dirname(os.path.abspath(__file__)), "conformance_runner.py")


def _cpython311_test_dir():
    here = os.path.join(os.path.dirname(os.__file__), "test")
    if sys.version_info[:2] == (3, 11) and os.path.exists(os.path.join(here, "test_asyncore.py")):
        return here
    root = os.environ.get("PYENV_ROOT", os.path.expanduser("~/.pyenv"))
    found = sorted(glob.glob(os.path.join(root, "versions", "3.11*", "lib", "python3.11", "test")))
    return found[-1] if found else None


TEST_DIR = _cpython311_test_dir()


@pytest.mark.timeout(300)
@pytest.mark.parametrize("suite", ["test_asyncore.py", "test_asynchat.py", "test_smtpd.py"])
def test_cpython_suite_passes(suite, backend_variant, libkqueue):
    if sys.version_info < (3, 11):
        pytest.skip("CPython 3.11's test files need the test.support of Python 3.11+ "
                    "(warnings_helper.import_deprecated); they run under 3.11, 3.12, 3.13")
    if TEST_DIR is None or not os.path.exists(os.path.join(TEST_DIR, suite)):
        pytest.skip(f"CPython 3.11's {suite} is not installed (looked in the running "
                    "Python and under $PYENV_ROOT/versions/3.11*)")
    backend_name, how = backend_variant
    env = dict(os.environ, POLLCHAT_BACKEND=backend_name, PYTHONWARNINGS="ignore")
    cmd = [sys.executable, RUNNER, os.path.join(TEST_DIR, suite)]
    if how == "standin":
        cmd += ["--standin", backend_name]
    elif how == "libkqueue":
        cmd += ["--standin", f"{backend_name}-libkqueue"]
        env["POLLCHAT_LIBKQUEUE"] = libkqueue.path  # the one found here: no second search
    for divergence in DIVERGENCES.get(backend_name, []):
        cmd += ["--divergence", divergence]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=280, check=False)
    tail = proc.stderr[-4000:]
    assert proc.returncode == 0, f"{suite} failed on {backend_name}:\n{tail}"
    assert f"conformance backend: {backend_name}" in proc.stderr
    if how == "libkqueue":  # and on libkqueue, not on the stand-in
        assert "conformance kernel object: kqueue_libkqueue.kqueue" in proc.stderr
    ran = re.search(r"Ran (\d+) tests?", proc.stderr)
    assert ran and int(ran.group(1)) >= 10, tail


# test_ssl.py's asyncore parts: the tests that run its AsyncoreEchoServer (a
# legacy dispatcher_with_send around an SSLSocket it wraps itself).
SSL_ASYNCORE_TESTS = ["test_asyncore_server"]


@pytest.mark.timeout(300)
def test_cpython_ssl_asyncore_parts_pass(backend_name, standin):
    if sys.version_info < (3, 11):
        pytest.skip("CPython 3.11's test files need the test.support of Python 3.11+ "
                    "(warnings_helper.import_deprecated); they run under 3.11, 3.12, 3.13")
    if TEST_DIR is None or not os.path.exists(os.path.join(TEST_DIR, "test_ssl.py")):
        pytest.skip("CPython 3.11's test_ssl.py is not installed (looked in the running "
                    "Python and under $PYENV_ROOT/versions/3.11*)")
    env = dict(os.environ, POLLCHAT_BACKEND=backend_name, PYTHONWARNINGS="ignore")
    cmd = [sys.executable, RUNNER, os.path.join(TEST_DIR, "test_ssl.py")]
    for name in SSL_ASYNCORE_TESTS:
        cmd += ["--select", name]
    if standin:
        cmd += ["--standin", backend_name]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=280, check=False)
    tail = proc.stderr[-4000:]
    assert proc.returncode == 0, f"test_ssl.py's asyncore parts failed on {backend_name}:\n{tail}"
    assert f"conformance backend: {backend_name}" in proc.stderr
    for name in SSL_ASYNCORE_TESTS:
        assert re.search(rf"^{name} \(.*?\.\.\. ok$", proc.stderr, re.M | re.S), tail
    ran = re.search(r"Ran (\d+) tests?", proc.stderr)
    assert ran and int(ran.group(1)) == len(SSL_ASYNCORE_TESTS), tail
