"""Presence: which instance holds which device (docs/scaling.md sections 3-4).

An entry says ``device -> instance boot version``. It counts only while that instance's
lease (refreshed every ``lease_ttl_s / 3`` by the engine) is alive with the same boot, so
a crashed instance's devices drop out of ``snapshot()`` when its lease expires, with no
clean-up needed. Every instance remembers what it holds (``local``) and writes it again
after each reconnect, so a restarted, emptied Redis is refilled by the instances.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

from gateway.bus.base import Claim, Holder
from gateway.bus.link import Link
from gateway.errors import BusError
from gateway.logs import log

# Called with (device_id, the other holder) for a device another instance claimed while we were cut off.
LostHook = Callable[[str, Holder], Awaitable[None] | None]


class Presence:
    def __init__(self, bus: Link) -> None:
        self._bus = bus
        self.local: dict[str, Holder] = {}  # devices this instance holds, with the entry it wrote
        self._unreleased: dict[str, Holder] = {}  # releases that failed: retried every heartbeat
        self._lost_hooks: list[LostHook] = []

    def on_lost(self, hook: LostHook) -> None:
        """Call ``hook(device_id, holder)`` when a rebuild finds a device of ours claimed elsewhere."""
        self._lost_hooks.append(hook)

    def _mine(self, version: int = 0) -> Holder:
        return Holder(self._bus.instance_id, self._bus.boot, version)

    async def claim(self, device_id: str) -> Claim:
        """Make this instance the device's holder. Never raises for a bus outage: the claim is then
        kept here (``confirmed=False``) and written when the bus is back."""
        bus = self._bus
        self._unreleased.pop(device_id, None)
        if bus.ok:
            try:
                holder, previous = await bus.call(
                    bus.transport.presence_claim(device_id, bus.instance_id, bus.boot))
                self.local[device_id] = holder
                alive = previous is not None and await self._alive(previous)
                return Claim(holder, previous, alive)
            except BusError as err:
                log("presence_claim_deferred", logging.WARNING, device=device_id, error=str(err))
        holder = self._mine()
        self.local[device_id] = holder
        return Claim(holder, None, False, confirmed=False)

    async def release(self, device_id: str) -> None:
        """Forget the device here and delete its entry if it is still ours (a newer claim stays)."""
        holder = self.local.pop(device_id, None)
        if holder is None or holder.version == 0:
            return
        bus = self._bus
        if not bus.ok:
            self._unreleased[device_id] = holder
            return
        try:
            await bus.call(bus.transport.presence_release(device_id, holder))
        except BusError:
            self._unreleased[device_id] = holder

    async def release_all(self) -> None:
        """Delete every entry this instance holds (a clean stop)."""
        for device_id in list(self.local):
            await self.release(device_id)

    async def retry_releases(self) -> None:
        bus = self._bus
        for device_id, holder in list(self._unreleased.items()):
            if device_id in self.local:
                del self._unreleased[device_id]  # claimed here again meanwhile
                continue
            await bus.step(bus.transport.presence_release(device_id, holder))
            del self._unreleased[device_id]

    async def locate(self, device_id: str) -> Holder | None:
        """The device's holder if its instance is alive, else None (offline). BusUnavailable when down."""
        bus = self._bus
        bus.require_ok()
        holder = await bus.call(bus.transport.presence_get(device_id))
        return holder if holder is not None and await self._alive(holder) else None

    async def snapshot(self) -> dict[str, Holder]:
        """Every online device with its holder (entries of dead instances left out)."""
        bus = self._bus
        bus.require_ok()
        entries = await bus.call(bus.transport.presence_all(), bus.op_timeout_s * 4)
        leases = await bus.call(bus.transport.leases())
        return {device: h for device, h in entries.items() if leases.get(h.instance) == h.boot}

    async def instances(self) -> dict[str, str]:
        """The live instances: id -> boot."""
        bus = self._bus
        bus.require_ok()
        return await bus.call(bus.transport.leases())

    async def _alive(self, holder: Holder) -> bool:
        bus = self._bus
        if holder.instance == bus.instance_id and holder.boot == bus.boot:
            return True
        leases = await bus.call(bus.transport.leases())
        return leases.get(holder.instance) == holder.boot

    async def rebuild(self) -> None:
        """After (re)connecting: write every local entry again; report the devices lost meanwhile."""
        bus = self._bus
        if not self.local:
            return
        wanted = {device: (h if h.version else self._mine()) for device, h in self.local.items()}
        current = await bus.step(bus.transport.presence_restore(wanted))
        lost: list[tuple[str, Holder]] = []
        for device_id, holder in current.items():
            if device_id not in self.local:
                continue  # released while we were rebuilding
            if holder.instance == bus.instance_id and holder.boot == bus.boot:
                self.local[device_id] = holder
            else:
                del self.local[device_id]
                lost.append((device_id, holder))
        for device_id, holder in lost:
            log("presence_lost", logging.WARNING, device=device_id, holder=holder.instance)
            for hook in self._lost_hooks:
                result = hook(device_id, holder)
                if result is not None:
                    await result
