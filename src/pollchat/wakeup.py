"""A thread-safe way to wake a loop blocked in poll.

One fd, registered for ``READ`` in the loop's backend (not in its channel map,
which belongs to the program): an ``eventfd`` where the OS has one (Linux,
Python 3.10+), else the classic self-pipe.
"""

from __future__ import annotations

import errno
import os


class Waker:
    """Write side usable from any thread; read side drained by the loop."""

    def __init__(self) -> None:
        if hasattr(os, "eventfd"):
            self.fileno_r = self._fileno_w = os.eventfd(0, os.EFD_CLOEXEC | os.EFD_NONBLOCK)
            self._token = (1).to_bytes(8, "little")  # eventfd takes 8-byte counts
        else:
            self.fileno_r, self._fileno_w = os.pipe()
            for fd in (self.fileno_r, self._fileno_w):
                os.set_blocking(fd, False)
            self._token = b"\0"

    def fileno(self) -> int:
        return self.fileno_r

    def wake(self) -> None:
        """Make the read side readable.  Safe from any thread, and from a
        signal handler; never blocks."""
        try:
            os.write(self._fileno_w, self._token)
        except BlockingIOError:
            pass  # the pipe is full: the loop is going to wake anyway
        except OSError:
            pass  # closed by the loop's close(): nothing left to wake

    def drain(self) -> None:
        """Consume every pending wake-up (called by the loop)."""
        try:
            while os.read(self.fileno_r, 4096) and self._fileno_w != self.fileno_r:
                pass  # a pipe may hold many tokens; an eventfd is reset by one read
        except (BlockingIOError, InterruptedError):
            pass

    def close(self) -> None:
        for fd in {self.fileno_r, self._fileno_w}:
            try:
                os.close(fd)
            except OSError as exc:
                if exc.errno != errno.EBADF:  # already closed: nothing to release
                    raise
        self.fileno_r = self._fileno_w = -1
