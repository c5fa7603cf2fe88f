"""Drop-in replacement for CPython 3.11's ``asynchat``, on pollchat's loop.

``from pollchat import asynchat`` (or :func:`pollchat.install`, after which
``import asynchat`` gives this module) and chat-style programs run unchanged:
``async_chat``, ``simple_producer`` and ``find_prefix_at_end`` are here, with
CPython's behaviour (see :mod:`pollchat.chat` for the few differences, all
invisible through the API or fixes).

The namespace is CPython's: ``asyncore`` (pollchat's), ``deque`` and the
deprecation helpers are here too, and ``from asynchat import *`` gives what it
gave there (the module had no ``__all__``).  The standard library's
asyncore/asynchat are never imported.
"""

from __future__ import annotations

import sys
import warnings
from collections import deque
from typing import Any, Optional, Tuple

from . import asyncore
from .chat import async_chat, find_prefix_at_end, simple_producer

__all__ = ["async_chat", "asyncore", "deque", "find_prefix_at_end", "simple_producer"]

# CPython's module warns on import; pollchat's is not deprecated, so these
# are only here for programs that read them.
_DEPRECATION_MSG = asyncore._DEPRECATION_MSG


def _deprecated(name: str, message: Optional[str] = None, *, remove: Tuple[int, int],
                _version: Any = sys.version_info) -> None:
    """Warn that ``name`` is deprecated (``DeprecationWarning``), as the
    helper of the same name that CPython 3.11's module imported; never
    raises, whatever ``remove`` says."""
    text = message or "{name!r} is deprecated and slated for removal in Python {remove}"
    warnings.warn(text.format(name=name, remove=f"{remove[0]}.{remove[1]}"),
                  DeprecationWarning, stacklevel=3)
