"""Edgewire protocol v1, the binary encoding (subprotocol ``edgewire.v1.cbor``): no I/O.

A small CBOR (RFC 8949) codec for the subset docs/protocol.md section 1.1 names (integers,
text strings, arrays, maps with text keys, false/true/null; definite lengths only) and the
columnar layout of a binary data frame: per column a header and one entry per reading, the
first present entry absolute and each later one a delta. Metric values are scaled integers
(a per-column number of decimal places), times are integers: no floats on the wire, which
suits the ESP32 port (single precision only).

``encode_data`` (devices) builds a frame straight from the readings, without a dict per
reading; it returns None when a value cannot travel exactly as a scaled integer (the driver
then sends that frame as JSON, which is always allowed). ``decode_frame`` and ``rows``
(gateway) turn a binary frame back into the JSON message shape, so that wire.parse_data
applies the same validation and the same error codes to both encodings. MicroPython-safe
like wire.py; the types live in cbor.pyi.
"""

from protocol.wire import (
    E_BAD_CBOR,
    E_BAD_FRAME,
    E_TOO_LARGE,
    MAX_BATCH,
    MAX_FRAME_BYTES,
    MAX_SEQ,
    QUALITY_OK,
    QUALITY_RETRIED,
    QUALITY_STALE,
    QUALITY_SUSPECT,
    T_DATA,
    ProtocolError,
    batch_too_large,
)

MAX_DEPTH = 8  # nesting of arrays and maps (a data frame needs 3)
MAX_PLACES = 9  # decimal places of a scaled metric column
INT_COLUMN = -1  # column header: the values are integers, sent as they are
# "q" entries: 0 none, 1 ok, 2 retried, 3 suspect, 4 stale
QUALITY_CODES = (None, QUALITY_OK, QUALITY_RETRIED, QUALITY_SUSPECT, QUALITY_STALE)
COLUMN_KEYS = ("m", "ts", "ru", "q")  # keys of a binary data frame that replace JSON's "r"

_NULL = 0xF6
_BIG = 1 << 64
_LIMIT = 1 << 62  # |value| and |scaled value| below this, so that every delta fits CBOR's 64 bits
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


def _put(buf, value, depth):
    kind = type(value)
    if value is None:
        buf.append(_NULL)
    elif kind is bool:
        buf.append(0xF5 if value else 0xF4)
    elif kind is int:
        if not -_BIG <= value < _BIG:
            raise ValueError("integer outside the 64-bit range of CBOR")
        _int(buf, value)
    elif kind is str:
        _text(buf, value)
    elif depth <= 0:
        raise ValueError("nested deeper than " + str(MAX_DEPTH) + " levels")
    elif kind is list or kind is tuple:
        _head(buf, 0x80, len(value))
        for item in value:
            _put(buf, item, depth - 1)
    elif kind is dict:
        _head(buf, 0xA0, len(value))
        for key in value:
            if type(key) is not str:
                raise ValueError("map keys must be strings")
            _text(buf, key)
            _put(buf, value[key], depth - 1)
    else:
        raise ValueError("cannot encode " + kind.__name__ + " (integers, strings, lists, maps, bools, None)")


def dumps(value):
    """Encode ``value`` (int, str, list/tuple, dict with str keys, bool, None) as CBOR bytes.

    Raises ValueError for anything else (floats included: the encoding sends scaled integers)."""
    buf = bytearray()
    _put(buf, value, MAX_DEPTH)
    return bytes(buf)


def _places(readings, name):
    """The column header for metric ``name``: INT_COLUMN, the decimal places 0..MAX_PLACES that carry
    every value exactly, or None (a bool, a non-finite or huge number, ints mixed with floats)."""
    kind = None
    for reading in readings:
        value = reading.metrics.get(name)
        if value is None:
            continue
        this = type(value)
        if (this is not int and this is not float) or (kind is not None and this is not kind):
            return None
        if not -_LIMIT < value < _LIMIT:  # also NaN, for which every comparison is False
            return None
        kind = this
    if kind is int:
        return INT_COLUMN
    for places in range(MAX_PLACES + 1):
        scale = _SCALE[places]
        for reading in readings:
            value = reading.metrics.get(name)
            if value is not None:
                scaled = round(value * scale)
                if scaled / scale != value or not -_LIMIT < scaled < _LIMIT:
                    break
        else:
            return places
    return None


def _time_column(buf, readings, field):
    """[step, entries]: each present time is the previous present one + step + its entry."""
    first = prev = None
    step = 0
    for reading in readings:
        value = getattr(reading, field)
        if value is not None:
            if first is None:
                first = value
            else:
                step = value - first
                break
    _head(buf, 0x80, len(readings) + 1)
    _int(buf, step)
    for reading in readings:
        value = getattr(reading, field)
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


def _time_ok(value):
    return value is None or (type(value) is int and 0 <= value <= MAX_SEQ)


def encode_data(seq, readings, boot=None, up=None):
    """The binary data frame (bytearray) for ``readings`` (consecutive seqs from ``seq``), or None when
    a value cannot be sent exactly as a scaled integer: the caller then sends the frame as JSON."""
    names = _column_order(readings)
    if names is None:
        return None
    headers = []
    for name in names:
        places = _places(readings, name)
        if places is None:
            return None
        headers.append(places)
    has_ts = has_up = False
    quality = -2  # the one quality code of every reading, or -1 when they differ
    for reading in readings:
        if not (_time_ok(reading.ts) and _time_ok(reading.up)) or reading.quality not in QUALITY_CODES:
            return None  # the gateway refuses it: JSON carries it as it is and gets the same answer
        if reading.ts is not None:
            has_ts = True
        if reading.up is not None:
            has_up = True
        code = QUALITY_CODES.index(reading.quality)
        if quality == -2:
            quality = code
        elif code != quality:
            quality = -1
    buf = bytearray()
    _head(buf, 0xA0, 3 + (boot is not None) + (up is not None) + has_ts + has_up + (quality != 0))
    buf.extend(b"\x61t\x64data\x63seq")
    _int(buf, seq)
    if boot is not None:
        buf.extend(b"\x64boot")
        _text(buf, boot)
    if up is not None:
        buf.extend(b"\x62up")
        _int(buf, up)
    if has_ts:
        buf.extend(b"\x62ts")
        _time_column(buf, readings, "ts")
    if has_up:
        buf.extend(b"\x62ru")
        _time_column(buf, readings, "up")
    buf.extend(b"\x61m")
    _head(buf, 0xA0, len(names))
    index = 0
    for name in names:
        places = headers[index]
        index += 1
        _text(buf, name)
        _head(buf, 0x80, len(readings) + 1)
        _int(buf, places)
        scale = _SCALE[places] if places >= 0 else 1
        prev = None
        for reading in readings:
            value = reading.metrics.get(name)
            if value is None:
                buf.append(_NULL)
                continue
            if places >= 0:
                value = round(value * scale)
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


# ---------------------------------------------------------------- reading

def _bad(message):
    return ProtocolError(E_BAD_CBOR, "frame is not valid edgewire CBOR: " + message)


def _item(data, pos, depth):
    """Decode the item at ``pos``: (value, position after it). IndexError when the data ends early."""
    initial = data[pos]
    pos += 1
    major = initial >> 5
    info = initial & 31
    if info < 24:
        arg = info
    elif info == 24:
        arg = data[pos]
        pos += 1
    elif info == 25:
        arg = (data[pos] << 8) | data[pos + 1]
        pos += 2
    elif info == 26 or info == 27:
        size = 4 if info == 26 else 8
        if pos + size > len(data):
            raise IndexError
        arg = int.from_bytes(data[pos:pos + size], "big")
        pos += size
    elif info == 31:
        raise _bad("indefinite lengths are not used; give every string, array and map its length")
    else:
        raise _bad("reserved additional information " + str(info) + " at byte " + str(pos - 1))
    if major == 0:
        return arg, pos
    if major == 1:
        return -1 - arg, pos
    if major == 3:
        end = pos + arg
        if end > len(data):
            raise IndexError
        try:
            return str(data[pos:end], "utf-8"), end
        except UnicodeError:
            raise _bad("text string at byte " + str(pos) + " is not UTF-8")
    if major == 4 or major == 5:
        if depth <= 0:
            raise _bad("nested deeper than " + str(MAX_DEPTH) + " levels")
        if arg > len(data) - pos:  # every item takes at least one byte
            raise IndexError
        if major == 4:
            return _array(data, pos, arg, depth - 1)
        return _map(data, pos, arg, depth - 1)
    if major == 7:
        if info == 20:
            return False, pos
        if info == 21:
            return True, pos
        if info == 22:
            return None, pos
        if info >= 25:
            raise _bad("floats are not used: metric values are scaled integers (docs/protocol.md 1.1)")
        raise _bad("simple value " + str(arg) + " is not used (only false, true and null)")
    raise _bad(("byte strings" if major == 2 else "tags") + " are not used (docs/protocol.md 1.1)")


def _array(data, pos, count, depth):
    items = []
    append = items.append
    while count:
        count -= 1
        initial = data[pos]
        if initial < 24:  # the common column entry: a small unsigned integer
            append(initial)
            pos += 1
        elif 0x20 <= initial < 0x38:
            append(0x1F - initial)
            pos += 1
        elif initial == _NULL:
            append(None)
            pos += 1
        else:
            value, pos = _item(data, pos, depth)
            append(value)
    return items, pos


def _map(data, pos, count, depth):
    out = {}
    while count:
        count -= 1
        key, pos = _item(data, pos, depth)
        if type(key) is not str:
            raise _bad("map keys must be text strings")
        if key in out:
            raise _bad("map key '" + key[:32] + "' appears twice")
        out[key], pos = _item(data, pos, depth)
    return out, pos


def loads(data):
    """Decode one CBOR item of the subset; raises ProtocolError(E_BAD_CBOR) only."""
    if type(data) is not bytes:
        data = bytes(data)
    try:
        value, pos = _item(data, 0, MAX_DEPTH)
    except IndexError:
        raise _bad("it ends in the middle of an item (" + str(len(data)) + " bytes)")
    if pos != len(data):
        raise _bad(str(len(data) - pos) + " bytes after the end of the item")
    return value


def decode_frame(data, max_bytes=MAX_FRAME_BYTES):
    """A binary frame on an ``edgewire.v1.cbor`` connection: the message map (a data frame, still
    columnar: see ``rows``). Raises ProtocolError only."""
    if len(data) > max_bytes:
        raise ProtocolError(E_TOO_LARGE, "frame larger than " + str(max_bytes) + " bytes")
    msg = loads(data)
    if type(msg) is not dict:
        raise ProtocolError(E_BAD_FRAME, "frame must be a CBOR map")
    kind = msg.get("t")
    if type(kind) is not str:
        raise ProtocolError(E_BAD_FRAME, "frame needs a string field 't' naming its type")
    if kind != T_DATA:
        raise ProtocolError(E_BAD_FRAME, "only data frames are binary on edgewire.v1.cbor; send '" + kind[:32]
                            + "' as a JSON text frame")
    return msg


def _column(column, what, count, start):
    """Resolve the entries of ``column`` (after its header) in place: absolute values or None."""
    if type(column) is not list or len(column) != count + 1:
        raise ProtocolError(E_BAD_FRAME, what + " must be a list of a header and one entry per reading ("
                            + str(count) + ")")
    step = column[0]
    if type(step) is not int:
        raise ProtocolError(E_BAD_FRAME, what + " header must be an integer")
    if not start:
        step = 0
    prev = None
    for index in range(1, count + 1):
        entry = column[index]
        if entry is None:
            continue
        if type(entry) is not int:
            raise ProtocolError(E_BAD_FRAME, what + " entries must be integers or null")
        if prev is not None:
            entry += prev + step
            column[index] = entry
        prev = entry
    return column


def rows(msg, max_batch=MAX_BATCH):
    """The JSON shape of a decoded binary data frame: its columns become ``r`` (one object per reading,
    for wire.parse_data). Raises ProtocolError (bad_frame, too_large) for a broken layout."""
    columns = msg.get("m")
    if type(columns) is not dict or not columns:
        raise ProtocolError(E_BAD_FRAME, "field 'm' must be a map of metric name: [places, entries...] "
                            "(binary data frames are columnar)")
    count = -1
    for name in columns:
        column = columns[name]
        if type(column) is not list or not column:
            raise ProtocolError(E_BAD_FRAME, "metric column '" + name[:32] + "' must be a non-empty list")
        count = len(column) - 1
        break
    if count < 1:
        raise ProtocolError(E_BAD_FRAME, "binary data frame has no readings (its columns hold no entries)")
    if count > max_batch:
        raise batch_too_large(count, max_batch)
    readings = []
    for _ in range(count):
        readings.append({"m": {}})
    for name in columns:
        column = _column(columns[name], "metric column '" + name[:32] + "'", count, False)
        places = column[0]
        if not INT_COLUMN <= places <= MAX_PLACES:
            raise ProtocolError(E_BAD_FRAME, "metric column '" + name[:32] + "' header must be -1 (integers) or "
                                "0.." + str(MAX_PLACES) + " (decimal places)")
        scale = _SCALE[places] if places >= 0 else 0
        for index in range(count):
            value = column[index + 1]
            if value is not None:
                readings[index]["m"][name] = value / scale if scale else value
    for key, field in (("ts", "ts"), ("ru", "up")):
        column = msg.get(key)
        if column is not None:
            _column(column, "field '" + key + "'", count, True)
            for index in range(count):
                if column[index + 1] is not None:
                    readings[index][field] = column[index + 1]
    quality = msg.get("q")
    if quality is not None:
        if type(quality) is int:
            quality = [quality] * count
        elif type(quality) is not list or len(quality) != count:
            raise ProtocolError(E_BAD_FRAME, "field 'q' must be a quality code or a list of one per reading")
        for index in range(count):
            code = quality[index]
            if type(code) is not int or not 0 <= code < len(QUALITY_CODES):
                raise ProtocolError(E_BAD_FRAME, "reading quality codes 'q' are 0 (none), 1 ok, 2 retried, "
                                    "3 suspect, 4 stale")
            if code:
                readings[index]["q"] = QUALITY_CODES[code]
    out = {}
    for key in msg:
        if key not in COLUMN_KEYS:
            out[key] = msg[key]
    out["r"] = readings
    return out
