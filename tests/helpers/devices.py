"""Device-side helpers for integration tests: a simulated bystander and a close reader."""

from __future__ import annotations

import asyncio
import contextlib
import json
from typing import Any

from websockets.asyncio.client import ClientConnection
from websockets.exceptions import ConnectionClosed

from simulator.device import VirtualDevice


class GoodDevice:
    """A well-behaved simulated device (simulator.VirtualDevice) streaming 10 readings/s.

    Used as the bystander that must keep being served while others misbehave.
    """

    def __init__(self, url: str, device_id: str, token: str, rate: float = 10.0) -> None:
        self.device = VirtualDevice(url, device_id, token, rate=rate, batch=1, backoff_initial_s=0.2)
        self._task: asyncio.Task[object] | None = None

    @property
    def acked(self) -> int:
        return self.device.counters.acked

    async def __aenter__(self) -> GoodDevice:
        self._task = asyncio.get_running_loop().create_task(self.device.run())
        await self.wait_acked(1)
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._task is not None
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task

    async def wait_acked(self, count: int, timeout: float = 15.0) -> None:
        """Wait until ``count`` readings of this device are acknowledged (stored)."""

        async def poll() -> None:
            while self.acked < count:
                if self._task is not None and self._task.done():
                    raise AssertionError(f"bystander stopped: {self.device.stopped_reason}")
                await asyncio.sleep(0.02)

        await asyncio.wait_for(poll(), timeout)


async def expect_close(ws: ClientConnection, timeout: float = 10.0) -> tuple[list[dict[str, Any]], int | None]:
    """Read until the server closes; return (frames received, close code)."""
    frames: list[dict[str, Any]] = []
    try:
        async with asyncio.timeout(timeout):
            async for text in ws:
                frames.append(json.loads(text))
    except ConnectionClosed:
        pass
    return frames, ws.close_code
