"""The alert engine's and the webhooks' figures in Prometheus text format (appended to /metrics)."""

from __future__ import annotations

from gateway.alerts.engine import AlertEngine
from gateway.alerts.model import ALERT_ACKNOWLEDGED, ALERT_ACTIVE, ALERT_SUSPENDED, SEVERITIES
from gateway.alerts.webhook import DROP_REASONS, WebhookNotifier


def metric_lines(engine: AlertEngine, notifier: WebhookNotifier | None = None) -> list[str]:
    stats = engine.stats()
    lines: list[str] = []

    def metric(name: str, kind: str, text: str, samples: list[str]) -> None:
        lines.extend((f"# HELP {name} {text}", f"# TYPE {name} {kind}", *samples))

    metric("edgewire_alerts_open", "gauge", "Open alerts by state.",
           [f'edgewire_alerts_open{{state="{s}"}} {stats["open_by_state"].get(s, 0)}'
            for s in (ALERT_ACTIVE, ALERT_ACKNOWLEDGED, ALERT_SUSPENDED)])
    metric("edgewire_alerts_open_by_severity", "gauge", "Open alerts by severity.",
           [f'edgewire_alerts_open_by_severity{{severity="{s}"}} {stats["open_by_severity"].get(s, 0)}'
            for s in SEVERITIES])
    for name, key, text in (
            ("alerts_raised", "raised", "Alerts raised."),
            ("alerts_cleared", "cleared", "Alerts cleared (automatically, by hand or by housekeeping)."),
            ("alert_write_failures", "write_failures", "Failed writes of alert changes (each retried)."),
            ("alert_changes_dropped", "dropped",
             "Alert changes dropped because storage was too far behind (queue full)."),
            ("alert_listener_errors", "listener_errors", "Alert event listeners that raised."),
            ("alert_baseline_errors", "baseline_errors", "Learned alert state that could not be saved or read.")):
        metric(f"edgewire_{name}_total", "counter", text, [f"edgewire_{name}_total {stats[key]}"])
    metric("edgewire_alert_changes_queued", "gauge", "Alert changes waiting to be stored.",
           [f"edgewire_alert_changes_queued {stats['queued']}"])
    if "relay_dropped" in stats:  # a worker that is not the alert owner (gateway/alerts/relay.py)
        metric("edgewire_alert_relay_dropped_total", "counter", "Readings a worker could not hand to the alert "
               "owner (worker 1) over the host bus: stored, but not judged by the alert rules.",
               [f"edgewire_alert_relay_dropped_total {stats['relay_dropped']}"])
    if notifier is None or not notifier.targets:
        return lines
    hooks = notifier.stats()
    metric("edgewire_alert_webhook_sent_total", "counter", "Webhook deliveries accepted by the receiver.",
           [f'edgewire_alert_webhook_sent_total{{webhook="{n}"}} {s["sent"]}' for n, s in hooks.items()])
    metric("edgewire_alert_webhook_failed_attempts_total", "counter", "Webhook attempts that failed (retried).",
           [f'edgewire_alert_webhook_failed_attempts_total{{webhook="{n}"}} {s["failed_attempts"]}'
            for n, s in hooks.items()])
    metric("edgewire_alert_webhook_dropped_total", "counter",
           "Webhook deliveries given up: retries (bound reached), rejected (4xx), queue_full, shutdown.",
           [f'edgewire_alert_webhook_dropped_total{{webhook="{n}",reason="{r}"}} {s["dropped"][r]}'
            for n, s in hooks.items() for r in DROP_REASONS])
    metric("edgewire_alert_webhook_queued", "gauge", "Webhook deliveries waiting.",
           [f'edgewire_alert_webhook_queued{{webhook="{n}"}} {s["queued"]}' for n, s in hooks.items()])
    return lines
