"""The bus that joins gateway instances (docs/scaling.md): presence, requests between instances,
fan-out channels and a durable command queue, over Redis, NATS, or in-process (no bus).

    bus = open_bus(config.bus, instance_id)      # "" -> the embedded, in-process bus
    await bus.subscribe("dash", on_delta)
    bus.serve("takeover", on_takeover)
    await bus.start()                             # connects in the background; bus.health()
    claim = await bus.presence.claim("SENSOR-01")
    ...
    await bus.close()
"""

from __future__ import annotations

import socket
from collections.abc import Callable
from typing import Any

from gateway.bus.base import Claim, Holder, Transport
from gateway.bus.engine import CLOSED, CONNECTING, DEGRADED, OK, Bus
from gateway.bus.memory import MemoryBroker, MemoryTransport
from gateway.bus.url import BusUrl, check_name, parse_bus_url
from gateway.errors import ConfigError

CLUSTER_EXTRA = "install the cluster extra: pip install 'edgewire[cluster]' (redis, nats-py)"


def default_instance_id() -> str:
    """The host name's first label (the pod name on Kubernetes), reduced to the allowed characters."""
    label = socket.gethostname().split(".", 1)[0]
    cleaned = "".join(ch if ch.isalnum() or ch in "_-" else "-" for ch in label).strip("-_")[:63]
    return cleaned or "gateway"


def make_transport(url: BusUrl) -> Transport:
    """The transport for a parsed ``bus`` setting (imports the client library only when needed)."""
    if url.kind == "memory":
        return MemoryTransport()
    try:
        if url.kind == "redis":
            from gateway.bus.redis import RedisTransport

            return RedisTransport(url)
        from gateway.bus.nats import NatsTransport

        return NatsTransport(url)
    except ImportError as err:
        raise ConfigError(f"bus: {url.display} needs {err.name}: {CLUSTER_EXTRA}") from None


def open_bus(setting: str, instance_id: str = "", clock: Callable[[], float] | None = None,
             **options: Any) -> Bus:
    """A Bus for the ``bus`` setting ("" = embedded) and ``instance_id`` ("" = default_instance_id())."""
    url = parse_bus_url(setting)
    extra: dict[str, Any] = dict(options)
    if clock is not None:
        extra["clock"] = clock
    return Bus(make_transport(url), instance_id or default_instance_id(), display=url.display, **extra)


__all__ = ["CLOSED", "CONNECTING", "DEGRADED", "OK", "Bus", "BusUrl", "Claim", "Holder", "MemoryBroker",
           "MemoryTransport", "Transport", "check_name", "default_instance_id", "make_transport", "open_bus",
           "parse_bus_url"]
