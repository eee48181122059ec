"""/metrics lines of forwarding (Prometheus text format, HELP and TYPE for each metric).

Per sink (label ``sink``: mqtt, nats): readings acked, resent, dropped by reason (``refused``
by the broker, ``expired``: deleted by retention before they were forwarded, ``trimmed``:
their log rows trimmed by age before the sink passed them), readings in flight, lag, whether
connected, whether this instance holds the lease, leases lost. For the MQTT bridge: control
messages published, refused and dropped (the bounded event queue), publishes paho's bounded
queue turned away, commands by outcome, Home Assistant birth messages.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING

from gateway.forward.forwarder import FORWARDING, STANDBY, WAITING

if TYPE_CHECKING:
    from gateway.forward.setup import Forwarding


def _num(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else repr(float(value))


def _metric(lines: list[str], name: str, kind: str, text: str,
            samples: Iterable[tuple[dict[str, str], float]]) -> None:
    full = f"edgewire_{name}" + ("_total" if kind == "counter" else "")
    lines += [f"# HELP {full} {text}", f"# TYPE {full} {kind}"]
    for labels, value in samples:
        tags = ",".join(f'{k}="{v}"' for k, v in labels.items())
        lines.append(f"{full}{{{tags}}} {_num(value)}" if tags else f"{full} {_num(value)}")


def render(forwarding: Forwarding, now: float | None = None) -> str:
    """The forwarding metrics as Prometheus text ("" when nothing is forwarded)."""
    if not forwarding.forwarders:
        return ""
    lines: list[str] = []
    fws = forwarding.forwarders
    _metric(lines, "forward_acked", "counter", "Readings a sink's broker confirmed (PUBACK, JetStream ack).",
            [({"sink": f.name}, f.counters.acked) for f in fws])
    _metric(lines, "forward_resent", "counter", "Readings sent again after a failure (at-least-once duplicates).",
            [({"sink": f.name}, f.counters.resent) for f in fws])
    dropped: list[tuple[dict[str, str], float]] = []
    for f in fws:
        dropped += [({"sink": f.name, "reason": "refused"}, f.counters.refused),
                    ({"sink": f.name, "reason": "expired"}, f.counters.expired),
                    ({"sink": f.name, "reason": "trimmed"}, f.trimmed)]
    _metric(lines, "forward_dropped", "counter", "Readings a sink will never get, by reason: refused by the "
            "broker, deleted by retention before forwarding, log trimmed before the sink passed it.", dropped)
    _metric(lines, "forward_inflight", "gauge", "Readings handed to a sink beyond its stored cursor.",
            [({"sink": f.name}, f.inflight) for f in fws])
    _metric(lines, "forward_lag_seconds", "gauge", "Age of the oldest reading waiting for its broker's ack.",
            [({"sink": f.name}, round(f.lag_s(now), 3)) for f in fws])
    _metric(lines, "forward_connected", "gauge", "1 while the sink is connected to its broker.",
            [({"sink": f.name}, int(f.sink.ready)) for f in fws])
    _metric(lines, "forward_active", "gauge", "1 while this instance holds the sink's lease and forwards "
            "(0: standing by, or not started).",
            [({"sink": f.name}, int(f.state in (FORWARDING, WAITING))) for f in fws])
    _metric(lines, "forward_standby", "gauge", "1 while another instance holds the sink's lease.",
            [({"sink": f.name}, int(f.state == STANDBY)) for f in fws])
    _metric(lines, "forward_lease_lost", "counter", "Times another instance took a sink over from this one.",
            [({"sink": f.name}, f.counters.lease_lost) for f in fws])
    _metric(lines, "forward_storage_errors", "counter", "Storage calls of a forwarder that failed (retried).",
            [({"sink": f.name}, f.counters.storage_errors) for f in fws])
    bridge = forwarding.bridge
    if bridge is not None:
        _metric(lines, "mqtt_published", "counter", "Control messages the broker confirmed, by kind.",
                [({"kind": k}, v) for k, v in sorted(bridge.published.items())])
        _metric(lines, "mqtt_refused", "counter", "Control messages the broker refused (check its ACLs), by kind.",
                [({"kind": k}, v) for k, v in sorted(bridge.refused.items())])
        _metric(lines, "mqtt_dropped", "counter", "Alert events and command results dropped because the broker "
                "was unreachable and the queue was full, by kind.",
                [({"kind": k}, v) for k, v in sorted(bridge.dropped.items())])
        _metric(lines, "mqtt_queue_full", "counter", "Publishes turned away by paho's bounded queue (sent again).",
                [({}, bridge.link.refused_publishes)])
        _metric(lines, "mqtt_ha_births", "counter", "Home Assistant birth messages seen (every config sent again).",
                [({}, bridge.ha_births)])
        if bridge.gate is not None:
            _metric(lines, "mqtt_commands", "counter", "Commands received over MQTT, by outcome.",
                    [({"outcome": k}, v) for k, v in sorted(bridge.gate.counts.items())])
    return "\n".join(lines) + "\n"
