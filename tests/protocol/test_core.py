"""protocol (wire, gateway, device): codec properties, validation, gateway and device session logic."""

from __future__ import annotations

import json
import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from protocol import wire
from protocol.device import D_DROP, D_SLOW, DeviceSession
from protocol.gateway import (
    EV_AUTH,
    EV_CLOSE,
    EV_DATA,
    EV_REJECT,
    EV_RESULT,
    EV_STATUS,
    EV_THROTTLE,
    ST_CLOSED,
    GatewaySession,
    TokenBucket,
)

finite = st.floats(min_value=0, max_value=100, allow_nan=False, allow_infinity=False)
metric_names = st.sampled_from(["temperature", "humidity", "soil_moisture", "x1"])
readings = st.lists(
    st.fixed_dictionaries(
        {"m": st.dictionaries(metric_names, finite, min_size=1, max_size=4)},
        optional={"ts": st.integers(0, 2**53 - 1), "up": st.integers(0, 2**40),
                  "q": st.sampled_from(wire.QUALITIES)}),
    min_size=1, max_size=20)


@given(seq=st.integers(1, 2**40), batch=readings, boot=st.none() | st.text(max_size=16))
def test_data_frame_round_trips(seq: int, batch: list[dict[str, object]], boot: str | None) -> None:
    objs = [wire.Reading(seq + i, r["m"], r.get("ts"), r.get("up"), r.get("q")) for i, r in enumerate(batch)]
    msg = wire.data_message(seq, objs, boot=boot)
    decoded = wire.decode(wire.encode(msg))
    assert decoded == json.loads(json.dumps(msg))
    frame = wire.parse_data(decoded)
    assert frame.readings == objs
    assert frame.last_seq == seq + len(batch) - 1


@given(st.dictionaries(st.text(max_size=8), st.integers() | st.text(max_size=8) | st.booleans(), max_size=6))
def test_encode_decode_any_message(msg: dict[str, object]) -> None:
    msg = dict(msg, t="status")
    assert wire.decode(wire.encode(msg)) == msg


@settings(max_examples=300)
@given(st.binary(max_size=200) | st.text(max_size=200))
def test_random_input_raises_only_protocol_error(data: bytes | str) -> None:
    try:
        msg = wire.decode(data)
    except wire.ProtocolError as err:
        assert err.code in (wire.E_BAD_JSON, wire.E_BAD_FRAME, wire.E_BINARY, wire.E_TOO_LARGE, wire.E_BAD_VALUE)
        return
    if msg["t"] == wire.T_DATA:
        with pytest.raises(wire.ProtocolError):
            wire.parse_data(msg)


@settings(max_examples=300)
@given(st.recursive(st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=5),
                    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=3), inner, max_size=3),
                    max_leaves=12))
def test_gateway_session_never_crashes(payload: object) -> None:
    session = GatewaySession()
    session.accept("dev-1", 0, 0)
    for shape in (payload, {"t": "data", "seq": payload, "r": payload}, {"t": "data", "seq": 1, "r": [payload]},
                  {"t": "data", "seq": 1, "r": [{"m": payload}]}):
        try:
            text = json.dumps(shape)
        except ValueError:
            continue
        event = session.receive(text, 0.0)
        assert event.kind in (EV_DATA, EV_REJECT, EV_CLOSE, EV_STATUS, EV_THROTTLE,
                              EV_RESULT)


@pytest.mark.parametrize(("text", "code"), [
    ("not json", wire.E_BAD_JSON),
    ('{"t":"data","seq":1,"r":[{"m":{"temperature":NaN}}]}', wire.E_BAD_JSON),
    ('{"t":"data","seq":1,"r":[{"m":{"temperature":Infinity}}]}', wire.E_BAD_JSON),
    ('{"t":"data","seq":1,"r":[{"m":{"temperature":1e999}}]}', wire.E_BAD_VALUE),
    ('{"t":"data","seq":1,"r":[{"m":{"temperature":"hot"}}]}', wire.E_BAD_FRAME),
    ('{"t":"data","seq":1,"r":[{"m":{"temperature":true}}]}', wire.E_BAD_FRAME),
    ('{"t":"data","seq":"1","r":[{"m":{"temperature":1}}]}', wire.E_BAD_FRAME),
    ('{"t":"data","seq":0,"r":[{"m":{"temperature":1}}]}', wire.E_BAD_VALUE),
    ('{"t":"data","seq":1,"r":[]}', wire.E_BAD_FRAME),
    ('{"t":"data","seq":1,"r":[{"m":{"temperature":500}}]}', wire.E_BAD_VALUE),
    ('{"t":"data","seq":1,"r":[{"m":{"Bad-Name":1}}]}', wire.E_BAD_FRAME),
    ('{"t":"data","seq":1,"r":[{"m":{"temperature":1},"q":"great"}]}', wire.E_BAD_FRAME),
    ('{"t":"teleport"}', wire.E_UNKNOWN_TYPE),
    ('[1,2]', wire.E_BAD_FRAME),
])
def test_bad_frames_get_stable_codes(text: str, code: str) -> None:
    session = GatewaySession()
    session.accept("dev-1", 0, 0)
    event = session.receive(text, 0.0)
    assert event.kind == EV_REJECT
    assert event.payload.code == code
    assert json.loads(event.reply)["code"] == code
    assert session.accepted_seq == 0


def test_oversized_batch_and_frame() -> None:
    session = GatewaySession(max_batch=5, max_frame=1000)
    session.accept("dev-1", 0, 0)
    batch = [wire.Reading(i + 1, {"temperature": 1.0}) for i in range(6)]
    event = session.receive(wire.encode(wire.data_message(1, batch)), 0.0)
    assert event.payload.code == wire.E_TOO_LARGE
    event = session.receive(json.dumps({"t": "status", "pad": "x" * 2000}), 0.0)
    assert event.payload.code == wire.E_TOO_LARGE


def test_binary_frame_refused() -> None:
    session = GatewaySession()
    session.accept("dev-1", 0, 0)
    assert session.receive(b"\x00\xff", 0.0).payload.code == wire.E_BINARY


def test_data_before_auth_closes() -> None:
    session = GatewaySession()
    event = session.receive('{"t":"data","seq":1,"r":[{"m":{"temperature":1}}]}', 0.0)
    assert event.kind == EV_CLOSE
    assert event.close_code == wire.CLOSE_AUTH_REQUIRED


def test_seed_auth_shape_accepted() -> None:
    event = GatewaySession().receive('{"device_id": "SENSOR-01", "token": "ewt_x"}', 0.0)
    assert event.kind == EV_AUTH
    assert event.payload == {"device_id": "SENSOR-01", "token": "ewt_x", "jwt": None}


def test_frame_naming_another_device_closes() -> None:
    session = GatewaySession()
    session.accept("dev-1", 0, 0)
    event = session.receive('{"t":"data","device_id":"dev-2","seq":1,"r":[{"m":{"temperature":1}}]}', 0.0)
    assert event.kind == EV_CLOSE
    assert event.close_code == wire.CLOSE_IDENTITY
    assert session.accepted_seq == 0


def test_duplicates_dropped_by_seq() -> None:
    session = GatewaySession()
    session.accept("dev-1", 5, 0)
    frame = wire.data_message(3, [wire.Reading(3 + i, {"temperature": 1.0}) for i in range(5)])
    event = session.receive(wire.encode(frame), 0.0)
    assert event.kind == EV_DATA
    assert [r.seq for r in event.payload.readings] == [6, 7]
    again = session.receive(wire.encode(frame), 0.0)
    assert again.kind == EV_DATA and again.payload.readings == []
    assert session.duplicates == 3 + 5


def test_rate_limit_slows_then_closes() -> None:
    session = GatewaySession(rate=10, burst=2, rate_strikes=5)
    session.accept("dev-1", 0, 0)
    kinds = []
    for i in range(10):
        frame = wire.data_message(i + 1, [wire.Reading(i + 1, {"temperature": 1.0})])
        kinds.append(session.receive(wire.encode(frame), 0.0).kind)
    assert kinds[:2] == [EV_DATA, EV_DATA]
    assert kinds[2] == EV_THROTTLE
    assert EV_CLOSE in kinds
    assert session.state == ST_CLOSED


def test_throttled_frame_is_resent_not_lost() -> None:
    gw = GatewaySession(rate=1, burst=1)
    dev = DeviceSession("dev-1", token="t", window=8, max_batch=1)
    dev.handle(gw.accept("dev-1", 0, 0))
    pending = [wire.Reading(i, {"temperature": 20.0}) for i in range(1, 4)]
    frames = [dev.next_frame(pending) for _ in range(3)]
    events = [gw.receive(f, 0.0) for f in frames]
    assert [e.kind for e in events] == [EV_DATA, EV_THROTTLE, EV_THROTTLE]
    assert dev.handle(events[1].reply).kind == D_SLOW
    assert dev.sent == 1  # rewound to resend seq 2
    event = gw.receive(dev.next_frame(pending), 5.0)
    assert event.kind == EV_DATA and event.payload.seq == 2


def test_device_resends_unacked_after_reconnect() -> None:
    dev = DeviceSession("dev-1", token="t", max_batch=2)
    dev.handle(wire.encode({"t": "welcome", "last_seq": 0}))
    pending = [wire.Reading(i, {"temperature": 20.0}) for i in range(1, 6)]
    first = json.loads(dev.next_frame(pending) or "{}")
    assert first["seq"] == 1 and len(first["r"]) == 2
    dev.handle(wire.encode({"t": "ack", "seq": 2}))
    dev.next_frame(pending)
    dev.connection_lost()
    dev.handle(wire.encode({"t": "welcome", "last_seq": 2}))
    again = json.loads(dev.next_frame(pending))
    assert again["seq"] == 3


def test_next_frame_splits_at_gap() -> None:
    dev = DeviceSession("dev-1", token="t", max_batch=10)
    dev.handle(wire.encode({"t": "welcome", "last_seq": 0}))
    pending = [wire.Reading(s, {"temperature": 1.0}) for s in (1, 2, 5, 6)]
    assert json.loads(dev.next_frame(pending))["r"].__len__() == 2
    assert json.loads(dev.next_frame(pending))["seq"] == 5


def test_reading_time_from_uptime() -> None:
    frame = wire.DataFrame(1, "b", 10_000, [])
    assert wire.reading_time_ms(wire.Reading(1, {}, ts=123), frame, 50_000) == 123
    assert wire.reading_time_ms(wire.Reading(1, {}, up=4_000), frame, 50_000) == 44_000
    assert wire.reading_time_ms(wire.Reading(1, {}), frame, 50_000) == 50_000


def test_token_bucket_refills() -> None:
    bucket = TokenBucket(2, 2, 0.0)
    assert bucket.take(0.0) and bucket.take(0.0) and not bucket.take(0.0)
    assert bucket.wait_ms() > 0
    assert bucket.take(0.6)


def test_is_finite() -> None:
    assert wire.is_finite(1) and wire.is_finite(1.5)
    assert not wire.is_finite(math.nan) and not wire.is_finite(math.inf) and not wire.is_finite(-math.inf)
    assert not wire.is_number(True)


def test_refused_frame_frees_its_window_slot() -> None:
    dev = DeviceSession("dev-1", token="t", window=1, max_batch=1)
    dev.handle(wire.encode({"t": "welcome", "last_seq": 0}))
    pending = [wire.Reading(1, {"temperature": 1.0}), wire.Reading(2, {"temperature": 2.0})]
    assert dev.next_frame(pending) is not None
    assert not dev.can_send()
    decision = dev.handle(wire.encode(wire.error_message(wire.E_BAD_VALUE, "bad", 1)))
    assert decision.kind == D_DROP and dev.rejected == 1
    assert json.loads(dev.next_frame(pending) or "{}")["seq"] == 2
