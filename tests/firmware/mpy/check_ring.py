"""firmware/ring.py: the flash ring file, on the interpreter's real file system."""

import struct

import ring
from errors import RingError
from mpytest import raises, run, tmp_file

BOOT = 0x1234ABCD


def _fill(r, n, start=0):
    return [r.append({"temperature": 20.0 + (start + i) / 10}, BOOT, up=1000 * (start + i), quality="ok")
            for i in range(n)]


def test_append_read_ack_and_reopen():
    path = tmp_file("ring1.bin")
    r = ring.Ring(path, 8)
    assert _fill(r, 5) == [1, 2, 3, 4, 5]
    got = r.read(1, 10, BOOT)
    assert [x.seq for x in got] == [1, 2, 3, 4, 5]
    assert got[2].metrics == {"temperature": 20.2} and got[2].up == 2000 and got[2].quality == "ok"
    assert r.ack(3) == 3 and r.count == 2 and r.first_seq == 4
    r.close()
    r = ring.Ring(path, 8)  # reboot: same records, same counter
    assert r.count == 2 and r.next_seq == 6 and not r.created
    assert [x.seq for x in r.read(0, 10, BOOT)] == [4, 5]
    assert r.append({"temperature": 1.0}, BOOT) == 6


def test_full_ring_drops_oldest_and_counts():
    r = ring.Ring(tmp_file("ring2.bin"), 8)
    _fill(r, 11)
    assert r.count == 8 and r.dropped == 3 and r.first_seq == 4
    assert [x.seq for x in r.read(0, 20, BOOT)] == list(range(4, 12))
    r.close()
    r = ring.Ring(r.path, 8)
    assert r.dropped == 3 and r.count == 8


def test_torn_header_falls_back_to_previous():
    path = tmp_file("ring3.bin")
    r = ring.Ring(path, 8)
    _fill(r, 3)
    gen = r.gen
    r.close()
    # corrupt the newest header slot, as a power cut in the middle of its write would
    with open(path, "r+b") as f:
        f.seek((gen & 1) * 48 + 8)
        f.write(b"\xff\xff\xff\xff")
    r = ring.Ring(path, 8)
    assert r.gen == gen - 1
    assert r.count == 2 and r.next_seq == 3  # the last append is lost, nothing before it
    assert [x.seq for x in r.read(0, 10, BOOT)] == [1, 2]


def test_torn_record_is_skipped_not_sent():
    path = tmp_file("ring4.bin")
    r = ring.Ring(path, 8)
    _fill(r, 4)
    r.close()
    with open(path, "r+b") as f:  # garble record #2's payload
        f.seek(96 + 1 * ring.REC + 20)
        f.write(b"garbage")
    r = ring.Ring(path, 8)
    assert [x.seq for x in r.read(0, 10, BOOT)] == [1, 3, 4]
    assert r.corrupt == 1


def test_sync_offset_timestamps_this_boots_readings():
    r = ring.Ring(tmp_file("ring5.bin"), 8)
    r.append({"temperature": 20.0}, BOOT, up=5000)
    r.append({"temperature": 20.0}, 0x0BAD, up=7000)  # another boot, never synced
    r.append({"temperature": 20.0}, BOOT, ts=1764080009000)
    r.set_sync(BOOT, 1764080000000 - 10000)  # synced at up=10000 -> unix 1764080000000
    a, b, c = r.read(0, 10, BOOT)
    assert a.ts == 1764080000000 - 10000 + 5000 and a.up is None
    assert b.ts is None and b.up is None  # cannot be related to this boot's frame uptime
    assert c.ts == 1764080009000


def test_renumber_after_lost_counter():
    path = tmp_file("ring6.bin")
    r = ring.Ring(path, 8)
    _fill(r, 3)
    assert r.created and not r.confirmed  # a new file: the counter may have been lost
    r.close()
    r = ring.Ring(path, 8)
    assert not r.confirmed  # kept across a reboot (the header magic)
    r.renumber(1041)  # the gateway already holds 1..1041 from a past life
    assert r.confirmed and [x.seq for x in r.pending(0, 10)] == [1042, 1043, 1044]
    assert r.append({"temperature": 3.0}, BOOT) == 1045
    assert r.ack(1043) == 2 and [x.seq for x in r.pending(0, 10)] == [1044, 1045]
    r.close()
    r = ring.Ring(path, 8)
    assert r.confirmed and r.next_seq == 1046


def test_drop_tombstones_refused_readings():
    path = tmp_file("ring8.bin")
    r = ring.Ring(path, 8, BOOT)
    _fill(r, 6)
    assert r.drop(3, 4) == 2 and r.rejected == 2
    assert [x.seq for x in r.pending(0, 10)] == [1, 2, 5, 6]
    assert r.corrupt == 0  # a tombstone is not a torn record
    assert r.drop(1, 2) == 2 and r.first_seq == 5 and r.count == 2  # tombstones at the head are let go
    r.renumber(10)  # tombstones keep their place under new seqs
    assert [x.seq for x in r.pending(0, 10)] == [15, 16]
    r.close()
    r = ring.Ring(path, 8, BOOT)
    assert [x.seq for x in r.pending(0, 10)] == [15, 16] and r.corrupt == 0


def test_oversized_reading_is_refused():
    r = ring.Ring(tmp_file("ring7.bin"), 8)
    metrics = {}
    for i in range(12):
        metrics["metric_number_" + str(i)] = 1.0
    raises(RingError, r.append, metrics, BOOT)
    assert r.count == 0 and r.next_seq == 1


def test_header_layout_is_stable():
    # _HDR_LEN (44) and _REC_HEAD_LEN (14) are const()s MicroPython folds away
    assert struct.calcsize(ring._HDR) == 44
    assert struct.calcsize(ring._REC_HEAD) == 14 == ring.REC - ring.MAX_PAYLOAD


run(globals())
