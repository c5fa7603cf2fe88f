"""The ``pollchat`` command (also ``python -m pollchat``).

Subcommands:

* ``run``: run a legacy asyncore/asynchat program unmodified, on pollchat;
* ``backends``: what this machine offers (pollers, FD_SETSIZE, fd limits);
* ``chat``: the multi-user line chat server (:mod:`pollchat.chatserver`).
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import textwrap
from typing import Any, List, Optional, Sequence, Tuple

from . import __version__
from . import backends as _backends
from . import channel as _channel
from ._install import ModuleAlreadyImportedError, install, raise_fd_limit
from .runprog import CliError, run_program, split_run_args

__all__ = ["build_parser", "main"]

PROG = "pollchat"

RUN_EXAMPLES = """\
examples:
  pollchat run server.py --port 8025          run server.py with its own arguments
  pollchat run -m mypackage.server            run a module, as python -m does
  pollchat run --backend poll legacy.py       pick the poller (else $POLLCHAT_BACKEND, else auto)
  python3.13 -m pollchat run /usr/lib/python3.11/smtpd.py -n -c DebuggingServer 127.0.0.1:8025
  pollchat run --workers auto server.py       one worker process per CPU, sharing its listeners
  pollchat run --workers 4 --proxy-protocol server.py   behind HAProxy (send-proxy-v2)

Options go before SCRIPT or -m MODULE; everything after belongs to the program.
The program sees sys.argv, __main__ and sys.path as under python itself, and its
exit status and tracebacks are its own.

With --workers, a master process runs the program in N worker processes that
share its TCP listeners. Signals to the master: SIGTERM or Ctrl-C stops the
workers gracefully (they stop accepting and send what is queued; killed after
--graceful-timeout), SIGHUP restarts them one by one. Exit status: 0 for a
clean stop, 1 if a worker had to be killed or failed, 3 if every worker died
at start (the program's error is above it)."""

BACKENDS_EXAMPLES = """\
examples:
  pollchat backends
  POLLCHAT_BACKEND=poll pollchat backends     check what the variable selects"""

CHAT_EXAMPLES = """\
examples:
  pollchat chat                               listen on 127.0.0.1:7000
  pollchat chat --host 0.0.0.0 --port 7777    listen on every interface
  pollchat chat --port 0 --verbose            any free port (logged), every line logged
  pollchat chat --certfile cert.pem --keyfile key.pem
                                              over TLS (openssl s_client -connect 127.0.0.1:7000)

then, in other terminals:  nc 127.0.0.1 7000   or   telnet 127.0.0.1 7000
commands for clients: /nick NAME, /who, /quit [MESSAGE], /help; anything else is
sent to everyone. Ctrl-C stops the server (clients are told)."""

def _port(text: str) -> int:
    try:
        value = int(text, 10)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a port number: {text!r}") from None
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"port must be 0-65535, not {value}")
    return value


def _positive(text: str) -> int:
    try:
        value = int(text, 10)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, not {value}")
    return value


def _workers(text: str) -> int:
    from .workers import parse_workers

    try:
        return parse_workers(text)
    except (TypeError, ValueError) as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of seconds: {text!r}") from None
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"must be a positive number of seconds, not {text}")
    return value


def _add_proxy_option(parser: argparse.ArgumentParser, what: str) -> None:
    parser.add_argument(
        "--proxy-protocol", action="store_true",
        help=f"expect a PROXY protocol v1/v2 header (HAProxy send-proxy[-v2], nginx "
             f"proxy_protocol) on every connection {what}, and report the client's address "
             f"it carries; a connection without a valid one is closed")


def _add_backend_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--backend", metavar="NAME",
        help=f"poller to use: {', '.join(_backends.all_backends())} or auto "
             f"(default: ${_backends.ENV_VAR}, else auto; see 'pollchat backends')")


def _para(text: str) -> str:
    return textwrap.fill(text, width=79)


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the ``pollchat`` command."""
    formatter = argparse.RawDescriptionHelpFormatter
    parser = argparse.ArgumentParser(
        prog=PROG, formatter_class=formatter,
        description="asyncore and asynchat for modern Python, on scalable pollers.",
        epilog=textwrap.dedent("""\
            commands:
              pollchat run SCRIPT [ARGS...]     run a legacy asyncore/asynchat program
              pollchat backends                 list the pollers and limits of this machine
              pollchat chat                     start the demo chat server

            'pollchat COMMAND --help' tells more."""))
    parser.add_argument("--version", action="version",
                        version=f"%(prog)s {__version__} (Python {sys.version.split()[0]})")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    parser.subcommands = sub.choices  # type: ignore[attr-defined]  # for main()'s errors

    run = sub.add_parser(
        "run", formatter_class=formatter, allow_abbrev=False, epilog=RUN_EXAMPLES,
        help="run a legacy asyncore/asynchat program unmodified",
        usage="%(prog)s [OPTIONS] (SCRIPT | -m MODULE) [ARGS...]",
        description=_para("Run an asyncore/asynchat program without editing it: 'import "
                          "asyncore' and 'import asynchat' give pollchat's modules (also on "
                          "Python 3.12+, where the standard library has none), and 'import "
                          "smtpd' gives pollchat.smtpd where the interpreter has no smtpd; "
                          "on the chosen backend, with the soft open-file limit raised to the "
                          "hard limit first."))
    _add_backend_option(run)
    run.add_argument("--no-raise-fd-limit", dest="raise_fd_limit", action="store_false",
                     help="leave the soft open-file limit (RLIMIT_NOFILE) as it is")
    run.add_argument("-q", "--quiet", action="store_true",
                     help="no 'pollchat: ...' line on stderr before the program starts "
                          "(warnings are still given)")
    run.add_argument("--workers", type=_workers, metavar="N",
                     help="run the program in N worker processes (a number, or 'auto' for "
                          "one per CPU) under a master that shares their listeners, "
                          "restarts them, and stops them gracefully")
    run.add_argument("--graceful-timeout", type=_seconds, metavar="SECONDS",
                     help="with --workers: how long a stopping worker may take to send what "
                          "is queued before it is killed (default: 30)")
    _add_proxy_option(run, "the program accepts")
    run.add_argument("-m", dest="module", metavar="MODULE",
                     help="run library module MODULE as a script, as python -m does")
    run.add_argument("script", nargs="?", metavar="SCRIPT", help="the program's file")
    run.add_argument("args", nargs="*", metavar="ARGS", help="the program's arguments")

    backends = sub.add_parser(
        "backends", formatter_class=formatter, epilog=BACKENDS_EXAMPLES,
        help="list every backend, available or not, and the fd limits",
        description=_para("Every poller backend, whether this machine has it (and why not), "
                          "what it reports and its limits; which one 'auto' picks; what "
                          f"${_backends.ENV_VAR} selects; FD_SETSIZE; this process's "
                          "open-file limits."))
    del backends  # no options

    chat = sub.add_parser(
        "chat", formatter_class=formatter, epilog=CHAT_EXAMPLES,
        help="run the multi-user line chat server (the showcase)",
        description=_para("A multi-user line chat server built on async_chat: nicknames, "
                          "broadcast, /who, /nick, /quit, a line-length limit. Logs one line "
                          "per connection and disconnection on stderr."))
    chat.add_argument("--host", default="127.0.0.1",
                      help="address to listen on (default: %(default)s)")
    chat.add_argument("--port", type=_port, default=7000,
                      help="TCP port; 0 picks a free one and logs it (default: %(default)s)")
    _add_backend_option(chat)
    chat.add_argument("--max-line", type=_positive, default=512, metavar="BYTES",
                      help="longest line accepted; longer ones are dropped and their "
                           "sender told (default: %(default)s)")
    chat.add_argument("--certfile", metavar="CERT",
                      help="serve over TLS with this PEM certificate chain (the key too, "
                           "unless --keyfile)")
    chat.add_argument("--keyfile", metavar="KEY",
                      help="the PEM private key for --certfile")
    chat.add_argument("--no-raise-fd-limit", dest="raise_fd_limit", action="store_false",
                      help="leave the soft open-file limit (RLIMIT_NOFILE) as it is")
    _add_proxy_option(chat, "the server accepts")
    chat.add_argument("-v", "--verbose", action="store_true",
                      help="log every line and nick change too (DEBUG)")
    return parser


# -- helpers ---------------------------------------------------------------------------


def _resolve_backend(name: Optional[str]) -> Tuple[str, str]:
    """(concrete backend name, where the choice came from).

    Raises:
        CliError: unknown or unavailable (status 2).
    """
    try:
        choice = _backends.resolve_backend(name)
    except _backends.UnknownBackendError as exc:
        raise CliError(str(exc), 2) from None
    return choice.name, "--backend" if choice.origin == "argument" else choice.origin


def _fd_limit_report(raise_it: bool) -> str:
    """Raise the soft RLIMIT_NOFILE if asked; say what happened."""
    soft, hard = _backends.fd_limits()
    if soft is None and hard is None:
        return "open-file limit: unknown or unlimited"
    if not raise_it:
        return f"open-file limit left at {_limit(soft)} (hard limit {_limit(hard)})"
    old, new = raise_fd_limit()
    if old != new:
        return f"raised the soft open-file limit from {_limit(old)} to {_limit(new)}"
    if new == hard:
        return f"open-file limit {_limit(new)} (already the hard limit)"
    return f"could not raise the soft open-file limit {_limit(old)} (hard limit {_limit(hard)})"


def _limit(value: Optional[int]) -> str:
    return "unlimited" if value is None else str(value)


def _fds_in_use() -> int:
    """How many fds this process has open (3, for stdio, where it cannot tell)."""
    try:
        return len(os.listdir("/dev/fd")) - 1  # less the one listdir() itself opened
    except OSError:
        return 3


def _fd_cap_warning(backend: str, soft_limit: Optional[int], who: str,
                    unit: str) -> Optional[str]:
    """The warning to give at start when ``backend`` cannot watch every fd
    this process may open (select: none at or above ``FD_SETSIZE``), or
    ``None`` when it can.

    Args:
        backend: a concrete, available backend name.
        soft_limit: the soft ``RLIMIT_NOFILE`` (``None``: unlimited or unknown).
        who: what is capped, for the message ("server", "program").
        unit: what the cap counts ("clients", "connections").
    """
    max_fd = getattr(_backend_class(backend, True), "max_fd", None)
    if max_fd is None or (soft_limit is not None and soft_limit <= max_fd + 1):
        return None
    uncapped = [name for name in _backends.available_backends()
                if name not in _backends.BY_NAME_ONLY  # event loops: not a cure for this
                and getattr(_backend_class(name, True), "max_fd", None) is None]
    hint = (f"--backend {' or '.join(uncapped)} has no such cap" if uncapped
            else "no backend without that cap is available here")
    about = max(max_fd + 1 - _fds_in_use(), 0)
    return (f"the {backend} backend cannot watch fds >= {max_fd + 1}, so this {who} is capped "
            f"at about {about:,} {unit} although the open-file limit is "
            f"{_limit(soft_limit)}; {hint}")


def _warn_of_fd_cap(log: logging.Logger, backend: str, who: str, unit: str) -> None:
    """Log :func:`_fd_cap_warning`'s warning, if there is one."""
    warning = _fd_cap_warning(backend, _backends.fd_limits()[0], who, unit)
    if warning is not None:
        log.warning("%s", warning)


def _log_to_stderr(name: str, fmt: str, level: int) -> logging.Handler:
    """A stderr handler on logger ``name`` only: the program's own logging
    configuration (basicConfig on the root logger) stays its own."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter(fmt, datefmt="%H:%M:%S"))
    log = logging.getLogger(name)
    log.addHandler(handler)
    log.setLevel(level)
    log.propagate = False
    return handler


# -- run ---------------------------------------------------------------------------------


def _run(ns: argparse.Namespace, program_args: List[str], real_cli: bool) -> int:
    target = ns.module or ns.script
    if not target:
        raise CliError("give the program to run: SCRIPT or -m MODULE "
                        "(see 'pollchat run --help')", 2)
    backend, origin = _resolve_backend(ns.backend)
    if origin == "auto":
        # The precedence (pollchat.backends.registry): a program's own choice
        # comes before auto; its use_poll=True also means the best here but
        # select, which is the same choice unless select is all there is.
        origin = "auto, unless the program picks one; use_poll=True gets it too"
    if ns.module is None and not os.path.exists(ns.script):
        raise CliError(f"can't open file {os.path.abspath(ns.script)!r}: "
                        f"[Errno 2] No such file or directory", 2)
    if ns.graceful_timeout is not None and ns.workers is None:
        raise CliError("--graceful-timeout applies to worker processes: give --workers too", 2)
    try:
        install()
    except ModuleAlreadyImportedError as exc:
        raise CliError(str(exc)) from None

    log = logging.getLogger("pollchat.cli")
    level = logging.WARNING if ns.quiet else logging.INFO
    # pollchat's own lines: the command's, the workers' master, refused PROXY headers.
    handlers = [(name, _log_to_stderr(name, "pollchat: %(message)s", level))
                for name in ("pollchat.cli", "pollchat.workers", "pollchat.proxy")]
    saved_argv, saved_path = sys.argv[:], sys.path[:]
    saved_env = os.environ.get(_backends.ENV_VAR)
    saved_proxy = _channel.dispatcher.proxy_protocol
    try:
        if ns.backend is not None:
            os.environ[_backends.ENV_VAR] = ns.backend.strip().lower()  # children inherit it
        if ns.proxy_protocol:
            _channel.dispatcher.proxy_protocol = True  # every listener of the program
        workers = "" if ns.workers is None else \
            f" in {ns.workers} worker process{'es' if ns.workers > 1 else ''}"
        proxy = "; PROXY protocol expected" if ns.proxy_protocol else ""
        log.info("running %s%s on the %s backend (%s)%s; %s", target, workers, backend, origin,
                 proxy, _fd_limit_report(ns.raise_fd_limit))
        _warn_of_fd_cap(log, backend, "program", "connections")
        if ns.workers is None:
            return run_program(ns.module, ns.script, program_args, real_cli)
        from .workers import DEFAULT_GRACEFUL_TIMEOUT, Master

        def run_in_worker() -> int:
            return run_program(ns.module, ns.script, program_args, False)

        timeout = ns.graceful_timeout or DEFAULT_GRACEFUL_TIMEOUT
        return Master(run_in_worker, ns.workers, timeout).run()
    finally:
        sys.argv[:] = saved_argv
        sys.path[:] = saved_path
        _channel.dispatcher.proxy_protocol = saved_proxy
        if saved_env is None:
            os.environ.pop(_backends.ENV_VAR, None)
        else:
            os.environ[_backends.ENV_VAR] = saved_env
        for name, handler in handlers:
            logging.getLogger(name).removeHandler(handler)


# -- backends ----------------------------------------------------------------------------


def _backend_class(name: str, available: bool) -> Any:
    cls = getattr(_backends.pollers, f"{name.capitalize()}Backend", None)
    if cls is None and available:
        factory = _backends.get_backend(name)
        cls = getattr(factory, "backend_class", factory)  # a factory may name its class
    return cls if isinstance(cls, type) else None


def _backends_report() -> List[str]:
    status = _backends.backend_status()
    try:
        best: Optional[str] = _backends.best_backend()
    except _backends.UnknownBackendError:
        best = None
    rows = []
    for info in status:
        cls = _backend_class(info.name, info.available)
        reports = _backends.event_names(cls.reports) if cls is not None else "?"
        limits = getattr(cls, "limits", "") if cls is not None else ""
        rows.append((info, reports, limits))
    width = max(len("BACKEND"), *(len(info.name) for info, _, _ in rows)) + 2
    lines = [f"pollchat {__version__}, Python {sys.version.split()[0]} on {sys.platform}", "",
             f"{'BACKEND':<{width}}{'AVAILABLE':<11}REPORTS"]
    for info, reports, limits in rows:
        mark = "  <- auto" if info.name == best else ""
        lines.append(f"{info.name:<{width}}{'yes' if info.available else 'no':<11}"
                     f"{reports}{mark}")
        if not info.available:
            lines.append(f"{'':<{width}}  why not: {info.reason}")
        if limits:
            lines.append(f"{'':<{width}}  limits:  {limits}")
    lines.append("")
    order = ", ".join(_backends.PREFERENCE)
    pairs = [("auto picks", f"{best} (the first available of: {order})" if best
              else "nothing: no backend is available")]
    env = os.environ.get(_backends.ENV_VAR, "").strip() or None
    if env is None:
        pairs.append((f"${_backends.ENV_VAR}", f"unset, so programs use {best} (auto)"))
        pairs.append(("use_poll=True", "asyncore.loop(use_poll=True) picks "
                      f"{_backends.resolve_backend(use_poll=True).name} (the best here but "
                      "select)"))
    else:
        try:
            pairs.append((f"${_backends.ENV_VAR}",
                          f"{env!r}, so programs use {_backends.choose_backend()}"))
        except _backends.UnknownBackendError as exc:
            pairs.append((f"${_backends.ENV_VAR}", f"{env!r}: ERROR: {exc}"))
    pairs.append(("FD_SETSIZE", f"{_backends.FD_SETSIZE} (select refuses fds >= "
                                f"{_backends.FD_SETSIZE}; the others have no such limit)"))
    soft, hard = _backends.fd_limits()
    if soft is None and hard is None:
        limits_text = "unknown or unlimited"
    else:
        limits_text = (f"soft {_limit(soft)}, hard {_limit(hard)} (RLIMIT_NOFILE; "
                       "'pollchat run' raises soft to hard)")
    pairs.append(("open files", limits_text))
    key_width = max(len(key) for key, _ in pairs) + 2
    lines.extend(f"{key + ':':<{key_width}}{value}" for key, value in pairs)
    return lines


# -- chat --------------------------------------------------------------------------------


def _chat(ns: argparse.Namespace) -> int:
    from .chatserver import ChatServer

    backend, origin = _resolve_backend(ns.backend)
    logging.basicConfig(level=logging.DEBUG if ns.verbose else logging.INFO,
                        format="%(asctime)s %(message)s", datefmt="%Y-%m-%d %H:%M:%S",
                        stream=sys.stderr)
    log = logging.getLogger("pollchat.chat")
    context = _tls_context(ns.certfile, ns.keyfile)
    limit_text = _fd_limit_report(ns.raise_fd_limit)
    try:
        server = ChatServer(ns.host, ns.port, backend=backend, max_line=ns.max_line,
                            proxy_protocol=ns.proxy_protocol, ssl_context=context)
    except OSError as exc:
        reason = exc.strerror or str(exc)
        host = f"[{ns.host}]" if ":" in ns.host else ns.host
        raise CliError(f"cannot listen on {host}:{ns.port}: {reason}") from None
    host, port = server.address
    shown = f"[{host}]" if ":" in host else host
    log.info("listening on %s:%d%s (backend %s, %s; max line %d bytes%s); %s; Ctrl-C to stop",
             shown, port, " over TLS" if context else "", backend, origin, ns.max_line,
             "; PROXY protocol expected" if ns.proxy_protocol else "", limit_text)
    _warn_of_fd_cap(log, backend, "server", "clients")

    def terminate(signum: int, frame: Any) -> None:
        # SIGTERM: the same clean shutdown as Ctrl-C, but without raising
        # into whatever code the signal interrupted: stop() wakes the loop,
        # run() returns, and serve_forever() shuts down gracefully.
        server.loop.stop()

    previous = signal.signal(signal.SIGTERM, terminate)
    try:
        server.serve_forever()
    except KeyboardInterrupt:  # a second Ctrl-C during the shutdown
        log.info("interrupted again: closing at once")
        for session in list(server.sessions.values()):
            session.close()
        return 130
    finally:
        signal.signal(signal.SIGTERM, previous)
    return 0


def _tls_context(certfile: Optional[str], keyfile: Optional[str]) -> Any:
    """The chat's server-side TLS context, or None without --certfile.

    Raises:
        CliError: --keyfile alone (status 2); a file that cannot be read or
            holds no valid certificate/key (status 1).
    """
    if certfile is None:
        if keyfile is not None:
            raise CliError("--keyfile needs --certfile", 2)
        return None
    import ssl

    from .tls import server_context

    try:
        return server_context(certfile, keyfile)
    except (OSError, ssl.SSLError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        raise CliError(f"cannot use the TLS certificate {certfile!r}"
                        f"{f' and key {keyfile!r}' if keyfile else ''}: {reason}") from None


# -- main ----------------------------------------------------------------------------------


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Run the ``pollchat`` command; return the exit status.

    ``pollchat run`` lets the program's ``SystemExit`` propagate, so that
    ``sys.exit("message")`` behaves as under python.  With ``argv`` omitted
    (the real command line), a program stopped by an uncaught Ctrl-C ends
    this process by SIGINT, as python does; otherwise status 130 is returned.
    """
    real_cli = argv is None
    tokens = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    program_args: List[str] = []
    if tokens and tokens[0] == "run":
        mine, program_args = split_run_args(tokens[1:])
        tokens = ["run", *mine]
    ns, unknown = parser.parse_known_args(tokens)
    if unknown:  # reported by the subcommand's parser, with its usage line
        parser.subcommands.get(ns.command, parser).error(  # type: ignore[attr-defined]
            f"unrecognized arguments: {' '.join(unknown)}")
    if ns.command is None:
        parser.print_help()
        return 2
    try:
        if ns.command == "run":
            return _run(ns, program_args + list(ns.args), real_cli)
        if ns.command == "backends":
            print("\n".join(_backends_report()))
            return 0
        if ns.command == "chat":
            return _chat(ns)
    except CliError as exc:
        print(f"{PROG} {ns.command}: {exc}", file=sys.stderr)
        return exc.status
    parser.error(f"unknown command {ns.command!r}")  # pragma: no cover - argparse checks
    return 2  # pragma: no cover
