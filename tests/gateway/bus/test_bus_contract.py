"""The bus contract, on the in-process broker, a real redis-server and a real nats-server.

The restart tests are the peers' known failure: after the server restarts, subscriptions
must deliver again, presence must be rebuilt, and health must say ``degraded`` until then.
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any

import pytest

from gateway.bus import CONNECTING, DEGRADED, OK, Bus
from gateway.errors import BusUnavailable, NoResponder, RemoteError, RequestError, TooManyCommands
from tests.gateway.bus.conftest import Backend, until


def run(backend: Backend, scenario: Coroutine[Any, Any, None]) -> None:
    async def main() -> None:
        try:
            await asyncio.wait_for(scenario, 90)
        finally:
            await backend.close()

    asyncio.run(main())


async def started(*buses: Bus) -> None:
    for bus in buses:
        await bus.start()
    for bus in buses:
        await bus.wait_ok(15)


def test_publish_reaches_other_instances_not_the_sender(backend: Backend) -> None:
    async def scenario() -> None:
        a, b = backend.bus("a"), backend.bus("b")
        got_a: list[tuple[dict[str, Any], str]] = []
        got_b: list[tuple[dict[str, Any], str]] = []
        echo: list[dict[str, Any]] = []
        await a.subscribe("dash", lambda m, s: got_a.append((m, s)))
        await a.subscribe("dash", lambda m, s: echo.append(m), include_self=True)
        await b.subscribe("dash", lambda m, s: got_b.append((m, s)))
        await started(a, b)
        await a.publish("dash", {"n": 1})
        await b.publish("dash", {"n": 2})
        await until(lambda: len(got_a) == 1 and len(got_b) == 1 and len(echo) == 2, what="deliveries")
        assert got_a == [({"n": 2}, "b")] and got_b == [({"n": 1}, "a")]
        assert sorted(m["n"] for m in echo) == [1, 2]

    run(backend, scenario())


def test_a_failing_handler_or_a_malformed_message_does_not_end_the_subscription(backend: Backend) -> None:
    async def scenario() -> None:
        a, b = backend.bus("a"), backend.bus("b")
        got: list[int] = []

        def handler(message: dict[str, Any], sender: str) -> None:
            if message["n"] == 1:
                raise RuntimeError("a bug in a handler")
            got.append(message["n"])

        await b.subscribe("dash", handler)
        await started(a, b)
        await a.publish("dash", {"n": 1})
        await a.transport.publish("dash", b"not json")
        await a.transport.publish("dash", b'{"v": 99, "from": "a", "m": {}}')
        await a.publish("dash", {"n": 2})
        await until(lambda: got == [2], what="the message after the bad ones")
        assert b.dropped == {"handler_failed": 1, "malformed": 2}
        assert b.health()["state"] == OK

    run(backend, scenario())


def test_request_reply_between_instances(backend: Backend) -> None:
    async def scenario() -> None:
        a, b = backend.bus("a"), backend.bus("b")

        async def takeover(message: dict[str, Any], sender: str) -> dict[str, Any]:
            if message.get("device") == "bad":
                raise RequestError("device", "no such session")
            return {"released": True, "device": message["device"], "by": sender}

        b.serve("takeover", takeover)
        await started(a, b)
        assert await a.request("b", "takeover", {"device": "S.1:x"}, 5) == {
            "released": True, "device": "S.1:x", "by": "a"}
        with pytest.raises(RemoteError, match="no such session"):
            await a.request("b", "takeover", {"device": "bad"}, 5)
        with pytest.raises(RemoteError) as refused:
            await a.request("b", "unknown-kind", {}, 5)
        assert refused.value.code == "no_such_request"
        with pytest.raises(NoResponder):
            await a.request("nobody", "takeover", {}, 5)

    run(backend, scenario())


def test_presence_claim_takeover_release_and_snapshot(backend: Backend) -> None:
    async def scenario() -> None:
        a, b = backend.bus("a"), backend.bus("b")
        await started(a, b)
        first = await a.presence.claim("S.1:x")
        assert first.confirmed and first.previous is None and first.holder.instance == "a"
        second = await b.presence.claim("S.1:x")
        assert second.previous is not None and second.previous.same_session(first.holder)
        assert second.previous_alive and second.holder.version > first.holder.version
        await a.presence.release("S.1:x")  # the old session ends after the takeover: b's entry stays
        located = await a.presence.locate("S.1:x")
        assert located is not None and located.same_session(second.holder)
        await a.presence.claim("S-2")
        assert set(await b.presence.snapshot()) == {"S.1:x", "S-2"}
        assert set(await a.presence.instances()) == {"a", "b"}
        await a.close()  # a clean stop deletes a's lease and entries
        assert set(await b.presence.snapshot()) == {"S.1:x"}
        assert set(await b.presence.instances()) == {"b"}
        assert await b.presence.locate("S-2") is None

    run(backend, scenario())


def test_a_dead_instance_drops_out_when_its_lease_expires(backend: Backend) -> None:
    async def scenario() -> None:
        a, b = backend.bus("a"), backend.bus("b")
        await started(a, b)
        await a.presence.claim("S-1")
        assert set(await b.presence.snapshot()) == {"S-1"}
        assert a._task is not None
        a._task.cancel()  # a stops heartbeating without cleaning up, as a killed process would
        if backend.server is None:
            backend.broker.clock = lambda: float("inf")  # the broker's clock jumps past every lease
        await until(lambda: _not_in_snapshot(b, "S-1"), what="a's lease to expire")
        claim = await b.presence.claim("S-1")
        assert claim.previous is not None and claim.previous.instance == "a" and not claim.previous_alive

    run(backend, scenario())


async def _not_in_snapshot(bus: Bus, device_id: str) -> bool:
    return device_id not in await bus.presence.snapshot()


def test_durable_command_queue(backend: Backend) -> None:
    async def scenario() -> None:
        a, b = backend.bus("a", max_pending_commands=3), backend.bus("b")
        await started(a, b)
        envelopes = [{"id": f"c-{n}", "device": "S.1", "name": "ping", "args": {}, "reply_to": "a",
                      "expires_ms": 2**41} for n in range(3)]
        for envelope in envelopes:
            await a.commands.put("S.1", envelope)
        with pytest.raises(TooManyCommands):
            await a.commands.put("S.1", dict(envelopes[0], id="c-9"))
        assert await b.commands.pending("S.1") == envelopes  # any instance reads them, in order
        assert await b.commands.pending("S-other") == []
        assert await b.commands.done("S.1", "c-1") is True
        assert await b.commands.done("S.1", "c-1") is False
        assert await a.commands.exists("S.1", "c-0") and not await a.commands.exists("S.1", "c-1")
        assert [e["id"] for e in await a.commands.pending("S.1")] == ["c-0", "c-2"]
        with pytest.raises(ValueError, match="expires_ms"):
            await a.commands.put("S.1", {"id": "c-x"})
        assert a.commands.durable is (backend.kind == "nats") and a.commands.why

    run(backend, scenario())


def test_server_restart_resubscribes_rebuilds_presence_and_reports_degraded(backend: Backend) -> None:
    async def scenario() -> None:
        a, b = backend.bus("a"), backend.bus("b")
        got: list[int] = []
        hooks: list[str] = []
        await b.subscribe("dash", lambda m, s: got.append(m["n"]))

        async def on_reconnect() -> None:
            hooks.append(b.state)

        b.on_reconnect(on_reconnect)
        b.serve("ping", _pong)
        await started(a, b)
        assert hooks == [CONNECTING]
        await a.presence.claim("S-a")
        await b.presence.claim("S.b")
        await a.publish("dash", {"n": 1})
        await until(lambda: got == [1], what="the first message")

        await backend.stop()
        await until(lambda: a.state == DEGRADED and b.state == DEGRADED, what="both degraded")
        with pytest.raises(BusUnavailable):
            await a.publish("dash", {"n": 2})  # fails fast: nothing waits for the bus
        with pytest.raises(BusUnavailable):
            await a.commands.put("S.b", {"id": "c-1", "expires_ms": 2**41})
        offline_claim = await a.presence.claim("S-c")  # recorded here, written when the bus is back
        assert not offline_claim.confirmed
        assert b.health()["state"] == DEGRADED and b.health()["last_error"]

        await backend.start()
        await a.wait_ok(30)
        await b.wait_ok(30)
        assert a.reconnects == 1 and b.reconnects == 1 and hooks == [CONNECTING, DEGRADED]
        assert set(await b.presence.snapshot()) == {"S-a", "S.b", "S-c"}  # rebuilt by the instances
        await a.publish("dash", {"n": 3})
        await until(lambda: got == [1, 3], what="a message after the restart")
        assert await a.request("b", "ping", {}, 5) == {"pong": True}

    run(backend, scenario())


async def _pong(message: dict[str, Any], sender: str) -> dict[str, Any]:
    return {"pong": True}


def test_unreachable_at_start_then_up(backend: Backend) -> None:
    async def scenario() -> None:
        await backend.stop()
        a = backend.bus("a")
        await a.start()  # does not fail: keeps trying in the background
        await asyncio.sleep(0)
        assert a.state == CONNECTING
        with pytest.raises(BusUnavailable, match="connecting"):
            await a.publish("dash", {})
        await until(lambda: a.last_error is not None, what="a first failed attempt")
        await backend.start()
        await a.wait_ok(30)
        assert a.reconnects == 0

    run(backend, scenario())


async def _drop_subscription(backend: Backend, bus: Bus, channel: str) -> None:
    """Lose one subscription while the connection stays up: the peers' silent failure."""
    transport: Any = bus.transport
    if backend.kind == "memory":
        transport._link.channels.discard(channel)
    elif backend.kind == "host":  # the broker's side of the worker's link
        assert backend.host is not None
        for client in backend.host.clients:
            link = client.transport._link
            if link is not None and link.instance == bus.instance_id:
                link.channels.discard(channel)
    elif backend.kind == "redis":
        await transport.pubsub.unsubscribe(f"edgewire:ch:{channel}")
    else:
        await transport._subs[channel].unsubscribe()


def test_a_subscription_lost_silently_is_detected_and_restored(backend: Backend) -> None:
    async def scenario() -> None:
        a, b = backend.bus("a"), backend.bus("b")
        got: list[int] = []
        await b.subscribe("dash", lambda m, s: got.append(m["n"]))
        await b.subscribe("alerts", lambda m, s: None)
        await started(a, b)
        await _drop_subscription(backend, b, "dash")
        await until(lambda: b.state == DEGRADED, what="b degraded")
        assert "dash" in (b.last_error or "")
        await b.wait_ok(30)
        assert b.reconnects == 1
        await a.publish("dash", {"n": 1})
        await until(lambda: got == [1], what="delivery on the restored subscription")

    run(backend, scenario())


def test_a_burst_of_operations_waits_for_the_link_instead_of_breaking_it(backend: Backend) -> None:
    """Hundreds of devices reconnecting at once claim, publish and read their queues together;
    the client's connection pool must make them wait, not fail (and turn the bus degraded)."""

    async def scenario() -> None:
        a = backend.bus("a")
        await started(a)
        burst = 400

        async def one(i: int) -> None:
            await a.presence.claim(f"burst-{i}")
            await a.publish("dash", {"n": i})
            await a.commands.pending(f"burst-{i}")

        await asyncio.gather(*(one(i) for i in range(burst)))
        assert a.state == OK and a.reconnects == 0
        assert len([d for d in await a.presence.snapshot() if d.startswith("burst-")]) == burst

    run(backend, scenario())
