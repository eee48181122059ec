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
    found = lines(forwarding, now)
    return "\n".join(found) + "\n" if found else ""


def lines(forwarding: Forwarding, now: float | None = None) -> list[str]:
    """The forwarding metrics: complete lines (HELP, TYPE, samples) for the gateway's /metrics."""
    stats = forwarding.stats(now)
    if not stats and forwarding.bridge is None:
        return []
    lines: list[str] = []

    def per_sink(key: str) -> list[tuple[dict[str, str], float]]:
        return [({"sink": s["sink"]}, float(s[key])) for s in stats]

    _metric(lines, "forward_acked", "counter", "Readings a sink's broker confirmed (PUBACK, JetStream ack).",
            per_sink("acked"))
    _metric(lines, "forward_resent", "counter", "Readings sent again after a failure (at-least-once duplicates).",
            per_sink("resent"))
    dropped: list[tuple[dict[str, str], float]] = []
    for s in stats:
        dropped += [({"sink": s["sink"], "reason": reason}, float(s[key]))
                    for reason, key in (("refused", "refused"), ("expired", "expired"), ("trimmed", "trimmed"))]
    _metric(lines, "forward_dropped", "counter", "Readings a sink will never get, by reason: refused by the "
            "broker, deleted by retention before forwarding, log trimmed before the sink passed it.", dropped)
    _metric(lines, "forward_inflight", "gauge", "Readings handed to a sink beyond its stored cursor.",
            per_sink("inflight"))
    _metric(lines, "forward_lag_seconds", "gauge", "Age of the oldest reading waiting for its broker's ack.",
            per_sink("lag_s"))
    _metric(lines, "forward_connected", "gauge", "1 while the sink is connected to its broker.",
            [({"sink": s["sink"]}, int(bool(s["connected"]))) for s in stats])
    _metric(lines, "forward_active", "gauge", "1 while this instance holds the sink's lease and forwards.",
            [({"sink": s["sink"]}, int(s["state"] in (FORWARDING, WAITING))) for s in stats])
    _metric(lines, "forward_standby", "gauge", "1 while another instance holds the sink's lease.",
            [({"sink": s["sink"]}, int(s["state"] == STANDBY)) for s in stats])
    _metric(lines, "forward_lease_lost", "counter", "Times another instance took a sink over from this one.",
            per_sink("lease_lost"))
    _metric(lines, "forward_storage_errors", "counter", "Storage calls of a forwarder that failed (retried).",
            per_sink("storage_errors"))
    worker = forwarding.worker
    if worker is not None:
        _metric(lines, "forward_worker_up", "gauge", "1 while the forwarding worker process runs and reports.",
                [({}, int(worker.up))])
        _metric(lines, "forward_worker_restarts", "counter", "Restarts of the forwarding worker process.",
                [({}, worker.restarts)])
    queue_full = forwarding.queue_full()
    if queue_full is not None:
        _metric(lines, "mqtt_queue_full", "counter", "Publishes turned away by paho's bounded queue (sent again).",
                [({}, queue_full)])
    bridge = forwarding.bridge
    if bridge is not None:
        _metric(lines, "mqtt_published", "counter", "Control messages the broker confirmed, by kind.",
                [({"kind": k}, v) for k, v in sorted(bridge.control.published.items())])
        _metric(lines, "mqtt_refused", "counter", "Control messages the broker refused (check its ACLs), by kind.",
                [({"kind": k}, v) for k, v in sorted(bridge.control.refused.items())])
        _metric(lines, "mqtt_dropped", "counter", "Alert events and command results dropped because the broker "
                "was unreachable and the queue was full, by kind.",
                [({"kind": k}, v) for k, v in sorted(bridge.control.dropped.items())])
        _metric(lines, "mqtt_bridge_connected", "gauge", "1 while the bridge is connected to the broker.",
                [({}, int(bridge.ready))])
        _metric(lines, "mqtt_ha_births", "counter", "Home Assistant birth messages seen (every config sent again).",
                [({}, bridge.ha_births)])
        if bridge.gate is not None:
            _metric(lines, "mqtt_commands", "counter", "Commands received over MQTT, by outcome.",
                    [({"outcome": k}, v) for k, v in sorted(bridge.gate.counts.items())])
    return lines
