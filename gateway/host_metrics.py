"""One gateway's /metrics and /healthz over its worker processes (``workers`` > 1, gateway/workers.py).

The worker that a scrape reaches asks its siblings for their own pages over the host bus
(request kinds ``metrics`` and ``health``) and merges them with its own: one gateway, as
docs/configuration.md says. Samples with the same name and labels are added up (counters,
histogram buckets, connection gauges), except the few whose sum means nothing: ``edgewire_up``
and ``edgewire_storage_ok`` take the minimum (down if any worker is down), process start times
the minimum, build info and the bus's own view (peers, fleet) the first worker's. Each worker's
devices and health also appear under a ``worker`` label. A sibling that does not answer within the deadline is
reported in the merged page (``edgewire_workers_unreachable``) and in /healthz.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

from gateway.bus import Bus
from gateway.errors import BusError

METRICS = "metrics"
HEALTH = "health"
ASK_TIMEOUT_S = 2.0
_MIN = ("edgewire_up", "edgewire_storage_ok", "process_start_time_seconds")
_FIRST = ("edgewire_build_info", "edgewire_bus_", "edgewire_cluster_", "edgewire_fleet_", "edgewire_peer")


def _rule(name: str) -> str:
    if name in _MIN:
        return "min"
    if any(name.startswith(prefix) for prefix in _FIRST):
        return "first"
    return "sum"


def _split(line: str) -> tuple[str, str, float] | None:
    """(series, metric name, value) of a sample line; None for comments or lines it cannot read."""
    series, _, value = line.rpartition(" ")
    if not series or line.startswith("#"):
        return None
    try:
        number = float(value)
    except ValueError:
        return None
    return series, series.split("{", 1)[0], number


def _number(value: float) -> str:
    return str(int(value)) if value == int(value) and abs(value) < 2 ** 53 else repr(value)


def merge_pages(pages: list[str]) -> str:
    """Prometheus text pages of several processes as one page: see the module docstring."""
    order: list[str] = []  # comment lines and series, in the first page's order (then new ones)
    values: dict[str, float] = {}
    seen_comments: set[str] = set()
    for page in pages:
        for line in page.splitlines():
            if not line:
                continue
            if line.startswith("#"):
                if line not in seen_comments:
                    seen_comments.add(line)
                    order.append(line)
                continue
            sample = _split(line)
            if sample is None:
                continue
            series, name, value = sample
            if series not in values:
                values[series] = value
                order.append("\x00" + series)
                continue
            rule = _rule(name)
            if rule == "sum":
                values[series] += value
            elif rule == "min":
                values[series] = min(values[series], value)
    out = [line if not line.startswith("\x00") else f"{line[1:]} {_number(values[line[1:]])}" for line in order]
    return "\n".join(out) + "\n"


class HostView:
    """A worker's view of its siblings: answers their requests and asks them for theirs."""

    def __init__(self, bus: Bus, siblings: list[str], metrics_page: Callable[[], Awaitable[str]],
                 health: Callable[[], dict[str, Any]]) -> None:
        self.bus = bus
        self.siblings = siblings  # the other workers' instance ids
        self.metrics_page = metrics_page
        self.health = health
        bus.serve(METRICS, self._serve_metrics)
        bus.serve(HEALTH, self._serve_health)

    async def _serve_metrics(self, message: dict[str, Any], sender: str) -> dict[str, Any]:
        return {"page": await self.metrics_page()}

    async def _serve_health(self, message: dict[str, Any], sender: str) -> dict[str, Any]:
        return self.health()

    async def _ask(self, kind: str) -> dict[str, dict[str, Any] | None]:
        async def one(instance: str) -> dict[str, Any] | None:
            try:
                return await self.bus.request(instance, kind, {}, ASK_TIMEOUT_S)
            except (BusError, TimeoutError):
                return None

        answers = await asyncio.gather(*(one(instance) for instance in self.siblings))
        return dict(zip(self.siblings, answers, strict=True))

    async def merged_metrics(self, own: str) -> str:
        answers = await self._ask(METRICS)
        pages = [own, *(str(a.get("page", "")) for a in answers.values() if a is not None)]
        missing = sum(1 for a in answers.values() if a is None)
        extra = ("# HELP edgewire_workers Worker processes of this gateway.\n# TYPE edgewire_workers gauge\n"
                 f"edgewire_workers {len(self.siblings) + 1}\n"
                 "# HELP edgewire_workers_unreachable Workers that did not answer this scrape in time.\n"
                 f"# TYPE edgewire_workers_unreachable gauge\nedgewire_workers_unreachable {missing}\n")
        return merge_pages(pages) + extra

    async def workers_health(self, own_id: str, own: dict[str, Any]) -> dict[str, dict[str, Any]]:
        """Each worker's health: this one's, then the siblings' (``unreachable`` when one did not answer)."""
        answers = await self._ask(HEALTH)
        out: dict[str, dict[str, Any]] = {own_id: own}
        for instance, answer in answers.items():
            out[instance] = answer if answer is not None else {"status": "unreachable"}
        return out
