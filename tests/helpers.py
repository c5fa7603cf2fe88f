"""Small helpers shared by the loop-level tests."""

import time


def run_until(loop, predicate, timeout=10.0, between=None, step=0.01):
    """Run passes of ``loop`` (each waiting up to ``step`` seconds, then
    calling ``between()`` if given) until ``predicate()`` is true; fail after
    ``timeout`` seconds (every wait in the suite is bounded)."""
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached in time"
        loop.run_once(step)
        if between is not None:
            between()
