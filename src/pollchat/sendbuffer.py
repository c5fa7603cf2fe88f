"""asyncore's ``dispatcher_with_send``: a channel that buffers what ``send()``
could not send at once, and sends the rest when the socket is writable.

``out_buffer`` is observed where it is stored (:func:`pollchat.observed.observed`),
so legacy code that appends to it directly is still sent; the library's own
code uses the ``_pc_out_buffer`` slot behind it and reports the changes of
``writable()`` itself.
"""

from __future__ import annotations

from typing import Any, Dict, Optional

from .channel import dispatcher
from .observed import managed_predicate, observed

__all__ = ["dispatcher_with_send"]


class dispatcher_with_send(dispatcher):
    """A dispatcher that buffers what ``send()`` cannot send at once."""

    out_buffer = observed("out_buffer", "Bytes waiting to be sent.")
    _pc_out_buffer: Any = b""

    def __init__(self, sock: Any = None, map: Optional[Dict[Any, Any]] = None) -> None:
        dispatcher.__init__(self, sock, map)
        self._pc_out_buffer = b""

    def initiate_send(self) -> None:
        had = bool(self._pc_out_buffer)
        sent = dispatcher.send(self, self._pc_out_buffer[:65536])
        self._pc_out_buffer = self._pc_out_buffer[sent:]
        if had and not self._pc_out_buffer:
            self._interest_changed()  # writable() turned false

    def handle_write(self) -> None:
        self.initiate_send()

    @managed_predicate
    def writable(self) -> bool:
        return (not self._pc_connected) or bool(len(self._pc_out_buffer))

    def send(self, data: Any) -> None:  # type: ignore[override]
        if self.debug:
            self.log_info(f"sending {data!r}")
        had = bool(self._pc_out_buffer)
        self._pc_out_buffer = self._pc_out_buffer + data
        self.initiate_send()
        if not had and self._pc_out_buffer:
            self._interest_changed()  # writable() turned true
