"""Legacy channels and asyncio code in one thread, one event loop.

A program moves to asyncio one channel class at a time:

* :func:`serve`: inside an asyncio program, ``await serve(map)`` runs the
  map's channels in the running event loop, beside ``asyncio.start_server()``
  servers, aiosmtpd, HTTP clients...  It returns when the map is empty (or
  ``Loop.stop()`` is called); cancelling it stops serving and closes nothing,
  and the channels can be served again later.
* :func:`run_coroutine`: from channel code, schedule a coroutine on the
  asyncio loop that runs the channels; the returned future can be awaited
  (from asyncio code) or given a callback.
* The other direction needs nothing from this module: an asyncore program
  run with ``POLLCHAT_BACKEND=asyncio`` (or ``uvloop``) gets an asyncio
  loop of its own, in which :func:`run_coroutine` schedules its coroutines.

How it works (the backends are in :mod:`pollchat.backends.aio`): the map's
:class:`~pollchat.loop.Loop` is moved to a backend bound to the running
event loop (:meth:`Loop.use_backend`), which watches the channels with
``add_reader``/``add_writer``, and that event loop runs the passes
(:meth:`Loop.drive`).  When :func:`serve` returns, the loop goes back to the
backend it had (or to the default one), or is released if nothing needs it.
"""

from __future__ import annotations

import asyncio
from typing import Any, Awaitable, Dict, Optional, Tuple, TypeVar

from . import maps
from .backends.aio import AsyncioBackend, backend_for_loop, check_event_loop
from .loop import Loop, get_loop

__all__ = ["run_coroutine", "serve"]

T = TypeVar("T")


async def serve(map: Optional[Dict[Any, Any]] = None, *,
                max_wait: Optional[float] = 30.0) -> None:
    """Serve the channels of ``map`` (default: ``asyncore.socket_map``) from
    the running asyncio event loop until the map is empty, the pollchat
    loop's ``stop()`` is called, or this is cancelled.

    Cancelling closes nothing: the channels stay in the map, their
    connections open, and a later ``serve()`` (in this event loop or
    another) picks them up.  Timers, idle timeouts and thread-safe callbacks
    of the map's loop keep working, on the event loop's clock.

    Args:
        map: the channel map.
        max_wait: the longest the channels go without a pass (seconds; as
            ``asyncore.loop()``'s ``timeout``): channels whose own
            ``readable()``/``writable()`` answer differently with time are
            asked again at least this often.  ``None``: only on events.

    Raises:
        ExitNow: a handler raised it (as from ``asyncore.loop()``).
        EventLoopError: the running loop cannot watch sockets (Windows'
            ProactorEventLoop; the message says what to use instead).
        RuntimeError: the map is already served (by another ``serve()``, or
            a loop running in another thread).
        whatever leaves a channel's failing ``handle_error()``, as from
        ``asyncore.loop()``.
    """
    aio_loop = asyncio.get_running_loop()
    check_event_loop(aio_loop)
    if map is None:
        map = maps.get_socket_map()
    loop, moved, previous = _bring_to(map, aio_loop)
    try:
        driver = loop.drive(max_wait, wait_for_timers=False)
    except BaseException:
        if moved:
            _send_back(loop, previous)
        raise
    try:
        await driver.future
    finally:
        driver.close()
        if moved:
            _send_back(loop, previous)


def _bring_to(map: Dict[Any, Any], aio_loop: asyncio.AbstractEventLoop
              ) -> Tuple[Loop, bool, Optional[str]]:
    """The map's loop, on a backend bound to ``aio_loop``; whether it was
    moved there; and the name of the backend it had (``None``: it was made
    now)."""
    loop = maps.loop_for_map(map)
    if loop is None:
        return get_loop(map, backend=backend_for_loop(aio_loop)), True, None
    backend = loop.backend
    if isinstance(backend, AsyncioBackend) and backend.loop is aio_loop:
        return loop, False, None
    previous = backend.name
    loop.use_backend(backend_for_loop(aio_loop))
    return loop, True, previous


def _send_back(loop: Loop, previous: Optional[str]) -> None:
    """Take ``loop`` off the event loop, which may close after this: back to
    the backend it had (``None``: the default one), or released if nothing
    needs it, as ``asyncore.loop()`` releases the loops it makes."""
    if loop.closed:
        return
    if not loop.map and loop.releasable():
        loop.close()
    else:
        loop.use_backend(previous)


def run_coroutine(coro: Awaitable[T], map: Optional[Dict[Any, Any]] = None
                  ) -> asyncio.Future[T]:
    """Schedule ``coro`` (a coroutine, or any awaitable) on the asyncio event
    loop that runs the channels of ``map`` (default: ``asyncore.socket_map``),
    from channel code; return its future (an ``asyncio.Task`` for a
    coroutine).

    The future can be awaited by asyncio code, or given a callback
    (``add_done_callback``), which runs in the event loop and may use the
    channels (a ``push()`` there is sent without waiting for the next event).
    With ``POLLCHAT_BACKEND=asyncio`` and ``asyncore.poll()``, the coroutine
    advances while pollchat polls.

    Raises:
        RuntimeError: no asyncio event loop runs this map's channels: serve
            them with ``await serve()``, or choose the asyncio backend.
    """
    running = asyncio._get_running_loop()
    if running is None:
        loop = maps.loop_for_map(maps.get_socket_map() if map is None else map)
        backend = None if loop is None else loop.backend
        if not isinstance(backend, AsyncioBackend):
            raise RuntimeError(
                "no asyncio event loop runs these channels: serve them from one with "
                "`await pollchat.aio.serve(map)`, or choose the asyncio backend "
                "(POLLCHAT_BACKEND=asyncio, or pollchat.Loop('asyncio'))")
        running = backend.loop
    return asyncio.ensure_future(coro, loop=running)


