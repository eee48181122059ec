"""CPU cost of one simulated device's hot path, without a server: is the generator lean enough?

``DeviceConn`` objects on stand-in transports: each round takes a reading (``tick``: data frame
built by the core, masked and written by websockets' ClientProtocol) and receives its ack
(``data_received``: frame parsed by ClientProtocol, ack interpreted by the core, the reading
released). The figure is CPU microseconds per round (``time.process_time``), and what that
makes at a given load per generator process: ``devices x rate x us``.

    python -m bench.clientcost                         # 200,000 rounds over 5,000 devices, 3 runs
    python -m bench.clientcost --devices 5000 --rate 1

This measures the generator only. ``make bench`` measures the same path under a real server
(``generator.cpu_pct``) and marks a step invalid when a generator process nears a full core.
"""

from __future__ import annotations

import argparse
import json
import time
from typing import Any

from websockets.frames import Frame, Opcode
from websockets.utils import accept_key

from bench import clients
from bench.clients import DeviceConn, Payloads
from bench.wsclient import parse_ws_url

__all__ = ["StandInTransport", "main", "measure", "welcomed_device"]


class StandInTransport:
    """Just enough of asyncio.Transport for a WsClient: counts what is written."""

    def __init__(self) -> None:
        self.writes = 0
        self.bytes = 0
        self.handshake_bytes = 0  # set once the device is welcomed: the upgrade request and the auth frame
        self.closing = False

    def write(self, data: bytes) -> None:
        self.writes += 1
        self.bytes += len(data)

    def is_closing(self) -> bool:
        return self.closing

    def can_write_eof(self) -> bool:
        return True

    def write_eof(self) -> None:
        self.closing = True

    def close(self) -> None:
        self.closing = True

    def abort(self) -> None:
        self.closing = True


def _server_frame(text: str) -> bytes:
    return Frame(Opcode.TEXT, text.encode()).serialize(mask=False)


def welcomed_device(transport: StandInTransport, payloads: Payloads | None = None, batch: int = 1) -> DeviceConn:
    """A DeviceConn (sending ``batch`` readings per frame) past the handshake and the welcome, writing to
    ``transport``."""
    conn = DeviceConn(parse_ws_url("ws://127.0.0.1:9/v1/device"), "cost-1", "ewt_" + "A" * 32,
                      payloads or Payloads(), batch=batch)
    conn.connection_made(transport)  # type: ignore[arg-type]  # the stand-in has what WsClient uses
    response = ("HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                f"Sec-WebSocket-Accept: {accept_key(conn.ws.key)}\r\n\r\n").encode()
    conn.data_received(response)
    conn.data_received(_server_frame(json.dumps(
        {"t": "welcome", "v": 1, "last_seq": 0, "rate": 10, "max_batch": 20})))
    if not conn.welcomed:
        raise RuntimeError(f"the stand-in welcome was not accepted ({conn.error or 'no error'})")
    transport.handshake_bytes = transport.bytes
    return conn


def measure(rounds: int, devices: int = 1) -> dict[str, Any]:
    """CPU and wall microseconds per tick + ack round over ``rounds`` rounds, spread round-robin
    over ``devices`` connections (as many as one worker holds: their state does not all fit in
    the CPU caches). The cyclic GC stays on, as in a worker."""
    payloads = Payloads()
    transports = [StandInTransport() for _ in range(devices)]
    conns = [welcomed_device(transport, payloads) for transport in transports]
    acks = [_server_frame(f'{{"t":"ack","seq":{seq}}}') for seq in range(1, rounds // devices + 2)]
    ts = clients.now_ms()
    del clients.ACK_LATENCIES[:]
    cpu0, wall0 = time.process_time(), time.perf_counter()
    for i in range(rounds):
        conn = conns[i % devices]
        conn.tick(ts, i)
        conn.data_received(acks[i // devices])
    cpu1, wall1 = time.process_time(), time.perf_counter()
    del clients.ACK_LATENCIES[:]
    acked = sum(conn.acked for conn in conns)
    if acked != rounds:
        raise RuntimeError(f"only {acked} of {rounds} readings acknowledged")
    written = sum(transport.bytes for transport in transports) - sum(t.handshake_bytes for t in transports)
    return {"rounds": rounds, "devices": devices, "cpu_us": (cpu1 - cpu0) / rounds * 1e6,
            "wall_us": (wall1 - wall0) / rounds * 1e6, "bytes_per_round": written / rounds}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.clientcost", description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=200_000, help="tick + ack rounds per run (default 200,000)")
    parser.add_argument("--runs", type=int, default=3, help="runs; the best is reported too (default 3)")
    parser.add_argument("--devices", type=int, default=5000,
                        help="connections per generator process, held and used round-robin (default 5,000)")
    parser.add_argument("--rate", type=float, default=1.0, help="readings/s per device (default 1)")
    opts = parser.parse_args(argv)
    if not 1 <= opts.rounds <= 5_000_000 or not 1 <= opts.runs <= 20 or not 1 <= opts.devices <= 60_000:
        parser.error("--rounds must be within 1..5,000,000, --runs within 1..20 and --devices within 1..60,000")
    runs = [measure(opts.rounds, opts.devices) for _ in range(opts.runs)]
    per_s = opts.devices * opts.rate
    for run in runs:
        print(f"{run['cpu_us']:.2f} us CPU ({run['wall_us']:.2f} us wall) per tick+ack round, "
              f"{run['bytes_per_round']:.0f} bytes written; at {per_s:g} readings/s: "
              f"{run['cpu_us'] * per_s / 1e4:.1f} % of a core")
    best = min(run["cpu_us"] for run in runs)
    print(f"best: {best:.2f} us per round -> {best * per_s / 1e4:.1f} % of a core at {per_s:g} readings/s "
          "(hot path only: the connection storm, the scheduler and the drain come on top)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
