"""Run one of CPython 3.11's own test files against pollchat's modules.

Usage: python conformance_runner.py TEST_FILE
                                    [--standin kqueue|devpoll|kqueue-libkqueue]
                                    [--divergence TEST_NAME=REASON ...]
                                    [--select PATTERN ...]

``pollchat.asyncore``/``pollchat.asynchat``/``pollchat.smtpd`` are put in
``sys.modules`` under the standard names first, so the test file's ``import
asyncore`` gets ours (on 3.12+ there is nothing else to get).  The file is loaded by path: it is
read from the Python 3.11 installation, never copied into this repository.
The backend comes from ``POLLCHAT_BACKEND``; ``--standin`` first installs a
stand-in kernel object for a backend Linux lacks: tests/standins.py's, or
with ``kqueue-libkqueue`` kqueue on libkqueue (tests/kqueue_libkqueue.py,
which finds the library as tests/libkqueue_build.py says).
``--divergence`` marks a CPython test as skipped, with its reason, where a
backend documents that it cannot do what the test asserts (README: "What
differs").  ``--select`` runs only the tests matching a pattern (unittest's
``-k``): the asyncore parts of a larger file such as test_ssl.py.  Exit
status 0 when every other test passed.
"""

import argparse
import importlib.util
import os
import sys
import unittest


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("test_file")
    parser.add_argument("--standin", choices=("kqueue", "devpoll", "kqueue-libkqueue"))
    parser.add_argument("--divergence", action="append", default=[],
                        metavar="TEST_NAME=REASON")
    parser.add_argument("--select", action="append", default=[], metavar="PATTERN")
    args = parser.parse_args()

    if args.standin:
        import pytest

        sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
        patcher = pytest.MonkeyPatch()
        if args.standin == "kqueue-libkqueue":
            import kqueue_libkqueue

            kqueue_libkqueue.install_libkqueue(patcher)
        else:
            import standins

            standins.install_standin(args.standin, patcher)

    import pollchat.asynchat
    import pollchat.asyncore
    import pollchat.smtpd

    sys.modules["asyncore"] = pollchat.asyncore
    sys.modules["asynchat"] = pollchat.asynchat
    sys.modules["smtpd"] = pollchat.smtpd

    spec = importlib.util.spec_from_file_location("cpython_conformance", args.test_file)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)

    for item in args.divergence:
        test_name, reason = item.split("=", 1)
        for case in vars(module).values():
            # Tests often live in mixins (BaseTestAPI), not the TestCase classes.
            if isinstance(case, type) and callable(vars(case).get(test_name)):
                setattr(case, test_name, unittest.skip(reason)(vars(case)[test_name]))

    from pollchat import get_loop

    argv = ["conformance", "-v"]
    for pattern in args.select:
        argv += ["-k", pattern]
    result = unittest.main(module=module, argv=argv, exit=False).result
    # Prove the tests ran on the backend we meant (a loop may be gone by now:
    # make one for an empty map and ask).
    probe = get_loop({})
    print(f"conformance backend: {probe.backend.name}", file=sys.stderr)
    kernel = type(getattr(probe.backend, "_selector", None))
    print(f"conformance kernel object: {kernel.__module__}.{kernel.__qualname__}",
          file=sys.stderr)
    probe.close()
    return 0 if result.wasSuccessful() and result.testsRun else 1


if __name__ == "__main__":
    sys.exit(main())
