"""forward_process = true: the forwarding worker process, started, killed, restarted, stopped by the gateway side."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from pathlib import Path

import orjson

from gateway.config import load_config
from gateway.forward.forwarder import FORWARDING
from gateway.forward.setup import Forwarding, worker_settings
from gateway.storage.base import DeviceRecord
from gateway.storage.sqlite import SQLiteStorage
from services.mosquitto import MosquittoServer
from tests.gateway.forward.conftest import Observer, reading, until


def test_the_worker_forwards_restarts_and_stops(tmp_path: Path, broker: MosquittoServer) -> None:
    config = load_config(env={}, overrides={"data_dir": str(tmp_path), "mqtt_url": broker.url, "instance_id": "gw1",
                                            "log_format": "text", "forward_window": 50})

    async def body() -> None:
        storage = SQLiteStorage(config.database, commit_interval_ms=0)
        await storage.open()
        await storage.put_device(DeviceRecord("S-1", True, None, [], "", 1, 1))
        forwarding = Forwarding.from_config(config, storage, "gw1", "0.1.0")
        assert forwarding.worker is not None
        watch = Observer(broker.port, topics=("edgewire/#", "homeassistant/#"))
        await forwarding.start()
        running = asyncio.create_task(forwarding.worker.run())
        seq = 0

        async def ingest(count: int) -> None:
            nonlocal seq
            for _ in range(count):
                seq += 1
                row = reading("S-1", seq)
                await storage.store([row])
                forwarding.committed([row])

        def states() -> list[int]:
            return [orjson.loads(p)["seq"] for p in watch.of("edgewire/S-1/state")]

        try:
            await ingest(20)
            await until(lambda: set(states()) == set(range(1, 21)), what="forwarded by the worker")
            await until(lambda: watch.json("homeassistant/sensor/edgewire/temperature-S-1/config"), what="config")
            await until(lambda: forwarding.worker.up and forwarding.stats()[0]["state"] == FORWARDING, what="stats")
            assert forwarding.stats()[0]["acked"] >= 20
            # The worker dies: the gateway side starts it again; it resumes from the stored cursor.
            first = forwarding.worker.process
            assert first is not None
            first.kill()
            await until(lambda: forwarding.worker.restarts == 1, what="noticed")
            await ingest(20)
            await until(lambda: set(states()) == set(range(1, 41)), timeout=60, what="after the restart")
            assert forwarding.worker.process is not first
            assert len(states()) - 40 <= config.forward_window  # duplicates at most one window
        finally:
            await forwarding.close()
            await running
            watch.close()
        cursors = await storage.sink_cursors()
        assert [(c.sink, c.owner.split("/")[0], c.lease_until_ms) for c in cursors] == [("mqtt", "gw1", 0)]
        await storage.close()

    asyncio.run(body())


def test_the_worker_stops_when_the_gateway_goes_away(tmp_path: Path, broker: MosquittoServer) -> None:
    """End of file on its stdin (the gateway's end of the pipe closed, however the gateway ended) stops it
    cleanly: cursor stored, lease released."""
    config = load_config(env={}, overrides={"data_dir": str(tmp_path), "mqtt_url": broker.url, "instance_id": "gw1"})

    async def prepare() -> None:
        storage = SQLiteStorage(config.database)
        await storage.open()
        await storage.register_sink("mqtt", 0)
        await storage.close()

    asyncio.run(prepare())
    process = subprocess.Popen([sys.executable, "-m", "gateway.forward.worker"], stdin=subprocess.PIPE,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert process.stdin is not None and process.stdout is not None
    process.stdin.write(json.dumps(worker_settings(config, "gw1")) + "\n")
    process.stdin.flush()
    while True:  # its stats lines: wait until it forwards
        status = json.loads(process.stdout.readline())
        if status["stats"] and status["stats"][0]["state"] == FORWARDING:
            break
    process.stdin.close()
    assert process.wait(30) == 0

    async def check() -> None:
        storage = SQLiteStorage(config.database)
        await storage.open()
        assert [(c.owner.split("/")[0], c.lease_until_ms) for c in await storage.sink_cursors()] == [("gw1", 0)]
        await storage.close()

    asyncio.run(check())
    bad = subprocess.run([sys.executable, "-m", "gateway.forward.worker"], input="not json\n", capture_output=True,
                         text=True, timeout=60)
    assert bad.returncode == 2 and "started by the gateway" in bad.stderr
