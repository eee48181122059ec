"""``make demo``: the gateway on embedded defaults (SQLite) plus a simulated fleet; Ctrl-C stops both.

``make demo DEMO_STORAGE=postgresql`` (``--storage postgresql``) stores into a throwaway
PostgreSQL 15 instead, started on a free loopback port by services.postgres (as the tests do)
and deleted when the demo stops.

``make demo DEMO_BOARDS=1`` (``--boards 1``) adds emulated ESP32 boards (simulator/esp32), each
flashed with ``make flash``'s procedure and then running the real firmware on MicroPython: they
appear on the dashboard as esp32-001...; their state (and console capture, uart.log) is kept in
``<data-dir>/esp32-NNN/``.

Device credentials are kept in ``<data-dir>/demo-credentials.json`` (mode 0600) and rotated
through the admin endpoint when missing, so repeated demos reuse the same device ids.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from websockets.asyncio.client import ClientConnection, connect

from gateway.secret_files import read_secret
from gateway.urls import dashboard_url
from services.errors import ServiceError
from services.postgres import PostgresServer
from simulator.esp32.demo_board import DemoBoard
from simulator.esp32.errors import BoardError
from simulator.fleet import Fleet
from simulator.sensors import make_sensor


def port_free(host: str, port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


def wait_healthy(url: str, proc: subprocess.Popen[bytes], log: Path, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            tail = log.read_text(errors="replace")[-2000:]
            raise SystemExit(f"the gateway exited (code {proc.returncode}); its log {log} ends with:\n{tail}")
        with contextlib.suppress(OSError), urllib.request.urlopen(url + "/healthz", timeout=1) as resp:
            if resp.status == 200:
                return
        time.sleep(0.1)
    raise SystemExit(f"the gateway did not become healthy within {timeout:g} s; see {log}")


def dashboard_line(http_url: str, data_dir: Path, terminal: bool) -> str:
    """The operator's dashboard address, token included, for a terminal; where stdout is kept (a pipe,
    a file), the file that holds the token and the command that prints the address instead."""
    token_file = data_dir / "dashboard.token"
    if terminal and token_file.exists():
        return dashboard_url(http_url, read_secret(token_file, "dashboard.token"))
    return (f"{http_url}/ (operator token in {token_file}; `python -m gateway tokens url --data-dir {data_dir} "
            f"--base-url {http_url}` prints the address with it)")


async def provision_credentials(ws_url: str, data_dir: Path, device_ids: list[str]) -> dict[str, str]:
    """Tokens for ``device_ids``: reuse the saved ones, register or rotate the rest."""
    path = data_dir / "demo-credentials.json"
    saved: dict[str, str] = json.loads(path.read_text()) if path.exists() else {}
    admin = (data_dir / "admin.token").read_text().strip()
    creds: dict[str, str] = {}
    async with connect(ws_url + "/v1/admin", additional_headers={"Authorization": f"Bearer {admin}"}) as ws:
        known = json.loads(await _call(ws, {"t": "devices"}))["devices"]
        registered = {d["id"] for d in known if d["has_token"] and d["enabled"]}
        for device_id in device_ids:
            if device_id in saved and device_id in registered:
                creds[device_id] = saved[device_id]
                continue
            kind = "rotate" if device_id in {d["id"] for d in known} else "register"
            reply = json.loads(await _call(ws, {"t": kind, "device_id": device_id}))
            if reply["t"] != "ok":
                raise SystemExit(f"cannot provision {device_id}: {reply.get('msg')}")
            creds[device_id] = reply["token"]
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        json.dump(creds, handle)
    return creds


async def _call(ws: ClientConnection, request: dict[str, str]) -> str:
    await ws.send(json.dumps(dict(request, id="1")))
    return str(await ws.recv())


async def _run_fleet(ws_url: str, creds: dict[str, str], rate: float) -> dict[str, object]:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    async with Fleet(ws_url, creds, rate=rate, batch=1, seed=42) as fleet:
        # Make the fleet tell a story: one hot server room that crosses the 30 °C alert every few
        # minutes, and one flaky sensor with spikes and dropouts.
        hot = fleet.devices[0]
        hot.sensor = make_sensor("climate", hot.rng, mean=29.6, amplitude=1.6, period_s=180.0)
        if len(fleet.devices) > 1:
            flaky = fleet.devices[1]
            flaky.sensor = make_sensor("climate", flaky.rng, {"spikes": 0.02, "dropout": 0.1})
        last = [0.0]

        def tick(f: Fleet) -> None:
            if loop.time() - last[0] >= 5:
                last[0] = loop.time()
                print("  " + f.status_line(), flush=True)

        return await fleet.run(float("inf"), drain_s=5.0, on_tick=tick, stop_event=stop)


def start_board(state: Path, device_id: str, token: str, ws_url: str) -> DemoBoard:
    """An emulated ESP32, flashed with ``make flash``'s procedure; a failure is printed, the demo goes on."""
    board = DemoBoard(state)
    print(f"starting and flashing the emulated ESP32 {device_id} (about 15 s) ...", flush=True)
    try:
        board.start()
        print("  " + board.flash(device_id, token, ws_url + "/v1/device"), flush=True)
        print(f"  its console: {state / 'uart.log'}", flush=True)
    except (BoardError, OSError, subprocess.SubprocessError) as err:
        print(f"  {device_id}: {err}", file=sys.stderr, flush=True)
    return board


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m simulator.demo", description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8080)
    parser.add_argument("--devices", type=int, default=20)
    parser.add_argument("--rate", type=float, default=1.0, help="readings per second per device")
    parser.add_argument("--data-dir", default=None,
                        help="the gateway's data directory (default var/demo, or var/demo-pg with postgresql: "
                             "a data directory belongs to one storage)")
    parser.add_argument("--storage", choices=["sqlite", "postgresql"], default="sqlite",
                        help="sqlite (default), or postgresql: a throwaway PostgreSQL 15 for this demo")
    parser.add_argument("--boards", type=int, default=0,
                        help="emulated ESP32 boards, flashed and running the firmware (default 0)")
    args = parser.parse_args(argv)
    if args.devices < 1:
        parser.error("--devices must be at least 1")
    if not 0 <= args.boards <= 20:
        parser.error("--boards must be within 0..20")
    if not port_free(args.host, args.port):
        print(f"port {args.port} on {args.host} is in use: stop what uses it or run `make demo PORT=8090`",
              file=sys.stderr)
        return 2
    data_dir = Path(args.data_dir or ("var/demo-pg" if args.storage == "postgresql" else "var/demo"))
    data_dir.mkdir(parents=True, exist_ok=True)
    postgres: PostgresServer | None = None
    storage_flags: list[str] = []
    where = f"SQLite ({data_dir / 'edgewire.db'})"
    if args.storage == "postgresql":
        print("starting a throwaway PostgreSQL 15 ...", flush=True)
        postgres = PostgresServer()
        try:
            postgres.start()
        except ServiceError as err:
            postgres.cleanup()
            print(f"cannot start PostgreSQL: {err}", file=sys.stderr)
            return 2
        storage_flags = ["--storage", postgres.dsn]
        where = f"PostgreSQL ({postgres.dsn}, deleted when the demo stops)"
    log = data_dir / "gateway.log"
    http_url = f"http://{args.host}:{args.port}"
    ws_url = f"ws://{args.host}:{args.port}"
    with open(log, "ab") as log_file:
        gateway = subprocess.Popen(
            [sys.executable, "-m", "gateway", "serve", "--host", args.host, "--port", str(args.port),
             "--data-dir", str(data_dir), "--log-format", "text", *storage_flags],
            stdout=log_file, stderr=subprocess.STDOUT, start_new_session=True)
    boards: list[DemoBoard] = []
    try:
        wait_healthy(http_url, gateway, log)
        board_ids = [f"esp32-{i + 1:03d}" for i in range(args.boards)]
        creds = asyncio.run(provision_credentials(ws_url, data_dir,
                                                  [f"demo-{i:03d}" for i in range(args.devices)] + board_ids))
        for device_id in board_ids:
            boards.append(start_board(data_dir / device_id, device_id, creds.pop(device_id), ws_url))
        print(f"\nEdgewire demo: gateway on {where}, {args.devices} simulated devices"
              + (f", {args.boards} emulated ESP32 boards" if args.boards else ""))
        print(f"  Dashboard: {dashboard_line(http_url, data_dir, sys.stdout.isatty())}")
        print(f"  Data directory: {data_dir} (the CLIs find this gateway and its storage from it: "
              f"python -m gateway devices list --data-dir {data_dir})")
        print(f"  Gateway log: {log}")
        print("  Ctrl-C stops everything.\n", flush=True)
        summary = asyncio.run(_run_fleet(ws_url, creds, args.rate))
    finally:
        for board in boards:
            board.stop()
        if gateway.poll() is None:
            gateway.send_signal(signal.SIGTERM)
            try:
                gateway.wait(20)
            except subprocess.TimeoutExpired:
                gateway.kill()
        if postgres is not None:
            postgres.cleanup()
    print(f"\nstopped: {summary['generated']} readings generated, {summary['acked']} stored and acknowledged, "
          f"{summary['buffered']} unsent, gateway exit code {gateway.returncode}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
