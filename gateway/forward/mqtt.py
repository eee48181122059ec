"""The MQTT bridge: availability, alerts, commands and Home Assistant discovery on one broker.

The readings themselves go out through the MQTT sink (gateway/forward/mqtt_sink.py) and the
Forwarder, from storage. The bridge keeps the broker in step with the gateway (docs/mqtt.md):

- availability of each device, from the gateway's own view (``device_online`` /
  ``device_offline``, called by the gateway's session events), retained;
- the bridge's status: ``online`` (retained) once connected, ``offline`` by the last will
  or at a clean stop;
- Home Assistant discovery configs: one sensor per metric of a device, published when the
  device or a new metric is first seen (``saw_reading``, called for each reading the gateway
  stores, after its commit (gateway/fanout.py): a set lookup per metric), when its label,
  kind or firmware changes, again after every (re)connect (a broker restarted without
  persistence lost them) and whenever Home Assistant announces itself (``online`` on
  ``<discovery prefix>/status``); removed (empty retained payloads) when the device is
  deleted from the registry;
- alert events (``alert_event``) and command results.

These control messages never queue without bound: configs and availability are "dirty" sets
(one entry per device, so repeated changes coalesce and a reconnect re-sends the latest
state), published at most ``CONTROL_WINDOW`` at a time; alert events and command results wait
in a queue of ``EVENT_QUEUE`` messages, and when it is full the oldest is dropped and counted
(``dropped``). Readings never wait here: the Forwarder and the stored cursor hold them.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import Callable
from typing import Any

import orjson

from gateway.forward import discovery
from gateway.forward.discovery import OFFLINE, ONLINE, DeviceInfo, Topics
from gateway.forward.mqtt_commands import CommandGate, RunCommand
from gateway.forward.mqtt_link import Message, MqttLink
from gateway.forward.settings import MqttSettings
from gateway.forward.sink import REFUSED
from gateway.logs import log
from gateway.storage.base import Storage

CONTROL_WINDOW = 200  # control messages (configs, availability, events) published and not yet acked
EVENT_QUEUE = 1000  # alert events and command results waiting for the broker
REGISTRY_REFRESH_S = 60.0  # how often deleted devices and changed labels are looked for

class AlertNotice:
    """An alert change for the bridge: the alert engine's event (``kind``, ``alert`` dict, ``at`` ms)."""

    __slots__ = ("alert", "at", "kind")

    def __init__(self, kind: str, alert: dict[str, Any], at: int) -> None:
        self.kind = kind
        self.alert = alert
        self.at = at


class MqttBridge:
    """See the module docstring. ``authoritative``: this gateway alone knows which devices are online
    (no bus), so devices not connected to it are published ``offline``. ``changed`` is told when the
    connection comes or goes."""

    def __init__(self, settings: MqttSettings, storage: Storage, *, instance: str, version: str,
                 window: int = 2000, run_command: RunCommand | None = None, authoritative: bool = True,
                 clock: Callable[[], float] = time.time, link_factory: Callable[..., MqttLink] = MqttLink) -> None:
        self.settings = settings
        self.storage = storage
        self.instance = instance
        self.version = version
        self.authoritative = authoritative
        self.clock = clock
        self.topics = Topics(settings.prefix, settings.discovery_prefix, instance)
        self.devices: dict[str, DeviceInfo] = {}
        self.online: set[str] = set()
        self.registered: set[str] | None = None  # registry snapshot; None until loaded
        self.labels: dict[str, str] = {}  # registry labels: Home Assistant device names
        self._configs: dict[str, None] = {}  # devices whose configs to publish (ordered, coalesced)
        self._availability: dict[str, None] = {}
        self._removals: dict[str, None] = {}  # topics to clear (empty retained)
        self._published: dict[str, tuple[Any, ...]] = {}  # device -> signature of its configs on the broker
        self._events: deque[tuple[str, bytes]] = deque()
        self._status_due = False  # the bridge's own status and device config
        self._inflight = 0
        self._pump_scheduled = False
        self.gate = CommandGate(run_command, self._answer) if (settings.commands and run_command) else None
        # counters for /metrics
        self.dropped: dict[str, int] = {"alert": 0, "command_result": 0}  # forced drops of control messages
        self.refused: dict[str, int] = {}  # control messages the broker refused, by kind
        self.published: dict[str, int] = {"config": 0, "availability": 0, "removal": 0, "alert": 0,
                                          "command_result": 0}
        self.ha_births = 0
        self.link = link_factory(
            settings.url, client_id=settings.client_id, username=settings.username, password=settings.password,
            ca_file=settings.ca_file, will=(self.topics.status, OFFLINE),
            max_queued=window + CONTROL_WINDOW + 100, on_connect=self._connected,
            on_disconnect=self._disconnected, on_message=self._messages)

    # ------------------------------------------------------------ lifecycle
    async def start(self) -> None:
        """Load the registry and the devices with stored readings, then connect (returns at once)."""
        await self._refresh_registry()
        for device_id, state in (await self.storage.device_states()).items():
            if self.registered is None or device_id in self.registered:
                self._info(device_id).metrics.update(state.latest)
        self.link.start()

    async def stop(self) -> None:
        """Cancel running commands, publish ``offline`` as the bridge's status, disconnect."""
        if self.gate is not None:
            await self.gate.stop()
        await self.link.stop(final=[(self.topics.status, OFFLINE)])

    @property
    def ready(self) -> bool:
        return self.link.connected

    def saw_reading(self, device_id: str, metrics: dict[str, float]) -> None:
        """A reading was stored: a device or metric seen for the first time gets its config."""
        info = self.devices.get(device_id)
        if info is None:
            info = self._info(device_id)
            self._availability[device_id] = None
            self._schedule()
        known = info.metrics
        for name in metrics:
            if name not in known:
                known.add(name)
                self._configs[device_id] = None
                self._schedule()

    def health(self) -> dict[str, Any]:
        return {"state": "ok" if self.link.connected else "connecting", "broker": self.settings.url.display,
                "error": self.link.last_error or None}

    # ------------------------------------------------------------ the gateway's events (sync, never raise)
    def device_online(self, device_id: str) -> None:
        self.online.add(device_id)
        self._info(device_id)
        self._availability[device_id] = None
        self._schedule()

    def device_offline(self, device_id: str) -> None:
        self.online.discard(device_id)
        if device_id in self.devices:
            self._availability[device_id] = None
            self._schedule()

    def device_status(self, device_id: str, status: dict[str, Any]) -> None:
        """A status frame: ``kind`` (esp32 / pi) gives the Home Assistant model, ``fw`` its sw_version."""
        info = self._info(device_id)
        kind, fw = discovery.text_field(status.get("kind")), discovery.text_field(status.get("fw"))
        if (kind and kind != info.kind) or (fw and fw != info.fw):
            info.kind = kind or info.kind
            info.fw = fw or info.fw
            self._configs[device_id] = None
            self._schedule()

    def device_deleted(self, device_id: str) -> None:
        """The device left the registry: its configs, state and availability are cleared on the broker."""
        if self.registered is not None:
            self.registered.discard(device_id)
        info = self.devices.pop(device_id, None)
        self.online.discard(device_id)
        self._configs.pop(device_id, None)
        self._availability.pop(device_id, None)
        self._published.pop(device_id, None)
        for metric in sorted(info.metrics if info else ()):
            self._removals[self.topics.config(device_id, metric)] = None
        self._removals[self.topics.state(device_id)] = None
        self._removals[self.topics.availability(device_id)] = None
        log("mqtt_device_removed", device=device_id)
        self._schedule()

    def alert_event(self, event: Any) -> None:
        """An alert event (alerts-api.md: ``kind``, ``alert`` dict, ``at``): published on ``<device>/alert``."""
        alert = getattr(event, "alert", None)
        if not isinstance(alert, dict) or not isinstance(alert.get("device"), str):
            return
        payload = orjson.dumps({"event": getattr(event, "kind", "changed"), "at": getattr(event, "at", None),
                                "alert": alert}, default=str)
        self._queue_event(self.topics.alert(alert["device"]), payload, "alert")

    # ------------------------------------------------------------ upkeep (a supervised task)
    async def run(self) -> None:
        """Every REGISTRY_REFRESH_S: clear devices deleted from the registry, follow label changes."""
        while True:
            await asyncio.sleep(REGISTRY_REFRESH_S)
            await self._refresh_registry()

    async def _refresh_registry(self) -> None:
        records = await self.storage.list_devices()
        labels = self.labels = {r.device_id: r.label for r in records}
        self.registered = set(labels)
        for device_id in [d for d in self.devices if d not in labels]:
            self.device_deleted(device_id)
        for device_id, info in self.devices.items():
            if labels.get(device_id, "") != info.label:
                info.label = labels.get(device_id, "")
                self._configs[device_id] = None
        self._schedule()

    # ------------------------------------------------------------ connection events (event loop)
    def _connected(self, session_present: bool) -> None:
        subscriptions = []
        if self.settings.discovery:
            subscriptions += [self.topics.ha_status, self.topics.configs]
        if self.gate is not None:
            subscriptions.append(self.topics.commands)
        self.link.subscribe(subscriptions)
        # The broker may have restarted without persistence: send the whole picture again. (Control
        # messages sent before the disconnect are still in paho's queue; it sends them again.)
        self._status_due = True
        self._published.clear()
        self._mark_all()
        self._schedule()

    def _disconnected(self, _reason: str) -> None:
        return None

    def _messages(self, batch: list[Message]) -> None:
        for topic, payload, retained in batch:
            if topic == self.topics.ha_status:
                if payload.strip() == ONLINE:
                    self.ha_births += 1
                    log("mqtt_home_assistant_online", devices=len(self.devices),
                        note="publishing every discovery config again")
                    self._status_due = True
                    self._published.clear()
                    self._mark_all()
                    self._schedule()
                continue
            command = self.topics.command_of(topic)
            if command is not None:
                if self.gate is not None:
                    self.gate.received(command[0], command[1], payload, retained)
                continue
            self._config_seen(topic, payload)

    def _config_seen(self, topic: str, payload: bytes) -> None:
        """A retained config of ours (at subscribe time): remove it if its device is no longer registered."""
        if not payload or self.registered is None:
            return
        try:
            config = orjson.loads(payload)
        except orjson.JSONDecodeError:
            return
        device_id = discovery.device_of_unique_id(config.get("unique_id") if isinstance(config, dict) else None)
        if device_id is not None and device_id not in self.registered and device_id not in self.devices:
            self._removals[topic] = None
            self._removals[self.topics.state(device_id)] = None
            self._removals[self.topics.availability(device_id)] = None
            self._schedule()

    # ------------------------------------------------------------ publishing control messages
    def _info(self, device_id: str) -> DeviceInfo:
        info = self.devices.get(device_id)
        if info is None:
            info = self.devices[device_id] = DeviceInfo(device_id, label=self.labels.get(device_id, ""))
            self._configs[device_id] = None
        return info

    def _mark_all(self) -> None:
        for device_id in self.devices:
            self._configs[device_id] = None
            self._availability[device_id] = None

    def _queue_event(self, topic: str, payload: bytes, kind: str) -> None:
        if len(self._events) >= EVENT_QUEUE:
            old_topic, _ = self._events.popleft()
            dropped_kind = "command_result" if old_topic.endswith("/result") else "alert"
            self.dropped[dropped_kind] += 1
            log("mqtt_event_dropped", logging.WARNING, kind=dropped_kind, queue=EVENT_QUEUE,
                note="the broker has been unreachable; oldest event dropped")
        self._events.append((topic, payload))
        self._schedule()

    def _answer(self, device_id: str, name: str, result: dict[str, Any]) -> None:
        self._queue_event(self.topics.result(device_id, name), orjson.dumps(result, default=str), "command_result")

    def _schedule(self) -> None:
        if not self._pump_scheduled:
            self._pump_scheduled = True
            with contextlib.suppress(RuntimeError):  # no running loop (a sync unit test): pump on the next call
                asyncio.get_running_loop().call_soon(self._pump)
                return
            self._pump_scheduled = False

    def _control_done(self, kind: str, outcome: int) -> None:
        self._inflight -= 1
        if outcome == REFUSED:
            self.refused[kind] = self.refused.get(kind, 0) + 1
            log("mqtt_message_refused", logging.ERROR, kind=kind,
                note="the broker refused it: check its ACLs for the topics in docs/mqtt.md")
        else:
            self.published[kind] += 1
        self._schedule()

    def _publish(self, topic: str, payload: bytes, retain: bool, kind: str) -> bool:
        self._inflight += 1
        if self.link.publish(topic, payload, retain=retain, done=lambda outcome: self._control_done(kind, outcome)):
            return True
        self._inflight -= 1
        return False

    def _pump(self) -> None:
        """Publish control messages while connected and below the window: status, removals, configs,
        availability, then events."""
        self._pump_scheduled = False
        if not self.link.connected:
            return
        if self._status_due:
            if not self._publish(self.topics.status, ONLINE, True, "availability"):
                return
            if self.settings.discovery and not self._publish(
                    self.topics.bridge_config, discovery.encode(discovery.bridge_config(self.topics, self.version)),
                    True, "config"):
                return
            self._status_due = False
        while self._removals and self._inflight < CONTROL_WINDOW:
            topic = next(iter(self._removals))
            if not self._publish(topic, b"", True, "removal"):
                return
            del self._removals[topic]
        if self.settings.discovery:
            while self._configs and self._inflight < CONTROL_WINDOW:
                device_id = next(iter(self._configs))
                if not self._publish_configs(device_id):
                    return
                del self._configs[device_id]
        else:
            self._configs.clear()
        while self._availability and self._inflight < CONTROL_WINDOW:
            device_id = next(iter(self._availability))
            known = device_id in self.devices or device_id in self.online
            if known and (device_id in self.online or self.authoritative):  # else another instance may have it
                state = ONLINE if device_id in self.online else OFFLINE
                if not self._publish(self.topics.availability(device_id), state, True, "availability"):
                    return
            del self._availability[device_id]
        while self._events and self._inflight < CONTROL_WINDOW:
            topic, payload = self._events[0]
            if not self._publish(topic, payload, False, "command_result" if topic.endswith("/result") else "alert"):
                return
            self._events.popleft()

    def _publish_configs(self, device_id: str) -> bool:
        info = self.devices.get(device_id)
        if info is None:
            return True
        signature = (*info.signature(), self.instance)
        if self._published.get(device_id) == signature:
            return True
        for metric in sorted(info.metrics):
            payload = discovery.encode(discovery.sensor_config(info, metric, self.topics, self.version))
            if not self._publish(self.topics.config(device_id, metric), payload, True, "config"):
                return False
        self._published[device_id] = signature
        return True
