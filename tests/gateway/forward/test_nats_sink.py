"""The NATS JetStream sink against a real nats-server: subjects, headers, dedupe, the stream, a lost server."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import nats
import orjson

from gateway.forward.forwarder import Forwarder
from gateway.forward.nats import NatsSink
from gateway.forward.settings import NATS_PORTS, parse_broker_url
from gateway.storage.sqlite import SQLiteStorage
from services.nats import NatsServer
from tests.gateway.forward.conftest import reading, until


def make_sink(url: str, window: int = 100, stream: str = "EDGEWIRE_READINGS") -> NatsSink:
    return NatsSink(parse_broker_url("nats_url", url, NATS_PORTS), stream=stream, subject_prefix="edgewire.readings",
                    max_age_s=86_400.0, window=window, client_name="edgewire-test")


async def stream_messages(url: str, stream: str = "EDGEWIRE_READINGS") -> list[Any]:
    """Every message of the stream, in stream order (subject, headers, JSON payload)."""
    nc = await nats.connect(url)
    try:
        js = nc.jetstream()
        info = await js.stream_info(stream)
        out = []
        for seq in range(info.state.first_seq, info.state.last_seq + 1):
            msg = await js.get_msg(stream, seq)
            out.append((msg.subject, dict(msg.headers or {}), orjson.loads(msg.data or b"{}")))
        return out
    finally:
        await nc.close()


def test_readings_reach_the_stream_once(tmp_path: Path) -> None:
    async def body() -> None:
        with NatsServer() as server:
            storage = SQLiteStorage(tmp_path / "n.db", commit_interval_ms=0)
            await storage.open()
            sink = make_sink(server.url)
            forwarder = Forwarder(sink, storage, "gw1", window=50, save_s=0.05)
            await sink.start()
            task = asyncio.create_task(forwarder.run())
            try:
                await until(lambda: sink.ready and forwarder.cursor is not None, what="connected")
                await storage.store([reading("S-1", 1), reading("dev.2", 1), reading("S-1", 2)])
                forwarder.wake()
                await until(lambda: forwarder.counters.acked == 3, what="acked")
                got = await stream_messages(server.url)
                assert [(s, h["Nats-Msg-Id"]) for s, h, _ in got] == [
                    ("edgewire.readings.S-1", "S-1:1"), ("edgewire.readings.S-1", "S-1:2"),
                    ("edgewire.readings.dev.2", "dev.2:1")]
                assert got[2][1]["Edgewire-Device"] == "dev.2" and got[2][1]["Edgewire-Seq"] == "1"
                assert got[0][2] == {"device": "S-1", "seq": 1, "ts": reading("S-1", 1).time_ms,
                                     "received": reading("S-1", 1).received_ms, "quality": "ok",
                                     "metrics": {"temperature": 21.0, "humidity": 40.0}}
                # A resend (the same Nats-Msg-Id) is acked as a duplicate and not stored twice.
                done: list[int] = []
                sink.send(reading("S-1", 2), done.append)
                await until(lambda: done == [0], what="duplicate acked")
                assert sink.duplicates == 1 and len(await stream_messages(server.url)) == 3
                # The server goes away: the sink reports it, comes back by itself, nothing is skipped.
                await asyncio.to_thread(server.stop, "kill")
                await until(lambda: not sink.ready, what="down")
                await storage.store([reading("S-1", 3)])
                forwarder.wake()
                await asyncio.to_thread(server.start)
                await until(lambda: forwarder.counters.acked >= 4, what="after the restart")
                assert [h["Nats-Msg-Id"] for _, h, _ in await stream_messages(server.url)][-1] == "S-1:3"
            finally:
                await forwarder.close()
                await task
                await sink.stop()
                await storage.close()

    asyncio.run(body())


def test_an_existing_stream_without_our_subjects_is_refused_with_a_reason(tmp_path: Path) -> None:
    async def body() -> None:
        with NatsServer() as server:
            nc = await nats.connect(server.url)
            await nc.jetstream().add_stream(name="OTHER", subjects=["other.>"])
            await nc.close()
            sink = make_sink(server.url, stream="OTHER")
            await sink.start()
            try:
                await until(lambda: "not edgewire.readings.>" in sink.last_error, what="refused")
                assert not sink.ready
            finally:
                await sink.stop()

    asyncio.run(body())
