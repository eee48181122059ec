"""Edgewire protocol v1, the binary encoding (subprotocol ``edgewire.v1.cbor``), the device's half:
binary data frames, built with no I/O. protocol/cbor_decode.py is the gateway's half.

A binary data frame is one CBOR (RFC 8949) map in the subset docs/protocol.md section 1.1 names,
columnar: per column a header and one entry per reading, the first present entry absolute and each
later one a delta. Metric values are scaled integers (a per-column number of decimal places), times
are integers: no floats on the wire, which suits the ESP32 port (single precision only).

``encode_data`` builds a frame straight from the readings, without a dict per reading; it returns
None when a value cannot travel exactly as a scaled integer (the driver then sends that frame as
JSON, which is always allowed). On the board, so kept small; MicroPython-safe like wire.py; the
types live in cbor.pyi.
"""

from binascii import unhexlify

from protocol.wire import (
    MAX_SEQ,
    METRIC_IDS,
    QUALITY_OK,
    QUALITY_RETRIED,
    QUALITY_STALE,
    QUALITY_SUSPECT,
)

MAX_PLACES = 9  # decimal places of a scaled metric column
INT_COLUMN = -1  # column header: the values are integers, sent as they are
# "q" entries: 0 none, 1 ok, 2 retried, 3 suspect, 4 stale
QUALITY_CODES = (None, QUALITY_OK, QUALITY_RETRIED, QUALITY_SUSPECT, QUALITY_STALE)

_NULL = 0xF6
_HEX = "0123456789abcdef"
_TS = 0  # time columns: "ts", "ru" (the readings' up) or "tu" (their ts - up)
_UP = 1
_OFFSET = 2
_HIGH = 4e18  # |value| and |scaled value| below this, so that every delta fits CBOR's 64 bits (floats:
_LOW = -4e18  # comparing with them allocates nothing on MicroPython, unlike a big int)
_SCALE = (1, 10, 100, 1000, 10000, 100000, 1000000, 10000000, 100000000, 1000000000)


# ---------------------------------------------------------------- writing

def _head(buf, major, value):
    """The initial byte(s) of an item: ``major`` (already shifted: 0x00, 0x20 ... 0xE0) and its argument."""
    if value < 24:
        buf.append(major | value)
    elif value < 0x100:
        buf.append(major | 24)
        buf.append(value)
    elif value < 0x10000:
        buf.append(major | 25)
        buf.append(value >> 8)
        buf.append(value & 255)
    elif value < 0x100000000:
        buf.append(major | 26)
        buf.extend(value.to_bytes(4, "big"))
    else:
        buf.append(major | 27)
        buf.extend(value.to_bytes(8, "big"))


def _int(buf, value):
    if value >= 0:
        _head(buf, 0x00, value)
    else:
        _head(buf, 0x20, -1 - value)


def _text(buf, text):
    data = text.encode()
    _head(buf, 0x60, len(data))
    buf.extend(data)


def _column(readings, name):
    """(header, one scaled integer or None per reading) for metric ``name``: integers as they are
    (INT_COLUMN), floats times 10^places for the fewest places 0..MAX_PLACES that give every value
    back exactly; None when there is none (a bool, a non-finite or huge number, ints mixed with
    floats, too many decimals). One multiplication and one division per value, in the interpreter's
    own float precision (single on the ESP32), so the board's values come back as they are."""
    values = []
    kind = None
    for reading in readings:
        value = reading.metrics.get(name)
        values.append(value)
        if value is None:
            continue
        this = type(value)
        if (this is not int and this is not float) or (kind is not None and this is not kind):
            return None
        if not _LOW < value < _HIGH:  # also NaN, for which every comparison is False
            return None
        kind = this
    if kind is int:
        return INT_COLUMN, values
    places = 0
    scale = 1
    index = 0
    count = len(values)
    while index < count:
        value = readings[index].metrics.get(name)
        if value is not None:
            scaled = round(value * scale)
            if scaled / scale != value or not _LOW < scaled < _HIGH:
                if places == MAX_PLACES:
                    return None
                places += 1
                scale = _SCALE[places]
                index = 0  # the earlier values again, at the finer scale
                continue
            values[index] = scaled
        index += 1
    return places, values


def _time(reading, kind):
    if kind == _TS:
        return reading.ts
    if kind == _UP or reading.up is None:
        return reading.up
    return reading.ts - reading.up  # _OFFSET: the agent's ts and up move together


def _time_column(buf, readings, kind):
    """[step, entries]: each present time is the previous present one + step + its entry."""
    first = prev = None
    step = 0
    for reading in readings:
        value = _time(reading, kind)
        if value is not None:
            if first is None:
                first = value
            else:
                step = value - first
                break
    _head(buf, 0x80, len(readings) + 1)
    _int(buf, step)
    for reading in readings:
        value = _time(reading, kind)
        if value is None:
            buf.append(_NULL)
        else:
            _int(buf, value if prev is None else value - prev - step)
            prev = value


def _column_order(readings):
    """The metric columns in an order that keeps every reading's own order of its metrics (so the
    gateway stores the same JSON text), or None when greedy placement finds none."""
    names = []
    for reading in readings:
        at = -1
        for name in reading.metrics:
            if name in names:
                index = names.index(name)
            else:  # before the next metric of this reading already placed, else last
                index = len(names)
                seen = False
                for other in reading.metrics:
                    if seen and other in names:
                        index = names.index(other)
                        break
                    seen = seen or other == name
                names.insert(index, name)
            if index <= at:
                return None  # two readings list two metrics in opposite orders
            at = index
    return names


def _boot(buf, boot):
    """The boot id: lowercase hex of even length as a byte string (half the bytes), else as text."""
    if len(boot) % 2 == 0 and len(boot) <= 64:
        for ch in boot:
            if ch not in _HEX:
                break
        else:
            data = unhexlify(boot)
            _head(buf, 0x40, len(data))
            buf.extend(data)
            return
    _text(buf, boot)


def _time_ok(value):
    return value is None or (type(value) is int and 0 <= value <= MAX_SEQ)


def _utf8_ok(text):
    try:
        text.encode()
    except UnicodeError:  # a lone surrogate (CPython only): JSON escapes it and the gateway refuses it
        return False
    return True


def encode_data(seq, readings, boot=None, up=None):
    """The binary data frame (bytearray) for ``readings`` (consecutive seqs from ``seq``), or None when
    a value cannot be sent exactly as a scaled integer: the caller then sends the frame as JSON."""
    if not (_time_ok(seq) and _time_ok(up)) or (boot is not None and (type(boot) is not str or not _utf8_ok(boot))):
        return None  # out of the protocol's range: JSON carries it, the gateway refuses it the same way
    names = _column_order(readings)
    if names is None:
        return None
    columns = []
    for name in names:
        if name not in METRIC_IDS and not _utf8_ok(name):
            return None
        column = _column(readings, name)
        if column is None:
            return None
        columns.append((name, column[0], column[1]))
    has_ts = has_up = False
    offset = True  # every reading with an up has a ts: send ts - up ("tu"), near-constant, not up
    quality = -2  # the one quality code of every reading, or -1 when they differ
    for reading in readings:
        if not (_time_ok(reading.ts) and _time_ok(reading.up)) or reading.quality not in QUALITY_CODES:
            return None  # the gateway refuses it: JSON carries it as it is and gets the same answer
        if reading.ts is not None:
            has_ts = True
        if reading.up is not None:
            has_up = True
            if reading.ts is None:
                offset = False
        code = QUALITY_CODES.index(reading.quality)
        if quality == -2:
            quality = code
        elif code != quality:
            quality = -1
    buf = bytearray()
    _head(buf, 0xA0, 2 + (boot is not None) + (up is not None) + has_ts + has_up + (quality != 0))
    buf.extend(b"\x63seq")  # no "t": a binary frame is a data frame
    _int(buf, seq)
    if boot is not None:
        buf.extend(b"\x64boot")
        _boot(buf, boot)
    if up is not None:
        buf.extend(b"\x62up")
        _int(buf, up)
    if has_ts:
        buf.extend(b"\x62ts")
        _time_column(buf, readings, _TS)
    if has_up:
        buf.extend(b"\x62tu" if offset else b"\x62ru")
        _time_column(buf, readings, _OFFSET if offset else _UP)
    buf.extend(b"\x61m")
    _head(buf, 0xA0, len(names))
    for name, places, values in columns:
        if name in METRIC_IDS:
            _int(buf, METRIC_IDS.index(name))  # one byte (ids below 24)
        else:
            _text(buf, name)
        _head(buf, 0x80, len(values) + 1)
        _int(buf, places)
        prev = None
        for value in values:
            if value is None:
                buf.append(_NULL)
            else:
                _int(buf, value if prev is None else value - prev)
                prev = value
    if quality > 0:
        buf.extend(b"\x61q")
        _head(buf, 0x00, quality)
    elif quality < 0:
        buf.extend(b"\x61q")
        _head(buf, 0x80, len(readings))
        for reading in readings:
            buf.append(QUALITY_CODES.index(reading.quality))
    return buf
