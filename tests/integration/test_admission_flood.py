"""Issue 20.14, against a real gateway process: one address cannot lock out the fleet.

A flood of connections that never authenticate, from the very address the devices connect from
(a site behind one NAT router), fills the pre-authentication budget; a device that authenticates
promptly still gets in, with first-frame auth and with a Bearer header, at this machine's
open-files limit and at Debian's default of 1024 (gateway/admission.py, docs/protocol.md
section 1.2)."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import http.client
import os
import resource
import socket
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest

from simulator.device import VirtualDevice
from tests.helpers.gateway import GatewayProcess
from tests.helpers.waiting import until

SILENT = 1500  # silent TCP connections from the devices' address
UPGRADED = 100  # ... that complete the WebSocket handshake and never authenticate
SECOND_WAVE = 300  # upgraded ones again: more than the address's whole budget
OTHERS = 300  # silent ones from each of two more addresses (to fill the total budget at 1024 files)
PER_ADDRESS = 256  # max_unauthenticated_per_address's default
MONITOR = "127.0.0.9"  # /metrics is read from an address of its own


def raise_own_limit(need: int) -> None:
    """This test holds a few thousand sockets: lift its soft open-files limit (within the hard one)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < need:
        if hard != resource.RLIM_INFINITY and hard < need:
            pytest.skip(f"the hard open-files limit ({hard}) is below the {need} this test needs")
        resource.setrlimit(resource.RLIMIT_NOFILE, (need, hard))


def metrics(port: int) -> dict[str, float]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5, source_address=(MONITOR, 0))
    try:
        conn.request("GET", "/metrics")
        text = conn.getresponse().read().decode()
    finally:
        conn.close()
    return {line.rpartition(" ")[0]: float(line.rpartition(" ")[2])
            for line in text.splitlines() if line and not line.startswith("#")}


def evicted(values: dict[str, float], cap: str, stage: str) -> float:
    return values.get(f'edgewire_connections_evicted_total{{cap="{cap}",stage="{stage}"}}', -1.0)


def open_silent(port: int, count: int, source: str = "127.0.0.1") -> list[socket.socket]:
    """``count`` TCP connections that never send a byte."""
    socks = []
    for _ in range(count):
        sock = socket.socket()
        sock.bind((source, 0))
        sock.connect(("127.0.0.1", port))
        socks.append(sock)
    return socks


def open_upgraded(port: int, count: int) -> list[socket.socket]:
    """``count`` connections that complete the WebSocket handshake on /v1/device (101), one after
    the other, and then never send a frame."""
    socks = []
    for _ in range(count):
        sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        key = base64.b64encode(os.urandom(16)).decode()
        sock.sendall((f"GET /v1/device HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\n"
                      f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n").encode())
        reply = b""
        while b"\r\n\r\n" not in reply:
            chunk = sock.recv(4096)
            assert chunk, f"closed during the handshake after {reply!r}"
            reply += chunk
        assert reply.startswith(b"HTTP/1.1 101"), reply[:200]
        socks.append(sock)
    return socks


async def wait_metrics(port: int, predicate: Callable[[dict[str, float]], bool], what: str) -> dict[str, float]:
    """Poll /metrics (from MONITOR) until ``predicate(values)``; return the values."""
    seen: dict[str, float] = {}

    async def check() -> bool:
        seen.update(await asyncio.to_thread(metrics, port))
        return bool(predicate(seen))

    loop = asyncio.get_running_loop()
    end = loop.time() + 30
    while not await check():
        if loop.time() >= end:
            admission = {k: v for k, v in seen.items() if "evicted" in k or "unauthenticated" in k}
            raise AssertionError(f"timed out waiting for {what}: {admission}")
        await asyncio.sleep(0.05)
    return seen


@contextlib.asynccontextmanager
async def streaming(device: VirtualDevice) -> AsyncIterator[asyncio.Task[object]]:
    task = asyncio.get_running_loop().create_task(device.run())
    try:
        yield task
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def gets_in(device: VirtualDevice, task: asyncio.Task[object]) -> None:
    """The device is welcomed at its first attempt and its first reading is acknowledged."""
    await until(lambda: device.counters.acked >= 1 or bool(device.counters.errors) or task.done(), 15,
                f"{device.device_id}'s first reading to be acked")
    assert device.counters.errors == {} and device.counters.reconnects == 0, device.counters
    assert device.counters.acked >= 1


@pytest.mark.parametrize("open_files", [None, 1024], ids=["machine-limit", "1024-files"])
def test_a_flood_from_the_devices_own_address_does_not_lock_them_out(tmp_path: Path,
                                                                     open_files: int | None) -> None:
    raise_own_limit(SILENT + UPGRADED + SECOND_WAVE + 2 * OTHERS + 500)
    # auth_timeout_s = 60: the flood holds its slots for the whole test, as one that reconnects would
    # The budgets are per process (each worker has its own, docs/protocol.md section 1.2): one process
    # makes the counts below exact.
    with GatewayProcess(tmp_path, open_files=open_files, auth_timeout_s=60.0, workers=1) as gw:
        tokens = gw.register_many(["frame-dev", "header-dev"])
        held: list[socket.socket] = []

        async def run() -> dict[str, float]:
            port = gw.port
            held.extend(await asyncio.to_thread(open_silent, port, SILENT))
            # every connection got a slot; the oldest silent ones were closed to make room
            await wait_metrics(port, lambda m: evicted(m, "per_address", "silent") == SILENT - PER_ADDRESS,
                               "the silent flood to be admitted")
            if open_files is not None:  # total budget: min(4096, 1024 // 2) = 512, hit by three addresses
                for source in ("127.0.0.2", "127.0.0.3"):
                    held.extend(await asyncio.to_thread(open_silent, port, OTHERS, source))
                # (each /metrics request takes a slot too, and so closes one more silent connection)
                values = await wait_metrics(
                    port, lambda m: evicted(m, "total", "silent") + evicted(m, "per_address", "silent")
                    >= SILENT + 2 * OTHERS - 512, "the other addresses' floods to be admitted")
                assert evicted(values, "total", "silent") > 0
            held.extend(await asyncio.to_thread(open_upgraded, port, UPGRADED))
            before = await wait_metrics(port, lambda m: True, "/metrics")
            # full: the address's budget (and this very request), or the whole budget at 1024 files
            assert before["edgewire_unauthenticated_connections"] == (512 if open_files else PER_ADDRESS + 1)

            # a device from the same address, authenticating in its first frame, gets in
            frame_dev = VirtualDevice(gw.device_url, "frame-dev", tokens["frame-dev"], rate=20, auth="frame",
                                      backoff_initial_s=0.2)
            async with streaming(frame_dev) as frame_task:
                await gets_in(frame_dev, frame_task)
                # handshakes that never authenticate, more than the whole budget: the silent ones
                # go first, then the oldest of them
                held.extend(await asyncio.to_thread(open_upgraded, port, SECOND_WAVE))
                await wait_metrics(port, lambda m: evicted(m, "per_address", "requested")
                                   + evicted(m, "total", "requested") > 0, "handshakes to be evicted")
                # a device with a Bearer header at the upgrade gets in too; the first one goes on
                header_dev = VirtualDevice(gw.device_url, "header-dev", tokens["header-dev"], rate=20,
                                           auth="header", backoff_initial_s=0.2)
                async with streaming(header_dev) as header_task:
                    await gets_in(header_dev, header_task)
                acked = frame_dev.counters.acked
                await until(lambda: frame_dev.counters.acked > acked, 15, "frame-dev's next ack")
                assert frame_dev.counters.errors == {} and frame_dev.counters.reconnects == 0
            return await asyncio.to_thread(metrics, port)

        try:
            after = asyncio.run(run())
            assert after["edgewire_errors_total{code=\"too_many_connections\"}"] == sum(
                evicted(after, cap, stage) for cap in ("per_address", "total") for stage in ("silent", "partial"))
            if open_files is None:  # one address under the machine's limit: its own budget only
                assert evicted(after, "per_address", "silent") == SILENT  # every silent one, before any handshake
                assert evicted(after, "total", "silent") == 0
            assert gw.stop(timeout=15) == 0  # with hundreds still waiting to authenticate
        finally:
            for sock in held:
                sock.close()
        if open_files is not None:
            assert '"soft": 1024' in gw.log_text() and '"max_unauthenticated": 512' in gw.log_text()
