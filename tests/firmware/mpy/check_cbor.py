"""protocol/cbor.py and cbor_decode.py (edgewire.v1.cbor) under the interpreter the firmware runs on:
the documented example, CBOR items, the firmware's readings round trip, and random bytes that
raise only ProtocolError."""

import random

from mpytest import MICROPYTHON, raises, run

from protocol import cbor, cbor_decode, wire
from protocol.device import D_WELCOME, DeviceSession
from protocol.gateway import EV_AUTH, EV_DATA, EV_REJECT, GatewaySession

# docs/protocol.md section 1.1 (tests/protocol/test_cbor.py checks the same bytes under CPython)
DOC_EXAMPLE = (
    "a76373657119041264626f6f74447f3a9c016275701a0005803462747383001b0000019abb5c9c00f662727583"
    "00f61a00057e40616da200830118d701018301190192206171820102")


def _unhex(text):
    out = bytearray()
    for i in range(0, len(text), 2):
        out.append(int(text[i:i + 2], 16))
    return bytes(out)


def _decoded(frame):
    return wire.parse_data(cbor_decode.rows(cbor_decode.decode_frame(bytes(frame))))


def test_documented_example_is_the_same_bytes():
    readings = [wire.Reading(1042, {"temperature": 21.5, "humidity": 40.2}, 1764080000000, None, "ok"),
                wire.Reading(1043, {"temperature": 21.6, "humidity": 40.1}, None, 360000, "retried")]
    frame = cbor.encode_data(1042, readings, "7f3a9c01", 360500)
    if MICROPYTHON:  # its dicts do not keep insertion order: the metric columns may come in another order
        expected = cbor_decode.loads(_unhex(DOC_EXAMPLE))
        assert len(frame) == len(DOC_EXAMPLE) // 2 and cbor_decode.loads(bytes(frame)) == expected
    else:
        assert bytes(frame) == _unhex(DOC_EXAMPLE), bytes(frame)
    got = _decoded(frame).readings
    assert got[0].ts == 1764080000000 and got[1].up == 360000 and got[1].quality == "retried"
    assert got[0].metrics["temperature"] == 21.5 and got[1].metrics["humidity"] == 40.1


def test_generic_items():
    ff = b"\xff" * 8
    cases = [(b"\x00", 0), (b"\x17", 23), (b"\x18\x18", 24), (b"\x19\x01\x00", 256),
             (b"\x1a\x00\x01\x00\x00", 65536), (b"\x1b\x00\x00\x00\x01\x00\x00\x00\x00", 2 ** 32),
             (b"\x1b" + ff, 2 ** 64 - 1), (b"\x20", -1), (b"\x37", -24), (b"\x38\x18", -25),
             (b"\x3b" + ff, -(2 ** 64)), (b"\x60", ""), (b"\x62\xc3\xa9", "\xe9"), (b"\x80", []),
             (b"\x83\x01\x81\x02\xf6", [1, [2], None]),
             (b"\xa3\x61a\xf6\x61b\xf5\x61c\xf4", {"a": None, "b": True, "c": False})]
    for data, value in cases:
        assert cbor_decode.loads(data) == value, (data, value)


def test_firmware_readings_round_trip():
    """Single-precision values with one decimal, as a DHT22 on the ESP32 gives them."""
    readings = []
    for i in range(10):
        readings.append(wire.Reading(100 + i, {"temperature": 21.5 + (i % 4) * 0.1, "humidity": 40.0 + i * 0.3},
                                     1764080000000 + 60000 * i + (i % 2) * 7, None, "ok"))
    frame = cbor.encode_data(100, readings, "7f3a9c01", 360500)
    assert frame is not None and len(frame) < 12 * 10, len(frame)
    got = _decoded(frame).readings
    for index in range(len(readings)):
        a, b = got[index], readings[index]
        assert a.seq == b.seq and a.ts == b.ts and a.quality == b.quality
        for name in b.metrics:
            assert a.metrics[name] == b.metrics[name], (name, a.metrics[name], b.metrics[name])


def test_random_bytes_raise_only_protocol_errors():
    rnd = random.getrandbits
    for _ in range(400):
        data = bytearray()
        for _ in range(rnd(5)):
            data.append(rnd(8))
        try:
            cbor_decode.rows(cbor_decode.decode_frame(bytes(data)))
        except wire.ProtocolError as err:
            assert err.code in (wire.E_BAD_CBOR, wire.E_BAD_FRAME, wire.E_TOO_LARGE), err.code
    example = _unhex(DOC_EXAMPLE)
    for _ in range(400):
        data = bytearray(example)
        data[rnd(6) % len(data)] = rnd(8)
        try:
            wire.parse_data(cbor_decode.rows(cbor_decode.decode_frame(bytes(data))))
        except wire.ProtocolError as err:
            assert err.code in (wire.E_BAD_CBOR, wire.E_BAD_FRAME, wire.E_BAD_VALUE, wire.E_TOO_LARGE), err.code


def test_bad_cbor_codes():
    for data in (b"\xfb\x40\x35\x80\x00\x00\x00\x00\x00", b"\x19\x01", b"\x81" * 9 + b"\x00"):
        assert raises(wire.ProtocolError, cbor_decode.loads, data).code == wire.E_BAD_CBOR


def test_session_over_cbor():
    gw = GatewaySession(rate=100, burst=100, cbor=True)
    dev = DeviceSession("S-1", token="ewt_" + "a" * 32, boot="0badf00d", max_batch=5, encoding="cbor")
    assert dev.subprotocols() == [wire.SUBPROTOCOL_CBOR, wire.SUBPROTOCOL_JSON]
    assert dev.negotiated(wire.SUBPROTOCOL_CBOR)
    assert gw.receive(dev.auth_frame(), 0.0).kind == EV_AUTH
    assert dev.handle(gw.accept("S-1", 0, 0), 0).kind == D_WELCOME
    pending = [wire.Reading(seq, {"temperature": 20.5 + seq}, None, 1000 * seq, "ok") for seq in range(1, 8)]
    frame = dev.next_frame(pending, 9000)
    assert type(frame) is bytearray
    ev = gw.receive(bytes(frame), 0.1)
    assert ev.kind == EV_DATA and [r.seq for r in ev.payload.readings] == [1, 2, 3, 4, 5]
    ev = gw.receive(b"\xff", 0.2)
    assert ev.kind == EV_REJECT and ev.payload.code == wire.E_BAD_CBOR


def test_interpreter():
    print("float precision:", "single" if MICROPYTHON and 1.0 + 1e-9 == 1.0 else "double")


run(globals())
