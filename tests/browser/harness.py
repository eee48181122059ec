"""A real browser (Debian's Chromium driven by Playwright) against a real gateway process.

``playwright install`` cannot download here, so Playwright drives /usr/bin/chromium through
``executable_path``. Simulated devices run on an asyncio loop in a background thread (the sync
Playwright API owns the test's thread).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import json
import threading
from collections.abc import Coroutine, Iterator
from typing import Any

from playwright.sync_api import Browser, ConsoleMessage, Page
from websockets.asyncio.client import ClientConnection, connect

from simulator.device import VirtualDevice
from simulator.sensors.base import SensorModel
from tests.helpers.gateway import GatewayProcess

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run"]


class ConsoleErrors:
    """Console errors and uncaught exceptions of a page (the dashboard must have none)."""

    def __init__(self, page: Page) -> None:
        self.messages: list[str] = []
        page.on("console", self._console)
        page.on("pageerror", lambda err: self.messages.append(f"uncaught: {err}"))

    def _console(self, msg: ConsoleMessage) -> None:
        if msg.type == "error":
            self.messages.append(f"console.error: {msg.text} ({msg.location})")

    def clear(self) -> None:
        self.messages.clear()


def operator_url(gw: GatewayProcess, hash_path: str = "/") -> str:
    """The page's address holding the gateway's own (operator) token, at ``hash_path``."""
    token = (gw.data_dir / "dashboard.token").read_text().strip()
    if hash_path == "/":
        return f"{gw.http_url}/#token={token}"
    return f"{gw.http_url}/#{hash_path}{'&' if '?' in hash_path else '?'}token={token}"


def open_page(browser: Browser, url: str, width: int = 1280, height: int = 900) -> tuple[Page, ConsoleErrors]:
    context = browser.new_context(viewport={"width": width, "height": height})
    page = context.new_page()
    page.set_default_timeout(15_000)
    errors = ConsoleErrors(page)
    page.goto(url)
    return page, errors


class SettableSensor(SensorModel):
    """Returns the values the test sets (one reading holds them all)."""

    def __init__(self, **values: float) -> None:
        self.values = dict(values)
        self.metrics = tuple(values)

    def sample(self, t_s: float) -> dict[str, float]:
        return dict(self.values)


class DeviceLoop:
    """An asyncio loop in a background thread running simulated devices."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="sim-devices", daemon=True)
        self.thread.start()
        self.tasks: list[concurrent.futures.Future[Any]] = []

    def run(self, coro: Coroutine[Any, Any, Any], timeout: float = 30.0) -> Any:
        """Run ``coro`` on the loop and wait for its result."""
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def spawn(self, coro: Coroutine[Any, Any, Any]) -> concurrent.futures.Future[Any]:
        future = asyncio.run_coroutine_threadsafe(coro, self.loop)
        self.tasks.append(future)
        return future

    def device(self, url: str, device_id: str, token: str, sensor: SensorModel, rate: float = 5.0,
               status_interval_s: float = 1.0) -> VirtualDevice:
        device = VirtualDevice(url, device_id, token, rate=rate, batch=1, sensor=sensor,
                               status_interval_s=status_interval_s, backoff_initial_s=0.2, backoff_max_s=1.0)
        self.spawn(device.run())
        return device

    def close(self) -> None:
        """Cancel every task on the loop and wait until they have ended, then stop the loop."""

        async def cancel_all() -> None:
            tasks = [task for task in asyncio.all_tasks() if task is not asyncio.current_task()]
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

        with contextlib.suppress(Exception):
            self.run(cancel_all(), 10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)


@contextlib.contextmanager
def device_loop() -> Iterator[DeviceLoop]:
    loop = DeviceLoop()
    try:
        yield loop
    finally:
        loop.close()


async def send_history(url: str, device_id: str, token: str, points: list[tuple[int, dict[str, float]]]) -> int:
    """Send readings with past timestamps as one device connection (docs/protocol.md section 4);
    return the last seq the gateway acknowledged."""
    ws: ClientConnection
    async with connect(url, additional_headers={"Authorization": f"Bearer {token}"}) as ws:
        welcome = json.loads(await ws.recv())
        assert welcome["t"] == "welcome", welcome
        seq = welcome["last_seq"] + 1
        last = seq + len(points) - 1
        for start in range(0, len(points), 50):
            chunk = points[start:start + 50]
            await ws.send(json.dumps({"t": "data", "seq": seq + start, "r": [{"ts": t, "m": m} for t, m in chunk]}))
        acked = 0
        while acked < last:
            msg = json.loads(await ws.recv())
            if msg["t"] == "ack":
                acked = msg["seq"]
            assert msg["t"] in ("ack", "status", "cmd"), msg
        return acked

