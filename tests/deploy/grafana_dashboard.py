"""deploy/grafana/: the dashboard's structure checked offline (Grafana is not in Debian 12), and its queries.

``problems()`` lists what is wrong with the dashboard JSON and its provisioning files, by the
rules of Grafana's dashboard model (schemaVersion 39, Grafana 10.4 and later) that matter here:
unique panel ids, panels on the 24-column grid without overlaps, every query panel on the
provisioned Prometheus through the ``datasource`` variable, one refId per query, known units,
every ``$variable`` defined, every recording rule it names present in deploy/prometheus/rules.yml.
``queries()`` gives each panel's PromQL as Grafana sends it with the variables at their defaults,
for a real Prometheus to answer (tests/deploy/test_prometheus.py).
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[2]
GRAFANA = ROOT / "deploy/grafana"
DASHBOARD = GRAFANA / "dashboards/edgewire.json"
RULES = ROOT / "deploy/prometheus/rules.yml"
PANEL_TYPES = {"row", "timeseries", "stat", "gauge", "bargauge", "table"}
UNITS = {"short", "none", "s", "ms", "percentunit", "percent", "reqps", "bytes", "decbytes"}
DATASOURCE = {"type": "prometheus", "uid": "${datasource}"}
# What issue 24 asks the dashboard to show: a panel title (lower case) -> a metric its queries must use.
REQUIRED = {
    "fleet online": "edgewire_fleet_online",
    "readings stored per second": "edgewire_readings_stored",
    "ack latency": "edgewire_ack_latency_seconds",
    "commit latency": "edgewire_commit_latency_seconds",
    "storage": "edgewire_storage_ok",
    "forwarding lag": "edgewire_forward_lag_seconds",
    "device alerts open": "edgewire_alerts_open",
    "cpu": "process_cpu",
    "memory": "process_resident_memory_bytes",
}


def load() -> dict[str, Any]:
    dashboard: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return dashboard


def recorded() -> set[str]:
    groups = yaml.safe_load(RULES.read_text())["groups"]
    return {rule["record"] for group in groups for rule in group["rules"] if "record" in rule}


def _overlap(a: dict[str, int], b: dict[str, int]) -> bool:
    across = a["x"] < b["x"] + b["w"] and b["x"] < a["x"] + a["w"]
    return across and a["y"] < b["y"] + b["h"] and b["y"] < a["y"] + a["h"]


def _panel_problems(panel: dict[str, Any], rules: set[str]) -> list[str]:
    where = f"panel {panel.get('id')} ({panel.get('title')!r})"
    found: list[str] = []
    if panel.get("type") not in PANEL_TYPES:
        found.append(f"{where}: type {panel.get('type')!r} is not one of {sorted(PANEL_TYPES)}")
    if not isinstance(panel.get("title"), str) or not panel["title"]:
        found.append(f"{where}: no title")
    grid = panel.get("gridPos", {})
    if not all(isinstance(grid.get(k), int) and grid[k] >= 0 for k in "xywh") or grid.get("w", 0) < 1 \
            or grid.get("h", 0) < 1 or grid.get("x", 0) + grid.get("w", 0) > 24:
        found.append(f"{where}: gridPos {grid} is not on the 24-column grid")
    if panel.get("type") == "row":
        if grid.get("w") != 24 or grid.get("h") != 1:
            found.append(f"{where}: a row spans 24 columns, 1 high")
        return found
    if panel.get("datasource") != DATASOURCE:
        found.append(f"{where}: datasource {panel.get('datasource')} is not {DATASOURCE}")
    unit = panel.get("fieldConfig", {}).get("defaults", {}).get("unit")
    if unit not in UNITS:
        found.append(f"{where}: unit {unit!r} is not one of {sorted(UNITS)}")
    targets = panel.get("targets") or []
    if not targets:
        found.append(f"{where}: no query")
    refs = [t.get("refId") for t in targets]
    if len(set(refs)) != len(refs) or not all(isinstance(r, str) and r for r in refs):
        found.append(f"{where}: refIds {refs} are not distinct")
    for target in targets:
        if target.get("datasource") != DATASOURCE:
            found.append(f"{where} {target.get('refId')}: datasource is not {DATASOURCE}")
        expr = target.get("expr")
        if not isinstance(expr, str) or not expr.strip():
            found.append(f"{where} {target.get('refId')}: no expr")
            continue
        for name in re.findall(r"\b((?:job|instance):[a-z_:0-9]+)", expr):
            if name not in rules:
                found.append(f"{where}: {name} is not a recording rule of deploy/prometheus/rules.yml")
    return found


def problems(dashboard: dict[str, Any] | None = None) -> list[str]:
    """What is wrong with deploy/grafana/ (empty when all is well); ``dashboard``: check this one instead."""
    dashboard = load() if dashboard is None else dashboard
    found: list[str] = []
    for key, kind in (("uid", str), ("title", str), ("schemaVersion", int), ("panels", list), ("templating", dict),
                      ("time", dict), ("tags", list)):
        if not isinstance(dashboard.get(key), kind):
            found.append(f"dashboard: {key} missing or not a {kind.__name__}")
    if found:
        return found
    if not re.fullmatch(r"[A-Za-z0-9_-]{1,40}", dashboard["uid"]):
        found.append(f"dashboard: uid {dashboard['uid']!r}: up to 40 letters, digits, - and _")
    if dashboard["schemaVersion"] < 36:
        found.append("dashboard: schemaVersion below 36 (datasource references by uid)")
    rules = recorded()
    panels: list[dict[str, Any]] = dashboard["panels"]
    ids = [p.get("id") for p in panels]
    if len(set(ids)) != len(ids) or not all(isinstance(i, int) for i in ids):
        found.append(f"dashboard: panel ids {ids} are not distinct integers")
    for panel in panels:
        found += _panel_problems(panel, rules)
    for i, a in enumerate(panels):
        for b in panels[i + 1:]:
            if "gridPos" in a and "gridPos" in b and _overlap(a["gridPos"], b["gridPos"]):
                found.append(f"panels {a.get('id')} and {b.get('id')} overlap")
    variables = {v.get("name"): v for v in dashboard["templating"].get("list", [])}
    text = json.dumps(panels)
    for name in set(re.findall(r"\$\{?([A-Za-z_]\w*)", text)) - {"__all", "__rate_interval", "__interval"}:
        if name not in variables:
            found.append(f"dashboard: ${name} is used but not a template variable")
    source = variables.get("datasource", {})
    if (source.get("type"), source.get("query")) != ("datasource", "prometheus"):
        found.append("dashboard: the datasource variable must be of type datasource, query prometheus")
    titles = {p["title"].lower(): p for p in panels if p.get("type") != "row"}
    for title, metric in REQUIRED.items():
        if title not in titles:
            found.append(f"dashboard: no panel titled {title!r}")
        elif metric not in json.dumps(titles[title]["targets"]):
            found.append(f"dashboard: panel {title!r} does not query {metric}")
    for title in ("ack latency", "commit latency"):
        exprs = " ".join(t["expr"] for t in titles.get(title, {}).get("targets", []))
        if not ("p50" in exprs and "p99" in exprs):
            found.append(f"dashboard: panel {title!r} must show p50 and p99")
    return found + _provisioning_problems(source)


def _provisioning_problems(source: dict[str, Any]) -> list[str]:
    found: list[str] = []
    sources = yaml.safe_load((GRAFANA / "provisioning/datasources/edgewire.yml").read_text())
    providers = yaml.safe_load((GRAFANA / "provisioning/dashboards/edgewire.yml").read_text())
    if sources.get("apiVersion") != 1 or providers.get("apiVersion") != 1:
        found.append("provisioning: apiVersion must be 1")
    prometheus = [s for s in sources.get("datasources", []) if s.get("type") == "prometheus"]
    if len(prometheus) != 1 or not str(prometheus[0].get("url", "")).startswith("http"):
        found.append("provisioning: one prometheus datasource with a url")
    elif prometheus[0].get("uid") != source.get("current", {}).get("value"):
        found.append("provisioning: the datasource uid is not the dashboard's default")
    (provider,) = providers.get("providers", [None])
    if not provider or provider.get("type") != "file" or not provider.get("options", {}).get("path"):
        found.append("provisioning: a file provider with options.path")
    return found


def queries(job: str = "edgewire.*") -> list[tuple[str, str]]:
    """(panel title and refId, PromQL) of every query, ``$job`` as Grafana sends "All"."""
    found = []
    for panel in load()["panels"]:
        for target in panel.get("targets", []):
            expr = target["expr"].replace("$job", job)
            assert "$" not in expr, f"{panel['title']}: a variable left in {expr}"
            found.append((f"{panel['title']} {target['refId']}", expr))
    return found
