"""`make bench`: the gateway under N-device load, side by side with Mosquitto, in one run.

Systems (same devices, same payload bytes, same rate, same generator):
  gateway               full production path: auth, validation, SQLite (synchronous=FULL), dashboard fan-out
  gateway-storage-none  the gateway with ``--storage none``: auth, validation, fan-out; acks at once
  mosquitto             Debian's mosquitto, websockets listener, MQTT 3.1.1 QoS 0, one subscriber

For each step (device count) and system: a fresh server process, the connection storm,
``hold`` seconds at ``rate`` readings/s per device, a bounded drain, then the figures
(docs/performance.md documents every field). Results: a table on stdout and JSON in
bench/results/ (timestamped file + latest.json).

Every server's CPU and memory are those of its whole process tree (bench/proctree.py: the PID
started and all its descendants, re-scanned during the step), reported per process and summed,
with the share of the machine. ``--workers N`` is passed to the gateway (its processes).

Then the capacity step (bench/capacity.py; on by default, off with --quick or --no-capacity): per
storage backend, the highest rate in readings/s, devices batching 10 readings per frame, before a
reading is lost or ack p99 passes 1 s. Last, the issue's targets, each met or missed with its
margin (bench/targets.py).

    python -m bench.run                     # 1k, 5k, 10k, 20k devices, 30 s each
    python -m bench.run --quick             # 1k devices, 10 s: CI smoke test (fails on any loss)
    python -m bench.run --capacity-only     # only the capacity step (bench/capacity.py)
    python -m bench.run --cluster           # 3 instances with a bus against 3 without (bench/cluster.py)
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from bench import capacity, targets
from bench.admin import register_all
from bench.errors import BenchError
from bench.loadgen import ENCODINGS, LoadGen, Watcher
from bench.metrics import HostSample, cpu_per_1000, latency_summary, machine_share_pct, ratio, rss_per_connection_kib
from bench.proc import PORT_RANGE, ensure_nofile, port_range, sources_needed
from bench.proctree import TreeMeter
from bench.servers import GatewayServer, MosquittoServer, count_sqlite_readings, mosquitto_path, scratch_dir

RESULTS_DIR = Path(__file__).resolve().parent / "results"
SYSTEMS = ("gateway", "gateway-storage-none", "mosquitto")
SCHEMA = "edgewire-bench/1"
SATURATED = 0.90  # a generator process at >= 90 % of one core invalidates the step
NOFILE_SLACK = 4096  # open files beyond one per connection: the database, logs, pipes, listeners
MACHINE_BUSY = 0.95  # all cores >= 95 % busy during the hold: noted (the processes competed for CPU)
DEFAULT_STEPS = "1000,5000,10000,20000"


def prepare_template(workdir: Path, count: int, log: Any) -> tuple[Path, list[tuple[str, str]]]:
    """A gateway data dir with ``count`` registered devices, copied fresh for every gateway step."""
    template = workdir / "gateway-template"
    server = GatewayServer(template, "sqlite")
    server.start()
    try:
        admin = (template / "admin.token").read_text().strip()
        ids = [f"bench-{i:05d}" for i in range(1, count + 1)]
        started = time.monotonic()
        tokens = asyncio.run(register_all(server.url, admin, ids))
        log(f"registered {len(tokens)} devices in {time.monotonic() - started:.1f} s")
    finally:
        server.stop()
    (template / "gateway.log").unlink(missing_ok=True)
    return template, [(device_id, tokens[device_id]) for device_id in ids]


# ---------------------------------------------------------------- one step of one system

def _sleep_until(wall: float) -> None:
    delay = wall - time.time()
    if delay > 0:
        time.sleep(delay)


def run_system(system: str, devices: list[tuple[str, str]], opts: argparse.Namespace, template: Path | None,
               workdir: Path, log: Any) -> dict[str, Any]:
    """Run one system at ``len(devices)`` devices; return its figures (see docs/performance.md)."""
    n = len(devices)
    result: dict[str, Any] = {"system": system, "devices": n, "valid": True, "invalid_reasons": [], "notes": []}
    server: GatewayServer | MosquittoServer
    data_dir = workdir / f"{system}-{n}"
    if system == "mosquitto":
        server = MosquittoServer(data_dir)
    else:
        assert template is not None
        shutil.copytree(template, data_dir)
        server = GatewayServer(data_dir, "none" if system == "gateway-storage-none" else "sqlite",
                               opts.dashboard_interval_ms, uvloop=opts.uvloop, root=opts.gateway_root,
                               env=opts.gateway_env, workers=opts.workers)
    watcher: Watcher | None = None
    gen: LoadGen | None = None
    profiler: subprocess.Popen[bytes] | None = None
    meter: TreeMeter | None = None
    try:
        server.start()
        meter = TreeMeter(server.pid).start()  # the server's whole process tree, re-scanned every 0.5 s
        time.sleep(1.0)
        idle = meter.snapshot()
        if system == "mosquitto":
            watcher = Watcher("subscriber", server.url)
            gen = LoadGen("mqtt", server.url, devices, opts.gen_workers, opts.sources, encoding=opts.encoding)
        else:
            watcher = Watcher("dashboard", server.url + "/v1/dashboard")
            gen = LoadGen("edgewire", server.url + "/v1/device", devices, opts.gen_workers, opts.sources,
                          encoding=opts.encoding)
        before_connect = meter.snapshot()
        conn = gen.connect(opts.concurrency, opts.connect_timeout)
        after_connect = meter.snapshot()
        result.update(connected=conn["connected"], connect_failures=conn["failures"],
                      connect_s=round(conn["connect_s"], 2), connect_error=conn["first_error"] or None)
        log(f"  {system}: {conn['connected']}/{n} connected in {conn['connect_s']:.1f} s"
            + (f" (first error: {conn['first_error']})" if conn["first_error"] else ""))
        time.sleep(2.0)  # online events flushed, handshake buffers settled
        quiet = meter.snapshot()
        mark = watcher.mark()
        start_at = time.time() + 0.5
        gen.start(start_at, opts.hold, opts.rate, opts.drain)
        _sleep_until(start_at)
        s0 = meter.snapshot()
        h0 = HostSample.take()
        if opts.profile and system in opts.profile:
            profiler = _start_profiler(server.pid, opts, system, n)
            result["profiled"] = profiler is not None
        _sleep_until(start_at + opts.hold)
        s_hold = meter.snapshot()
        h1 = HostSample.take()
        workers = gen.results(opts.hold + opts.drain + 120)
        s1 = meter.snapshot()
        # let the last updates / messages arrive: wait until the count stops growing (bounded)
        stats = watcher.stats()
        settle_end = time.monotonic() + 5.0
        while time.monotonic() < settle_end:
            time.sleep(max(0.3, opts.dashboard_interval_ms / 1000 * 3))
            newer = watcher.stats()
            if newer["delivered"] == stats["delivered"]:
                stats = newer
                break
            stats = newer
        if profiler is not None:
            profiler.wait(opts.hold + 60)
            profiler = None
        final = meter.snapshot()
        generated = sum(w["generated"] for w in workers)
        sent = sum(w["sent"] for w in workers)
        acked = sum(w["acked"] for w in workers)
        delivered = int(stats["delivered"])
        window_s = max(1e-6, s1.cpu_since(s0))
        hold_cpu_s = s_hold.cpu_since(s0)
        hold_wall_s = max(1e-6, s_hold.at - s0.at)
        cpus = os.cpu_count() or 1
        wall_hold = max(w["wall_s"] for w in workers)
        result.update(
            generated=generated, sent=sent, acked=acked if system != "mosquitto" else None,
            delivered=delivered,
            rejected=sum(w["rejected"] for w in workers), slowed=sum(w["slowed"] for w in workers),
            closed_during_run=sum(w["closed_during_run"] for w in workers),
            readings_per_s=round(sent / wall_hold, 1) if wall_hold else None,
            latency=latency_summary(stats["latencies"]),
        )
        if system != "mosquitto":
            acks: list[float] = []
            for w in workers:
                acks.extend(w["ack_latencies"])
            result["ack_latency"] = latency_summary(acks)
        if system == "gateway":
            db = data_dir / "edgewire.db"
            result["stored"] = count_sqlite_readings(db)
            result["lost"] = generated - acked
        elif system == "gateway-storage-none":
            result["stored"] = None
            result["lost"] = generated - acked
        else:
            result["stored"] = None
            result["lost"] = generated - delivered
        if system != "mosquitto":
            assert isinstance(server, GatewayServer)
            result["gateway_metrics"] = server.metrics()
        result["server"] = {
            "cpu_s": round(window_s, 3),
            "cpu_per_1000": _round(cpu_per_1000(window_s, generated), 4),
            "cpu_pct_hold": round(100 * hold_cpu_s / hold_wall_s, 1),
            "machine_share_pct": _round(machine_share_pct(hold_cpu_s, hold_wall_s, cpus), 1),
            "processes": final.processes, "processes_seen": len(final.cpu),
            "per_process": s_hold.per_process(s0, hold_wall_s),
            "connect_cpu_s": round(after_connect.cpu_since(before_connect), 3),
            "rss_idle_kib": idle.rss_kib, "rss_connected_kib": quiet.rss_kib,
            "rss_loaded_kib": s_hold.rss_kib,
            "hwm_kib": final.hwm_kib,
            "rss_per_conn_kib": _round(rss_per_connection_kib(s_hold.rss_kib, idle.rss_kib,
                                                              conn["connected"]), 2),
            "rss_per_conn_quiet_kib": _round(rss_per_connection_kib(quiet.rss_kib, idle.rss_kib,
                                                                    conn["connected"]), 2),
        }
        gen_cpu = [w["cpu_s"] / w["wall_s"] if w["wall_s"] else 0.0 for w in workers]
        watch_cpu = (stats["cpu_s"] - 0.0)  # cumulative; the window figure below is what counts
        gen_cpu_s = sum(w["cpu_s"] for w in workers)
        result["generator"] = {
            "workers": len(workers), "cpu_pct": [round(100 * c, 1) for c in gen_cpu],
            "cpu_s": round(gen_cpu_s, 3),
            "machine_share_pct": _round(machine_share_pct(gen_cpu_s, wall_hold, cpus), 1),
            "late_max_s": round(max(w["late_max_s"] for w in workers), 3),
            "rss_kib": [w["rss_kib"]["rss"] for w in workers],
            "drain_s": round(max(w["drain_s"] for w in workers), 2),
        }
        result["watcher"] = {"cpu_s_total": round(watch_cpu, 2), "resyncs": stats.get("resyncs", 0),
                             "cpu_pct": round(100 * (stats["cpu_s"] - mark["cpu_s"])
                                              / max(1e-6, stats["time"] - mark["time"]), 1)}
        busy = h0.busy_cores(h1, cpus)
        ours = hold_cpu_s / hold_wall_s + sum(gen_cpu) + result["watcher"]["cpu_pct"] / 100
        result["host"] = {"cpus": cpus, "busy_cores_hold": _round(busy, 2),
                          "other_load_cores": _round(None if busy is None else max(0.0, busy - ours), 2)}
        if busy is not None and busy >= MACHINE_BUSY * cpus:
            result["notes"].append(f"the machine was saturated during the hold ({busy:.2f} of {cpus} cores busy; "
                                   f"server {result['server']['machine_share_pct']} %, generator "
                                   f"{result['generator']['machine_share_pct']} % of the machine)")
        with contextlib.suppress(OSError), open("/proc/loadavg") as handle:
            result["host"]["loadavg"] = handle.read().split()[:3]
        if max(gen_cpu, default=0.0) >= SATURATED:
            result["valid"] = False
            result["invalid_reasons"].append(f"generator saturated ({100 * max(gen_cpu):.0f} % of a core)")
        if result["generator"]["late_max_s"] > 1.0:
            result["valid"] = False
            late = result["generator"]["late_max_s"]
            result["invalid_reasons"].append(f"generator fell {late:.1f} s behind schedule")
        if conn["connected"] < n:
            short = f"only {conn['connected']} of {n} devices connected"
            if opts.nofile and opts.nofile < n + NOFILE_SLACK:
                short += f" (the open-file limit, {opts.nofile}, is below {n + NOFILE_SLACK})"
            result["invalid_reasons"].append(short)
    except (BenchError, OSError) as err:
        result["valid"] = False
        result["error"] = str(err)
        result["invalid_reasons"].append(f"step failed: {err}")
        log(f"  {system}: FAILED: {err}")
        if server.log_path is not None:
            log(f"  server log tail: {server.log_tail(800)}")
    finally:
        if meter is not None:
            meter.stop()
        if profiler is not None:
            with contextlib.suppress(Exception):
                profiler.wait(30)
        if gen is not None:
            gen.close()
            gen.stop()
        if watcher is not None:
            watcher.stop()
        code = server.stop()
        result["server_exit_code"] = code
        if system != "mosquitto" and not opts.keep:
            shutil.rmtree(data_dir, ignore_errors=True)
    return result


def _round(value: float | None, digits: int) -> float | None:
    return None if value is None else round(value, digits)


def _start_profiler(pid: int, opts: argparse.Namespace, system: str,
                    n: int) -> subprocess.Popen[bytes] | None:
    exe = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    if not os.path.exists(exe):
        return None
    out = Path(opts.out) / f"profile-{system}-{n}.txt"
    # Blocking mode (py-spy pauses the process per sample) gives consistent stacks; the few %
    # it costs are why profiled steps are flagged "profiled" and not used for the figures.
    seconds = str(max(1, int(opts.hold) - 1))
    return subprocess.Popen([exe, "record", "-p", str(pid), "--subprocesses", "-d", seconds, "-r", "100",
                             "--format", "raw", "-o", str(out)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


# ---------------------------------------------------------------- report

def ratios(systems: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """gateway / mosquitto and gateway-storage-none / mosquitto for the comparable figures."""
    out: dict[str, Any] = {}
    mq = systems.get("mosquitto")
    if not mq or "server" not in mq:
        return out
    for name in ("gateway", "gateway-storage-none"):
        gw = systems.get(name)
        if not gw or "server" not in gw:
            continue
        out[f"{name}/mosquitto"] = {
            "cpu_per_reading": _round(ratio(gw["server"]["cpu_per_1000"], mq["server"]["cpu_per_1000"]), 2),
            "rss_per_conn": _round(ratio(gw["server"]["rss_per_conn_kib"],
                                         mq["server"]["rss_per_conn_kib"]), 2),
            "p99_latency": _round(ratio(gw["latency"]["p99_ms"], mq["latency"]["p99_ms"]), 2),
            "connect_s": _round(ratio(gw["connect_s"], mq["connect_s"]), 2),
        }
    return out


def run_targets(report: dict[str, Any]) -> dict[str, Any]:
    """The issue's targets on this run (bench/targets.py): ``rows`` (met or missed, with the margin) for
    the 10,000- and 20,000-device steps and the capacity step; ``capacity`` per backend as before."""
    rows = targets.evaluate(report.get("steps") or [])
    out: dict[str, Any] = {"rows": rows}
    if "capacity" in report:
        out["rows"] = [*rows, *targets.capacity_rows(report["capacity"])]
        out["capacity"] = capacity_targets(report["capacity"])
    return out


def capacity_targets(report: dict[str, Any]) -> dict[str, Any]:
    """The capacity goals (issue 14), per backend that ran: the value, the goal, met or not."""
    out: dict[str, Any] = {}
    for backend, result in report.get("backends", {}).items():
        summary = result.get("summary")
        if summary is not None:
            out[backend] = {"value": summary["capacity_per_s"], "goal": summary["goal_per_s"],
                            "met": summary["goal_met"], "bound": summary["bound"]}
    return out


def _fmt(value: Any, spec: str = "") -> str:
    if value is None:
        return "n/a"
    if isinstance(value, float) and spec:
        return format(value, spec)
    return str(value)


def table(report: dict[str, Any]) -> str:
    cols = ["devices", "system", "conn", "conn s", "sent", "deliv", "stored", "lost", "rdg/s", "p50 ms",
            "p99 ms",
            "max ms", "ack p99 ms", "cpu s/1k", "srv procs", "srv cpu%", "srv mach%", "KiB/conn quiet/load",
            "peak RSS MiB", "gen cpu%", "gen mach%", "valid"]
    rows = [cols]
    for step in report["steps"]:
        for name, r in step["systems"].items():
            srv = r.get("server") or {}
            lat = r.get("latency") or {}
            gen = r.get("generator") or {}
            rows.append([
                str(r["devices"]), name, _fmt(r.get("connected")), _fmt(r.get("connect_s")),
                _fmt(r.get("sent")), _fmt(r.get("delivered")), _fmt(r.get("stored")), _fmt(r.get("lost")),
                _fmt(r.get("readings_per_s")),
                _fmt(lat.get("p50_ms")), _fmt(lat.get("p99_ms")), _fmt(lat.get("max_ms")),
                _fmt((r.get("ack_latency") or {}).get("p99_ms")),
                _fmt(srv.get("cpu_per_1000"), ".3f"), _fmt(srv.get("processes")), _fmt(srv.get("cpu_pct_hold")),
                _fmt(srv.get("machine_share_pct")),
                _fmt(srv.get("rss_per_conn_quiet_kib"), ".1f") + "/" + _fmt(srv.get("rss_per_conn_kib"), ".1f"),
                _fmt(srv["hwm_kib"] / 1024 if srv.get("hwm_kib") else None, ".0f"),
                "/".join(_fmt(c) for c in gen.get("cpu_pct", [])) or "n/a", _fmt(gen.get("machine_share_pct")),
                "yes" if r.get("valid") and not r.get("invalid_reasons") else "NO",
            ])
    widths = [max(len(row[i]) for row in rows) for i in range(len(cols))]
    lines = ["| " + " | ".join(cell.ljust(widths[i]) for i, cell in enumerate(row)) + " |" for row in rows]
    lines.insert(1, "|" + "|".join("-" * (w + 2) for w in widths) + "|")
    notes = []
    for step in report["steps"]:
        for name, r in step["systems"].items():
            for reason in r.get("invalid_reasons", []):
                notes.append(f"- {r['devices']} {name}: {reason}")
            for note in r.get("notes", []):
                notes.append(f"- {r['devices']} {name}: {note}")
            procs = (r.get("server") or {}).get("per_process") or []
            if len(procs) > 1:  # a multi-process server: where its CPU went during the hold
                notes.append(f"- {r['devices']} {name}: CPU in the hold per process, % of one core: " + ", ".join(
                    f"{p['role']} {_fmt(p['cpu_pct'])}" + ("" if p["alive"] else " (exited)") for p in procs))
        for pair, figures in step.get("ratios", {}).items():
            notes.append(f"- {step['devices']} devices, {pair}: " + ", ".join(
                f"{k} {_fmt(v)}" for k, v in figures.items()))
    return "\n".join([*lines, "", *notes])


def _versions() -> dict[str, Any]:
    out: dict[str, Any] = {"python": platform.python_version(), "kernel": platform.release(),
                           "cpus": os.cpu_count()}
    with contextlib.suppress(Exception):
        from importlib.metadata import version

        out["websockets"] = version("websockets")
    exe = mosquitto_path()
    if exe:
        with contextlib.suppress(Exception):
            text = subprocess.run([exe, "-h"], capture_output=True, text=True, timeout=5).stdout
            out["mosquitto"] = text.splitlines()[0].split("version")[-1].strip()
    with contextlib.suppress(Exception), open("/proc/loadavg") as handle:
        out["loadavg_at_start"] = handle.read().split()[:3]
    return out


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if "--cluster" in args:  # its own options: python -m bench.run --cluster --help
        from bench.cluster import main as cluster_main

        return cluster_main(args)
    parser = argparse.ArgumentParser(prog="python -m bench.run", description=__doc__.split("\n\n")[0])
    parser.add_argument("--cluster", action="store_true",
                        help="the cluster mode instead: 3 gateway instances with a bus against 3 without "
                             "(bench/cluster.py; see python -m bench.run --cluster --help)")
    parser.add_argument("--steps", default=DEFAULT_STEPS, help=f"device counts (default {DEFAULT_STEPS})")
    parser.add_argument("--hold", type=float, default=30.0, help="seconds of traffic per step after ramp-up")
    parser.add_argument("--rate", type=float, default=1.0, help="readings/s per device (default 1)")
    parser.add_argument("--systems", default=",".join(SYSTEMS), help=f"subset of {','.join(SYSTEMS)}")
    parser.add_argument("--workers", type=int, default=None,
                        help="gateway processes: passed as the gateway's --workers N (default: left out, so the "
                        "gateway's own default applies)")
    parser.add_argument("--gen-workers", type=int, default=2, help="load-generator processes (default 2)")
    parser.add_argument("--sources", type=int, default=0,
                        help="source addresses 127.0.0.1..N (default: as many as the ephemeral port range "
                        "needs for the largest step)")
    parser.add_argument("--concurrency", type=int, default=256, help="handshakes in flight during the storm")
    parser.add_argument("--connect-timeout", type=float, default=180.0)
    parser.add_argument("--drain", type=float, default=15.0,
                        help="max seconds to wait for acks after sending")
    parser.add_argument("--dashboard-interval-ms", type=float, default=50.0,
                        help="gateway dashboard coalescing interval in ms (default 50; the gateway's is 250)")
    parser.add_argument("--no-uvloop", dest="uvloop", action="store_false",
                        help="run the gateway on asyncio's own loop (default: uvloop, the gateway's default)")
    parser.add_argument("--gateway-root", type=Path, default=None,
                        help="run the gateway from this copy of the repository (A/B of proposed patches)")
    parser.add_argument("--profile", default="", help="py-spy the hold phase of these systems (comma list)")
    parser.add_argument("--gateway-env", action="append", default=[], metavar="EDGEWIRE_KEY=VALUE",
                        help="gateway setting through its environment, e.g. EDGEWIRE_PING_INTERVAL_S=60 (repeatable)")
    parser.add_argument("--encoding", choices=ENCODINGS, default=ENCODINGS[0],
                        help="devices' data frames: json (default) or cbor (edgewire.v1.cbor, turned on in the "
                        "gateway with EDGEWIRE_CBOR=true); MQTT publishers send the same bytes")
    parser.add_argument("--quick", action="store_true",
                        help="1,000 devices for 10 s, no capacity step: the CI smoke test")
    parser.add_argument("--capacity", action=argparse.BooleanOptionalAction, default=None,
                        help="run the capacity step after the device-count steps (default: on, off with --quick)")
    parser.add_argument("--capacity-only", action="store_true",
                        help="run only the capacity step (no device-count steps, no Mosquitto)")
    parser.add_argument("--capacity-devices", type=int, default=capacity.CapacityOptions.devices,
                        help=f"capacity step: devices (default {capacity.CapacityOptions.devices:,})")
    parser.add_argument("--capacity-rates", default=",".join(str(r) for r in capacity.RAMP),
                        help="capacity step: ascending readings/s for the whole fleet (default "
                        + ",".join(str(r) for r in capacity.RAMP) + ")")
    parser.add_argument("--capacity-hold", type=float, default=capacity.CapacityOptions.hold_s,
                        help=f"capacity step: seconds per rate (default {capacity.CapacityOptions.hold_s:g})")
    parser.add_argument("--capacity-backends", default=",".join(capacity.BACKENDS),
                        help="capacity step: storage backends (default sqlite,postgresql; PostgreSQL is "
                        "skipped, with the reason, when its binaries are missing)")
    parser.add_argument("--require-zero-loss", action="store_true",
                        help="exit 1 unless the gateway full path lost nothing and connected every device")
    parser.add_argument("--out", default=str(RESULTS_DIR), help="directory for the JSON results")
    parser.add_argument("--keep", action="store_true", help="keep the gateway data dirs (in /tmp)")
    parser.add_argument("--show", metavar="JSON", help="print the table of an earlier result file and exit")
    opts = parser.parse_args(argv)
    if opts.show:
        shown = json.loads(Path(opts.show).read_text())
        if shown.get("steps"):
            print(table(shown))
        if "capacity" in shown:
            print("\n".join(["", *capacity.summary_lines(shown["capacity"])]))
        rows = (shown.get("targets") or {}).get("rows")
        if rows:  # result files from before issue 19 have no rows
            print("\n".join(["", *targets.lines(rows)]))
        return 0
    if opts.quick:
        opts.steps = "1000"
        opts.hold = 10.0
        opts.require_zero_loss = True
    if opts.capacity_only:
        opts.capacity = True
    elif opts.capacity is None:
        opts.capacity = not opts.quick
    cap_opts: capacity.CapacityOptions | None = None
    cap_backends: list[str] = []
    if opts.capacity:
        cap_backends = [b.strip() for b in opts.capacity_backends.split(",") if b.strip()]
        if not cap_backends or any(b not in capacity.BACKENDS for b in cap_backends):
            parser.error(f"--capacity-backends: a subset of {','.join(capacity.BACKENDS)}")
        try:
            rates = [int(r) for r in opts.capacity_rates.split(",") if r.strip()]
        except ValueError:
            parser.error("--capacity-rates: whole readings/s, comma-separated (e.g. 10000,20000,50000)")
        cap_opts = capacity.CapacityOptions(devices=opts.capacity_devices, rates=rates, hold_s=opts.capacity_hold,
                                            drain_s=opts.drain, workers=opts.gen_workers,
                                            concurrency=opts.concurrency, encoding=opts.encoding,
                                            uvloop=opts.uvloop, gateway_workers=opts.workers)
        try:
            cap_opts.check()
        except BenchError as err:
            parser.error(f"capacity step: {err}")
    env: dict[str, str] = {}
    for item in opts.gateway_env:
        key, sep, value = item.partition("=")
        if not sep or not key.startswith("EDGEWIRE_"):
            parser.error(f"--gateway-env {item!r}: expected EDGEWIRE_KEY=VALUE")
        env[key] = value
    if opts.encoding == "cbor":
        env.setdefault("EDGEWIRE_CBOR", "true")  # the gateway selects edgewire.v1.cbor only when told to
    opts.gateway_env = env
    opts.nofile = 0  # set below, before the first step
    if cap_opts is not None:
        cap_opts.gateway_env = env
    steps = [] if opts.capacity_only else [int(s) for s in opts.steps.split(",") if s.strip()]
    systems = [s.strip() for s in opts.systems.split(",") if s.strip()]
    opts.profile = [s.strip() for s in opts.profile.split(",") if s.strip()]
    for system in systems:
        if system == "gateway-transport":
            parser.error("--systems: gateway-transport is now called gateway-storage-none")
        if system not in SYSTEMS:
            parser.error(f"--systems: unknown system {system!r}")
    if not opts.capacity_only and (not steps or min(steps) < 1 or max(steps) > 60000):
        parser.error("--steps: device counts must be within 1..60000")
    if not 1 <= opts.hold <= 600 or not 0 < opts.rate <= 50:
        parser.error("--hold must be within 1..600 s and --rate within (0, 50]")
    if opts.workers is not None and not 1 <= opts.workers <= 64:
        parser.error("--workers (gateway processes) must be within 1..64")
    if not 1 <= opts.gen_workers <= 64:
        parser.error("--gen-workers must be within 1..64")

    def log(message: str) -> None:
        print(message, file=sys.stderr, flush=True)

    largest = max(steps, default=opts.capacity_devices if opts.capacity else 1)
    try:
        with open(PORT_RANGE) as handle:
            ports = port_range(handle.read())
    except (OSError, ValueError):
        ports = (32768, 60999)  # Linux's default
    if opts.sources <= 0:
        opts.sources = sources_needed(largest, ports)
    if not 1 <= opts.sources <= 254:
        parser.error("--sources must be within 1..254")
    # The gateway (or Mosquitto) holds every connection, the generator a share: both inherit this limit.
    nofile_need = largest + NOFILE_SLACK
    nofile = opts.nofile = ensure_nofile(nofile_need)
    if nofile < nofile_need:
        log(f"warning: the open-file limit is {nofile}, below the {nofile_need} a {largest:,}-device step needs; "
            "connections beyond it will fail (raise the hard limit first, e.g. ulimit -Hn 65536 in a shell with "
            "CAP_SYS_RESOURCE, LimitNOFILE= for a service, --ulimit nofile= for a container)")

    if opts.capacity_only:
        systems = []
    if "mosquitto" in systems and mosquitto_path() is None:
        log("mosquitto is not installed (apt-get install -y mosquitto); it is required for the comparison")
        return 2
    workdir = scratch_dir()
    started = dt.datetime.now(dt.UTC)
    report: dict[str, Any] = {
        "schema": SCHEMA, "started": started.isoformat(timespec="seconds"), "host": _versions(),
        "config": {"steps": steps, "hold_s": opts.hold, "rate_per_device": opts.rate, "systems": systems,
                   "gateway_workers": opts.workers, "gen_workers": opts.gen_workers,
                   "sources": opts.sources, "ephemeral_ports": list(ports), "nofile": nofile,
                   "concurrency": opts.concurrency,
                   "drain_s": opts.drain, "dashboard_interval_ms": opts.dashboard_interval_ms,
                   "gateway_uvloop": opts.uvloop, "quick": opts.quick, "encoding": opts.encoding,
                   "gateway_root": str(opts.gateway_root) if opts.gateway_root else None,
                   "gateway_env": opts.gateway_env, "capacity": bool(opts.capacity),
                   "capacity_only": opts.capacity_only},
        "steps": [],
    }
    try:
        template = None
        devices: list[tuple[str, str]] = []
        if not steps:
            pass
        elif any(s != "mosquitto" for s in systems):
            template, devices = prepare_template(workdir, max(steps), log)
        else:
            devices = [(f"bench-{i:05d}", "") for i in range(1, max(steps) + 1)]
        for n in steps:
            log(f"step: {n} devices, {opts.hold:g} s at {opts.rate:g}/s each")
            step: dict[str, Any] = {"devices": n, "systems": {}}
            for system in systems:
                step["systems"][system] = run_system(system, devices[:n], opts, template, workdir, log)
                time.sleep(2.0)
            step["ratios"] = ratios(step["systems"])
            report["steps"].append(step)
        if cap_opts is not None:
            report["capacity"] = capacity.run_capacity(cap_opts, cap_backends, workdir, log)
    finally:
        if not opts.keep:
            shutil.rmtree(workdir, ignore_errors=True)
    report["finished"] = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
    report["targets"] = run_targets(report)
    out = Path(opts.out)
    out.mkdir(parents=True, exist_ok=True)
    stamp = started.strftime("%Y%m%dT%H%M%SZ")
    name = f"bench-{stamp}{'-quick' if opts.quick else ''}.json"
    text = json.dumps(report, indent=2)
    (out / name).write_text(text)
    (out / "latest.json").write_text(text)
    if report["steps"]:
        print(table(report))
    if "capacity" in report:
        print("\n".join(["", *capacity.summary_lines(report["capacity"])]))
    if report["targets"]["rows"]:
        print("\n".join(["", *targets.lines(report["targets"]["rows"])]))
    print(f"\nJSON: {out / name} (and latest.json)")
    if opts.require_zero_loss:
        bad = []
        for step in report["steps"]:
            gw = step["systems"].get("gateway")
            if gw is None:
                continue
            if gw.get("lost") != 0:
                bad.append(f"{step['devices']} devices: gateway lost {gw.get('lost')} readings")
            if gw.get("connected") != step["devices"]:
                bad.append(f"{step['devices']} devices: only {gw.get('connected')} connected")
            if gw.get("stored") is not None and gw.get("stored") != gw.get("generated"):
                bad.append(f"{step['devices']} devices: stored {gw.get('stored')} of {gw.get('generated')}")
        if bad:
            print("FAILED: " + "; ".join(bad), file=sys.stderr)
            return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
