"""deploy/grafana/: the dashboard and its provisioning checked offline (tests/deploy/grafana_dashboard.py).

Every panel's query is answered by a real Prometheus in tests/deploy/test_prometheus.py.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

import pytest

from tests.deploy.grafana_dashboard import load, problems, queries


def test_the_dashboard_and_its_provisioning_are_well_formed() -> None:
    assert problems() == []
    assert len(queries()) >= 12


def _panel(d: dict[str, Any], title: str) -> dict[str, Any]:
    return next(p for p in d["panels"] if p["title"] == title)


def _move(d: dict[str, Any]) -> None:
    _panel(d, "Memory")["gridPos"]["x"] = 0  # onto the CPU panel


def _unknown_rule(d: dict[str, Any]) -> None:
    _panel(d, "Forwarding lag")["targets"][0]["expr"] = "job:edgewire_forward_lag:max"


def _no_p99(d: dict[str, Any]) -> None:
    _panel(d, "Ack latency")["targets"].pop()


def _fixed_datasource(d: dict[str, Any]) -> None:
    _panel(d, "CPU")["datasource"] = {"type": "prometheus", "uid": "abc"}


def _undefined_variable(d: dict[str, Any]) -> None:
    _panel(d, "Memory")["targets"][0]["expr"] = 'process_resident_memory_bytes{instance=~"$node"}'


def _same_ids(d: dict[str, Any]) -> None:
    _panel(d, "Memory")["id"] = _panel(d, "CPU")["id"]


@pytest.mark.parametrize(("break_it", "complaint"), [
    (_move, "overlap"), (_unknown_rule, "not a recording rule"), (_no_p99, "p50 and p99"),
    (_fixed_datasource, "datasource"), (_undefined_variable, "$node"), (_same_ids, "not distinct"),
])
def test_the_check_finds_what_grafana_would_get_wrong(break_it: Callable[[dict[str, Any]], None],
                                                      complaint: str) -> None:
    broken = copy.deepcopy(load())
    break_it(broken)
    found = problems(broken)
    assert found and any(complaint in line for line in found), found
