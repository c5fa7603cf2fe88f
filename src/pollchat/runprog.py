"""Running a program as ``python`` runs it, for ``pollchat run``.

``pollchat run SCRIPT ARGS`` / ``pollchat run -m MODULE ARGS`` must give the
program what ``python`` would: its own ``sys.argv``, a fresh ``__main__``,
``sys.path[0]``, its exit status and tracebacks (without pollchat's frames
on top), and Ctrl-C ending the process by SIGINT.  :mod:`pollchat.cli` does
the rest (options, install(), the fd limit, workers).
"""

from __future__ import annotations

import os
import signal
import sys
import traceback
from types import TracebackType
from typing import List, Optional, Sequence, Tuple

__all__ = ["CliError", "run_program", "split_run_args"]

# pollchat run's own options that take a value; the first other token is the
# program.
RUN_OPTIONS_WITH_VALUE = ("--backend", "--workers", "--graceful-timeout")


class CliError(Exception):
    """One line for stderr, and the exit status."""

    def __init__(self, message: str, status: int = 1) -> None:
        super().__init__(message)
        self.status = status


def split_run_args(tokens: Sequence[str]) -> Tuple[List[str], List[str]]:
    """Split ``pollchat run``'s arguments as python splits its own: options
    up to SCRIPT or ``-m MODULE``, then the program's arguments.

    Returns ``(for argparse, for the program)``.
    """
    mine: List[str] = []
    i = 0
    while i < len(tokens):
        token = tokens[i]
        if token == "--":
            mine.extend(tokens[i:i + 2])
            return mine, list(tokens[i + 2:])
        if token == "-m":
            mine.extend(tokens[i:i + 2])
            return mine, list(tokens[i + 2:])
        if token.startswith("-m") and not token.startswith("--"):  # -mMODULE
            mine.append(token)
            return mine, list(tokens[i + 1:])
        if token in RUN_OPTIONS_WITH_VALUE:
            mine.extend(tokens[i:i + 2])
            i += 2
            continue
        if token.startswith("-") and token != "-":
            mine.append(token)  # a flag, or an unknown option argparse will report
            i += 1
            continue
        mine.append(token)  # SCRIPT
        return mine, list(tokens[i + 1:])
    return mine, []


def _trim_traceback(tb: Optional[TracebackType]) -> Optional[TracebackType]:
    """Drop the frames of pollchat run and runpy from the top of ``tb``, so
    that the program's traceback looks as it does under python itself."""
    import runpy

    ours = {_trim_traceback.__code__.co_filename, runpy.run_path.__code__.co_filename}
    while tb is not None and tb.tb_frame.f_code.co_filename in ours:
        tb = tb.tb_next
    return tb


def run_program(module: Optional[str], script: Optional[str], args: List[str],
                 real_cli: bool) -> int:
    """Run the program as python would; its SystemExit propagates."""
    import runpy

    safe_path = getattr(sys.flags, "safe_path", False)  # python -P: no sys.path[0]
    try:
        if module is not None:
            sys.argv[:] = ["-m", *args]  # runpy puts the module's file in argv[0]
            if not safe_path:
                sys.path[0] = os.getcwd()
            runpy.run_module(module, run_name="__main__", alter_sys=True)
        else:
            assert script is not None
            sys.argv[:] = [script, *args]
            if os.path.isfile(script) and not script.endswith((".pyc", ".pyo")):
                if not safe_path:
                    sys.path[0] = os.path.dirname(os.path.realpath(script))
                _exec_script(script)
            else:  # a directory or zip file with __main__.py, or compiled code
                if not safe_path:
                    del sys.path[0]  # runpy puts the archive there instead, as python does
                runpy.run_path(script, run_name="__main__")
    except SystemExit:
        raise
    except KeyboardInterrupt as exc:
        _print_uncaught(exc)
        return _interrupted(real_cli)
    except BaseException as exc:
        tb = _trim_traceback(exc.__traceback__)
        if tb is None and module is not None and isinstance(exc, ImportError):
            raise CliError(str(exc)) from None  # runpy could not find the module
        _print_uncaught(exc)
        return 1
    return 0


def _exec_script(script: str) -> None:
    """Run a source file as ``python script`` does: in a fresh ``__main__``
    module (``__file__`` absolute, ``sys.argv[0]`` as given), kept in
    ``sys.modules`` while it runs."""
    import builtins
    import importlib.machinery
    import types

    path = os.path.abspath(script)
    with open(path, "rb") as source_file:  # bytes: compile() honours a coding cookie
        source = source_file.read()
    code = compile(source, path, "exec", dont_inherit=True)
    main_module = types.ModuleType("__main__")
    main_module.__dict__.update(
        __file__=path, __cached__=None, __package__=None, __spec__=None,
        __loader__=importlib.machinery.SourceFileLoader("__main__", path),
        __builtins__=builtins)
    saved = sys.modules.get("__main__")
    sys.modules["__main__"] = main_module
    try:
        exec(code, main_module.__dict__)
    finally:
        if saved is not None:
            sys.modules["__main__"] = saved


def _print_uncaught(exc: BaseException) -> None:
    """Report an exception the program did not catch, through
    ``sys.excepthook`` as python does, without pollchat's own frames.

    The standard hook's report is written in one piece: worker processes
    share stderr, and an unbuffered one (``PYTHONUNBUFFERED``) would
    interleave two workers' tracebacks in the middle of their lines.
    """
    exc.__traceback__ = _trim_traceback(exc.__traceback__)
    if sys.excepthook is not sys.__excepthook__ or sys.stderr is None:
        sys.excepthook(type(exc), exc, exc.__traceback__)
        return
    sys.stderr.write("".join(traceback.format_exception(type(exc), exc, exc.__traceback__)))
    sys.stderr.flush()


def _interrupted(real_cli: bool) -> int:
    """Exit as python does after an uncaught KeyboardInterrupt: killed by
    SIGINT (so that shells see it), or status 130 when called in-process."""
    if real_cli and hasattr(signal, "SIGINT") and os.name == "posix":
        sys.stdout.flush()
        sys.stderr.flush()
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        os.kill(os.getpid(), signal.SIGINT)
    return 130
