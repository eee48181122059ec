"""Local alert rules: a metric above ``high`` or below ``low`` raises an alert.

An alert clears once the value is back inside by ``hysteresis``. Rules drive the
buzzer and relay only while the gateway is unreachable (the gateway's own alerts
and commands govern otherwise); the LED shows ``alert`` whenever one is active.
``set_thresholds`` from the gateway replaces a rule's limits or adds a rule.
"""

from __future__ import annotations

from edge.config import RuleSpec


class Rules:
    def __init__(self, specs: list[RuleSpec]) -> None:
        self.specs = list(specs)
        self.active: dict[int, bool] = {}

    def set_thresholds(self, metric: str, high: float | None, low: float | None) -> RuleSpec:
        for spec in self.specs:
            if spec.metric == metric:
                spec.high, spec.low = high, low
                return spec
        spec = RuleSpec(metric, high, low)
        self.specs.append(spec)
        return spec

    def update(self, metrics: dict[str, float]) -> None:
        """Evaluate the rules against one reading."""
        for index, spec in enumerate(self.specs):
            value = metrics.get(spec.metric)
            if value is None:
                continue
            was = self.active.get(index, False)
            if was:
                inside = ((spec.high is None or value < spec.high - spec.hysteresis)
                          and (spec.low is None or value > spec.low + spec.hysteresis))
                self.active[index] = not inside
            else:
                self.active[index] = ((spec.high is not None and value > spec.high)
                                      or (spec.low is not None and value < spec.low))

    @property
    def alerting(self) -> bool:
        return any(self.active.values())

    def wanted_outputs(self) -> dict[str, bool]:
        """Output name -> on, from the rules that name it."""
        wanted: dict[str, bool] = {}
        for index, spec in enumerate(self.specs):
            for name in spec.outputs:
                wanted[name] = wanted.get(name, False) or self.active.get(index, False)
        return wanted

    def describe(self) -> list[dict[str, object]]:
        return [{"metric": s.metric, "high": s.high, "low": s.low, "active": self.active.get(i, False)}
                for i, s in enumerate(self.specs)]
