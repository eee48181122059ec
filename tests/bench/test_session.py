"""A benchmark device's protocol use (bench/session.py) and its hot path (bench/clientcost.py), no server."""

from __future__ import annotations

import json
from array import array

from websockets.frames import Frame, Opcode

from bench import clientcost, clients
from bench.clientcost import StandInTransport, welcomed_device
from bench.outbox import BenchOutbox
from bench.session import BenchSession


def _frame(msg: dict[str, object]) -> bytes:
    return json.dumps(msg).encode()


def _welcomed(last_seq: int = 0) -> BenchSession:
    session = BenchSession("dev-1", "ewt_" + "A" * 32, BenchOutbox(), window=2, max_batch=5)
    assert session.handle(_frame({"t": "welcome", "v": 1, "last_seq": last_seq})) == (True, None)
    return session


def test_auth_then_welcome_continues_the_stored_sequence() -> None:
    outbox = BenchOutbox()
    session = BenchSession("dev-1", "ewt_tok", outbox, window=2)
    assert json.loads(session.auth_frame() or "") == {"t": "auth", "device_id": "dev-1", "token": "ewt_tok"}
    assert not session.welcomed and not outbox.confirmed
    session.handle(_frame({"t": "welcome", "v": 1, "last_seq": 41}))
    assert session.welcomed and outbox.confirmed and outbox.next_seq == 42 and session.base_seq == 41
    assert outbox.add({"temperature": 20.0}, 1).seq == 42


def test_ack_moves_the_window_and_counts_this_runs_readings() -> None:
    session = _welcomed(10)
    outbox = session.outbox
    for _ in range(4):
        outbox.add({"temperature": 20.0}, 1_764_080_000_000)
    first = session.next_frame()
    assert first is not None and json.loads(first)["seq"] == 11
    assert session.next_frame() is None  # one frame carried all four; nothing left to send
    assert session.sent == 4 and session.acked == 0
    assert session.handle(_frame({"t": "ack", "seq": 13})) == (True, None)
    assert session.acked == 3 and [r.seq for r in outbox.readings] == [14]


def test_commands_are_answered_without_being_run() -> None:
    session = _welcomed()
    moved, reply = session.handle(_frame({"t": "cmd", "id": "c-7", "name": "reboot", "args": {}}))
    assert not moved
    assert json.loads(reply or "") == {"t": "result", "id": "c-7", "ok": True, "msg": "not run (load generator)"}


def test_slow_down_and_errors_are_counted_and_do_not_move_the_window() -> None:
    session = _welcomed()
    assert session.handle(_frame({"t": "slow", "rate": 1, "retry_ms": 60_000, "seq": 1})) == (False, None)
    assert session.handle(_frame({"t": "error", "code": "bad_value", "msg": "x", "seq": 1})) == (False, None)
    assert (session.slowed, session.rejected) == (1, 1)


def test_a_refused_frame_is_dropped_from_the_outbox_by_the_core() -> None:
    session = _welcomed()
    for _ in range(3):
        session.outbox.add({"temperature": 20.0}, 1)
    assert session.next_frame() is not None  # readings 1-3 in one frame
    session.outbox.add({"temperature": 20.0}, 1)
    assert session.handle(_frame({"t": "error", "code": "bad_value", "msg": "x", "seq": 2})) == (False, None)
    assert session.rejected == 1 and session.outbox.rejected == 3
    assert [r.seq for r in session.outbox.readings] == [4]
    assert json.loads(session.next_frame() or "")["seq"] == 4


def test_unreadable_frames_change_nothing() -> None:
    session = _welcomed()
    for junk in (b"not json", b"\xff\xfe", b"[1]", b'{"t":"nonsense"}', b'{"t":"ack","seq":"x"}'):
        assert session.handle(junk) == (False, None)
    assert session.acked == 0 and session.rejected == 0


def test_a_closed_device_stops_and_keeps_its_sent_count() -> None:
    session = _welcomed()
    session.outbox.add({"temperature": 20.0}, 1)
    assert session.next_frame() is not None
    session.closed(1012)  # where a field device would reconnect, a benchmark device stops
    assert session.next_frame() is None
    assert session.sent == 1 and session.acked == 0 and session.outbox.count == 1


def test_outbox_interface() -> None:
    clock = [1000.0]
    latencies: array[float] = array("d")
    box = BenchOutbox(latencies, clock_ms=lambda: clock[0])
    assert (box.first_seq, box.next_seq, box.confirmed, box.count) == (1, 1, False, 0)
    for ts in (900, 950, None, 990, 995):
        box.add({"x": 1.0}, ts)
    assert [r.seq for r in box.pending(0, 2)] == [1, 2]
    assert [r.seq for r in box.pending(2, 10)] == [3, 4, 5]
    assert box.pending(5, 10) == []
    assert box.ack(0) == 0
    assert box.ack(3) == 3 and box.first_seq == 4 and box.acked == 3
    assert list(latencies) == [100.0, 50.0]  # no sample for the reading without ts
    assert box.drop(5, 9) == 1 and box.rejected == 1 and [r.seq for r in box.readings] == [4]
    box.renumber(10)
    assert box.confirmed and box.first_seq == 14 and box.next_seq == 16
    assert [r.seq for r in box.pending(0, 10)] == [14]
    assert box.drop(1, 3) == 0 and box.ack(13) == 0
    confirmed = BenchOutbox(first_seq=7)
    assert confirmed.confirmed and confirmed.first_seq == 7 and confirmed.add({"x": 1.0}).seq == 7


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
    assert [r.seq for r in conn.outbox.readings] == [1, 2, 3, 4, 5, 6]
    conn.data_received(_ack(3))
    assert [r.seq for r in conn.outbox.readings] == [4, 5, 6]
    assert len(clients.ACK_LATENCIES) == 3 and all(lat >= 0 for lat in clients.ACK_LATENCIES)
    assert conn.sent == 6  # the freed slots sent 5 and 6 as one frame
    conn.data_received(_ack(6))
    assert conn.outbox.count == 0 and conn.acked == conn.generated == 6
    del clients.ACK_LATENCIES[:]


def test_device_conn_stops_on_a_server_close() -> None:
    transport = StandInTransport()
    conn = welcomed_device(transport)
    conn.data_received(Frame(Opcode.CLOSE, (1012).to_bytes(2, "big")).serialize(mask=False))
    assert conn.close_code == 1012 and not conn.open
    conn.connection_lost(None)
    assert conn.closed
    conn.tick(clients.now_ms(), 0)
    assert conn.sent == 0 and conn.outbox.count == 1  # kept, never sent: the device does not reconnect


def test_clientcost_measures_the_path() -> None:
    result = clientcost.measure(500, devices=7)
    assert result["rounds"] == 500 and result["devices"] == 7
    assert 100 <= result["bytes_per_round"] <= 200  # one masked data frame of ~115 bytes per round
    assert result["cpu_us"] > 0
    assert clientcost.main(["--rounds", "200", "--runs", "1", "--devices", "10"]) == 0


def test_outbox_batch_latency_runs_from_the_batch_completion() -> None:
    clock = [2000.0]
    latencies: array[float] = array("d")
    box = BenchOutbox(latencies, clock_ms=lambda: clock[0])
    for ts in (1000, 1100, 1200):
        box.add({"x": 1.0}, ts)
    box.batch_ready(2, 1500.0)  # readings 1-2 form a batch, due at 1500
    box.batch_ready(3, 1800.0)
    assert box.ack(1) == 1 and list(latencies) == [500.0]
    clock[0] = 2100.0
    assert box.ack(3) == 2 and list(latencies) == [500.0, 600.0, 300.0]
    assert not box.batches
    box.add({"x": 1.0}, 2000)  # a reading outside any batch: latency from its own ts
    assert box.ack(4) == 1 and latencies[-1] == 100.0


def test_device_conn_batches_readings_per_frame() -> None:
    transport = StandInTransport()
    conn = welcomed_device(transport, batch=10)
    writes = transport.writes
    del clients.ACK_LATENCIES[:]
    now = clients.now_ms()
    for i in range(9):
        conn.tick(now, i)
    assert transport.writes == writes and conn.sent == 0  # the batch is not complete yet
    conn.tick(now, 9)
    assert transport.writes - writes == 1 and conn.sent == 10  # one frame of 10 readings
    for i in range(10, 25):
        conn.tick(now, i)
    assert transport.writes - writes == 2 and conn.sent == 20  # 21-25 wait for their batch
    conn.data_received(_ack(20))
    assert conn.sent == 20 and [r.seq for r in conn.outbox.readings] == [21, 22, 23, 24, 25]
    assert len(clients.ACK_LATENCIES) == 20
    conn.send_rest(clients.now_ms())  # the run is over: the incomplete batch goes out
    assert transport.writes - writes == 3 and conn.sent == 25
    conn.send_rest(clients.now_ms())  # nothing left: no frame
    assert transport.writes - writes == 3
    conn.data_received(_ack(25))
    assert conn.acked == conn.generated == 25 and len(clients.ACK_LATENCIES) == 25
    del clients.ACK_LATENCIES[:]
