"""The gateway's forwarding, built from its configuration: the sinks, their forwarders, the bridge.

    forwarding = Forwarding.from_config(config, storage, instance, version, run_command=...)
    await forwarding.start()                  # after storage.open(); connects in the background
    for name, job in forwarding.tasks():      # supervised tasks: the forwarders, the bridge's upkeep
        supervisor.start(name, job)
    forwarding.wake()                         # after each group commit (cheap)
    forwarding.device_online(device_id) ...   # session events, status frames, deletions, alert events
    await forwarding.close()                  # before storage.close(): cursors stored, leases released

With neither ``mqtt_url`` nor ``nats_url`` set it is empty and every call is a no-op.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from gateway.config import GatewayConfig
from gateway.errors import ConfigError
from gateway.forward.forwarder import Forwarder
from gateway.forward.mqtt_commands import RunCommand
from gateway.forward.settings import MQTT_PORTS, NATS_PORTS, MqttSettings, parse_broker_url, read_password_file
from gateway.forward.sink import Sink
from gateway.storage.base import Storage

CLUSTER_EXTRA = "install the cluster extra: pip install 'edgewire[cluster]' (nats-py)"


def mqtt_settings(config: GatewayConfig, instance: str) -> MqttSettings:
    url = parse_broker_url("mqtt_url", config.mqtt_url, MQTT_PORTS)
    password = read_password_file("mqtt_password_file", config.mqtt_password_file) \
        if config.mqtt_password_file else url.password
    if config.mqtt_ca_file and not url.tls:
        raise ConfigError("mqtt_ca_file: set, but mqtt_url is not mqtts://; use mqtts:// or drop mqtt_ca_file")
    return MqttSettings(url=url, client_id=config.mqtt_client_id or f"edgewire-{instance}",
                        username=config.mqtt_username or url.username, password=password,
                        ca_file=config.mqtt_ca_file, prefix=config.mqtt_prefix, discovery=config.mqtt_discovery,
                        discovery_prefix=config.mqtt_discovery_prefix, commands=config.mqtt_commands)


class Forwarding:
    """Every sink of this gateway with its forwarder; the MQTT bridge's event hooks."""

    def __init__(self, storage: Storage, forwarders: list[Forwarder], bridge: Any = None) -> None:
        self.storage = storage
        self.forwarders = forwarders
        self.bridge = bridge  # MqttBridge or None

    @classmethod
    def from_config(cls, config: GatewayConfig, storage: Storage, instance: str, version: str,
                    run_command: RunCommand | None = None) -> Forwarding:
        forwarders: list[Forwarder] = []
        bridge = None
        if config.mqtt_url:
            from gateway.forward.mqtt import MqttBridge

            bridge = MqttBridge(mqtt_settings(config, instance), storage, instance=instance, version=version,
                                window=config.forward_window, run_command=run_command,
                                authoritative=not config.bus)
            forwarders.append(Forwarder(bridge, storage, instance, window=config.forward_window))
        if config.nats_url:
            try:
                from gateway.forward.nats import NatsSink
            except ImportError as err:
                raise ConfigError(f"nats_url: needs {err.name}: {CLUSTER_EXTRA}") from None
            sink = NatsSink(parse_broker_url("nats_url", config.nats_url, NATS_PORTS), stream=config.nats_stream,
                            subject_prefix=config.nats_subject_prefix,
                            max_age_s=config.readings_retention_days * 86_400.0, window=config.forward_window,
                            client_name=f"edgewire-{instance}")
            forwarders.append(Forwarder(sink, storage, instance, window=config.forward_window))
        return cls(storage, forwarders, bridge)

    @property
    def sinks(self) -> list[Sink]:
        return [f.sink for f in self.forwarders]

    async def start(self) -> None:
        """Start every sink connecting (returns at once). Warns about cursors of sinks no longer configured."""
        for sink in self.sinks:
            await sink.start()

    def tasks(self) -> list[tuple[str, Callable[[], Awaitable[None]]]]:
        jobs: list[tuple[str, Callable[[], Awaitable[None]]]] = [(f"forward_{f.name}", f.run)
                                                                  for f in self.forwarders]
        if self.bridge is not None:
            jobs.append(("mqtt_upkeep", self.bridge.run))
        return jobs

    async def close(self) -> None:
        """Stop the forwarders (cursors stored, leases released), then disconnect the sinks."""
        for forwarder in self.forwarders:
            await forwarder.close()
        for sink in self.sinks:
            await sink.stop()

    def wake(self) -> None:
        for forwarder in self.forwarders:
            forwarder.wake()

    # -- the bridge's hooks (no-ops without MQTT)
    def device_online(self, device_id: str) -> None:
        if self.bridge is not None:
            self.bridge.device_online(device_id)

    def device_offline(self, device_id: str) -> None:
        if self.bridge is not None:
            self.bridge.device_offline(device_id)

    def device_status(self, device_id: str, status: dict[str, Any]) -> None:
        if self.bridge is not None:
            self.bridge.device_status(device_id, status)

    def device_deleted(self, device_id: str) -> None:
        if self.bridge is not None:
            self.bridge.device_deleted(device_id)

    def alert_event(self, event: Any) -> None:
        if self.bridge is not None:
            self.bridge.alert_event(event)
