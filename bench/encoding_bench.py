"""JSON against the binary encoding edgewire.v1.cbor (docs/protocol.md section 1.1): bytes per reading
and the gateway's CPU per reading to decode and validate a data frame (docs/performance.md).

Bytes are deterministic: 10-reading batches of realistic readings (seeded random walks) as each
driver builds them, as JSON text the way the driver sends it (MicroPython's and CPython's json:
", " and ": " separators; the load generator: compact orjson), as the columnar CBOR frame, and the
same columnar map as MessagePack (msgpack, for the choice between the two). ``+ws`` adds the
client's WebSocket frame header (2-4 bytes and the 4-byte mask).

CPU is what the gateway spends per reading in ``GatewaySession.receive`` (decode, the columnar
expansion for CBOR, wire.parse_data, the dedupe and rate checks), with orjson for JSON as the
gateway has it: ``--repeat`` runs over fresh sessions and distinct frames (increasing seqs), each
timed with time.process_time; median and spread (min..max) per reading, with the machine's load
average. Single-threaded; nothing else runs in the process.

The goal (issue 14): at most 12 bytes per reading for a 10-reading batch in CBOR, for the devices'
readings (the firmware's, the agent's; the last two cases are shown without it): the table says
"met" or "MISSED"; with ``--require-goal`` a miss is exit status 1.

Usage: .venv/bin/python -m bench.encoding_bench [--repeat 7] [--frames 2000] [--json] [--require-goal]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import statistics
import time
from collections.abc import Callable
from typing import Any

import msgpack
import orjson

from protocol import cbor, cbor_decode, wire
from protocol.gateway import EV_DATA, GatewaySession

BATCH = 10
GOAL_BYTES = 12.0
T0 = 1_764_080_000_000
MAX_FRAMES = 20_000
MAX_REPEAT = 50


def _walk(rnd: random.Random, start: float, step: float, places: int) -> Callable[[], float]:
    value = [start]

    def nxt() -> float:
        value[0] += rnd.uniform(-step, step)
        return round(value[0], places)
    return nxt


def firmware(seed: int, first: int, clock: bool = True) -> tuple[list[wire.Reading], str, int]:
    """ESP32 + DHT22: temperature and humidity at 0.1, every 60 s, ts once NTP synced (else up)."""
    rnd = random.Random(seed)
    temp, hum = _walk(rnd, 21.5, 0.15, 1), _walk(rnd, 45.0, 0.4, 1)
    out = []
    for i in range(BATCH):
        up = 3_600_000 + 60_000 * i + rnd.randrange(0, 12)
        ts = T0 + up if clock else None
        out.append(wire.Reading(first + i, {"temperature": temp(), "humidity": hum()}, ts, None if clock else up,
                                "ok" if rnd.random() > 0.2 else "retried"))
    return out, f"{rnd.getrandbits(32):08x}", 3_600_000 + 60_000 * BATCH


def agent_one_metric(seed: int, first: int) -> tuple[list[wire.Reading], str, int]:
    """Pi agent, one sensor (cpu_temperature at 0.01): ts and up on each reading (read one after the
    other: they differ by 0 or 1 ms), every 60 s, a few ms late."""
    rnd = random.Random(seed)
    cpu = _walk(rnd, 48.3, 0.5, 2)
    out = []
    for i in range(BATCH):
        up = 86_400_000 + 60_000 * i + rnd.randrange(0, 30)
        out.append(wire.Reading(first + i, {"cpu_temperature": cpu()}, T0 + up + rnd.randrange(2), up, "ok"))
    return out, f"{rnd.getrandbits(128):032x}", 86_400_000 + 60_000 * BATCH


def agent_dht(seed: int, first: int) -> tuple[list[wire.Reading], str, int]:
    """Pi agent, DHT22 (temperature and humidity at 0.01, medians of reads 2.1 s apart, retried when they
    fail): ts and up every 60 s, up to 2.5 s late."""
    rnd = random.Random(seed)
    temp, hum = _walk(rnd, 21.5, 0.08, 2), _walk(rnd, 45.0, 0.3, 2)
    out = []
    for i in range(BATCH):
        up = 86_400_000 + 60_000 * i + rnd.randrange(0, 2500)
        out.append(wire.Reading(first + i, {"temperature": temp(), "humidity": hum()}, T0 + up + rnd.randrange(2),
                                up, "ok" if rnd.random() > 0.2 else "retried"))
    return out, f"{rnd.getrandbits(128):032x}", 86_400_000 + 60_000 * BATCH


def agent_two_sensors(seed: int, first: int) -> tuple[list[wire.Reading], str, int]:
    """Pi agent, DHT22 and CPU: one reading per sensor per sample (5 samples, one ts and up each), so the
    columns have gaps and the times alternate between +0 and +60 s."""
    rnd = random.Random(seed)
    temp, hum, cpu = _walk(rnd, 21.5, 0.08, 2), _walk(rnd, 45.0, 0.3, 2), _walk(rnd, 48.3, 0.5, 2)
    out = []
    up = 0
    for i in range(BATCH):
        if i % 2 == 0:
            up = 86_400_000 + 60_000 * (i // 2) + rnd.randrange(0, 2500)
        metrics = {"temperature": temp(), "humidity": hum()} if i % 2 == 0 else {"cpu_temperature": cpu()}
        out.append(wire.Reading(first + i, metrics, T0 + up, up, "ok" if rnd.random() > 0.2 else "retried"))
    return out, f"{rnd.getrandbits(128):032x}", 86_400_000 + 60_000 * BATCH


def loadgen(seed: int, first: int) -> tuple[list[wire.Reading], str, int | None]:
    """The load generator's readings (bench/clients.py): temperature, humidity, battery; ts; 1 s apart."""
    rnd = random.Random(seed)
    out = []
    for i in range(BATCH):
        metrics = {"temperature": round(rnd.uniform(18.0, 26.0), 2), "humidity": round(rnd.uniform(30.0, 60.0), 1),
                   "battery": round(rnd.uniform(60.0, 100.0), 1)}
        out.append(wire.Reading(first + i, metrics, T0 + 1000 * i + rnd.randrange(0, 5), None, "ok"))
    return out, f"{rnd.getrandbits(32):08x}", None


# name -> (readings, how its driver writes JSON, whether the 12-byte goal applies: the devices' readings)
CASES: dict[str, tuple[Callable[[int, int], tuple[list[wire.Reading], str, int | None]], str, bool]] = {
    "firmware DHT22, ts": (firmware, "json", True),
    "firmware DHT22, no clock (up)": (lambda seed, first: firmware(seed, first, clock=False), "json", True),
    "agent, one metric (ts+up)": (agent_one_metric, "json", True),
    "agent, DHT22 (ts+up)": (agent_dht, "json", True),
    "agent, DHT22 + CPU interleaved": (agent_two_sensors, "json", False),
    "load generator (3 random metrics)": (loadgen, "orjson", False),
}


def ws_header(size: int) -> int:
    """Bytes a client's WebSocket frame adds to a payload of ``size`` bytes (masked)."""
    return 6 if size < 126 else 8 if size < 65536 else 14


def sizes(seed: int = 1) -> list[dict[str, Any]]:
    rows = []
    for name, (make, how, goal) in CASES.items():
        readings, boot, up = make(seed, 1042)
        msg = wire.data_message(1042, readings, boot, up)
        text = (orjson.dumps(msg) if how == "orjson" else json.dumps(msg).encode())
        frame = cbor.encode_data(1042, readings, boot, up)
        assert frame is not None, name
        packed = msgpack.packb(cbor_decode.loads(frame))
        rows.append({"case": name, "readings": len(readings), "json_bytes": len(text), "cbor_bytes": len(frame),
                     "msgpack_bytes": len(packed),
                     "json_per_reading": len(text) / BATCH, "cbor_per_reading": len(frame) / BATCH,
                     "msgpack_per_reading": len(packed) / BATCH,
                     "json_ws_per_reading": (len(text) + ws_header(len(text))) / BATCH,
                     "cbor_ws_per_reading": (len(frame) + ws_header(len(frame))) / BATCH,
                     "goal": goal, "goal_met": len(frame) / BATCH <= GOAL_BYTES})
    return rows


# ---------------------------------------------------------------- CPU

def _frames(encoding: str, count: int, batch: int) -> list[str | bytes]:
    out: list[str | bytes] = []
    seq = 1
    for i in range(count):
        readings, boot, up = firmware(i, seq) if batch == BATCH else loadgen(i, seq)
        readings = readings[:batch]
        if encoding == "json":
            out.append(orjson.dumps(wire.data_message(seq, readings, boot, up)).decode())
        else:
            frame = cbor.encode_data(seq, readings, boot, up)
            assert frame is not None
            out.append(bytes(frame))
        seq += batch
    return out


def _session(encoding: str) -> GatewaySession:
    session = GatewaySession(rate=1e9, burst=1e9, loads=orjson.loads,
                             dumps=lambda msg: orjson.dumps(msg).decode(), cbor=encoding == "cbor")
    session.receive('{"t": "auth", "device_id": "BENCH", "token": "ewt_x"}', 0.0)
    session.accept("BENCH", 0, T0)
    return session


def cpu_per_reading(encoding: str, frames: list[str | bytes], batch: int, repeat: int) -> dict[str, Any]:
    runs = []
    for _ in range(repeat):
        session = _session(encoding)
        receive = session.receive
        started = time.process_time()
        for frame in frames:
            event = receive(frame, 1.0, T0)
            if event.kind != EV_DATA:
                raise SystemExit(f"encoding_bench: {encoding} frame refused: {event.payload}")
        runs.append((time.process_time() - started) / (len(frames) * batch) * 1e6)
    return {"median_us": statistics.median(runs), "min_us": min(runs), "max_us": max(runs), "runs": len(runs)}


def table(report: dict[str, Any]) -> str:
    lines = ["bytes per reading, 10-reading batch (+ws: with the client's WebSocket frame header)",
             f"{'case':34} {'JSON':>6} {'CBOR':>6} {'MsgPack':>8} {'JSON+ws':>8} {'CBOR+ws':>8}  goal <= 12"]
    for row in report["sizes"]:
        lines.append(f"{row['case']:34} {row['json_per_reading']:6.1f} {row['cbor_per_reading']:6.1f} "
                     f"{row['msgpack_per_reading']:8.1f} {row['json_ws_per_reading']:8.1f} "
                     f"{row['cbor_ws_per_reading']:8.1f}  "
                     f"{('met' if row['goal_met'] else 'MISSED') if row['goal'] else '-'}")
    lines.append("")
    lines.append(f"gateway CPU per reading, GatewaySession.receive (us; median, min..max of {report['repeat']} runs; "
                 f"load average {report['load_average']})")
    for row in report["cpu"]:
        lines.append(f"{row['frames']:34} {row['encoding']:>6} {row['median_us']:7.2f}  "
                     f"({row['min_us']:.2f}..{row['max_us']:.2f})")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.encoding_bench", description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeat", type=int, default=7, help="timed runs per encoding (default 7)")
    parser.add_argument("--frames", type=int, default=2000, help="distinct frames per run (default 2000)")
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    parser.add_argument("--require-goal", action="store_true", help="exit 1 when a case misses 12 B per reading")
    opts = parser.parse_args(argv)
    if not 1 <= opts.repeat <= MAX_REPEAT or not 1 <= opts.frames <= MAX_FRAMES:
        parser.error(f"--repeat must be within 1..{MAX_REPEAT} and --frames within 1..{MAX_FRAMES}")
    report: dict[str, Any] = {"sizes": sizes(), "repeat": opts.repeat, "cpu": [],
                              "load_average": [round(x, 2) for x in os.getloadavg()], "cpus": os.cpu_count(),
                              "python": platform.python_version()}
    for label, batch in (("10-reading frames (firmware)", BATCH), ("1-reading frames (load generator)", 1)):
        for encoding in ("json", "cbor"):
            frames = _frames(encoding, opts.frames, batch)
            row = cpu_per_reading(encoding, frames, batch, opts.repeat)
            report["cpu"].append({"frames": label, "encoding": encoding, **row})
    report["load_average_after"] = [round(x, 2) for x in os.getloadavg()]
    print(json.dumps(report, indent=2) if opts.json else table(report))
    missed = [row["case"] for row in report["sizes"] if row["goal"] and not row["goal_met"]]
    return 1 if missed and opts.require_goal else 0


if __name__ == "__main__":
    raise SystemExit(main())
