"""Engine behaviour on the in-process broker: a split instance loses its devices, id conflicts,
the embedded default, leases by the injected clock."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from gateway.bus import DEGRADED, OK, Bus, Holder, MemoryBroker, MemoryTransport, open_bus
from gateway.bus.redis import RedisTransport
from gateway.errors import ConfigError
from tests.gateway.bus.conftest import FAST, until


def test_a_device_claimed_elsewhere_during_a_split_is_reported_lost() -> None:
    async def scenario() -> None:
        broker = MemoryBroker()
        a, b = Bus(MemoryTransport(broker), "a", **FAST), Bus(MemoryTransport(broker), "b", **FAST)
        lost: list[tuple[str, Holder]] = []
        a.presence.on_lost(lambda device, holder: lost.append((device, holder)))
        await a.start()
        await b.start()
        await a.wait_ok(5)
        await b.wait_ok(5)
        await a.presence.claim("S-moved")
        await a.presence.claim("S-stays")
        broker.cut("a")
        await until(lambda: a.state == DEGRADED, what="a degraded")
        claim = await b.presence.claim("S-moved")  # the device reconnected to b meanwhile
        assert claim.previous is not None and claim.previous.instance == "a"
        broker.heal("a")
        await a.wait_ok(10)
        assert [(device, holder.instance) for device, holder in lost] == [("S-moved", "b")]
        assert set(a.presence.local) == {"S-stays"}
        snapshot = await b.presence.snapshot()
        assert snapshot["S-moved"].instance == "b" and snapshot["S-stays"].instance == "a"
        await a.close()
        await b.close()

    asyncio.run(scenario())


def test_two_processes_with_one_instance_id_are_reported() -> None:
    async def scenario() -> None:
        broker = MemoryBroker()
        first, second = Bus(MemoryTransport(broker), "gw", **FAST), Bus(MemoryTransport(broker), "gw", **FAST)
        await first.start()
        await first.wait_ok(5)
        await second.start()  # a second process started with the same instance_id takes the lease
        await second.wait_ok(5)
        await until(lambda: first.state == DEGRADED, what="the first process degraded")
        assert "also used by another process" in (first.last_error or "")
        assert second.state == OK
        await first.close()
        await second.close()

    asyncio.run(scenario())


def test_leases_expire_by_the_injected_clock() -> None:
    async def scenario() -> None:
        now = [1000.0]
        broker = MemoryBroker(clock=lambda: now[0])
        transport = MemoryTransport(broker)
        transport.bind(_nothing, _no_answer, lambda err: None)
        await transport.connect("a", set())
        assert await transport.lease_put("a", "boot-1", 10.0, False) is None
        assert await transport.lease_put("a", "boot-2", 10.0, False) == "boot-1"  # someone else's id
        now[0] += 9.9
        assert await transport.leases() == {"a": "boot-1"}
        now[0] += 0.2
        assert await transport.leases() == {}
        assert await transport.lease_put("a", "boot-2", 10.0, False) is None  # the old one is gone
        await transport.disconnect()

    asyncio.run(scenario())


async def _nothing(channel: str, data: bytes) -> None:
    return None


async def _no_answer(kind: str, data: bytes) -> bytes:
    return b""


def test_open_bus_chooses_the_transport_and_checks_names() -> None:
    embedded = open_bus("", "gw-1")
    assert isinstance(embedded.transport, MemoryTransport) and embedded.display == "embedded"
    redis_bus = open_bus("redis://:secret@127.0.0.1:6400/2", "gw-1")
    assert isinstance(redis_bus.transport, RedisTransport)
    assert redis_bus.display == "redis://127.0.0.1:6400/2" and "secret" not in str(redis_bus.health())
    assert open_bus("").instance_id  # default: the host name's first label
    with pytest.raises(ConfigError, match="instance_id"):
        open_bus("", "gw.1")
    with pytest.raises(ConfigError, match="bus: scheme 'kafka'"):
        open_bus("kafka://127.0.0.1:9092", "gw-1")


def test_embedded_bus_is_ok_without_any_server() -> None:
    async def scenario() -> None:
        bus = open_bus("", "solo")
        seen: list[dict[str, Any]] = []
        await bus.subscribe("dash", lambda m, s: seen.append(m), include_self=True)
        await bus.start()
        await bus.wait_ok(5)
        await bus.publish("dash", {"n": 1})
        await until(lambda: seen == [{"n": 1}], what="self delivery")
        health = bus.health()
        assert health["state"] == OK and health["bus"] == "memory" and health["commands_durable"] is False
        await bus.close()
        assert bus.health()["state"] == "closed"

    asyncio.run(scenario())
