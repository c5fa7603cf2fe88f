"""asyncore's ``file_wrapper`` and ``file_dispatcher``: a pipe, a tty or any
other file descriptor driven like a socket (POSIX only)."""

from __future__ import annotations

import os
import socket
import warnings
from typing import Any, Dict, Optional

from .channel import dispatcher

__all__ = ["file_dispatcher", "file_wrapper"]


class file_wrapper:
    """Make an fd look enough like a socket for a dispatcher.

    The fd is duplicated: the caller keeps (and closes) its own.
    """

    def __init__(self, fd: int) -> None:
        self.fd = os.dup(fd)

    def __del__(self) -> None:
        if self.fd >= 0:
            warnings.warn(f"unclosed file {self!r}", ResourceWarning, stacklevel=2, source=self)
        self.close()

    def recv(self, *args: Any) -> bytes:
        return os.read(self.fd, *args)

    def send(self, *args: Any) -> int:
        return os.write(self.fd, *args)

    def getsockopt(self, level: int, optname: int, buflen: Optional[int] = None) -> int:
        if level == socket.SOL_SOCKET and optname == socket.SO_ERROR and not buflen:
            return 0  # a file has no pending socket error
        raise NotImplementedError("file_wrapper supports only getsockopt(SOL_SOCKET, "
                                  "SO_ERROR), which asyncore needs")

    read = recv
    write = send

    def close(self) -> None:
        if self.fd < 0:
            return
        fd, self.fd = self.fd, -1
        os.close(fd)

    def fileno(self) -> int:
        return self.fd


class file_dispatcher(dispatcher):
    """A dispatcher over a file descriptor (a pipe, a tty...)."""

    def __init__(self, fd: Any, map: Optional[Dict[Any, Any]] = None) -> None:
        dispatcher.__init__(self, None, map)
        self._pc_connected = True
        try:
            fd = fd.fileno()
        except AttributeError:
            pass
        self.set_file(fd)
        os.set_blocking(fd, False)

    def set_file(self, fd: int) -> None:
        self.socket = file_wrapper(fd)
        self._fileno = self.socket.fileno()
        self.add_channel()
