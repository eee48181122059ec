"""The forwarding worker: the readings forwarders in a process of their own (``forward_process = true``).

Forwarding costs CPU per reading (paho-mqtt's own share is about 45 µs per message,
docs/performance.md); in the gateway's process it would compete with ingestion for the one
core a Python process can use. So the gateway (ForwardWorker, below) starts
``python -m gateway.forward.worker``, which opens the same storage, runs a Forwarder per
sink (the MQTT sink on a connection of its own, client id ``<mqtt client id>-readings``, and
the NATS sink) and looks for new readings every ``POLL_S``.

The protocol with the gateway, over pipes:
- stdin: one JSON line, the settings (``WORKER_KEYS`` of the gateway's configuration, and the
  instance id); then nothing. End of file (the gateway stopped, or was killed) stops the worker:
  the forwarders wait for what is in flight (bounded), store their cursors, release their leases.
- stdout: a JSON line every second, ``{"stats": [per sink], "queue_full": n}`` (gateway/forward/
  metrics.py shows it on the gateway's /metrics).
- stderr: the log, in the gateway's format.
SIGTERM stops it the same way as end of file.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import signal
import sys
import threading
import time
from typing import Any

from gateway.config import GatewayConfig, load_config
from gateway.errors import GatewayError
from gateway.forward.forwarder import Forwarder
from gateway.forward.mqtt_link import MqttLink
from gateway.forward.setup import lease_owner, mqtt_settings, nats_sink
from gateway.logs import log, setup_logging
from gateway.storage.backends import open_storage
from gateway.storage.base import Storage

POLL_S = 0.05  # how often the worker looks for new readings (the gateway cannot wake it)
STATS_S = 1.0
def build_forwarders(config: GatewayConfig, storage: Storage, instance: str) -> list[Forwarder]:
    """The readings forwarders of the worker: each sink on a connection of its own."""
    from gateway.forward.discovery import Topics
    from gateway.forward.mqtt_sink import MqttSink

    forwarders: list[Forwarder] = []
    if config.mqtt_url:
        settings = mqtt_settings(config, instance)
        link = MqttLink(settings.url, client_id=f"{settings.client_id}-readings", username=settings.username,
                        password=settings.password, ca_file=settings.ca_file,
                        max_queued=config.forward_window + 100, on_connect=_nothing, on_disconnect=_nothing,
                        on_message=_nothing)
        sink = MqttSink(link, Topics(settings.prefix, settings.discovery_prefix, instance), own_link=True)
        forwarders.append(Forwarder(sink, storage, lease_owner(instance), window=config.forward_window, poll_s=POLL_S))
    if config.nats_url:
        forwarders.append(Forwarder(nats_sink(config, instance), storage, lease_owner(instance),
                                    window=config.forward_window, poll_s=POLL_S))
    return forwarders


def _nothing(*_args: Any) -> None:
    return None


async def run(spec: dict[str, Any]) -> int:
    config = load_config(env={}, overrides=spec["config"])
    instance = str(spec["instance"])
    setup_logging(config.log_level, config.log_format)
    storage = open_storage(config)
    await storage.open()
    forwarders = build_forwarders(config, storage, instance)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)

    def watch_stdin() -> None:  # returns at end of file: the gateway stopped or is gone
        sys.stdin.read()
        with contextlib.suppress(RuntimeError):
            loop.call_soon_threadsafe(stop.set)

    threading.Thread(target=watch_stdin, name="ew-forward-stdin", daemon=True).start()
    tasks = []
    try:
        for forwarder in forwarders:
            await forwarder.sink.start()
            tasks.append(loop.create_task(forwarder.run()))
        log("forward_worker_started", sinks=[f.name for f in forwarders], instance=instance)
        while not stop.is_set():
            _report(forwarders)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), STATS_S)
    finally:
        for forwarder in forwarders:
            await forwarder.close()
        for task in tasks:
            with contextlib.suppress(Exception):
                await task
        for forwarder in forwarders:
            await forwarder.sink.stop()
        _report(forwarders)
        await storage.close()
        log("forward_worker_stopped", instance=instance)
    return 0


def _report(forwarders: list[Forwarder]) -> None:
    now = time.time()
    queue_full = sum(getattr(getattr(f.sink, "link", None), "refused_publishes", 0) for f in forwarders)
    line = json.dumps({"stats": [f.stats(now) for f in forwarders], "queue_full": queue_full})
    with contextlib.suppress(BrokenPipeError):
        sys.stdout.write(line + "\n")
        sys.stdout.flush()


def main() -> int:
    line = sys.stdin.readline()
    try:
        spec = json.loads(line)
    except ValueError:
        print("error: gateway.forward.worker is started by the gateway (forward_process = true), "
              "which sends its settings on stdin", file=sys.stderr)
        return 2
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass
    try:
        return asyncio.run(run(spec))
    except GatewayError as err:
        logging.getLogger("edgewire").error("forward_worker_failed: %s", err)
        print(f"error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
