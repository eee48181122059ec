"""deploy/prometheus/rules.yml: promtool's checks and unit tests, and a real Prometheus scraping a live gateway.

The live test runs Prometheus (Debian's package) on loopback, scraping a gateway (workers,
forwarding to a real Mosquitto) every second with the shipped rules: the target is up, every
recording rule and every query of the Grafana dashboard (deploy/grafana) returns a number, and
stopping the broker brings EdgewireForwardLagGrowing to firing (its lag must pass 30 s and keep
growing for 30 s: about a minute of outage).
"""

from __future__ import annotations

import asyncio
import math
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from services.mosquitto import MosquittoServer
from services.prometheus import PrometheusServer
from tests.deploy.grafana_dashboard import queries as grafana_queries
from tests.helpers.dashboard import DashboardWatcher
from tests.helpers.devices import GoodDevice
from tests.helpers.gateway import GatewayProcess
from tests.helpers.waiting import until

ROOT = Path(__file__).resolve().parents[2]
RULES = ROOT / "deploy/prometheus/rules.yml"
RULES_TEST = ROOT / "deploy/prometheus/rules_test.yml"
PROMTOOL = shutil.which("promtool")
needs_prometheus = pytest.mark.skipif(PROMTOOL is None or shutil.which("prometheus") is None,
                                      reason="Prometheus is not installed: scripts/system-deps test installs it")


def rules(kind: str) -> list[dict[str, Any]]:
    """The rules of ``kind`` ("record" or "alert") in rules.yml."""
    groups = yaml.safe_load(RULES.read_text())["groups"]
    return [rule for group in groups for rule in group["rules"] if kind in rule]


def promtool(*args: str) -> subprocess.CompletedProcess[str]:
    assert PROMTOOL is not None
    return subprocess.run([PROMTOOL, *args], capture_output=True, text=True, timeout=120, cwd=ROOT)


@needs_prometheus
def test_promtool_checks_the_rules_and_runs_their_unit_tests() -> None:
    checked = promtool("check", "rules", str(RULES))
    assert checked.returncode == 0, checked.stdout + checked.stderr
    tested = promtool("test", "rules", str(RULES_TEST))
    assert tested.returncode == 0, tested.stdout + tested.stderr
    config = promtool("check", "config", str(ROOT / "deploy/prometheus/prometheus.yml"))
    assert config.returncode == 0, config.stdout + config.stderr


def test_every_alert_has_a_unit_test_that_fires_it_and_one_that_does_not() -> None:
    tests = yaml.safe_load(RULES_TEST.read_text())["tests"]
    cases = [case for test in tests for case in test.get("alert_rule_test", [])]
    for alert in rules("alert"):
        name = alert["alert"]
        mine = [case for case in cases if case["alertname"] == name]
        assert any(case["exp_alerts"] for case in mine), f"{name}: no unit test brings it to firing"
        assert any(not case["exp_alerts"] for case in mine), f"{name}: no unit test where it stays quiet"
        labels = alert["labels"]
        assert labels["severity"] in ("critical", "warning") and {"summary", "description"} <= set(alert["annotations"])


def number(sample: dict[str, Any]) -> float:
    return float(sample["value"][1])


@needs_prometheus
@pytest.mark.slow
def test_a_real_prometheus_scrapes_a_live_gateway_and_fires_an_alert(tmp_path: Path) -> None:
    with MosquittoServer() as broker:
        gw = GatewayProcess(tmp_path, mqtt_url=broker.url, workers=2)
        tokens = [gw.register(f"PROM-{i}") for i in range(4)]  # two of the four stay offline
        gw.start()
        try:
            with PrometheusServer([f"127.0.0.1:{gw.port}"], [RULES], parent_dir=tmp_path) as prom:
                asyncio.run(scrape_and_fire(gw, broker, prom, tokens))
        finally:
            gw.stop()


async def scrape_and_fire(gw: GatewayProcess, broker: MosquittoServer, prom: PrometheusServer,
                          tokens: list[str]) -> None:
    async with DashboardWatcher(gw.url), GoodDevice(gw.device_url, "PROM-0", tokens[0]), \
            GoodDevice(gw.device_url, "PROM-1", tokens[1]):

        def target_up() -> bool:
            return [(t["labels"]["job"], t["health"]) for t in prom.targets_up()] == [("edgewire", "up")]

        await until(lambda: asyncio.to_thread(target_up), timeout=30, poll=0.5, what="the gateway target up")
        assert [number(s) for s in prom.query('up{job="edgewire"}')] == [1.0]

        missing: dict[str, str] = {}

        def every_recording_rule_answers() -> bool:
            missing.clear()
            for rule in rules("record"):
                got = prom.query(rule["record"])
                if not got or not all(math.isfinite(number(s)) for s in got):
                    missing[rule["record"]] = str(got)[:200]
            return not missing

        try:
            await until(lambda: asyncio.to_thread(every_recording_rule_answers), timeout=45, poll=1.0,
                        what="a number from every recording rule")
        except AssertionError as err:
            raise AssertionError(f"{err}: {missing}") from None
        answers = {name: prom.query(expr) for name, expr in grafana_queries()}  # deploy/grafana's panels
        empty = {name: got for name, got in answers.items()
                 if not got or not all(math.isfinite(number(s)) for s in got)}
        assert not empty, f"Grafana panel queries without a number: {empty}"
        (offline,) = prom.query("job:edgewire_fleet_offline:ratio")
        assert number(offline) == 0.5  # four registered, two online
        (stored,) = prom.query("job:edgewire_readings_stored:rate1m")
        assert number(stored) > 0
        assert not [a for a in prom.alerts() if a["labels"]["alertname"] == "EdgewireForwardLagGrowing"]

        await asyncio.to_thread(broker.stop, "term")

        def lag_alert() -> str:
            found = [a["state"] for a in prom.alerts() if a["labels"]["alertname"] == "EdgewireForwardLagGrowing"]
            return found[0] if found else ""

        async def firing() -> bool:
            return await asyncio.to_thread(lag_alert) == "firing"

        await until(firing, timeout=90, poll=1.0, what="EdgewireForwardLagGrowing firing")
        (alert,) = [a for a in prom.alerts() if a["labels"]["alertname"] == "EdgewireForwardLagGrowing"]
        assert (alert["labels"]["sink"], alert["labels"]["severity"]) == ("mqtt", "warning")
        assert float(alert["value"]) > 30
