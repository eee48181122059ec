"""The live device sessions of this instance, at most one per device id (``LiveDevices``): a new
session replaces the one it finds (drained, then closed 4005), a takeover by another instance hands
a session over, and the shutdown closes them all (in batches, when several instances share the
devices). The session itself is gateway/sessions.py."""

from __future__ import annotations

import asyncio
import logging

from gateway.dashboard.view import Hub
from gateway.device_conn import REPLACED_MESSAGE, DeviceConnection
from gateway.logs import log
from gateway.metrics import Metrics
from gateway.supervisor import spawn
from protocol import wire

REPLACE_WAIT_S = 10.0  # how long a new session waits for the one it replaces to end


class LiveDevices:
    """Every live device session here; ``devices`` maps a device id to its one connection."""

    def __init__(self, hub: Hub, metrics: Metrics) -> None:
        """``hub`` hears of replacements (both addresses, on the dashboard)."""
        self.hub = hub
        self.metrics = metrics
        self.devices: dict[str, DeviceConnection] = {}

    async def enter(self, conn: DeviceConnection) -> None:
        """Make ``conn`` its device's session; a session found there is replaced first (returns
        once it ended, or after REPLACE_WAIT_S)."""
        device_id = conn.device_id
        old = self.devices.get(device_id)
        self.devices[device_id] = conn
        if old is None:
            return
        self.metrics.counters.replaced += 1
        self.hub.replaced(device_id, old.ws.address, conn.ws.address)
        log("device_replaced", logging.WARNING, device=device_id, old_address=old.ws.address,
            address=conn.ws.address)
        old.moved = True
        await self._replace(old)

    def current(self, conn: DeviceConnection) -> bool:
        """Whether ``conn`` is still its device's session here (not replaced meanwhile)."""
        return self.devices.get(conn.device_id) is conn

    def leave(self, conn: DeviceConnection) -> bool:
        """The session ended: forget it unless a newer one replaced it; True if it was current."""
        if not self.current(conn):
            return False
        del self.devices[conn.device_id]
        return True

    async def _replace(self, old: DeviceConnection) -> None:
        """End the session ``old``: its accepted frames stored and acked, then close 4005."""
        old.closing = True
        await old.drain()
        await old.close(wire.E_REPLACED, REPLACED_MESSAGE)
        try:
            await asyncio.wait_for(asyncio.shield(old.done), REPLACE_WAIT_S)
        except TimeoutError:
            log("device_replace_slow", logging.WARNING, device=old.device_id,
                hint=f"the replaced session did not end within {REPLACE_WAIT_S:g} s; going on")

    async def hand_over(self, device_id: str, why: str = "taken over") -> bool:
        """Another instance holds the device now: store what this session accepted, then close it
        with 4005. Returns once its frames are stored (the close handshake goes on by itself), so
        the new holder's welcome carries an exact last_seq. False if no session was here."""
        conn = self.devices.get(device_id)
        if conn is None:
            return False
        conn.moved = True
        if conn.closing:
            await conn.drain()
            return True
        conn.closing = True  # no frame after this one is stored: the device resends it to its new holder
        self.metrics.counters.replaced += 1
        log("device_handed_over", logging.WARNING, device=device_id, why=why)
        await conn.drain()
        spawn(conn.close(wire.E_REPLACED, REPLACED_MESSAGE), "hand-over close")
        return True

    async def close_all(self, per_second: float = 0.0, moving: bool = False) -> None:
        """Shutdown: store and ack what was received, then close the devices with 1012: all at once,
        or ``per_second`` at a time (each batch drained, then closed), so that the devices of a pod
        that several share reconnect over the others instead of all in the same second. Devices
        not in the current batch go on streaming until their turn. ``moving``: the devices go on
        at other instances (their queued commands follow them; they are not offline)."""
        conns = list(self.devices.values())
        if per_second <= 0:
            await self._close_batch(conns, moving)
            return
        loop = asyncio.get_running_loop()
        size = max(1, int(per_second))
        for start in range(0, len(conns), size):
            began = loop.time()
            await self._close_batch(conns[start:start + size], moving)
            if start + size < len(conns):
                await asyncio.sleep(max(0.0, began + size / per_second - loop.time()))

    async def _close_batch(self, conns: list[DeviceConnection], moving: bool) -> None:
        for conn in conns:
            conn.closing = True
            conn.moved = moving
        await asyncio.gather(*(conn.drain() for conn in conns), return_exceptions=True)
        await asyncio.gather(*(conn.close(wire.E_SHUTDOWN, "gateway restarting; reconnect later")
                               for conn in conns), return_exceptions=True)
