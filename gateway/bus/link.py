"""The engine as its facets see it: the small public interface of ``Bus`` that ``Presence`` and
``CommandQueue`` use (gateway/bus/presence.py, command_queue.py).

The facets import this module, never the engine, so the engine can build them without an
import circle. ``Bus`` (gateway/bus/engine.py) implements it.
"""

from __future__ import annotations

from collections.abc import Coroutine
from typing import Any, Protocol, TypeVar

from gateway.bus.base import Transport

T = TypeVar("T")


class Link(Protocol):
    """One instance's end of the bus, for its facets."""

    instance_id: str
    boot: str  # this process's incarnation: a restarted instance is a new holder
    transport: Transport
    op_timeout_s: float

    @property
    def ok(self) -> bool: ...

    def require_ok(self) -> None:
        """BusUnavailable unless the bus is ``ok`` (fail fast)."""

    async def call(self, operation: Coroutine[Any, Any, T], timeout_s: float | None = None) -> T:
        """Run one transport operation while in service: a deadline (BusTimeout), its failures as
        BusError, and a failure of the link marks the link broken (the engine reconnects)."""
        ...

    async def step(self, operation: Coroutine[Any, Any, T]) -> T:
        """Run one transport operation of a (re)connect or heartbeat: only a deadline (BusTimeout);
        a failure goes to the engine's reconnect loop as it is."""
        ...

    def drop(self, reason: str) -> None:
        """Count one message dropped for ``reason`` (in /healthz)."""
