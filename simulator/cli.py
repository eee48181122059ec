"""Command line: ``python -m simulator SUBCOMMAND ...`` (also ``edgewire-simulator``).

Subcommands are rows of ``SUBCOMMANDS``: name -> ("module:function", help). The function
takes the remaining arguments (``list[str]``) and returns an exit code; it is imported only
when its subcommand runs, so a missing optional module breaks only its own subcommand.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib
import json
import signal
import sys
from collections.abc import Callable
from typing import Any

from simulator.errors import SimulatorError

SUBCOMMANDS: dict[str, tuple[str, str]] = {
    "fleet": ("simulator.cli:fleet_main", "run N virtual devices against a gateway and print a summary"),
    "provision": ("simulator.cli:provision_main", "register simulated devices, write a credentials file"),
    "esp32": ("simulator.esp32.cli:main", "ESP32 flashing and serial tools (simulator/esp32)"),
}


def main(argv: list[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] in ("-h", "--help") or args[0] not in SUBCOMMANDS:
        out = sys.stdout if args and args[0] in ("-h", "--help") else sys.stderr
        if args and args[0] not in ("-h", "--help"):
            print(f"unknown subcommand {args[0]!r}", file=out)
        print("usage: python -m simulator SUBCOMMAND [options]   (SUBCOMMAND -h for its options)", file=out)
        for name, (_target, text) in SUBCOMMANDS.items():
            print(f"  {name:10s} {text}", file=out)
        return 0 if out is sys.stdout else 2
    target, _text = SUBCOMMANDS[args[0]]
    module_name, _, func_name = target.partition(":")
    try:
        func: Callable[[list[str]], int | None] = getattr(importlib.import_module(module_name), func_name)
    except (ImportError, AttributeError) as err:
        print(f"subcommand {args[0]!r} is unavailable: cannot load {target} ({err})", file=sys.stderr)
        return 2
    try:
        return int(func(args[1:]) or 0)
    except SimulatorError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2


# ------------------------------------------------------------------ fleet

def _fleet_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m simulator fleet", description=(
        "Run virtual protocol-v1 devices against a gateway. Prints a live status line (stderr) and "
        "a summary (stdout). Ctrl-C stops sampling, drains and prints the summary; a second Ctrl-C "
        "stops at once."))
    p.add_argument("--url", default="ws://127.0.0.1:8080", help="gateway base URL (ws:// or wss://)")
    p.add_argument("--credentials", required=True, help="JSON file {device_id: token} (see provision)")
    p.add_argument("--devices", type=int, default=0, help="use the first N credentials (default: all)")
    p.add_argument("--rate", type=float, default=1.0, help="readings per second per device")
    p.add_argument("--batch", type=int, default=1, help="readings per data frame")
    p.add_argument("--window", type=int, default=4, help="data frames in flight before waiting for an ack")
    p.add_argument("--outbox", type=int, default=1000, help="readings buffered per device before dropping")
    p.add_argument("--duration", type=float, default=30.0, help="seconds of sampling")
    p.add_argument("--drain", type=float, default=10.0, help="seconds to wait for acks at the end")
    p.add_argument("--auth", choices=["header", "frame"], default="header", help="how devices authenticate")
    p.add_argument("--faults", default="", help="fault plan, e.g. drop=5,delay=0.02,skew=30,malformed=0.05")
    p.add_argument("--sensor", default="climate", help="sensor spec, e.g. climate,dropout=0.05,spikes=0.01")
    p.add_argument("--connect-rate", type=float, default=200.0, help="devices started per second")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--compression", action="store_true", help="offer permessage-deflate")
    p.add_argument("--encoding", choices=("json", "cbor"), default="json",
                   help="data frames as JSON text (default) or binary CBOR when the gateway selects edgewire.v1.cbor")
    p.add_argument("--status-every", type=float, default=1.0, help="seconds between status lines")
    p.add_argument("--json", action="store_true", help="print the summary as JSON")
    return p


def fleet_main(argv: list[str]) -> int:
    from simulator.faults import FaultPlan
    from simulator.provision import load_credentials
    from simulator.sensors import parse_sensor_spec

    args = _fleet_parser().parse_args(argv)
    credentials = load_credentials(args.credentials)
    if args.devices:
        if args.devices > len(credentials):
            raise SimulatorError(f"--devices {args.devices}: {args.credentials} has only "
                                 f"{len(credentials)} credentials; provision more")
        credentials = dict(list(credentials.items())[: args.devices])
    faults = FaultPlan.parse(args.faults) if args.faults else None
    sensor, sensor_faults = parse_sensor_spec(args.sensor)
    summary = asyncio.run(_run_fleet(args, credentials, faults, sensor, sensor_faults))
    if args.json:
        print(json.dumps(summary, indent=1))
    return 0 if summary.get("crashed", 0) == 0 else 1


async def _run_fleet(args: argparse.Namespace, credentials: dict[str, str], faults: Any, sensor: str,
                     sensor_faults: dict[str, float]) -> dict[str, Any]:
    from simulator.fleet import Fleet

    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    main_task = asyncio.current_task()

    def on_signal() -> None:
        if stop.is_set() and main_task is not None:
            main_task.cancel()
        stop.set()

    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, on_signal)
    tty = sys.stderr.isatty()

    def tick(fleet: Fleet) -> None:
        line = fleet.status_line()
        if tty:
            print("\r" + line.ljust(120), end="", file=sys.stderr, flush=True)
        else:
            print(line, file=sys.stderr, flush=True)

    fleet = Fleet(args.url, credentials, rate=args.rate, batch=args.batch, window=args.window,
                  outbox_max=args.outbox, auth=args.auth, faults=faults, connect_rate=args.connect_rate,
                  seed=args.seed, sensor=sensor, sensor_faults=sensor_faults, compression=args.compression,
                  encoding=args.encoding)
    try:
        await fleet.run(args.duration, drain_s=args.drain, on_tick=tick, tick_s=args.status_every,
                        stop_event=stop)
    except asyncio.CancelledError:
        if main_task is not None:
            main_task.uncancel()
    finally:
        await fleet.close()
        if tty:
            print(file=sys.stderr)
    if not args.json:
        print(fleet.format_summary())
    return fleet.summary()


# ------------------------------------------------------------------ provision

def provision_main(argv: list[str]) -> int:
    from simulator.provision import device_ids, provision, save_credentials

    p = argparse.ArgumentParser(prog="python -m simulator provision", description=(
        "Register simulated devices in a gateway's registry (its --data-dir) and write their tokens "
        "to a JSON file {device_id: token}, mode 0600."))
    p.add_argument("--data-dir", required=True, help="the gateway's data directory")
    p.add_argument("--db", default=None, help="SQLite file (default <data-dir>/edgewire.db)")
    p.add_argument("--devices", type=int, default=20, help="how many devices")
    p.add_argument("--prefix", default="sim-", help="device id prefix")
    p.add_argument("--start", type=int, default=1, help="first device number")
    p.add_argument("--out", default="creds.json", help="credentials file to write")
    p.add_argument("--rotate", action="store_true", help="issue new tokens for ids already registered")
    p.add_argument("--subprocess", action="store_true",
                   help="use `python -m gateway devices add` per device instead of gateway.registry")
    args = p.parse_args(argv)
    ids = device_ids(args.devices, args.prefix, args.start)
    creds = provision(args.data_dir, ids, db=args.db, rotate=args.rotate,
                      in_process=False if args.subprocess else None)
    save_credentials(args.out, creds)
    print(f"registered {len(creds)} devices ({ids[0]} .. {ids[-1]}); tokens in {args.out} (mode 0600)",
          file=sys.stderr)
    return 0
