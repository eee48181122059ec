"""What the MQTT bridge keeps retained on the broker, device by device (gateway/forward/mqtt.py, docs/mqtt.md).

The discovery configs published (their signature, so an unchanged device is not sent again, and
their topics) and those read back from the broker, an earlier run's included; and the topics to
clear. A device deleted from the registry leaves nothing retained: every config of it, its
availability, status and other topics get an empty retained payload. A config read back for a
device the registry no longer knows is cleared at once.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from gateway.forward import discovery
from gateway.forward.discovery import DeviceInfo, Topics
from gateway.forward.mqtt_control import ControlChannel


class RetainedConfigs:
    """Configs on the broker per device, and the topics to clear (ordered, coalesced)."""

    def __init__(self, topics: Topics, control: ControlChannel) -> None:
        self.topics = topics
        self.control = control
        self.removals: dict[str, None] = {}  # topics to clear (empty retained)
        self.signatures: dict[str, tuple[Any, ...]] = {}  # device -> signature of its configs on the broker
        self.published: dict[str, list[str]] = {}  # device -> its config topics published
        self.on_broker: dict[str, set[str]] = {}  # device -> its config topics read back from the broker

    def send_configs(self, info: DeviceInfo, signature: tuple[Any, ...],
                     configs: Callable[[DeviceInfo], list[tuple[str, dict[str, Any]]]]) -> bool:
        """Publish the device's configs unless those on the broker have this signature; False when the
        link cannot take one now (all of them go again at the next try)."""
        device_id = info.device_id
        if self.signatures.get(device_id) == signature:
            return True
        entries = configs(info)
        for topic, config in entries:
            if not self.control.publish(topic, discovery.encode(config), True, "config"):
                return False
        self.signatures[device_id] = signature
        self.published[device_id] = [topic for topic, _ in entries]
        return True

    def resend(self) -> None:
        """The broker may have lost them (restarted without persistence): every config goes again."""
        self.signatures.clear()

    def device_deleted(self, device_id: str, metrics: Iterable[str]) -> None:
        """Clear every topic of the device: its configs (``metrics``: those it had here) and the others."""
        self.signatures.pop(device_id, None)
        topics = self.published.pop(device_id, [])
        topics += [self.topics.config(device_id, m) for m in sorted(metrics)]
        topics += sorted(self.on_broker.pop(device_id, ()))  # e.g. a switch of an earlier run
        for topic in [*topics, *self.topics.of_device(device_id)]:
            self.removals[topic] = None

    def config_seen(self, topic: str, device_id: str, known: bool) -> bool:
        """A config of ours on the broker (retained ones at subscribe time, then our own as they go out):
        kept in mind if its device is ``known``, else cleared with the device's other topics (True)."""
        if known:
            self.on_broker.setdefault(device_id, set()).add(topic)
            return False
        for stale in [topic, *self.topics.of_device(device_id)]:
            self.removals[stale] = None
        return True

    def send_removals(self) -> bool:
        """Clear topics while the control window has room; False when the link cannot take one now."""
        control = self.control
        while self.removals and control.room:
            topic = next(iter(self.removals))
            if not control.publish(topic, b"", True, "removal"):
                return False
            del self.removals[topic]
        return True
