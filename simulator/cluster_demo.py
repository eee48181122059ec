"""``make cluster-demo``: three gateway instances joined by Redis on one PostgreSQL, and a fleet.

Everything runs on loopback ports and is thrown away at the end: a redis-server
(services.redis), a PostgreSQL 15 (services.postgres), three gateways (``--bus redis://...
--instance-id gw-N``, sharing EDGEWIRE_TOKEN_KEY) and a simulated fleet whose devices connect
to an instance picked at random and, on the network drops of the fault plan, reconnect to
another random one. Any instance's dashboard shows the whole fleet. Ctrl-C stops the fleet,
then the gateways (SIGTERM: each drains its devices), then Redis and PostgreSQL.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import secrets
import signal
import subprocess
import sys
from pathlib import Path

from services.errors import ServiceError
from services.postgres import PostgresServer
from services.process import free_port
from services.redis import RedisServer
from simulator.demo import port_free, provision_credentials, wait_healthy
from simulator.faults import FaultPlan
from simulator.fleet import Fleet

INSTANCES = 3


def _start_gateways(host: str, ports: list[int], data_dir: Path, bus: str, dsn: str) -> list[subprocess.Popen[bytes]]:
    env = dict(os.environ, EDGEWIRE_TOKEN_KEY=secrets.token_hex(32), PYTHONUNBUFFERED="1")  # one key for all
    procs = []
    for index, port in enumerate(ports):
        gw_dir = data_dir / f"gw-{index}"
        gw_dir.mkdir(parents=True, exist_ok=True)
        with open(gw_dir / "gateway.log", "ab") as log:
            procs.append(subprocess.Popen(
                [sys.executable, "-m", "gateway", "serve", "--host", host, "--port", str(port),
                 "--data-dir", str(gw_dir), "--storage", dsn, "--bus", bus, "--instance-id", f"gw-{index}",
                 "--log-format", "text"],
                stdout=log, stderr=subprocess.STDOUT, start_new_session=True, env=env))
    return procs


def _stop_gateways(procs: list[subprocess.Popen[bytes]]) -> list[int | None]:
    for proc in procs:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
    for proc in procs:
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    return [proc.returncode for proc in procs]


async def _run_fleet(urls: list[str], creds: dict[str, str], rate: float, drop_mean_s: float) -> dict[str, object]:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    faults = FaultPlan(seed=7, drop_mean_s=drop_mean_s, fraction=0.3) if drop_mean_s > 0 else None
    async with Fleet(urls, creds, rate=rate, batch=1, seed=42, faults=faults, backoff_max_s=5.0) as fleet:
        last = [0.0]

        def tick(f: Fleet) -> None:
            if loop.time() - last[0] >= 5:
                last[0] = loop.time()
                spread = {url: sum(1 for d in f.devices if d.online and d.url.startswith(url)) for url in urls}
                where = ", ".join(f"gw-{i}: {n}" for i, n in enumerate(spread.values()))
                print(f"  {f.status_line()}  [{where}]", flush=True)

        return await fleet.run(float("inf"), drain_s=5.0, on_tick=tick, stop_event=stop)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m simulator.cluster_demo", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8080, help="gw-0's port; gw-1 and gw-2 take the next ones")
    parser.add_argument("--devices", type=int, default=60)
    parser.add_argument("--rate", type=float, default=1.0, help="readings per second per device")
    parser.add_argument("--drop-mean-s", type=float, default=30.0,
                        help="network drops of 30%% of the devices, this many seconds apart on average (0: none)")
    parser.add_argument("--data-dir", default="var/cluster-demo")
    args = parser.parse_args(argv)
    if args.devices < 1:
        parser.error("--devices must be at least 1")
    ports = [args.port + i for i in range(INSTANCES)]
    busy = [p for p in ports if not port_free(args.host, p)]
    if busy:
        print(f"port(s) {', '.join(map(str, busy))} on {args.host} in use: stop what uses them or run "
              f"`make cluster-demo PORT={free_port()}`", file=sys.stderr)
        return 2
    data_dir = Path(args.data_dir)
    data_dir.mkdir(parents=True, exist_ok=True)
    print("starting a throwaway redis-server and PostgreSQL 15 ...", flush=True)
    redis, postgres = RedisServer(), PostgresServer()
    procs: list[subprocess.Popen[bytes]] = []
    summary: dict[str, object] = {}
    codes: list[int | None] = []
    try:
        try:
            redis.start()
            postgres.start()
        except ServiceError as err:
            print(f"cannot start Redis or PostgreSQL: {err}", file=sys.stderr)
            return 2
        procs = _start_gateways(args.host, ports, data_dir, redis.url, postgres.dsn)
        http = [f"http://{args.host}:{port}" for port in ports]
        for index, (url, proc) in enumerate(zip(http, procs, strict=True)):
            wait_healthy(url, proc, data_dir / f"gw-{index}" / "gateway.log")
        ws = [f"ws://{args.host}:{port}" for port in ports]
        ids = [f"node-{i:03d}" for i in range(args.devices)]
        creds = asyncio.run(provision_credentials(ws[0], data_dir / "gw-0", ids))
        print(f"\nEdgewire cluster demo: {INSTANCES} gateways on {', '.join(map(str, ports))}, Redis {redis.url}, "
              f"PostgreSQL {postgres.dsn} (both deleted when the demo stops), {args.devices} devices")
        print(f"  Dashboard (the whole fleet, from any instance): {http[0]}/   also {http[1]}/ and {http[2]}/")
        print(f"  Logs: {data_dir}/gw-N/gateway.log")
        print("  Ctrl-C stops everything.\n", flush=True)
        summary = asyncio.run(_run_fleet(ws, creds, args.rate, args.drop_mean_s))
    except KeyboardInterrupt:
        pass
    finally:
        with contextlib.suppress(KeyboardInterrupt):
            codes = _stop_gateways(procs)
            postgres.cleanup()
            redis.cleanup()
    if summary:
        print(f"\nstopped: {summary['generated']} readings generated, {summary['acked']} stored and acknowledged, "
              f"{summary['buffered']} unsent; gateway exit codes {codes}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
