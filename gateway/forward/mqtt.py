"""The MQTT bridge: availability, alerts, commands and Home Assistant discovery on one broker.

The readings themselves go out through the MQTT sink (gateway/forward/mqtt_sink.py) and the
Forwarder, from storage. The bridge keeps the broker in step with the gateway (docs/mqtt.md):

- availability of each device, from the gateway's own view (``device_online`` /
  ``device_offline``, called by the gateway's session events), retained;
- the bridge's status: ``online`` (retained) once connected, ``offline`` by the last will
  or at a clean stop;
- Home Assistant discovery configs (gateway/forward/ha_entities.py): one sensor per metric of
  a device, a problem sensor for its open alerts, diagnostics from its status frames and, with
  ``mqtt_commands``, buttons, a number and switches; published when the device or a new
  metric, health field or output is first seen (``saw_reading``, called for each reading the
  gateway stores, after its commit (gateway/fanout.py): a set lookup per metric; ``device_status``),
  when its label, kind or
  firmware changes, again after every (re)connect (a broker restarted without persistence
  lost them) and whenever Home Assistant announces itself (``online`` on
  ``<discovery prefix>/status``); removed (empty retained payloads) when the device is deleted
  from the registry (every config of it: those published here and those read back from the
  broker, an earlier run's included: gateway/forward/mqtt_retained.py). A device the registry
  snapshot does not know yet (added since) has its label looked up before its first config goes
  out, so Home Assistant names it right at once;
- each device's status (open alerts, health, outputs), retained, for those entities;
- alert events (``alert_event``) and command results.

These control messages never queue without bound (gateway/forward/mqtt_control.py): configs,
availability and status are "dirty" sets (one entry per device, so repeated changes coalesce
and a reconnect re-sends the latest state); alert events and command results wait in a
bounded queue. Readings never wait here: the Forwarder and the stored cursor hold them.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from typing import Any

import orjson

from gateway.errors import StorageError
from gateway.forward import discovery, ha_entities
from gateway.forward.discovery import OFFLINE, ONLINE, DeviceInfo, Topics
from gateway.forward.mqtt_commands import CommandGate, RunCommand
from gateway.forward.mqtt_control import ControlChannel
from gateway.forward.mqtt_link import Message, MqttLink
from gateway.forward.mqtt_retained import RetainedConfigs
from gateway.forward.settings import MqttSettings
from gateway.logs import log
from gateway.metric_table import BUILT_IN, MetricTable
from gateway.storage.base import DeviceData

REGISTRY_REFRESH_S = 60.0  # how often deleted devices and changed labels are looked for
QUEUE_ROOM = 300  # paho's queue beyond the forwarding window: control messages and their window


class AlertNotice:
    """An alert change for the bridge: the alert engine's event (``kind``, ``alert`` dict, ``at`` ms)."""

    __slots__ = ("alert", "at", "kind")

    def __init__(self, kind: str, alert: dict[str, Any], at: int) -> None:
        self.kind = kind
        self.alert = alert
        self.at = at


class MqttBridge:
    """See the module docstring. ``authoritative``: this gateway alone knows which devices are online
    (no bus), so devices not connected to it are published ``offline``. ``table``: the gateway's
    metric table (units, classes of the sensors)."""

    def __init__(self, settings: MqttSettings, storage: DeviceData, *, instance: str, version: str,
                 window: int = 2000, run_command: RunCommand | None = None, authoritative: bool = True,
                 table: MetricTable = BUILT_IN, clock: Callable[[], float] = time.time,
                 link_factory: Callable[..., MqttLink] = MqttLink) -> None:
        self.settings = settings
        self.storage = storage
        self.instance = instance
        self.version = version
        self.authoritative = authoritative
        self.table = table
        self.clock = clock
        self.topics = Topics(settings.prefix, settings.discovery_prefix, instance)
        self.devices: dict[str, DeviceInfo] = {}
        self.online: set[str] = set()
        self.registered: set[str] | None = None  # registry snapshot; None until loaded
        self.labels: dict[str, str] = {}  # registry labels: part of the Home Assistant device names
        self._lookups: dict[str, asyncio.Task[None]] = {}  # label lookups of devices new since the snapshot
        self._configs: dict[str, None] = {}  # devices whose configs to publish (ordered, coalesced)
        self._availability: dict[str, None] = {}
        self._statuses: dict[str, None] = {}  # devices whose status (alerts, health, outputs) to publish
        self._status_due = False  # the bridge's own status and device config
        self._pump_scheduled = False
        self.gate = CommandGate(run_command, self._answer, done=self._command_done) \
            if (settings.commands and run_command) else None
        self.ha_births = 0
        self.link = link_factory(
            settings.url, client_id=settings.client_id, username=settings.username, password=settings.password,
            ca_file=settings.ca_file, will=(self.topics.status, OFFLINE), max_queued=window + QUEUE_ROOM,
            on_connect=self._connected, on_disconnect=lambda _reason: None, on_message=self._messages)
        self.control = ControlChannel(self.link, self._schedule)  # and its counters, for /metrics
        self.retained = RetainedConfigs(self.topics, self.control)  # configs on the broker, topics to clear

    # ------------------------------------------------------------ lifecycle
    async def start(self) -> None:
        """Load the registry and the devices with stored readings, then connect (returns at once)."""
        await self._refresh_registry()
        for device_id, state in (await self.storage.device_states()).items():
            if self.registered is None or device_id in self.registered:
                self._info(device_id).metrics.update(state.latest)
        self.link.start()

    async def stop(self) -> None:
        """Cancel running commands and lookups, publish ``offline`` as the bridge's status, disconnect."""
        if self.gate is not None:
            await self.gate.stop()
        for task in list(self._lookups.values()):
            task.cancel()
        await asyncio.gather(*self._lookups.values(), return_exceptions=True)
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
        """A status frame: ``kind`` (esp32 / pi) gives the Home Assistant model, ``fw`` its sw_version; its
        health fields and outputs feed the diagnostic entities and the switches."""
        if ha_entities.apply_status(self._info(device_id), status):
            self._configs[device_id] = None
        self._statuses[device_id] = None
        self._schedule()

    def alert_event(self, event: Any) -> None:
        """An alert event (alerts-api.md: ``kind``, ``alert`` dict, ``at``): published on ``<device>/alert``;
        the device's problem entity follows its open alerts."""
        alert = getattr(event, "alert", None)
        if not isinstance(alert, dict) or not isinstance(alert.get("device"), str):
            return
        payload = orjson.dumps({"event": getattr(event, "kind", "changed"), "at": getattr(event, "at", None),
                                "alert": alert}, default=str)
        self.control.queue_event(self.topics.alert(alert["device"]), payload)
        self.alerts_open([alert])

    def alerts_open(self, alerts: list[dict[str, Any]]) -> None:
        """Alerts as they are now (the engine's open ones at start, then each change): the problem entities."""
        for alert in alerts:
            device_id = alert.get("device")
            if not isinstance(device_id, str) or (device_id not in self.devices and (  # e.g. cleared as deleted
                    alert.get("state") == "cleared" or self.registered is None or device_id not in self.registered)):
                continue
            if ha_entities.apply_alert(self._info(device_id), alert):
                self._statuses[device_id] = None
        self._schedule()

    def device_deleted(self, device_id: str) -> None:
        """The device left the registry: its configs, state and availability are cleared on the broker."""
        if self.registered is not None:
            self.registered.discard(device_id)
        info = self.devices.pop(device_id, None)
        self.online.discard(device_id)
        for pending in (self._configs, self._availability, self._statuses):
            pending.pop(device_id, None)
        self.retained.device_deleted(device_id, info.metrics if info else ())
        log("mqtt_device_removed", device=device_id)
        self._schedule()

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
        for device_id in [d for d in self.devices if d not in labels and d not in self._lookups]:
            self.device_deleted(device_id)
        for device_id, info in self.devices.items():
            if device_id in labels and labels[device_id] != info.label:
                info.label = labels[device_id]
                self._configs[device_id] = None
        self._schedule()

    async def _look_up(self, device_id: str) -> None:
        """A device the registry snapshot does not know: its label before its first config."""
        try:
            record = await self.storage.get_device(device_id)
        except StorageError as err:  # named by its id meanwhile; the next refresh corrects it
            log("mqtt_label_lookup_failed", logging.WARNING, device=device_id, error=str(err)[:200])
            record = None
        finally:
            self._lookups.pop(device_id, None)
        info = self.devices.get(device_id)
        if info is not None and record is None:
            self.device_deleted(device_id)  # not registered (any more): nothing of it on the broker
        elif info is not None and record is not None:
            info.label = self.labels[device_id] = record.label
            if self.registered is not None:
                self.registered.add(device_id)
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
        self._resend_all()

    def _resend_all(self) -> None:
        self._status_due = True
        self.retained.resend()
        for device_id in self.devices:
            self._configs[device_id] = None
            self._availability[device_id] = None
            self._statuses[device_id] = None
        self._schedule()

    def _messages(self, batch: list[Message]) -> None:
        for topic, payload, retained in batch:
            if topic == self.topics.ha_status:
                if payload.strip() == ONLINE:
                    self.ha_births += 1
                    log("mqtt_home_assistant_online", devices=len(self.devices),
                        note="publishing every discovery config again")
                    self._resend_all()
                continue
            command = self.topics.command_of(topic)
            if command is not None:
                if self.gate is not None:
                    self.gate.received(command[0], command[1], payload, retained)
                continue
            # A config of ours: cleared if its device is no longer registered, else kept in mind, so removing
            # the device clears every entity the broker holds for it, those of an earlier run included.
            device_id = discovery.device_of_config(payload)
            if device_id is None:
                continue
            gone = self.registered is not None and device_id not in self.registered and device_id not in self.devices
            if self.retained.config_seen(topic, device_id, known=not gone):
                self._schedule()

    # ------------------------------------------------------------ publishing control messages
    def _info(self, device_id: str) -> DeviceInfo:
        info = self.devices.get(device_id)
        if info is None:
            info = self.devices[device_id] = DeviceInfo(device_id, label=self.labels.get(device_id, ""))
            self._configs[device_id] = None
            if self.registered is not None and device_id not in self.registered:
                with contextlib.suppress(RuntimeError):  # no running loop (a sync unit test): the refresh names it
                    self._lookups[device_id] = asyncio.get_running_loop().create_task(self._look_up(device_id))
        return info

    def _answer(self, device_id: str, name: str, result: dict[str, Any]) -> None:
        self.control.queue_event(self.topics.result(device_id, name), orjson.dumps(result, default=str))

    def _command_done(self, device_id: str, name: str, args: dict[str, Any]) -> None:
        """A command the device carried out: a switched output shows its new state at once."""
        info = self.devices.get(device_id)
        if name == "set_output" and info is not None and args.get("output") in info.outputs:
            info.outputs[args["output"]] = bool(args.get("on"))
            self._statuses[device_id] = None
            self._schedule()

    def _schedule(self) -> None:
        if not self._pump_scheduled:
            self._pump_scheduled = True
            with contextlib.suppress(RuntimeError):  # no running loop (a sync unit test): pump on the next call
                asyncio.get_running_loop().call_soon(self._pump)
                return
            self._pump_scheduled = False

    def _pump(self) -> None:
        """Publish control messages while connected and below the window: status, removals, configs,
        availability, device status, then events."""
        self._pump_scheduled = False
        if not self.link.connected:
            return
        publish, control = self.control.publish, self.control
        if self._status_due:
            if not publish(self.topics.status, ONLINE, True, "availability"):
                return
            if self.settings.discovery and not publish(
                    self.topics.bridge_config, discovery.encode(discovery.bridge_config(self.topics, self.version)),
                    True, "config"):
                return
            self._status_due = False
        if not self.retained.send_removals():
            return
        if self.settings.discovery:
            for device_id in list(self._configs):
                if not control.room:
                    break
                if device_id in self._lookups:  # its label first
                    continue
                if not self._publish_configs(device_id):
                    return
                del self._configs[device_id]
        else:
            self._configs.clear()
        while self._availability and control.room:
            device_id = next(iter(self._availability))
            known = device_id in self.devices or device_id in self.online
            if known and (device_id in self.online or self.authoritative):  # else another instance may have it
                state = ONLINE if device_id in self.online else OFFLINE
                if not publish(self.topics.availability(device_id), state, True, "availability"):
                    return
            del self._availability[device_id]
        while self._statuses and control.room:
            device_id = next(iter(self._statuses))
            info = self.devices.get(device_id)
            if info is not None and not publish(self.topics.status_of(device_id),
                                                discovery.encode(ha_entities.status_payload(info)), True, "status"):
                return
            del self._statuses[device_id]
        control.send_events()

    def _publish_configs(self, device_id: str) -> bool:
        info = self.devices.get(device_id)
        return info is None or self.retained.send_configs(info, (*info.signature(), self.instance), self._entities)

    def _entities(self, info: DeviceInfo) -> list[tuple[str, dict[str, Any]]]:
        return ha_entities.entity_configs(info, self.topics, self.version, self.table, self.gate is not None)
