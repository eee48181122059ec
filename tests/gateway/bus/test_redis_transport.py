"""The Redis transport on its own, against a real redis-server."""

from __future__ import annotations

import asyncio
import warnings

from gateway.bus.redis import RedisTransport
from gateway.bus.url import parse_bus_url
from services.redis import RedisServer


def test_connecting_warns_about_nothing() -> None:
    """redis-py 8 warns when a synchronous Retry is given to an asyncio client: every cluster gateway
    logged it at start. The transport's client takes the asyncio Retry."""

    async def body(url: str) -> None:
        transport = RedisTransport(parse_bus_url(url))
        await transport.connect("gw-a", set())
        try:
            assert await transport.leases() == {}
        finally:
            await transport.disconnect()

    with RedisServer() as server, warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        asyncio.run(body(server.url))
    assert [str(w.message) for w in caught if "Retry" in str(w.message)] == []
