"""Measure the gateway's RSS after deflate-compressed frames from connections that never authenticate.

    .venv/bin/python scripts/preauth_deflate_rss.py [--connections 2000] [--rounds 3]

Each round opens ``--connections`` first-frame-auth connections that offer permessage-deflate and
send one compressed 16 000-byte frame (it inflates to just under max_frame), then close. Prints the
gateway's VmRSS before and after each round. Loopback only; every loop is bounded.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from websockets.asyncio.client import connect
from websockets.exceptions import WebSocketException

from tests.helpers.gateway import GatewayProcess


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError("no VmRSS")


async def one(url: str, payload: str) -> str:
    with contextlib.suppress(WebSocketException, OSError, TimeoutError):
        async with connect(url, compression="deflate", open_timeout=30) as ws:
            negotiated = "permessage-deflate" in (ws.response.headers.get("Sec-WebSocket-Extensions") or "")
            await ws.send(payload)
            with contextlib.suppress(WebSocketException):
                await asyncio.wait_for(ws.recv(), 10)
            return "deflate" if negotiated else "plain"
    return "failed"


async def round_(url: str, n: int, payload: str) -> dict[str, int]:
    gate = asyncio.Semaphore(200)

    async def bounded() -> str:
        async with gate:
            return await one(url, payload)

    results = await asyncio.gather(*(bounded() for _ in range(n)))
    return {k: results.count(k) for k in set(results)}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--connections", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    payload = '{"t":"status","pad":"' + "a" * 15_970 + '"}'
    with tempfile.TemporaryDirectory() as tmp, GatewayProcess(Path(tmp), max_unauthenticated_per_address=4096,
                                                              uvloop=False) as gw:
        assert gw.proc is not None
        print(f"start: VmRSS {rss_kib(gw.proc.pid)} KiB")
        for i in range(args.rounds):
            outcome = asyncio.run(round_(gw.device_url, args.connections, payload))
            print(f"round {i + 1}: {args.connections} connections {outcome}: VmRSS {rss_kib(gw.proc.pid)} KiB")


if __name__ == "__main__":
    main()
