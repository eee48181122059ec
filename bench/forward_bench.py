"""Forwarding to Mosquitto: throughput at the 10k-device steady rate, and the CPU it adds per reading.

One process plays the gateway's storage side and its MQTT bridge: a writer stores readings
in group commits (``--devices`` devices at ``--rate`` readings/s each, in commits every 10 ms,
SQLite as the gateway runs it: WAL, synchronous=FULL), and the Forwarder hands them to the
MqttBridge (paho-mqtt on its thread, QoS 1, retained state, Home Assistant discovery on).
Mosquitto (services.mosquitto) and a subscriber counting what it delivers run as separate
processes.

Phases, each ``--seconds`` long at the same write rate:
1. ``baseline``: no sink (the forward log is not written): what storing alone costs.
2. ``forwarding``: the sink claimed, after ``--warmup`` s (the first-seen burst of discovery
   configs, one per device and metric, is not in the figures).
3. ``drain`` (max throughput): the writer stops with ``--backlog`` readings stored while the
   bridge was disconnected; they are then forwarded as fast as possible (discovery off: readings only).

Reported: readings/s stored and acked (PUBACK), delivered to the subscriber, backlog at the
end, the lag of the oldest reading waiting for its ack, this process's CPU (all its threads,
``time.process_time``) per reading in each phase and their difference (the CPU forwarding adds
per reading), Mosquitto's CPU per reading, and the machine's load average (the machine may be
shared: the figures are only comparable on a quiet machine).

Usage: .venv/bin/python -m bench.forward_bench [--devices 10000] [--rate 1] [--seconds 30] [--json FILE]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.proc import process_cpu_seconds
from gateway.forward.forwarder import Forwarder
from gateway.forward.mqtt import MqttBridge
from gateway.forward.settings import MQTT_PORTS, MqttSettings, parse_broker_url
from gateway.storage.base import DeviceRecord, ReadingRow
from gateway.storage.sqlite import SQLiteStorage
from services.mosquitto import MosquittoServer

T0 = 1_764_080_000_000
COMMIT_S = 0.01  # the writer stores one group commit every 10 ms
MAX_DEVICES = 100_000
MAX_SECONDS = 600.0

SUBSCRIBER = """
import sys, threading, time
import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
count = [0]
ready = threading.Event()
c = mqtt.Client(CallbackAPIVersion.VERSION2)
def on_message(*_):
    count[0] += 1
c.on_message = on_message
c.on_connect = lambda cl, *_: cl.subscribe("edgewire/+/state", 0)
c.on_subscribe = lambda *_: ready.set()
c.connect("127.0.0.1", int(sys.argv[1]))
c.loop_start()
ready.wait(30)
print("ready", flush=True)
for line in sys.stdin:
    print(count[0], flush=True)
"""


class Subscriber:
    """A separate process counting the state messages Mosquitto delivers (its CPU is not ours)."""

    def __init__(self, port: int) -> None:
        self.proc = subprocess.Popen([sys.executable, "-c", SUBSCRIBER, str(port)], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, text=True)
        assert self.proc.stdout is not None
        if self.proc.stdout.readline().strip() != "ready":
            raise RuntimeError("the subscriber did not start")

    def count(self) -> int:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write("?\n")
        self.proc.stdin.flush()
        return int(self.proc.stdout.readline())

    def close(self) -> None:
        self.proc.kill()
        self.proc.wait(10)


class Writer:
    """Stores ``rate`` readings/s over ``devices`` devices, one group commit every COMMIT_S."""

    def __init__(self, storage: SQLiteStorage, devices: list[str], rate_per_device: float) -> None:
        self.storage = storage
        self.devices = devices
        self.per_commit = max(1, round(len(devices) * rate_per_device * COMMIT_S))
        self.seq: dict[str, int] = dict.fromkeys(devices, 0)
        self.next = 0
        self.stored = 0
        self.running = False
        self.late = 0  # commits that started behind schedule (the machine could not keep up)

    def batch(self) -> list[ReadingRow]:
        rows = []
        for _ in range(self.per_commit):
            device = self.devices[self.next]
            self.next = (self.next + 1) % len(self.devices)
            seq = self.seq[device] = self.seq[device] + 1
            t = T0 + seq * 1000
            rows.append(ReadingRow(device, seq, t, t + 5, {"temperature": 20.0 + (seq % 50) / 10,
                                                          "humidity": 45.0 + seq % 7}, quality="ok"))
        return rows

    async def run(self, on_commit: Any = None) -> None:
        loop = asyncio.get_running_loop()
        self.running = True
        due = loop.time()
        while self.running:
            await self.storage.store(self.batch())
            self.stored += self.per_commit
            if on_commit is not None:
                on_commit()
            due += COMMIT_S
            delay = due - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)  # the devices' pace
            else:
                self.late += 1
                await asyncio.sleep(0)


def mosquitto_cpu(broker: MosquittoServer) -> float:
    pid = broker.pid
    return process_cpu_seconds(pid) if pid else 0.0


async def measure(seconds: float, writer: Writer, forwarder: Forwarder | None, subscriber: Subscriber,
                  broker: MosquittoServer, base: int = 0) -> dict[str, Any]:
    stored0, acked0 = writer.stored, forwarder.counters.acked if forwarder else 0
    delivered0, cpu0, mq0, t0 = subscriber.count(), time.process_time(), mosquitto_cpu(broker), time.monotonic()
    await asyncio.sleep(seconds)  # the measurement window
    elapsed = time.monotonic() - t0
    stored = writer.stored - stored0
    acked = (forwarder.counters.acked if forwarder else 0) - acked0
    delivered = subscriber.count() - delivered0
    cpu = time.process_time() - cpu0
    return {"seconds": round(elapsed, 2), "stored_per_s": round(stored / elapsed), "acked_per_s": round(acked / elapsed),
            "delivered_per_s": round(delivered / elapsed), "cpu_s": round(cpu, 2),
            "cpu_us_per_stored": round(cpu / max(1, stored) * 1e6, 1),
            "mosquitto_cpu_us_per_reading": round((mosquitto_cpu(broker) - mq0) / max(1, stored) * 1e6, 1),
            "backlog": (writer.stored - base - forwarder.counters.acked) if forwarder else None,
            "lag_s": round(forwarder.lag_s(), 3) if forwarder else None, "late_commits": writer.late}


async def run(args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    devices = [f"D-{i:05d}" for i in range(args.devices)]
    with MosquittoServer(parent_dir=workdir, quiet=True) as broker:
        subscriber = Subscriber(broker.port)
        storage = SQLiteStorage(workdir / "forward.db", commit_interval_ms=0)
        await storage.open()
        try:
            for device in devices:
                await storage.put_device(DeviceRecord(device, True, None, [], "", T0, T0))
            writer = Writer(storage, devices, args.rate)
            writing = asyncio.create_task(writer.run())
            await asyncio.sleep(args.warmup)  # the writer settles (SQLite caches, WAL)
            baseline = await measure(args.seconds, writer, None, subscriber, broker)
            settings = MqttSettings(parse_broker_url("mqtt_url", broker.url, MQTT_PORTS), client_id="edgewire-bench")
            bridge = MqttBridge(settings, storage, instance="bench", version="bench", window=args.window)
            forwarder = Forwarder(bridge, storage, "bench", window=args.window)
            writer.running = False
            await writing
            await bridge.start()
            task = asyncio.create_task(forwarder.run())
            while forwarder.cursor is None or not bridge.ready:
                await asyncio.sleep(0.05)
            base = writer.stored  # the sink starts at the end of the log: what is stored from now on
            writing = asyncio.create_task(writer.run(forwarder.wake))
            await asyncio.sleep(args.warmup)  # discovery burst: one config per device and metric
            steady = await measure(args.seconds, writer, forwarder, subscriber, broker, base)
            writer.running = False
            await writing
            # Max throughput: a backlog stored while the bridge was away, forwarded as fast as it goes.
            await forwarder.close()
            await task
            await bridge.stop()
            for _ in range(max(1, args.backlog // writer.per_commit)):
                await storage.store(writer.batch())
                writer.stored += writer.per_commit
            bare = MqttSettings(settings.url, client_id="edgewire-bench", discovery=False)  # readings only
            bridge = MqttBridge(bare, storage, instance="bench", version="bench", window=args.window)
            forwarder = Forwarder(bridge, storage, "bench", window=args.window)
            await bridge.start()
            cpu0, t0, acked0 = time.process_time(), time.monotonic(), 0
            task = asyncio.create_task(forwarder.run())
            backlog = writer.stored  # everything not yet acked by the first forwarder is resent or new
            deadline = time.monotonic() + MAX_SECONDS
            while forwarder.counters.acked < args.backlog and time.monotonic() < deadline:
                await asyncio.sleep(0.05)
            drain_s = time.monotonic() - t0
            drain = {"readings": forwarder.counters.acked - acked0, "seconds": round(drain_s, 2),
                     "acked_per_s": round((forwarder.counters.acked - acked0) / drain_s),
                     "cpu_us_per_reading": round((time.process_time() - cpu0) / max(1, forwarder.counters.acked)
                                                 * 1e6, 1), "stored_total": backlog}
            await forwarder.close()
            await task
            await bridge.stop()
        finally:
            await storage.close()
            subscriber.close()
    added = steady["cpu_us_per_stored"] - baseline["cpu_us_per_stored"]
    return {"devices": args.devices, "rate_per_s": round(args.devices * args.rate), "window": args.window,
            "baseline": baseline, "forwarding": steady, "drain": drain,
            "cpu_us_added_per_reading": round(added, 1),
            "keeps_up": steady["acked_per_s"] >= 0.98 * steady["stored_per_s"],
            "loadavg_at_end": os.getloadavg(), "cpus": os.cpu_count(), "python": platform.python_version()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.forward_bench", description=__doc__.split("\n\n")[0])
    parser.add_argument("--devices", type=int, default=10_000)
    parser.add_argument("--rate", type=float, default=1.0, help="readings/s per device (default 1)")
    parser.add_argument("--seconds", type=float, default=30.0, help="length of each measured phase")
    parser.add_argument("--warmup", type=float, default=10.0, help="seconds before each measured phase")
    parser.add_argument("--backlog", type=int, default=100_000, help="readings forwarded in the drain phase")
    parser.add_argument("--window", type=int, default=2000, help="forward_window")
    parser.add_argument("--json", help="also write the result to this file")
    args = parser.parse_args(argv)
    if not 0 < args.devices <= MAX_DEVICES or not 0 < args.seconds <= MAX_SECONDS or args.rate <= 0:
        parser.error(f"--devices 1..{MAX_DEVICES}, --seconds up to {MAX_SECONDS:g}, --rate above 0")
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass
    with tempfile.TemporaryDirectory(prefix="ew-forward-bench-") as tmp:
        result = asyncio.run(run(args, Path(tmp)))
    text = json.dumps(result, indent=2)
    print(text)
    if args.json:
        Path(args.json).write_text(text + "\n")
    return 0 if result["keeps_up"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
