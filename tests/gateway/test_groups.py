"""Labels, group selectors (gateway/groups.py) and the group command runner (gateway/group_commands.py)."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from gateway.device_commands import Commands
from gateway.errors import CommandError, DeviceOffline, GroupError
from gateway.group_commands import run_group, summary
from gateway.groups import changed_labels, device_group, members, parse_group, parse_label_changes
from gateway.storage.base import DeviceRecord


def rec(device_id: str, enabled: bool = True, **labels: str) -> DeviceRecord:
    return DeviceRecord(device_id, enabled, None, labels=labels)


FLEET = [rec("C", site="gh", row="2"), rec("A", site="gh"), rec("B", site="lab", outdoor=""), rec("D")]


@pytest.mark.parametrize(("text", "expected"), [
    ("label=site", ["A", "B", "C"]),
    ("label=site=gh", ["A", "C"]),
    ("label=site=gh,row=2", ["C"]),
    ("label=outdoor", ["B"]),
    ("label=outdoor=", ["B"]),  # a tag's value is ""
    ("devices=D,A,D", ["A", "D"]),
])
def test_selectors(text: str, expected: list[str]) -> None:
    assert [r.device_id for r in members(parse_group(text), FLEET)] == expected


@pytest.mark.parametrize(("text", "code"), [
    ("", "bad_group"), ("site=gh", "bad_group"), ("label=", "bad_group"), ("devices=", "bad_group"),
    ("devices=a b", "bad_group"), ("label=bad key", "bad_label"), ("label=k=v v", "bad_label"),
])
def test_bad_selectors_are_refused_with_their_code(text: str, code: str) -> None:
    with pytest.raises(GroupError) as err:
        parse_group(text)
    assert err.value.code == code


def test_an_empty_group_or_an_unknown_member_is_an_error_not_success() -> None:
    with pytest.raises(GroupError) as err:
        members(parse_group("label=site=nowhere"), FLEET)
    assert err.value.code == "empty_group"
    with pytest.raises(GroupError) as err:
        members(device_group(["A", "Z-9"]), FLEET)
    assert err.value.code == "not_found" and "Z-9" in str(err.value)
    with pytest.raises(GroupError):
        device_group([])


def test_label_changes() -> None:
    assert parse_label_changes(["site=gh", "outdoor", "row-"]) == ({"site": "gh", "outdoor": ""}, ["row"])
    assert changed_labels({"row": "2", "site": "lab"}, {"site": "gh"}, ["row"]) == {"site": "gh"}
    for bad in (["a=b c"], ["-x"], ["x-=1"], ["k" * 33], ["k=" + "v" * 65]):
        with pytest.raises(GroupError) as err:
            parse_label_changes(bad)
        assert err.value.code == "bad_label", bad
    with pytest.raises(GroupError, match="at most 16"):
        changed_labels({f"k{i}": "" for i in range(16)}, {"one-more": ""}, [])


class FakeCommands:
    """Commands.run as the group runner sees it: ``answers[device]`` is a result dict or an exception;
    a device in ``slow`` answers only when released. Records how many run at once."""

    def __init__(self, answers: dict[str, Any], slow: set[str] | None = None) -> None:
        self.answers = answers
        self.slow = slow or set()
        self.release = asyncio.Event()
        self.calls: list[tuple[str, float, bool]] = []
        self.running = 0
        self.most = 0

    async def run(self, device_id: str, name: str, args: dict[str, Any], timeout: float,
                  queue: bool = True) -> dict[str, Any]:
        self.calls.append((device_id, timeout, queue))
        self.running += 1
        self.most = max(self.most, self.running)
        try:
            if device_id in self.slow:
                await self.release.wait()
            else:
                await asyncio.sleep(0)
            answer = self.answers[device_id]
            if isinstance(answer, BaseException):
                raise answer
            return dict(answer)
        finally:
            self.running -= 1


def test_each_member_gets_one_outcome_and_offline_ones_are_not_queued() -> None:
    fake = FakeCommands({
        "A": {"ok": True, "msg": "pong"}, "B": DeviceOffline("device 'B' is not online"),
        "C": {"ok": False, "msg": "no output 'fan'"}, "E": TimeoutError("no result"),
        "F": CommandError("too_many_commands", "16 queued"),
    })
    records = [rec("A"), rec("B"), rec("C"), rec("D", enabled=False), rec("E"), rec("F")]
    results = asyncio.run(run_group(fake, records, "ping", {}, 10.0, parallel=2))  # type: ignore[arg-type]
    assert [(r["device"], r["ok"], r["code"]) for r in results] == [
        ("A", True, "ok"), ("B", False, "device_offline"), ("C", False, "refused"),
        ("D", False, "device_disabled"), ("E", False, "timeout"), ("F", False, "too_many_commands")]
    assert results[2]["result"] == {"ok": False, "msg": "no output 'fan'"}
    assert [c[0] for c in fake.calls] == ["A", "B", "C", "E", "F"]  # nothing sent to the disabled one
    assert all(queue is False for _d, _t, queue in fake.calls)  # never queued for an offline member
    assert fake.most <= 2
    assert summary(results) == {"total": 6, "ok": 1, "device_offline": 1, "refused": 1, "device_disabled": 1,
                                "timeout": 1, "too_many_commands": 1}


def test_one_deadline_for_the_group_members_past_it_are_not_sent() -> None:
    now = [100.0]
    fake = FakeCommands({"A": {"ok": True}, "B": {"ok": True}}, slow={"A"})

    async def body() -> list[dict[str, Any]]:
        task = asyncio.create_task(run_group(fake, [rec("A"), rec("B")], "ping", {}, 5.0, parallel=1,  # type: ignore[arg-type]
                                             clock=lambda: now[0]))
        while not fake.calls:
            await asyncio.sleep(0)
        assert fake.calls == [("A", 5.0, False)]  # the whole group's time, for the first one
        now[0] += 6.0  # A took longer than the group's timeout
        fake.release.set()
        return await task

    results = asyncio.run(body())
    assert [(r["device"], r["code"]) for r in results] == [("A", "ok"), ("B", "not_sent")]
    assert [c[0] for c in fake.calls] == ["A"]


def test_the_runner_takes_the_commands_object() -> None:
    """The fake above has Commands.run's signature (the admin API passes the real one)."""
    import inspect

    assert list(inspect.signature(FakeCommands.run).parameters) == list(inspect.signature(Commands.run).parameters)
