"""The issue's targets (issue 19), checked on a run's figures: each one met or missed, and by how much.

At 10,000 devices (1 reading/s, same run as Mosquitto): 0 readings lost, ack p99 <= 100 ms,
dashboard p99 <= 100 ms, CPU per reading of all gateway processes <= 1.0x Mosquitto's, RSS <= 16 KiB
per connection under traffic, connection storm <= 2 s, the gateway below 70 % of the machine.
At 20,000 devices: 0 lost, ack p99 <= 250 ms. Capacity (bench/capacity.py): >= 50,000 readings/s
on SQLite and >= 100,000 on PostgreSQL.

Pure functions of the report's dicts (no I/O), so tests check the verdicts on made-up figures.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from bench.metrics import ratio

__all__ = ["CAPACITY_NAMES", "TARGETS", "Target", "capacity_rows", "evaluate", "lines", "pick_step", "verdict"]

Figure = Callable[[dict[str, Any]], float | None]


def _gateway(step: dict[str, Any]) -> dict[str, Any]:
    return (step.get("systems") or {}).get("gateway") or {}


def _dig(data: dict[str, Any], *path: str) -> float | None:
    """The number at ``path`` in nested dicts, or None when a level or the number is missing."""
    value: Any = data
    for key in path:
        value = value.get(key) if isinstance(value, dict) else None
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


def _lost(step: dict[str, Any]) -> float | None:
    return _dig(_gateway(step), "lost")


def _ack_p99(step: dict[str, Any]) -> float | None:
    return _dig(_gateway(step), "ack_latency", "p99_ms")


def _dashboard_p99(step: dict[str, Any]) -> float | None:
    return _dig(_gateway(step), "latency", "p99_ms")


def _cpu_ratio(step: dict[str, Any]) -> float | None:
    mosquitto = (step.get("systems") or {}).get("mosquitto") or {}
    value = ratio(_dig(_gateway(step), "server", "cpu_per_1000"), _dig(mosquitto, "server", "cpu_per_1000"))
    return None if value is None else round(value, 2)  # as printed, so the margin adds up


def _rss_per_conn(step: dict[str, Any]) -> float | None:
    return _dig(_gateway(step), "server", "rss_per_conn_kib")


def _storm(step: dict[str, Any]) -> float | None:
    return _dig(_gateway(step), "connect_s")


def _machine_share(step: dict[str, Any]) -> float | None:
    return _dig(_gateway(step), "server", "machine_share_pct")


@dataclass(frozen=True)
class Target:
    """One target: at ``devices``, ``figure(step)`` compared with ``limit`` by ``op``."""

    key: str
    devices: int
    label: str
    op: str  # "<=", "<" or ">="
    limit: float
    unit: str
    figure: Figure


TARGETS: tuple[Target, ...] = (
    Target("lost", 10_000, "readings lost", "<=", 0, "readings", _lost),
    Target("ack_p99", 10_000, "ack p99", "<=", 100, "ms", _ack_p99),
    Target("dashboard_p99", 10_000, "dashboard p99", "<=", 100, "ms", _dashboard_p99),
    Target("cpu_per_reading_vs_mosquitto", 10_000, "CPU per reading (all gateway processes) / Mosquitto's", "<=",
           1.0, "x", _cpu_ratio),
    Target("rss_per_conn", 10_000, "RSS per connection under traffic", "<=", 16, "KiB", _rss_per_conn),
    Target("connection_storm", 10_000, "connection storm", "<=", 2, "s", _storm),
    Target("machine_share", 10_000, "gateway share of the machine's CPU (hold)", "<", 70, "%", _machine_share),
    Target("lost", 20_000, "readings lost", "<=", 0, "readings", _lost),
    Target("ack_p99", 20_000, "ack p99", "<=", 250, "ms", _ack_p99),
)
CAPACITY_NAMES = {"sqlite": "SQLite", "postgresql": "PostgreSQL"}


def verdict(value: float | None, op: str, limit: float) -> tuple[bool | None, float | None]:
    """(met, margin): margin is the headroom (>= 0 when met) in the target's unit; None without a value."""
    if value is None:
        return None, None
    if op == ">=":
        return value >= limit, value - limit
    margin = limit - value
    return (value < limit if op == "<" else value <= limit), margin


def pick_step(steps: Sequence[dict[str, Any]], devices: int) -> dict[str, Any] | None:
    """The step a target at ``devices`` is checked on: that device count; for the 10,000-device
    targets, failing that, the largest step below 20,000 (marked indicative by ``evaluate``). Only
    steps that ran the gateway count."""
    steps = [s for s in steps if "gateway" in (s.get("systems") or {})]
    for step in steps:
        if step.get("devices") == devices:
            return step
    if devices == 10_000:
        smaller = [s for s in steps if 0 < (s.get("devices") or 0) < 20_000]
        return max(smaller, key=lambda s: s["devices"]) if smaller else None
    return None


def evaluate(steps: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per target whose step ran: value, limit, met (None: no figure), margin, and whether
    the step was valid (a generator that saturated or fell behind measured itself)."""
    rows = []
    for target in TARGETS:
        step = pick_step(steps, target.devices)
        if step is None:
            continue
        value = target.figure(step)
        met, margin = verdict(value, target.op, target.limit)
        gw = _gateway(step)
        reasons = list(gw.get("invalid_reasons") or [])
        if target.key == "cpu_per_reading_vs_mosquitto":
            reasons += (step["systems"].get("mosquitto") or {}).get("invalid_reasons") or []
        rows.append({"target": target.key, "devices": target.devices, "measured_at": step["devices"],
                     "label": target.label, "op": target.op, "limit": target.limit, "unit": target.unit,
                     "value": None if value is None else round(float(value), 3), "met": met,
                     "margin": None if margin is None else round(margin, 3),
                     "valid": bool(gw.get("valid", False)) and not reasons, "invalid_reasons": reasons})
    return rows


def capacity_rows(capacity: dict[str, Any]) -> list[dict[str, Any]]:
    """The capacity goals per backend that ran: >= 50,000 readings/s (SQLite), >= 100,000 (PostgreSQL).
    ``met`` is None when the ramp stopped below the goal for a reason other than the gateway."""
    rows = []
    for backend, result in (capacity.get("backends") or {}).items():
        summary = result.get("summary")
        if summary is None or summary.get("goal_per_s") is None:
            continue
        value, goal = summary.get("capacity_per_s"), summary["goal_per_s"]
        rows.append({"target": f"capacity_{backend}", "label": f"capacity, {CAPACITY_NAMES.get(backend, backend)}",
                     "op": ">=", "limit": goal, "unit": "readings/s", "value": value,
                     "met": summary.get("goal_met"),
                     "margin": None if value is None else value - goal, "exact": summary.get("exact", False),
                     "bound": summary.get("bound"), "valid": True, "invalid_reasons": []})
    return rows


def _num(value: float, unit: str) -> str:
    if unit == "x":
        return f"{value:.2f}x"
    text = f"{value:,.0f}" if abs(value) >= 100 or float(value).is_integer() else f"{value:,.1f}"
    return f"{text} {unit}" if unit not in ("%",) else f"{text} %"


def _cell(row: dict[str, Any]) -> tuple[str, str, str]:
    """(value, limit, verdict) as printed."""
    unit, value, margin = row["unit"], row["value"], row["margin"]
    shown = "n/a" if value is None else _num(value, unit)
    if row.get("exact") is False and value is not None:
        shown = f"at least {shown}"
    limit = f"{row['op'].replace('<=', '≤').replace('>=', '≥')} {_num(row['limit'], unit)}"
    if row["met"] is None:
        said = "not measured" if value is None else "not shown (the ramp stopped before the gateway did)"
    elif margin is None:
        said = "met" if row["met"] else "MISSED"
    elif row["met"]:
        said = f"met, margin {_num(abs(margin), unit)}"
    else:
        said = f"MISSED by {_num(abs(margin), unit)}"
        if row["limit"] and value is not None and unit != "x":
            said += f" ({value / row['limit']:.1f}x the limit)"
    if not row.get("valid", True):
        reasons = "; ".join(row.get("invalid_reasons") or [])
        said += f" (step invalid: {reasons})" if reasons else " (step invalid)"
    return shown, limit, said


def lines(rows: Sequence[dict[str, Any]]) -> list[str]:
    """The targets as a Markdown table, one section per device count, then capacity."""
    if not rows:
        return []
    out = ["targets (issue 19):", "", "| at | target | measured | target | verdict |", "|---|---|---|---|---|"]
    footnotes: dict[str, str] = {}
    for row in rows:
        if "devices" in row:
            at = f"{row['devices']:,} devices"
            if row["measured_at"] != row["devices"]:
                at = f"{row['measured_at']:,} devices*"
                footnotes[at] = (f"\\* indicative: the targets are for {row['devices']:,} devices; this run's "
                                 f"largest step below 20,000 had {row['measured_at']:,}")
        else:
            at = "capacity step"
        shown, limit, said = _cell(row)
        out.append(f"| {at} | {row['label']} | {shown} | {limit} | {said} |")
    return [*out, *(["", *footnotes.values()] if footnotes else [])]
