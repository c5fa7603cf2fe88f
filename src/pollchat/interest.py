"""Interest: keeping the backend's registrations in step with what channels want.

asyncore's contract is level-triggered predicates: before every pass it asks
each channel ``readable()`` and ``writable()``.  Asking 10,000 idle channels
on every pass is what makes the originals O(all connections).
:class:`Interest` keeps each answer registered in the backend between passes
and asks again only where the answer may have changed:

* **dirty** keys: the channel was just added or removed, or something it
  stores changed (``connected``, ``accepting``, ``out_buffer``,
  ``producer_fifo``... are observed where they are stored: see
  :mod:`pollchat.channel`), so its predicates may answer differently;
* **polled** keys: the channel's predicates are its own code (an override of
  ``readable``/``writable``), which may depend on anything, so it is asked
  on every pass, and the backend told only when the answer changes.

One pass therefore costs O(dirty + polled), not O(map).  ``strict`` mode
polls every channel, as CPython did.

There is one registration table: the backend's own keys
(:meth:`~pollchat.backends.Backend.get_map`), each holding the channel in
``key.data`` and the map key (an fd, or an object with ``fileno()``, as
CPython's maps allow) in ``key.fileobj``.  Invariant: a channel is registered
iff it is in the map and wants something; its key's ``events`` are what it
wants (never 0).
"""

from __future__ import annotations

import logging
from typing import Any, Callable, Dict, List, Mapping, Set, Tuple

from .backends import PRI, READ, WRITE, Backend
from .dispatch import REraised

__all__ = ["Interest", "managed_interest", "polls_predicates", "wanted_events"]

logger = logging.getLogger("pollchat")

# Library predicates whose answers change only through state the library
# observes: channels using them are not asked every pass.
_MANAGED: Set[Callable[..., Any]] = set()
# class -> True if its predicates (or the state they read) cannot be trusted.
_polls_cache: Dict[type, bool] = {}


def managed_interest(predicate: Callable[..., Any]) -> Callable[..., Any]:
    """Mark a ``readable``/``writable`` implementation as managed: its answer
    changes only when the channel says so (``_interest_changed()``, which the
    library's observed attributes call).  Returns ``predicate`` unchanged."""
    _MANAGED.add(predicate)
    _polls_cache.clear()
    return predicate


def _class_polls(cls: type) -> bool:
    polls = _polls_cache.get(cls)
    if polls is None:
        polls = (getattr(cls, "readable", None) not in _MANAGED
                 or getattr(cls, "writable", None) not in _MANAGED
                 or bool(getattr(cls, "_pc_unobserved_class", False)))
        _polls_cache[cls] = polls
    return polls


def polls_predicates(channel: Any, map: Mapping[Any, Any]) -> bool:
    """Whether ``channel`` must be asked ``readable()``/``writable()`` on
    every pass of the loop serving ``map``.

    True for predicates that are not the library's own (a class or instance
    override), for state the library cannot observe (a class that shadows an
    observed attribute, an instance flagged ``_pc_unobserved``), and for a
    channel serving in a map that is not its own (its changes are reported to
    its own map's loop).  O(1); called when a channel is first registered.
    """
    cls = type(channel)
    if _class_polls(cls):
        return True
    # An instance-level override (obj.readable = ..., mock.patch.object).
    # Checked through the bound methods: touching channel.__dict__ would
    # materialize the instance dict, which makes every later attribute
    # access on the channel slower on CPython 3.11.
    for name in ("readable", "writable"):
        bound = getattr(channel, name)
        if (getattr(bound, "__func__", None) is not getattr(cls, name)
                or getattr(bound, "__self__", None) is not channel):
            return True
    return bool(getattr(channel, "_pc_unobserved", False)
                or getattr(channel, "_map", map) is not map)


def wanted_events(channel: Any) -> int:
    """The events ``channel`` wants watched, as CPython's ``poll2()`` computes
    them (``readable()`` then ``writable()``; a listener is never watched for
    writes), then narrowed by paused reading and by what its transport
    withholds from the program meanwhile, and widened by what the transport
    itself needs (TLS: ``_pc_withheld_interest``, ``_pc_extra_interest``)."""
    events = READ | PRI if channel.readable() else 0
    if channel.writable() and not channel.accepting:
        events |= WRITE
    if getattr(channel, "_pc_reading_paused", False):
        events &= WRITE
    withheld = getattr(channel, "_pc_withheld_interest", 0)
    if withheld:
        events &= ~withheld
    return events | getattr(channel, "_pc_extra_interest", 0)


Refused = Callable[[Any, Any, Exception], None]
PredicateFailed = Callable[[Any], None]


class Interest:
    """The registrations of one loop's channels.

    Args:
        backend: the backend to keep in step.
        map: the channel map (key -> channel).
        strict: ask every channel on every pass.
        refused: called as ``refused(channel, key, exc)`` when the kernel
            refuses a registration (closed fd, fd too large for select()).
        predicate_failed: called (inside the ``except`` block) when a
            channel's ``readable()``/``writable()`` raised.
    """

    def __init__(self, backend: Backend, map: Dict[Any, Any], *, strict: bool,
                 refused: Refused, predicate_failed: PredicateFailed) -> None:
        self.map = map
        self.strict = strict
        self.dirty: Set[Any] = set(map)  # keys to re-sync before the next poll
        self.polled: Set[Any] = set()  # keys whose channel is asked every pass
        self.map_len = len(map)
        self._refused = refused
        self._predicate_failed = predicate_failed
        self.use_backend(backend)

    def use_backend(self, backend: Backend) -> None:
        """Start over on ``backend`` (a new one after fork): every channel is
        registered again at the next sync."""
        self.backend = backend
        self.keys: Mapping[int, Any] = backend.get_map()
        self._object_fds: Dict[Any, int] = {}  # non-int map key -> its registered fd
        # What the loop's dispatch reads per event, kept in step with the
        # backend's registrations: the channel registered for each fd, and
        # the map key of the few fds whose key is not the fd itself.  Plain
        # dicts, not the backend's SelectorKeys: one object fewer to touch
        # per event (a busy pass's working set outgrows the L1 cache).
        self.channels: Dict[int, Any] = {}
        self.object_keys: Dict[int, Any] = {}
        self.reconcile()

    # -- what channels and the loop report -------------------------------------

    def added(self, key: Any) -> None:
        """A channel was put in the map at ``key``: sync it at the next pass."""
        self.dirty.add(key)
        self.map_len = len(self.map)

    def removed(self, key: Any, channel: Any) -> None:
        """``channel`` left the map: unregister it now, while its fd is still
        open (``close()`` closes it next).  This, and registering only at the
        next sync, is what keeps an fd reused in the same pass from getting
        the old channel's events (bpo-30931)."""
        reg = self.registration(key)
        if reg is not None and reg.data is channel:
            self._unregister(key, reg)
        self.polled.discard(key)
        self.dirty.add(key)  # a raw map write may have put another channel there
        self.map_len = len(self.map)

    def reconcile(self) -> None:
        """Queue every channel and every registration for a check at the next
        sync: for maps changed behind the library's back.  O(map)."""
        self.dirty.update(self.map)
        self.dirty.update(reg.fileobj for reg in self.keys.values() if reg.data is not None)

    # -- syncing ------------------------------------------------------------------

    def sync(self) -> List[Any]:
        """Bring the backend up to date before a poll: O(dirty + polled), or
        O(map) after the map changed size behind our back or in strict mode.
        Returns the keys it looked at."""
        map = self.map
        if len(map) != self.map_len:
            # Someone wrote to the map directly (del map[fd], map.clear()...).
            self.reconcile()
            self.map_len = len(map)
        dirty = self.dirty
        if self.strict:
            dirty.update(map)
        elif self.polled:
            dirty.update(self.polled)
        if not dirty:
            return []
        todo = list(dirty)
        dirty.clear()
        for key in todo:
            self.sync_one(key)
        return todo

    def sync_one(self, key: Any) -> None:
        """Make the registration of ``key`` match ``map[key]``: register,
        modify, unregister, or nothing."""
        channel = self.map.get(key)
        reg = self.registration(key)
        if reg is not None and reg.data is not channel:
            self._unregister(key, reg)
            reg = None
        if channel is None:
            self.polled.discard(key)
            return
        if reg is None:
            # A channel new to the backend (or one that wanted nothing):
            # decide once whether it is asked every pass.  Not on every sync:
            # that is the path of a busy channel.
            if polls_predicates(channel, self.map):
                self.polled.add(key)
            else:
                self.polled.discard(key)
        elif getattr(channel, "_pc_unobserved", False):
            self.polled.add(key)  # it became so since (a foreign producer_fifo)
        try:
            events = wanted_events(channel)
        except REraised:
            raise
        except Exception:
            self._predicate_failed(channel)
            return
        if events == (0 if reg is None else reg.events):
            return
        try:
            if not events:
                if reg is not None:
                    self._unregister(key, reg)
            elif reg is None:
                new = self.backend.register(key, events, channel)
                self.channels[new.fd] = channel
                if type(key) is not int:
                    self._object_fds[key] = new.fd
                    self.object_keys[new.fd] = key
            else:
                self.backend.modify(reg.fd, events, channel)
        except (OSError, ValueError, TypeError) as exc:
            # The fd cannot be watched (closed behind our back, too large for
            # select(), not an fd at all): the channel is dead.
            if reg is not None:
                self._unregister(key, reg)
            self._refused(channel, key, exc)

    def registration(self, key: Any) -> Any:
        """The backend key registered for map key ``key``, or ``None``."""
        fd = key if type(key) is int else self._object_fds.get(key)
        if fd is None:
            return None
        reg = self.keys.get(fd)
        return reg if reg is not None and reg.fileobj == key else None

    def _unregister(self, key: Any, reg: Any) -> None:
        if type(key) is not int:
            self._object_fds.pop(key, None)
        # Forgotten before the backend is asked: an fd that cannot be
        # unregistered (closed) gets no more events from the loop either.
        self.channels.pop(reg.fd, None)
        self.object_keys.pop(reg.fd, None)
        try:
            self.backend.unregister(reg.fd)
        except (KeyError, ValueError, TypeError):
            pass  # never reached the kernel (bookkeeping only): nothing to undo
        except OSError as exc:
            # Lenient teardown: the backend already swallowed EBADF/ENOENT;
            # anything else is worth a line, not a failed pass.
            logger.warning("could not unregister fd %d from the %s backend: %s",
                           reg.fd, self.backend.name, exc)

    # -- checking ------------------------------------------------------------------

    def audit(self) -> List[Tuple[Any, Any, int, int]]:
        """Ask every registered channel whose answers are trusted (not
        polled) what it wants, and compare with what is registered.

        Returns ``(key, channel, registered, wanted)`` for each mismatch, each
        of which is queued for the next sync: the channel's state changed in a
        way the library could not observe.  Map entries that are not the
        registered channel (written into the map directly) are queued too,
        without being reported.  O(map).
        """
        found = []
        polled, dirty = self.polled, self.dirty
        for key, channel in list(self.map.items()):
            if key in polled or key in dirty:
                continue
            reg = self.registration(key)
            if reg is None or reg.data is not channel:
                # Written into the map behind the loop's back (or wanting
                # nothing): the next sync sets it right, quietly.
                dirty.add(key)
                continue
            try:
                wanted = wanted_events(channel)
            except REraised:
                raise
            except Exception:
                continue  # the next sync reports it through handle_error()
            if wanted != reg.events:
                found.append((key, channel, reg.events, wanted))
                dirty.add(key)
        return found

    def registered(self) -> int:
        """How many channels are registered in the backend."""
        return sum(1 for reg in self.keys.values() if reg.data is not None)

