"""VirtualDevice against an in-test gateway (real websockets server, protocol.gateway.GatewaySession)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from simulator.device import DeviceCounters, VirtualDevice
from simulator.faults import FaultPlan
from simulator.sensors import SensorModel
from tests.simulator.gateway_stub import StubGateway

pytestmark = pytest.mark.timeout(60)

TOKENS = {"dev-1": "ewt_" + "a" * 32, "dev-2": "ewt_" + "b" * 32}
JWT_SECRET = "s" * 40


def check_invariant(c: DeviceCounters, dev: VirtualDevice) -> None:
    assert c.generated == c.acked + c.rejected + c.dropped + dev.buffered


def run(coro_fn: Callable[[StubGateway], Awaitable[Any]], **stub_kw: Any) -> Any:
    async def main() -> Any:
        stub = StubGateway(TOKENS, jwt_secret=JWT_SECRET, **stub_kw)
        await stub.start()
        try:
            return await coro_fn(stub)
        finally:
            await stub.stop()
    return asyncio.run(main())


async def until(predicate: Callable[[], bool], timeout: float = 5.0) -> None:
    loop = asyncio.get_running_loop()
    end = loop.time() + timeout
    while not predicate():
        assert loop.time() < end, "condition not reached in time"
        await asyncio.sleep(0.01)


async def finish(dev: VirtualDevice, task: asyncio.Task[DeviceCounters],
                 timeout: float = 5.0) -> DeviceCounters:
    dev.stop_generating()
    return await asyncio.wait_for(task, timeout)


def test_readings_arrive_exactly_once_across_forced_disconnects() -> None:
    async def body(stub: StubGateway) -> None:
        dev = VirtualDevice(stub.url, "dev-1", TOKENS["dev-1"], rate=200, batch=5, window=4,
                            backoff_initial_s=0.05)
        task = asyncio.create_task(dev.run())
        for n in (1, 2, 3):
            await until(lambda n=n: stub.connects["dev-1"] == n and dev.counters.sent_frames > 10 * n)
            stub.abort("dev-1")  # TCP dropped, acks of in-flight frames lost
        await until(lambda: stub.connects["dev-1"] == 4)
        c = await finish(dev, task)
        assert stub.stored["dev-1"] == list(range(1, c.generated + 1))  # every reading, once, in order
        assert c.acked == c.generated and dev.buffered == 0
        assert c.reconnects == 3 and c.errors.get("close_1006") == 3
        check_invariant(c, dev)

    run(body, ack_delay_s=0.01)  # acks lag, so frames are in flight when the link drops


def test_client_side_network_drop_fault_and_resend() -> None:
    async def body(stub: StubGateway) -> None:
        plan = FaultPlan(seed=3, drop_mean_s=0.3)
        dev = VirtualDevice(stub.url, "dev-1", TOKENS["dev-1"], rate=100, batch=4, faults=plan,
                            backoff_initial_s=0.05)
        task = asyncio.create_task(dev.run())
        await until(lambda: dev.counters.reconnects >= 3)
        c = await finish(dev, task)
        assert c.errors["fault_drop"] >= 3
        assert stub.stored["dev-1"] == list(range(1, c.generated + 1))
        assert c.sent_readings >= c.generated  # resends included
        check_invariant(c, dev)

    run(body, ack_delay_s=0.02)


def test_slow_down_is_obeyed() -> None:
    async def body(stub: StubGateway) -> None:
        dev = VirtualDevice(stub.url, "dev-1", TOKENS["dev-1"], rate=40, batch=1, window=4)
        task = asyncio.create_task(dev.run())
        await until(lambda: dev.counters.slowed >= 1 and dev.counters.acked >= 30, timeout=10)
        c = await finish(dev, task, timeout=15)
        assert stub.slows >= 1
        assert "close_4008" not in c.errors  # never cut off for ignoring the limit
        assert c.reconnects == 0
        assert stub.stored["dev-1"] == list(range(1, c.generated + 1))  # refused frames were resent
        assert c.resent >= 1
        check_invariant(c, dev)

    run(body, rate=5.0, burst=5.0, announce={"rate": 100.0})  # devices pace at the announced rate


def test_commands_are_answered() -> None:
    async def body(stub: StubGateway) -> None:
        dev = VirtualDevice(stub.url, "dev-1", TOKENS["dev-1"], rate=20, reboot_delay_s=0.05)
        task = asyncio.create_task(dev.run())
        await until(lambda: "dev-1" in stub.live)
        assert (await stub.command("dev-1", "ping"))["ok"] is True
        result = await stub.command("dev-1", "set_interval", {"seconds": 0.5})
        assert result["ok"] is True and dev.rate == 2.0
        assert (await stub.command("dev-1", "set_interval", {"seconds": -1}))["ok"] is False
        assert (await stub.command("dev-1", "set_output", {"output": "led", "on": True}))["ok"] is True
        assert dev.outputs["led"] is True
        assert (await stub.command("dev-1", "set_output", {"output": "laser", "on": True}))["ok"] is False
        args = {"metric": "temperature", "high": 30, "low": 10}
        result = await stub.command("dev-1", "set_thresholds", args)
        assert result["ok"] is True and dev.thresholds["temperature"] == (10.0, 30.0)
        unknown = await stub.command("dev-1", "self_destruct")
        assert unknown["ok"] is False and "unknown command" in unknown["msg"]
        boot = dev.boot
        assert (await stub.command("dev-1", "reboot"))["ok"] is True
        await until(lambda: stub.connects["dev-1"] == 2 and dev.online)
        assert dev.boot != boot
        c = await finish(dev, task)
        assert c.commands == 8
        assert stub.statuses and stub.statuses[-1]["fw"] == "sim-0.1.0"
        assert stub.stored["dev-1"] == list(range(1, c.generated + 1))  # outbox survived the reboot

    run(body)


def test_malformed_mode_gets_error_frames_and_real_data_still_arrives() -> None:
    async def body(stub: StubGateway) -> None:
        kinds = ("not_json", "wrong_types", "nan", "binary", "unknown_type")
        plan = FaultPlan(seed=5, malformed_rate=1.0, malformed_kinds=kinds)
        dev = VirtualDevice(stub.url, "dev-1", TOKENS["dev-1"], rate=100, batch=2, faults=plan)
        task = asyncio.create_task(dev.run())
        await until(lambda: dev.counters.malformed >= 40)
        c = await finish(dev, task)
        for code in ("bad_json", "bad_frame", "binary_unsupported", "unknown_type"):
            assert c.errors.get(code, 0) >= 1, code
        codes = ("bad_json", "bad_frame", "binary_unsupported", "unknown_type")
        await until(lambda: sum(stub.errors[k] for k in codes) == c.malformed)  # each one refused
        # the device may close before the answer to its very last malformed frame arrives
        assert c.malformed - 1 <= sum(c.errors.get(k, 0) for k in codes) <= c.malformed
        assert c.rejected == 0 and "close_4000" not in c.errors
        assert stub.stored["dev-1"] == list(range(1, c.generated + 1))

    run(body)


def test_oversized_frame_closes_with_1009_and_device_recovers() -> None:
    async def body(stub: StubGateway) -> None:
        plan = FaultPlan(seed=1, malformed_rate=0.2, malformed_kinds=("oversized",))
        dev = VirtualDevice(stub.url, "dev-1", TOKENS["dev-1"], rate=100, batch=2, faults=plan,
                            backoff_initial_s=0.05)
        task = asyncio.create_task(dev.run())
        await until(lambda: dev.counters.errors.get("close_1009", 0) >= 2)
        c = await finish(dev, task)
        assert stub.stored["dev-1"] == list(range(1, c.generated + 1))

    run(body, max_frame=4096)


def test_rejected_frames_are_dropped_not_resent_and_do_not_stall_the_window() -> None:
    class EveryFifthBad(SensorModel):
        metrics = ("humidity",)

        def __init__(self) -> None:
            self.n = 0

        def sample(self, t_s: float) -> dict[str, float]:
            self.n += 1
            return {"humidity": 150.0 if self.n % 5 == 0 else 50.0}

    async def body(stub: StubGateway) -> None:
        # window=1: a refused frame that kept its window slot would stop the device for good
        dev = VirtualDevice(stub.url, "dev-1", TOKENS["dev-1"], rate=100, batch=1, window=1,
                            sensor=EveryFifthBad())
        task = asyncio.create_task(dev.run())
        await until(lambda: dev.counters.generated >= 60)
        c = await finish(dev, task)
        assert c.rejected == c.errors["bad_value"] >= 12
        stored = stub.stored["dev-1"]
        assert stored == [s for s in range(1, c.generated + 1) if s % 5 != 0]
        assert c.acked == len(stored)
        check_invariant(c, dev)

    run(body)


@pytest.mark.parametrize("auth", ["header", "frame"])
def test_bad_credential_stops_the_device_until_the_credential_changes(auth: str) -> None:
    async def body(stub: StubGateway) -> None:
        dev = VirtualDevice(stub.url, "dev-1", "ewt_" + "x" * 32, auth=auth, rate=50, backoff_initial_s=0.05)
        task = asyncio.create_task(dev.run())
        await until(lambda: dev.stopped_reason == "auth_failed")
        assert dev.state == "stopped" and dev.session.last_reconnect is not None
        sampled = dev.counters.generated
        await until(lambda: dev.counters.generated > sampled + 5)  # sampling goes on into the outbox
        assert dev.counters.errors.get("auth_failed") == 1 and stub.connects["dev-1"] == 0
        dev.set_credential(TOKENS["dev-1"])  # the operator fixed the credential
        await until(lambda: dev.counters.acked >= sampled + 5)
        c = await finish(dev, task)
        assert stub.stored["dev-1"] == list(range(1, c.generated + 1))  # nothing sampled while stopped was lost

    run(body)


def test_stopped_device_finishes_when_sampling_ends() -> None:
    async def body(stub: StubGateway) -> None:
        dev = VirtualDevice(stub.url, "dev-1", "ewt_" + "x" * 32, rate=50)
        c = await asyncio.wait_for(dev.run(duration_s=0.3), 5)
        assert dev.stopped_reason == "auth_failed" and c.generated > 0 and dev.buffered == c.generated

    run(body)


def test_frame_auth_delivers() -> None:
    async def body(stub: StubGateway) -> None:
        dev = VirtualDevice(stub.url, "dev-2", TOKENS["dev-2"], auth="frame", rate=50, batch=3)
        task = asyncio.create_task(dev.run())
        await until(lambda: dev.counters.acked >= 20)
        c = await finish(dev, task)
        assert stub.stored["dev-2"] == list(range(1, c.generated + 1))

    run(body)


def test_replaced_device_stops_and_fresh_counter_continues_after_last_seq() -> None:
    async def body(stub: StubGateway) -> None:
        first = VirtualDevice(stub.url, "dev-1", TOKENS["dev-1"], rate=50, batch=2)
        t1 = asyncio.create_task(first.run())
        await until(lambda: first.counters.acked >= 20)
        second = VirtualDevice(stub.url, "dev-1", TOKENS["dev-1"], rate=50, batch=2, seed=99)
        t2 = asyncio.create_task(second.run())
        await until(lambda: first.stopped_reason == "replaced")
        first.stop_generating()
        await asyncio.wait_for(t1, 5)  # stopped: it does not come back to fight for the device
        await until(lambda: second.counters.acked >= 20)
        c2 = await finish(second, t2)
        stored = stub.stored["dev-1"]
        assert len(stored) == len(set(stored)) and stored == sorted(stored)
        # the new instance numbered its readings after the gateway's last_seq instead of reusing seqs
        assert stored[-c2.acked:] == list(range(stored[-1] - c2.acked + 1, stored[-1] + 1))
        assert first.counters.acked + c2.acked == len(stored)
        assert stub.connects["dev-1"] == 2

    run(body)


def test_expiring_jwt_is_refreshed_and_nothing_is_lost() -> None:
    async def body(stub: StubGateway) -> None:
        plan = FaultPlan(jwt_secret=JWT_SECRET, jwt_ttl_s=1.0)
        dev = VirtualDevice(stub.url, "dev-1", "unused", rate=50, batch=2, faults=plan,
                            backoff_initial_s=0.05)
        assert dev.credential.count(".") == 2
        task = asyncio.create_task(dev.run())
        await until(lambda: dev.counters.errors.get("close_4004", 0) >= 1 and dev.online, timeout=8)
        c = await finish(dev, task)
        assert dev.stopped_reason is None
        assert c.errors.get("credential_expired", 0) >= 1
        assert stub.stored["dev-1"] == list(range(1, c.generated + 1))

    run(body)


def test_outbox_is_bounded_and_counts_drops() -> None:
    async def body(stub: StubGateway) -> None:
        await stub.stop()  # nothing listens: every connect fails
        dev = VirtualDevice(stub.url, "dev-1", TOKENS["dev-1"], rate=200, outbox_max=10,
                            backoff_initial_s=0.05)
        task = asyncio.create_task(dev.run())
        await until(lambda: dev.counters.generated >= 50)
        task.cancel()
        c = dev.counters
        assert dev.buffered == 10
        assert c.dropped == c.generated - 10
        assert c.errors.get("connect_failed", 0) >= 1
        check_invariant(c, dev)
        assert [r.seq for r in dev.outbox.readings] == list(range(c.generated - 9, c.generated + 1))  # newest kept

    run(body)


def test_batching_fills_frames_and_linger_sends_partial_batches() -> None:
    async def body(stub: StubGateway) -> None:
        full = VirtualDevice(stub.url, "dev-1", TOKENS["dev-1"], rate=200, batch=10, linger_s=5.0)
        partial = VirtualDevice(stub.url, "dev-2", TOKENS["dev-2"], rate=20, batch=100, linger_s=0.1)
        tasks = [asyncio.create_task(d.run()) for d in (full, partial)]
        # the partial device never fills a batch of 100, yet its readings get acked while it samples
        await until(lambda: full.counters.generated >= 100 and partial.counters.acked >= 5)
        assert partial.counters.generated < 100
        for dev, task in zip((full, partial), tasks, strict=True):
            c = await finish(dev, task)
            assert stub.stored[dev.device_id] == list(range(1, c.generated + 1))
        assert full.counters.sent_frames <= full.counters.generated // 10 + 1  # full frames, one tail
        assert stub.frames["dev-1"] == full.counters.sent_frames

    run(body)
