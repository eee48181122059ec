"""The rule table: one row per rule type, each type one module of this package.

``parse_rule`` checks a rule's table (from the TOML config or the admin API) and returns
its canonical spec (every parameter set, JSON-able); ``make_rule`` builds the rule object
the engine evaluates. Errors are ConfigError naming the rule and the key.
"""

from __future__ import annotations

from typing import Any

from gateway.alerts.rules.anomaly import Anomaly
from gateway.alerts.rules.base import COMMON, FOR, SEVERITIES, Rule, check_id, check_metric
from gateway.alerts.rules.health import Health
from gateway.alerts.rules.no_data import NoData
from gateway.alerts.rules.predictive import Predictive
from gateway.alerts.rules.rate import Rate
from gateway.alerts.rules.stuck import Stuck
from gateway.alerts.rules.threshold import Above, Below
from gateway.errors import ConfigError

RULE_TYPES: dict[str, type[Rule]] = {
    "above": Above,
    "below": Below,
    "rate": Rate,
    "no_data": NoData,
    "stuck": Stuck,
    "anomaly": Anomaly,
    "predictive": Predictive,
    "health": Health,
}
MAX_RULES = 1000

# The rule a gateway has when its config names none.
DEFAULT_RULES: list[dict[str, Any]] = [{"type": "above", "metric": "temperature", "above": 30.0, "hysteresis": 1.0}]


def rule_keys(cls: type[Rule]) -> list[str]:
    keys = [p.name for p in COMMON] + [p.name for p in cls.PARAMS]
    if cls.HAS_FOR and FOR.name not in keys:
        keys.append(FOR.name)
    return keys


def parse_rule(item: Any, where: str = "rule") -> dict[str, Any]:
    """The canonical spec of one rule table, or ConfigError saying which key is wrong and why."""
    if not isinstance(item, dict):
        raise ConfigError(f"{where}: must be a table of the rule's settings (type, metric, ...), "
                          f"not {type(item).__name__}")
    kind = item.get("type")
    if kind is None:
        kind = "above" if "above" in item else "below" if "below" in item else None
        if kind is None:
            raise ConfigError(f"{where}: type: missing (one of {', '.join(RULE_TYPES)})")
    if kind not in RULE_TYPES:
        raise ConfigError(f"{where}: type: {str(kind)[:40]!r} is not a rule type (one of {', '.join(RULE_TYPES)})")
    cls = RULE_TYPES[kind]
    if "id" in item:
        where = f"{where} ({str(item['id'])[:64]})"
    keys = rule_keys(cls)
    for key in item:
        if key not in keys:
            raise ConfigError(f"{where}: unknown key {str(key)[:40]!r} (the {kind} rule takes {', '.join(keys)})")
    spec: dict[str, Any] = {"type": kind}
    metric = item.get("metric")
    if metric is None and cls.METRIC == "required":
        raise ConfigError(f"{where}: metric: missing (the metric the rule watches, such as \"temperature\")")
    spec["metric"] = None if metric is None else check_metric(metric, where)
    severity = COMMON[3]
    spec["severity"] = severity.check(item.get("severity", cls.DEFAULT_SEVERITY), where)
    spec["devices"] = COMMON[4].check(item.get("devices", []), where)
    if len(spec["devices"]) > 100:
        raise ConfigError(f"{where}: devices: at most 100 patterns")
    params = list(cls.PARAMS) + ([FOR] if cls.HAS_FOR and FOR not in cls.PARAMS else [])
    for param in params:
        if param.name in item:
            spec[param.name] = param.check(item[param.name], where)
        elif param.required:
            raise ConfigError(f"{where}: {param.name}: missing ({param.doc})")
        else:
            spec[param.name] = param.default
    cls.complete(spec, where)
    spec["id"] = check_id(item["id"], where) if "id" in item else default_id(spec)
    return spec


def default_id(spec: dict[str, Any]) -> str:
    parts = [spec["metric"] or "device", spec["type"]]
    for key in ("above", "below"):
        if spec.get(key) is not None:
            if spec["type"] == "predictive":
                parts.append(key)
            parts.append(f"{spec[key]:g}".replace("+", ""))
    return "_".join(parts)[:64]


def parse_rules(value: Any, where: str = "alerts") -> list[dict[str, Any]]:
    """The specs of a list of rule tables ([[alerts]]); ids must be unique."""
    if not isinstance(value, list):
        raise ConfigError(f"{where}: expected a list of [[{where}]] tables (type, metric, ...)")
    if len(value) > MAX_RULES:
        raise ConfigError(f"{where}: at most {MAX_RULES} rules")
    specs: list[dict[str, Any]] = []
    seen: dict[str, int] = {}
    for index, item in enumerate(value, start=1):
        spec = parse_rule(item, f"{where}: rule {index}")
        if spec["id"] in seen:
            raise ConfigError(f"{where}: rules {seen[spec['id']]} and {index} have the same id {spec['id']!r}; "
                              "give one of them another id = \"...\"")
        seen[spec["id"]] = index
        specs.append(spec)
    return specs


def make_rule(spec: dict[str, Any]) -> Rule:
    """The rule object for a canonical spec (from parse_rule)."""
    return RULE_TYPES[spec["type"]](spec)


__all__ = ["DEFAULT_RULES", "RULE_TYPES", "SEVERITIES", "Rule", "make_rule", "parse_rule", "parse_rules"]
