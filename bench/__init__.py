"""pollchat's benchmark suite: pollchat against CPython 3.11's asyncore/asynchat,
asyncio and uvloop on the same workloads, in the same run.

Run ``python -m bench --quick`` (smoke test) or ``python -m bench`` (full);
see :mod:`bench.run` and bench/README.md.
"""
