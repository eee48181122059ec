"""The admin API's alert requests (gateway/alerts/admin.py): shapes, identity from the caller, errors."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from gateway.alerts.admin import AlertAdmin
from gateway.errors import AlertError
from tests.gateway.alerts.harness import T0, Harness

HOT = {"id": "hot", "metric": "temperature", "above": 30}


def test_list_ack_clear_and_rules(tmp_path: Path) -> None:
    async def body() -> None:
        async with Harness(tmp_path / "a.db", [HOT]) as h:
            admin = AlertAdmin(h.engine)
            for device in ("S-1", "S-2", "S-3"):
                h.feed(device, {"temperature": 35.0}, T0)
            await h.settle()
            opened = (await admin.requests["alerts"]({"state": "open"}, "admin"))["alerts"]
            assert [a["device"] for a in opened] == ["S-3", "S-2", "S-1"]  # newest first
            page = await admin.requests["alerts"]({"state": "open", "limit": 1, "before": opened[0]["id"]}, "admin")
            assert [a["device"] for a in page["alerts"]] == ["S-2"]
            first = opened[-1]["id"]
            acked = await admin.requests["alert_ack"]({"alert_id": first, "note": "checking"}, "admin")
            assert acked["alert"]["acked_by"] == "admin"  # who comes from the credential, not the request
            cleared = await admin.requests["alert_clear"]({"alert_id": first, "by": "mallory"}, "admin")
            assert cleared["alert"]["cleared_by"] == "admin"
            one = await admin.requests["alert"]({"alert_id": first}, "admin")
            assert [e["event"] for e in one["alert"]["history"]] == ["raised", "acknowledged", "cleared"]
            listed = await admin.requests["alerts"]({"device_id": "S-1"}, "admin")
            assert [a["state"] for a in listed["alerts"]] == ["cleared"]

            rules = (await admin.requests["alert_rules"]({}, "admin"))["rules"]
            assert [(r["id"], r["source"]) for r in rules] == [("hot", "config")]
            edited = dict(rules[0], above=40)  # as listed, "source" and all: accepted
            put = await admin.requests["alert_rule_put"]({"rule": edited}, "admin")
            assert (put["rule"]["above"], put["rule"]["source"], put["rule"]["updated_by"]) == (40.0, "admin", "admin")
            deleted = await admin.requests["alert_rule_delete"]({"rule_id": "hot"}, "admin")
            assert deleted == {"rule": "hot", "cleared": 2}

    asyncio.run(body())


@pytest.mark.parametrize(("name", "msg", "code", "text"), [
    ("alerts", {"state": "burning"}, "bad_request", "state: open or one of"),
    ("alerts", {"limit": 0}, "bad_request", "limit: an integer from 1 to 1000"),
    ("alerts", {"device_id": 5}, "bad_request", "device_id"),
    ("alert", {"alert_id": 99}, "no_such_alert", "alert 99 does not exist"),
    ("alert", {"alert_id": 1, "history": "yes"}, "bad_request", "history"),
    ("alert_ack", {}, "bad_request", "alert_id: a positive integer"),
    ("alert_ack", {"alert_id": 1, "note": "x" * 300}, "bad_request", "note"),
    ("alert_clear", {"alert_id": 12345}, "no_such_alert", "does not exist"),
    ("alert_rule_put", {"rule": "above 30"}, "bad_request", "rule: an object"),
    ("alert_rule_put", {"rule": {"type": "below", "metric": "temperature"}}, "bad_rule", "rule: below: missing"),
    ("alert_rule_put", {"rule": {"type": "stuck", "metric": "humidity", "window_s": "1h"}}, "bad_rule",
     "rule: window_s: must be a number, not '1h'"),
    ("alert_rule_delete", {"rule_id": "nope"}, "no_such_rule", "no rule 'nope'"),
])
def test_refusals_have_a_code_and_say_what_to_fix(tmp_path: Path, name: str, msg: dict[str, object], code: str,
                                                  text: str) -> None:
    async def body() -> None:
        async with Harness(tmp_path / "a.db", [HOT]) as h:
            admin = AlertAdmin(h.engine)
            with pytest.raises(AlertError) as err:
                await admin.requests[name](msg, "admin")
            assert err.value.code == code and text in str(err.value), str(err.value)
            assert h.engine.rules()[0]["above"] == 30.0  # nothing changed

    asyncio.run(body())
