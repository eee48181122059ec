"""/metrics text: every metric has HELP and TYPE, histograms are cumulative, known error codes are
always there, process and build information are present; parsed with prometheus_client's parser."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from gateway.metrics import KNOWN_ERRORS, Histogram, Metrics
from gateway.storage.sqlite import SQLiteStorage
from protocol import wire


def render(metrics: Metrics) -> str:
    return metrics.render(
        gauges=[("devices_online", "Devices online.", 3), ("dashboard_clients", "Browsers.", 1)],
        counters=[("dashboard_resyncs", "Resyncs.", 2)],
        labelled=[("connections_refused", "Refused.", "reason", {"total": 0, "per_address": 4})],
        event_loop="asyncio").decode()


def test_every_metric_has_help_and_type_and_parses() -> None:
    metrics = Metrics()
    metrics.count_error(wire.E_BAD_JSON)
    metrics.counters.readings_stored = 41
    for value in (0.0004, 0.003, 0.003, 0.2, 30.0):
        metrics.commit_latency.observe(value)
    metrics.frame_size.observe(300)
    text = render(metrics)
    families = {f.name: f for f in text_string_to_metric_families(text)}
    lines = text.splitlines()
    for name, family in families.items():
        assert family.documentation, name
        assert any(line.startswith(f"# HELP {name}") or line.startswith(f"# HELP {name}_total")
                   for line in lines), name
    assert "edgewire_dashboards" not in families and families["edgewire_dashboard_clients"].samples[0].value == 1
    assert families["edgewire_readings_stored"].type == "counter"
    errors = {s.labels["code"]: s.value for s in families["edgewire_errors"].samples}
    assert set(errors) == set(KNOWN_ERRORS) and errors[wire.E_BAD_JSON] == 1 and errors[wire.E_AUTH_FAILED] == 0
    commit = {(s.name, s.labels.get("le")): s.value for s in families["edgewire_commit_latency_seconds"].samples}
    assert families["edgewire_commit_latency_seconds"].type == "histogram"
    assert commit[("edgewire_commit_latency_seconds_bucket", "0.001")] == 1
    assert commit[("edgewire_commit_latency_seconds_bucket", "0.005")] == 3
    assert commit[("edgewire_commit_latency_seconds_bucket", "10")] == 4
    assert commit[("edgewire_commit_latency_seconds_bucket", "+Inf")] == 5
    assert commit[("edgewire_commit_latency_seconds_count", None)] == 5
    assert commit[("edgewire_commit_latency_seconds_sum", None)] == pytest.approx(30.2064)
    assert {"edgewire_ack_latency_seconds", "edgewire_frame_size_bytes"} <= set(families)
    build = families["edgewire_build_info"].samples[0]
    assert build.value == 1 and build.labels["event_loop"] == "asyncio" and build.labels["python"]
    for name in ("process_cpu_seconds", "process_resident_memory_bytes", "process_open_fds", "process_max_fds",
                 "process_start_time_seconds"):
        assert families[name].samples[0].value > 0, name
    refused = {s.labels["reason"]: s.value for s in families["edgewire_connections_refused"].samples}
    assert refused == {"total": 0, "per_address": 4}


def test_histogram_buckets_are_inclusive_upper_bounds() -> None:
    h = Histogram((1, 2))
    for value in (1, 1.5, 2, 3):
        h.observe(value)
    assert h.lines("x") == ['x_bucket{le="1"} 1', 'x_bucket{le="2"} 3', 'x_bucket{le="+Inf"} 4',
                            "x_sum 7.500000", "x_count 4"]


def test_sqlite_health_states(tmp_path: Path) -> None:
    import sqlite3

    from gateway.errors import StorageError
    from gateway.storage.base import ReadingRow

    async def run() -> list[str]:
        storage = SQLiteStorage(tmp_path / "h.db", commit_interval_ms=0)
        states = [storage.health()["state"]]
        await storage.open()
        states.append(storage.health()["state"])
        real_insert = storage._insert
        fail = {"on": True}

        def broken(conn: sqlite3.Connection, rows: list[ReadingRow]) -> list[ReadingRow]:
            if fail["on"]:
                raise sqlite3.OperationalError("disk I/O error")
            return real_insert(conn, rows)

        storage._insert = broken  # type: ignore[method-assign]
        row = ReadingRow("S-1", 1, 1, 1, {"temperature": 20.0})
        with pytest.raises(StorageError):
            await storage.store([row])
        states.append(storage.health()["state"])
        fail["on"] = False
        await storage.store([row])
        states.append(storage.health()["state"])
        await storage.close()
        states.append(storage.health()["state"])
        return states

    assert asyncio.run(run()) == ["closed", "ok", "failing", "ok", "closed"]
