"""A draft rule replayed over a device's stored readings: where it would have raised and cleared.

The replay is the live engine's own code: an ``AlertEngine`` (gateway/alerts/engine.py) holding
only the draft rule, on a clock that is the readings' time, fed every stored reading of the device
in [start, end) in the order the gateway stored them (``Storage.readings``, paged). Its timed rules
(no_data) get the engine's timer tick every ``tick_s`` of the replayed time. Nothing is stored:
the transitions the engine would have written are collected instead (``Replay._record``).

What the replay cannot know: when the device was disconnected (a live engine suspends value alerts
while a device is offline and its rules forget their short-term windows), and readings already
removed by retention (``readings_retention_days``). Acknowledgements and hand clears are an
operator's, not the rule's.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from gateway.alerts.engine import AlertEngine
from gateway.alerts.model import CLEARED, RAISED
from gateway.alerts.rules import parse_rule
from gateway.errors import AlertError, ConfigError
from gateway.storage.base import AlertRow, Storage

DAY_MS = 86_400_000
MAX_RANGE_MS = 31 * DAY_MS
MAX_READINGS = 200_000  # a month of readings every 15 s; more is cut (``truncated``)
PAGE = 10_000
TICK_S = 2.0  # the live engine's tick (AlertEngine.tick_s)


@dataclass(frozen=True, slots=True)
class Mark:
    event: str  # "raised" or "cleared"
    at: int  # ms
    value: float | None
    text: str

    def as_dict(self) -> dict[str, Any]:
        return {"event": self.event, "at": self.at, "value": self.value, "text": self.text}


class Replay(AlertEngine):
    """An engine with one rule whose changes are collected, not stored; its clock is the replay's."""

    def __init__(self, storage: Storage, spec: dict[str, Any], hour_of: Callable[[int], int] | None = None) -> None:
        self.replay_ms = 0
        super().__init__(storage, [spec], clock=lambda: self.replay_ms / 1000)
        if hour_of is not None:  # the live engine's time zone (alert_timezone)
            self.hour_of = hour_of  # type: ignore[assignment]
            for rule in self.book.rules.values():
                rule.hour_of = hour_of
        self.marks: list[Mark] = []

    def _record(self, alert: AlertRow, event: str, at_ms: int, by: str | None, value: float | None, text: str,
                future: asyncio.Future[None] | None = None) -> bool:
        if event in (RAISED, CLEARED):
            self.marks.append(Mark(event, at_ms, value, text))
        return True


def check_spec(spec: Any) -> dict[str, Any]:
    """The draft's canonical spec, or AlertError ``bad_rule`` (as the admin API's alert_rule_put)."""
    try:
        return parse_rule(spec, "rule")
    except ConfigError as err:
        raise AlertError("bad_rule", str(err)) from None


async def preview(storage: Storage, spec: Any, device_id: str, start_ms: int, end_ms: int,
                  hour_of: Callable[[int], int] | None = None, tick_s: float = TICK_S,
                  max_readings: int = MAX_READINGS) -> dict[str, Any]:
    """Replay ``spec`` (a rule table, checked as alert_rule_put checks it) over the device's stored
    readings in [start_ms, end_ms). The answer: the marks, the episodes (raised -> cleared, ``to``
    None while still open at ``end_ms``), how many readings were replayed and how long it took."""
    checked = check_spec(spec)
    if not 0 < end_ms - start_ms <= MAX_RANGE_MS:
        raise AlertError("bad_request", f"from, to: a range of at most {MAX_RANGE_MS // DAY_MS} days, from before to")
    began = time.perf_counter()
    replay = Replay(storage, checked, hour_of)
    rule = replay.book.rules[checked["id"]]
    answer: dict[str, Any] = {"rule": checked, "device": device_id, "from": start_ms, "to": end_ms,
                              "applies": rule.applies(device_id), "readings": 0, "truncated": False}
    replay.started_ms = start_ms
    timed = bool(replay.book.timed_rules)
    tick_ms = max(1, int(tick_s * 1000))
    next_tick = start_ms + tick_ms
    count = 0
    after: tuple[int, int] | None = None
    while answer["applies"]:
        rows = await storage.readings(device_id, start_ms, end_ms, after, PAGE)
        for row in rows:
            at = row.time_ms
            if timed:
                while next_tick <= at:
                    replay.replay_ms = next_tick
                    replay.tick(next_tick)
                    next_tick += tick_ms
            replay.replay_ms = at
            replay.reading(device_id, row.metrics, at, at, row.quality)
            count += 1
        if count >= max_readings:
            answer["truncated"] = len(rows) == PAGE
            break
        if len(rows) < PAGE:
            break
        after = (rows[-1].time_ms, rows[-1].seq)
        await asyncio.sleep(0)  # let the gateway's other work through between pages
    if timed and answer["applies"]:
        last = end_ms if not answer["truncated"] else replay.replay_ms  # the caller ends the range by now
        while next_tick <= last:
            replay.replay_ms = next_tick
            replay.tick(next_tick)
            next_tick += tick_ms
    answer["readings"] = count
    answer["marks"] = [mark.as_dict() for mark in replay.marks]
    answer["episodes"] = episodes(replay.marks)
    answer["alerts"] = sum(1 for mark in replay.marks if mark.event == RAISED)
    answer["summary"] = summary(answer["alerts"], end_ms - start_ms, count, answer["applies"])
    answer["elapsed_ms"] = round((time.perf_counter() - began) * 1000, 1)
    return answer


def episodes(marks: list[Mark]) -> list[dict[str, Any]]:
    """[{from, to}] of each alert the replay raised (``to`` None: still open at the end)."""
    found: list[dict[str, Any]] = []
    for mark in marks:
        if mark.event == RAISED:
            found.append({"from": mark.at, "to": None})
        elif found and found[-1]["to"] is None:
            found[-1]["to"] = mark.at
    return found


def summary(alerts: int, span_ms: int, readings: int, applies: bool) -> str:
    """'3 alerts in the last 7 days (10,080 readings)'."""
    if not applies:
        return "The rule does not apply to this device (its devices patterns leave it out)."
    days = span_ms / DAY_MS
    span = f"{days:g} days" if days >= 1 and days == int(days) else f"{span_ms / 3_600_000:.3g} hours"
    noun = "alert" if alerts == 1 else "alerts"
    return f"{alerts} {noun} in the last {span} ({readings:,} readings replayed)."
