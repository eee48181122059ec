"""GatewaySession decisions the gateway driver relies on (issue 8 and 15)."""

from __future__ import annotations

import json

from protocol import wire
from protocol.gateway import (
    EV_DATA,
    EV_REJECT,
    EV_RESULT,
    EV_STATUS,
    MAX_PENDING_COMMANDS,
    MAX_RESULT_BYTES,
    MAX_STATUS_BYTES,
    MAX_STATUS_DEPTH,
    MAX_STATUS_FIELDS,
    MAX_STATUS_VALUES,
    GatewaySession,
    json_shape_error,
)


def data(seq: int, n: int = 1) -> str:
    return json.dumps({"t": "data", "seq": seq, "r": [{"m": {"temperature": 20}}] * n})


def active(last_seq: int = 0) -> GatewaySession:
    session = GatewaySession(rate=1000, burst=1000)
    session.accept("S-1", last_seq, 0)
    return session


def test_gaps_are_counted_next_to_accepted_seq() -> None:
    session = active(last_seq=10)
    assert session.receive(data(11, 2), 0).kind == EV_DATA and session.last_gap == 0
    event = session.receive(data(20), 0)  # 13..19 never sent
    assert event.kind == EV_DATA and session.last_gap == 7 and session.gaps == 7
    session.receive(data(20), 0)  # a duplicate is not a gap
    assert session.last_gap == 0 and session.gaps == 7
    session.receive(data(19, 3), 0)  # overlap: only 21 is new, no gap
    assert session.last_gap == 0 and session.gaps == 7 and session.accepted_seq == 21


def nested(depth: int) -> object:
    value: object = 1
    for _ in range(depth):
        value = {"a": value}
    return value


def status(session: GatewaySession, **fields: object) -> tuple[str, object, str | None]:
    event = session.receive(json.dumps(dict(fields, t="status")), 0)
    return event.kind, event.payload, event.reply


def test_status_is_bounded_in_depth_fields_values_and_size() -> None:
    session = active()
    kind, payload, _ = status(session, rssi=-60, fw="0.1.0", heap={"free": 61440, "min": 40000})
    assert kind == EV_STATUS and payload == {"rssi": -60, "fw": "0.1.0", "heap": {"free": 61440, "min": 40000}}
    # the attack: ~300 levels in about 620 bytes
    for bad in ({"deep": nested(300)}, {"deep": nested(MAX_STATUS_DEPTH)},
                {f"f{i}": i for i in range(MAX_STATUS_FIELDS + 1)},
                {"many": list(range(MAX_STATUS_VALUES + 1))},
                {"big": "x" * MAX_STATUS_BYTES}):
        kind, err, reply = status(session, **bad)
        assert kind == EV_REJECT and err.code == wire.E_TOO_LARGE, bad  # type: ignore[attr-defined]
        assert reply is not None and json.loads(reply)["code"] == wire.E_TOO_LARGE
    assert status(session, ok={"a": {"b": 1}})[0] == EV_STATUS  # 3 levels with the status itself


def test_shape_check_is_iterative() -> None:
    deep: list[object] = []
    node = deep
    for _ in range(100_000):
        child: list[object] = []
        node.append(child)
        node = child
    assert json_shape_error(deep, 8, 1000) == "nested deeper than 8 levels"
    assert json_shape_error({"a": [1, 2, {"b": None}]}, 3, 10) is None
    assert json_shape_error([0] * 11, 3, 10) == "more than 10 keys and items"


def test_result_data_is_bounded_and_the_answer_still_arrives() -> None:
    session = active()
    session.command_frame("c-1", "ping")
    session.command_frame("c-2", "ping")
    good = session.receive(json.dumps({"t": "result", "id": "c-1", "ok": True, "msg": "done",
                                       "data": {"v": [1, 2]}}), 0)
    assert good.kind == EV_RESULT and good.reply is None
    assert good.payload == {"id": "c-1", "ok": True, "msg": "done", "data": {"v": [1, 2]}}
    for bad in ({"data": nested(300)}, {"data": {"x": "y" * (MAX_RESULT_BYTES + 1)}}, {"msg": {"a": 1}}):
        session.command_frame("c-2", "ping")
        event = session.receive(json.dumps(dict({"t": "result", "id": "c-2", "ok": True}, **bad)), 0)
        assert event.kind == EV_RESULT
        assert event.payload["id"] == "c-2" and event.payload["ok"] is True
        assert event.payload["refused"]["code"] == wire.E_TOO_LARGE
        assert event.payload["data"] is None or "data" not in bad
        assert event.reply is not None and json.loads(event.reply)["code"] == wire.E_TOO_LARGE


def test_a_result_is_accepted_only_for_a_command_sent_on_this_connection() -> None:
    victim, other = active(), active()
    victim.command_frame("c-secret", "set_output", {"output": "relay", "on": True})
    forged = other.receive(json.dumps({"t": "result", "id": "c-secret", "ok": True}), 0)
    assert forged.kind == EV_REJECT and forged.payload.code == wire.E_NO_SUCH_COMMAND
    assert forged.reply is not None and json.loads(forged.reply)["code"] == wire.E_NO_SUCH_COMMAND
    real = victim.receive(json.dumps({"t": "result", "id": "c-secret", "ok": False, "msg": "relay stuck"}), 0)
    assert real.kind == EV_RESULT and real.payload["msg"] == "relay stuck"
    again = victim.receive(json.dumps({"t": "result", "id": "c-secret", "ok": True}), 0)  # answered once
    assert again.kind == EV_REJECT and again.payload.code == wire.E_NO_SUCH_COMMAND


def test_pending_command_ids_are_bounded() -> None:
    session = active()
    for i in range(MAX_PENDING_COMMANDS + 5):
        session.command_frame(f"c-{i}", "ping")
    assert len(session.commands) == MAX_PENDING_COMMANDS and "c-0" not in session.commands


def test_a_reading_stamped_too_far_ahead_is_refused_with_bad_value() -> None:
    now_ms = 1_764_080_000_000
    session = active()
    year_3000 = 32_503_680_000_000
    frame = json.dumps({"t": "data", "seq": 1, "r": [{"m": {"temperature": 20}, "ts": now_ms},
                                                     {"m": {"temperature": 21}, "ts": year_3000}]})
    event = session.receive(frame, 0, now_ms)
    assert event.kind == EV_REJECT and event.payload.code == wire.E_BAD_VALUE
    assert json.loads(event.reply)["seq"] == 1 and session.accepted_seq == 0  # nothing of it is stored
    day = 86_400_000
    ok = json.dumps({"t": "data", "seq": 1, "r": [{"m": {"temperature": 20}, "ts": now_ms + day}]})
    assert session.receive(ok, 0, now_ms).kind == EV_DATA  # within the default skew
    strict = GatewaySession(rate=1000, burst=1000, max_future_ms=1000)
    strict.accept("S-1", 0, 0)
    late = json.dumps({"t": "data", "seq": 1, "r": [{"m": {"temperature": 20}, "ts": now_ms + 1001}]})
    assert strict.receive(late, 0, now_ms).kind == EV_REJECT


def test_bad_json_says_what_is_wrong() -> None:
    import orjson

    for loads in (None, orjson.loads):
        try:
            wire.decode('{"t": "data", "seq": 1,}', loads)
        except wire.ProtocolError as err:
            assert err.code == wire.E_BAD_JSON and "NaN" not in err.message
            assert err.message.startswith("frame is not valid JSON: ") and len(err.message) > 30
        else:
            raise AssertionError("decoded")
        try:
            wire.decode('{"t": "data", "v": NaN}', loads)
        except wire.ProtocolError as err:
            assert err.code == wire.E_BAD_JSON and "NaN and Infinity are not JSON" in err.message
        else:
            raise AssertionError("decoded")


def test_receive_never_raises_on_odd_result_ids_or_device_ids() -> None:
    """Found by make fuzz: a result whose id is not a string escaped receive() as ProtocolError."""
    session = active()
    for frame in ({"t": "result", "id": 3, "ok": True}, {"t": "result", "id": "x" * 65, "ok": True},
                  {"t": "result", "id": ["c1"], "ok": True}):
        event = session.receive(json.dumps(frame), 0)
        assert event.kind == EV_REJECT and event.payload.code in (wire.E_BAD_FRAME, wire.E_TOO_LARGE)
    deep: object = "S-1"
    for _ in range(900):
        deep = {"a": deep}
    event = active().receive(json.dumps({"t": "status", "device_id": deep}), 0)
    assert event.close_code == wire.CLOSE_IDENTITY and "non-string device_id" in event.payload.message


def test_a_session_checks_readings_against_the_table_it_is_given() -> None:
    """Issue 20 item 8: the gateway hands its merged metric table (wire.METRICS plus the operator's
    [[metrics]]) to the session; protocol/ never reads configuration."""
    table = dict(wire.METRICS, rain=("mm", 0.0, 500.0, "precipitation", "Rain"))
    session = GatewaySession(rate=1000, burst=1000, table=table)
    session.receive(json.dumps({"t": "auth", "device_id": "d1", "token": "x"}), 0.0)
    session.accept("d1", 0, 0)
    frame = {"t": "data", "seq": 1, "r": [{"m": {"rain": 12.5, "temperature": 20.0}}]}
    assert session.receive(json.dumps(frame), 0.0).kind == EV_DATA
    frame = {"t": "data", "seq": 2, "r": [{"m": {"rain": 600.0}}]}
    event = session.receive(json.dumps(frame), 0.0)
    assert event.kind == EV_REJECT and event.payload.code == wire.E_BAD_VALUE
    assert "0.0..500.0" in event.payload.message
    # Without the table, rain is a metric without a row: accepted within the generic range.
    assert wire.parse_data(frame).readings[0].metrics == {"rain": 600.0}
    assert wire.metric_range("rain", table) == (0.0, 500.0) and wire.metric_range("rain") == wire.GENERIC_RANGE
