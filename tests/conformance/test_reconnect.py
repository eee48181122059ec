"""Each driver's real connection loop against the scripted gateway: every close code of
docs/protocol.md section 11, HTTP 401/403 at the upgrade, refused readings, the backoff.

Runners (one class per driver, registered in RUNNERS) start the driver as it runs in the
field: the agent in-process on its own loop (token file, mock pins), the simulator's
VirtualDevice on its own loop, the firmware under CPython with the MicroPython stand-ins
(tests/firmware/simboard.py). They expose the driver's last reconnect decision and a way to
change its credential (token file, set_credential, a reflash with a new config).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import threading
import tomllib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conformance.scripted_gateway import Script, ScriptedGateway
from tests.edge.agentproc import AgentThread, wait_for
from tests.firmware.simboard import SimBoard

pytestmark = pytest.mark.timeout(90)

OLD = "ewt_" + "o" * 32
NEW = "ewt_" + "n" * 32


class AgentRunner:
    device_id = "PI-CONF"
    base_s = 0.2  # uplink.backoff_min
    cap_s = 1.0  # uplink.backoff_max
    ms_per_s = 1000.0  # the driver's milliseconds per real second

    def __init__(self, tmp: Path, url: str) -> None:
        from edge import config
        from edge.agent import Agent

        tmp.mkdir(parents=True, exist_ok=True)
        (tmp / "cpu").write_text("45000\n")
        self.token_file = tmp / "token"
        self.token_file.write_text(OLD + "\n")
        text = f'''
[agent]
device_id = "{self.device_id}"
token_file = "{self.token_file}"
gateway = "{url}"
state_dir = "{tmp / "state"}"
backend = "sim"
interval = 0.1
[uplink]
backoff_min = {self.base_s}
backoff_max = {self.cap_s}
status_interval = 5
[[sensors]]
type = "cpu_temperature"
sensor_file = "{tmp / "cpu"}"
'''
        self.agent = Agent(config.parse(tomllib.loads(text)))
        self.agent.credential_poll_s = 0.05
        self.thread = AgentThread(self.agent)

    def start(self) -> None:
        self.thread.start()

    def stop(self) -> None:
        self.thread.stop()

    def decision(self) -> tuple[str, int] | None:
        last = getattr(getattr(self.agent, "session", None), "last_reconnect", None)
        return None if last is None else (last.action, last.delay_ms)

    def set_credential(self, token: str) -> None:
        self.token_file.write_text(token + "\n")

    def provide_refresh(self, token: str) -> None:
        self.token_file.write_text(token + "\n")


class SimulatorRunner:
    device_id = "SIM-CONF"
    base_s = 0.2
    cap_s = 1.0
    ms_per_s = 1000.0

    def __init__(self, tmp: Path, url: str) -> None:
        from simulator.device import VirtualDevice

        self.refresh_value: str | None = None

        async def refresh(device_id: str) -> str | None:
            return self.refresh_value

        self.dev = VirtualDevice(url, self.device_id, OLD, rate=10, backoff_initial_s=self.base_s,
                                 backoff_max_s=self.cap_s, credential_refresh=refresh)
        self.loop: asyncio.AbstractEventLoop | None = None
        self.task: asyncio.Task[Any] | None = None
        self.thread = threading.Thread(target=self._main, daemon=True)

    def _main(self) -> None:
        async def main() -> None:
            self.loop = asyncio.get_running_loop()
            self.task = asyncio.current_task()
            await self.dev.run()

        with contextlib.suppress(asyncio.CancelledError):
            asyncio.run(main())

    def start(self) -> None:
        self.thread.start()
        wait_for(lambda: self.loop is not None, 10, "simulator loop")

    def stop(self) -> None:
        if self.loop is not None and self.task is not None:
            self.loop.call_soon_threadsafe(self.task.cancel)
        self.thread.join(10)

    def decision(self) -> tuple[str, int] | None:
        last = getattr(self.dev.session, "last_reconnect", None)
        return None if last is None else (last.action, last.delay_ms)

    def set_credential(self, token: str) -> None:
        assert self.loop is not None
        self.loop.call_soon_threadsafe(self.dev.set_credential, token)

    def provide_refresh(self, token: str) -> None:
        self.refresh_value = token


class FirmwareRunner:
    device_id = "ESP-CONF"
    speed = 4.0  # simulated ms per real ms
    base_s = 1.0 / speed  # the firmware's backoff: 1 s doubling to 60 s (simulated time)
    cap_s = 60.0 / speed
    ms_per_s = 1000.0 * speed
    DECISION = re.compile(r"-> (\w+) (-?\d+) ms")

    def __init__(self, tmp: Path, url: str) -> None:
        cfg = {"gateway_url": url, "device_id": self.device_id, "token": OLD, "interval_s": 2,
               "min_interval_s": 2, "max_interval_s": 4}
        self.board = SimBoard(tmp, cfg, speed=self.speed)

    def start(self) -> None:
        self.board.start()

    def stop(self) -> None:
        self.board.kill()

    def decision(self) -> tuple[str, int] | None:
        found = self.DECISION.findall(self.board.log_text())
        return (found[-1][0], int(found[-1][1])) if found else None

    def _write_token(self, token: str) -> None:
        path = self.board.fs / "config.json"
        cfg = json.loads(path.read_text())
        cfg["token"] = token
        path.write_text(json.dumps(cfg))

    def set_credential(self, token: str) -> None:
        """A reflash with a new token: power off, new config, power on."""
        self.board.kill()
        self._write_token(token)
        self.board.start()

    def provide_refresh(self, token: str) -> None:
        self._write_token(token)  # the firmware's credential provider re-reads its config


RUNNERS: dict[str, Callable[[Path, str], Any]] = {
    "agent": AgentRunner,
    "simulator": SimulatorRunner,
    "firmware": FirmwareRunner,
}


class Starter:
    """Starts the parametrized driver against a scripted gateway; ``cls`` is its runner class."""

    def __init__(self, cls: Any, tmp: Path) -> None:
        self.cls = cls
        self.tmp = tmp
        self.started: list[tuple[Any, ScriptedGateway]] = []

    def __call__(self, plan: list[Script]) -> tuple[Any, ScriptedGateway]:
        gateway = ScriptedGateway(plan, self.cls.device_id).start()
        runner = self.cls(self.tmp / "driver", gateway.url)
        self.started.append((runner, gateway))
        runner.start()
        return runner, gateway


@pytest.fixture(params=sorted(RUNNERS))
def driver(request: pytest.FixtureRequest, tmp_path: Path, mock_pins: Any) -> Iterator[Starter]:
    starter = Starter(RUNNERS[request.param], tmp_path)
    yield starter
    for runner, gateway in starter.started:
        runner.stop()
        gateway.stop()


def decided(runner: Any, action: str, timeout: float = 20) -> int:
    """Wait until the driver's last reconnect decision is ``action``; its delay (driver ms)."""
    try:
        got = wait_for(lambda: (d := runner.decision()) is not None and d[0] == action and d, timeout,
                       f"a reconnect decision '{action}'")
    except AssertionError as err:
        board = getattr(runner, "board", None)
        console = board.log_text()[-3000:] if board is not None else ""
        raise AssertionError(f"{err}; last decision: {runner.decision()}\n{console}") from None
    return int(got[1])


def gaps(gw: ScriptedGateway) -> list[float]:
    """Seconds from the end of each attempt to the start of the next."""
    return [b.started - a.ended for a, b in zip(gw.attempts, gw.attempts[1:], strict=False)]


@pytest.mark.parametrize("code", [4001, 4005, 4006, 4007])
def test_stop_codes_stop_until_the_credential_changes(driver: Starter, code: int) -> None:
    runner, gw = driver([Script(close=code), Script()])
    assert decided(runner, "stop") == -1
    assert len(gw.attempts) == 1, "reconnected although told to stop"
    runner.set_credential(NEW)
    wait_for(lambda: len(gw.attempts) >= 2 and gw.attempts[1].welcomed, 20, "a reconnect with the new credential")
    assert [a.credential for a in gw.attempts[1:]] == [NEW] * (len(gw.attempts) - 1)


@pytest.mark.parametrize(("status", "code", "action", "length"), [
    (401, "auth_failed", "stop", True), (403, "address_not_allowed", "stop", True),
    (403, "device_disabled", "hourly", True), (403, "address_not_allowed", "stop", False)])
def test_http_refusal_at_the_upgrade(driver: Starter, status: int, code: str, action: str, length: bool) -> None:
    runner, gw = driver([Script(http=(status, code), http_length=length), Script()])
    delay = decided(runner, action)
    assert len(gw.attempts) == 1
    if action == "hourly":
        assert 0.9 * 3600 * 1000 <= delay <= 3600 * 1000
    else:
        runner.set_credential(NEW)
        wait_for(lambda: len(gw.attempts) >= 2 and gw.attempts[1].welcomed, 20, "a reconnect after the new credential")


def test_disabled_device_retries_hourly(driver: Starter) -> None:
    runner, gw = driver([Script(close=4003), Script()])
    delay = decided(runner, "hourly")
    assert 0.9 * 3600 * 1000 <= delay <= 3600 * 1000
    assert len(gw.attempts) == 1


def test_too_many_errors_reconnects_slowly(driver: Starter) -> None:
    runner, _gw = driver([Script(close=4000), Script()])
    delay = decided(runner, "slow")
    assert delay >= runner.cap_s * runner.ms_per_s / 2


def test_expired_credential_is_refreshed_then_reconnects_with_backoff(driver: Starter) -> None:
    gate = threading.Event()
    runner, gw = driver([Script(gate=gate, close=4004), Script()])
    wait_for(lambda: gw.attempts and gw.attempts[0].welcomed, 20, "the first welcome")
    runner.provide_refresh(NEW)
    gate.set()
    wait_for(lambda: len(gw.attempts) >= 2 and gw.attempts[1].welcomed, 20, "a reconnect with the new credential")
    assert gw.attempts[1].credential == NEW
    assert gaps(gw)[0] >= 0.9 * runner.base_s / 2, "reconnected at once, without backoff"


def test_expired_credential_without_a_new_one_stops(driver: Starter) -> None:
    runner, gw = driver([Script(close=4004), Script()])
    assert decided(runner, "stop") == -1
    assert len(gw.attempts) == 1


def test_backoff_codes_reconnect_after_a_backoff(driver: Starter) -> None:
    codes = [1000, 1001, 1009, 1011, 1012, 1013, 4002, 4008, 4009]
    runner, gw = driver([Script(close=code) for code in codes] + [Script()])
    wait_for(lambda: len(gw.attempts) > len(codes) and gw.attempts[len(codes)].welcomed, 60,
             "a reconnect after each backoff close code")
    for code, gap in zip(codes, gaps(gw), strict=False):
        assert gap >= 0.9 * runner.base_s / 2, f"reconnected {gap:.3f} s after close {code}"


def test_refused_readings_are_never_resent(driver: Starter) -> None:
    """The refused frame is the last one before the connection drops: no later ack covers it."""
    _runner, gw = driver([Script(serve=1, refuse_first=True, close=1011), Script(serve=2, close=1011), Script()])
    wait_for(lambda: len(gw.attempts) >= 3 and len(gw.attempts[2].data_seqs) >= 2, 40,
             "readings on the third connection")
    assert gw.refused, "nothing was refused"
    later = [s for a in gw.attempts[1:] for s in a.data_seqs]
    assert not set(gw.refused) & set(later), f"refused {gw.refused} were resent: {later}"


def test_backoff_counts_from_the_end_of_the_attempt(driver: Starter) -> None:
    """The second attempt is slower than its drawn delay: the third must still wait after it ends."""
    runner, gw = driver([Script(close=1011), Script(stall_s=6 * driver.cls.base_s, http=(503, "shutting_down")),
                         Script()])
    wait_for(lambda: len(gw.attempts) >= 3, 40, "a third attempt")
    assert gaps(gw)[1] >= 0.9 * runner.base_s, f"retried {gaps(gw)[1]:.3f} s after a slow failed attempt"
