"""Merging the workers' /metrics pages (gateway/host_metrics.py): what is added up and what is not."""

from __future__ import annotations

from gateway.host_metrics import merge_pages


def values(page: str) -> dict[str, float]:
    return {series: float(value) for series, _, value in
            (line.rpartition(" ") for line in page.splitlines() if line and not line.startswith("#"))}


def test_storage_ok_is_the_minimum_and_the_registered_fleet_the_first_workers() -> None:
    first = "edgewire_storage_ok 1\nedgewire_fleet_registered 40\nedgewire_up 1\nedgewire_readings_stored_total 5\n"
    second = "edgewire_storage_ok 0\nedgewire_fleet_registered 40\nedgewire_up 1\nedgewire_readings_stored_total 7\n"
    merged = values(merge_pages([first, second]))
    assert merged == {"edgewire_storage_ok": 0, "edgewire_fleet_registered": 40, "edgewire_up": 1,
                      "edgewire_readings_stored_total": 12}
