"""Every core: one master process, N worker processes running the program.

``python -m pollchat run --workers N SCRIPT`` and :func:`serve` start a
:class:`Master`, which forks N workers (before any thread exists; no
``multiprocessing``, whose start method varies across Python versions), each
running the program, and then only supervises.  It never runs an event loop
of its own; it waits for signals, for its children and for their requests:

* **Shared listeners.** A TCP socket the program binds through
  ``dispatcher.bind()`` is bound once, by the master, and handed to every
  worker (see :mod:`pollchat._worker`); the workers accept from one kernel
  queue.  The master keeps a copy open, so a worker that exits or restarts
  never closes the listener: waiting connections stay queued for the others,
  and none is refused.  Why not ``SO_REUSEPORT``: docs/design.md.
* **Restarts.** A worker that dies is restarted.  One that dies within
  :data:`READY_AFTER` seconds of starting *died at start*; it is restarted
  after a back-off that doubles each time (:data:`BACKOFF_FIRST` up to
  :data:`BACKOFF_MAX`), and if every worker died at start the master gives up
  (status :data:`EXIT_GAVE_UP`): a program that crashes at start is not
  restarted in a loop.
* **Stop.** SIGTERM or SIGINT: the master closes its copies of the listeners
  and sends SIGTERM to every worker, which stops accepting, lets queued
  output drain and exits.  Workers still running after the graceful timeout
  are killed (SIGKILL); a second SIGTERM/SIGINT kills them at once.  The exit
  status says whether the stop was clean (:data:`EXIT_CLEAN`: every worker
  exited with status 0 in time) or not (:data:`EXIT_UNCLEAN`).
* **Rolling restart.** SIGHUP replaces the workers one by one: a new worker
  is started, and once it has run :data:`READY_AFTER` seconds the old one is
  stopped gracefully.  If the new one dies at start, the restart is
  abandoned and the running workers stay.
* **No zombies.** Every worker is reaped (by pid: other children of a program
  that calls :func:`serve` are left to their owners).
"""

from __future__ import annotations

import logging
from typing import Callable, Optional, Union

from . import loop as _loop
from . import maps as _maps
from ._master import (
    BACKOFF_FIRST,
    BACKOFF_MAX,
    DEFAULT_GRACEFUL_TIMEOUT,
    EXIT_CLEAN,
    EXIT_GAVE_UP,
    EXIT_UNCLEAN,
    READY_AFTER,
    Master,
    check_timeout,
    cpu_count,
    parse_workers,
)

__all__ = ["BACKOFF_FIRST", "BACKOFF_MAX", "DEFAULT_GRACEFUL_TIMEOUT", "EXIT_CLEAN",
           "EXIT_GAVE_UP", "EXIT_UNCLEAN", "READY_AFTER", "Master", "cpu_count",
           "parse_workers", "serve"]

logger = logging.getLogger("pollchat.workers")


def serve(setup: Callable[[], Optional[_loop.Loop]], workers: Union[int, str] = "auto", *,
          graceful_timeout: float = DEFAULT_GRACEFUL_TIMEOUT) -> int:
    """Run a server in ``workers`` processes; return the exit status.

    In each worker, ``setup()`` creates the program's channels (listeners
    bound through ``dispatcher.bind()`` are shared by all workers), then the
    worker runs its loop: the :class:`~pollchat.Loop` that ``setup()``
    returns, else the default map's (``asyncore.socket_map``).  The calling
    process becomes the master until the workers are stopped (SIGTERM or
    SIGINT); SIGHUP restarts them one by one (running the code this process
    imported: unlike ``pollchat run``, whose workers import the program
    afresh, a new version needs a new master).  Typical use::

        sys.exit(pollchat.workers.serve(lambda: EchoServer(7001), workers=4))

    Args:
        setup: called in each worker, after the fork.
        workers: how many worker processes, or ``"auto"`` (one per CPU).
        graceful_timeout: seconds a stopping worker has to finish sending.

    Returns:
        :data:`EXIT_CLEAN`, :data:`EXIT_UNCLEAN` or :data:`EXIT_GAVE_UP`.

    Raises:
        TypeError, ValueError: bad ``workers`` or ``graceful_timeout``.
        RuntimeError: called with threads running (forking a threaded
            process can deadlock the child), or not from the main thread.
    """
    if not callable(setup):
        raise TypeError(f"setup must be callable, not {setup!r}")
    count = parse_workers(workers)
    timeout = check_timeout(graceful_timeout)
    _warn_about_existing_channels()

    def run_setup_then_loop() -> int:
        made = setup()
        loop = made if isinstance(made, _loop.Loop) else _loop.get_loop()
        loop.run(timeout=None)
        return 0

    return Master(run_setup_then_loop, count, timeout).run()


def _warn_about_existing_channels() -> None:
    maps = {id(lp.map): lp.map for lp in _maps.loops()}
    maps[id(_maps.get_socket_map())] = _maps.get_socket_map()
    count = sum(len(m) for m in maps.values())
    if count:
        logger.warning("%d channels exist before the workers start; the workers do not serve "
                       "them (each worker closes its copies): create listeners in setup()", count)
