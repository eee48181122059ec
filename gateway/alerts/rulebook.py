"""The rules in force: the config file's ([[alerts]]), overlaid by those the admin API stored.

A rule stored through the admin API replaces the config file's rule of the same id; a
deleted rule is stored as a tombstone, so a rule of the config file stays deleted after a
restart. The book indexes the rules for the hot path: by metric, device-level, timed.
"""

from __future__ import annotations

from typing import Any

from gateway.alerts.rules import make_rule, parse_rule
from gateway.alerts.rules.base import ANY_METRIC, Rule
from gateway.errors import ConfigError
from gateway.logs import log
from gateway.storage.base import StoredRule


class RuleBook:
    def __init__(self, config_specs: list[dict[str, Any]]) -> None:
        self.config = {spec["id"]: spec for spec in config_specs}
        self.stored: dict[str, StoredRule] = {}
        self.rules: dict[str, Rule] = {rule_id: make_rule(spec) for rule_id, spec in self.config.items()}
        self.by_metric: dict[str, list[Rule]] = {}
        self.device_rules: list[Rule] = []
        self.timed_rules: list[Rule] = []
        self.index()

    def load(self, stored: list[StoredRule]) -> None:
        """Apply the admin API's stored rules (at start). A stored rule this gateway cannot read
        (written by another version) is logged and left out; the config file's stays."""
        for entry in stored:
            if entry.spec is None:
                self.stored[entry.rule_id] = entry
                self.rules.pop(entry.rule_id, None)
                continue
            try:
                spec = parse_rule(entry.spec, f"stored rule {entry.rule_id}")
            except ConfigError as err:
                log("alert_rule_unreadable", rule=entry.rule_id, error=str(err)[:300])
                continue
            self.stored[entry.rule_id] = entry
            self.rules[entry.rule_id] = make_rule(spec)
        self.index()

    def index(self) -> None:
        by_metric: dict[str, list[Rule]] = {}
        device_rules: list[Rule] = []
        for rule in self.rules.values():
            if rule.metric == ANY_METRIC:
                device_rules.append(rule)
            else:
                by_metric.setdefault(rule.metric, []).append(rule)
        self.by_metric = by_metric
        self.device_rules = device_rules
        self.timed_rules = [rule for rule in self.rules.values() if rule.TIMED]

    def set(self, rule: Rule, stored: StoredRule) -> Rule | None:
        """Put ``rule`` in force (stored through the admin API); return the rule it replaces."""
        old = self.rules.get(rule.id)
        self.rules[rule.id] = rule
        self.stored[rule.id] = stored
        self.index()
        return old

    def remove(self, rule_id: str, tombstone: StoredRule) -> Rule | None:
        old = self.rules.pop(rule_id, None)
        self.stored[rule_id] = tombstone
        self.index()
        return old

    def describe(self, rule_id: str) -> dict[str, Any]:
        rule = self.rules[rule_id]
        entry = self.stored.get(rule_id)
        if entry is None:
            return dict(rule.spec, source="config")
        return dict(rule.spec, source="admin", updated_by=entry.updated_by, updated=entry.updated_ms)

    def describe_all(self) -> list[dict[str, Any]]:
        return [self.describe(rule_id) for rule_id in sorted(self.rules)]
