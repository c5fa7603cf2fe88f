"""A multi-user line chat server on ``async_chat``: pollchat's showcase.

Connect with ``nc 127.0.0.1 7000`` or ``telnet 127.0.0.1 7000``.  Every line
you type goes to everyone else as ``<nick> line``; lines starting with ``/``
are commands:

==================  =====================================================
``/nick NAME``      change your nickname (letters, digits, ``_``, ``-``)
``/who``            list who is online
``/quit [MESSAGE]`` leave (the others see the message)
``/help``           list the commands
==================  =====================================================

Behaviour worth knowing:

* Newcomers are named ``guest1``, ``guest2``... and can ``/nick`` at once.
* Your own lines are not echoed back to you (your terminal shows them).
* Server lines start with ``* ``; every line sent ends with ``\\r\\n``.
  Lines received may end with ``\\n`` or ``\\r\\n``; control characters and
  telnet commands are removed; bytes that are not UTF-8 become U+FFFD.
* A line longer than ``max_line`` bytes is dropped, and its sender told so;
  the server never buffers more than ``max_line`` bytes of one line.
* A client that stops reading while lines pile up for it (``max_backlog``
  lines not yet sent) is disconnected, so that it cannot make the server
  hold an unbounded amount of output.
* :meth:`ChatServer.shutdown` (Ctrl-C in ``pollchat chat``) tells everyone
  ``* server shutting down``, sends what is pending and closes.
* A departure (``* nick left (reason)``) is announced once the handler that
  noticed it has returned, never from inside a broadcast: a crowd that
  disconnects at once costs one notice and one log line each.
* Out of file descriptors (``EMFILE``...), the listener stops accepting for
  ``accept_backoff`` seconds at a time (the library's back-off) and resumes
  by itself; an unexpected error in the listener pauses it for
  :data:`LISTENER_ERROR_PAUSE` seconds.  Both use only public hooks.

The code is a plain asyncore/asynchat program (a :class:`ChatServer`
dispatcher accepting connections, one :class:`ChatSession` ``async_chat`` per
client) on a :class:`pollchat.Loop`, so it runs on any backend, past 1024
clients.  In-process use::

    server = ChatServer("127.0.0.1", 0)          # port 0: any free port
    print(server.address)                        # ('127.0.0.1', 43117)
    server.serve_forever()                       # until shutdown() / Ctrl-C

From another thread, stop it with ``server.request_shutdown()``.
"""

from __future__ import annotations

import itertools
import logging
import re
import socket
import time
from typing import Any, Dict, List, Optional, Tuple, Union

from . import asynchat, asyncore
from .backends import BackendName
from .loop import Loop

__all__ = ["ChatServer", "ChatSession", "DEFAULT_HOST", "DEFAULT_MAX_LINE", "DEFAULT_PORT",
           "valid_nick"]

logger = logging.getLogger("pollchat.chat")


DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 7000
DEFAULT_MAX_LINE = 512  # bytes per line, not counting the line ending
DEFAULT_MAX_BACKLOG = 1000  # lines queued for one client before it is dropped as too slow
NICK_MAX = 20

_NICK_RE = re.compile(r"[A-Za-z][A-Za-z0-9_-]*\Z")
# C0 controls and DEL go (a tab becomes a space): no terminal escapes, no bells.
_CONTROLS: Dict[int, Optional[str]] = {code: None for code in (*range(32), 127)}
_CONTROLS[ord("\t")] = " "
# Telnet commands (IAC = 0xFF, then a command, and an option for WILL/WONT/DO/
# DONT): telnet sends some, on Ctrl-C say.  0xFF never occurs in UTF-8.
_TELNET_COMMAND = re.compile(rb"\xff(?:[\xfb-\xfe].|[\xf0-\xfa\xff])", re.S)

HELP = (
    "* commands:",
    "*   /nick NAME       change your nickname",
    "*   /who             list who is online",
    "*   /quit [MESSAGE]  leave",
    "*   /help            this list",
    "* any other line goes to everyone else",
)

# Seconds the listener stops accepting after an unexpected error in it.
LISTENER_ERROR_PAUSE = 1.0


def valid_nick(nick: str) -> bool:
    """Whether ``nick`` is acceptable: 1-20 ASCII letters, digits, ``_`` or
    ``-``, starting with a letter."""
    return len(nick) <= NICK_MAX and _NICK_RE.match(nick) is not None


def _format_address(address: Any) -> str:
    try:
        host, port = address[:2]
    except (TypeError, ValueError):
        return str(address)
    return f"[{host}]:{port}" if ":" in str(host) else f"{host}:{port}"


class ChatSession(asynchat.async_chat):
    """One connected client: reads lines, runs commands, relays messages."""

    def __init__(self, server: ChatServer, sock: socket.socket, addr: Any) -> None:
        super().__init__(sock, map=server.loop.map)
        if server.ssl_context is not None:
            self.start_tls(server.ssl_context, server_side=True)
        self.server = server
        self.peer = _format_address(addr)
        self.nick = ""
        self.set_terminator(b"\n")
        self._chunks: List[bytes] = []  # the line being received
        self._size = 0  # its length so far
        self._overflow = False  # the line being received is too long: discard it
        self._leaving = False  # /quit or dropped: ignore further input
        self._reason = "connection closed"  # what the others are told on close
        self._closed = False
        self.joined = -1  # when it joined, on the server's clock (set by join())

    # -- input: async_chat calls these -------------------------------------------

    def collect_incoming_data(self, data: bytes) -> None:
        """Keep at most ``max_line`` bytes (plus a ``\\r``) of the current line."""
        if self._overflow:
            return
        self._size += len(data)
        if self._size > self.server.max_line + 1:
            self._overflow = True
            self._chunks.clear()
            return
        self._chunks.append(data)

    def found_terminator(self) -> None:
        raw = b"".join(self._chunks)
        overflow = self._overflow
        self._chunks, self._size, self._overflow = [], 0, False
        if self._leaving or self._closed:
            return
        if raw.endswith(b"\r"):
            raw = raw[:-1]
        if overflow or len(raw) > self.server.max_line:
            self.say(f"* line too long (over {self.server.max_line} bytes): not sent")
            return
        if b"\xff" in raw:
            raw = _TELNET_COMMAND.sub(b"", raw)
        line = raw.decode("utf-8", "replace").translate(_CONTROLS).strip()
        if line:
            logger.debug("%s: %s", self.nick, line)
            self.handle_line(line)

    # -- what a line does ----------------------------------------------------------

    def handle_line(self, line: str) -> None:
        """Run a ``/command``, or send ``line`` to everyone else."""
        if not line.startswith("/"):
            self.server.broadcast(f"<{self.nick}> {line}", exclude=self)
            return
        command, _, argument = line.partition(" ")
        argument = argument.strip()
        command = command.lower()
        if command == "/nick":
            self.server.rename(self, argument)
        elif command == "/who":
            names = self.server.nicks()
            self.say(f"* {len(names)} online: {', '.join(names)}")
        elif command == "/quit":
            self.quit(argument)
        elif command == "/help":
            for text in HELP:
                self.say(text)
        else:
            self.say(f"* unknown command {command}; type /help for the list")

    def quit(self, message: str = "") -> None:
        """Say goodbye, send what is pending, then close."""
        self._leaving = True
        self._reason = f"quit: {message}" if message else "quit"
        self.say("* bye")
        self.close_when_done()

    # -- output ----------------------------------------------------------------------

    def say(self, text: str) -> None:
        """Queue one line for this client.  A client that lets more than
        ``max_backlog`` lines pile up is disconnected (soon, not here: this
        may run in the middle of a broadcast)."""
        if self._closed:
            return
        self.push(text.encode("utf-8", "replace") + b"\r\n")
        if len(self.producer_fifo) > self.server.max_backlog and not self._leaving:
            self._leaving = True
            self._reason = "too slow: not reading"
            self.server.loop.call_later(0, self.close)

    def handle_handshake(self) -> None:
        # Over TLS a client joins the room once its handshake completed: a
        # port scanner never shows up as a guest.
        self.server._join_or_close(self)

    # -- closing ----------------------------------------------------------------------

    def handle_close(self) -> None:
        self.close()

    def handle_error(self) -> None:
        logger.exception("error in the session of %s (%s); closing it", self.nick, self.peer)
        self._reason = "server error"
        self.close()

    def close(self) -> None:
        """Close the connection and leave the room (once)."""
        if not self._closed:
            self._closed = True
            self.server.leave(self, self._reason)
        super().close()


class ChatServer(asyncore.dispatcher):
    """The listening socket, and the room: who is here, under which nick.

    Args:
        host: address to listen on (default ``127.0.0.1``: this machine only).
        port: TCP port; ``0`` picks a free one (see :attr:`address`).
        loop: the :class:`pollchat.Loop` to run on; a new one if omitted.
        backend: backend name for the new loop (ignored with ``loop``).
        max_line: longest line accepted, in bytes, not counting the ending.
        max_backlog: lines queued for one client before it is dropped.
        proxy_protocol: expect a PROXY protocol header on every connection
            (behind HAProxy or nginx): clients are shown with the address it
            carries.
        ssl_context: serve over TLS with this server-side ``ssl.SSLContext``
            (:func:`pollchat.tls.server_context` makes one from PEM files).

    Raises:
        OSError: cannot listen there (``EADDRINUSE``...), or ``host`` does not
            resolve (:class:`socket.gaierror`).
        UnknownBackendError: ``backend`` is unknown or unavailable.
    """

    def __init__(self, host: str = DEFAULT_HOST, port: int = DEFAULT_PORT, *,
                 loop: Optional[Loop] = None, backend: Union[BackendName, str, None] = None,
                 max_line: int = DEFAULT_MAX_LINE,
                 max_backlog: int = DEFAULT_MAX_BACKLOG, listen_backlog: int = 128,
                 proxy_protocol: bool = False, ssl_context: Any = None) -> None:
        if max_line < 1:
            raise ValueError(f"max_line must be at least 1, not {max_line}")
        family, _, _, _, sockaddr = socket.getaddrinfo(
            host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)[0]
        self._own_loop = loop is None
        self.loop = Loop(backend) if loop is None else loop
        super().__init__(map=self.loop.map)
        self.max_line = max_line
        self.max_backlog = max_backlog
        self.ssl_context = ssl_context
        self.sessions: Dict[str, ChatSession] = {}  # casefolded nick -> session
        self._guests = itertools.count(1)
        # Departures not yet announced: (when, line), "when" on the _clock
        # that also stamps each session when it joins.  See leave().
        self._departures: List[Tuple[int, str]] = []
        self._clock = itertools.count()
        self._shutting_down = False
        self.proxy_protocol = proxy_protocol
        try:
            self.create_socket(family, socket.SOCK_STREAM)
            self.set_reuse_addr()
            self.bind(sockaddr)
            self.listen(listen_backlog)
        except BaseException:
            self.close()
            if self._own_loop:
                self.loop.close()
            raise
        listening = self.socket
        assert listening is not None  # made by create_socket() above
        self.address: Tuple[str, int] = listening.getsockname()[:2]

    # -- accepting ------------------------------------------------------------------
    # dispatcher.handle_accept() accepts and calls handle_accepted().  When
    # accept() fails for lack of file descriptors (EMFILE...), the library
    # pauses the listener for accept_backoff seconds and resumes it itself:
    # the server need not (and must not) manage that pause.

    def handle_accepted(self, sock: socket.socket, addr: Any) -> None:
        if self._shutting_down:
            sock.close()
            return
        try:
            session = ChatSession(self, sock, addr)
        except OSError as exc:  # reset before we got to it, say
            logger.debug("dropped a connection from %s: %s", _format_address(addr), exc)
            sock.close()
            return
        if self.ssl_context is None:
            self._join_or_close(session)  # over TLS: once the handshake completed

    def _join_or_close(self, session: ChatSession) -> None:
        try:
            self.join(session)
        except BaseException:
            session.close()  # not half in the room: handle_error() reports the rest
            raise

    def handle_error(self) -> None:
        # A bug reached here (accept() itself handles the resource errors):
        # keep listening, but not in a tight loop that floods the log.
        logger.exception("error in the listener; pausing new connections for %g s",
                         LISTENER_ERROR_PAUSE)
        self.pause_reading()
        self.loop.call_later(LISTENER_ERROR_PAUSE, self.resume_reading)

    def handle_close(self) -> None:
        logger.error("the listening socket on %s failed; no new connections",
                     _format_address(self.address))
        self.close()

    # -- the room ---------------------------------------------------------------------

    def join(self, session: ChatSession) -> None:
        """Give ``session`` a guest nick, greet it, tell the others."""
        others = self.nicks()
        nick = next(f"guest{n}" for n in self._guests if f"guest{n}" not in self.sessions)
        session.nick = nick
        session.joined = next(self._clock)
        self.sessions[nick.casefold()] = session
        logger.info("%s connected from %s (%d online)", nick, session.peer, len(self.sessions))
        here = f"{len(others)} here: {', '.join(others)}" if others else "nobody else here yet"
        session.say(f"* welcome to pollchat, {nick} ({here}); /nick NAME to change your "
                    "name, /help for commands")
        self.broadcast(f"* {nick} joined", exclude=session)

    def leave(self, session: ChatSession, reason: str) -> None:
        """Forget ``session`` (it is closing) and tell the others why, soon.

        The notice is not sent from here: ``leave()`` runs inside ``close()``,
        which may run inside a broadcast (a ``send()`` to a client that reset
        its connection closes it), and a notice sent from here could find the
        next dead client, close it, and so on: one level of recursion per
        client gone.  Notices wait for :meth:`_announce_departures`, which
        runs from the loop, after the current handler returns.  One log line
        per departure.
        """
        if self.sessions.get(session.nick.casefold()) is not session:
            return
        del self.sessions[session.nick.casefold()]
        logger.info("%s disconnected from %s: %s (%d online)", session.nick, session.peer,
                    reason, len(self.sessions))
        if self._shutting_down:
            return
        if not self._departures:
            self.loop.call_later(0, self._announce_departures)
        self._departures.append((next(self._clock), f"* {session.nick} left ({reason})"))

    def _announce_departures(self) -> None:
        """Send the pending "left" notices, each to the sessions that had
        joined before that departure.  Departures caused by these sends
        (clients found gone) are announced by the next call."""
        departures, self._departures = self._departures, []
        if self._shutting_down:
            return  # everyone was told the server is going away
        for when, text in departures:
            for session in list(self.sessions.values()):
                if session.joined < when:
                    session.say(text)

    def rename(self, session: ChatSession, new: str) -> None:
        """``/nick new``: validate, check it is free, announce it to everyone."""
        if not new:
            session.say(f"* you are {session.nick}; /nick NAME to change it")
        elif not valid_nick(new):
            session.say(f"* invalid nickname {new!r}: use 1-{NICK_MAX} letters, digits, "
                        "'_' or '-', starting with a letter")
        elif new == session.nick:
            session.say(f"* you are already {new}")
        elif self.sessions.get(new.casefold(), session) is not session:
            session.say(f"* nickname {new} is taken")
        else:
            old = session.nick
            del self.sessions[old.casefold()]
            session.nick = new
            self.sessions[new.casefold()] = session
            logger.debug("%s is now %s", old, new)
            self.broadcast(f"* {old} is now {new}")

    def nicks(self) -> List[str]:
        """Everyone's nick, sorted case-insensitively."""
        return sorted((s.nick for s in self.sessions.values()), key=str.casefold)

    def broadcast(self, text: str, exclude: Optional[ChatSession] = None) -> None:
        """Send one line to every session but ``exclude``."""
        for session in list(self.sessions.values()):
            if session is not exclude:
                session.say(text)

    # -- running and stopping -----------------------------------------------------------

    def serve_forever(self, grace: float = 2.0) -> None:
        """Run until :meth:`shutdown` (or Ctrl-C, which calls it), then give
        clients up to ``grace`` seconds to receive what is pending; close them
        and, if the server made its loop, the loop."""
        try:
            if not self._shutting_down:
                # Not timeout=None: Python runs a signal handler only once the
                # main thread wakes, and a signal the kernel hands to another
                # thread does not interrupt its poll.  Waking once a second
                # bounds how long Ctrl-C or SIGTERM can go unnoticed.
                self.loop.run(timeout=1.0)
        except KeyboardInterrupt:
            logger.info("interrupted")
        self.shutdown()
        deadline = time.monotonic() + grace
        while self.sessions and time.monotonic() < deadline:
            self.loop.run_once(min(0.05, max(0.0, deadline - time.monotonic())))
        for channel in list(self.loop.map.values()):
            if isinstance(channel, ChatSession):  # joined, or still in its TLS handshake
                channel.close()
        if self._own_loop:
            self.loop.close()
        logger.info("stopped")

    def shutdown(self, message: str = "server shutting down") -> None:
        """Stop accepting, tell every client ``* message``, and close each
        once its pending output is sent.  Call from the loop's thread;
        idempotent.  :meth:`serve_forever` returns soon after."""
        if self._shutting_down:
            return
        self._shutting_down = True
        logger.info("shutting down (%d online)", len(self.sessions))
        self.close()
        for session in list(self.sessions.values()):
            session._reason = "server shutting down"
            session._leaving = True
            session.say(f"* {message}")
            session.close_when_done()
        self.loop.stop()

    def request_shutdown(self) -> None:
        """:meth:`shutdown`, from any thread; a no-op once the server has
        stopped (its loop closed)."""
        try:
            self.loop.call_soon_threadsafe(self.shutdown)
        except RuntimeError:
            if not self.loop.closed:
                raise  # not the race with a stop that has just finished
