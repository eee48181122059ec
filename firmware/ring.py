"""Offline buffer: a bounded ring of fixed-size records in one flash file.

Survives reboot and power loss. Layout: two 48-byte header slots, then
``capacity`` records of REC bytes. A header write goes to the slot after the
current one with gen + 1 and a CRC, so a torn header write leaves the previous
header valid. A record is written (and flushed) before the header that counts
it; a torn record is caught by its own CRC and skipped. Records hold
consecutive seqs ending at next_seq - 1. When the ring is full the oldest
record is overwritten and counted in ``dropped`` (reported in status frames).
Readings are resent with their original seq and times.

The ring is the firmware's outbox for protocol.device.DeviceSession (next_seq,
first_seq, confirmed, pending, ack, drop, renumber, confirm). The header's
magic says whether a welcome ever confirmed the seq counter: a ring file
created by this firmware starts "EWRF" (fresh: the counter may have been lost
with a reflash) and becomes "EWR1". Readings the gateway refused are
overwritten in place by a tombstone record (length 0xFFFF) that is never sent.
"""

import json
import struct
from binascii import crc32

from errors import RingError
from micropython import const

from protocol import wire

MAGIC = b"EWR1"  # the seq counter was confirmed by a welcome
MAGIC_FRESH = b"EWRF"  # created by this firmware; no welcome yet
_HDR = "<4sIIIIQIIq"  # magic gen head count cap next_seq dropped sync_boot sync_offset
_HDR_LEN = const(44)  # struct.calcsize(_HDR); a CRC32 follows
_SLOT = const(48)
_DATA = const(96)  # records start after two header slots
_REC_HEAD = "<QHI"  # seq, payload length, crc32(seq+len+payload)
_REC_HEAD_LEN = const(14)
REC = const(128)  # bytes per record
MAX_PAYLOAD = REC - _REC_HEAD_LEN
_TOMB = const(0xFFFF)  # payload length of a tombstone: a reading the gateway refused
_SKIP = ()  # what _record returns for a tombstone


def _crc(buf, length):
    """CRC32 of a record: seq, length and payload (none for a tombstone)."""
    if length == _TOMB:
        length = 0
    return crc32(memoryview(buf)[_REC_HEAD_LEN:_REC_HEAD_LEN + length], crc32(memoryview(buf)[:10]))


class Ring:
    """The ring file at ``path`` holding up to ``capacity`` readings (file's own capacity wins)."""

    def __init__(self, path, capacity, boot=0):
        self.path = path
        self.boot = boot  # this boot's id (see read())
        self._hbuf = bytearray(_SLOT)
        self._rbuf = bytearray(REC)
        self.gen = 0
        self.head = 0
        self.count = 0
        self.capacity = capacity
        self.next_seq = 1
        self.dropped = 0
        self.sync_boot = 0
        self.sync_offset = 0
        self.corrupt = 0  # records skipped for a bad CRC (torn write at power loss)
        self._last_corrupt = 0
        self.rejected = 0  # readings the gateway refused, since boot
        self.confirmed = True  # the header magic: False until a welcome confirms the counter
        self.created = False  # True if the file was (re)created by this boot
        try:
            self._f = open(path, "r+b")
        except OSError:
            self._create()
            return
        if not self._load_header():
            self._f.close()
            self._create()

    # -- header
    def _create(self):
        try:
            self._f = open(self.path, "w+b")
            zero = bytearray(REC)
            self._f.write(zero[:_DATA])
            for _ in range(self.capacity):
                self._f.write(zero)
            self._f.flush()
        except OSError as err:
            raise RingError("cannot create ring file " + self.path + " (" + str(err)
                            + "); check free flash space")
        self.gen = 0
        self.created = True
        self.confirmed = False
        self._write_header()

    def _load_header(self):
        best = None
        for slot in (0, 1):
            self._f.seek(slot * _SLOT)
            if self._f.readinto(self._hbuf) != _SLOT:
                continue
            if struct.unpack_from("<I", self._hbuf, _HDR_LEN)[0] != crc32(memoryview(self._hbuf)[:_HDR_LEN]):
                continue
            fields = struct.unpack_from(_HDR, self._hbuf, 0)
            if fields[0] != MAGIC and fields[0] != MAGIC_FRESH:
                continue
            if best is None or fields[1] > best[1]:
                best = fields
        if best is None:
            return False
        (magic, self.gen, self.head, self.count, self.capacity, self.next_seq, self.dropped,
         self.sync_boot, self.sync_offset) = best
        self.confirmed = magic == MAGIC
        return True

    def _write_header(self):
        self.gen += 1
        struct.pack_into(_HDR, self._hbuf, 0, MAGIC if self.confirmed else MAGIC_FRESH, self.gen, self.head,
                         self.count, self.capacity,
                         self.next_seq, self.dropped, self.sync_boot, self.sync_offset)
        struct.pack_into("<I", self._hbuf, _HDR_LEN, crc32(memoryview(self._hbuf)[:_HDR_LEN]))
        try:
            self._f.seek((self.gen & 1) * _SLOT)
            self._f.write(self._hbuf)
            self._f.flush()
        except OSError as err:
            raise RingError("cannot write ring header (" + str(err) + ")")

    # -- records
    @property
    def first_seq(self):
        """Seq of the oldest record held (== next_seq when empty)."""
        return self.next_seq - self.count

    def append(self, metrics, boot, ts=None, up=None, quality=None):
        """Store one reading durably; return its seq. Drops (and counts) the oldest when full."""
        payload = json.dumps([boot, metrics, ts, up, quality]).encode()
        if len(payload) > MAX_PAYLOAD:
            raise RingError("reading needs " + str(len(payload)) + " bytes; a ring record holds "
                            + str(MAX_PAYLOAD) + " (fewer metrics or shorter names)")
        seq = self.next_seq
        buf = self._rbuf
        struct.pack_into(_REC_HEAD, buf, 0, seq, len(payload), 0)
        buf[_REC_HEAD_LEN:_REC_HEAD_LEN + len(payload)] = payload
        struct.pack_into("<I", buf, 10, _crc(buf, len(payload)))
        full = self.count >= self.capacity
        slot = self.head if full else (self.head + self.count) % self.capacity
        try:
            self._f.seek(_DATA + slot * REC)
            self._f.write(buf)
            self._f.flush()
        except OSError as err:
            raise RingError("cannot write ring record (" + str(err) + "); check free flash space")
        if full:
            self.head = (self.head + 1) % self.capacity
            self.dropped += 1
        else:
            self.count += 1
        self.next_seq = seq + 1
        self._write_header()
        return seq

    def _slot(self, seq):
        return (self.head + seq - self.first_seq) % self.capacity

    def _load(self, seq):
        """Read the record holding ``seq`` into _rbuf; its payload length, or -1 if torn/overwritten."""
        self._f.seek(_DATA + self._slot(seq) * REC)
        buf = self._rbuf
        if self._f.readinto(buf) != REC:
            return -1
        rseq, length, crc = struct.unpack_from(_REC_HEAD, buf, 0)
        if rseq != seq or (length > MAX_PAYLOAD and length != _TOMB):
            return -1
        if _crc(buf, length) != crc:
            return -1
        return length

    def _record(self, seq):
        """Decoded payload list of the record holding ``seq``; _SKIP for a tombstone; None if torn."""
        length = self._load(seq)
        if length < 0:
            return None
        if length == _TOMB:
            return _SKIP
        payload = memoryview(self._rbuf)[_REC_HEAD_LEN:_REC_HEAD_LEN + length]
        try:
            return json.loads(bytes(payload))
        except ValueError:
            return None

    def read(self, from_seq, limit, boot):
        """Up to ``limit`` wire.Readings with seq >= from_seq, oldest first.

        ``boot`` is this boot's id: a reading of a boot whose clock offset is
        known gets ts = offset + up; a reading of another boot without ts loses
        its uptime (it cannot be related to this boot's frame uptime).
        """
        out = []
        seq = from_seq if from_seq > self.first_seq else self.first_seq
        while seq < self.next_seq and len(out) < limit:
            rec = self._record(seq)
            if rec is _SKIP:
                pass
            elif rec is None:
                if seq > self._last_corrupt:
                    self.corrupt += 1
                    self._last_corrupt = seq
            else:
                rboot, metrics, ts, up, quality = rec
                if ts is None and up is not None:
                    if self.sync_boot and rboot == self.sync_boot:
                        ts = self.sync_offset + up
                        up = None
                    elif rboot != boot:
                        up = None
                out.append(wire.Reading(seq, metrics, ts, up, quality))
            seq += 1
        return out

    def ack(self, seq):
        """Forget every record with seq <= ``seq`` (the gateway stored them)."""
        if seq < self.first_seq or self.count == 0:
            return 0
        n = seq - self.first_seq + 1
        if n > self.count:
            n = self.count
        self.head = (self.head + n) % self.capacity
        self.count -= n
        self._write_header()
        return n

    # -- the outbox interface of protocol.device.DeviceSession
    def pending(self, after, limit):
        """Up to ``limit`` readings with seq > ``after`` (tombstones and torn records skipped)."""
        return self.read(after + 1, limit, self.boot)

    def drop(self, first, last):
        """The gateway refused readings first..last: tombstone them (never sent again); how many."""
        low = first if first > self.first_seq else self.first_seq
        high = last if last < self.next_seq - 1 else self.next_seq - 1
        buf = self._rbuf
        n = 0
        seq = low
        while seq <= high:
            struct.pack_into(_REC_HEAD, buf, 0, seq, _TOMB, 0)
            struct.pack_into("<I", buf, 10, _crc(buf, _TOMB))
            try:
                self._f.seek(_DATA + self._slot(seq) * REC)
                self._f.write(memoryview(buf)[:_REC_HEAD_LEN])
            except OSError as err:
                raise RingError("cannot write ring record (" + str(err) + ")")
            n += 1
            seq += 1
        if n:
            self._f.flush()
            self.rejected += n
            skip = 0  # tombstones at the head: let them go like acked records
            while skip < self.count and self._load(self.first_seq + skip) == _TOMB:
                skip += 1
            if skip:
                self.ack(self.first_seq + skip - 1)
        return n

    def renumber(self, delta):
        """Add ``delta`` to every held seq and to the counter (the counter was lost); confirm it."""
        self.confirmed = True
        self._shift(delta)

    def confirm(self):
        """A welcome confirmed the seq counter."""
        if not self.confirmed:
            self.confirmed = True
            self._write_header()

    def _shift(self, delta):
        first = self.first_seq
        buf = self._rbuf
        for i in range(self.count):
            length = self._load(first + i)
            if length < 0:
                continue  # torn: stays unreadable under its new seq too
            struct.pack_into("<Q", buf, 0, first + i + delta)
            struct.pack_into("<I", buf, 10, _crc(buf, length))
            self._f.seek(_DATA + self._slot(first + i) * REC)
            self._f.write(buf)
        self._f.flush()
        self.next_seq += delta
        self._write_header()

    def set_sync(self, boot, offset):
        """Remember boot ``boot``'s clock offset (unix_ms - up_ms) to timestamp its buffered readings."""
        if self.sync_boot != boot or self.sync_offset != offset:
            self.sync_boot = boot
            self.sync_offset = offset
            self._write_header()

    def close(self):
        self._f.close()
