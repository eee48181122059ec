"""protocol (wire, gateway, device) under the interpreter the firmware runs on."""

from mpytest import raises, run

from protocol import wire
from protocol.device import D_ACK, D_COMMAND, D_SLOW, D_WELCOME, Backoff, DeviceSession
from protocol.gateway import EV_AUTH, EV_CLOSE, EV_DATA, EV_RESULT, EV_STATUS, EV_THROTTLE, GatewaySession


def _pair(last_seq=0):
    gw = GatewaySession(rate=100, burst=100, now=0.0)
    dev = DeviceSession("SENSOR-01", token="ewt_" + "a" * 32, boot="0badf00d", max_batch=3)
    ev = gw.receive(dev.auth_frame(), 0.0)
    assert ev.kind == EV_AUTH and ev.payload["device_id"] == "SENSOR-01"
    welcome = gw.accept("SENSOR-01", last_seq, 1764080000000)
    d = dev.handle(welcome, 0)
    assert d.kind == D_WELCOME and d.seq == last_seq
    return gw, dev


def test_round_trip_and_cumulative_ack():
    gw, dev = _pair()
    pending = [wire.Reading(seq, {"temperature": 20.5 + seq, "humidity": 40.0}, up=1000 * seq, quality="ok")
               for seq in range(1, 6)]
    frames = []
    while True:
        frame = dev.next_frame(pending, up=9000)
        if frame is None:
            break
        frames.append(frame)
    assert len(frames) == 2  # max_batch 3: seqs 1-3 and 4-5
    stored = []
    for frame in frames:
        ev = gw.receive(frame, 0.1)
        assert ev.kind == EV_DATA, ev.payload
        stored.extend(r.seq for r in ev.payload.readings)
        assert dev.handle(gw.ack(ev.payload.last_seq), 0).kind == D_ACK
    assert stored == [1, 2, 3, 4, 5]
    assert dev.acked == 5 and not dev.in_flight


def test_resend_after_reconnect_is_deduplicated():
    gw, dev = _pair()
    pending = [wire.Reading(seq, {"temperature": 21.0}) for seq in range(1, 4)]
    frame = dev.next_frame(pending)
    ev = gw.receive(frame, 0.1)
    assert [r.seq for r in ev.payload.readings] == [1, 2, 3]
    dev.connection_lost()  # the ack was lost with the connection
    gw2 = GatewaySession(rate=100, burst=100)
    gw2.receive(dev.auth_frame(), 0.0)
    dev.handle(gw2.accept("SENSOR-01", 3, 0), 0)  # gateway stored 1..3
    assert dev.acked == 3
    assert dev.next_frame(pending) is None  # nothing left to send


def test_parse_data_refuses_bad_frames():
    ok = wire.parse_data({"t": "data", "seq": 7, "r": [{"m": {"temperature": 21.5}, "up": 5, "q": "retried"}]})
    assert ok.readings[0].seq == 7 and ok.readings[0].quality == "retried"
    cases = [
        ({"t": "data", "r": [{"m": {"temperature": 1}}]}, wire.E_BAD_FRAME),
        ({"t": "data", "seq": True, "r": [{"m": {"temperature": 1}}]}, wire.E_BAD_FRAME),
        ({"t": "data", "seq": 1, "r": [{"m": {"temperature": True}}]}, wire.E_BAD_FRAME),
        ({"t": "data", "seq": 1, "r": [{"m": {"temperature": 500.0}}]}, wire.E_BAD_VALUE),
        ({"t": "data", "seq": 1, "r": [{"m": {"Temp": 1.0}}]}, wire.E_BAD_FRAME),
        ({"t": "data", "seq": 1, "r": []}, wire.E_BAD_FRAME),
        ({"t": "data", "seq": 0, "r": [{"m": {"temperature": 1}}]}, wire.E_BAD_VALUE),
        ({"t": "data", "seq": 1, "r": [{"m": {"temperature": 1}, "q": "great"}]}, wire.E_BAD_FRAME),
        ({"t": "data", "seq": 1, "r": [{"m": {"temperature": 1}}] * 101}, wire.E_TOO_LARGE),
    ]
    for msg, code in cases:
        err = raises(wire.ProtocolError, wire.parse_data, msg)
        assert err.code == code, (msg, err.code, code)


def test_decode_errors_and_non_finite():
    assert raises(wire.ProtocolError, wire.decode, "{not json").code == wire.E_BAD_JSON
    assert raises(wire.ProtocolError, wire.decode, b"\x00\x01").code == wire.E_BINARY
    assert raises(wire.ProtocolError, wire.decode, "[1, 2]").code == wire.E_BAD_FRAME
    # MicroPython's json refuses NaN; it parses 1e999 as inf, which the metric check refuses
    err = raises(wire.ProtocolError, wire.decode, '{"t": "data", "x": NaN}')
    assert err.code == wire.E_BAD_JSON
    msg = wire.decode('{"t": "data", "seq": 1, "r": [{"m": {"temperature": 1e999}}]}')
    assert raises(wire.ProtocolError, wire.parse_data, msg).code == wire.E_BAD_VALUE


def test_gateway_errors_close_codes():
    gw = GatewaySession()
    ev = gw.receive('{"t": "data", "seq": 1, "r": []}', 0.0)
    assert ev.kind == EV_CLOSE and ev.close_code == wire.CLOSE_AUTH_REQUIRED
    gw, _dev = _pair()
    ev = gw.receive('{"t": "data", "seq": 1, "device_id": "OTHER", "r": [{"m": {"temperature": 1}}]}', 0.0)
    assert ev.kind == EV_CLOSE and ev.close_code == wire.CLOSE_IDENTITY


def test_slow_down_rewinds_device():
    gw = GatewaySession(rate=1, burst=1, now=0.0)
    dev = DeviceSession("D1", token="t" * 10, max_batch=1)
    gw.receive(dev.auth_frame(), 0.0)
    dev.handle(gw.accept("D1", 0, 0), 0)
    pending = [wire.Reading(seq, {"temperature": 20.0}) for seq in (1, 2)]
    first = gw.receive(dev.next_frame(pending), 0.0)
    assert first.kind == EV_DATA
    second = gw.receive(dev.next_frame(pending), 0.0)
    assert second.kind == EV_THROTTLE
    d = dev.handle(second.reply, 0)
    assert d.kind == D_SLOW and dev.sent == 1 and d.wait_ms > 0 and dev.send_wait_ms(0) == d.wait_ms


def test_commands_and_results():
    gw, dev = _pair()
    dev.handlers["ping"] = lambda args: (True, "pong", {"up": 1})
    d = dev.handle(gw.command_frame("c-1", "ping"), 0)
    assert d.kind == D_COMMAND and d.name == "ping" and d.ok
    ev = gw.receive(d.reply, 0.0)
    assert ev.kind == EV_RESULT and ev.payload["ok"] is True and ev.payload["data"] == {"up": 1}
    d = dev.handle(gw.command_frame("c-2", "set_interval", {"seconds": -1}), 0)
    assert d.kind == D_COMMAND and not d.ok  # not registered here, and a bad argument anyway
    ev = gw.receive(dev.status_frame({"dropped": 3, "buffered": 0}), 0.0)
    assert ev.kind == EV_STATUS and ev.payload["dropped"] == 3


def test_backoff_draws_within_bounds_and_caps():
    values = [0.0, 0.999]
    backoff = Backoff(1000, 8000, rand=lambda: values[0])
    assert [backoff.next_ms() for _ in range(5)] == [500, 1000, 2000, 4000, 4000]
    values[0] = 0.999
    backoff.reset()
    assert backoff.next_ms() == 1000 and 7990 <= backoff.at_cap_ms() <= 8000


def test_bool_is_not_a_number():
    assert not wire.is_number(True)
    assert wire.is_number(1) and wire.is_number(1.5)
    assert not wire.is_finite(float("inf"))


run(globals())
