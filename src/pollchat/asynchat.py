"""Drop-in replacement for CPython 3.11's ``asynchat``, on pollchat's loop.

``from pollchat import asynchat`` (or :func:`pollchat.install`, after which
``import asynchat`` gives this module) and chat-style programs run unchanged:
``async_chat``, ``simple_producer`` and ``find_prefix_at_end`` are here, with
CPython's behaviour (see :mod:`pollchat.chat` for the few differences, all
fixes).

CPython's module has no ``__all__``, so ``from asynchat import *`` also gave
the names it imported, ``asyncore`` and ``deque``; old scripts use them after
a star import, so they are exported here too (``asyncore`` being pollchat's).
The standard library's asyncore/asynchat are never imported.
"""

from __future__ import annotations

from collections import deque

from . import asyncore
from .chat import async_chat, find_prefix_at_end, simple_producer

__all__ = ["async_chat", "asyncore", "deque", "find_prefix_at_end", "simple_producer"]
