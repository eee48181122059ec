"""Supervised background tasks: a task that dies is reported, restarted, or stops the gateway."""

from __future__ import annotations

import asyncio
import logging

import pytest

from gateway.supervisor import FAILED, GAVE_UP, RUNNING, STOPPED, Supervisor, spawn
from tests.helpers.waiting import until


def test_a_failed_task_is_reported_then_restarted() -> None:
    async def run() -> None:
        runs = 0
        release = asyncio.Event()

        async def flaky() -> None:
            nonlocal runs
            runs += 1
            if runs == 1:
                await release.wait()
                raise RuntimeError("boom")
            await asyncio.Event().wait()  # runs for ever

        sup = Supervisor(restart_delay_s=0.2)
        sup.start("hub", flaky)
        await until(lambda: runs == 1)
        assert sup.healthy and sup.health()["hub"]["state"] == RUNNING
        release.set()
        await until(lambda: sup.tasks["hub"].state == FAILED, what="the failure to show")
        assert not sup.healthy and sup.health()["hub"]["last_error"] == "RuntimeError: boom"
        await until(lambda: runs == 2 and sup.healthy, what="the restart")
        assert sup.health()["hub"] == {"state": RUNNING, "restarts": 1, "last_error": "RuntimeError: boom"}
        await sup.stop()
        assert sup.health()["hub"]["state"] == STOPPED

    asyncio.run(run())


def test_a_task_that_keeps_failing_stops_the_gateway() -> None:
    async def run() -> None:
        gave_up: list[str] = []

        async def broken() -> None:
            raise ValueError("always")

        async def returns() -> None:
            return None

        sup = Supervisor(restart_delay_s=0.0, max_restarts=3, on_give_up=lambda name, err: gave_up.append(name))
        sup.start("sweep", broken)
        sup.start("quitter", returns)
        await until(lambda: len(gave_up) == 2, what="both to give up")
        assert sorted(gave_up) == ["quitter", "sweep"]
        assert sup.tasks["sweep"].state == GAVE_UP and sup.tasks["sweep"].restarts == 3
        assert "returned" in str(sup.health()["quitter"]["last_error"])
        await sup.stop()  # never raises

    asyncio.run(run())


def test_a_one_off_task_that_fails_is_logged_not_lost(caplog: pytest.LogCaptureFixture) -> None:
    async def run() -> None:
        async def broken() -> None:
            await asyncio.sleep(0)
            raise KeyError("lost")

        task = spawn(broken(), "registry cut-off")
        await asyncio.wait([task])

    with caplog.at_level(logging.ERROR, logger="edgewire"):
        asyncio.run(run())
    failures = [r for r in caplog.records if r.getMessage() == "task_failed"]
    assert len(failures) == 1
    fields = failures[0].fields  # type: ignore[attr-defined]
    assert fields["task"] == "registry cut-off" and "KeyError" in fields["error"] and "broken" in fields["traceback"]
