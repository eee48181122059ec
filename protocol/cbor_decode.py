"""Edgewire protocol v1, the binary encoding (subprotocol ``edgewire.v1.cbor``), the gateway's half:
a CBOR (RFC 8949) decoder for the subset docs/protocol.md section 1.1 names (integers, text and
byte strings, arrays, maps with text or integer keys, false/true/null; definite lengths only) and
the columnar data frame turned back into the JSON message shape, so that wire.parse_data applies
the same validation and the same error codes to both encodings. No I/O; MicroPython-safe like
wire.py (tests run it there), though only the gateway needs it; the types live in cbor_decode.pyi.
"""

from binascii import hexlify

from protocol.cbor import _NULL, _SCALE, INT_COLUMN, MAX_PLACES, QUALITY_CODES
from protocol.wire import (
    E_BAD_CBOR,
    E_BAD_FRAME,
    E_TOO_LARGE,
    MAX_BATCH,
    MAX_FRAME_BYTES,
    METRIC_IDS,
    METRICS,
    T_DATA,
    ProtocolError,
    batch_too_large,
)

MAX_DEPTH = 8  # nesting of arrays and maps (a data frame needs 3)
COLUMN_KEYS = ("m", "ts", "ru", "tu", "q")  # keys of a binary data frame that replace JSON's "r"

# Text keys a data frame uses, by their UTF-8 bytes: no decoding for them.
_KEYS = {}
for _names in (("t", "seq", "boot", "up", "ts", "ru", "tu", "m", "q", "device_id"), METRICS):
    for _name in _names:
        _KEYS[_name.encode()] = _name


def _bad(message):
    return ProtocolError(E_BAD_CBOR, "frame is not valid edgewire CBOR: " + message)


def _item(data, pos, depth):
    """Decode the item at ``pos``: (value, position after it). IndexError when the data ends early."""
    initial = data[pos]
    if initial < 24:  # the commonest items first: small integers, short strings, short arrays
        return initial, pos + 1
    if 0x60 <= initial < 0x78:
        end = pos + 1 + initial - 0x60
        key = _KEYS.get(data[pos + 1:end])
        if key is not None:
            return key, end
    elif 0x80 <= initial < 0x98:
        if depth <= 0:
            raise _bad("nested deeper than " + str(MAX_DEPTH) + " levels")
        return _array(data, pos + 1, initial - 0x80, depth - 1)
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
    if major == 2 or major == 3:
        end = pos + arg
        if end > len(data):
            raise IndexError
        if major == 2:
            return data[pos:end], end
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
    raise _bad("tags are not used (docs/protocol.md 1.1)")


def _array(data, pos, count, depth):
    items = [None] * count
    index = 0
    while index < count:
        initial = data[pos]
        if initial < 24:  # column entries: small integers inline, the rest through _item
            items[index] = initial
            pos += 1
        elif initial == _NULL:
            pos += 1
        elif 0x20 <= initial < 0x38:
            items[index] = 0x1F - initial
            pos += 1
        elif initial == 24:
            items[index] = data[pos + 1]
            pos += 2
        elif initial == 0x38:
            items[index] = -1 - data[pos + 1]
            pos += 2
        elif initial == 25:
            items[index] = (data[pos + 1] << 8) | data[pos + 2]
            pos += 3
        elif initial == 0x39:
            items[index] = -1 - ((data[pos + 1] << 8) | data[pos + 2])
            pos += 3
        else:
            items[index], pos = _item(data, pos, depth)
        index += 1
    if pos > len(data):
        raise IndexError
    return items, pos


def _map(data, pos, count, depth):
    out = {}
    while count:
        count -= 1
        initial = data[pos]
        key = None
        if initial < 24:  # a metric id
            key = initial
            pos += 1
        elif 0x60 <= initial < 0x78:  # a short text key: looked up, not decoded
            end = pos + 1 + initial - 0x60
            key = _KEYS.get(data[pos + 1:end])
            if key is not None:
                pos = end
        if key is None:
            key, pos = _item(data, pos, depth)
            kind = type(key)
            if kind is not str and (kind is not int or key < 0):
                raise _bad("map keys must be text strings or unsigned integers")
        if key in out:
            raise _bad("map key '" + str(key)[:32] + "' appears twice")
        initial = data[pos]
        if initial < 24:
            out[key] = initial
            pos += 1
        elif 0x80 <= initial < 0x98 and depth > 0:  # a column
            out[key], pos = _array(data, pos + 1, initial - 0x80, depth - 1)
        else:
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
    """A binary frame on an ``edgewire.v1.cbor`` connection: the message map with ``t`` "data" (still
    columnar: see ``rows``). Raises ProtocolError only."""
    if len(data) > max_bytes:
        raise ProtocolError(E_TOO_LARGE, "frame larger than " + str(max_bytes) + " bytes")
    msg = loads(data)
    if type(msg) is not dict:
        raise ProtocolError(E_BAD_FRAME, "frame must be a CBOR map")
    kind = msg.get("t", T_DATA)
    if kind != T_DATA:
        if type(kind) is not str:
            raise ProtocolError(E_BAD_FRAME, "field 't' must be a string naming the message type")
        raise ProtocolError(E_BAD_FRAME, "only data frames are binary on edgewire.v1.cbor; send '" + kind[:32]
                            + "' as a JSON text frame")
    msg["t"] = T_DATA
    return msg


def _column(column, key, count, step_header):
    """Check ``column`` (a header and ``count`` entries) and resolve its entries in place: the first
    present one as it is, each later one plus the previous value (plus the header for times)."""
    if type(column) is not list or len(column) != count + 1:
        raise ProtocolError(E_BAD_FRAME, _what(key, step_header) + " must be a list of a header and one entry "
                            "per reading (" + str(count) + ")")
    step = column[0]
    if type(step) is not int:
        raise ProtocolError(E_BAD_FRAME, _what(key, step_header) + " header must be an integer")
    if not step_header:
        step = 0
    prev = None
    index = 0
    for entry in column:
        if index and entry is not None:
            if type(entry) is not int:
                raise ProtocolError(E_BAD_FRAME, _what(key, step_header) + " entries must be integers or null")
            if prev is not None:
                entry += prev + step
                column[index] = entry
            prev = entry
        index += 1
    return column


def _what(key, time_column):
    return ("field '" if time_column else "metric column '") + str(key)[:32] + "'"


def _metric_name(key):
    if type(key) is str:
        return key
    if key >= len(METRIC_IDS):
        raise ProtocolError(E_BAD_FRAME, "unknown metric id " + str(key) + "; send the metric's name instead")
    return METRIC_IDS[key]


def rows(msg, max_batch=MAX_BATCH):
    """The JSON shape of a decoded binary data frame: its columns become ``r`` (one object per reading,
    for wire.parse_data) and a byte-string ``boot`` its hex text. Raises ProtocolError (bad_frame,
    too_large) for a broken layout."""
    columns = msg.get("m")
    if type(columns) is not dict or not columns:
        raise ProtocolError(E_BAD_FRAME, "field 'm' must be a map of metric: [places, entries...] "
                            "(binary data frames are columnar)")
    count = -1
    for key in columns:
        column = columns[key]
        if type(column) is not list or not column:
            raise ProtocolError(E_BAD_FRAME, "metric column '" + str(key)[:32] + "' must be a non-empty list")
        count = len(column) - 1
        break
    if count < 1:
        raise ProtocolError(E_BAD_FRAME, "binary data frame has no readings (its columns hold no entries)")
    if count > max_batch:
        raise batch_too_large(count, max_batch)
    metrics = []
    seen = {}
    for key in columns:
        name = _metric_name(key)
        if name in seen:
            raise ProtocolError(E_BAD_FRAME, "metric '" + name[:32] + "' has two columns (by name and by id)")
        seen[name] = True
        column = _column(columns[key], name, count, False)
        places = column[0]
        if not INT_COLUMN <= places <= MAX_PLACES:
            raise ProtocolError(E_BAD_FRAME, _what(name, False) + " header must be -1 (integers) or 0.."
                                + str(MAX_PLACES) + " (decimal places)")
        metrics.append((name, column, _SCALE[places] if places >= 0 else 0))
    stamps = msg.get("ts")
    if stamps is not None:
        _column(stamps, "ts", count, True)
    uptimes = msg.get("ru")
    if uptimes is not None:
        _column(uptimes, "ru", count, True)
    offsets = msg.get("tu")
    if offsets is not None:
        if uptimes is not None:
            raise ProtocolError(E_BAD_FRAME, "fields 'ru' and 'tu' both give the readings' up; send one")
        uptimes = _column(offsets, "tu", count, True)
        for index in range(1, count + 1):
            if uptimes[index] is not None:
                if stamps is None or stamps[index] is None:
                    raise ProtocolError(E_BAD_FRAME, "field 'tu' (ts - up) needs the reading's ts")
                uptimes[index] = stamps[index] - uptimes[index]
    quality = msg.get("q")
    if quality is not None:
        if type(quality) is int:
            quality = [quality] * count
        elif type(quality) is not list or len(quality) != count:
            raise ProtocolError(E_BAD_FRAME, "field 'q' must be a quality code or a list of one per reading")
        for code in quality:
            if type(code) is not int or not 0 <= code < len(QUALITY_CODES):
                raise ProtocolError(E_BAD_FRAME, "reading quality codes 'q' are 0 (none), 1 ok, 2 retried, "
                                    "3 suspect, 4 stale")
    readings = []
    for index in range(1, count + 1):
        values = {}
        for name, column, scale in metrics:
            value = column[index]
            if value is not None:
                values[name] = value / scale if scale else value
        item = {"m": values}
        if stamps is not None and stamps[index] is not None:
            item["ts"] = stamps[index]
        if uptimes is not None and uptimes[index] is not None:
            item["up"] = uptimes[index]
        if quality is not None and quality[index - 1]:
            item["q"] = QUALITY_CODES[quality[index - 1]]
        readings.append(item)
    out = {}
    for key in msg:
        if key not in COLUMN_KEYS:
            out[key] = msg[key]
    boot = out.get("boot")
    if type(boot) is bytes:
        out["boot"] = hexlify(boot).decode()
    out["r"] = readings
    return out
