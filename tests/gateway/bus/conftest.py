"""The bus contract runs on each backend: in-process, the host bus (the in-process broker served to
worker processes over a Unix socket, gateway/bus/local.py), a real redis-server, a real nats-server."""

from __future__ import annotations

import asyncio
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

import pytest

from gateway.bus import Bus, MemoryBroker, MemoryTransport, open_bus
from gateway.bus.local import HostBroker, LocalTransport
from services.nats import NatsServer
from services.redis import RedisServer

FAST = {"lease_ttl_s": 3.0, "op_timeout_s": 5.0, "backoff_s": (0.05, 0.4)}


class Backend:
    """One bus server for a test, and buses connected to it."""

    def __init__(self, kind: str, server: RedisServer | NatsServer | None) -> None:
        self.kind = kind
        self.server = server
        self.broker = MemoryBroker()
        self.buses: list[Bus] = []
        self.host: HostBroker | None = None
        self.folder = tempfile.TemporaryDirectory(prefix="edgewire-hostbus-") if kind == "host" else None

    def _host(self) -> HostBroker:
        """The host bus's broker, started on first use (inside the scenario's event loop)."""
        if self.host is None:
            assert self.folder is not None
            self.host = HostBroker(f"{self.folder.name}/bus.sock", self.broker)
            if self.broker.up:
                asyncio.get_running_loop().create_task(self.host.start())
        return self.host

    def bus(self, instance_id: str, **options: Any) -> Bus:
        settings = dict(FAST, **options)
        if self.kind == "host":
            bus = Bus(LocalTransport(self._host().path), instance_id, **settings)
        elif self.server is None:
            bus = Bus(MemoryTransport(self.broker), instance_id, **settings)
        else:
            bus = open_bus(self.server.url, instance_id, **settings)
        self.buses.append(bus)
        return bus

    async def stop(self) -> None:
        """A server outage: every link breaks."""
        if self.kind == "host":
            if self.host is None:
                self.broker.stop()  # (not started yet: it never starts until ``start``)
            await self._host().close()
        elif self.server is None:
            self.broker.stop()
        else:
            await asyncio.to_thread(self.server.stop, "kill")

    async def start(self) -> None:
        """Back from the outage: memory and Redis come back empty, NATS keeps its JetStream store."""
        if self.kind == "host":
            self.broker.start(lose_data=True)
            self.host = HostBroker(self._host().path, self.broker)
            await self.host.start()
        elif self.server is None:
            self.broker.start(lose_data=True)
        else:
            await asyncio.to_thread(self.server.start)

    async def close(self) -> None:
        for bus in self.buses:
            await bus.close()
        if self.host is not None:
            await self.host.close()
        if self.folder is not None:
            self.folder.cleanup()


@pytest.fixture(params=["memory", "host", "redis", "nats"])
def backend(request: pytest.FixtureRequest) -> Iterator[Backend]:
    kind = request.param
    if kind in ("memory", "host"):
        yield Backend(kind, None)
        return
    server_class = RedisServer if kind == "redis" else NatsServer
    with server_class() as server:
        yield Backend(kind, server)


async def until(condition: Callable[[], bool | Awaitable[bool]], timeout_s: float = 15.0,
                what: str = "condition") -> None:
    """Wait until ``condition()`` holds (polled every 20 ms); fail with ``what`` after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while True:
        result = condition()
        if not isinstance(result, bool):
            result = await result
        if result:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s:g} s waiting for {what}")
        await asyncio.sleep(0.02)
