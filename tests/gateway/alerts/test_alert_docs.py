"""docs/alerts.md stays true: every rule type, every parameter, every webhook key and error code."""

from __future__ import annotations

from pathlib import Path

from gateway.alerts.rules import RULE_TYPES
from gateway.alerts.webhook import _FIELDS, DROP_REASONS

DOC = (Path(__file__).resolve().parents[3] / "docs" / "alerts.md").read_text()


def test_every_rule_type_and_parameter_is_documented() -> None:
    headed = {name for line in DOC.splitlines() if line.startswith("### ")
              for name in line[4:].split(" (")[0].replace(",", " ").split()}
    for kind, cls in RULE_TYPES.items():
        assert kind in headed, kind
        for param in cls.PARAMS:
            assert f"`{param.name}`" in DOC, (kind, param.name)


def test_every_webhook_key_and_drop_reason_is_documented() -> None:
    for key in _FIELDS:
        assert f"`{key}`" in DOC, key
    for reason in DROP_REASONS:
        assert f"`{reason}`" in DOC, reason
    for code in ("bad_request", "bad_rule", "no_such_alert", "alert_cleared", "no_such_rule", "storage_unavailable"):
        assert f"`{code}`" in DOC, code
