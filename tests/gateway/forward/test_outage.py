"""The broker stops for 30 s in the middle of a stream, then comes back (Mosquitto, then nats-server).

Readings keep being stored all along (five devices, about 100 readings/s). Afterwards every
stored reading has been published (count checked), the ones stored during the outage
included, and for each device the first arrival of each seq comes in seq order. The 30 s are
the scenario (a broker down for that long), not a wait for something to happen: every wait
for an outcome watches for it.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from pathlib import Path

import orjson
import pytest

from gateway.forward.discovery import Topics
from gateway.forward.forwarder import Forwarder
from gateway.forward.mqtt_link import MqttLink
from gateway.forward.mqtt_sink import MqttSink
from gateway.forward.settings import MQTT_PORTS, parse_broker_url
from gateway.forward.sink import Sink
from gateway.storage.sqlite import SQLiteStorage
from services.mosquitto import MosquittoServer
from services.nats import NatsServer
from tests.gateway.forward.conftest import Observer, reading, until
from tests.gateway.forward.test_nats_sink import make_sink, stream_messages

OUTAGE_S = 30.0
DEVICES = tuple(f"S-{i}" for i in range(5))
WINDOW = 200


def _nothing(*_args: object) -> None:
    return None


class Writer:
    """Stores one reading per device every 50 ms until stopped; remembers what it stored when."""

    def __init__(self, storage: SQLiteStorage, wake: Callable[[], None]) -> None:
        self.storage = storage
        self.wake = wake
        self.seq = 0
        self.phase = "before"
        self.stored: dict[str, list[tuple[str, int]]] = {"before": [], "during": [], "after": []}
        self.running = True

    async def run(self) -> None:
        while self.running:
            self.seq += 1
            rows = [reading(device, self.seq) for device in DEVICES]
            await self.storage.store(rows)
            self.stored[self.phase] += [(r.device_id, r.seq) for r in rows]
            self.wake()
            await asyncio.sleep(0.05)  # the devices' pace (a load shape), not a synchronisation

    def all(self) -> list[tuple[str, int]]:
        return [key for phase in ("before", "during", "after") for key in self.stored[phase]]


def check_stream(received: list[tuple[str, int]], writer: Writer) -> dict[str, int]:
    """Every stored reading arrived; first arrivals per device in seq order; returns counts."""
    stored = writer.all()
    assert set(received) == set(stored), (len(set(stored) - set(received)), "readings missing")
    assert set(writer.stored["during"]) <= set(received) and writer.stored["during"]
    for device in DEVICES:
        firsts: list[int] = []
        seen: set[int] = set()
        for d, seq in received:
            if d == device and seq not in seen:
                seen.add(seq)
                firsts.append(seq)
        assert firsts == sorted(firsts), f"{device}: out of order"
    return {"stored": len(stored), "received": len(received), "during": len(writer.stored["during"]),
            "duplicates": len(received) - len(set(received))}


async def outage(tmp_path: Path, sink: Sink, stop: Callable[[], None], start: Callable[[], None],
                 received: Callable[[], list[tuple[str, int]]]) -> tuple[Writer, Forwarder]:
    storage = SQLiteStorage(tmp_path / "o.db", commit_interval_ms=2)
    await storage.open()
    forwarder = Forwarder(sink, storage, "gw1", window=WINDOW, save_s=0.1)
    await sink.start()
    task = asyncio.create_task(forwarder.run())
    writer = Writer(storage, forwarder.wake)
    try:
        await until(lambda: sink.ready and forwarder.cursor is not None, what="connected")
        writing = asyncio.create_task(writer.run())
        await until(lambda: len(received()) >= 100, what="mid-stream")
        await asyncio.to_thread(stop)
        writer.phase = "during"
        await until(lambda: not sink.ready, what="the sink noticed the outage")
        await asyncio.sleep(OUTAGE_S)  # the scenario: the broker stays down this long
        await asyncio.to_thread(start)
        writer.phase = "after"
        await until(lambda: len(writer.stored["after"]) >= 100, what="stream after the restart")
        writer.running = False
        await writing
        stored = set(writer.all())
        await until(lambda: stored <= set(received()), timeout=90, what="every reading published")
    finally:
        await forwarder.close()
        await task
        await sink.stop()
        await storage.close()
    return writer, forwarder


@pytest.mark.slow
def test_mosquitto_down_for_30_s(tmp_path: Path) -> None:
    async def body() -> None:
        with MosquittoServer(persistence=True) as broker:
            # A consumer with a persistent session: what the broker accepts is kept for it across the restart.
            watch = Observer(broker.port, topics=("edgewire/+/state",), client_id="outage-watch", persistent=True)
            # The sink as the forwarding worker runs it: a connection of its own.
            url = parse_broker_url("mqtt_url", broker.url, MQTT_PORTS)
            link = MqttLink(url, client_id="edgewire-gw1-readings", max_queued=WINDOW + 100, on_connect=_nothing,
                            on_disconnect=_nothing, on_message=_nothing)
            sink = MqttSink(link, Topics("edgewire", "homeassistant", "gw1"), own_link=True)

            def received() -> list[tuple[str, int]]:
                return [(m["device"], m["seq"]) for m in (orjson.loads(p) for _, p, _ in
                                                          watch.matching(lambda t: t.endswith("/state")))]

            try:
                writer, forwarder = await outage(tmp_path, sink, lambda: broker.stop("term"), broker.start, received)
                counts = check_stream(received(), writer)
                print("mosquitto outage:", counts, forwarder.counters)
                assert counts["duplicates"] <= WINDOW, counts
                assert forwarder.counters.refused == 0 and forwarder.counters.expired == 0
            finally:
                watch.close()

    asyncio.run(body())


@pytest.mark.slow
def test_nats_server_down_for_30_s(tmp_path: Path) -> None:
    async def body() -> None:
        with NatsServer() as server:
            sink = make_sink(server.url, window=WINDOW)
            mirror: list[tuple[str, int]] = []

            async def follow() -> None:
                """Keep ``mirror`` equal to the stream's content, for the waits (read while the server is up)."""
                while True:
                    if server.running:
                        with contextlib.suppress(Exception):
                            mirror[:] = [(p["device"], p["seq"]) for _, _, p in await stream_messages(server.url)]
                    await asyncio.sleep(0.3)

            following = asyncio.create_task(follow())
            try:
                writer, _forwarder = await outage(tmp_path, sink, lambda: server.stop("term"), server.start,
                                                  lambda: mirror)
            finally:
                following.cancel()
            final = [(p["device"], p["seq"]) for _, _, p in await stream_messages(server.url)]
            counts = check_stream(final, writer)
            print("nats outage:", counts)
            assert counts["duplicates"] == 0, counts  # Nats-Msg-Id: JetStream stored each reading once

    asyncio.run(body())
