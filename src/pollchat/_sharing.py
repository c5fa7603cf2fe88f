"""Listening sockets shared by the workers: both sides of the protocol.

In a worker, ``dispatcher.bind()`` of a TCP socket becomes a request to the
master (:meth:`WorkerHooks.bind`), sent with the worker's own socket
(``SCM_RIGHTS``) on the worker's message socket (``SOCK_SEQPACKET``, one JSON
object per message).  The master answers from its :class:`SharedListeners`:

* the first request for an address: the master binds *the worker's socket*
  (the same open file, so every option the program set before ``bind()`` is
  kept), keeps a copy, and answers ``{"ok": true, "shared": false}``;
* later requests: it sends its copy back (``"shared": true``), and the worker
  ``dup2()``s it onto its own socket's fd number, so the program's socket
  object and its map entry stay valid;
* a failed bind: ``{"ok": false, "errno": n, "strerror": ...}``, raised in the
  worker as the ``OSError`` a local bind would have raised.

Requests are keyed by family, type, protocol and the address as given; binds
to port 0 are numbered per worker too (the n-th port-0 bind of each worker
shares one socket: every worker runs the same program).  The master's copy
keeps the socket, and its accept queue, open while workers come and go.
"""

from __future__ import annotations

import collections
import errno
import json
import logging
import os
import socket
import threading
from typing import Any, Dict, List, Sequence, Set, Tuple

__all__ = ["SharedListeners", "WorkerHooks", "receive_message", "send_message"]

logger = logging.getLogger("pollchat.workers")

#: Seconds a worker waits for the master to answer a request.
CONTROL_TIMEOUT = 30.0
MAX_MESSAGE = 65536

Reply = Tuple[Dict[str, Any], List[int]]


# -- messages ---------------------------------------------------------------------------------


def send_message(sock: socket.socket, message: Dict[str, Any], fds: Sequence[int] = ()) -> None:
    """Send one JSON message (and file descriptors) on a message socket."""
    data = json.dumps(message).encode("utf-8")
    if fds:
        socket.send_fds(sock, [data], list(fds))
    else:
        sock.send(data)


def receive_message(sock: socket.socket) -> Reply:
    """Receive one message and the fds sent with it (the caller owns them).

    Raises:
        EOFError: the other side closed its end.
        ValueError: not a JSON object (the fds are closed).
    """
    data, fds, _flags, _address = socket.recv_fds(sock, MAX_MESSAGE, 4)
    if not data:
        for fd in fds:
            os.close(fd)
        raise EOFError("the other process closed the control socket")
    try:
        message = json.loads(data.decode("utf-8"))
        if not isinstance(message, dict):
            raise ValueError("not a JSON object")
    except ValueError:
        for fd in fds:
            os.close(fd)
        raise
    return message, list(fds)


# -- the worker's side ------------------------------------------------------------------------


def _shareable(sock: Any, address: Any) -> bool:
    """A TCP socket bound to ``(host, port, ...)``: what the workers share."""
    return (isinstance(sock, socket.socket) and sock.type == socket.SOCK_STREAM
            and sock.family in (socket.AF_INET, socket.AF_INET6)
            and isinstance(address, tuple) and len(address) >= 2
            and isinstance(address[1], int) and not isinstance(address[1], bool))


class WorkerHooks:
    """Installed as ``pollchat.channel._worker`` in a worker process.

    Args:
        control: this worker's end of its message socket to the master.
    """

    def __init__(self, control: socket.socket) -> None:
        self.control = control
        control.settimeout(CONTROL_TIMEOUT)
        self._lock = threading.Lock()  # one request at a time on the socket
        self._ephemeral: Dict[Tuple[int, str], int] = collections.Counter()

    def bind(self, channel: Any, address: Any) -> None:
        """``channel.bind(address)`` in a worker.

        Raises:
            OSError: the bind failed (with the kernel's errno, as a local
                bind would), or the master did not answer.
        """
        sock = channel.socket
        if not _shareable(sock, address):
            sock.bind(address)  # unix sockets, UDP...: each worker its own
            return
        nth = 0
        if address[1] == 0:
            key = (int(sock.family), repr(address))
            nth = self._ephemeral[key]
            self._ephemeral[key] = nth + 1
        request = {"op": "bind", "family": int(sock.family), "type": int(sock.type),
                   "proto": sock.proto, "address": list(address), "nth": nth}
        reply, fds = self._request(request, [sock.fileno()])
        if not reply.get("ok"):
            for fd in fds:
                os.close(fd)
            raise OSError(reply.get("errno"), reply.get("strerror", "bind failed"))
        if fds:
            _adopt(channel, sock, fds[0])

    def _request(self, message: Dict[str, Any], fds: Sequence[int]) -> Reply:
        with self._lock:
            try:
                send_message(self.control, message, fds)
                return receive_message(self.control)
            except (OSError, EOFError, ValueError) as exc:
                raise OSError(f"pollchat worker: no answer from the master process to a "
                              f"{message['op']} request: {exc}") from None


def _adopt(channel: Any, sock: socket.socket, shared_fd: int) -> None:
    """Make ``sock`` (the channel's socket) the shared listener: the same fd
    number, now naming the master's socket.  The channel leaves its map and
    joins it again so that the loop registers the new open file."""
    channel.del_channel()
    try:
        os.dup2(shared_fd, sock.fileno(), inheritable=False)
    finally:
        os.close(shared_fd)
    channel.set_socket(sock)


# -- the master's side ------------------------------------------------------------------------


class _Shared:
    """A listening socket the master binds once and every worker uses."""

    __slots__ = ("sock", "holders", "label")

    def __init__(self, sock: socket.socket, label: str) -> None:
        self.sock = sock
        self.holders: Set[int] = set()  # pids of the workers using it
        self.label = label


class SharedListeners:
    """The master's listening sockets, by the address the program asked for."""

    def __init__(self) -> None:
        self._shared: Dict[Tuple[Any, ...], _Shared] = {}

    def answer(self, pid: int, message: Dict[str, Any], fds: List[int]) -> Reply:
        """The reply to worker ``pid``'s request (which takes ``fds``)."""
        if message.get("op") == "bind" and len(fds) == 1:
            try:
                return self._bind(pid, message, fds[0])
            except (KeyError, TypeError, ValueError) as exc:
                os.close(fds[0])
                return _error(errno.EINVAL, f"malformed bind request: {exc}")
        for fd in fds:
            os.close(fd)
        return _error(errno.EINVAL, f"unknown request {message.get('op')!r}")

    def _bind(self, pid: int, message: Dict[str, Any], fd: int) -> Reply:
        address = tuple(message["address"])
        key = (message["family"], message["type"], message["proto"],
               json.dumps(message["address"]), message["nth"])
        shared = self._shared.get(key)
        if shared is not None:
            os.close(fd)  # the worker's own socket: it takes ours instead
            shared.holders.add(pid)
            return {"ok": True, "shared": True}, [shared.sock.fileno()]
        sock = socket.socket(fileno=fd)
        try:
            sock.bind(address)
        except OSError as exc:
            sock.close()
            return _error(exc.errno or errno.EINVAL, exc.strerror or str(exc))
        host, port = sock.getsockname()[:2]
        label = f"[{host}]:{port}" if sock.family == socket.AF_INET6 else f"{host}:{port}"
        shared = self._shared[key] = _Shared(sock, label)
        shared.holders.add(pid)
        logger.info("the workers share the listening socket %s", label)
        return {"ok": True, "shared": False}, []

    def release(self, pid: int) -> None:
        """Worker ``pid`` exited: it holds nothing any more."""
        for shared in self._shared.values():
            shared.holders.discard(pid)

    def close_unused(self) -> None:
        """Close the sockets no live worker asked for (after a rolling
        restart: the new code may listen elsewhere, and a socket nobody
        accepts from would queue connections for nobody)."""
        for key, shared in list(self._shared.items()):
            if not shared.holders:
                logger.info("closing the listening socket %s: no worker uses it now",
                            shared.label)
                shared.sock.close()
                del self._shared[key]

    def close_all(self) -> None:
        """Close the master's copies (the workers' stay open until they close them)."""
        for shared in self._shared.values():
            shared.sock.close()
        self._shared.clear()


def _error(code: int, text: str) -> Reply:
    return {"ok": False, "errno": code, "strerror": text}, []
