"""The capacity step (issue 14): the highest sustained rate, in readings/s, that the gateway takes
with devices batching 10 readings per frame, before a reading is lost or the ack p99 passes 1 s.

Per storage backend (SQLite; PostgreSQL when its binaries are installed) one fresh gateway, a
fixed fleet (``devices``, default 2,000) registered through /v1/admin and connected once, then
a bounded ramp of aggregate rates (``RAMP``), each held ``hold_s`` seconds and drained. The ramp
stops at the first step that fails (a reading not acked within the drain, a connection lost, a
frame refused, or ack p99 > 1 s) or that the load generator could not offer (it fell behind or
saturated a core: that step measured the generator, so the capacity is "at least" the last step
that passed). ``judge`` and ``summarize`` decide, from step figures alone; ``run_backend`` and
``run_capacity`` measure. bench/run.py runs it as part of ``make bench`` (docs/performance.md).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import sqlite3
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from websockets.exceptions import WebSocketException

from bench.admin import register_all
from bench.errors import BenchError
from bench.loadgen import ENCODINGS, LoadGen
from bench.metrics import HostSample, latency_summary, machine_share_pct
from bench.proctree import TreeMeter
from bench.servers import GatewayServer, count_sqlite_readings
from services.errors import ServiceError
from services.postgres import PostgresServer

__all__ = ["ACK_P99_LIMIT_MS", "BACKENDS", "BATCH", "GOALS", "RAMP", "CapacityOptions", "histogram_mean_ms", "judge",
           "run_backend", "run_capacity", "summarize", "summary_lines"]

RAMP = (10_000, 20_000, 35_000, 50_000, 75_000, 100_000, 150_000)  # readings/s, the whole fleet
BATCH = 10  # readings per data frame
ACK_P99_LIMIT_MS = 1000.0
GOALS = {"sqlite": 50_000, "postgresql": 100_000}  # issue 14: readings/s the backend should sustain
BACKENDS = ("sqlite", "postgresql")
SATURATED = 0.90  # a generator process at >= 90 % of one core measured itself, not the gateway
MIN_OFFERED = 0.95  # ... as did one that offered less than 95 % of the step's rate
MAX_LATE_S = 1.0  # ... or fell more than 1 s behind its schedule
FRAMES_PER_DEVICE_MAX = 8.0  # per device, under the gateway's default limit of 10 frames/s (burst 20)
PASS, FAIL, GENERATOR_BOUND, ERROR = "pass", "fail", "generator-bound", "error"
Log = Callable[[str], None]


@dataclass
class CapacityOptions:
    """What the capacity step runs: the fleet, the ramp and the generator."""

    devices: int = 2000
    rates: Sequence[int] = RAMP
    hold_s: float = 5.0
    drain_s: float = 15.0
    batch: int = BATCH
    workers: int = 2
    concurrency: int = 256
    encoding: str = ENCODINGS[0]
    uvloop: bool = True
    gateway_env: dict[str, str] = field(default_factory=dict)
    gateway_workers: int | None = None  # the gateway's --workers; None: left out (its default)

    def check(self) -> None:
        """Raise BenchError naming the option to change when the configuration cannot be run."""
        if not 1 <= self.devices <= 20000:
            raise BenchError("capacity devices must be within 1..20000")
        if not self.rates or len(self.rates) > 12 or any(not 1 <= r <= 500_000 for r in self.rates):
            raise BenchError("capacity rates: 1 to 12 rates, each within 1..500000 readings/s")
        if list(self.rates) != sorted(set(self.rates)):
            raise BenchError("capacity rates must be ascending and distinct (a ramp)")
        if not 1 <= self.hold_s <= 120 or not 1 <= self.drain_s <= 120:
            raise BenchError("capacity hold and drain must be within 1..120 s")
        if not 1 <= self.batch <= 100:
            raise BenchError("capacity batch must be within 1..100 readings per frame")
        frames = max(self.rates) / self.devices / self.batch
        if frames > FRAMES_PER_DEVICE_MAX:
            need = -(-max(self.rates) // int(FRAMES_PER_DEVICE_MAX * self.batch))
            raise BenchError(f"at {max(self.rates):,} readings/s, {self.devices:,} devices would each send "
                             f"{frames:g} frames/s, above the gateway's per-device rate limit (10 frames/s); "
                             f"use at least {need:,} devices or a lower top rate")


# ---------------------------------------------------------------- decisions (pure)

def judge(step: dict[str, Any]) -> tuple[str, str]:
    """(verdict, reason) for one step's figures: "pass", "fail", "generator-bound" or "error".

    A loss, a lost connection or a refused frame fails the step whatever the generator did; a
    generator that could not offer the rate makes the step say nothing about the gateway; then
    the ack p99 decides.
    """
    if step.get("error"):
        return ERROR, str(step["error"])
    lost = step.get("lost") or 0
    if lost > 0:
        return FAIL, f"{lost} readings not acknowledged within the drain"
    if step.get("closed_during_run"):
        return FAIL, f"{step['closed_during_run']} device connections closed during the step"
    if step.get("rejected"):
        return FAIL, f"the gateway refused {step['rejected']} frames"
    gen = step.get("generator") or {}
    cpu = max(gen.get("cpu_pct") or [0.0]) / 100
    if cpu >= SATURATED:
        return GENERATOR_BOUND, f"a generator process used {100 * cpu:.0f} % of a core"
    if (gen.get("late_max_s") or 0.0) > MAX_LATE_S:
        return GENERATOR_BOUND, f"the generator fell {gen['late_max_s']:.1f} s behind schedule"
    offered = step.get("offered_per_s") or 0.0
    if offered < MIN_OFFERED * step["rate"]:
        return GENERATOR_BOUND, f"the generator offered {offered:,.0f} of {step['rate']:,} readings/s"
    p99 = (step.get("ack_latency") or {}).get("p99_ms")
    if p99 is None:
        return FAIL, "no reading was acknowledged"
    if p99 > ACK_P99_LIMIT_MS:
        return FAIL, f"ack p99 {p99:,.0f} ms > {ACK_P99_LIMIT_MS:,.0f} ms"
    return PASS, f"0 lost, ack p99 {p99:,.0f} ms"


def summarize(backend: str, steps: Sequence[dict[str, Any]], top: int | None = None) -> dict[str, Any]:
    """The capacity of one backend from its steps (in ramp order, each with "rate" and "verdict").

    ``capacity``: the highest rate of the passing steps before the first that did not pass (None
    when the first did not). ``bound`` says what ended the ramp: "gateway" (a step failed: the
    capacity is measured), "generator" or "error" (the capacity is at least ``capacity``), or
    "ramp" (every step passed: at least ``capacity``, the ramp's top ``top``).
    """
    capacity: int | None = None
    bound = "ramp"
    stopped_at: int | None = None
    reason = ""
    for step in steps:
        verdict = step["verdict"]
        if verdict != PASS:
            bound = {FAIL: "gateway", GENERATOR_BOUND: "generator"}.get(verdict, "error")
            stopped_at, reason = step["rate"], step.get("reason", "")
            break
        capacity = step["rate"]
    if not steps:
        bound = "error"
    goal = GOALS.get(backend)
    exact = bound == "gateway"
    why = {"generator": "generator-bound: the load generator could not offer the next rate",
           "ramp": "every rate of the ramp passed", "error": "the ramp stopped on an error"}.get(bound, "")
    if capacity is None:
        text = "no rate passed" if exact else f"not measured ({why})"
    elif exact:
        text = f"{capacity:,} readings/s"
    else:
        text = f"at least {capacity:,} readings/s ({why})"
    met: bool | None = None
    if goal is not None:
        # below the goal but not exact (the generator or an error stopped the ramp): undecided
        met = True if (capacity or 0) >= goal else (False if exact else None)
    return {
        "backend": backend, "capacity_per_s": capacity, "bound": bound, "exact": exact,
        "stopped_at_per_s": stopped_at, "stop_reason": reason, "ramp_top_per_s": top,
        "goal_per_s": goal, "goal_met": met, "text": text,
    }


def summary_lines(report: dict[str, Any]) -> list[str]:
    """The capacity step as printed after the bench table."""
    config = report.get("config") or {}
    lines = [f"capacity step: {config.get('devices', '?')} devices, {config.get('batch', BATCH)} readings per frame, "
             f"{config.get('hold_s', '?')} s per rate; highest rate with 0 lost and ack p99 <= "
             f"{ACK_P99_LIMIT_MS:,.0f} ms"]
    for backend, result in (report.get("backends") or {}).items():
        if result.get("skipped"):
            lines.append(f"- {backend}: skipped ({result['skipped']})")
            continue
        summary = result.get("summary") or {}
        goal = summary.get("goal_per_s")
        decided = summary.get("goal_met")
        value = summary.get("capacity_per_s") or 0
        met = "" if goal is None else f"; target >= {goal:,} readings/s: " + (
            "not shown" if decided is None else f"met (margin {value - goal:,})" if decided
            else f"MISSED by {goal - value:,}")
        stop = (f"; stopped at {summary['stopped_at_per_s']:,}: {summary['stop_reason']}"
                if summary.get("stopped_at_per_s") else "")
        lines.append(f"- {backend}: {summary.get('text', 'n/a')}{met}{stop}")
        for step in result.get("steps", []):
            ack = step.get("ack_latency") or {}
            srv = step.get("server") or {}
            gen = step.get("generator") or {}
            gw = step.get("gateway") or {}
            offered = _num(step.get("offered_per_s"))
            lines.append(f"    {step['rate']:>7,}/s  {step['verdict']:<15} offered {offered}/s, "
                         f"{_num(step.get('readings_per_frame'))} per frame, "
                         f"lost {_num(step.get('lost'))}, ack p50/p99 {_num(ack.get('p50_ms'))}/"
                         f"{_num(ack.get('p99_ms'))} ms (gateway's means: ack {_num(gw.get('ack_mean_ms'))}, "
                         f"commit {_num(gw.get('commit_mean_ms'))} ms), gateway cpu {_num(srv.get('cpu_pct_hold'))} % "
                         f"of a core ({_num(srv.get('machine_share_pct'))} % of the machine), "
                         f"generator cpu {'/'.join(_num(c) for c in gen.get('cpu_pct', [])) or 'n/a'} %"
                         f"{'' if step['verdict'] == PASS else ': ' + step.get('reason', '')}")
        if result.get("stored") is not None:
            lines.append(f"    stored {result['stored']:,} rows for {result.get('acked', 0):,} readings acknowledged")
    return lines


def _num(value: Any) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, float):
        return f"{value:,.0f}" if abs(value) >= 100 else f"{value:,.1f}"
    return f"{value:,}"


# ---------------------------------------------------------------- measuring

def run_step(gen: LoadGen, server: GatewayServer, meter: TreeMeter, rate: int, devices: int,
             opts: CapacityOptions) -> dict[str, Any]:
    """One rate of the ramp on connected devices: hold, drain, figures (``meter``: the gateway's process tree)."""
    step: dict[str, Any] = {"rate": rate, "per_device_per_s": round(rate / devices, 3)}
    m0 = server.metrics()
    start_at = time.time() + 0.5
    gen.start(start_at, opts.hold_s, rate / devices, opts.drain_s)
    time.sleep(max(0.0, start_at - time.time()))
    s0, h0 = meter.snapshot(), HostSample.take()
    time.sleep(max(0.0, start_at + opts.hold_s - time.time()))
    s1, h1 = meter.snapshot(), HostSample.take()
    workers = gen.results(opts.hold_s + opts.drain_s + 120)
    m1 = server.metrics()
    counts = {key: m1.get(f"{key}_total", 0.0) - m0.get(f"{key}_total", 0.0)
              for key in ("frames", "readings_stored", "throttled")}
    # the gateway's own view: frame received -> ack sent, and its storage.store() calls
    gateway: dict[str, float | None] = dict(counts)
    for key in ("ack", "commit"):
        gateway[f"{key}_mean_ms"] = histogram_mean_ms(m0, m1, f"{key}_latency_seconds")
    generated = sum(w["generated"] for w in workers)
    acked = sum(w["acked"] for w in workers)
    wall = max(w["wall_s"] for w in workers) or opts.hold_s
    acks: list[float] = []
    for w in workers:
        acks.extend(w["ack_latencies"])
    cpus = os.cpu_count() or 1
    busy = h0.busy_cores(h1, cpus)
    step.update(
        generated=generated, acked=acked, lost=generated - acked,
        offered_per_s=round(generated / wall, 1),
        rejected=sum(w["rejected"] for w in workers), slowed=sum(w["slowed"] for w in workers),
        closed_during_run=sum(w["closed_during_run"] for w in workers),
        ack_latency=latency_summary(acks),
        server={"cpu_pct_hold": round(100 * s1.cpu_since(s0) / max(1e-6, s1.at - s0.at), 1),
                "machine_share_pct": _share(machine_share_pct(s1.cpu_since(s0), s1.at - s0.at, cpus)),
                "processes": s1.processes, "rss_kib": s1.rss_kib},
        generator={"cpu_pct": [round(100 * w["cpu_s"] / w["wall_s"], 1) if w["wall_s"] else 0.0 for w in workers],
                   "late_max_s": round(max(w["late_max_s"] for w in workers), 3),
                   "drain_s": round(max(w["drain_s"] for w in workers), 2)},
        gateway=gateway,
        readings_per_frame=round(counts["readings_stored"] / counts["frames"], 2) if counts["frames"] else None,
        host={"cpus": cpus, "busy_cores_hold": None if busy is None else round(busy, 2)},
    )
    return step


def _share(value: float | None) -> float | None:
    return None if value is None else round(value, 1)


def histogram_mean_ms(m0: dict[str, float], m1: dict[str, float], histogram: str) -> float | None:
    """Mean of a /metrics histogram (seconds) between two samples, in ms; None without samples."""
    count = m1.get(f"{histogram}_count", 0.0) - m0.get(f"{histogram}_count", 0.0)
    if count <= 0:
        return None
    return round(1000.0 * (m1.get(f"{histogram}_sum", 0.0) - m0.get(f"{histogram}_sum", 0.0)) / count, 2)


def run_backend(backend: str, opts: CapacityOptions, workdir: Path, log: Log,
                postgres: PostgresServer | None = None) -> dict[str, Any]:
    """The ramp on one backend: a fresh gateway (and, for PostgreSQL, a fresh database)."""
    result: dict[str, Any] = {"backend": backend, "steps": []}
    data_dir = workdir / f"capacity-{backend}"
    storage = "sqlite"
    if backend == "postgresql":
        if postgres is None:
            raise BenchError("the PostgreSQL capacity step needs a running server")
        storage = postgres.create_database("capacity")
    server = GatewayServer(data_dir, storage, uvloop=opts.uvloop, env=opts.gateway_env, workers=opts.gateway_workers)
    gen: LoadGen | None = None
    meter: TreeMeter | None = None
    try:
        server.start()
        meter = TreeMeter(server.pid).start()
        admin = (data_dir / "admin.token").read_text().strip()
        ids = [f"cap-{i:05d}" for i in range(1, opts.devices + 1)]
        tokens = asyncio.run(register_all(server.url, admin, ids))
        gen = LoadGen("edgewire", server.url + "/v1/device", [(d, tokens[d]) for d in ids], opts.workers, 1,
                      encoding=opts.encoding, batch=opts.batch)
        conn = gen.connect(opts.concurrency, 120.0)
        result["connected"] = conn["connected"]
        if conn["connected"] < opts.devices:
            raise BenchError(f"only {conn['connected']} of {opts.devices} devices connected"
                             + (f" (first error: {conn['first_error']})" if conn["first_error"] else ""))
        time.sleep(1.0)  # online events flushed before the first step
        for rate in opts.rates:
            step = run_step(gen, server, meter, rate, opts.devices, opts)
            step["verdict"], step["reason"] = judge(step)
            result["steps"].append(step)
            ack = step["ack_latency"]
            log(f"  capacity {backend} {rate:,}/s: {step['verdict']} ({step['reason']}; offered "
                f"{step['offered_per_s']:,.0f}/s, ack p99 {ack['p99_ms']} ms)")
            if step["verdict"] != PASS:
                break
            time.sleep(1.0)
    except (BenchError, ServiceError, OSError, TimeoutError, WebSocketException) as err:
        message = str(err) or type(err).__name__
        result["error"] = message
        rate = opts.rates[min(len(result["steps"]), len(opts.rates) - 1)]  # the step that was running
        result["steps"].append({"rate": rate, "error": message, "verdict": ERROR, "reason": message})
        log(f"  capacity {backend}: FAILED: {message}")
        if server.log_path is not None:
            log(f"  gateway log tail: {server.log_tail(600)}")
    finally:
        if meter is not None:
            meter.stop()
        if gen is not None:
            gen.close()
            gen.stop()
        result["server_exit_code"] = server.stop()
    result["acked"] = sum(s.get("acked", 0) for s in result["steps"])
    with contextlib.suppress(ServiceError, OSError, sqlite3.Error, ValueError):
        if backend == "postgresql" and postgres is not None:
            result["stored"] = int(postgres.psql("SELECT count(*) FROM readings", "capacity").strip())
        else:
            result["stored"] = count_sqlite_readings(data_dir / "edgewire.db")
    result["summary"] = summarize(backend, result["steps"], max(opts.rates))
    if result.get("stored") is not None and result["stored"] < result["acked"]:
        # acks without rows: no figure of this run can be trusted
        result["error"] = f"only {result['stored']} rows stored for {result['acked']} readings acknowledged"
        result["summary"].update(capacity_per_s=None, bound="error", exact=False, goal_met=None,
                                 stop_reason=result["error"], text=f"not measured ({result['error']})")
    if postgres is not None:
        with contextlib.suppress(ServiceError):
            postgres.drop_database("capacity")
    shutil.rmtree(data_dir, ignore_errors=True)
    return result


def run_capacity(opts: CapacityOptions, backends: Sequence[str], workdir: Path, log: Log) -> dict[str, Any]:
    """The capacity step on each backend; PostgreSQL is skipped (and says why) when it cannot start."""
    opts.check()
    report: dict[str, Any] = {
        "config": {"devices": opts.devices, "rates": list(opts.rates), "hold_s": opts.hold_s,
                   "drain_s": opts.drain_s, "batch": opts.batch, "workers": opts.workers,
                   "gateway_workers": opts.gateway_workers,
                   "encoding": opts.encoding, "ack_p99_limit_ms": ACK_P99_LIMIT_MS, "backends": list(backends)},
        "backends": {},
    }
    for backend in backends:
        log(f"capacity step: {backend}, {opts.devices} devices, {opts.batch} readings per frame, "
            f"rates {', '.join(f'{r:,}' for r in opts.rates)} readings/s, {opts.hold_s:g} s each")
        if backend != "postgresql":
            report["backends"][backend] = run_backend(backend, opts, workdir, log)
            continue
        postgres = PostgresServer()
        try:
            postgres.start()
        except ServiceError as err:
            report["backends"][backend] = {"backend": backend, "skipped": str(err)}
            log(f"  capacity {backend}: skipped: {err}")
            postgres.cleanup()
            continue
        try:
            report["backends"][backend] = run_backend(backend, opts, workdir, log, postgres)
        finally:
            postgres.cleanup()
    return report
