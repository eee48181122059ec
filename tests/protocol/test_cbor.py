"""protocol/cbor.py and cbor_decode.py: the CBOR subset, the columnar data frame and the same
validation as JSON (docs/protocol.md section 1.1). cbor2, an independent CBOR library, stands in
for clients built from the documentation."""

from __future__ import annotations

import json
from typing import Any

import cbor2
import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from protocol import cbor, cbor_decode, wire
from protocol.device import D_WELCOME, ENC_CBOR, ENC_JSON, DeviceSession
from protocol.gateway import EV_AUTH, EV_CLOSE, EV_DATA, EV_REJECT, GatewaySession

# docs/protocol.md section 1.1: the example of section 4 as a binary frame, byte for byte.
DOC_EXAMPLE = bytes.fromhex(
    "a7" "63736571" "190412" "64626f6f74" "447f3a9c01" "627570" "1a00058034"
    "627473" "83" "00" "1b0000019abb5c9c00" "f6"
    "627275" "83" "00" "f6" "1a00057e40"
    "616d" "a2" "00" "83" "01" "18d7" "01" "01" "83" "01" "190192" "20"
    "6171" "82" "01" "02")
T0_AGENT = 1_764_080_000_000
DOC_READINGS = [
    wire.Reading(1042, {"temperature": 21.5, "humidity": 40.2}, ts=1764080000000, quality="ok"),
    wire.Reading(1043, {"temperature": 21.6, "humidity": 40.1}, up=360000, quality="retried"),
]

# ------------------------------------------------------------------ strategies

scalars = st.none() | st.booleans() | st.integers(-(2**64), 2**64 - 1) | st.text(max_size=20)
values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=5)
                      | st.dictionaries(st.text(max_size=8), inner, max_size=5), max_leaves=30)


def _decimal(places: int) -> st.SearchStrategy[float]:
    return st.integers(-(10**7), 10**7).map(lambda n: n / 10**places)


NAMES = ["temperature", "humidity", "battery", "co2", "x1"]
metric_values = st.one_of(*[_decimal(p) for p in range(0, 5)])


@st.composite
def batches(draw: st.DrawFn) -> tuple[int, list[wire.Reading], str | None, int | None]:
    """Readings as devices make them: per metric the same type (int or float) in every reading."""
    names = draw(st.lists(st.sampled_from(NAMES), min_size=1, max_size=4, unique=True))
    kinds = {name: draw(st.sampled_from(["int", "float"])) for name in names}
    count = draw(st.integers(1, 30))
    seq = draw(st.integers(1, 2**40))
    out = []
    for i in range(count):
        present = names if i == 0 else draw(st.lists(st.sampled_from(names), min_size=1, max_size=len(names),
                                                     unique=True))
        metrics: dict[str, float] = {}
        for name in names:
            if name in present:
                metrics[name] = draw(st.integers(-(10**9), 10**9)) if kinds[name] == "int" else draw(metric_values)
        ts = draw(st.none() | st.integers(0, 2**53 - 1))
        up = draw(st.none() | st.integers(0, 2**40))
        quality = draw(st.none() | st.sampled_from(wire.QUALITIES))
        out.append(wire.Reading(seq + i, metrics, ts, up, quality))
    boot = draw(st.none() | st.text(max_size=12))
    frame_up = draw(st.none() | st.integers(0, 2**53 - 1))
    return seq, out, boot, frame_up


def _via_json(seq: int, readings: list[wire.Reading], boot: str | None, up: int | None) -> wire.DataFrame:
    return wire.parse_data(json.loads(json.dumps(wire.data_message(seq, readings, boot, up))))


def _via_cbor(seq: int, readings: list[wire.Reading], boot: str | None, up: int | None) -> wire.DataFrame:
    frame = cbor.encode_data(seq, readings, boot, up)
    assert frame is not None
    assert cbor2.loads(frame) == cbor_decode.loads(frame)  # well-formed for an independent decoder too
    return wire.parse_data(cbor_decode.rows(cbor_decode.decode_frame(bytes(frame))))


def _same(a: wire.DataFrame, b: wire.DataFrame) -> None:
    assert (a.seq, a.boot, a.up, a.device_id) == (b.seq, b.boot, b.up, b.device_id)
    assert a.readings == b.readings
    for x, y in zip(a.readings, b.readings, strict=True):  # the same types and order: the same stored JSON
        assert json.dumps(x.metrics) == json.dumps(y.metrics)


# ------------------------------------------------------------------ the generic codec

def _depth(value: Any) -> int:
    if isinstance(value, list):
        return 1 + max((_depth(v) for v in value), default=0)
    if isinstance(value, dict):
        return 1 + max((_depth(v) for v in value.values()), default=0)
    return 0


@settings(max_examples=300)
@given(values)
def test_generic_round_trip_with_an_independent_encoder(value: Any) -> None:
    data = cbor2.dumps(value)
    if _depth(value) <= cbor_decode.MAX_DEPTH:
        assert cbor_decode.loads(data) == value
    else:
        with pytest.raises(wire.ProtocolError) as info:
            cbor_decode.loads(data)
        assert info.value.code == wire.E_BAD_CBOR


@settings(max_examples=2000)
@given(st.binary(max_size=64))
def test_random_bytes_raise_only_protocol_errors(data: bytes) -> None:
    try:
        msg = cbor_decode.decode_frame(data)
        cbor_decode.rows(msg)
    except wire.ProtocolError as err:
        assert err.code in (wire.E_BAD_CBOR, wire.E_BAD_FRAME, wire.E_TOO_LARGE)


@settings(max_examples=500)
@given(st.binary(min_size=1, max_size=8), st.integers(0, 102))
def test_mutated_frames_raise_only_protocol_errors(noise: bytes, where: int) -> None:
    data = DOC_EXAMPLE[:where] + noise + DOC_EXAMPLE[where + len(noise):]
    try:
        wire.parse_data(cbor_decode.rows(cbor_decode.decode_frame(data)))
    except wire.ProtocolError as err:
        assert err.code in (wire.E_BAD_CBOR, wire.E_BAD_FRAME, wire.E_BAD_VALUE, wire.E_TOO_LARGE)


@pytest.mark.parametrize(("data", "what"), [
    (b"", "ends in the middle"),
    (b"\x19\x01", "ends in the middle"),
    (b"\x9b\xff\xff\xff\xff\xff\xff\xff\xff", "ends in the middle"),  # 2^64 items claimed
    (b"\x01\x02", "after the end"),
    (b"\x5f", "indefinite"),
    (b"\x9f\x01\xff", "indefinite"),
    (b"\xfb\x40\x35\x80\x00\x00\x00\x00\x00", "floats"),
    (b"\xf9\x3c\x00", "floats"),
    (b"\xc1\x1a\x00\x00\x00\x00", "tags"),
    (b"\xf7", "simple value"),
    (b"\x1c", "reserved"),
    (b"\x62\xff\xfe", "UTF-8"),
    (b"\xa1\x20\x02", "keys must be text"),
    (b"\xa1\x81\x00\x02", "keys must be text"),
    (b"\xa2\x61a\x01\x61a\x02", "twice"),
    (b"\x81" * 9 + b"\x00", "nested deeper"),
])
def test_malformed_cbor_is_bad_cbor(data: bytes, what: str) -> None:
    with pytest.raises(wire.ProtocolError) as info:
        cbor_decode.loads(data)
    assert info.value.code == wire.E_BAD_CBOR and what in info.value.message


# ------------------------------------------------------------------ the data frame layout

def test_the_documented_example_byte_for_byte() -> None:
    frame = cbor.encode_data(1042, DOC_READINGS, "7f3a9c01", 360500)
    assert frame == DOC_EXAMPLE
    assert cbor2.loads(DOC_EXAMPLE) == {  # what docs/protocol.md section 1.1 shows in diagnostic notation
        "seq": 1042, "boot": bytes.fromhex("7f3a9c01"), "up": 360500, "ts": [0, 1764080000000, None],
        "ru": [0, None, 360000], "m": {0: [1, 215, 1], 1: [1, 402, -1]}, "q": [1, 2]}
    msg = cbor_decode.rows(cbor_decode.decode_frame(DOC_EXAMPLE))
    assert msg == {"t": "data", "seq": 1042, "boot": "7f3a9c01", "up": 360500, "r": [
        {"m": {"temperature": 21.5, "humidity": 40.2}, "ts": 1764080000000, "q": "ok"},
        {"m": {"temperature": 21.6, "humidity": 40.1}, "up": 360000, "q": "retried"}]}


def test_the_documented_firmware_batch() -> None:
    temps = [21.5, 21.5, 21.6, 21.5, 21.5, 21.6, 21.7, 21.7, 21.6, 21.6]
    hums = [45.2, 44.8, 45.0, 45.1, 45.1, 44.9, 44.6, 44.6, 44.7, 44.9]
    readings = [wire.Reading(1042 + i, {"temperature": temps[i], "humidity": hums[i]},
                             ts=1764080000000 + 60000 * i + (3 if i == 3 else 0),
                             quality="retried" if i == 7 else "ok") for i in range(10)]
    frame = cbor.encode_data(1042, readings, "7f3a9c01", 4200000)
    assert frame is not None and len(frame) == 96
    assert len(json.dumps(wire.data_message(1042, readings, "7f3a9c01", 4200000))) == 873
    assert cbor2.loads(frame) == {
        "seq": 1042, "boot": bytes.fromhex("7f3a9c01"), "up": 4200000,
        "ts": [60000, 1764080000000, 0, 0, 3, -3, 0, 0, 0, 0, 0],
        "m": {0: [1, 215, 0, 1, -1, 0, 1, 1, 0, -1, 0], 1: [1, 452, -4, 2, 1, 0, -2, -3, 0, 1, 2]},
        "q": [1, 1, 1, 1, 1, 1, 1, 2, 1, 1]}
    assert _via_cbor(1042, readings, "7f3a9c01", 4200000).readings == readings


@settings(max_examples=300, deadline=None)
@given(batches())
def test_cbor_and_json_give_the_same_data_frame_or_error(
        case: tuple[int, list[wire.Reading], str | None, int | None]) -> None:
    seq, readings, boot, up = case
    try:
        expected = _via_json(seq, readings, boot, up)
    except wire.ProtocolError as err:  # out of a metric's range: the same refusal, word for word
        with pytest.raises(wire.ProtocolError) as info:
            _via_cbor(seq, readings, boot, up)
        assert (info.value.code, info.value.message) == (err.code, err.message)
        return
    _same(_via_cbor(seq, readings, boot, up), expected)


def test_columns_keep_integers_floats_gaps_and_qualities() -> None:
    readings = [
        wire.Reading(7, {"co2": 415, "temperature": 20.0}, up=1000),
        wire.Reading(8, {"temperature": -3.25}, up=61000, quality="stale"),
        wire.Reading(9, {"co2": 400}, ts=1764080000000),
    ]
    frame = wire.parse_data(cbor_decode.rows(cbor_decode.decode_frame(bytes(cbor.encode_data(7, readings) or b""))))
    assert frame.readings == readings
    assert [type(r.metrics.get("co2")) for r in frame.readings] == [int, type(None), int]
    assert type(frame.readings[0].metrics["temperature"]) is float


@pytest.mark.parametrize("metrics", [
    {"temperature": 0.1 + 0.2},  # no decimal with at most 9 places is exactly this float
    {"temperature": float("nan")}, {"temperature": float("inf")}, {"temperature": True},
    {"x": 1e300}, {"x": 2**63},
])
def test_values_that_are_no_exact_scaled_integer_fall_back_to_json(metrics: dict[str, float]) -> None:
    assert cbor.encode_data(1, [wire.Reading(1, metrics)]) is None


def test_each_reading_keeps_its_order_of_metrics() -> None:
    readings = [wire.Reading(1, {"humidity": 40.0}), wire.Reading(2, {"cpu_temperature": 48.5}),
                wire.Reading(3, {"temperature": 21.5, "humidity": 40.5}), wire.Reading(4, {"co2": 400})]
    frame = cbor.encode_data(1, readings)
    assert frame is not None
    decoded = wire.parse_data(cbor_decode.rows(cbor_decode.decode_frame(bytes(frame)))).readings
    assert [list(r.metrics) for r in decoded] == [list(r.metrics) for r in readings]
    # no one column order fits both readings: the frame goes as JSON
    assert cbor.encode_data(1, [wire.Reading(1, {"a": 1, "b": 2}), wire.Reading(2, {"b": 2, "a": 1})]) is None


def test_metric_ids_are_known_metrics() -> None:
    assert len(set(wire.METRIC_IDS)) == len(wire.METRIC_IDS) and set(wire.METRIC_IDS) <= set(wire.METRICS)
    assert len(wire.METRIC_IDS) < 24  # one byte each


def test_names_ids_and_boot_spellings() -> None:
    """A client may name any metric in full, give its id, send boot as text; no "t" means data."""
    by_name = cbor2.dumps({"t": "data", "seq": 4, "boot": "A-1", "m": {"temperature": [1, 215], "x9": [-1, 7]}})
    by_id = cbor2.dumps({"seq": 4, "boot": bytes.fromhex("00ff"), "m": {0: [1, 215], "x9": [-1, 7]}})
    first = wire.parse_data(cbor_decode.rows(cbor_decode.decode_frame(by_name)))
    second = wire.parse_data(cbor_decode.rows(cbor_decode.decode_frame(by_id)))
    assert first.readings == second.readings == [wire.Reading(4, {"temperature": 21.5, "x9": 7})]
    assert (first.boot, second.boot) == ("A-1", "00ff")
    encoded = cbor.encode_data(4, [wire.Reading(4, {"temperature": 21.5})], "Boot-7")
    assert encoded is not None and cbor2.loads(encoded)["boot"] == "Boot-7"  # not hex: sent as text


@pytest.mark.parametrize(("msg", "code", "what"), [
    ({"seq": 1, "m": {11: [-1, 1]}}, wire.E_BAD_FRAME, "unknown metric id 11"),
    ({"seq": 1, "m": {0: [-1, 1], "temperature": [-1, 2]}}, wire.E_BAD_FRAME, "two columns"),
    ({"seq": b"\x01", "m": {0: [-1, 1]}}, wire.E_BAD_FRAME, "field 'seq' must be an integer"),
    ({"seq": 1, "boot": b"\x01" * 33, "m": {0: [-1, 1]}}, wire.E_TOO_LARGE, "field 'boot' longer than 64"),
    ({"seq": 1, "boot": 7, "m": {0: [-1, 1]}}, wire.E_BAD_FRAME, "field 'boot' must be a string"),
    ({"seq": 1, "m": {0: [-1, b"\x01"]}}, wire.E_BAD_FRAME, "integers or null"),
    ({"seq": 1, "tu": [0, 5], "m": {0: [-1, 1]}}, wire.E_BAD_FRAME, "needs the reading's ts"),
    ({"seq": 1, "ts": [0, 9], "ru": [0, 1], "tu": [0, 5], "m": {0: [-1, 1]}}, wire.E_BAD_FRAME, "send one"),
    ({"seq": 1, "ts": [0, 4], "tu": [0, 5], "m": {0: [-1, 1]}}, wire.E_BAD_VALUE, "field 'up' out of range"),
])
def test_bad_fields_get_the_json_codes(msg: dict[Any, Any], code: str, what: str) -> None:
    with pytest.raises(wire.ProtocolError) as info:
        wire.parse_data(cbor_decode.rows(cbor_decode.decode_frame(cbor2.dumps(msg))))
    assert info.value.code == code and what in info.value.message


def test_agent_readings_send_ts_minus_up() -> None:
    """ts and up of the agent's readings move together (seconds of jitter apart): "tu" = ts - up."""
    readings = [wire.Reading(1 + i, {"cpu_temperature": 48.25}, ts=T0_AGENT + 60_000 * i + 1_700 * (i % 3),
                             up=86_400_000 + 60_000 * i + 1_700 * (i % 3) - i % 2, quality="ok") for i in range(10)]
    frame = cbor.encode_data(1, readings)
    assert frame is not None
    decoded = cbor2.loads(frame)
    assert "ru" not in decoded and decoded["tu"] == [1, T0_AGENT - 86_400_000, 0, -2, 0, -2, 0, -2, 0, -2, 0]
    assert wire.parse_data(cbor_decode.rows(cbor_decode.decode_frame(frame))).readings == readings


def test_mixed_int_and_float_column_falls_back_to_json() -> None:
    assert cbor.encode_data(1, [wire.Reading(1, {"co2": 400}), wire.Reading(2, {"co2": 400.5})]) is None


def test_invalid_frame_fields_fall_back_to_json() -> None:
    reading = [wire.Reading(1, {"x": 1})]
    for seq, boot, up in ((2**64, None, None), (-1, None, None), (1, None, 2**70), (1, None, -5), (1, 7, None)):
        assert cbor.encode_data(seq, reading, boot, up) is None  # type: ignore[arg-type]


def test_text_that_is_not_utf8_falls_back_to_json() -> None:
    # A lone surrogate (found by make fuzz) cannot be encoded as CBOR text: JSON escapes it and the
    # gateway answers it with its code, as for any JSON device; the encoder never raises.
    assert cbor.encode_data(1, [wire.Reading(1, {"te\ud800mp": 1})]) is None
    assert cbor.encode_data(1, [wire.Reading(1, {"x": 1})], boot="b\udfff") is None
    assert cbor.encode_data(1, [wire.Reading(1, {"x\u00e9": 1})]) is not None  # any other text is fine


def test_invalid_times_and_qualities_fall_back_to_json() -> None:
    for reading in (wire.Reading(1, {"x": 1}, ts=-5), wire.Reading(1, {"x": 1}, up=True),  # type: ignore[arg-type]
                    wire.Reading(1, {"x": 1}, ts=2**53), wire.Reading(1, {"x": 1}, quality="great")):
        assert cbor.encode_data(1, [reading]) is None


def _frame(**fields: Any) -> bytes:
    msg: dict[str, Any] = {"t": "data", "seq": 5, "m": {"temperature": [1, 215, 1]}}
    msg.update(fields)
    return cbor2.dumps({k: v for k, v in msg.items() if v is not None})


@pytest.mark.parametrize(("frame", "code", "what"), [
    (_frame(m=None), wire.E_BAD_FRAME, "field 'm'"),
    (_frame(m={}), wire.E_BAD_FRAME, "field 'm'"),
    (_frame(m=[1, 2]), wire.E_BAD_FRAME, "field 'm'"),
    (_frame(m={"temperature": [1]}), wire.E_BAD_FRAME, "no readings"),
    (_frame(m={"temperature": 5}), wire.E_BAD_FRAME, "non-empty list"),
    (_frame(m={"temperature": [1, 215, 1], "humidity": [1, 400]}), wire.E_BAD_FRAME, "one entry per reading"),
    (_frame(m={"temperature": [10, 215, 1]}), wire.E_BAD_FRAME, "header must be -1"),
    (_frame(m={"temperature": ["1", 215, 1]}), wire.E_BAD_FRAME, "header must be an integer"),
    (_frame(m={"temperature": [1, "215", 1]}), wire.E_BAD_FRAME, "integers or null"),
    (_frame(m={"temperature": [1, True, 1]}), wire.E_BAD_FRAME, "integers or null"),
    (_frame(ts=[0, 1]), wire.E_BAD_FRAME, "field 'ts'"),
    (_frame(ru=[0, 1, "x"]), wire.E_BAD_FRAME, "field 'ru'"),
    (_frame(q=9), wire.E_BAD_FRAME, "quality codes"),
    (_frame(q=[1]), wire.E_BAD_FRAME, "field 'q'"),
    (_frame(m={"temperature": [1] + [0] * 101}), wire.E_TOO_LARGE, "batch of 101 readings exceeds 100"),
])
def test_broken_layouts(frame: bytes, code: str, what: str) -> None:
    with pytest.raises(wire.ProtocolError) as info:
        cbor_decode.rows(cbor_decode.decode_frame(frame))
    assert info.value.code == code and what in info.value.message


@pytest.mark.parametrize(("frame", "code"), [
    (cbor2.dumps([1, 2]), wire.E_BAD_FRAME),
    (cbor2.dumps({"t": 5, "seq": 1}), wire.E_BAD_FRAME),
    (cbor2.dumps({"t": "status", "heap_free": 1}), wire.E_BAD_FRAME),
    (cbor2.dumps({"t": "data", "x": "y" * 100}), wire.E_TOO_LARGE),
])
def test_frames_that_are_not_binary_data_frames(frame: bytes, code: str) -> None:
    with pytest.raises(wire.ProtocolError) as info:
        cbor_decode.decode_frame(frame, max_bytes=64)
    assert info.value.code == code


# The same bad readings in both encodings: the same code and message from wire.parse_data.
SAME_ERRORS = [
    ({"temperature": 500.0}, None, wire.E_BAD_VALUE),  # outside the plausible range
    ({"Temp": 1.0}, None, wire.E_BAD_FRAME),  # not a metric name
    ({f"m{i}": 1 for i in range(17)}, None, wire.E_TOO_LARGE),  # more than 16 metrics
]


@pytest.mark.parametrize(("metrics", "ts", "code"), SAME_ERRORS)
def test_same_error_codes_and_messages_as_json(metrics: dict[str, float], ts: int | None, code: str) -> None:
    readings = [wire.Reading(3, metrics, ts)]
    frame = cbor.encode_data(3, readings)
    assert frame is not None
    with pytest.raises(wire.ProtocolError) as as_cbor:
        wire.parse_data(cbor_decode.rows(cbor_decode.decode_frame(bytes(frame))))
    with pytest.raises(wire.ProtocolError) as as_json:
        wire.parse_data(wire.data_message(3, readings))
    assert (as_cbor.value.code, as_cbor.value.message) == (as_json.value.code, as_json.value.message) == (
        code, as_json.value.message)


def test_a_reading_without_metrics_and_a_seq_out_of_range() -> None:
    no_metrics = cbor2.dumps({"t": "data", "seq": 1, "m": {"temperature": [1, 215, None]}})
    with pytest.raises(wire.ProtocolError) as info:
        wire.parse_data(cbor_decode.rows(cbor_decode.decode_frame(no_metrics)))
    assert (info.value.code, info.value.message) == (wire.E_BAD_FRAME, "reading has no metrics")
    negative_ts = cbor2.dumps({"t": "data", "seq": 1, "ts": [0, -1], "m": {"x": [-1, 1]}})
    with pytest.raises(wire.ProtocolError) as info:
        wire.parse_data(cbor_decode.rows(cbor_decode.decode_frame(negative_ts)))
    assert (info.value.code, info.value.message) == (wire.E_BAD_VALUE, "field 'ts' out of range")


# ------------------------------------------------------------------ the sessions

def _pair(encoding: str, subprotocol: str | None) -> tuple[GatewaySession, DeviceSession]:
    gw = GatewaySession(rate=100, burst=100, cbor=subprotocol == wire.SUBPROTOCOL_CBOR)
    dev = DeviceSession("S-1", token="ewt_" + "a" * 32, boot="0badf00d", max_batch=10, encoding=encoding)
    dev.negotiated(subprotocol)
    assert gw.receive(dev.auth_frame() or "", 0.0).kind == EV_AUTH
    assert dev.handle(gw.accept("S-1", 0, 0), 0).kind == D_WELCOME
    return gw, dev


def test_device_offers_cbor_only_when_configured() -> None:
    assert DeviceSession("S-1", encoding=ENC_JSON).subprotocols() == []
    assert DeviceSession("S-1").subprotocols() == []  # JSON is the core's default
    assert DeviceSession("S-1", encoding=ENC_CBOR).subprotocols() == [wire.SUBPROTOCOL_CBOR, wire.SUBPROTOCOL_JSON]
    with pytest.raises(ValueError):
        DeviceSession("S-1", encoding="xml")


@pytest.mark.parametrize(("encoding", "subprotocol", "binary"), [
    (ENC_CBOR, wire.SUBPROTOCOL_CBOR, True),
    (ENC_CBOR, wire.SUBPROTOCOL_JSON, False),
    (ENC_CBOR, None, False),
    (ENC_JSON, wire.SUBPROTOCOL_CBOR, False),
])
def test_data_frames_are_binary_only_when_cbor_was_negotiated(encoding: str, subprotocol: str | None,
                                                               binary: bool) -> None:
    gw, dev = _pair(encoding, subprotocol)
    readings = [wire.Reading(i, {"temperature": 21.5 + i / 10}, up=1000 * i, quality="ok") for i in range(1, 6)]
    frame = dev.next_frame(readings, up=9000)
    assert frame is not None and isinstance(frame, bytearray) is binary
    for text in (dev.auth_frame(), dev.status_frame({"a": 1}), dev.result_frame("c-1", True)):
        assert isinstance(text, str)  # every other message stays a JSON text frame
    event = gw.receive(bytes(frame) if binary else frame, 0.1)
    assert event.kind == EV_DATA and event.payload.readings == readings


def test_connection_lost_forgets_the_encoding() -> None:
    _, dev = _pair(ENC_CBOR, wire.SUBPROTOCOL_CBOR)
    assert dev.cbor
    dev.connection_lost()
    assert not dev.cbor


def test_a_frame_that_cannot_be_exact_goes_as_json_on_a_cbor_connection() -> None:
    gw, dev = _pair(ENC_CBOR, wire.SUBPROTOCOL_CBOR)
    frame = dev.next_frame([wire.Reading(1, {"analog": 1 / 3})])
    assert isinstance(frame, str)
    event = gw.receive(frame, 0.1)
    assert event.kind == EV_DATA and event.payload.readings[0].metrics == {"analog": 1 / 3}


def test_binary_frames_on_a_json_session_stay_refused() -> None:
    gw, _ = _pair(ENC_JSON, None)
    event = gw.receive(DOC_EXAMPLE, 0.1)
    assert event.kind == EV_REJECT and event.payload.code == wire.E_BINARY


def test_bad_binary_frames_on_a_cbor_session() -> None:
    gw, _ = _pair(ENC_CBOR, wire.SUBPROTOCOL_CBOR)
    event = gw.receive(b"\xff\x00", 0.1)
    assert event.kind == EV_REJECT and event.payload.code == wire.E_BAD_CBOR
    assert event.reply is not None and json.loads(event.reply)["code"] == wire.E_BAD_CBOR
    event = gw.receive(cbor2.dumps({"t": "status", "heap_free": 1}), 0.1)
    assert event.kind == EV_REJECT and event.payload.code == wire.E_BAD_FRAME
    bad = cbor.encode_data(9, [wire.Reading(9, {"temperature": 999.5})])
    assert bad is not None
    event = gw.receive(bytes(bad), 0.1)
    assert event.kind == EV_REJECT and event.payload.code == wire.E_BAD_VALUE
    assert event.reply is not None and json.loads(event.reply)["seq"] == 9  # the device drops 9 from its outbox
    broken = cbor2.dumps({"t": "data", "seq": 12, "m": {"temperature": [1, 1, 2]}, "q": 7})
    event = gw.receive(broken, 0.1)
    assert event.kind == EV_REJECT and json.loads(event.reply or "{}")["seq"] == 12
    event = gw.receive(DOC_EXAMPLE, 0.2)  # a good frame after bad ones is stored as usual
    assert event.kind == EV_DATA and [r.seq for r in event.payload.readings] == [1042, 1043]


def test_binary_before_auth_closes_with_auth_required() -> None:
    for frame in (DOC_EXAMPLE, b"\xff", cbor2.dumps({"t": "auth", "device_id": "S-1", "token": "ewt_x"})):
        gw = GatewaySession(cbor=True)
        event = gw.receive(frame, 0.0)
        assert event.kind == EV_CLOSE and event.close_code == wire.CLOSE_AUTH_REQUIRED


def test_binary_frame_naming_another_device_is_an_identity_mismatch() -> None:
    gw, _ = _pair(ENC_CBOR, wire.SUBPROTOCOL_CBOR)
    frame = cbor2.dumps({"t": "data", "seq": 1, "device_id": "OTHER", "m": {"x": [-1, 1]}})
    event = gw.receive(frame, 0.1)
    assert event.kind == EV_CLOSE and event.close_code == wire.CLOSE_IDENTITY



@pytest.mark.parametrize("seq", [2**64, -(2**63) - 1, 2**100])
def test_a_seq_beyond_64_bits_is_refused_without_being_echoed(seq: int) -> None:
    # Found by make fuzz's cbor target: a binary frame can carry integers JSON encoders refuse;
    # the error frame (encoded by the gateway's orjson) must still be written, without the seq.
    gw = GatewaySession(cbor=True, loads=orjson.loads, dumps=lambda msg: orjson.dumps(msg).decode())
    gw.accept("S-1", 0, 1_700_000_000_000)
    event = gw.receive(cbor2.dumps({"seq": seq, "m": {"temperature": "not a column"}}), 0.1)
    assert event.kind == EV_REJECT and event.reply is not None
    reply = json.loads(event.reply)
    assert reply["t"] == "error" and "seq" not in reply and reply["code"] == event.payload.code
