"""The gateway's counters and their Prometheus text output (/metrics)."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field


@dataclass
class Counters:
    connections: int = 0
    auth_failures: int = 0
    frames: int = 0
    readings_stored: int = 0
    duplicates: int = 0
    bad_frames: int = 0
    throttled: int = 0
    storage_errors: int = 0
    replaced: int = 0
    gaps: int = 0
    by_error: dict[str, int] = field(default_factory=dict)


COUNTER_NAMES = ("connections", "auth_failures", "frames", "readings_stored", "duplicates",
                 "bad_frames", "throttled", "storage_errors", "replaced", "gaps")


class Metrics:
    """Counters written by the gateway's rooms; ``render`` turns them and the gauges into text."""

    def __init__(self) -> None:
        self.counters = Counters()

    def count_error(self, code: str) -> None:
        by_error = self.counters.by_error
        by_error[code] = by_error.get(code, 0) + 1

    def render(self, gauges: Iterable[tuple[str, float]], extra_counters: Iterable[tuple[str, float]]) -> bytes:
        """Prometheus text format 0.0.4."""
        c = self.counters
        lines: list[str] = []
        for name, value in gauges:
            lines += [f"# TYPE edgewire_{name} gauge", f"edgewire_{name} {value}"]
        for name in COUNTER_NAMES:
            lines += [f"# TYPE edgewire_{name}_total counter", f"edgewire_{name}_total {getattr(c, name)}"]
        for name, value in extra_counters:
            lines += [f"# TYPE edgewire_{name}_total counter", f"edgewire_{name}_total {value}"]
        lines.append("# TYPE edgewire_errors_total counter")
        lines += [f'edgewire_errors_total{{code="{code}"}} {n}' for code, n in sorted(c.by_error.items())]
        return ("\n".join(lines) + "\n").encode()
