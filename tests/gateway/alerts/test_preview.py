"""The rule preview (gateway/alerts/preview.py) over a stored week of one-minute readings agrees
with an independent replay written here: a plain loop with the rule's documented meaning
(docs/alerts.md: past the threshold for ``for_s``, cleared once back past threshold -/+ hysteresis)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest

from gateway.alerts import preview
from gateway.errors import AlertError
from gateway.storage.base import ReadingRow
from gateway.storage.sqlite import SQLiteStorage
from tests.helpers.storage import with_sqlite

T0 = 1_764_000_000_000
MIN = 60_000
WEEK = 7 * 1440


def week() -> list[tuple[int, float]]:
    """10,080 one-minute temperatures: a daily swing, slow drift and a few short spikes."""
    points = []
    for i in range(WEEK):
        value = 22 + 6 * math.sin(2 * math.pi * i / 1440) + 0.8 * math.sin(i / 37.0)
        if i % 1777 < 4:
            value += 9  # short spikes: held for `for_s` or not
        points.append((T0 + i * MIN, round(value, 2)))
    return points


def independent(points: list[tuple[int, float]], above: float | None, below: float | None, hysteresis: float,
                for_s: float) -> list[tuple[str, int]]:
    """raise/clear marks of a threshold rule, computed without the gateway's code."""
    marks: list[tuple[str, int]] = []
    is_open, since = False, None
    for t, v in points:
        past = v > above if above is not None else v < below  # type: ignore[operator]
        if past:
            if not is_open:
                since = t if since is None else since
                if t - since >= for_s * 1000:
                    is_open, since = True, None
                    marks.append(("raised", t))
            continue
        since = None
        back = (v < above - hysteresis if above is not None else v > below + hysteresis)  # type: ignore[operator]
        if is_open and (back or hysteresis == 0):
            is_open = False
            marks.append(("cleared", t))
    return marks


def store_week(storage: SQLiteStorage, points: list[tuple[int, float]]) -> Any:
    return storage.store([ReadingRow("W-1", i + 1, t, t, {"temperature": v, "humidity": 40.0})
                          for i, (t, v) in enumerate(points)])


@pytest.mark.parametrize("rule", [
    {"metric": "temperature", "above": 27.5, "hysteresis": 1.0, "for_s": 600},
    {"metric": "temperature", "above": 30.0},
    {"metric": "temperature", "below": 17.0, "hysteresis": 0.5, "for_s": 120},
])
def test_the_preview_agrees_with_an_independent_replay(tmp_path: Path, rule: dict[str, Any]) -> None:
    points = week()
    expected = independent(points, rule.get("above"), rule.get("below"), rule.get("hysteresis", 0.0),
                           rule.get("for_s", 0.0))
    assert len(expected) >= 4  # the week has episodes to compare

    async def body(storage: SQLiteStorage) -> dict[str, Any]:
        await store_week(storage, points)
        return await preview.preview(storage, rule, "W-1", T0, T0 + WEEK * MIN)

    answer = with_sqlite(tmp_path / "p.db", body)
    assert answer["readings"] == WEEK and not answer["truncated"]
    assert [(m["event"], m["at"]) for m in answer["marks"]] == expected
    assert answer["alerts"] == sum(1 for kind, _ in expected if kind == "raised")
    assert answer["summary"].startswith(f"{answer['alerts']} alerts in the last 7 days")


def test_a_timed_rule_is_replayed_with_the_engine_tick(tmp_path: Path) -> None:
    """no_data: a 3-hour hole in the week raises once, cleared by the next reading."""
    points = [p for p in week() if not T0 + 2000 * MIN <= p[0] < T0 + 2180 * MIN]

    async def body(storage: SQLiteStorage) -> dict[str, Any]:
        await store_week(storage, points)
        return await preview.preview(storage, {"type": "no_data", "min_s": 600}, "W-1", T0, T0 + WEEK * MIN)

    answer = with_sqlite(tmp_path / "p.db", body)
    assert [m["event"] for m in answer["marks"]] == ["raised", "cleared"]
    raised, cleared = answer["marks"][0]["at"], answer["marks"][1]["at"]
    assert T0 + 2000 * MIN <= raised <= T0 + 2180 * MIN and cleared == T0 + 2180 * MIN


def test_a_rule_that_leaves_the_device_out_replays_nothing(tmp_path: Path) -> None:
    async def body(storage: SQLiteStorage) -> dict[str, Any]:
        await store_week(storage, week()[:100])
        return await preview.preview(storage, {"metric": "temperature", "above": 0, "devices": ["GH-*"]}, "W-1",
                                     T0, T0 + WEEK * MIN)

    answer = with_sqlite(tmp_path / "p.db", body)
    assert (answer["applies"], answer["readings"], answer["marks"]) == (False, 0, [])
    assert "does not apply" in answer["summary"]


def test_a_draft_is_checked_as_the_admin_api_checks_it(tmp_path: Path) -> None:
    async def body(storage: SQLiteStorage) -> None:
        with pytest.raises(AlertError) as err:
            await preview.preview(storage, {"metric": "temperature", "above": "hot"}, "W-1", T0, T0 + MIN)
        assert err.value.code == "bad_rule" and "above" in str(err.value)
        with pytest.raises(AlertError) as err:
            await preview.preview(storage, {"metric": "temperature", "above": 1}, "W-1", T0, T0 + 40 * 1440 * MIN)
        assert err.value.code == "bad_request"

    with_sqlite(tmp_path / "p.db", body)
