"""Load generator: thousands of simulated devices from a few worker processes.

Edgewire devices (``bench.clients.DeviceConn``: protocol v1 through ``bench.session``) or
MQTT 3.1.1 publishers (``bench.clients.MqttPublisher``) connect with websockets' sans-I/O
client (``bench.wsclient``): one ``asyncio.Protocol`` per connection, no task per
connection, uvloop when installed. ``LoadGen`` spreads the devices over worker processes
and drives them on command; ``Watcher`` runs a delivery watcher (``bench.watchers``) in a
process of its own. bench/run.py uses both; ``python -m bench.loadgen`` runs a load on
its own.

Every loop here is bounded in count and time; traffic goes to 127.0.0.x only.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import multiprocessing
import multiprocessing.connection
import os
import sys
import time
from array import array
from collections.abc import Sequence
from typing import Any

from bench import clients, mqtt
from bench.clients import DeviceConn, MqttPublisher, Payloads
from bench.errors import LoadgenError
from bench.metrics import latency_summary
from bench.proc import process_cpu_seconds, raise_nofile_limit, rss_kib
from bench.watchers import DashboardWatcher, MqttSubscriber
from bench.wsclient import open_connection, parse_ws_url, wait_until
from protocol.device import ENC_CBOR, ENC_JSON

ENCODINGS = (ENC_JSON, ENC_CBOR)  # --encoding: data frames as JSON text or binary CBOR

__all__ = ["ENCODINGS", "LoadGen", "LoadgenError", "Watcher", "Worker", "main", "read_device_file", "reading_slot"]


def reading_slot(index: int, devices: int, batch: int, rate: float) -> tuple[int, int]:
    """Which device takes the fleet's reading number ``index``, and how many ms before it is
    generated that device sampled it (``rate``: readings/s per device).

    ``batch`` 1: round robin, device i's readings at t0 + (i + k*n)/(n*rate), evenly spread.

    ``batch`` > 1: the devices take turns ``batch`` readings at a time, so device i completes
    its k-th batch at t0 + (i + k*n + 1)*batch/(n*rate): one frame every batch/(n*rate) s
    across the fleet, the phases of devices that booted at different times. A device samples
    at its own rate, so each reading of a batch is dated back from the batch's completion by
    1/rate s per reading still to come. (Round robin would complete every device's batch in
    the same n/(n*rate) s: bursts of n*batch readings at ``batch`` times the offered rate, every
    batch/rate s, and an ack latency that grows with the number of devices; docs/performance.md.)
    """
    if batch <= 1:
        return index % devices, 0
    position = index % batch
    return (index // batch) % devices, round((batch - 1 - position) * 1000.0 / rate)


class Worker:
    """Holds a share of the devices in one process and drives them on command."""

    def __init__(self, spec: dict[str, Any]) -> None:
        self.spec = spec
        self.kind: str = spec["kind"]  # "edgewire" or "mqtt"
        self.uri = parse_ws_url(spec["url"])
        self.devices: list[tuple[str, str]] = [(str(d[0]), str(d[1])) for d in spec["devices"]]
        self.sources: list[str] = spec.get("sources") or ["127.0.0.1"]
        self.conns: list[DeviceConn | MqttPublisher] = []
        self.payloads = Payloads(spec.get("seed", 1))
        self.connect_failures = 0
        self.first_error = ""

    def _make(self, device_id: str, token: str) -> DeviceConn | MqttPublisher:
        encoding = self.spec.get("encoding", ENC_JSON)
        if self.kind == "mqtt":
            return MqttPublisher(self.uri, device_id, self.payloads, encoding)
        return DeviceConn(self.uri, device_id, token, self.payloads, self.spec.get("window", 4),
                          self.spec.get("max_batch", 20), encoding, self.spec.get("batch", 1))

    async def connect(self, concurrency: int, timeout: float) -> dict[str, Any]:
        """Open every connection (at most ``concurrency`` handshakes at once) and wait for welcomes."""
        loop = asyncio.get_running_loop()
        started = time.time()
        deadline = loop.time() + timeout
        gate = asyncio.Semaphore(concurrency)
        conns: list[DeviceConn | MqttPublisher] = []

        async def one(index: int, device_id: str, token: str) -> None:
            async with gate:
                if loop.time() > deadline:
                    self.connect_failures += 1
                    return
                source = self.sources[index % len(self.sources)]
                try:
                    conn = await open_connection(lambda: self._make(device_id, token), self.uri.host, self.uri.port,
                                                 source, max(1.0, deadline - loop.time()))
                except (OSError, LoadgenError, TimeoutError) as err:
                    self.connect_failures += 1
                    self.first_error = self.first_error or f"{device_id}: {err}"
                    return
                assert isinstance(conn, DeviceConn | MqttPublisher)
                conns.append(conn)
                # hold the slot until welcomed / CONNACKed, so the storm is bounded end to end
                await wait_until(conn, lambda: conn.welcomed, max(0.1, deadline - loop.time()))

        await asyncio.gather(*(one(i, d, t) for i, (d, t) in enumerate(self.devices)))
        self.conns = conns
        welcomed = sum(1 for c in conns if c.welcomed and not c.closed)
        errors = [c.error for c in conns if c.error]
        if errors and not self.first_error:
            self.first_error = errors[0]
        return {"connected": welcomed, "failures": self.connect_failures + len(conns) - welcomed,
                "connect_s": time.time() - started, "first_error": self.first_error}

    async def run(self, start_at: float, hold_s: float, rate: float, drain_s: float) -> dict[str, Any]:
        """Send ``rate`` readings/s per device from wall time ``start_at`` for ``hold_s``; drain acks."""
        loop = asyncio.get_running_loop()
        conns = [c for c in self.conns if c.welcomed and not c.closed]
        n = len(conns)
        before = self._counts(conns)  # a LoadGen may run several times (the capacity step's ramp)
        await asyncio.sleep(max(0.0, start_at - time.time()))
        del clients.ACK_LATENCIES[:]
        cpu0 = process_cpu_seconds()
        wall0 = time.time()
        t0 = loop.time()
        done = 0
        # Evenly spread phases (see reading_slot), bounded by hold_s.
        total = int(n * rate * hold_s)
        batch = self.spec.get("batch", 1)
        if batch > 1:
            # Whole batches per device (the hold rounded up): no incomplete batch left at the end,
            # which every device would otherwise send at the same instant.
            total = n * batch * max(1, math.ceil(rate * hold_s / batch - 1e-9))
        end = t0 + (total / (n * rate) if n else hold_s)
        late_max = 0.0
        while done < total:
            now = loop.time()
            if now >= end + 1.0:
                break  # hopelessly behind (generator saturated); the CPU figure flags it
            target = min(total, int((now - t0) * n * rate) + 1)
            if target > done:
                ts = clients.now_ms()
                late_max = max(late_max, now - (t0 + done / (n * rate)))
                while done < target:
                    device, sampled_ms_ago = reading_slot(done, n, batch, rate)
                    conns[device].tick(ts - sampled_ms_ago, done)
                    done += 1
            await asyncio.sleep(0.005)
        if batch > 1:  # a run cut short (generator far behind) leaves incomplete batches: send them now
            ts = clients.now_ms()
            for conn in conns:
                if isinstance(conn, DeviceConn):
                    conn.send_rest(ts)
        cpu1 = process_cpu_seconds()
        wall1 = time.time()
        # drain: wait (bounded) for every reading to be acknowledged
        drain_end = loop.time() + drain_s
        if self.kind == "edgewire":
            while loop.time() < drain_end:
                if all(c.acked >= c.generated or c.closed for c in conns):
                    break
                await asyncio.sleep(0.05)
        counts = self._counts(conns)
        return {
            "devices": n, **{key: value - before[key] for key, value in counts.items()},
            "closed_during_run": sum(1 for c in conns if c.closed),
            "close_codes": sorted({c.close_code for c in conns if c.closed}),
            "cpu_s": cpu1 - cpu0, "wall_s": wall1 - wall0, "late_max_s": late_max,
            "drain_s": drain_s - max(0.0, drain_end - loop.time()),
            "rss_kib": rss_kib("self"),
            "ack_latencies": array("d", clients.ACK_LATENCIES),
        }

    def _counts(self, conns: list[DeviceConn | MqttPublisher]) -> dict[str, int]:
        """Readings generated, sent, acked, and frames rejected and slowed, so far (since connecting)."""
        return {"generated": sum(c.generated for c in conns),
                "sent": sum(min(c.sent, c.generated) for c in conns),
                "acked": sum(min(c.acked, c.generated) for c in conns) if self.kind == "edgewire" else 0,
                "rejected": sum(c.rejected for c in conns), "slowed": sum(c.slowed for c in conns)}

    async def close_all(self) -> None:
        for conn in self.conns:
            if isinstance(conn, MqttPublisher) and conn.open:
                conn.send_binary(mqtt.disconnect())
            conn.close()
        # bounded wait for the closing handshakes, so the server sees clean closes
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 2.0
        while loop.time() < deadline and not all(c.closed for c in self.conns):
            await asyncio.sleep(0.02)
        self.conns = []


def _install_loop() -> None:
    with contextlib.suppress(ImportError):
        import uvloop

        asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())


def worker_main(conn: multiprocessing.connection.Connection, spec: dict[str, Any]) -> None:
    """Entry point of one worker process: answers commands from the pipe until "exit"."""
    raise_nofile_limit()
    _install_loop()
    asyncio.run(_worker_loop(conn, spec))


async def _worker_loop(pipe: multiprocessing.connection.Connection, spec: dict[str, Any]) -> None:
    loop = asyncio.get_running_loop()
    inbox: asyncio.Queue[Any] = asyncio.Queue()

    def readable() -> None:
        try:
            inbox.put_nowait(pipe.recv())
        except (EOFError, OSError):
            inbox.put_nowait({"cmd": "exit"})
            loop.remove_reader(pipe.fileno())

    loop.add_reader(pipe.fileno(), readable)
    # The loop made the pipe non-blocking; replies (latency arrays of MBs) need blocking writes.
    os.set_blocking(pipe.fileno(), True)
    worker: Worker | DashboardWatcher | MqttSubscriber | None = None
    watcher: DashboardWatcher | MqttSubscriber | None = None
    while True:
        msg = await inbox.get()
        cmd = msg["cmd"]
        try:
            if cmd == "connect" and spec["kind"] in ("edgewire", "mqtt"):
                worker = Worker(spec)
                reply: dict[str, Any] = await worker.connect(msg["concurrency"], msg["timeout"])
            elif cmd == "run" and isinstance(worker, Worker):
                reply = await worker.run(msg["start_at"], msg["hold_s"], msg["rate"], msg["drain_s"])
            elif cmd == "close" and isinstance(worker, Worker):
                await worker.close_all()
                reply = {"closed": True}
            elif cmd == "watch":
                watcher = await _open_watcher(spec)
                reply = {"ready": True}
            elif cmd == "watch_mark" and watcher is not None:
                watcher.recording = bool(msg["recording"])
                watcher.delivered = 0
                watcher.latencies = array("d")
                reply = {"cpu_s": process_cpu_seconds(), "time": time.time()}
            elif cmd == "watch_stats" and watcher is not None:
                reply = {"delivered": watcher.delivered, "latencies": watcher.latencies,
                         "cpu_s": process_cpu_seconds(), "time": time.time(), "open": watcher.open,
                         "resyncs": getattr(watcher, "snapshots", 1) - 1}
            elif cmd == "exit":
                if watcher is not None:
                    watcher.close()
                if isinstance(worker, Worker):
                    await worker.close_all()
                pipe.send({"bye": True})
                return
            else:
                reply = {"error": f"unexpected command {cmd!r}"}
        except Exception as err:  # reported to the orchestrator, which fails the step loudly
            reply = {"error": f"{type(err).__name__}: {err}"}
        pipe.send(reply)


async def _open_watcher(spec: dict[str, Any]) -> DashboardWatcher | MqttSubscriber:
    uri = parse_ws_url(spec["url"])
    if spec["kind"] == "dashboard":
        dash = await open_connection(lambda: DashboardWatcher(uri, spec.get("only", ""), spec.get("skip", "")),
                                     uri.host, uri.port)
        assert isinstance(dash, DashboardWatcher)
        if not await wait_until(dash, lambda: dash.snapshots > 0, 10):
            raise LoadgenError("dashboard stream sent no snapshot within 10 s")
        return dash
    sub = await open_connection(lambda: MqttSubscriber(uri), uri.host, uri.port)
    assert isinstance(sub, MqttSubscriber)
    if not await wait_until(sub, lambda: sub.subscribed, 10):
        raise LoadgenError(f"MQTT subscription not acknowledged within 10 s ({sub.error or 'no SUBACK'})")
    return sub


class Proc:
    """A worker or watcher process and its command pipe."""

    def __init__(self, spec: dict[str, Any]) -> None:
        ctx = multiprocessing.get_context("spawn")
        self.pipe, child = ctx.Pipe()
        self.process = ctx.Process(target=worker_main, args=(child, spec), daemon=True)
        self.process.start()
        child.close()

    def send(self, msg: dict[str, Any]) -> None:
        self.pipe.send(msg)

    def recv(self, timeout: float) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while not self.pipe.poll(0.5):
            if not self.process.is_alive():
                raise LoadgenError(f"worker pid {self.process.pid} died (exit code {self.process.exitcode})")
            if time.monotonic() > deadline:
                raise LoadgenError(f"worker pid {self.process.pid} did not answer within {timeout:g} s")
        reply: dict[str, Any] = self.pipe.recv()
        if "error" in reply:
            raise LoadgenError(f"worker pid {self.process.pid}: {reply['error']}")
        return reply

    def call(self, msg: dict[str, Any], timeout: float) -> dict[str, Any]:
        self.send(msg)
        return self.recv(timeout)

    def stop(self) -> None:
        with contextlib.suppress(Exception):
            self.call({"cmd": "exit"}, 10)
        self.process.join(5)
        if self.process.is_alive():
            self.process.kill()
            self.process.join(5)
        self.pipe.close()


class LoadGen:
    """N worker processes each holding a share of ``devices`` [(device_id, token)]."""

    def __init__(self, kind: str, url: str, devices: Sequence[tuple[str, str]], workers: int = 1,
                 sources: int = 1, window: int = 4, max_batch: int = 20, encoding: str = ENC_JSON,
                 batch: int = 1) -> None:
        """``batch`` > 1 (Edgewire devices only): each device sends its readings ``batch`` per frame,
        once it has taken that many (see DeviceConn); ``rate`` stays readings/s per device."""
        if kind not in ("edgewire", "mqtt"):
            raise LoadgenError(f"kind {kind!r} must be 'edgewire' or 'mqtt'")
        if not 1 <= batch <= 100 or (batch > 1 and kind != "edgewire"):
            raise LoadgenError(f"batch {batch}: must be within 1..100, and 1 for MQTT publishers")
        if encoding not in ENCODINGS:
            raise LoadgenError(f"encoding {encoding!r} must be one of {', '.join(ENCODINGS)}")
        parse_ws_url(url)  # refuse a non-loopback target before any process starts
        workers = max(1, min(workers, len(devices) or 1))
        addrs = [f"127.0.0.{i + 1}" for i in range(max(1, sources))]
        self.procs = [Proc({"kind": kind, "url": url, "devices": list(devices[i::workers]), "sources": addrs,
                            "window": window, "max_batch": max_batch, "seed": i + 1, "encoding": encoding,
                            "batch": batch})
                      for i in range(workers)]

    def connect(self, concurrency: int = 256, timeout: float = 120.0) -> dict[str, Any]:
        share = max(1, concurrency // len(self.procs))
        for proc in self.procs:
            proc.send({"cmd": "connect", "concurrency": share, "timeout": timeout})
        replies = [proc.recv(timeout + 30) for proc in self.procs]
        return {"connected": sum(r["connected"] for r in replies),
                "failures": sum(r["failures"] for r in replies),
                "connect_s": max(r["connect_s"] for r in replies),
                "first_error": next((r["first_error"] for r in replies if r["first_error"]), "")}

    def start(self, start_at: float, hold_s: float, rate: float, drain_s: float) -> None:
        for proc in self.procs:
            proc.send({"cmd": "run", "start_at": start_at, "hold_s": hold_s, "rate": rate,
                       "drain_s": drain_s})

    def results(self, timeout: float) -> list[dict[str, Any]]:
        return [proc.recv(timeout) for proc in self.procs]

    def close(self) -> None:
        for proc in self.procs:
            with contextlib.suppress(LoadgenError):
                proc.call({"cmd": "close"}, 30)

    def stop(self) -> None:
        for proc in self.procs:
            proc.stop()


class Watcher:
    """A dashboard-stream client ("dashboard") or MQTT subscriber ("subscriber") in its own process."""

    def __init__(self, kind: str, url: str, only: str = "", skip: str = "") -> None:
        """``only`` / ``skip``: a dashboard watcher records only devices whose id has / lacks that prefix."""
        self.proc = Proc({"kind": "dashboard" if kind == "dashboard" else "subscriber", "url": url,
                          "only": only, "skip": skip})
        self.proc.call({"cmd": "watch"}, 30)

    def mark(self) -> dict[str, Any]:
        """Reset counters and start recording now."""
        return self.proc.call({"cmd": "watch_mark", "recording": True}, 10)

    def stats(self) -> dict[str, Any]:
        return self.proc.call({"cmd": "watch_stats"}, 30)

    @property
    def pid(self) -> int:
        return int(self.proc.process.pid or 0)

    def stop(self) -> None:
        self.proc.stop()


# ---------------------------------------------------------------- command line

def read_device_file(path: str) -> list[tuple[str, str]]:
    """Devices from a file of ``device_id,token`` lines (or ``device_id token``)."""
    devices = []
    with open(path) as handle:
        for number, line in enumerate(handle, 1):
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            parts = line.replace(",", " ").split()
            if len(parts) < 2 and not line.endswith(","):
                raise LoadgenError(f"{path}:{number}: expected 'device_id,token'")
            devices.append((parts[0], parts[1] if len(parts) > 1 else ""))
    return devices


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.loadgen",
        description="Hold many device connections and send readings at a fixed rate.")
    parser.add_argument("--url", required=True, help="ws://127.0.0.1:PORT/v1/device (or /mqtt with --mqtt)")
    parser.add_argument("--devices-file", required=True,
                        help="lines of device_id,token (tokens unused for MQTT)")
    parser.add_argument("--devices", type=int, default=0,
                        help="use the first N devices of the file (0 = all)")
    parser.add_argument("--mqtt", action="store_true", help="publish MQTT 3.1.1 QoS 0 over WebSocket instead")
    parser.add_argument("--rate", type=float, default=1.0, help="readings per second per device (default 1)")
    parser.add_argument("--duration", type=float, default=30.0, help="seconds of sending after ramp-up")
    parser.add_argument("--workers", type=int, default=1, help="worker processes (default 1)")
    parser.add_argument("--sources", type=int, default=1, help="source addresses 127.0.0.1..N (default 1)")
    parser.add_argument("--concurrency", type=int, default=256, help="handshakes in flight (default 256)")
    parser.add_argument("--drain", type=float, default=10.0, help="seconds to wait for acks after sending")
    parser.add_argument("--encoding", choices=ENCODINGS, default=ENC_JSON,
                        help="data frames as JSON text (default) or binary CBOR (subprotocol edgewire.v1.cbor)")
    parser.add_argument("--batch", type=int, default=1,
                        help="readings per data frame: each device sends once it has taken this many (default 1)")
    args = parser.parse_args(argv)
    if not 0 < args.duration <= 3600 or not 0 < args.rate <= 100:
        parser.error("--duration must be in (0, 3600] and --rate in (0, 100]")
    if not 1 <= args.workers <= 64 or not 1 <= args.sources <= 254 or args.concurrency < 1:
        parser.error("--workers must be in 1..64, --sources in 1..254 and --concurrency at least 1")
    if not 1 <= args.batch <= 100 or (args.mqtt and args.batch != 1):
        parser.error("--batch must be in 1..100 (and 1 with --mqtt)")
    try:
        parse_ws_url(args.url)
        devices = read_device_file(args.devices_file)
    except OSError as err:
        print(f"error: cannot read --devices-file: {err.strerror or err} ({args.devices_file})", file=sys.stderr)
        return 2
    except LoadgenError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    if args.devices:
        devices = devices[:args.devices]
    if not devices:
        print(f"error: {args.devices_file} lists no devices (lines of device_id,token)", file=sys.stderr)
        return 2
    gen = LoadGen("mqtt" if args.mqtt else "edgewire", args.url, devices, args.workers, args.sources,
                  encoding=args.encoding, batch=args.batch)
    try:
        conn = gen.connect(args.concurrency)
        gen.start(time.time() + 0.5, args.duration, args.rate, args.drain)
        results = gen.results(args.duration + args.drain + 60)
    except LoadgenError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    finally:
        gen.close()
        gen.stop()
    for result in results:  # one summary per worker instead of every sample
        result["ack_latency"] = latency_summary(result.pop("ack_latencies"))
    print(json.dumps({"connect": conn, "workers": results}, indent=2))
    return 0

if __name__ == "__main__":
    raise SystemExit(main())
