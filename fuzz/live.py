"""Fuzz a live gateway process on loopback: fuzzed frames from many device connections.

Every connection alternates fuzzed frames with valid data frames (so that a run of invalid
frames does not end every session at once) and reconnects when the gateway closes it. The
gateway's RSS is sampled all along. At the end: /healthz must be ok, the log must show no task
death or traceback, and SIGTERM must stop the process with status 0.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import tempfile
import time
import urllib.error
import urllib.request
from collections import Counter
from pathlib import Path
from typing import Any

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import WebSocketException

from fuzz.core import valid_data_frame
from fuzz.mutate import Mutator
from protocol import wire
from tests.helpers.gateway import GatewayProcess

ACK_TIMEOUT_S = 15.0
DEATH_MARKERS = ("task_failed", "task_gave_up", "device_session_failed", "admin_request_failed", "Traceback",
                 "handler failed", "shutdown_step_failed")


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def _health(url: str) -> tuple[int, dict[str, Any]]:
    try:
        with urllib.request.urlopen(url + "/healthz", timeout=10) as resp:
            return resp.status, json.load(resp)
    except urllib.error.HTTPError as err:
        return err.code, json.load(err)


class Worker:
    """One device connection: ``fuzz_per_valid`` fuzzed frames, then a valid data frame whose ack it
    waits for (so the gateway has processed everything before: no frame is lost in buffers)."""

    def __init__(self, url: str, device_id: str, token: str, mutator: Mutator, fuzz_per_valid: int) -> None:
        self.url = url
        self.device_id = device_id
        self.token = token
        self.mutator = mutator
        self.fuzz_per_valid = fuzz_per_valid
        self.fuzzed = 0
        self.valid = 0
        self.replies = 0
        self.stalls = 0  # a valid frame not acknowledged within ACK_TIMEOUT_S while the connection was open
        self.stall_reasons: Counter[str] = Counter()
        self.exhausted = False
        self.last_error = ""
        self.closes: Counter[int] = Counter()
        self.seq = 0
        self.acked = 0
        self.moved = asyncio.Event()

    async def _drain(self, ws: ClientConnection) -> None:
        try:
            async for text in ws:
                self.replies += 1
                with contextlib.suppress(ValueError, TypeError, AttributeError):
                    msg = json.loads(text)
                    kind = msg.get("t")
                    if kind == "welcome" and isinstance(msg.get("last_seq"), int):
                        self.acked = max(self.acked, msg["last_seq"])
                        self.seq = max(self.seq, self.acked)
                    elif kind == "ack" and isinstance(msg.get("seq"), int):
                        self.acked = max(self.acked, msg["seq"])
                        self.moved.set()
                    elif kind == "error" and msg.get("seq") == self.seq:
                        self.last_error = f"{msg.get('code')}: {str(msg.get('msg'))[:80]}"
        except WebSocketException:
            pass
        finally:
            self.moved.set()

    async def run(self, shared: dict[str, int], spares: list[str]) -> None:
        """Send until ``shared['left']`` fuzzed frames are used up; a device whose sequence space a
        fuzzed frame used up goes on with a spare token."""
        while shared["left"] > 0:
            if self.exhausted:
                if not spares:
                    return
                self.token, self.exhausted, self.seq, self.acked = spares.pop(), False, 0, 0
            headers = {"Authorization": f"Bearer {self.token}"}
            try:
                async with connect(self.url, additional_headers=headers, max_size=None, open_timeout=30,
                                   ping_interval=None, close_timeout=5) as ws:
                    reader = asyncio.get_running_loop().create_task(self._drain(ws))
                    try:
                        await self._session(ws, shared)
                    finally:
                        with contextlib.suppress(WebSocketException):
                            await ws.close()
                        with contextlib.suppress(asyncio.CancelledError):
                            await reader
                    self.closes[ws.close_code or 0] += 1
            except WebSocketException as err:
                code = getattr(getattr(err, "rcvd", None), "code", None) or 0
                self.closes[code] += 1
            except (OSError, TimeoutError):
                self.closes[-1] += 1
                await asyncio.sleep(0.05)

    async def _session(self, ws: ClientConnection, shared: dict[str, int]) -> None:
        while shared["left"] > 0:
            for _ in range(self.fuzz_per_valid):
                shared["left"] -= 1
                self.fuzzed += 1
                await ws.send(self.mutator.frame(self.seq + 1))
            self.seq = max(self.seq, self.acked) + 1
            if self.seq > wire.MAX_SEQ - wire.MAX_BATCH:  # a fuzzed frame used up the sequence space
                self.exhausted = True
                return
            self.valid += 1
            self.last_error = ""
            await ws.send(valid_data_frame(self.mutator.rng, self.seq, int(time.time() * 1000)))
            deadline = asyncio.get_running_loop().time() + ACK_TIMEOUT_S
            while self.acked < self.seq and ws.close_code is None:
                self.moved.clear()
                remaining = deadline - asyncio.get_running_loop().time()
                if remaining <= 0:
                    self.stalls += 1
                    self.stall_reasons[self.last_error or f"no answer (seq {self.seq})"] += 1
                    return
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self.moved.wait(), remaining)
            if ws.close_code is not None:
                return


def fuzz_live(mutator: Mutator, frames: int, devices: int = 16, fuzz_per_valid: int = 2,
              progress: Any = None, settings: dict[str, Any] | None = None) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="edgewire-fuzz-") as tmp:
        base: dict[str, Any] = {"rate": 1e6, "burst": 1e6, "max_unauthenticated_per_address": 4096,
                                "log_level": "warning", "registry_recheck_s": 3600.0}
        gw = GatewayProcess(Path(tmp), **(base | (settings or {})))
        gw.start()
        try:
            assert gw.proc is not None
            ids = [f"FUZZ-{i:02d}" for i in range(devices)]
            tokens = gw.register_many(ids)
            spares = list(gw.register_many([f"SPARE-{i:03d}" for i in range(4 * devices)]).values())
            rss_start = rss_kib(gw.proc.pid)
            samples = [rss_start]
            shared = {"left": frames}
            workers = [Worker(gw.device_url, i, tokens[i], mutator, fuzz_per_valid) for i in ids]
            started = time.perf_counter()

            async def sample_rss() -> None:
                assert gw.proc is not None
                while True:
                    await asyncio.sleep(1.0)
                    samples.append(rss_kib(gw.proc.pid))
                    if progress is not None:
                        progress(frames - max(0, shared["left"]))

            async def run() -> None:
                sampler = asyncio.get_running_loop().create_task(sample_rss())
                try:
                    await asyncio.gather(*(w.run(shared, spares) for w in workers))
                finally:
                    sampler.cancel()

            asyncio.run(run())
            seconds = time.perf_counter() - started
            status, health = _health(gw.http_url)
            rss_end = rss_kib(gw.proc.pid)
            metrics = gw.metrics()
        finally:
            exit_code = None
            with contextlib.suppress(RuntimeError):
                exit_code = gw.stop(timeout=60)
            gw.kill()
        log = gw.log_text()
    closes: Counter[int] = Counter()
    for w in workers:
        closes.update(w.closes)
    deaths = {marker: log.count(marker) for marker in DEATH_MARKERS if marker in log}
    return {
        "target": "live gateway (/v1/device)", "fuzzed_frames": sum(w.fuzzed for w in workers),
        "sequences_used_up": 4 * devices - len(spares),
        "valid_frames": sum(w.valid for w in workers), "replies": sum(w.replies for w in workers),
        "seconds": round(seconds, 1), "frames_per_s": round(sum(w.fuzzed + w.valid for w in workers) / seconds),
        "closes": {str(k): v for k, v in sorted(closes.items())},
        "internal_errors_1011": closes.get(1011, 0), "stalls": sum(w.stalls for w in workers),
        "stall_reasons": dict(sum((w.stall_reasons for w in workers), Counter()).most_common(5)),
        "readings_stored": int(metrics.get("edgewire_readings_stored_total", 0)),
        "bad_frames": int(metrics.get("edgewire_bad_frames_total", 0)),
        "rss_kib": {"start": rss_start, "peak": max(samples), "end": rss_end, "growth": rss_end - rss_start,
                    "every_10_percent": [samples[min(len(samples) - 1, len(samples) * i // 10)] for i in range(11)]},
        "healthz": {"status": status, "state": health.get("status")},
        "task_deaths_and_tracebacks": deaths, "sigterm_exit_code": exit_code,
        "crash_count": len(deaths) + (0 if status == 200 else 1) + (0 if exit_code == 0 else 1)
        + closes.get(1011, 0) + sum(w.stalls for w in workers),
    }
