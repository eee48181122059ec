"""The dashboards' view model, the hub: frames in, deltas out, no sockets.

Ingestion calls ``online``/``offline``/``status``/``device_error``/``alert_event``, and, for
the stored readings, the commit listener ``committed`` (gateway/fanout.py), which calls
``reading`` and ``boot`` (plain dict updates, no I/O); ``registry`` keeps the registered
devices (also those that never connected) with their labels.
``flush`` (every interval, ``run``) turns the changes of each interval into ONE update frame
offered to every viewer (``clients``: the dashboard connections, gateway/dashboard/stream.py, or a
test's). With several instances (gateway/cluster), ``on_update`` (registered with ``share``)
receives this instance's own changes of each interval (published to its peers), and
``remote_update``/``remote_presence`` apply the peers' ones: shown here, never passed on again.
Each viewer has a bounded queue (``queue_limit``); when it is full the viewer's queue is dropped,
the drop is counted (``resyncs``), and the viewer gets a fresh snapshot (``snapshot_frame``) when
it catches up. A slow client therefore never stalls ingestion or the others.

``latency`` (the gateway's ``edgewire_dashboard_latency_seconds``): for every reading committed
while a dashboard can see it (a client is connected here, or peers get this instance's
changes: ``on_update``), the time from its ``received_ms`` (the gateway received its frame) to
the flush that builds the update carrying it, offered to the clients here and published to
the peers (the clients' queues and network come after; a peer's dashboard shows it at that
peer's next flush, up to one interval later).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import Any, Protocol

from gateway.alerts.model import CLEARED, AlertEvent
from gateway.dashboard.roles import ANONYMOUS, DashboardIdentity
from gateway.logs import log
from gateway.metrics import Histogram
from gateway.storage.base import DeviceRecord, ReadingRow
from protocol import wire

MAX_LATEST_METRICS = 64  # distinct metrics whose latest value the dashboard keeps per device
MAX_ERROR_CHARS = 300  # of a device's last refused frame's message


class DeviceView:
    """What the dashboard knows about one device."""

    __slots__ = ("boot", "device_id", "enabled", "holder", "label", "last_error", "last_seen", "latest", "online",
                 "registered", "status")

    def __init__(self, device_id: str) -> None:
        self.device_id = device_id
        self.online = False
        self.holder: str | None = None  # the peer instance holding it, None when here (or nowhere)
        self.last_seen = 0
        self.latest: dict[str, list[float]] = {}  # metric -> [value, time_ms]
        self.status: dict[str, Any] = {}
        self.label = ""
        self.enabled = True
        self.registered = False  # in the registry (a JWT device need not be)
        self.boot: str | None = None  # the boot id of its latest data frame
        self.last_error: dict[str, Any] | None = None  # {"code", "msg", "at"} of its last refused frame

    def as_dict(self) -> dict[str, Any]:
        return {"id": self.device_id, "label": self.label, "enabled": self.enabled, "registered": self.registered,
                "online": self.online, "last_seen": self.last_seen, "latest": self.latest, "status": self.status,
                "boot": self.boot, "last_error": self.last_error}


class Viewer(Protocol):
    """One dashboard the hub offers its frames to (gateway.dashboard.stream.DashboardClient)."""

    identity: DashboardIdentity

    def offer(self, frame: str) -> None:
        """Queue one update frame (or drop the queue and count a resync when it is full)."""

    def resync(self) -> None:
        """Send a fresh snapshot next, instead of what is queued."""

    def close(self, code: int, reason: str) -> None:
        """Close the connection (without waiting)."""


class Hub:
    """The dashboards' view of the fleet and the fan-out of its changes to the viewers (``clients``).
    ``clock`` (Unix seconds) stamps what the hub records; ``queue_limit`` bounds each viewer's queue."""

    def __init__(self, interval_ms: float, queue_limit: int, dumps: Callable[[Any], str],
                 clock: Callable[[], float] = time.time, latency: Histogram | None = None) -> None:
        self.interval = interval_ms / 1000.0
        self.clock = clock
        self.latency = latency  # device -> dashboard latency (see the module docstring)
        self._received: list[list[ReadingRow]] = []  # the batches committed since the last flush (latency)
        self.queue_limit = queue_limit
        self.dumps = dumps
        self.devices: dict[str, DeviceView] = {}
        self.alerts: dict[int, dict[str, Any]] = {}  # open alerts by id (active, acknowledged, suspended)
        self.clients: set[Viewer] = set()  # the dashboards connected here (gateway/dashboard/stream.py)
        self._dirty: set[str] = set()
        self._events: list[dict[str, Any]] = []
        self._alerts_changed = False
        self._removed: list[str] = []
        self._remote_dirty: set[str] = set()  # peers' devices changed since the last flush
        self._remote_events: list[dict[str, Any]] = []
        self.on_update: Callable[[dict[str, Any]], None] | None = None  # this instance's changes, per flush
        self.resyncs = 0
        self.updates_sent = 0

    def share(self, publish: Callable[[dict[str, Any]], None]) -> None:
        """From now on, this instance's own changes of each flush go to ``publish`` too (the cluster
        room sends them to its peers; see ``on_update`` in the module docstring)."""
        self.on_update = publish

    def now_ms(self) -> int:
        return int(self.clock() * 1000)

    # -- ingestion side (no I/O)
    def view(self, device_id: str) -> DeviceView:
        view = self.devices.get(device_id)
        if view is None:
            view = self.devices[device_id] = DeviceView(device_id)
        return view

    def reading(self, device_id: str, metrics: dict[str, float], time_ms: int) -> None:
        """One reading: each of its metrics becomes the latest unless a newer reading of it was seen.
        Called for every reading of a frame (a Pi agent sends one per sensor)."""
        view = self.view(device_id)
        latest = view.latest
        for name, value in metrics.items():
            entry = latest.get(name)
            if entry is not None:
                if time_ms >= entry[1]:
                    entry[0] = value
                    entry[1] = time_ms
            elif len(latest) < MAX_LATEST_METRICS:  # a device cycling through names cannot grow it
                latest[name] = [value, time_ms]
        view.last_seen = self.now_ms()
        self._dirty.add(device_id)

    def committed(self, rows: list[ReadingRow]) -> None:
        """The commit listener (gateway/fanout.py): every stored reading through ``reading``, and
        its frame's boot id through ``boot``. A reading whose commit failed never gets here."""
        reading = self.reading
        if self.latency is not None and (self.clients or self.on_update is not None):
            self._received.append(rows)  # read at the flush (listeners never change a batch)
        last_device: str | None = None
        last_boot: str | None = None
        for row in rows:
            device = row.device_id
            reading(device, row.metrics, row.time_ms)
            boot = row.boot  # the same object for every reading of a frame: one call per frame
            if boot is not None and (boot is not last_boot or device is not last_device):
                self.boot(device, boot)
                last_device, last_boot = device, boot

    def status(self, device_id: str, fields: dict[str, Any]) -> None:
        """The device's latest status fields (bounded by the core: protocol.gateway.MAX_STATUS_*)."""
        view = self.view(device_id)
        view.status = fields
        self._dirty.add(device_id)

    def boot(self, device_id: str, boot: str) -> None:
        """The boot id of the device's latest data frame."""
        view = self.view(device_id)
        if view.boot != boot:
            view.boot = boot
            self._dirty.add(device_id)

    def device_error(self, device_id: str, code: str, message: str) -> None:
        """The gateway refused a frame of the device (shown as its last error)."""
        view = self.view(device_id)
        view.last_error = {"code": code, "msg": message[:MAX_ERROR_CHARS], "at": self.now_ms()}
        self._dirty.add(device_id)

    def registry(self, records: list[DeviceRecord]) -> None:
        """Make the registered devices, with their labels, what the dashboard lists: new ones appear
        (never connected), changed labels update, deleted ones leave the list once offline."""
        ids = set()
        for record in records:
            ids.add(record.device_id)
            view = self.view(record.device_id)
            if (view.label, view.enabled, view.registered) != (record.label, record.enabled, True):
                view.label, view.enabled, view.registered = record.label, record.enabled, True
                self._dirty.add(record.device_id)
        for device_id, view in list(self.devices.items()):
            if view.registered and device_id not in ids and not view.online:
                del self.devices[device_id]
                self._dirty.discard(device_id)
                self._removed.append(device_id)

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

    def alert_event(self, event: AlertEvent) -> None:
        """The alert engine's listener (gateway/alerts, ``engine.listen``): open alerts by id, dropped
        when cleared; every change is also a dashboard event ``alert_<kind>``."""
        alert = event.alert
        if event.kind == CLEARED:
            self.alerts.pop(alert["id"], None)
        else:
            self.alerts[alert["id"]] = alert
        self._alerts_changed = True
        self._events.append({"kind": f"alert_{event.kind}", "device": alert["device"], "at": event.at,
                             "alert": alert, "by": event.by})

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
        """A peer's changes of one interval (its own devices): latest values, status, boot, last
        error, events. Online flags come from presence (``remote_presence``), not from here; labels
        and the registry from this instance's own registry sync."""
        for device_id, entry in devices.items():
            if not isinstance(device_id, str) or not isinstance(entry, dict):
                continue
            view = self.view(device_id)
            if view.online and view.holder is None:
                continue  # held here now: a late delta of its previous holder is older than ours
            merge_remote(view, entry)
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
            client.resync()

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

    def snapshot_frame(self, identity: DashboardIdentity = ANONYMOUS) -> str:
        """Everything, for one client: with its ``role`` and its token's name (``token``)."""
        return self._encode({
            "t": "snapshot", "time": self.now_ms(), "role": identity.role, "token": identity.name,
            "devices": [view.as_dict() for view in self.devices.values()],
            "alerts": list(self.alerts.values()),
        })

    def flush(self) -> None:
        """Build one update frame from the changes since the last flush and offer it to all."""
        if not (self._dirty or self._events or self._alerts_changed or self._removed or self._remote_dirty
                or self._remote_events):
            return
        devices = {device_id: self.devices[device_id].as_dict() for device_id in self._dirty}
        if self.on_update is not None and (devices or self._events):
            self.on_update({"devices": dict(devices), "events": self._events})  # ours only, not the peers'
        for device_id in self._remote_dirty - self._dirty:
            view = self.devices.get(device_id)
            if view is not None:  # (removed from the registry meanwhile)
                devices[device_id] = view.as_dict()
        events = self._events + self._remote_events if self._remote_events else self._events
        update: dict[str, Any] = {"t": "update", "time": self.now_ms(), "devices": devices}
        if events:
            update["events"] = events
        if self._removed:
            update["removed"] = self._removed
            self._removed = []
        if self._alerts_changed:
            update["alerts"] = list(self.alerts.values())
        self._dirty = set()
        self._events = []
        self._remote_dirty = set()
        self._remote_events = []
        self._alerts_changed = False
        if self._received:
            self._observe_latency()
        if not self.clients:
            return
        frame = self._encode(update)
        self.updates_sent += 1
        for client in self.clients:
            client.offer(frame)

    def _observe_latency(self) -> None:
        batches, self._received = self._received, []
        if self.latency is not None:
            observe_latency(self.latency, batches, self.clock() * 1000.0)

    async def run(self) -> None:
        """Flush every interval, for the gateway's life (a supervised task: gateway/supervisor.py)."""
        while True:
            await asyncio.sleep(self.interval)
            self.flush()

    def close_revoked(self, valid: set[tuple[str, str, bytes]]) -> int:
        """Close the streams of named tokens no longer valid (revoked, or their role changed); given
        the valid (name, role, digest) triples. Returns how many were closed."""
        closed = 0
        for client in list(self.clients):
            identity = client.identity
            if identity.digest is not None and (identity.name, identity.role, identity.digest) not in valid:
                closed += 1
                self.clients.discard(client)
                client.close(wire.CLOSE_AUTH_FAILED, "dashboard token revoked")
        return closed


def merge_remote(view: DeviceView, entry: dict[str, Any]) -> None:
    """A peer's entry of one device (latest values, status, boot, last error, last seen) into ``view``."""
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
    if isinstance(entry.get("boot"), str):
        view.boot = entry["boot"]
    if isinstance(entry.get("last_error"), dict):
        view.last_error = entry["last_error"]
    if type(entry.get("last_seen")) is int and entry["last_seen"] > view.last_seen:
        view.last_seen = entry["last_seen"]


def observe_latency(latency: Histogram, batches: list[list[ReadingRow]], now_ms: float) -> None:
    """Each reading of ``batches`` into ``latency``: the readings of a frame share their receive
    time, so each run of equal ``received_ms`` is one call."""
    observe_n = latency.observe_n
    for rows in batches:
        last = -1
        run = 0
        for row in rows:
            received_ms = row.received_ms
            if received_ms == last:
                run += 1
                continue
            if run:
                observe_n((now_ms - last) / 1000.0, run)
            last, run = received_ms, 1
        if run:
            observe_n((now_ms - last) / 1000.0, run)
