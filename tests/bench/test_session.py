"""A benchmark device's protocol use (bench/session.py) and its hot path (bench/clientcost.py), no server."""

from __future__ import annotations

import json

from websockets.frames import Frame, Opcode

from bench import clientcost, clients
from bench.clientcost import StandInTransport, welcomed_device
from bench.session import BenchSession
from protocol import wire


def _frame(msg: dict[str, object]) -> bytes:
    return json.dumps(msg).encode()


def _welcomed(last_seq: int = 0) -> BenchSession:
    session = BenchSession("dev-1", "ewt_" + "A" * 32, window=2, max_batch=5)
    assert session.receive(_frame({"t": "welcome", "v": 1, "last_seq": last_seq})) == (True, None)
    return session


def test_auth_then_welcome_continues_the_stored_sequence() -> None:
    session = BenchSession("dev-1", "ewt_tok", window=2)
    assert json.loads(session.auth_frame() or "") == {"t": "auth", "device_id": "dev-1", "token": "ewt_tok"}
    assert not session.welcomed
    session.receive(_frame({"t": "welcome", "v": 1, "last_seq": 41}))
    assert session.welcomed and session.base_seq == 41 and session.acked == 0
    session.receive(_frame({"t": "welcome", "v": 1, "last_seq": 45}))  # a later welcome moves nothing back
    assert session.base_seq == 41 and session.acked == 4


def test_ack_moves_the_window_and_counts_this_runs_readings() -> None:
    session = _welcomed(10)
    pending = [wire.Reading(seq, {"temperature": 20.0}, 1_764_080_000_000, None, "ok")
               for seq in range(11, 15)]
    first = session.next_frame(pending)
    assert first is not None and json.loads(first)["seq"] == 11
    assert session.next_frame(pending) is None  # one frame carried all four; nothing left to send
    assert session.sent == 4 and session.acked == 0
    assert session.receive(_frame({"t": "ack", "seq": 14})) == (True, None)
    assert session.acked == 4 and session.acked_through == 14


def test_commands_are_answered_ok_and_not_run() -> None:
    session = _welcomed()
    moved, reply = session.receive(_frame({"t": "cmd", "id": "c-7", "name": "reboot", "args": {}}))
    assert not moved
    assert json.loads(reply or "") == {"t": "result", "id": "c-7", "ok": True, "msg": "ok"}


def test_slow_down_and_errors_are_counted_and_do_not_move_the_window() -> None:
    session = _welcomed()
    assert session.receive(_frame({"t": "slow", "rate": 1, "retry_ms": 60_000, "seq": 1})) == (False, None)
    assert session.receive(_frame({"t": "error", "code": "bad_value", "msg": "x", "seq": 1})) == (False, None)
    assert (session.slowed, session.rejected) == (1, 1)


def test_unreadable_frames_change_nothing() -> None:
    session = _welcomed()
    for junk in (b"not json", b"\xff\xfe", b"[1]", b'{"t":"nonsense"}', b'{"t":"ack","seq":"x"}'):
        assert session.receive(junk) == (False, None)
    assert session.acked == 0 and session.rejected == 0


def test_a_closed_device_stops_and_keeps_its_sent_count() -> None:
    session = _welcomed()
    pending = [wire.Reading(1, {"temperature": 20.0}, 1, None, "ok")]
    assert session.next_frame(pending) is not None
    session.closed(1012)  # where a field device would reconnect, a benchmark device stops
    assert session.next_frame(pending) is None
    assert session.sent == 1 and session.acked == 0


def _ack(seq: int) -> bytes:
    return Frame(Opcode.TEXT, _frame({"t": "ack", "seq": seq})).serialize(mask=False)


def test_device_conn_keeps_readings_until_acked_and_records_ack_latency() -> None:
    transport = StandInTransport()
    conn = welcomed_device(transport)
    writes = transport.writes
    del clients.ACK_LATENCIES[:]
    now = clients.now_ms()
    for i in range(6):
        conn.tick(now, i)
    # window of 4 frames: readings 1-4 went one per frame, 5-6 wait for an ack
    assert transport.writes - writes == 4 and conn.sent == 4
    assert [r.seq for r in conn.pending] == [1, 2, 3, 4, 5, 6]
    conn.data_received(_ack(3))
    assert [r.seq for r in conn.pending] == [4, 5, 6]
    assert len(clients.ACK_LATENCIES) == 3 and all(lat >= 0 for lat in clients.ACK_LATENCIES)
    assert conn.sent == 6  # the freed slots sent 5 and 6 as one frame
    conn.data_received(_ack(6))
    assert conn.pending == [] and conn.acked == conn.generated == 6
    del clients.ACK_LATENCIES[:]


def test_device_conn_stops_on_a_server_close() -> None:
    transport = StandInTransport()
    conn = welcomed_device(transport)
    conn.data_received(Frame(Opcode.CLOSE, (1012).to_bytes(2, "big")).serialize(mask=False))
    assert conn.close_code == 1012 and not conn.open
    conn.connection_lost(None)
    assert conn.closed
    conn.tick(clients.now_ms(), 0)
    assert conn.sent == 0 and len(conn.pending) == 1  # kept, never sent: the device does not reconnect


def test_clientcost_measures_the_path() -> None:
    result = clientcost.measure(500, devices=7)
    assert result["rounds"] == 500 and result["devices"] == 7
    assert 100 <= result["bytes_per_round"] <= 200  # one masked data frame of ~115 bytes per round
    assert result["cpu_us"] > 0
    assert clientcost.main(["--rounds", "200", "--runs", "1", "--devices", "10"]) == 0
