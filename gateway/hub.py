"""Live fan-out to dashboard clients: coalesced updates, bounded queues, drop-and-resync.

Ingestion calls ``reading``/``online``/``offline``/``alert`` (plain dict updates, no I/O).
A flusher task turns the changes of each interval into ONE update frame shared by all
clients. With several instances (gateway/cluster), ``on_update`` receives this instance's own
changes of each interval (published to its peers), and ``remote_update``/``remote_presence``
apply the peers' ones: shown here, never passed on again. Each client has a bounded queue;
when it is full the client's queue is dropped, the drop is counted, and the client gets a
fresh snapshot when it catches up. A slow client therefore never stalls ingestion or the
other clients.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import time
from collections import deque
from collections.abc import Callable
from typing import Any

from websockets.asyncio.server import ServerConnection
from websockets.exceptions import ConnectionClosed

from gateway.logs import log

DASHBOARD_SNDBUF = 64 * 1024
MAX_LATEST_METRICS = 64  # distinct metrics whose latest value the dashboard keeps per device


class DeviceView:
    """What the dashboard knows about one device."""

    __slots__ = ("device_id", "holder", "last_seen", "latest", "online", "status")

    def __init__(self, device_id: str) -> None:
        self.device_id = device_id
        self.online = False
        self.holder: str | None = None  # the peer instance holding it, None when here (or nowhere)
        self.last_seen = 0
        self.latest: dict[str, list[float]] = {}  # metric -> [value, time_ms]
        self.status: dict[str, Any] = {}

    def as_dict(self) -> dict[str, Any]:
        return {"id": self.device_id, "online": self.online, "last_seen": self.last_seen,
                "latest": self.latest, "status": self.status}


class DashboardClient:
    """One dashboard connection with its bounded queue of frames."""

    def __init__(self, hub: Hub, ws: ServerConnection, limit: int) -> None:
        self.hub = hub
        self.ws = ws
        self.queue: deque[str] = deque()
        self.limit = limit
        self.needs_snapshot = True
        self.wake = asyncio.Event()
        self.wake.set()

    def offer(self, frame: str) -> None:
        if self.needs_snapshot:
            return  # the coming snapshot includes this change
        if len(self.queue) >= self.limit:
            self.queue.clear()
            self.needs_snapshot = True
            self.hub.resyncs += 1
        else:
            self.queue.append(frame)
        self.wake.set()

    async def pump(self) -> None:
        """Send queued frames until the connection closes."""
        while True:
            await self.wake.wait()
            self.wake.clear()
            if self.needs_snapshot:
                self.needs_snapshot = False
                self.queue.clear()
                await self.ws.send(self.hub.snapshot_frame())
            while self.queue and not self.needs_snapshot:
                await self.ws.send(self.queue.popleft())


class Hub:
    """The dashboards' view of the fleet. ``clock`` (Unix seconds) stamps what the hub records."""

    def __init__(self, interval_ms: float, queue_limit: int, dumps: Callable[[Any], str],
                 clock: Callable[[], float] = time.time) -> None:
        self.interval = interval_ms / 1000.0
        self.clock = clock
        self.queue_limit = queue_limit
        self.dumps = dumps
        self.devices: dict[str, DeviceView] = {}
        self.alerts: dict[int, dict[str, Any]] = {}  # active alerts by id
        self.clients: set[DashboardClient] = set()
        self._dirty: set[str] = set()
        self._events: list[dict[str, Any]] = []
        self._alerts_changed = False
        self._remote_dirty: set[str] = set()  # peers' devices changed since the last flush
        self._remote_events: list[dict[str, Any]] = []
        self.on_update: Callable[[dict[str, Any]], None] | None = None  # this instance's changes, per flush
        self.resyncs = 0
        self.updates_sent = 0

    def now_ms(self) -> int:
        return int(self.clock() * 1000)

    # -- ingestion side (no I/O)
    def view(self, device_id: str) -> DeviceView:
        view = self.devices.get(device_id)
        if view is None:
            view = self.devices[device_id] = DeviceView(device_id)
        return view

    def reading(self, device_id: str, metrics: dict[str, float], time_ms: int) -> None:
        view = self.view(device_id)
        latest = view.latest
        for name, value in metrics.items():
            entry = latest.get(name)
            if entry is not None:
                entry[0] = value
                entry[1] = time_ms
            elif len(latest) < MAX_LATEST_METRICS:  # a device cycling through names cannot grow it
                latest[name] = [value, time_ms]
        view.last_seen = self.now_ms()
        self._dirty.add(device_id)

    def status(self, device_id: str, fields: dict[str, Any]) -> None:
        """The device's latest status fields (bounded by the core: protocol.gateway.MAX_STATUS_*)."""
        view = self.view(device_id)
        view.status = fields
        self._dirty.add(device_id)

    def online(self, device_id: str) -> None:
        view = self.view(device_id)
        view.online = True
        view.holder = None
        view.last_seen = self.now_ms()
        self._dirty.add(device_id)
        self._events.append({"kind": "online", "device": device_id, "at": view.last_seen})

    def offline(self, device_id: str) -> None:
        view = self.view(device_id)
        if view.holder is not None:
            return  # it went on at another instance, which says when it goes offline
        view.online = False
        self._dirty.add(device_id)
        self._events.append({"kind": "offline", "device": device_id, "at": self.now_ms()})

    def replaced(self, device_id: str, old_address: str, new_address: str) -> None:
        """A second connection authenticated as ``device_id`` and replaced the first (close 4005).
        Unexpected, it means the credential is in use elsewhere: docs/protocol.md section 2."""
        self._events.append({"kind": "replaced", "device": device_id, "at": self.now_ms(),
                             "old_address": old_address, "address": new_address})

    def alert_raised(self, alert: dict[str, Any], at_ms: int | None = None) -> None:
        """An alert is active; the event is stamped ``at_ms`` (default: the reading's time)."""
        self.alerts[alert["id"]] = alert
        self._alerts_changed = True
        self._events.append({"kind": "alert_raised", "device": alert["device"],
                             "at": alert["raised"] if at_ms is None else at_ms, "alert": alert})

    def alert_cleared(self, alert: dict[str, Any], at_ms: int | None = None) -> None:
        self.alerts.pop(alert["id"], None)
        self._alerts_changed = True
        self._events.append({"kind": "alert_cleared", "device": alert["device"],
                             "at": alert["cleared"] if at_ms is None else at_ms, "alert": alert})

    # -- peers' changes (cluster mode)
    def remote_presence(self, device_id: str, instance: str, online: bool) -> None:
        """Instance ``instance`` took the device (online) or no longer holds it (offline)."""
        view = self.view(device_id)
        if not online and view.holder != instance:
            return  # held here, or by another peer since
        view.online = online
        view.holder = instance if online else None
        now = self.now_ms()
        if online:
            view.last_seen = now
        self._remote_dirty.add(device_id)
        self._remote_events.append({"kind": "online" if online else "offline", "device": device_id, "at": now})

    def remote_update(self, devices: dict[str, Any], events: list[Any]) -> None:
        """A peer's changes of one interval (its own devices): latest values, status, events.
        Online flags come from presence (``remote_presence``), not from here."""
        for device_id, entry in devices.items():
            if not isinstance(device_id, str) or not isinstance(entry, dict):
                continue
            view = self.view(device_id)
            if view.online and view.holder is None:
                continue  # held here now: a late delta of its previous holder is older than ours
            latest = entry.get("latest")
            if isinstance(latest, dict):
                mine = view.latest
                for name, pair in latest.items():
                    old = mine.get(name)
                    if (isinstance(pair, list) and len(pair) == 2 and (old is None or pair[1] >= old[1])
                            and (old is not None or len(mine) < MAX_LATEST_METRICS)):
                        mine[name] = pair
            if isinstance(entry.get("status"), dict):
                view.status = entry["status"]
            if type(entry.get("last_seen")) is int and entry["last_seen"] > view.last_seen:
                view.last_seen = entry["last_seen"]
            self._remote_dirty.add(device_id)
        for event in events:
            if not isinstance(event, dict) or event.get("kind") in ("online", "offline"):
                continue
            alert = event.get("alert")
            if isinstance(alert, dict) and isinstance(alert.get("id"), int):
                if str(event.get("kind")).endswith("cleared"):
                    self.alerts.pop(alert["id"], None)
                else:
                    self.alerts[alert["id"]] = alert
                self._alerts_changed = True
            self._remote_events.append(event)

    def resync_all(self) -> None:
        """Every dashboard gets a fresh snapshot (after the bus came back and the fleet was rebuilt)."""
        for client in self.clients:
            client.needs_snapshot = True
            client.wake.set()

    # -- dashboard side
    def _encode(self, msg: dict[str, Any]) -> str:
        """Encode a dashboard frame. Should a device's status not encode (the core bounds it, so this
        is a second line of defence), that status is dropped and logged: one device never stops
        the stream for everyone."""
        try:
            return self.dumps(msg)
        except Exception:
            for view in self.devices.values():
                try:
                    self.dumps(view.status)
                except Exception as err:
                    log("dashboard_status_dropped", logging.WARNING, device=view.device_id, error=str(err)[:200])
                    view.status = {}
            devices = msg.get("devices")
            for entry in devices.values() if isinstance(devices, dict) else devices or ():
                entry["status"] = self.devices[entry["id"]].status
            return self.dumps(msg)

    def snapshot_frame(self) -> str:
        return self._encode({
            "t": "snapshot", "time": self.now_ms(),
            "devices": [view.as_dict() for view in self.devices.values()],
            "alerts": list(self.alerts.values()),
        })

    def flush(self) -> None:
        """Build one update frame from the changes since the last flush and offer it to all."""
        if not (self._dirty or self._events or self._alerts_changed or self._remote_dirty or self._remote_events):
            return
        devices = {device_id: self.devices[device_id].as_dict() for device_id in self._dirty}
        if self.on_update is not None and (devices or self._events):
            self.on_update({"devices": dict(devices), "events": self._events})  # ours only, not the peers'
        for device_id in self._remote_dirty - self._dirty:
            devices[device_id] = self.devices[device_id].as_dict()
        events = self._events + self._remote_events if self._remote_events else self._events
        update: dict[str, Any] = {"t": "update", "time": self.now_ms(), "devices": devices}
        if events:
            update["events"] = events
        if self._alerts_changed:
            update["alerts"] = list(self.alerts.values())
        self._dirty = set()
        self._events = []
        self._remote_dirty = set()
        self._remote_events = []
        self._alerts_changed = False
        if not self.clients:
            return
        frame = self._encode(update)
        self.updates_sent += 1
        for client in self.clients:
            client.offer(frame)

    async def run(self) -> None:
        """Flush every interval, for the gateway's life (a supervised task: gateway/supervisor.py)."""
        while True:
            await asyncio.sleep(self.interval)
            self.flush()

    async def serve(self, ws: ServerConnection) -> None:
        """Handle one dashboard connection until it closes."""
        sock = ws.transport.get_extra_info("socket")
        if sock is not None:
            # Bound what a stalled dashboard can hold in the kernel (Linux autotunes up to MiBs).
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, DASHBOARD_SNDBUF)
        client = DashboardClient(self, ws, self.queue_limit)
        self.clients.add(client)
        pump = asyncio.get_running_loop().create_task(client.pump())
        try:
            # The stream is read-only: wait for the client to go away, ignoring what it sends.
            async for _ in ws:
                pass
        except ConnectionClosed:
            pass
        finally:
            self.clients.discard(client)
            pump.cancel()
            with contextlib.suppress(asyncio.CancelledError, ConnectionClosed):
                await pump
