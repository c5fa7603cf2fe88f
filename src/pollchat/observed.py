"""The descriptors behind a channel's observed state and replaceable methods.

* :func:`observed`: an attribute (``connected``, ``out_buffer``,
  ``producer_fifo``...) whose assignment tells the channel's loop that its
  ``readable()``/``writable()`` may answer differently.  Reading it is a
  C-level load of the ``_pc_<name>`` slot.
* :class:`overridable`: a method (``readable``, ``writable``,
  ``get_terminator``) that notices an instance replacing it.
* :func:`managed_predicate`: the library's ``readable``/``writable``, both.

See docs/design.md ("Interest: why a pass is O(ready)").
"""

from __future__ import annotations

import operator
from typing import Any, Dict, Optional

from .interest import managed_interest

__all__ = ["managed_predicate", "observed", "observed_slot", "overridable", "slot_of"]

#: id() of each of the library's observed-attribute properties (they live as
#: long as their classes) -> the slot behind it.
_OBSERVED: Dict[int, str] = {}

def observed(name: str, doc: str, getter: Any = None, setter: Any = None) -> property:
    """A channel attribute whose changes its loop must hear of.

    Reading is a C-level attribute load of the ``_pc_<name>`` slot (unless a
    ``getter`` is given); an assignment stores there and calls
    ``_interest_changed()`` (unless a ``setter`` is given, which must).
    """
    slot = "_pc_" + name

    def store(self: Any, value: Any) -> None:
        setattr(self, slot, value)
        self._interest_changed()

    prop = property(getter or operator.attrgetter(slot), setter or store, doc=doc)
    _OBSERVED[id(prop)] = slot
    return prop


def slot_of(value: Any) -> Optional[str]:
    return _OBSERVED.get(id(value)) if isinstance(value, property) else None


class overridable:
    """A method that notices when an instance replaces it.

    ``obj.method = f`` (or ``mock.patch.object(obj, "method")``) calls
    ``on_override(obj)``, so the library can stop relying on the stock
    method for that instance, and the instance's replacement is what
    ``obj.method`` gives from then on; ``del obj.method`` restores the stock
    one.  Class access (``cls.method``) gives the plain function, as for any
    method, so subclasses override it the usual way.  Reading it from an
    instance costs a Python-level call: for methods the library does not
    call on its hot path.
    """

    def __init__(self, func: Any, on_override: Any) -> None:
        self.func = func
        self.on_override = on_override
        self.slot = "_pc_replaced_" + func.__name__
        self.__doc__ = func.__doc__
        self.__name__ = func.__name__

    def __set_name__(self, owner: type, name: str) -> None:
        setattr(owner, self.slot, None)

    def __get__(self, obj: Any, owner: Optional[type] = None) -> Any:
        if obj is None:
            return self.func
        replaced = getattr(obj, self.slot)
        return replaced if replaced is not None else self.func.__get__(obj, owner)

    def __set__(self, obj: Any, value: Any) -> None:
        setattr(obj, self.slot, value)
        self.on_override(obj)

    def __delete__(self, obj: Any) -> None:
        if getattr(obj, self.slot) is None:
            raise AttributeError(self.__name__)
        setattr(obj, self.slot, None)


def _predicate_replaced(channel: Any) -> None:
    # An instance's own readable()/writable(): ask it on every pass.
    channel._pc_unobserved = True
    channel._interest_changed()


def managed_predicate(func: Any) -> overridable:
    """The library's ``readable``/``writable``: trusted by the loop
    (:func:`~pollchat.interest.managed_interest`) until an instance replaces
    it, which makes the loop ask that channel on every pass."""
    return overridable(managed_interest(func), _predicate_replaced)


def observed_slot(cls: type, name: str) -> Optional[str]:
    """The slot behind ``name`` if a base of ``cls`` defines it as one of the
    library's observed attributes."""
    for base in cls.__mro__[1:]:
        if name in base.__dict__:
            return slot_of(base.__dict__[name])
    return None
