"""Run one of CPython 3.11's own test files against pollchat's modules.

Usage: python conformance_runner.py TEST_FILE [--standin kqueue|devpoll]
                                    [--divergence TEST_NAME=REASON ...]
                                    [--select PATTERN ...]

``pollchat.asyncore``/``pollchat.asynchat`` are put in ``sys.modules`` under
the standard names first, so the test file's ``import asyncore`` gets ours
(on 3.12+ there is nothing else to get).  The file is loaded by path: it is
read from the Python 3.11 installation, never copied into this repository.
The backend comes from ``POLLCHAT_BACKEND``; ``--standin`` first installs a
stand-in kernel object (tests/standins.py) for a backend Linux lacks.
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
    parser.add_argument("--standin", choices=("kqueue", "devpoll"))
    parser.add_argument("--divergence", action="append", default=[],
                        metavar="TEST_NAME=REASON")
    parser.add_argument("--select", action="append", default=[], metavar="PATTERN")
    args = parser.parse_args()

    if args.standin:
        import pytest

        sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
        import standins

        patcher = pytest.MonkeyPatch()
        getattr(standins, f"install_{args.standin}")(patcher)

    import pollchat.asynchat
    import pollchat.asyncore

    sys.modules["asyncore"] = pollchat.asyncore
    sys.modules["asynchat"] = pollchat.asynchat

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
    probe.close()
    return 0 if result.wasSuccessful() and result.testsRun else 1


if __name__ == "__main__":
    sys.exit(main())
