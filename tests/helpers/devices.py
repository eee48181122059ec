"""Minimal protocol clients for integration tests, built on protocol.core."""

from __future__ import annotations

import asyncio
import contextlib
import json
from typing import Any

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from protocol import core


class GoodDevice:
    """A well-behaved device sending one reading every ``period`` s in the background.

    Used as the bystander that must keep being served while others misbehave.
    """

    def __init__(self, url: str, device_id: str, token: str, period: float = 0.1) -> None:
        self.url = url
        self.device_id = device_id
        self.token = token
        self.period = period
        self.session = core.DeviceSession(device_id, token=token, window=8)
        self.pending: list[core.Reading] = []
        self.next_seq = 1
        self.acked = 0
        self.errors: list[Any] = []
        self._task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> GoodDevice:
        self._task = asyncio.get_running_loop().create_task(self._run())
        await self.wait_acked(1)
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._task is not None
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task

    async def wait_acked(self, seq: int, timeout: float = 15.0) -> None:
        async def poll() -> None:
            while self.acked < seq:
                if self._task is not None and self._task.done():
                    self._task.result()
                await asyncio.sleep(0.02)

        await asyncio.wait_for(poll(), timeout)

    async def _run(self) -> None:
        async with connect(self.url, additional_headers={"Authorization": f"Bearer {self.token}"}) as ws:
            kind, _ = self.session.receive(await ws.recv())
            assert kind == core.DEV_WELCOME
            reader = asyncio.get_running_loop().create_task(self._read(ws))
            try:
                while True:
                    self.pending.append(core.Reading(self.next_seq, {"temperature": 20.0 + self.next_seq % 5}))
                    self.next_seq += 1
                    frame = self.session.next_frame(self.pending)
                    if frame is not None:
                        await ws.send(frame)
                    await asyncio.sleep(self.period)
            finally:
                reader.cancel()

    async def _read(self, ws: ClientConnection) -> None:
        async for text in ws:
            kind, payload = self.session.receive(text)
            if kind == core.DEV_ACK:
                self.acked = payload
                self.pending = [r for r in self.pending if r.seq > payload]
            elif kind == core.DEV_ERROR:
                self.errors.append(payload)


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
