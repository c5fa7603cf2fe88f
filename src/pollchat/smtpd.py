"""An SMTP server for asyncore programs (RFC 5321, with the SIZE, 8BITMIME and
SMTPUTF8 extensions): pollchat's own implementation of CPython 3.11's smtpd.

Usage: %(program)s [options] [localhost:localport [remotehost:remoteport]]

Options:

    --nosetuid
    -n
        Stay the user who started the server.  Without this flag the server
        switches to the user `nobody' once it listens, which only root may
        do: everyone else needs -n.

    --version
    -V
        Print the version and exit.

    --class classname
    -c classname
        The server class: one of this module's (DebuggingServer prints each
        message, PureProxy relays it to remotehost:remoteport), or
        module.Class for your own.  The default is PureProxy.

    --size limit
    -s limit
        Refuse messages of more than `limit' bytes, and announce the limit
        with the SIZE extension.  Without it any size is accepted.

    --smtputf8
    -u
        Offer the SMTPUTF8 extension (RFC 6531): UTF-8 addresses.

    --debug
    -d
        Print the SMTP dialogue on stderr.

    --tls-cert certfile
        Offer STARTTLS (RFC 3207) with this certificate chain (PEM; it may
        hold the key too).  An extension of pollchat's: CPython's smtpd had
        no TLS.

    --tls-key keyfile
        The certificate's private key, if not in certfile.

    --require-tls
        With --tls-cert: refuse every command but EHLO, NOOP, QUIT and
        STARTTLS (530) until the client has started TLS.

    --help
    -h
        Print this text and exit.

Version: %(__version__)s

localhost and localport default to localhost and 8025; remotehost and
remoteport to localhost and 25.
"""

# The names, signatures, attributes, reply texts and module globals are those
# of CPython 3.11's smtpd, because programs subclass SMTPServer/SMTPChannel
# and read them; the code is pollchat's.  Where 3.11 crashed a session on a
# peer's garbage, shared state between sessions, or hung, this module answers
# with a reply instead (docs/design.md, "smtpd", lists each case).

from __future__ import annotations as _annotations

import collections
import errno
import getopt
import os
import re as _re
import socket
import sys
import time
import typing as _typing
from email._header_value_parser import get_addr_spec, get_angle_addr
from warnings import warn

from . import asynchat, asyncore

if _typing.TYPE_CHECKING:
    import ssl as _ssl

__all__ = ["SMTPChannel", "SMTPServer", "DebuggingServer", "PureProxy"]

program = sys.argv[0] if getattr(sys, "argv", None) else ""
__version__ = "Python SMTP proxy version 0.3"  # the greeting says it: clients match it


class Devnull:
    """The default ``DEBUGSTREAM``: a file that discards what is written."""

    def write(self, msg: str) -> None:
        pass

    def flush(self) -> None:
        pass


# Where the dialogue is traced (-d sets sys.stderr; tests set a StringIO).  A
# type comment, not an annotation: that would add __annotations__ to dir().
DEBUGSTREAM = Devnull()  # type: _typing.Any
NEWLINE = "\n"
COMMASPACE = ", "
DATA_SIZE_DEFAULT = 33554432  # 32 MiB
_LISTEN_BACKLOG = 128  # socket.listen()'s own default

_CRLF = "\r\n"
_SUPPORTED = "EHLO HELO MAIL RCPT DATA RSET NOOP QUIT VRFY"
_PARAMS_SYNTAX = " [SP <mail-parameters>]"
_HELP_SYNTAX = {"EHLO": "EHLO hostname", "HELO": "HELO hostname",
                "MAIL": "MAIL FROM: <address>", "RCPT": "RCPT TO: <address>",
                "DATA": "DATA", "RSET": "RSET", "NOOP": "NOOP", "QUIT": "QUIT",
                "VRFY": "VRFY <address>"}
# The commands a server that requires TLS still answers before STARTTLS
# (RFC 3207, section 4); every other one gets 530.
_ALLOWED_BEFORE_TLS = frozenset({"EHLO", "NOOP", "QUIT", "STARTTLS"})


def _debug(*parts: object) -> None:
    """``print(*parts)`` to ``DEBUGSTREAM``, skipped while it is the
    discarding default (3.11 formatted every line, the whole message
    included, only to throw it away)."""
    stream = DEBUGSTREAM
    if type(stream) is not Devnull:
        print(*parts, file=stream)


def usage(code: int, msg: object = "") -> _typing.NoReturn:
    """Print the usage text (and ``msg``) on stderr and exit with ``code``."""
    print(__doc__ % globals(), file=sys.stderr)
    if msg:
        print(msg, file=sys.stderr)
    sys.exit(code)


def _renamed_attribute(old: str, new: str) -> property:
    """A property for one of SMTPChannel's old private names
    (``_SMTPChannel__server``...), from before the attributes were public,
    which subclasses still use: it warns and forwards to ``new``."""

    def get(self: object) -> _typing.Any:
        warn(f"Access to {old} attribute on SMTPChannel is deprecated, use {new!r} instead",
             DeprecationWarning, 2)
        return getattr(self, new)

    def set_(self: object, value: object) -> None:
        warn(f"Setting {old} attribute on SMTPChannel is deprecated, set {new!r} instead",
             DeprecationWarning, 2)
        setattr(self, new, value)

    return property(get, set_, doc=f"Deprecated alias of {new!r}.")


class SMTPChannel(asynchat.async_chat):
    """One SMTP session: reads commands, answers them, collects the message
    after ``DATA`` and hands it to ``smtp_server.process_message()``.

    Commands are dispatched to ``smtp_<VERB>(arg)`` methods (``arg`` is the
    rest of the line, stripped, or ``None``): a subclass adds a command by
    defining one.  Replies go out with :meth:`push` (a ``str`` without
    CRLF).

    Input is bounded: a command line longer than its limit (512 bytes; MAIL
    gets 26 more once SIZE is announced, 10 more with SMTPUTF8) is answered
    ``500 Error: line too long`` and only the first ``limit`` bytes or so are
    kept; a message longer than ``data_size_limit`` is answered ``552`` and
    not delivered.

    STARTTLS (RFC 3207; pollchat's extension, 3.11 had none) is offered only
    when ``ssl_context`` is given; ``require_tls`` then refuses every command
    but EHLO, NOOP, QUIT and STARTTLS with ``530`` until TLS is on.  Without
    a context the channel behaves exactly as 3.11's (``STARTTLS`` is an
    unknown command).
    """

    COMMAND = 0
    DATA = 1

    command_size_limit = 512
    #: Per-command limits once EHLO was seen.  Each channel works on its own
    #: copy (3.11 shared this dict between all sessions, so one client's EHLO
    #: raised everyone's MAIL limit and a new connection reset it).
    command_size_limits: _typing.DefaultDict[str, int] = collections.defaultdict(
        lambda limit=command_size_limit: limit)  # type: ignore[misc]

    # STARTTLS settings.  Class defaults, set on the instance only when
    # given: a plaintext channel's attributes stay exactly 3.11's.
    _ssl_context: _typing.Optional[_ssl.SSLContext] = None
    _require_tls = False

    def __init__(self, server: SMTPServer, conn: _typing.Any, addr: _typing.Any,  # noqa: PLR0917
                 data_size_limit: _typing.Optional[int] = DATA_SIZE_DEFAULT,
                 map: _typing.Optional[dict[_typing.Any, _typing.Any]] = None,
                 enable_SMTPUTF8: bool = False, decode_data: bool = False, *,
                 ssl_context: _typing.Optional[_ssl.SSLContext] = None,
                 require_tls: bool = False) -> None:
        # Checked before joining the map: no half-made channel is left in it.
        if enable_SMTPUTF8 and decode_data:
            raise ValueError("decode_data and enable_SMTPUTF8 cannot be set to True at the "
                             "same time: SMTPUTF8 needs the message as bytes")
        _check_tls_settings(ssl_context, require_tls)
        asynchat.async_chat.__init__(self, conn, map=map)
        if ssl_context is not None:
            self._ssl_context = ssl_context
            self._require_tls = require_tls
        self.smtp_server = server
        self.conn = conn
        self.addr = addr
        self.data_size_limit = data_size_limit
        self.enable_SMTPUTF8 = enable_SMTPUTF8
        self._decode_data = decode_data
        # The joiner, line separator, dot and newline of the message's type.
        self._emptystring: _typing.Any
        self._linesep: _typing.Any
        self._dotsep: _typing.Any
        self._newline: _typing.Any
        if decode_data:
            self._emptystring, self._linesep, self._dotsep = "", "\r\n", "."
            self._newline = NEWLINE
        else:
            self._emptystring, self._linesep, self._dotsep = b"", b"\r\n", ord(b".")
            self._newline = b"\n"
        self._undecodable = False  # the current line is not UTF-8 (decode_data)
        self._decoder = _utf8_decoder() if decode_data else None
        self._forget_session()
        self.fqdn = socket.getfqdn()
        try:
            self.peer = conn.getpeername()
        except OSError as err:
            # The peer may be gone already (it connected and reset at once).
            self.close()
            if err.errno != errno.ENOTCONN:
                raise
            return
        _debug("Peer:", repr(self.peer))
        self.push(f"220 {self.fqdn} {__version__}")

    @property
    def max_command_size_limit(self) -> int:
        """The longest command line currently accepted, over all commands."""
        limits = self.command_size_limits
        return max(limits.values()) if limits else self.command_size_limit

    def _set_post_data_state(self) -> None:
        """Back to waiting for a command, with no transaction open."""
        self.smtp_state = self.COMMAND
        self.mailfrom: _typing.Any = None
        self.rcpttos: list[str] = []
        self.require_SMTPUTF8 = False
        self.num_bytes = 0
        self.set_terminator(b"\r\n")

    def _set_rset_state(self) -> None:
        """The state after RSET: no transaction, nothing received (the
        greeting is kept)."""
        self._set_post_data_state()
        self.received_data: _typing.Any = ""
        self.received_lines: list[_typing.Any] = []

    def _forget_session(self) -> None:
        """The state of a new session: no greeting, no transaction, the
        default command limits (after STARTTLS too: RFC 3207, 4.2, voids
        everything the client said before TLS)."""
        self._set_rset_state()
        self.seen_greeting: str = ""
        self.extended_smtp = False
        factory = getattr(type(self).command_size_limits, "default_factory", None)
        self.command_size_limits = collections.defaultdict(factory)

    # The old private names: deprecated aliases of the public ones.
    __server = _renamed_attribute("__server", "smtp_server")
    __line = _renamed_attribute("__line", "received_lines")
    __state = _renamed_attribute("__state", "smtp_state")
    __greeting = _renamed_attribute("__greeting", "seen_greeting")
    __mailfrom = _renamed_attribute("__mailfrom", "mailfrom")
    __rcpttos = _renamed_attribute("__rcpttos", "rcpttos")
    __data = _renamed_attribute("__data", "received_data")
    __fqdn = _renamed_attribute("__fqdn", "fqdn")
    __peer = _renamed_attribute("__peer", "peer")
    __conn = _renamed_attribute("__conn", "conn")
    __addr = _renamed_attribute("__addr", "addr")

    def push(self, msg: str) -> None:  # type: ignore[override]
        """Send the reply line ``msg`` (``str``, without CRLF): ASCII, or
        UTF-8 once the client asked for SMTPUTF8."""
        asynchat.async_chat.push(
            self, (msg + _CRLF).encode("utf-8" if self.require_SMTPUTF8 else "ascii"))

    def _echo(self, text: str) -> str:
        """``text`` from the peer, made safe to quote in a reply (3.11 failed
        with UnicodeEncodeError on non-ASCII text and dropped the session)."""
        encoding = "utf-8" if self.require_SMTPUTF8 else "ascii"
        return text.encode(encoding, "backslashreplace").decode(encoding)

    # -- input --------------------------------------------------------------------

    def collect_incoming_data(self, data: bytes) -> None:
        """Keep ``data`` for the current line or message, up to the limit of
        the current state (beyond it, input is counted and dropped until the
        terminator)."""
        state = self.smtp_state
        if state == self.COMMAND:
            limit: _typing.Optional[int] = self.max_command_size_limit
        elif state == self.DATA:
            limit = self.data_size_limit
        else:
            limit = None
        if limit:
            if self.num_bytes > limit:
                return
            self.num_bytes += len(data)
        if self._decoder is None:
            self.received_lines.append(data)
        elif not self._undecodable:
            try:
                # Incremental: a character split between two reads is whole.
                text = self._decoder.decode(data)
            except UnicodeDecodeError:
                self._undecodable = True
                return
            if text:
                self.received_lines.append(text)

    def found_terminator(self) -> None:
        """A command line or a whole message arrived: act on it."""
        undecodable = self._line_undecodable()
        line = self._emptystring.join(self.received_lines)
        if type(DEBUGSTREAM) is not Devnull:
            _debug("Data:", repr(line))
        self.received_lines = []
        if self.smtp_state == self.COMMAND:
            self._command(line, undecodable)
        elif self.smtp_state != self.DATA:
            self.push("451 Internal confusion")
            self.num_bytes = 0
        elif self.data_size_limit and self.num_bytes > self.data_size_limit:
            # 3.11 stayed in the DATA state here, taking the client's next
            # commands for message text: the client waited for ever.
            self._set_post_data_state()
            self.push("552 Error: Too much mail data")
        elif undecodable:
            self._set_post_data_state()
            self.push("554 Error: message is not valid UTF-8")
        else:
            self._deliver(line)

    def _line_undecodable(self) -> bool:
        """Whether the line (or message) just ended was not UTF-8
        (decode_data); readies the decoder for the next one."""
        decoder = self._decoder
        if decoder is None:
            return False
        bad = self._undecodable
        self._undecodable = False
        if not bad:
            try:
                decoder.decode(b"", True)  # a character cut off at the end?
            except UnicodeDecodeError:
                bad = True
        decoder.reset()
        return bad

    def _command(self, line: _typing.Any, undecodable: bool) -> None:
        size, self.num_bytes = self.num_bytes, 0
        if not line:
            self.push("500 Error: bad syntax")
            return
        if not self._decode_data:
            try:
                line = str(line, "utf-8")
            except UnicodeDecodeError:
                # 3.11 dropped the session.  Decoded anyway for the length
                # check: an over-long line may just be cut inside a character.
                line = str(line, "utf-8", "replace")
                undecodable = True
        verb, space, rest = line.partition(" ")
        command = verb.upper()
        arg = rest.strip() if space else None
        if self.extended_smtp:
            limits = self.command_size_limits
            # Not limits[command]: that would store every verb a client invents.
            limit = limits[command] if command in limits else _default_limit(limits)
        else:
            limit = self.command_size_limit
        if size > limit:
            self.push("500 Error: line too long")
        elif undecodable:
            self.push("500 Error: bad syntax")
        elif self._require_tls and command not in _ALLOWED_BEFORE_TLS \
                and not self._tls_on():
            self.push("530 Must issue a STARTTLS command first")
        else:
            method = getattr(self, "smtp_" + command, None)
            if method is None:
                self.push(f'500 Error: command "{self._echo(command)}" not recognized')
            else:
                method(arg)

    def _deliver(self, message: _typing.Any) -> None:
        """The message arrived whole: undo the transparency dots (RFC 5321
        4.5.2), turn CRLF into ``\\n``, and hand it to the server."""
        if self._decode_data:
            self.received_data = _unstuff(message, "\r\n", ".", NEWLINE)
            options: dict[str, _typing.Any] = {}
        else:
            self.received_data = _unstuff(message, b"\r\n", b".", b"\n")
            options = {"mail_options": self.mail_options, "rcpt_options": self.rcpt_options}
        status = self.smtp_server.process_message(
            self.peer, self.mailfrom, self.rcpttos, self.received_data, **options)
        self._set_post_data_state()
        self.push(status if status else "250 OK")

    # -- commands -----------------------------------------------------------------

    def _greet(self, arg: _typing.Optional[str], verb: str) -> bool:
        """Shared HELO/EHLO checks and state; False if refused."""
        if not arg:
            self.push(f"501 Syntax: {verb} hostname")
            return False
        if self.seen_greeting:
            # A second greeting is refused rather than taken as RSET (bpo-21783).
            self.push("503 Duplicate HELO/EHLO")
            return False
        self._set_rset_state()
        self.seen_greeting = arg
        return True

    def smtp_HELO(self, arg: _typing.Optional[str]) -> None:
        if self._greet(arg, "HELO"):
            self.push(f"250 {self.fqdn}")

    def smtp_EHLO(self, arg: _typing.Optional[str]) -> None:
        if not self._greet(arg, "EHLO"):
            return
        self.extended_smtp = True
        # One push per line, as 3.11 (its tests look at the last send()).
        self.push(f"250-{self.fqdn}")
        if self.data_size_limit:
            self.push(f"250-SIZE {self.data_size_limit}")
            self.command_size_limits["MAIL"] += 26  # room for " SIZE=<number>"
        if not self._decode_data:
            self.push("250-8BITMIME")
        if self.enable_SMTPUTF8:
            self.push("250-SMTPUTF8")
            self.command_size_limits["MAIL"] += 10  # room for " SMTPUTF8"
        if self._ssl_context is not None and not self._tls_on():
            self.push("250-STARTTLS")
        self.push("250 HELP")

    def smtp_NOOP(self, arg: _typing.Optional[str]) -> None:
        self.push("501 Syntax: NOOP" if arg else "250 OK")

    def smtp_QUIT(self, arg: _typing.Optional[str]) -> None:
        self.push("221 Bye")  # any argument is ignored
        self.close_when_done()

    def _strip_command_keyword(self, keyword: str, arg: str) -> str:
        """``arg`` without its leading ``keyword`` (``'FROM:'``), stripped;
        ``''`` if it does not start with it (any case)."""
        if arg[:len(keyword)].upper() == keyword:
            return arg[len(keyword):].strip()
        return ""

    def _getaddr(self, arg: str) -> tuple[str, str]:
        """Split ``arg`` into (address, rest): the address (``<...>`` or
        bare) as an addr-spec, ``''`` if there is none."""
        if not arg:
            return "", ""
        simple = _SIMPLE_PATH.match(arg)
        if simple is not None:
            return simple.group(1), arg[simple.end():]
        return _parse_path(arg)

    def _getparams(self, params: list[str]) -> _typing.Optional[dict[str, _typing.Any]]:
        """``['SIZE=10', 'SMTPUTF8']`` -> ``{'SIZE': '10', 'SMTPUTF8': True}``;
        ``None`` if one is not an RFC 1869 esmtp-keyword[=value]."""
        result: dict[str, _typing.Any] = {}
        for param in params:
            keyword, eq, value = param.partition("=")
            if not keyword.isalnum() or (eq and not value):
                return None
            result[keyword] = value if eq else True
        return result

    def smtp_HELP(self, arg: _typing.Optional[str]) -> None:
        supported = _SUPPORTED if self._ssl_context is None else _SUPPORTED + " STARTTLS"
        if not arg:
            self.push(f"250 Supported commands: {supported}")
            return
        verb = arg.upper()
        syntax = _HELP_SYNTAX.get(verb)
        if syntax is None and verb == "STARTTLS" and self._ssl_context is not None:
            syntax = "STARTTLS"
        if syntax is None:
            self.push(f"501 Supported commands: {supported}")
            return
        if self.extended_smtp and syntax.startswith(("MAIL", "RCPT")):
            syntax += _PARAMS_SYNTAX
        self.push(f"250 Syntax: {syntax}")

    def smtp_VRFY(self, arg: _typing.Optional[str]) -> None:
        if not arg:
            self.push("501 Syntax: VRFY <address>")
        elif self._getaddr(arg)[0]:
            self.push("252 Cannot VRFY user, but will accept message and attempt delivery")
        else:
            self.push(f"502 Could not VRFY {self._echo(arg)}")

    def _syntax_error(self, command: str) -> str:
        return f"501 Syntax: {command}: <address>" + (
            _PARAMS_SYNTAX if self.extended_smtp else "")

    def _path(self, arg: _typing.Optional[str], keyword: str, command: str,
              ) -> _typing.Optional[tuple[str, str]]:
        """MAIL's and RCPT's argument: ``(address, parameters text)``, or
        ``None`` once the syntax error was replied."""
        if arg is not None:
            address, rest = self._getaddr(self._strip_command_keyword(keyword, arg))
            # Parameters exist only in ESMTP: after HELO they are an error.
            if address and (self.extended_smtp or not rest):
                return address, rest
        self.push(self._syntax_error(command))
        return None

    def smtp_MAIL(self, arg: _typing.Optional[str]) -> None:
        if not self.seen_greeting:
            self.push("503 Error: send HELO first")
            return
        _debug("===> MAIL", arg)
        path = self._path(arg, "FROM:", "MAIL FROM")
        if path is None:
            return
        if self.mailfrom:
            self.push("503 Error: nested MAIL command")
            return
        self.mail_options = path[1].upper().split()
        params = self._getparams(self.mail_options)
        if params is None:
            self.push(self._syntax_error("MAIL FROM"))
            return
        if not self._decode_data:
            body = params.pop("BODY", "7BIT")
            if body not in ("7BIT", "8BITMIME"):
                self.push("501 Error: BODY can only be one of 7BIT, 8BITMIME")
                return
        if self.enable_SMTPUTF8:
            smtputf8 = params.pop("SMTPUTF8", False)
            if smtputf8 is True:
                self.require_SMTPUTF8 = True
            elif smtputf8 is not False:
                self.push("501 Error: SMTPUTF8 takes no arguments")
                return
        size = params.pop("SIZE", None)
        if size:
            # A bare SIZE (True) crashed 3.11's session; isascii(): '\u00b2'
            # passes isdigit() but not int().
            if size is True or not (size.isdigit() and size.isascii()):
                self.push(self._syntax_error("MAIL FROM"))
                return
            if self.data_size_limit and int(size) > self.data_size_limit:
                self.push("552 Error: message size exceeds fixed maximum message size")
                return
        if params:
            self.push("555 MAIL FROM parameters not recognized or not implemented")
            return
        self.mailfrom = path[0]
        _debug("sender:", self.mailfrom)
        self.push("250 OK")

    def smtp_RCPT(self, arg: _typing.Optional[str]) -> None:
        if not self.seen_greeting:
            self.push("503 Error: send HELO first")
            return
        _debug("===> RCPT", arg)
        if not self.mailfrom:
            self.push("503 Error: need MAIL command")
            return
        path = self._path(arg, "TO:", "RCPT TO")
        if path is None:
            return
        # Only the last RCPT's options reach process_message (as in 3.11).
        self.rcpt_options = path[1].upper().split()
        params = self._getparams(self.rcpt_options)
        if params is None:
            self.push(self._syntax_error("RCPT TO"))
            return
        if params:  # no RCPT parameter is supported
            self.push("555 RCPT TO parameters not recognized or not implemented")
            return
        self.rcpttos.append(path[0])
        _debug("recips:", self.rcpttos)
        self.push("250 OK")

    def smtp_RSET(self, arg: _typing.Optional[str]) -> None:
        if arg:
            self.push("501 Syntax: RSET")
            return
        self._set_rset_state()
        self.push("250 OK")

    def smtp_DATA(self, arg: _typing.Optional[str]) -> None:
        if not self.seen_greeting:
            self.push("503 Error: send HELO first")
        elif not self.rcpttos:
            self.push("503 Error: need RCPT command")
        elif arg:
            self.push("501 Syntax: DATA")
        else:
            self.smtp_state = self.DATA
            self.set_terminator(b"\r\n.\r\n")
            self.push("354 End data with <CR><LF>.<CR><LF>")

    def smtp_EXPN(self, arg: _typing.Optional[str]) -> None:
        self.push("502 EXPN not implemented")

    # -- STARTTLS (RFC 3207): pollchat's extension ------------------------------------

    def smtp_STARTTLS(self, arg: _typing.Optional[str]) -> None:
        """Upgrade the session to TLS (only with an ``ssl_context``).

        The ``220`` reply goes out in plaintext, then the handshake starts
        (``start_tls()``); commands the client pipelined behind STARTTLS are
        discarded unread, and the session starts over, as RFC 3207 requires:
        no greeting, no transaction, the command limits of a new session.
        A failed handshake closes the connection (one INFO line on
        ``pollchat.tls``).
        """
        if self._ssl_context is None:
            self.push('500 Error: command "STARTTLS" not recognized')  # as in 3.11
        elif arg:
            self.push("501 Syntax: STARTTLS")
        elif self._tls_on():
            self.push("503 Error: TLS already active")
        else:
            self.push("220 Ready to start TLS")
            self.start_tls(self._ssl_context, server_side=True)
            self._forget_session()

    def _tls_on(self) -> bool:
        """Whether TLS is on or starting on this session (by STARTTLS, or a
        subclass's own ``start_tls()``, e.g. for implicit TLS)."""
        return self._pc_tls is not None or self._pc_tls_pending is not None


# <local@domain>, both dot-atoms of ASCII atext (RFC 5322 3.2.3), then
# nothing or whitespace and a parameter: what nearly every client sends.  For
# these the email parser's answer is known (the address as written, the rest
# after the whitespace), and computing it costs most of a message's CPU time;
# tests/test_smtpd.py checks the two agree.  Anything else goes to the parser,
# including a parameter starting with a character str.isspace() takes (the
# parser strips those, U+001C-U+001F among them).
_ATOM = r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+"
_DOT_ATOM = rf"{_ATOM}(?:\.{_ATOM})*"
_SIMPLE_PATH = _re.compile(rf"<({_DOT_ATOM}@{_DOT_ATOM})>(?:[ \t]+(?=[^\s(])|\Z)")


def _parse_path(arg: str) -> tuple[str, str]:
    """(addr-spec, rest) of ``arg`` by the email parser, as 3.11 did it;
    ``('', '')`` where the parser fails."""
    try:
        parse = get_angle_addr if arg.lstrip().startswith("<") else get_addr_spec
        address, rest = parse(arg)
        return (address.addr_spec if address else ""), rest
    except Exception:  # noqa: BLE001
        # The email parser signals garbage with HeaderParseError, but also
        # with IndexError or AttributeError, while parsing or when addr_spec
        # is computed ('<', '<"', '<a@[1.2>'); 3.11 let those drop the
        # session.  Any of them means "no address".
        return "", ""


def _utf8_decoder() -> _typing.Any:
    import codecs

    return codecs.getincrementaldecoder("utf-8")()


def _default_limit(limits: _typing.DefaultDict[str, int]) -> int:
    """What ``limits[missing]`` would give, without storing it."""
    if limits.default_factory is None:
        raise KeyError("command_size_limits has no default_factory")
    return limits.default_factory()


def _check_tls_settings(ssl_context: _typing.Any, require_tls: bool) -> None:
    """Refuse STARTTLS settings that cannot work, before anything is made."""
    if ssl_context is None:
        if require_tls:
            raise ValueError("require_tls needs an ssl_context: pass the server's "
                             "ssl.SSLContext too")
        return
    import ssl

    if not isinstance(ssl_context, ssl.SSLContext):
        raise TypeError(f"ssl_context must be an ssl.SSLContext, not "
                        f"{type(ssl_context).__name__}")


def _check_channel_takes_tls(channel_class: _typing.Any) -> None:
    """Raise TypeError unless ``channel_class`` accepts the keyword
    arguments a STARTTLS server passes (a subclass of SMTPChannel written
    for 3.11, with its own ``__init__`` signature, may not)."""
    import inspect

    try:
        signature = inspect.signature(channel_class)
    except (TypeError, ValueError):
        return  # not introspectable (a builtin or C callable): trust it
    try:
        signature.bind(None, None, None, None, None, False, False,
                       ssl_context=None, require_tls=False)
    except TypeError:
        raise TypeError(f"{getattr(channel_class, '__qualname__', channel_class)} does not "
                        f"take the ssl_context= and require_tls= keyword arguments that "
                        f"STARTTLS needs: accept them (or **kwargs) in its __init__ and "
                        f"pass them on to SMTPChannel.__init__") from None


def _unstuff(message: _typing.AnyStr, crlf: _typing.AnyStr, dot: _typing.AnyStr,
             newline: _typing.AnyStr) -> _typing.AnyStr:
    """Drop the dot that starts a line (RFC 5321 4.5.2) and replace CRLF by
    ``newline``: two C-level passes instead of a Python loop over lines.

    Equivalent to splitting at CRLF, removing one leading dot per line and
    joining with ``newline``: CRLFs never overlap, and removing a dot that
    follows one cannot create a new one.
    """
    if message[:1] == dot:
        message = message[1:]
    return message.replace(crlf + dot, crlf).replace(crlf, newline)


class SMTPServer(asyncore.dispatcher):
    """Listens on ``localaddr`` and serves each connection with a
    ``channel_class`` (:class:`SMTPChannel`).  Subclass it and override
    :meth:`process_message`.

    Args:
        localaddr: ``(host, port)`` to listen on (IPv4 or IPv6, as
            ``getaddrinfo()`` resolves the host).
        remoteaddr: ``(host, port)`` of the next server, for relays
            (:class:`PureProxy`); stored as ``_remoteaddr``.
        data_size_limit: the largest message accepted, in bytes (announced
            with SIZE); ``0`` or ``None``: no limit.
        map: the asyncore map to join (default: ``asyncore.socket_map``).
        enable_SMTPUTF8: offer SMTPUTF8 (RFC 6531).
        decode_data: hand messages over as ``str`` (UTF-8 decoded) instead
            of ``bytes``; then 8BITMIME is not offered and
            ``process_message`` gets no keyword arguments.
        ssl_context: offer STARTTLS with this server-side
            :class:`ssl.SSLContext` (pollchat's extension; 3.11's smtpd had
            no TLS).  Each channel gets it as ``ssl_context=``.
        require_tls: with ``ssl_context``, answer ``530`` to every command
            but EHLO, NOOP, QUIT and STARTTLS until TLS is on (RFC 3207:
            for servers that are not publicly referenced).

    Raises:
        ValueError: both ``enable_SMTPUTF8`` and ``decode_data``;
            ``require_tls`` without ``ssl_context``.
        TypeError: ``ssl_context`` is not an :class:`ssl.SSLContext`, or
            ``channel_class`` takes no ``ssl_context``/``require_tls``
            keyword arguments.
        OSError: the address cannot be resolved or bound (the socket is
            closed first).
    """

    channel_class = SMTPChannel

    # Class defaults, set on the instance only when given (see SMTPChannel).
    _ssl_context: _typing.Optional[_ssl.SSLContext] = None
    _require_tls = False

    def __init__(self, localaddr: _typing.Any, remoteaddr: _typing.Any,  # noqa: PLR0917
                 data_size_limit: _typing.Optional[int] = DATA_SIZE_DEFAULT,
                 map: _typing.Optional[dict[_typing.Any, _typing.Any]] = None,
                 enable_SMTPUTF8: bool = False, decode_data: bool = False, *,
                 ssl_context: _typing.Optional[_ssl.SSLContext] = None,
                 require_tls: bool = False) -> None:
        self._localaddr = localaddr
        self._remoteaddr = remoteaddr
        self.data_size_limit = data_size_limit
        self.enable_SMTPUTF8 = enable_SMTPUTF8
        self._decode_data = decode_data
        if enable_SMTPUTF8 and decode_data:
            raise ValueError("decode_data and enable_SMTPUTF8 cannot be set to True at the "
                             "same time: SMTPUTF8 needs the message as bytes")
        _check_tls_settings(ssl_context, require_tls)
        if ssl_context is not None:
            # Now, not at the first connection: there the TypeError would
            # reach the listener's handle_error() and close it.
            _check_channel_takes_tls(self.channel_class)
            self._ssl_context = ssl_context
            self._require_tls = require_tls
        asyncore.dispatcher.__init__(self, map=map)
        try:
            # (host, port) only: 3.11 passed an IPv6 4-tuple's flowinfo and
            # scope id on as getaddrinfo()'s family and type, and failed.
            family, type_ = socket.getaddrinfo(localaddr[0], localaddr[1],
                                               type=socket.SOCK_STREAM)[0][:2]
            self.create_socket(family, type_)
            self.set_reuse_addr()  # restartable at once, despite TIME_WAIT
            self.bind(localaddr)
            # 3.11 listened with a backlog of 5: a burst of connections then
            # overflowed the kernel's accept queue and clients waited seconds
            # for SYN retransmissions.
            self.listen(_LISTEN_BACKLOG)
        except BaseException:
            self.close()  # never a half-made listener in the map
            raise
        _debug(f"{type(self).__name__} started at {time.ctime(time.time())}\n"
               f"\tLocal addr: {localaddr}\n\tRemote addr:{remoteaddr}")

    def handle_accepted(self, conn: socket.socket, addr: _typing.Any) -> None:
        _debug(f"Incoming connection from {addr!r}")
        if self._ssl_context is None:
            # 3.11's call, unchanged: channel classes written for it work.
            self.channel_class(self, conn, addr, self.data_size_limit, self._map,
                               self.enable_SMTPUTF8, self._decode_data)
        else:
            self.channel_class(self, conn, addr, self.data_size_limit, self._map,
                               self.enable_SMTPUTF8, self._decode_data,
                               ssl_context=self._ssl_context, require_tls=self._require_tls)

    def process_message(self, peer: _typing.Any, mailfrom: str, rcpttos: list[str],
                        data: _typing.Any, **kwargs: _typing.Any) -> _typing.Optional[str]:
        """Do something with a message; override it.

        Args:
            peer: the client's address, ``(host, port)``.
            mailfrom: the envelope sender (MAIL FROM), as sent.
            rcpttos: the envelope recipients (RCPT TO), as sent.
            data: the message, transparency dots removed and lines ending in
                ``\\n``: ``bytes``, or ``str`` with ``decode_data=True``.
            **kwargs: unless ``decode_data``: ``mail_options`` (MAIL's
                parameters, upper-cased, e.g. ``['BODY=8BITMIME',
                'SMTPUTF8']``) and ``rcpt_options`` (the last RCPT's).

        Returns:
            ``None`` for ``250 OK``, else the reply line to send (``'550
            No such user'``).

        Raises:
            Anything: it reaches this channel's ``handle_error()`` (by
            default: logged, and the connection closed).
        """
        raise NotImplementedError


class DebuggingServer(SMTPServer):
    """Prints every message on stdout (and delivers nothing)."""

    def _print_message_content(self, peer: _typing.Any, data: _typing.Any) -> None:
        in_headers = True
        for line in data.splitlines():
            if in_headers and not line:
                # The headers end here: show where the message came from.
                peer_header = "X-Peer: " + peer[0]
                print(peer_header if isinstance(data, str)
                      else repr(peer_header.encode("utf-8")))
                in_headers = False
            print(line if isinstance(data, str) else repr(line))

    def process_message(self, peer: _typing.Any, mailfrom: str, rcpttos: list[str],
                        data: _typing.Any, **kwargs: _typing.Any) -> None:
        print("---------- MESSAGE FOLLOWS ----------")
        if kwargs.get("mail_options"):
            print(f"mail options: {kwargs['mail_options']}")
        if kwargs.get("rcpt_options"):
            print(f"rcpt options: {kwargs['rcpt_options']}\n")
        self._print_message_content(peer, data)
        print("------------ END MESSAGE ------------")


class PureProxy(SMTPServer):
    """Relays every message to ``remoteaddr`` with :mod:`smtplib`, adding an
    ``X-Peer`` header.  The relay is synchronous: the loop waits for it.

    When the next server refuses every recipient (or cannot be reached),
    the client is told (``451`` if that may be temporary, else ``554``), so
    the message is not lost; 3.11 answered ``250 OK`` regardless.
    """

    def __init__(self, *args: _typing.Any, **kwargs: _typing.Any) -> None:
        if kwargs.get("enable_SMTPUTF8"):
            raise ValueError("PureProxy does not support SMTPUTF8.")
        super().__init__(*args, **kwargs)

    def process_message(self, peer: _typing.Any, mailfrom: str, rcpttos: list[str],
                        data: _typing.Any, **kwargs: _typing.Any) -> _typing.Optional[str]:
        # 3.11 took no **kwargs and split bytes with a str: with the default
        # decode_data=False every message failed.  Both forms work here.
        newline = NEWLINE if isinstance(data, str) else b"\n"
        lines = data.split(newline)
        end_of_headers = next((i for i, line in enumerate(lines) if not line), len(lines))
        header = "X-Peer: " + peer[0]
        lines.insert(end_of_headers, header if isinstance(data, str) else header.encode())
        refused = self._deliver(mailfrom, rcpttos, newline.join(lines))
        _debug("we got some refusals:", refused)
        if refused and len(refused) >= len(set(rcpttos)):
            codes = [code for code, _ in refused.values()]
            if all(isinstance(code, int) and 500 <= code < 600 for code in codes):
                return "554 Error: the next server refused every recipient"
            return "451 Error: the next server did not take the message, try again later"
        return None

    def _deliver(self, mailfrom: str, rcpttos: list[str], data: _typing.Any,
                 ) -> dict[str, tuple[int, _typing.Any]]:
        """Send the message on; ``{recipient: (code, reply)}`` for the
        recipients refused (code -1: no SMTP reply, e.g. not reachable)."""
        import smtplib

        refused: dict[str, tuple[int, _typing.Any]] = {}
        try:
            relay = smtplib.SMTP()
            relay.connect(self._remoteaddr[0], self._remoteaddr[1])
            try:
                refused = relay.sendmail(mailfrom, rcpttos, data)
            finally:
                relay.quit()
        except smtplib.SMTPRecipientsRefused as exc:
            _debug("got SMTPRecipientsRefused")
            refused = exc.recipients
        except (OSError, smtplib.SMTPException) as exc:
            _debug("got", exc.__class__)
            code = getattr(exc, "smtp_code", -1)
            reply = getattr(exc, "smtp_error", "ignore")
            refused = {rcpt: (code, reply) for rcpt in rcpttos}
        return refused


class Options:
    """The command line's settings (:func:`parseargs` fills in the
    addresses: ``localhost``, ``localport``, ``remotehost``, ``remoteport``)."""

    setuid = True
    classname = "PureProxy"
    size_limit: _typing.Optional[int] = None
    enable_SMTPUTF8 = False
    # STARTTLS (pollchat's options; private, so Options stays 3.11's).
    _tls_cert: _typing.Optional[str] = None
    _tls_key: _typing.Optional[str] = None
    _require_tls = False
    localhost: str
    localport: int
    remotehost: str
    remoteport: int


def parseargs() -> Options:
    """Parse ``sys.argv[1:]`` (see the module's usage text); exit with the
    usage text on a mistake."""
    global DEBUGSTREAM
    try:
        opts, args = getopt.getopt(
            sys.argv[1:], "nVhc:s:du",
            ["class=", "nosetuid", "version", "help", "size=", "debug", "smtputf8",
             "tls-cert=", "tls-key=", "require-tls"])
    except getopt.error as exc:
        usage(1, exc)
    options = Options()
    for opt, value in opts:
        if opt in ("-h", "--help"):
            usage(0)
        elif opt in ("-V", "--version"):
            print(__version__)
            sys.exit(0)
        elif opt in ("-n", "--nosetuid"):
            options.setuid = False
        elif opt in ("-c", "--class"):
            options.classname = value
        elif opt in ("-d", "--debug"):
            DEBUGSTREAM = sys.stderr
        elif opt in ("-u", "--smtputf8"):
            options.enable_SMTPUTF8 = True
        elif opt == "--tls-cert":
            options._tls_cert = value
        elif opt == "--tls-key":
            options._tls_key = value
        elif opt == "--require-tls":
            options._require_tls = True
        elif opt in ("-s", "--size"):
            try:
                options.size_limit = int(value)
            except ValueError:
                print("Invalid size: " + value, file=sys.stderr)
                sys.exit(1)
    if len(args) > 2:
        usage(1, "Invalid arguments: %s" % COMMASPACE.join(args))
    if options._tls_cert is None and (options._tls_key or options._require_tls):
        usage(1, "--tls-key and --require-tls need --tls-cert")
    localspec = args[0] if args else "localhost:8025"
    remotespec = args[1] if len(args) > 1 else "localhost:25"
    options.localhost, options.localport = _host_port(localspec, "local")
    options.remotehost, options.remoteport = _host_port(remotespec, "remote")
    return options


def _host_port(spec: str, which: str) -> tuple[str, int]:
    host, colon, port = spec.partition(":")
    if not colon:
        usage(1, f"Bad {which} spec: {spec}")
    try:
        return host, int(port)
    except ValueError:
        usage(1, f"Bad {which} port: {spec}")


def _server_class(classname: str) -> _typing.Any:
    """The class ``-c`` names: ``module.Class``, or a name of this module."""
    import importlib

    module_name, _, name = classname.rpartition(".")
    try:
        module = importlib.import_module(module_name) if module_name else sys.modules[__name__]
        return getattr(module, name)
    except (ImportError, AttributeError) as exc:
        print(f"{program}: cannot use -c {classname}: {exc}", file=sys.stderr)
        sys.exit(1)


def _tls_context(certfile: str, keyfile: _typing.Optional[str]) -> _typing.Any:
    """The server context of ``--tls-cert``/``--tls-key``; exits with one
    line if the files cannot be used."""
    import ssl

    from .tls import server_context

    try:
        return server_context(certfile, keyfile)
    except (OSError, ssl.SSLError) as exc:
        print(f"{program}: cannot use --tls-cert {certfile}"
              + (f" --tls-key {keyfile}" if keyfile else "") + f": {exc}", file=sys.stderr)
        sys.exit(1)


def _main() -> None:
    """``python -m pollchat.smtpd``: 3.11's ``python -m smtpd``."""
    from ._install import install

    options = parseargs()
    # The class named by -c may `import smtpd`: on 3.12+ that needs us.
    install()
    server_class = _server_class(options.classname)
    tls: dict[str, _typing.Any] = {}
    if options._tls_cert is not None:
        tls = {"ssl_context": _tls_context(options._tls_cert, options._tls_key),
               "require_tls": options._require_tls}
    try:
        server_class((options.localhost, options.localport),
                     (options.remotehost, options.remoteport),
                     options.size_limit, enable_SMTPUTF8=options.enable_SMTPUTF8, **tls)
    except TypeError as exc:
        if not tls:
            raise
        # A -c class written for 3.11, whose __init__ takes no TLS settings.
        print(f"{program}: cannot offer STARTTLS with -c {options.classname}: {exc}",
              file=sys.stderr)
        sys.exit(1)
    if options.setuid:
        try:
            import pwd
        except ImportError:
            print('Cannot import module "pwd"; try running with -n option.', file=sys.stderr)
            sys.exit(1)
        nobody = pwd.getpwnam("nobody")[2]
        try:
            os.setuid(nobody)
        except PermissionError:
            print('Cannot setuid "nobody"; try running with -n option.', file=sys.stderr)
            sys.exit(1)
    try:
        # A 1 s bound on each wait (3.11: 30 s): a SIGINT that lands just
        # before the poll starts is then acted on within a second, not 30.
        asyncore.loop(timeout=1.0)
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    # Run the imported module, not this __main__ copy, so that -d and the
    # classes are the ones `import smtpd` gives the server class named by -c.
    from pollchat import smtpd as _smtpd  # noqa: PLW0406

    _smtpd._main()
