"""What a forwarding sink is: the interface the Forwarder drives (gateway/forward/forwarder.py).

A sink delivers readings to one broker. It connects and reconnects by itself; the forwarder
hands it readings only while ``ready``, at most ``window`` at a time, and learns of each
outcome through the ``done`` callback, which the sink calls exactly once per reading, on the
event loop:

- ``done(ACKED)``: the broker confirmed it (MQTT PUBACK, JetStream PubAck);
- ``done(FAILED)``: it may not have arrived (connection lost, timeout): the forwarder goes back
  to the first reading not yet acked and sends again from there (at least once);
- ``done(REFUSED)``: the broker answered that it will never take this message (MQTT 5 reason
  code such as "not authorized"): counted as a forced drop and logged, not retried, so one
  refused topic cannot stall every device.

The forwarder registers with ``on_change`` when it is built (the sink exists first: the
forwarder takes it in its constructor); the sink calls ``changed`` when ``ready`` changes, so
the forwarder wakes up instead of polling.
"""

from __future__ import annotations

import abc
from collections.abc import Callable
from typing import Any

from gateway.storage.base import ReadingRow

ACKED = 0
FAILED = 1
REFUSED = 2

Done = Callable[[int], None]


class Sink(abc.ABC):
    """One broker the stored readings go to. ``name`` keys its cursor in storage."""

    name = "sink"

    def __init__(self) -> None:
        self._on_change: list[Callable[[], None]] = []

    def on_change(self, callback: Callable[[], None]) -> None:
        """Call ``callback`` (sync, cheap, never raises) whenever ``ready`` changes."""
        self._on_change.append(callback)

    def changed(self) -> None:
        """``ready`` changed: tell those registered (called by the sink itself)."""
        for callback in self._on_change:
            callback()

    @abc.abstractmethod
    async def start(self) -> None:
        """Start connecting (returns at once; ``ready`` turns True once connected)."""

    @abc.abstractmethod
    async def stop(self) -> None:
        """Disconnect; readings not acked by then are resent after the next start (the cursor)."""

    @property
    @abc.abstractmethod
    def ready(self) -> bool:
        """Whether the sink is connected and takes readings now."""

    @abc.abstractmethod
    def send(self, reading: ReadingRow, done: Done) -> None:
        """Start delivering ``reading``; call ``done`` once with ACKED, FAILED or REFUSED. Never raises."""

    def health(self) -> dict[str, Any]:
        """What /healthz and /metrics show about the connection."""
        return {"state": "ok" if self.ready else "connecting"}
