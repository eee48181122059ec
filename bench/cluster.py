"""The cluster mode of `make bench` (``python -m bench.run --cluster``, ``make bench-cluster``):
three gateway instances joined by a bus, against the same three without one (docs/scaling.md).

Same machine, same load, one after the other, each on a fresh PostgreSQL database:

  no-bus   3 gateways, no bus, on one throwaway PostgreSQL; a third of the devices on each
  bus      the same 3 gateways joined by a throwaway redis-server (``--bus``), the same split

Per mode: CPU per 1,000 readings of the three gateways together and of Redis, RSS per instance
and per connection, PostgreSQL rows/s (readings stored per second), Redis commands per second,
and the dashboard latency (reading created -> on a browser's stream). In bus mode a fourth
instance, the observer, holds no device and serves the dashboard: every reading reaches it
across instances (its holder's coalesced delta, Redis, the observer's hub), and its CPU per
reading is what applying the peers' deltas costs one instance. In no-bus mode the dashboard is
on gw-0 and records only gw-0's own devices (the same-instance baseline). The overhead ratio is
bus / no-bus CPU per reading of the three instances that hold the devices. Results:
bench/results/cluster-<time>.json and cluster-latest.json; docs/scaling.md section 11 builds
its paper model from them.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import json
import math
import os
import secrets
import shutil
import time
import urllib.request
from pathlib import Path
from typing import Any

from bench.admin import register_all
from bench.errors import BenchError
from bench.loadgen import LoadGen, Watcher
from bench.metrics import HostSample, cpu_per_1000, latency_summary, ratio, rss_per_connection_kib
from bench.proctree import sample_tree
from bench.servers import GatewayServer, scratch_dir
from services.errors import ServiceError
from services.postgres import PostgresServer
from services.redis import RedisServer

INSTANCES = 3
IDLE_S = 4.0  # the idle window (every device connected, no reading) before the hold
MODES = ("no-bus", "bus")
SCHEMA = "edgewire-bench-cluster/1"


def _bus_ok(port: int) -> bool:
    with contextlib.suppress(OSError, ValueError), urllib.request.urlopen(
            f"http://127.0.0.1:{port}/healthz", timeout=2) as resp:
        return bool(json.load(resp)["checks"].get("bus", {}).get("state") == "ok")
    return False


def _redis_commands(redis: RedisServer) -> int:
    """Commands the Redis server processed so far (INFO stats), over a plain socket."""
    import redis as redis_py

    client = redis_py.Redis(host="127.0.0.1", port=redis.port)
    try:
        return int(client.info("stats")["total_commands_processed"])
    finally:
        client.close()


def run_mode(mode: str, opts: argparse.Namespace, postgres: PostgresServer, redis: RedisServer | None,
             workdir: Path, log: Any) -> dict[str, Any]:
    n_per = opts.devices // INSTANCES
    result: dict[str, Any] = {"mode": mode, "devices": n_per * INSTANCES, "valid": True, "invalid_reasons": []}
    dsn = postgres.create_database(f"bench_{mode.replace('-', '_')}")
    key = secrets.token_hex(32)  # one token key for the three instances
    gateways: list[GatewayServer] = []
    observer: GatewayServer | None = None
    gens: list[LoadGen] = []
    watcher: Watcher | None = None
    try:
        names = [f"gw-{index}" for index in range(INSTANCES)] + (["observer"] if mode == "bus" else [])
        for name in names:
            extra = ["--instance-id", name]
            if mode == "bus":
                assert redis is not None
                extra += ["--bus", redis.url]
            gw = GatewayServer(workdir / mode / name, dsn, opts.dashboard_interval_ms, extra_args=extra,
                               env={"EDGEWIRE_TOKEN_KEY": key})
            gw.start()
            gateways.append(gw)
        if mode == "bus":
            observer = gateways.pop()
            deadline = time.monotonic() + 30
            while not all(_bus_ok(gw.port) for gw in [*gateways, observer]):
                if time.monotonic() > deadline:
                    raise BenchError("the gateways' bus did not become ok within 30 s")
                time.sleep(0.1)
        observer_empty = sample_tree(observer.pid) if observer is not None else None
        admin = (gateways[0].data_dir / "admin.token").read_text().strip()
        shares = [[f"c{i}-{n:05d}" for n in range(n_per)] for i in range(INSTANCES)]
        tokens = asyncio.run(register_all(gateways[0].url, admin, [d for share in shares for d in share]))
        time.sleep(1.0)
        idle = [sample_tree(gw.pid) for gw in gateways]
        # bus: on the observer, every device is another instance's; no-bus: gw-0's own only (baseline)
        watched = observer if observer is not None else gateways[0]
        watcher = Watcher("dashboard", watched.url + "/v1/dashboard", only="" if observer else "c0-")
        gens = [LoadGen("edgewire", gw.url + "/v1/device", [(d, tokens[d]) for d in share], 1, 1)
                for gw, share in zip(gateways, shares, strict=True)]
        connected = 0
        for gen in gens:
            conn = gen.connect(opts.concurrency, 120.0)
            connected += conn["connected"]
        result["connected"] = connected
        log(f"  {mode}: {connected}/{result['devices']} connected")
        time.sleep(2.0)
        # An idle window with every device connected: what each process costs with no reading at
        # all (heartbeats, flushes, pings), subtracted to get the marginal cost per reading.
        everyone = [gw.pid for gw in gateways] + ([observer.pid] if observer else []) + (
            [redis.process.pid] if mode == "bus" and redis and redis.process else [])
        quiet_all = [sample_tree(pid) for pid in everyone]
        idle_commands = _redis_commands(redis) if mode == "bus" and redis else 0
        time.sleep(IDLE_S)
        idle_commands = (_redis_commands(redis) - idle_commands) if mode == "bus" and redis else 0
        idle_rate = [(sample_tree(pid).cpu_s - q.cpu_s) / IDLE_S for pid, q in zip(everyone, quiet_all,
                                                                                         strict=True)]
        quiet = quiet_all[:INSTANCES]
        mark = watcher.mark()
        start_at = time.time() + 0.5
        for gen in gens:
            gen.start(start_at, opts.hold, opts.rate, opts.drain)
        time.sleep(max(0.0, start_at - time.time()))
        s0 = [sample_tree(gw.pid) for gw in gateways]
        o0 = sample_tree(observer.pid) if observer is not None else None
        r0 = sample_tree(redis.process.pid) if mode == "bus" and redis and redis.process else None
        c0 = _redis_commands(redis) if mode == "bus" and redis else 0
        h0 = HostSample.take()
        time.sleep(max(0.0, start_at + opts.hold - time.time()))
        s1 = [sample_tree(gw.pid) for gw in gateways]
        o1 = sample_tree(observer.pid) if observer is not None else None
        r1 = sample_tree(redis.process.pid) if r0 is not None and redis and redis.process else None
        c1 = _redis_commands(redis) if mode == "bus" and redis else 0
        h1 = HostSample.take()
        workers = [w for gen in gens for w in gen.results(opts.hold + opts.drain + 120)]
        time.sleep(max(0.5, opts.dashboard_interval_ms / 1000 * 4))
        stats = watcher.stats()
        generated = sum(w["generated"] for w in workers)
        acked = sum(w["acked"] for w in workers)
        sent_in_hold = generated  # readings created during the hold (the drain only resends)
        cpu = sum(b.cpu_s - a.cpu_s for a, b in zip(s0, s1, strict=True))
        marginal = cpu - sum(idle_rate[:INSTANCES]) * opts.hold
        result.update(
            generated=generated, acked=acked, lost=generated - acked,
            readings_per_s=round(sent_in_hold / opts.hold, 1),
            postgres_rows_per_s=round(acked / opts.hold, 1),
            gateways_cpu_s=round(cpu, 3),
            cpu_per_1000=_round(cpu_per_1000(cpu, generated), 4),
            marginal_cpu_per_1000=_round(cpu_per_1000(marginal, generated), 4),
            idle_cpu_pct_per_instance=[round(100 * rate, 2) for rate in idle_rate[:INSTANCES]],
            cpu_pct_per_instance=[round(100 * (b.cpu_s - a.cpu_s) / opts.hold, 1) for a, b in zip(s0, s1, strict=True)],
            rss_kib=[s.rss_kib for s in s1],
            rss_per_conn_kib=[_round(rss_per_connection_kib(q.rss_kib, i.rss_kib, n_per), 2)
                              for i, q in zip(idle, quiet, strict=True)],
            dashboard_latency=latency_summary(stats["latencies"]),
            dashboard_scope="cross-instance (gw-0..2 -> dashboard on the observer)" if observer
            else "same instance (gw-0 -> dashboard on gw-0)",
            watcher_cpu_pct=round(100 * (stats["cpu_s"] - mark["cpu_s"]) / max(1e-6, stats["time"] - mark["time"]), 1),
        )
        if o0 is not None and o1 is not None:
            assert observer_empty is not None
            observed = o1.cpu_s - o0.cpu_s
            result["observer"] = {
                "cpu_s": round(observed, 3), "cpu_per_1000": _round(cpu_per_1000(observed, generated), 4),
                "idle_cpu_pct": round(100 * idle_rate[INSTANCES], 2),
                "marginal_cpu_per_1000": _round(cpu_per_1000(observed - idle_rate[INSTANCES] * opts.hold,
                                                             generated), 4),
                "rss_kib": o1.rss_kib, "rss_empty_kib": observer_empty.rss_kib,
                "rss_per_fleet_device_kib": _round((o1.rss_kib - observer_empty.rss_kib) / result["devices"], 2)}
        if r0 is not None and r1 is not None:
            commands = c1 - c0
            result["redis"] = {"cpu_s": round(r1.cpu_s - r0.cpu_s, 3), "idle_cpu_pct": round(100 * idle_rate[-1], 2),
                               "idle_commands_per_s": round(idle_commands / IDLE_S, 1),
                               "cpu_per_1000": _round(cpu_per_1000(r1.cpu_s - r0.cpu_s, generated), 4),
                               "commands": commands, "commands_per_s": round(commands / opts.hold, 1),
                               "commands_per_reading": _round(commands / generated if generated else None, 4),
                               "rss_kib": r1.rss_kib}
        gen_cpu = [w["cpu_s"] / w["wall_s"] if w["wall_s"] else 0.0 for w in workers]
        cpus = os.cpu_count() or 1
        busy = h0.busy_cores(h1, cpus)
        result["host"] = {"cpus": cpus, "busy_cores_hold": _round(busy, 2),
                          "generator_cpu_pct": [round(100 * c, 1) for c in gen_cpu]}
        with contextlib.suppress(OSError), open("/proc/loadavg") as handle:
            result["host"]["loadavg"] = handle.read().split()[:3]
        if max(gen_cpu, default=0.0) >= 0.9:
            result["valid"] = False
            result["invalid_reasons"].append("a generator process saturated its core")
        if busy is not None and busy >= cpus * 0.95:
            result["invalid_reasons"].append(f"the host was saturated ({busy:.2f} of {cpus} cores busy)")
        if result["lost"]:
            result["valid"] = False
            result["invalid_reasons"].append(f"{result['lost']} readings not acknowledged")
    except (BenchError, ServiceError, OSError) as err:
        result["valid"] = False
        result["invalid_reasons"].append(f"mode failed: {err}")
        log(f"  {mode}: FAILED: {err}")
    finally:
        for gen in gens:
            gen.close()
            gen.stop()
        if watcher is not None:
            watcher.stop()
        result["exit_codes"] = [gw.stop() for gw in [*gateways, *([observer] if observer else [])]]
        with contextlib.suppress(ServiceError):
            postgres.drop_database(f"bench_{mode.replace('-', '_')}")
    return result


def _round(value: float | None, digits: int) -> float | None:
    return None if value is None else round(value, digits)


def summary(modes: dict[str, dict[str, Any]]) -> dict[str, Any]:
    bus, alone = modes.get("bus", {}), modes.get("no-bus", {})
    return {
        "cpu_overhead_ratio": _round(ratio(bus.get("cpu_per_1000"), alone.get("cpu_per_1000")), 3),
        "cross_instance_dashboard_p99_ms": (bus.get("dashboard_latency") or {}).get("p99_ms"),
        "same_instance_dashboard_p99_ms": (alone.get("dashboard_latency") or {}).get("p99_ms"),
        "redis_commands_per_reading": (bus.get("redis") or {}).get("commands_per_reading"),
        "observer_cpu_per_1000": (bus.get("observer") or {}).get("cpu_per_1000"),
    }


def paper_model(report: dict[str, Any], rate: float = 0.1, usable_cores: float = 0.7,
                fleets: tuple[int, ...] = (10_000, 100_000, 1_000_000),
                reconnects_per_device_day: float = 1.0) -> dict[str, Any]:
    """docs/scaling.md section 11 from a cluster bench report: per fleet size, the pods, Redis
    commands/s and cores, PostgreSQL rows/s and memory per pod, for devices sending ``rate``
    readings/s, pods of one core used to ``usable_cores``. Costs are the run's marginal ones."""
    bus, alone = report["modes"].get("bus", {}), report["modes"].get("no-bus", {})
    obs, redis = bus.get("observer") or {}, bus.get("redis") or {}
    hold = report["config"]["hold_s"]
    interval_ms = report["config"]["dashboard_interval_ms"]
    if not (bus.get("marginal_cpu_per_1000") and obs.get("marginal_cpu_per_1000") and redis.get("commands")):
        return {}
    apply_ms = obs["marginal_cpu_per_1000"]  # one instance applying one reading of a peer (and a dashboard)
    holder_ms = max(bus["marginal_cpu_per_1000"] - (INSTANCES - 1) * apply_ms, alone.get("marginal_cpu_per_1000", 0))
    idle_cores = sum(bus["idle_cpu_pct_per_instance"]) / len(bus["idle_cpu_pct_per_instance"]) / 100
    budget = usable_cores - idle_cores
    base_ops = redis["idle_commands_per_s"] / (INSTANCES + 1)  # leases, probes: per instance and second
    redis_ms_per_op = max(0.0, redis["cpu_s"] - redis["idle_cpu_pct"] / 100 * hold) / redis["commands"] * 1000
    conn_kib = sum(v for v in bus["rss_per_conn_kib"] if v) / len(bus["rss_per_conn_kib"])
    rows = []
    for devices in fleets:
        readings = devices * rate
        fanout = readings * apply_ms / 1000  # cores every instance spends on its peers' deltas
        feasible = fanout < budget
        pods = max(1, math.ceil(readings * (holder_ms - apply_ms) / 1000 / (budget - fanout))) if feasible else None
        holders = max(1, math.ceil(readings * holder_ms / 1000 / budget))  # without the whole-fleet fan-out
        per_pod = pods if pods is not None else holders
        ops = per_pod * (1000 / interval_ms + base_ops) + devices * reconnects_per_device_day / 86400 * 6
        rows.append({
            "devices": devices, "readings_per_s": round(readings), "fanout_cores_per_pod": round(fanout, 2),
            "pods_every_pod_fans_out": pods, "pods_without_fanout": holders,
            "redis_ops_per_s": round(ops), "redis_cores": round(ops * redis_ms_per_op / 1000, 3),
            "postgres_rows_per_s": round(readings),
            "memory_per_pod_mib": round((obs.get("rss_empty_kib", 0) + conn_kib * devices / per_pod
                                         + obs.get("rss_per_fleet_device_kib", 0) * devices) / 1024)})
    return {"assumptions": {"readings_per_device_s": rate, "usable_cores_per_pod": usable_cores,
                            "reconnects_per_device_day": reconnects_per_device_day,
                            "dashboard_interval_ms": interval_ms},
            "costs": {"holder_ms_per_reading": round(holder_ms, 4), "apply_ms_per_reading": apply_ms,
                      "idle_cores_per_pod": round(idle_cores, 4), "redis_base_ops_per_instance_s": round(base_ops, 2),
                      "redis_ms_per_op": round(redis_ms_per_op, 4), "rss_per_conn_kib": round(conn_kib, 2),
                      "rss_per_fleet_device_kib": obs.get("rss_per_fleet_device_kib"),
                      "rss_empty_kib": obs.get("rss_empty_kib")},
            "fleets": rows}


def table(report: dict[str, Any]) -> str:
    lines = ["| mode | devices | rdg/s | lost | gw cpu s/1k | cpu % per gw | KiB/conn | dash p50/p99 ms | "
             "redis cpu s/1k | redis cmd/rdg | valid |", "|---" * 11 + "|"]
    for mode, r in report["modes"].items():
        lat = r.get("dashboard_latency") or {}
        redis = r.get("redis") or {}
        lines.append(" | ".join([
            f"| {mode}", str(r.get("devices")), str(r.get("readings_per_s")), str(r.get("lost")),
            str(r.get("cpu_per_1000")), "/".join(map(str, r.get("cpu_pct_per_instance", []))),
            "/".join(map(str, r.get("rss_per_conn_kib", []))), f"{lat.get('p50_ms')}/{lat.get('p99_ms')}",
            str(redis.get("cpu_per_1000", "-")), str(redis.get("commands_per_reading", "-")),
            "yes" if r.get("valid") and not r.get("invalid_reasons") else "NO"]) + " |")
    notes = [f"- {mode}: {reason}" for mode, r in report["modes"].items() for reason in r.get("invalid_reasons", [])]
    notes.append("- " + ", ".join(f"{k} {v}" for k, v in report["summary"].items()))
    model = report.get("model") or {}
    if model:
        notes += ["", "paper model (docs/scaling.md section 11): " + ", ".join(
            f"{k} {v}" for k, v in {**model["assumptions"], **model["costs"]}.items())]
        for row in model["fleets"]:
            notes.append("- " + ", ".join(f"{k} {v}" for k, v in row.items()))
    return "\n".join([*lines, "", *notes])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.run --cluster", description=__doc__.split("\n\n")[0])
    parser.add_argument("--cluster", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--devices", type=int, default=1500, help="devices in all, a third per instance")
    parser.add_argument("--hold", type=float, default=30.0, help="seconds of traffic per mode")
    parser.add_argument("--rate", type=float, default=1.0, help="readings/s per device")
    parser.add_argument("--drain", type=float, default=15.0)
    parser.add_argument("--concurrency", type=int, default=128)
    parser.add_argument("--dashboard-interval-ms", type=float, default=50.0,
                        help="the gateways' dashboard coalescing interval (default 50, as make bench)")
    parser.add_argument("--modes", default=",".join(MODES), help=f"subset of {','.join(MODES)}")
    parser.add_argument("--out", default=str(Path(__file__).resolve().parent / "results"))
    parser.add_argument("--show", metavar="JSON", help="print the table and paper model of an earlier result")
    opts = parser.parse_args(argv)
    if opts.show:
        earlier = json.loads(Path(opts.show).read_text())
        earlier["model"] = paper_model(earlier)
        print(table(earlier))
        return 0
    modes = [m.strip() for m in opts.modes.split(",") if m.strip()]
    if any(m not in MODES for m in modes) or not modes:
        parser.error(f"--modes: a subset of {','.join(MODES)}")
    if not INSTANCES <= opts.devices <= 30000 or not 1 <= opts.hold <= 600 or not 0 < opts.rate <= 50:
        parser.error("--devices within 3..30000, --hold within 1..600 s, --rate within (0, 50]")

    def log(message: str) -> None:
        print(message, flush=True)

    workdir = scratch_dir("edgewire-bench-cluster-")
    started = dt.datetime.now(dt.UTC)
    report: dict[str, Any] = {"schema": SCHEMA, "started": started.isoformat(timespec="seconds"),
                              "config": {"devices": opts.devices, "instances": INSTANCES, "hold_s": opts.hold,
                                         "rate_per_device": opts.rate, "bus": "redis",
                                         "dashboard_interval_ms": opts.dashboard_interval_ms},
                              "modes": {}}
    with contextlib.suppress(OSError), open("/proc/loadavg") as handle:
        report["config"]["loadavg_at_start"] = handle.read().split()[:3]
    postgres, redis = PostgresServer(), RedisServer()
    try:
        try:
            postgres.start()
            redis.start()
        except ServiceError as err:
            print(f"error: {err}")
            return 2
        for mode in modes:
            log(f"cluster bench: {mode}, {opts.devices} devices over {INSTANCES} instances, {opts.hold:g} s "
                f"at {opts.rate:g}/s each")
            report["modes"][mode] = run_mode(mode, opts, postgres, redis, workdir, log)
    finally:
        postgres.cleanup()
        redis.cleanup()
        shutil.rmtree(workdir, ignore_errors=True)
    report["summary"] = summary(report["modes"])
    report["model"] = paper_model(report)
    report["finished"] = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
    out = Path(opts.out)
    out.mkdir(parents=True, exist_ok=True)
    text = json.dumps(report, indent=2)
    name = f"cluster-{started.strftime('%Y%m%dT%H%M%SZ')}.json"
    (out / name).write_text(text)
    (out / "cluster-latest.json").write_text(text)
    print(table(report))
    print(f"\nJSON: {out / name} (and cluster-latest.json)")
    return 0 if all(r.get("valid") for r in report["modes"].values()) else 1


if __name__ == "__main__":
    raise SystemExit(main())
