"""The emulated ESP32's hardware (simulator/esp32/peripherals.py, sockets.py), request by request."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path
from typing import Any

import pytest

from simulator.esp32 import peripherals as p
from simulator.esp32.sockets import EAGAIN, ECONNREFUSED, EHOSTUNREACH, ETIMEDOUT


def make(tmp_path: Path, world: dict[str, Any]) -> tuple[p.Peripherals, list[tuple[int, int]]]:
    (tmp_path / "world.json").write_text(json.dumps(world))
    resets: list[tuple[int, int]] = []
    periph = p.Peripherals(p.World(tmp_path / "world.json"), b"\x24\x0a\xc4\x01\x02\x03", p.PWRON_RESET,
                           bytearray(), lambda cause, ms: resets.append((cause, ms)), asyncio.Event(), {})
    return periph, resets


async def call(periph: p.Peripherals, op: str, **args: Any) -> dict[str, Any]:
    return await periph.handle(json.dumps({"op": op, **args}).encode())


async def associate(periph: p.Peripherals, ssid: str, key: str) -> int:
    await call(periph, "wlan", fn="active", on=True)
    await call(periph, "wlan", fn="connect", ssid=ssid, key=key)
    assert (await call(periph, "wlan", fn="status"))["v"] == p.STAT_CONNECTING
    periph.station.since -= p.ASSOCIATE_S  # association time elapsed
    status: int = (await call(periph, "wlan", fn="status"))["v"]
    return status


@pytest.mark.parametrize(("world", "ssid", "key", "status"), [
    ({"ap": {"ssid": "lab", "password": "secret-pw"}}, "lab", "secret-pw", p.STAT_GOT_IP),
    ({"ap": {"ssid": "lab", "password": "secret-pw"}}, "lab", "wrong-pw", p.STAT_WRONG_PASSWORD),
    ({"ap": None}, "lab", "secret-pw", p.STAT_NO_AP_FOUND),
    ({"ap": {"ssid": "lab", "password": "secret-pw"}, "link": False}, "lab", "secret-pw", p.STAT_BEACON_TIMEOUT),
])
def test_station_status_follows_the_access_point(tmp_path: Path, world: dict[str, Any], ssid: str, key: str,
                                                 status: int) -> None:
    async def run() -> None:
        periph, _ = make(tmp_path, world)
        assert await associate(periph, ssid, key) == status
        connected = (await call(periph, "wlan", fn="isconnected"))["v"]
        assert connected is (status == p.STAT_GOT_IP)
        ifconfig = (await call(periph, "wlan", fn="ifconfig"))["v"]
        assert (ifconfig == p.IFCONFIG) is connected

    asyncio.run(run())


def test_sockets_reach_loopback_only_and_time_out_like_lwip(tmp_path: Path) -> None:
    async def run() -> None:
        server = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        periph, _ = make(tmp_path, {"ap": {"ssid": "lab", "password": "secret-pw"}})
        sid = (await call(periph, "sock_new"))["v"]
        assert await call(periph, "sock_connect", id=sid, host="127.0.0.1", port=port, ms=1000) == {
            "err": EHOSTUNREACH}  # no Wi-Fi yet: no route
        assert await associate(periph, "lab", "secret-pw") == p.STAT_GOT_IP
        assert await call(periph, "sock_connect", id=sid, host="10.0.0.1", port=port, ms=1000) == {
            "err": EHOSTUNREACH}  # not the host's loopback
        assert await call(periph, "resolve", host="example.com") == {"err": -202}
        assert (await call(periph, "resolve", host="localhost"))["v"] == "127.0.0.1"
        assert await call(periph, "sock_connect", id=sid, host="127.0.0.1", port=port, ms=1000) == {"v": None}
        assert await call(periph, "sock_recv", id=sid, n=10, ms=0) == {"err": EAGAIN}
        assert await call(periph, "sock_recv", id=sid, n=10, ms=50) == {"err": ETIMEDOUT}
        assert await call(periph, "poll", ids=[sid], ms=30) == {"v": []}
        server.close()
        await server.wait_closed()
        closed = (await call(periph, "sock_new"))["v"]
        assert await call(periph, "sock_connect", id=closed, host="127.0.0.1", port=port, ms=1000) == {
            "err": ECONNREFUSED}
        periph.close()

    asyncio.run(run())


def test_ctrl_c_interrupts_a_waiting_call_only_while_the_app_runs(tmp_path: Path) -> None:
    async def run() -> None:
        periph, _ = make(tmp_path, {})
        sleeping = asyncio.create_task(call(periph, "sleep", ms=60000))
        await asyncio.sleep(0.05)
        periph.interrupt()
        assert await asyncio.wait_for(sleeping, 5) == {"intr": 1}
        assert await call(periph, "repl") == {"v": None}  # main.py ended: the REPL's commands run on
        periph.interrupt()
        assert await call(periph, "sleep", ms=1) == {"v": None}
        assert await call(periph, "boot", app=True) == {"v": None}  # a soft reset ran main.py again
        periph.interrupt()
        assert await call(periph, "pin", pin=2) == {"intr": 1}
        assert await periph.handle(b"not json") == {"err": 22}
        assert await call(periph, "sock_send", id=3, data="zz") == {"err": 22}

    asyncio.run(run())


def test_watchdog_rtc_memory_and_reset_requests(tmp_path: Path) -> None:
    async def run() -> None:
        periph, resets = make(tmp_path, {})
        await call(periph, "wdt", ms=50)
        assert not periph.wdt_expired()
        periph.wdt_fed = time.monotonic() - 1
        assert periph.wdt_expired()
        await call(periph, "rtc_memory", data=[1, 2, 3])
        assert periph.rtc_memory == bytearray(b"\x01\x02\x03")
        assert (await call(periph, "rtc_memory"))["v"] == [1, 2, 3]
        assert (await call(periph, "unique_id"))["v"] == [0x24, 0x0A, 0xC4, 1, 2, 3]
        pending = asyncio.create_task(call(periph, "reset", cause=p.DEEPSLEEP_RESET, sleep_ms=1000))
        await asyncio.sleep(0.05)
        assert resets == [(p.DEEPSLEEP_RESET, 1000)] and not pending.done()  # the board stops the interpreter
        pending.cancel()

    asyncio.run(run())


def test_dht_reads_follow_the_physics_and_the_world(tmp_path: Path) -> None:
    async def run() -> None:
        periph, _ = make(tmp_path, {"dht": {"heat_c": 30.0}})
        first = await call(periph, "dht", pin=4)
        assert first == {"err": ETIMEDOUT}  # still warming up after power-on
        periph.sensors[4].powered_at -= 5
        periph.sensors[4].last_read = None
        frame = (await call(periph, "dht", pin=4))["v"]
        assert len(frame) == 5 and sum(frame[:4]) & 0xFF == frame[4]
        celsius = ((frame[2] & 0x7F) << 8 | frame[3]) / 10
        assert celsius > 40  # the climate plus 30 C
        assert await call(periph, "dht", pin=4) == {"err": ETIMEDOUT}  # within the DHT22's 2 s

    asyncio.run(run())
