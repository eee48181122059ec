"""The gateway's forwarding, built from its configuration: the bridge, the sinks and their forwarders.

    forwarding = Forwarding.from_config(config, storage, instance, version, run_command=...)
    await forwarding.start()                  # after storage.open(); connects in the background
    for name, job in forwarding.tasks():      # supervised tasks (forwarders or the worker, the bridge's upkeep)
        supervisor.start(name, job)
    forwarding.committed(rows)                # commit listener (gateway/fanout.py): wakes the
                                              # forwarders, first-seen discovery (cheap)
    forwarding.device_online(device_id) ...   # session events, status frames, deletions, alert events
    forwarding.alerts_open(alerts)            # the open alerts at start (Home Assistant's problem entities)
    await forwarding.close()                  # before storage.close(): cursors stored, leases released

Where the readings are forwarded (``forward_process``):
- ``true`` (default): in the forwarding worker process (gateway/forward/worker.py), so the
  per-reading cost of the brokers' client libraries does not compete with ingestion;
- ``false``: in the gateway's process (the MQTT sink shares the bridge's connection).
The MQTT bridge itself (availability, discovery, alerts, commands) always runs in the
gateway: it follows the gateway's own events. With neither ``mqtt_url`` nor ``nats_url`` set
it is all empty and every call is a no-op.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import signal
import sys
import time
from collections.abc import Awaitable, Callable
from typing import Any

from gateway.backoff import Backoff
from gateway.config import GatewayConfig
from gateway.errors import ConfigError
from gateway.forward.forwarder import Forwarder
from gateway.forward.mqtt_commands import RunCommand
from gateway.forward.settings import MQTT_PORTS, NATS_PORTS, MqttSettings, parse_broker_url
from gateway.forward.sink import Sink
from gateway.logs import log
from gateway.secret_files import read_secret
from gateway.storage.base import ReadingRow, Storage

CLUSTER_EXTRA = "install the cluster extra: pip install 'edgewire[cluster]' (nats-py)"
WORKER_STOP_S = 20.0  # the worker drains (up to 5 s), stores its cursors and releases its leases


def lease_owner(instance: str) -> str:
    """This process's name in the forwarding leases: ``<instance>/<pid>`` (storage.base.claim_sink)."""
    return f"{instance}/{os.getpid()}"


def mqtt_settings(config: GatewayConfig, instance: str) -> MqttSettings:
    url = parse_broker_url("mqtt_url", config.mqtt_url, MQTT_PORTS)
    password = read_secret(config.mqtt_password_file, "mqtt_password_file") \
        if config.mqtt_password_file else url.password
    if config.mqtt_ca_file and not url.tls:
        raise ConfigError("mqtt_ca_file: set, but mqtt_url is not mqtts://; use mqtts:// or drop mqtt_ca_file")
    return MqttSettings(url=url, client_id=config.mqtt_client_id or f"edgewire-{instance}",
                        username=config.mqtt_username or url.username, password=password,
                        ca_file=config.mqtt_ca_file, prefix=config.mqtt_prefix, discovery=config.mqtt_discovery,
                        discovery_prefix=config.mqtt_discovery_prefix, commands=config.mqtt_commands)


def nats_sink(config: GatewayConfig, instance: str) -> Sink:
    try:
        from gateway.forward.nats import NatsSink
    except ImportError as err:
        raise ConfigError(f"nats_url: needs {err.name}: {CLUSTER_EXTRA}") from None
    return NatsSink(parse_broker_url("nats_url", config.nats_url, NATS_PORTS), stream=config.nats_stream,
                    subject_prefix=config.nats_subject_prefix, max_age_s=config.readings_retention_days * 86_400.0,
                    window=config.forward_window, client_name=f"edgewire-{instance}")


WORKER_KEYS = ("data_dir", "storage", "db_path", "commit_interval_ms", "synchronous", "readings_retention_days",
               "rollup_retention_days", "log_level", "log_format", "instance_id", "bus", "mqtt_url", "mqtt_username",
               "mqtt_password_file", "mqtt_ca_file", "mqtt_client_id", "mqtt_prefix", "mqtt_discovery",
               "mqtt_discovery_prefix", "mqtt_commands", "nats_url", "nats_stream", "nats_subject_prefix",
               "forward_window")


def worker_settings(config: GatewayConfig, instance: str) -> dict[str, Any]:
    """The JSON line the gateway sends the worker."""
    return {"config": {key: getattr(config, key) for key in WORKER_KEYS}, "instance": instance}


def sink_names(config: GatewayConfig) -> list[str]:
    return [name for name, url in (("mqtt", config.mqtt_url), ("nats", config.nats_url)) if url]


def _parked(job: Callable[[], Awaitable[None]]) -> Callable[[], Awaitable[None]]:
    async def run() -> None:
        await job()
        await asyncio.Event().wait()  # ended by close(): wait to be cancelled with the other tasks

    return run


class ForwardWorker:
    """The forwarding worker process, seen from the gateway: started, restarted if it dies, stopped."""

    def __init__(self, config: GatewayConfig, instance: str) -> None:
        self.spec = json.dumps(worker_settings(config, instance)) + "\n"
        self.stats: list[dict[str, Any]] = []
        self.queue_full = 0
        self.restarts = 0
        self.up = False
        self.process: asyncio.subprocess.Process | None = None
        self._closing = False

    async def run(self) -> None:
        """Run the worker until ``close``; a worker that exits is started again (backoff 1 s doubling to 30 s)."""
        backoff = Backoff(1.0, 30.0)
        while not self._closing:
            started = time.monotonic()
            code = await self._run_once()
            if self._closing:
                return
            self.restarts += 1
            if time.monotonic() - started > 60:
                backoff.reset()
            delay = backoff.next_s()
            log("forward_worker_exited", logging.ERROR, exit_code=code, restart_in_s=delay,
                note="its log lines above say why; readings are forwarded from the stored cursors after the restart")
            await asyncio.sleep(delay)

    async def _run_once(self) -> int:
        process = self.process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "gateway.forward.worker", stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE, stderr=None)
        assert process.stdin is not None and process.stdout is not None
        process.stdin.write(self.spec.encode())
        with contextlib.suppress(ConnectionError):
            await process.stdin.drain()
        # stdin stays open: when the gateway goes away, however it ends, the worker sees end of file.
        async for raw in process.stdout:
            with contextlib.suppress(ValueError, KeyError, TypeError):
                status = json.loads(raw)
                self.stats = list(status["stats"])
                self.queue_full = int(status.get("queue_full", 0))
                self.up = True
        self.up = False
        return await process.wait()

    async def close(self) -> None:
        """Ask the worker to stop (it stores its cursors and releases its leases); kill it if it hangs."""
        self._closing = True
        process = self.process
        if process is None or process.returncode is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            process.send_signal(signal.SIGTERM)
        try:
            await asyncio.wait_for(process.wait(), WORKER_STOP_S)
        except TimeoutError:
            log("forward_worker_killed", logging.WARNING, note="it did not stop in time; its cursors are as stored")
            with contextlib.suppress(ProcessLookupError):
                process.kill()
            await process.wait()
        if process.stdin is not None:
            process.stdin.close()


class Forwarding:
    """This gateway's forwarding: the bridge's hooks, and the forwarders (here or in the worker)."""

    def __init__(self, storage: Storage, forwarders: list[Forwarder], bridge: Any = None,
                 worker: ForwardWorker | None = None, sinks: list[str] | None = None,
                 lag_degraded_s: float = 0.0) -> None:
        self.storage = storage
        self.lag_degraded_s = lag_degraded_s  # /healthz: "degraded" past this lag (0 = never)
        self.forwarders = forwarders
        self.bridge = bridge  # MqttBridge or None
        self.worker = worker
        self.sink_names = sinks if sinks is not None else [f.name for f in forwarders]

    @classmethod
    def from_config(cls, config: GatewayConfig, storage: Storage, instance: str, version: str,
                    run_command: RunCommand | None = None) -> Forwarding:
        bridge = None
        forwarders: list[Forwarder] = []
        if config.mqtt_url:
            from gateway.forward.mqtt import MqttBridge
            from gateway.forward.mqtt_sink import MqttSink

            bridge = MqttBridge(mqtt_settings(config, instance), storage, instance=instance, version=version,
                                window=config.forward_window, run_command=run_command, authoritative=not config.bus,
                                table=config.metric_table())
            if not config.forward_process:
                forwarders.append(Forwarder(MqttSink(bridge.link, bridge.topics), storage, lease_owner(instance),
                                            window=config.forward_window))
        if config.nats_url:
            sink = nats_sink(config, instance)  # checks nats-py is there, in both modes
            if not config.forward_process:
                forwarders.append(Forwarder(sink, storage, lease_owner(instance), window=config.forward_window))
        names = sink_names(config)
        worker = ForwardWorker(config, instance) if config.forward_process and names else None
        return cls(storage, forwarders, bridge, worker, names, config.forward_lag_degraded_s)

    async def start(self) -> None:
        """Register the sinks (the forward log is written from now on), start connecting (returns at once)."""
        now_ms = int(time.time() * 1000)
        for name in self.sink_names:
            await self.storage.register_sink(name, now_ms)
        known = {c.sink for c in await self.storage.sink_cursors()}
        for stale in sorted(known - set(self.sink_names)):
            log("forward_stale_cursor", logging.WARNING, sink=stale,
                note=f"no {stale} sink is configured, but its cursor holds the forward log back; "
                     f"if it is gone for good: python -m gateway forward forget {stale}")
        if self.bridge is not None:
            await self.bridge.start()
        for forwarder in self.forwarders:
            await forwarder.sink.start()  # the in-process MQTT sink uses the bridge's connection: a no-op

    def tasks(self) -> list[tuple[str, Callable[[], Awaitable[None]]]]:
        """Jobs for the gateway's supervisor. They run until cancelled: a forwarder or the worker that
        ``close`` ended waits there, so the supervisor never takes the end for a failure."""
        jobs: list[tuple[str, Callable[[], Awaitable[None]]]] = [(f"forward_{f.name}", _parked(f.run))
                                                                  for f in self.forwarders]
        if self.worker is not None:
            jobs.append(("forward_worker", _parked(self.worker.run)))
        if self.bridge is not None:
            jobs.append(("mqtt_upkeep", self.bridge.run))
        return jobs

    async def close(self) -> None:
        """Stop the forwarders or the worker (cursors stored, leases released), then disconnect."""
        for forwarder in self.forwarders:
            await forwarder.close()
        if self.worker is not None:
            await self.worker.close()
        for forwarder in self.forwarders:
            await forwarder.sink.stop()
        if self.bridge is not None:
            await self.bridge.stop()

    def health(self) -> dict[str, Any]:
        """For /healthz: each sink's connection, state and lag, and the bridge's; {} without forwarding.
        ``state``: ``degraded`` while a sink's lag (the oldest reading stored and not yet forwarded)
        is above ``lag_degraded_s``, else ``connecting`` until every sink and the bridge are
        connected, else ``ok``."""
        if not self.sink_names and self.bridge is None:
            return {}
        sinks = {s["sink"]: {"connected": bool(s["connected"]), "state": s["state"], "lag_s": s["lag_s"]}
                 for s in self.stats()}
        out: dict[str, Any] = {"sinks": sinks}
        if self.worker is not None:
            out["worker"] = "running" if self.worker.up else "starting"
        if self.bridge is not None:
            out["mqtt_bridge"] = self.bridge.health()
        connected = all(s["connected"] for s in sinks.values()) and (self.bridge is None or self.bridge.ready)
        behind = sorted(name for name, s in sinks.items()
                        if self.lag_degraded_s and float(s["lag_s"]) > self.lag_degraded_s)
        if behind:
            out["state"] = "degraded"
            out["behind"] = behind
            out["lag_degraded_s"] = self.lag_degraded_s
        else:
            out["state"] = "ok" if connected and len(sinks) == len(self.sink_names) else "connecting"
        return out

    def stats(self, now: float | None = None) -> list[dict[str, Any]]:
        if self.worker is not None:
            return self.worker.stats
        return [f.stats(now) for f in self.forwarders]

    def queue_full(self) -> int | None:
        if self.worker is not None:
            return self.worker.queue_full if "mqtt" in self.sink_names else None
        return self.bridge.link.refused_publishes if self.bridge is not None else None

    def wake(self) -> None:
        for forwarder in self.forwarders:
            forwarder.wake()

    def committed(self, rows: list[ReadingRow]) -> None:
        """The commit listener (gateway/fanout.py): rows were stored. The forwarders read them from
        the forward log; the bridge's discovery sees every device and metric (first seen: config)."""
        self.wake()
        if self.bridge is not None:
            saw = self.bridge.saw_reading
            for row in rows:
                saw(row.device_id, row.metrics)

    def saw_reading(self, device_id: str, metrics: dict[str, float]) -> None:
        """One stored reading of another worker (gateway/alerts/relay.py), for the bridge's discovery."""
        if self.bridge is not None:
            self.bridge.saw_reading(device_id, metrics)

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

    def alerts_open(self, alerts: list[dict[str, Any]]) -> None:
        """The alert engine's open alerts at start (their changes follow as events)."""
        if self.bridge is not None:
            self.bridge.alerts_open(alerts)


class RelayedForwarding(Forwarding):
    """A worker that is not the owner (gateway/alerts/relay.py): the bridge's hooks go to worker 1,
    whose bridge and forwarders are the gateway's (one MQTT client, one cursor per sink)."""

    def __init__(self, storage: Storage, relay: Callable[[str, list[Any]], None]) -> None:
        super().__init__(storage, [])
        self.relay = relay

    async def start(self) -> None:
        """Nothing to start: the owner registered the sinks (the host did, before any worker)."""

    def committed(self, rows: list[ReadingRow]) -> None:
        """Nothing here: the rows reach the owner with the alert relay's readings (its bridge sees them
        there), and its readings forwarders poll the forward log."""

    def device_online(self, device_id: str) -> None:
        self.relay("device_online", [device_id])

    def device_offline(self, device_id: str) -> None:
        self.relay("device_offline", [device_id])

    def device_status(self, device_id: str, status: dict[str, Any]) -> None:
        self.relay("device_status", [device_id, status])

    def device_deleted(self, device_id: str) -> None:
        self.relay("device_deleted", [device_id])

