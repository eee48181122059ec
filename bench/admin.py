"""Registering the bench's devices through a gateway's /v1/admin (docs/protocol.md section 10)."""

from __future__ import annotations

import asyncio
import json

from bench.errors import BenchError


async def register_all(url: str, admin_token: str, ids: list[str], connections: int = 4,
                       window: int = 200) -> dict[str, str]:
    """Register ``ids`` through /v1/admin (``connections`` at once, ``window`` requests in flight each);
    return id -> token."""
    from websockets.asyncio.client import connect

    tokens: dict[str, str] = {}

    async def worker(share: list[str]) -> None:
        async with connect(url + "/v1/admin", additional_headers={"Authorization": f"Bearer {admin_token}"},
                           max_size=1 << 22, open_timeout=30) as ws:
            for start in range(0, len(share), window):
                chunk = share[start:start + window]
                for device_id in chunk:
                    await ws.send(json.dumps({"t": "register", "id": device_id, "device_id": device_id,
                                              "label": "bench"}))
                for _ in chunk:
                    reply = json.loads(await asyncio.wait_for(ws.recv(), 60))
                    if reply.get("t") != "ok":
                        raise BenchError(f"registering {reply.get('id')}: {reply.get('code')}: "
                                         f"{reply.get('msg')}")
                    tokens[reply["device_id"]] = reply["token"]

    await asyncio.gather(*(worker(ids[i::connections]) for i in range(connections)))
    return tokens
