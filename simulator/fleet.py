"""A fleet of VirtualDevices in one process (one asyncio task per device, staggered connects).

    async with Fleet(url, credentials, rate=1.0, batch=1, faults=FaultPlan(drop_mean_s=5)) as fleet:
        summary = await fleet.run(duration_s=30)      # sample 30 s, then drain, then stop
    fleet.devices[0].counters.acked, fleet.summary(), print(fleet.format_summary())

``url`` may be a list: the URLs of several gateway instances joined by a bus (docs/scaling.md);
each device picks one at random at every (re)connect, so faults move devices between them.
``credentials`` maps device id -> token or JWT (tests: ``GatewayProcess.register``; CLI: a
JSON file written by ``python -m simulator provision``). Counters mean what
``simulator.device`` says; in particular **acked** counts readings the devices removed from
their outboxes because the gateway acknowledged them, i.e. confirmed them durably stored.
After a drained run, ``generated == acked + rejected + dropped + buffered`` holds per device
and fleet-wide, and ``buffered`` is 0 unless the drain timed out.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from types import TracebackType
from typing import Any

from simulator.device import CredentialRefresh, VirtualDevice
from simulator.faults import FaultPlan
from simulator.sensors import make_sensor

log = logging.getLogger("simulator.fleet")

SUMMARY_KEYS = ("generated", "sent_frames", "sent_readings", "acked", "resent", "rejected", "dropped",
                "buffered", "reconnects", "slowed", "commands", "malformed", "sensor_errors")


class Fleet:
    """N virtual devices sharing one event loop. See the module docstring."""

    def __init__(
        self,
        url: str | Sequence[str],
        credentials: Mapping[str, str],
        *,
        rate: float = 1.0,
        batch: int = 1,
        window: int = 4,
        outbox_max: int = 1000,
        auth: str = "header",
        faults: FaultPlan | None = None,
        connect_rate: float = 200.0,
        seed: int = 0,
        sensor: str = "climate",
        sensor_faults: Mapping[str, float] | None = None,
        credential_refresh: CredentialRefresh | None = None,
        **device_options: Any,
    ) -> None:
        """``connect_rate``: devices started per second (staggered connects); ``device_options``
        go to every VirtualDevice (linger_s, status_interval_s, backoff_initial_s, ...)."""
        self.url = url
        self.connect_rate = connect_rate
        self.devices: list[VirtualDevice] = []
        for index, (device_id, credential) in enumerate(credentials.items()):
            device_seed = seed * 1_000_003 + index
            dev = VirtualDevice(
                url, device_id, credential, rate=rate, batch=batch, window=window, outbox_max=outbox_max,
                auth=auth, faults=faults, fault_index=index, seed=device_seed,
                credential_refresh=credential_refresh, **device_options)
            if sensor != "climate" or sensor_faults:
                dev.sensor = make_sensor(sensor, dev.rng, dict(sensor_faults or {}))
            self.devices.append(dev)
        self.tasks: list[asyncio.Task[Any]] = []
        self.crashed = 0
        self.started_at = 0.0
        self.stopped_at = 0.0

    async def __aenter__(self) -> Fleet:
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        await self.close()

    # -- running
    def start(self) -> None:
        """Start every device's task; device i starts i / connect_rate seconds from now."""
        if self.tasks:
            return
        self.started_at = time.monotonic()
        for index, dev in enumerate(self.devices):
            delay = index / self.connect_rate if self.connect_rate > 0 else 0.0
            self.tasks.append(asyncio.create_task(self._run_one(dev, delay), name=f"sim-{dev.device_id}"))

    async def _run_one(self, dev: VirtualDevice, delay: float) -> None:
        if delay > 0:
            await asyncio.sleep(delay)
        try:
            await dev.run()
        except asyncio.CancelledError:
            raise
        except Exception:
            self.crashed += 1
            log.exception("virtual device %s crashed", dev.device_id)

    async def stop(self, drain_s: float = 10.0) -> dict[str, Any]:
        """Stop sampling, give devices ``drain_s`` to get their outboxes acked, then cancel the rest."""
        for dev in self.devices:
            dev.stop_generating()
        pending = [t for t in self.tasks if not t.done()]
        if pending:
            _done, still = await asyncio.wait(pending, timeout=drain_s)
            for task in still:
                task.cancel()
            if still:
                await asyncio.gather(*still, return_exceptions=True)
        self.stopped_at = time.monotonic()
        return self.summary()

    async def run(self, duration_s: float, drain_s: float = 10.0,
                  on_tick: Callable[[Fleet], None] | None = None, tick_s: float = 1.0,
                  stop_event: asyncio.Event | None = None) -> dict[str, Any]:
        """Start, sample for ``duration_s`` (or until ``stop_event`` is set), stop with drain; the summary.

        ``on_tick(fleet)`` is called every ``tick_s`` while sampling (live status lines).
        """
        self.start()
        loop = asyncio.get_running_loop()
        end = loop.time() + duration_s
        while True:
            left = end - loop.time()
            if left <= 0 or (stop_event is not None and stop_event.is_set()):
                break
            if all(t.done() for t in self.tasks):
                break
            if stop_event is not None:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop_event.wait(), min(tick_s, left))
            else:
                await asyncio.sleep(min(tick_s, left))
            if on_tick is not None:
                on_tick(self)
        return await self.stop(drain_s)

    async def close(self) -> None:
        """Cancel every device task (no drain). Idempotent."""
        for task in self.tasks:
            if not task.done():
                task.cancel()
        if self.tasks:
            await asyncio.gather(*self.tasks, return_exceptions=True)
        if not self.stopped_at:
            self.stopped_at = time.monotonic()

    async def wait_until(self, predicate: Callable[[Fleet], bool], timeout_s: float,
                         poll_s: float = 0.05) -> bool:
        """Poll ``predicate(fleet)`` until it is true (True) or ``timeout_s`` passes (False)."""
        loop = asyncio.get_running_loop()
        end = loop.time() + timeout_s
        while not predicate(self):
            if loop.time() >= end:
                return False
            await asyncio.sleep(poll_s)
        return True

    # -- reporting
    @property
    def online(self) -> int:
        return sum(1 for d in self.devices if d.online)

    def summary(self) -> dict[str, Any]:
        """Fleet totals: SUMMARY_KEYS summed over devices, plus errors by code, devices, online,
        stopped (reason -> count), crashed tasks and elapsed seconds."""
        totals: dict[str, Any] = dict.fromkeys(SUMMARY_KEYS, 0)
        errors: dict[str, int] = {}
        stopped: dict[str, int] = {}
        for dev in self.devices:
            c = dev.counters
            for key in SUMMARY_KEYS:
                totals[key] += dev.buffered if key == "buffered" else getattr(c, key)
            for code, n in c.errors.items():
                errors[code] = errors.get(code, 0) + n
            if dev.stopped_reason:
                stopped[dev.stopped_reason] = stopped.get(dev.stopped_reason, 0) + 1
        end = self.stopped_at or time.monotonic()
        totals.update(
            devices=len(self.devices), online=self.online, errors=dict(sorted(errors.items())),
            error_total=sum(errors.values()), stopped=stopped, crashed=self.crashed,
            elapsed_s=round(end - self.started_at, 3) if self.started_at else 0.0)
        return totals

    def status_line(self) -> str:
        """One line of totals. The network drops the fault plan injects (``fault_drop``) are named apart
        from the errors: they are the demo's doing, not the gateway's."""
        s = self.summary()
        drops = s["errors"].get("fault_drop", 0)
        return (f"t={s['elapsed_s']:.0f}s online={s['online']}/{s['devices']} gen={s['generated']} "
                f"sent={s['sent_readings']} acked={s['acked']} buffered={s['buffered']} "
                f"resent={s['resent']} rejected={s['rejected']} dropped={s['dropped']} "
                f"reconnects={s['reconnects']} errors={s['error_total'] - drops}"
                + (f" (+{drops} simulated network drops)" if drops else ""))

    def format_summary(self) -> str:
        """The summary as a two-column table (errors by code below it)."""
        s = self.summary()
        rows = [("devices", s["devices"]), *((k, s[k]) for k in SUMMARY_KEYS),
                ("errors", s["error_total"]), ("crashed", s["crashed"]), ("elapsed_s", s["elapsed_s"])]
        if s["elapsed_s"]:
            rows.append(("acked_per_s", round(s["acked"] / s["elapsed_s"], 1)))
        rows += [(f"  {code}", n) for code, n in s["errors"].items()]
        rows += [(f"stopped: {reason}", n) for reason, n in s["stopped"].items()]
        width = max(len(name) for name, _ in rows)
        return "\n".join(f"{name.ljust(width)}  {value}" for name, value in rows)
