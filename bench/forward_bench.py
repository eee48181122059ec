"""Forwarding to Mosquitto: throughput at the 10k-device steady rate, and the CPU it adds per reading.

This process plays the gateway's storage side: a writer stores readings in group commits
(``--devices`` devices at ``--rate`` readings/s each, one commit every 10 ms; SQLite as the
gateway runs it: WAL, synchronous=FULL) and shows each reading to the MQTT bridge
(``saw_reading``: Home Assistant discovery), as ingestion does. The readings are forwarded
as the gateway forwards them by default (``forward_process = true``): by the forwarding
worker process (gateway.forward.worker: the Forwarder and the MQTT sink, paho-mqtt, QoS 1,
retained state). Mosquitto (services.mosquitto) and a subscriber counting what it delivers
are separate processes.

Phases, each ``--seconds`` long at the same write rate, after ``--warmup`` seconds:
1. ``baseline``: no sink, no bridge (the forward log is not written): storing alone.
2. ``worker``: the sink registered (the forward log is written), the bridge connected, the
   worker forwarding. CPU per reading of this process (the gateway side: the log rows and the
   bridge), of the worker and of Mosquitto.
3. ``in_process`` (``forward_process = false``): the same Forwarder and sink in this process.
4. ``drain``: ``--backlog`` readings stored while no forwarder ran, forwarded by the worker
   as fast as it goes: its maximum rate.

CPU is utime+stime of each process (all its threads) per reading stored. The machine may be
shared: the load average is reported, and the figures are only comparable on a quiet machine.

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
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench.proc import process_cpu_seconds, rss_kib
from gateway.config import load_config
from gateway.forward.discovery import Topics
from gateway.forward.forwarder import Forwarder
from gateway.forward.mqtt_link import MqttLink
from gateway.forward.mqtt_sink import MqttSink
from gateway.forward.settings import MQTT_PORTS, parse_broker_url
from gateway.forward.setup import Forwarding, ForwardWorker
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
        self.on_rows: Callable[[list[ReadingRow]], object] | None = None  # ingestion's hook (the bridge)
        self.on_commit: Callable[[], None] | None = None  # wakes an in-process forwarder

    def batch(self) -> list[ReadingRow]:
        rows = []
        now = int(time.time() * 1000)  # receive times are real: the forwarders' lag is measured from them
        for _ in range(self.per_commit):
            device = self.devices[self.next]
            self.next = (self.next + 1) % len(self.devices)
            seq = self.seq[device] = self.seq[device] + 1
            rows.append(ReadingRow(device, seq, now, now, {"temperature": 20.0 + (seq % 50) / 10,
                                                          "humidity": 45.0 + seq % 7}, quality="ok"))
        return rows

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        self.running = True
        due = loop.time()
        while self.running:
            rows = self.batch()
            await self.storage.store(rows)
            self.stored += self.per_commit
            if self.on_rows is not None:
                self.on_rows(rows)
            if self.on_commit is not None:
                self.on_commit()
            due += COMMIT_S
            delay = due - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)  # the devices' pace
            else:
                self.late += 1
                await asyncio.sleep(0)


def cpu_of(pid: int | None) -> float:
    return process_cpu_seconds(pid) if pid else 0.0


class Phase:
    """CPU and counters at the start of a measurement window."""

    def __init__(self, writer: Writer, subscriber: Subscriber, broker: MosquittoServer, worker_pid: int | None,
                 acked: Callable[[], int]) -> None:
        self.writer, self.subscriber, self.broker, self.worker_pid, self.acked = (
            writer, subscriber, broker, worker_pid, acked)
        self.t0 = time.monotonic()
        self.stored0, self.acked0, self.delivered0 = writer.stored, acked(), subscriber.count()
        self.cpu0, self.mq0, self.worker0 = time.process_time(), cpu_of(broker.pid), cpu_of(worker_pid)
        self.late0 = writer.late

    def end(self) -> dict[str, Any]:
        elapsed = time.monotonic() - self.t0
        stored = max(1, self.writer.stored - self.stored0)

        def per(value: float) -> float:
            return round(value / stored * 1e6, 1)

        return {"seconds": round(elapsed, 2), "stored_per_s": round(stored / elapsed),
                "acked_per_s": round((self.acked() - self.acked0) / elapsed),
                "delivered_per_s": round((self.subscriber.count() - self.delivered0) / elapsed),
                "gateway_cpu_us_per_reading": per(time.process_time() - self.cpu0),
                "worker_cpu_us_per_reading": per(cpu_of(self.worker_pid) - self.worker0) if self.worker_pid else None,
                "mosquitto_cpu_us_per_reading": per(cpu_of(self.broker.pid) - self.mq0),
                "late_commits": self.writer.late - self.late0}


async def measure(seconds: float, phase: Phase) -> dict[str, Any]:
    await asyncio.sleep(seconds)  # the measurement window
    return phase.end()


def worker_acked(worker: ForwardWorker) -> int:
    return sum(int(s.get("acked", 0)) for s in worker.stats)


async def until(predicate: Callable[[], bool], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            return False
        await asyncio.sleep(0.05)
    return True


async def run(args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    devices = [f"D-{i:05d}" for i in range(args.devices)]
    result: dict[str, Any] = {"devices": args.devices, "rate_per_s": round(args.devices * args.rate),
                              "window": args.window}
    with MosquittoServer(parent_dir=workdir, quiet=True) as broker:
        subscriber = Subscriber(broker.port)
        config = load_config(env={}, overrides={"data_dir": str(workdir), "mqtt_url": broker.url,
                                                "instance_id": "bench", "forward_window": args.window,
                                                "log_level": "warning"})
        storage = SQLiteStorage(config.database, commit_interval_ms=0)
        await storage.open()
        writer = Writer(storage, devices, args.rate)
        try:
            for device in devices:
                await storage.put_device(DeviceRecord(device, True, None, [], "", T0, T0))
            writing = asyncio.create_task(writer.run())
            await asyncio.sleep(args.warmup)  # SQLite caches and the WAL settle
            result["baseline"] = await measure(args.seconds, Phase(writer, subscriber, broker, None, lambda: 0))
            # 2. The default: the gateway side registers the sink and runs the bridge; the worker forwards.
            forwarding = Forwarding.from_config(config, storage, "bench", "bench")
            assert forwarding.worker is not None and forwarding.bridge is not None
            await forwarding.start()
            worker_task = asyncio.create_task(forwarding.worker.run())
            bridge = forwarding.bridge
            writer.on_rows = lambda rows: [bridge.saw_reading(r.device_id, r.metrics) for r in rows]
            await until(lambda: forwarding.worker is not None and forwarding.worker.up, 60)
            await asyncio.sleep(args.warmup)  # discovery burst: one config per device and metric
            pid = forwarding.worker.process.pid if forwarding.worker.process else None
            worker = forwarding.worker
            phase = Phase(writer, subscriber, broker, pid, lambda: worker_acked(worker))
            result["worker"] = await measure(args.seconds, phase)
            result["worker"]["lag_s_at_end"] = max((s.get("lag_s", 0.0) for s in worker.stats), default=None)
            result["worker"]["worker_peak_rss_mib"] = round(rss_kib(pid)["hwm"] / 1024, 1) if pid else None
            await forwarding.close()
            await worker_task
            writer.on_rows = None
            # 3. forward_process = false: the forwarder and the sink in this process.
            link = MqttLink(parse_broker_url("mqtt_url", broker.url, MQTT_PORTS), client_id="edgewire-bench-inproc",
                            max_queued=args.window + 100, on_connect=_nothing, on_disconnect=_nothing,
                            on_message=_nothing)
            sink = MqttSink(link, Topics("edgewire", "homeassistant", "bench"), own_link=True)
            forwarder = Forwarder(sink, storage, "bench", window=args.window)
            await sink.start()
            task = asyncio.create_task(forwarder.run())
            writer.on_commit = forwarder.wake
            await until(lambda: sink.ready and forwarder.cursor is not None, 60)
            await asyncio.sleep(args.warmup)  # the backlog of phase 2's end is forwarded first
            phase = Phase(writer, subscriber, broker, None, lambda: forwarder.counters.acked)
            result["in_process"] = await measure(args.seconds, phase)
            result["in_process"]["lag_s_at_end"] = forwarder.lag_s()
            writer.running = False
            await writing
            await forwarder.close()
            await task
            await sink.stop()
            # 4. The worker's top rate on a backlog.
            for _ in range(max(1, args.backlog // writer.per_commit)):
                await storage.store(writer.batch())
                writer.stored += writer.per_commit
            drain = Forwarding.from_config(config, storage, "bench", "bench")
            assert drain.worker is not None
            drain.bridge = None  # readings only: no control messages
            await drain.start()
            drain_task = asyncio.create_task(drain.worker.run())
            await until(lambda: drain.worker is not None and drain.worker.up, 60)
            t0, pid = time.monotonic(), drain.worker.process.pid if drain.worker.process else None
            cpu0 = cpu_of(pid)
            done = await until(lambda: drain.worker is not None and worker_acked(drain.worker) >= args.backlog,
                               MAX_SECONDS)
            elapsed = time.monotonic() - t0
            acked = worker_acked(drain.worker)
            result["drain"] = {"readings": acked, "seconds": round(elapsed, 2), "acked_per_s": round(acked / elapsed),
                               "worker_cpu_us_per_reading": round((cpu_of(pid) - cpu0) / max(1, acked) * 1e6, 1),
                               "complete": done}
            await drain.close()
            await drain_task
        finally:
            writer.running = False
            await storage.close()
            subscriber.close()
    worker_phase, baseline = result["worker"], result["baseline"]
    result["gateway_cpu_us_added_per_reading"] = round(
        worker_phase["gateway_cpu_us_per_reading"] - baseline["gateway_cpu_us_per_reading"], 1)
    result["in_process_cpu_us_added_per_reading"] = round(
        result["in_process"]["gateway_cpu_us_per_reading"] - baseline["gateway_cpu_us_per_reading"], 1)
    result["keeps_up"] = worker_phase["acked_per_s"] >= 0.98 * worker_phase["stored_per_s"]
    target = args.devices * args.rate
    result["valid"] = all(result[k]["stored_per_s"] >= 0.95 * target for k in ("baseline", "worker", "in_process"))
    if not result["valid"]:
        result["invalid_reason"] = ("the writer could not store the target rate in every phase (the machine is "
                                    "short of CPU): per-reading CPU figures stand, rates do not")
    result.update(loadavg_at_end=os.getloadavg(), cpus=os.cpu_count(), python=platform.python_version())
    return result


def _nothing(*_args: Any) -> None:
    return None


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
