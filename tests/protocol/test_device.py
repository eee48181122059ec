"""protocol/device.py and protocol/outbox.py: Backoff, policies, close and command tables, what
handle() makes of each kind of gateway frame. The scripted sequences every driver must pass are
in tests/conformance."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from protocol import wire
from protocol.device import (
    CLOSE_ACTIONS,
    D_ACK,
    D_CLOSING,
    D_COMMAND,
    D_INVALID,
    D_NOTE,
    D_SLOW,
    D_WELCOME,
    LOADGEN,
    MAX_RATE,
    MAX_RETRY_MS,
    MIN_RATE,
    R_BACKOFF,
    R_HOURLY,
    R_REFRESH,
    R_STOP,
    REFUSAL_MAX_BYTES,
    STATE_VERSION,
    Backoff,
    DeviceSession,
    Policy,
    refusal_code,
)
from protocol.outbox import MemoryOutbox


def test_backoff_is_exponential_with_equal_jitter_and_a_cap() -> None:
    low = Backoff(100, 1000, rand=lambda: 0.0)
    assert [low.next_ms() for _ in range(6)] == [50, 100, 200, 400, 500, 500]
    high = Backoff(100, 1000, rand=lambda: 0.9999)
    assert [high.next_ms() for _ in range(6)] == [100, 200, 400, 800, 1000, 1000]
    high.reset()
    assert high.next_ms() == 100
    assert 500 <= high.at_cap_ms() <= 1000 and high.next_ms() >= 500  # stays at the cap


def test_backoff_accepts_seconds_scaled_floats_and_odd_bounds() -> None:
    assert Backoff(0.2, 0.1).cap_ms == 1  # sub-millisecond bases round up to 1 ms, cap >= base
    assert Backoff(250.7, 2000.2).base_ms == 250


def test_every_stop_and_special_code_is_in_the_table() -> None:
    assert {code for code, action in CLOSE_ACTIONS.items() if action == R_STOP} == {
        wire.CLOSE_AUTH_FAILED, wire.CLOSE_REPLACED, wire.CLOSE_ADDRESS, wire.CLOSE_IDENTITY}
    for code in (1000, 1001, 1009, 1011, 1012, 1013, 4002, 4008, 4009):
        assert code not in CLOSE_ACTIONS  # they back off


def test_loadgen_policy_never_reconnects_ignores_slow_down_and_does_not_run_commands() -> None:
    ran: list[str] = []
    session = DeviceSession("LG-1", token="t", max_batch=1, policy=LOADGEN,
                            handlers={"ping": lambda args: (ran.append("ping"), (True, "pong", None))[1]})
    session.handle(wire.encode({"t": "welcome", "last_seq": 0, "rate": 1.0}), 0)
    pending = [wire.Reading(i, {"temperature": 1.0}) for i in (1, 2, 3)]
    assert session.next_frame(pending, now_ms=0) and session.next_frame(pending, now_ms=0)  # no pacing
    slow = session.handle(wire.encode({"t": "slow", "rate": 1.0, "retry_ms": 5000, "seq": 2}), 0)
    assert slow.kind == D_SLOW and slow.wait_ms == 0 and session.sent == 1  # rewound, no wait
    assert json.loads(session.next_frame(pending, now_ms=1) or "{}")["seq"] == 2
    answer = session.handle(wire.encode({"t": "cmd", "id": "c1", "name": "set_interval", "args": {}}), 0)
    assert answer.kind == D_COMMAND and json.loads(answer.reply or "{}")["ok"] is True and not ran
    for code in (1011, 4003, 4004):
        assert session.closed(code, 0).action == R_STOP
    assert session.failed(0).action == R_STOP and session.refused(503, None, 0).action == R_STOP


def test_default_policy_reconnects() -> None:
    assert Policy().reconnect and DeviceSession("D").closed(1011, 0).action == R_BACKOFF


def test_handler_exceptions_are_answered_not_raised() -> None:
    def broken(args: dict[str, object]) -> tuple[bool, str, None]:
        raise RuntimeError("sensor bus stuck")

    session = DeviceSession("D", handlers={"ping": broken})
    ok, message, _ = session.run_command("ping", {})
    assert ok is False and "sensor bus stuck" in message
    ok, message, _ = session.run_command("reboot", {})
    assert ok is False and "not supported" in message


@pytest.mark.parametrize(("name", "args", "expected"), [
    ("set_interval", {"seconds": 0.5, "extra": 1}, {"seconds": 0.5}),
    ("set_thresholds", {"metric": "co2", "high": 1200}, {"metric": "co2", "high": 1200}),
    ("set_output", {"output": "relay", "on": False}, {"output": "relay", "on": False}),
    ("ping", None, {}),
])
def test_parse_command_returns_only_named_arguments(name: str, args: object, expected: dict[str, object]) -> None:
    assert wire.parse_command(name, args) == expected


def test_parse_command_codes() -> None:
    with pytest.raises(wire.ProtocolError) as err:
        wire.parse_command("launch", {})
    assert err.value.code == wire.E_UNKNOWN_TYPE and "known: ota, ping, reboot" in err.value.message
    with pytest.raises(wire.ProtocolError) as err:
        wire.parse_command("ping", [])
    assert err.value.code == wire.E_BAD_FRAME
    with pytest.raises(wire.ProtocolError) as err:
        wire.parse_command("set_interval", {"seconds": float("nan")})
    assert err.value.code == wire.E_BAD_VALUE


def test_memory_outbox_bounds_and_binary_search() -> None:
    box = MemoryOutbox(first_seq=10, limit=3)
    for i in range(5):
        box.add({"temperature": float(i)})
    assert [r.seq for r in box.readings] == [12, 13, 14] and box.dropped == 2
    assert [r.seq for r in box.pending(12, 5)] == [13, 14] and box.pending(14, 5) == []
    assert box.drop(13, 13) == 1 and box.rejected == 1 and box.ack(12) == 1 and box.acked == 1
    assert box.first_seq == 14 and MemoryOutbox().confirmed is False


def test_handle_maps_each_gateway_frame_to_a_decision_without_raising() -> None:
    session = DeviceSession("D", token="t")
    welcome = session.handle(wire.encode({"t": "welcome", "last_seq": 3}), 0)
    assert welcome.kind == D_WELCOME and welcome.seq == 3 and session.online
    ack = session.handle(wire.encode({"t": "ack", "seq": 4}), 0)
    assert ack.kind == D_ACK and ack.seq == 4 and session.acked == 4
    command = session.handle(wire.encode({"t": "cmd", "id": "c", "name": "x"}), 0)
    assert command.kind == D_COMMAND and not command.ok and command.name == "x"
    assert json.loads(command.reply or "{}") == {"t": "result", "id": "c", "ok": False,
                                                 "msg": "unknown command 'x'; known: "}
    note = session.handle(wire.encode(wire.error_message("bad_json", "x")), 0)
    assert note.kind == D_NOTE and note.code == "bad_json" and note.message == "x"
    closing = session.handle(wire.encode(wire.error_message(wire.E_REPLACED, "another connection")), 0)
    assert closing.kind == D_CLOSING and closing.close_code == wire.CLOSE_REPLACED
    for text in (wire.encode({"t": "nope"}), "[1]", "{", b"\x00"):
        invalid = session.handle(text, 0)
        assert invalid.kind == D_INVALID and invalid.code, text
    assert session.handle(wire.encode({"t": "nope"}), 0).code == wire.E_UNKNOWN_TYPE
    assert session.acked == 4  # nothing above changed the session's ack state


@pytest.mark.parametrize("rate", [5e-324, 1e-300, -95056932614790, 1e308])
def test_hostile_rates_and_slow_downs_are_bounded(rate: float) -> None:
    """Found by make fuzz: a slow frame with rate 5e-324 overflowed the pacing (1000 / rate)."""
    outbox = MemoryOutbox(first_seq=1)
    for _ in range(3):
        outbox.add({"temperature": 20.0})
    session = DeviceSession("D", token="t", outbox=outbox)
    session.handle(wire.encode({"t": "welcome", "last_seq": 0, "rate": 1.0}), 0)
    slow = session.handle(json.dumps({"t": "slow", "rate": rate, "seq": 1}), 0)
    assert slow.kind == D_SLOW
    assert 0 <= slow.wait_ms <= MAX_RETRY_MS
    assert MIN_RATE <= session.rate <= MAX_RATE
    assert session.next_frame(now_ms=slow.wait_ms) is not None  # it sends again, with finite pacing
    huge = session.handle(wire.encode({"t": "slow", "rate": 1.0, "retry_ms": 10**18, "seq": 1}), 0)
    assert huge.wait_ms == MAX_RETRY_MS


# ---------------------------------------------------------------- refusal bodies (refusal_code, refused)


@given(st.binary(max_size=2000) | st.text(max_size=2000))
def test_refusal_code_never_raises_on_any_body(body: bytes | str) -> None:
    code = refusal_code(body)
    assert code is None or (isinstance(code, str) and 0 < len(code) <= 64)


@given(code=st.text(min_size=1, max_size=64), status=st.sampled_from([401, 403, 503]),
       message=st.text(max_size=200))
def test_refusal_code_reads_the_gateways_body(code: str, status: int, message: str) -> None:
    body = json.dumps({"code": code, "message": message}).encode()
    assert refusal_code(body) == code and refusal_code(body.decode()) == code
    assert DeviceSession("D", token="t").refused(status, body, 0).error == code


@pytest.mark.parametrize("body", [None, b"", b"null", b"[]", b'{"code": null}', b'{"code": ""}',
                                  b'{"code": "' + b"x" * 65 + b'"}', b"\xff\xfe{", b"<html>busy</html>",
                                  b'{"code": "auth_failed", "p": "' + b"x" * REFUSAL_MAX_BYTES + b'"}'])
def test_unreadable_refusal_bodies_fall_back_to_the_status(body: bytes | None) -> None:
    assert refusal_code(body) is None
    assert DeviceSession("D", token="t").refused(401, body, 0).action == R_STOP
    assert DeviceSession("D", token="t").refused(403, body, 0).action == R_HOURLY
    assert DeviceSession("D", token="t").refused(503, body, 0).action == R_BACKOFF


def test_refused_uses_the_sessions_loads() -> None:
    seen: list[object] = []

    def loads(text: str | bytes) -> object:
        seen.append(text)
        return json.loads(text)

    session = DeviceSession("D", token="t", loads=loads)
    assert session.refused(401, b'{"code": "credential_expired"}', 0).action == R_REFRESH and seen


# ---------------------------------------------------------------- the batch-size rule


def _welcome(**extra: object) -> str:
    return wire.encode({"t": "welcome", "last_seq": 0, **extra})


def test_batch_is_the_configured_size_capped_by_the_welcome() -> None:
    session = DeviceSession("D", token="t", max_batch=20)
    session.handle(_welcome(max_batch=10), 0)
    assert session.max_batch == 10
    session.connection_lost()
    session.handle(_welcome(max_batch=500), 0)
    assert session.max_batch == 20
    session.connection_lost()
    big = DeviceSession("D", token="t", max_batch=300)
    big.handle(_welcome(), 0)  # no max_batch announced: the protocol's
    assert big.max_batch == wire.MAX_BATCH


def test_a_slow_down_grows_frames_to_the_cap_within_the_welcome() -> None:
    slow = wire.encode({"t": "slow", "rate": 1.0, "retry_ms": 10, "seq": 1})
    fixed = DeviceSession("D", token="t", max_batch=5)
    fixed.handle(_welcome(max_batch=100), 0)
    fixed.handle(slow, 0)
    assert fixed.slowed and fixed.max_batch == 5  # the default cap is the configured size
    grows = DeviceSession("D", token="t", max_batch=5, batch_cap=100)
    grows.handle(_welcome(max_batch=40), 0)
    assert grows.max_batch == 5
    grows.handle(slow, 0)
    assert grows.max_batch == 40  # fewer, fuller frames, never above the welcome's max_batch
    grows.connection_lost()
    grows.handle(_welcome(max_batch=60), 0)
    assert grows.max_batch == 60  # still slowed on the next connection


def test_a_too_big_close_halves_the_size_in_effect() -> None:
    """Before: a 1009 halved the configured 20 to 10 while the welcome already capped frames at 10,
    so the next frames were exactly as large as the refused one."""
    session = DeviceSession("D", token="t", max_batch=20, batch_cap=100)
    session.handle(_welcome(max_batch=10), 0)
    session.closed(wire.CLOSE_TOO_BIG, 0)
    assert session.batch_limit == 5 and session.max_batch == 5
    session.handle(_welcome(max_batch=10), 0)
    session.handle(wire.encode({"t": "slow", "rate": 1.0, "seq": 1}), 0)
    assert session.max_batch == 5  # a slow-down does not grow back to a size the gateway refused
    for _ in range(5):
        session.closed(wire.CLOSE_TOO_BIG, 0)
    assert session.batch_limit == 1


# ---------------------------------------------------------------- state() and restore()

_events = st.lists(st.sampled_from(["failed", "1011", "4000", "4003", "4005", "1009", "welcome", "refused401",
                                    "credential"]), max_size=12)


def _play(session: DeviceSession, events: list[str]) -> None:
    for now, event in enumerate(events):
        if event == "failed":
            session.failed(now)
        elif event == "welcome":
            session.handle(_welcome(max_batch=50), now)
        elif event == "refused401":
            session.refused(401, None, now)
        elif event == "credential":
            session.set_credential(token="ewt_" + "n" * 32)
        else:
            session.closed(int(event), now)


def _kept(session: DeviceSession) -> tuple[int, int, bool, int]:
    return session.backoff.attempt, session.retry_at_ms, session.stopped, session.batch_limit


@given(events=_events)
def test_state_round_trips_through_json_into_a_new_session(events: list[str]) -> None:
    before = DeviceSession("D", token="ewt_" + "a" * 32, max_batch=20)
    _play(before, events)
    snapshot = json.loads(json.dumps(before.state()))
    after = DeviceSession("D", token=before.token, max_batch=20)
    assert after.restore(snapshot)
    assert _kept(after) == _kept(before)
    assert after.connect_due(before.retry_at_ms) == before.connect_due(before.retry_at_ms)


@given(events=_events)
def test_a_restored_stop_needs_the_same_credential(events: list[str]) -> None:
    before = DeviceSession("D", token="ewt_" + "a" * 32)
    _play(before, [*events, "4005"])
    other = DeviceSession("D", token="ewt_" + "b" * 32)
    assert other.restore(before.state())
    assert not other.stopped and other.connect_due(0) and other.backoff.attempt == 0


@given(st.recursive(st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8),
                    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner,
                                                                               max_size=6), max_leaves=12))
def test_restore_of_anything_never_raises_and_refusal_changes_nothing(snapshot: object) -> None:
    session = DeviceSession("D", token="t", max_batch=20)
    session.failed(5)
    before = _kept(session)
    if not session.restore(snapshot):
        assert _kept(session) == before


@settings(max_examples=50)
@given(attempt=st.integers(0, 24), retry=st.integers(-1, 2**40), batch=st.integers(1, 500))
def test_restore_takes_a_valid_snapshot(attempt: int, retry: int, batch: int) -> None:
    session = DeviceSession("D", token="t", max_batch=20)
    assert session.restore({"v": STATE_VERSION, "attempt": attempt, "retry_at_ms": retry, "batch_limit": batch})
    assert session.backoff.attempt == attempt and session.retry_at_ms == max(retry, 0) and not session.stopped
    assert session.batch_limit == min(batch, 20)  # never above what this session is configured for
