"""Edgewire device protocol v1, the wire: constants, codec and validation (no I/O).

Shared by both sides: protocol/gateway.py (GatewaySession) and protocol/device.py
(DeviceSession) build on it. Written in the Python subset MicroPython accepts (no
``match``, no positional-only parameters, no dataclasses, no typing at run time, no
``[*a, *b]``), because the ESP32 firmware runs it as is; the types live in wire.pyi.

docs/protocol.md is the contract; this module implements it.
"""

import sys

try:
    import json
except ImportError:  # pragma: no cover - very small MicroPython builds
    import ujson as json  # type: ignore[no-redef]

_CPYTHON = sys.implementation.name != "micropython"

PROTOCOL_VERSION = 1

# WebSocket subprotocols (docs/protocol.md section 1): JSON is the default; a device that offers
# edgewire.v1.cbor and gets it sends its data frames as binary CBOR frames (protocol/cbor.py).
SUBPROTOCOL_JSON = "edgewire.v1.json"
SUBPROTOCOL_CBOR = "edgewire.v1.cbor"

# Message types ("t" field).
T_AUTH = "auth"
T_WELCOME = "welcome"
T_DATA = "data"
T_ACK = "ack"
T_ERROR = "error"
T_SLOW = "slow"
T_CMD = "cmd"
T_RESULT = "result"
T_STATUS = "status"
# Over-the-air updates (protocol/ota.py; the offer is the ``ota`` command)
T_OTA = "ota"  # device -> gateway: an update's state
T_OTA_GET = "ota_get"  # device -> gateway: one chunk request (at most one outstanding)
T_OTA_CHUNK = "ota_chunk"  # gateway -> device: the chunk

# Stable error codes carried in error frames and HTTP rejection bodies.
E_BAD_JSON = "bad_json"
E_BAD_CBOR = "bad_cbor"  # a binary frame on an edgewire.v1.cbor connection that is not CBOR of the subset
E_BAD_FRAME = "bad_frame"
E_BAD_VALUE = "bad_value"
E_TOO_LARGE = "too_large"
E_UNKNOWN_TYPE = "unknown_type"
E_BINARY = "binary_unsupported"
E_AUTH_REQUIRED = "auth_required"
E_AUTH_FAILED = "auth_failed"
E_AUTH_TIMEOUT = "auth_timeout"
E_DISABLED = "device_disabled"
E_EXPIRED = "credential_expired"
E_ADDRESS = "address_not_allowed"
E_IDENTITY = "identity_mismatch"
E_RATE = "rate_limited"
E_REPLACED = "replaced"
E_SHUTDOWN = "shutting_down"
E_STORAGE = "storage_unavailable"
E_TAKEOVER = "takeover_pending"  # another gateway instance still holds the device: try again later
E_TOO_MANY_ERRORS = "too_many_errors"
E_NO_SUCH_COMMAND = "no_such_command"  # a result for no command pending on this connection
E_OTA_UNKNOWN = "ota_unknown"  # an ota_get for no release or file offered to this device
E_BAD_REQUEST = "bad_request"  # an ota_get that is not one (fields missing or out of range)

# WebSocket close codes (RFC 6455 plus the 4000-4999 private range).
CLOSE_NORMAL = 1000
CLOSE_GOING_AWAY = 1001
CLOSE_POLICY = 1008
CLOSE_TOO_BIG = 1009
CLOSE_INTERNAL = 1011
CLOSE_SERVICE_RESTART = 1012
CLOSE_TRY_AGAIN_LATER = 1013
CLOSE_TOO_MANY_ERRORS = 4000
CLOSE_AUTH_FAILED = 4001
CLOSE_AUTH_TIMEOUT = 4002
CLOSE_DISABLED = 4003
CLOSE_EXPIRED = 4004
CLOSE_REPLACED = 4005
CLOSE_ADDRESS = 4006
CLOSE_IDENTITY = 4007
CLOSE_RATE_LIMITED = 4008
CLOSE_AUTH_REQUIRED = 4009

# Close code for each error that ends a connection; other errors reject one frame.
CLOSE_FOR_ERROR = {
    E_AUTH_REQUIRED: CLOSE_AUTH_REQUIRED,
    E_AUTH_FAILED: CLOSE_AUTH_FAILED,
    E_AUTH_TIMEOUT: CLOSE_AUTH_TIMEOUT,
    E_DISABLED: CLOSE_DISABLED,
    E_EXPIRED: CLOSE_EXPIRED,
    E_ADDRESS: CLOSE_ADDRESS,
    E_IDENTITY: CLOSE_IDENTITY,
    E_REPLACED: CLOSE_REPLACED,
    E_SHUTDOWN: CLOSE_SERVICE_RESTART,
    E_STORAGE: CLOSE_TRY_AGAIN_LATER,
    E_TAKEOVER: CLOSE_TRY_AGAIN_LATER,
    E_TOO_MANY_ERRORS: CLOSE_TOO_MANY_ERRORS,
    E_RATE: CLOSE_RATE_LIMITED,  # only when the limit is persistently ignored
}

# Read quality of one reading.
QUALITY_OK = "ok"  # first read succeeded
QUALITY_RETRIED = "retried"  # succeeded after one or more failed reads
QUALITY_SUSPECT = "suspect"  # read succeeded but the value looks wrong (stuck, spike)
QUALITY_STALE = "stale"  # read failed; last good value repeated
QUALITIES = (QUALITY_OK, QUALITY_RETRIED, QUALITY_SUSPECT, QUALITY_STALE)

# Metrics the gateway knows, one row each, shared by validation, the dashboard and the MQTT
# bridge: name -> (unit, lowest plausible, highest plausible, Home Assistant device_class or
# None, label). Adding a metric is one row here. Metrics not listed are accepted within
# GENERIC_RANGE (no unit, no device_class) so new sensors work before their row lands; an
# operator declares more in the gateway's configuration ([[metrics]]), and the gateway passes
# the merged table (same row shape) to parse_data / GatewaySession as ``table``.
METRICS = {
    "temperature": ("°C", -60.0, 150.0, "temperature", "Temperature"),
    "humidity": ("%", 0.0, 100.0, "humidity", "Humidity"),
    "pressure": ("hPa", 300.0, 1100.0, "atmospheric_pressure", "Pressure"),
    "co2": ("ppm", 0.0, 40000.0, "carbon_dioxide", "CO2"),
    "light": ("lx", 0.0, 200000.0, "illuminance", "Light"),
    "soil_moisture": ("%", 0.0, 100.0, "moisture", "Soil moisture"),
    "soil_temperature": ("°C", -55.0, 125.0, "temperature", "Soil temperature"),  # DS18B20 probe's range
    "cpu_temperature": ("°C", -40.0, 125.0, "temperature", "CPU temperature"),
    "voltage": ("V", 0.0, 60.0, "voltage", "Voltage"),
    "battery": ("%", 0.0, 100.0, "battery", "Battery"),
    "rssi": ("dBm", -127.0, 0.0, "signal_strength", "Signal"),
    "analog": ("fraction", 0.0, 1.0, None, "Analog input"),
    # a phone as a device (/phone): devicemotion with gravity, deviceorientation, geolocation
    "accel_x": ("m/s²", -200.0, 200.0, None, "Acceleration X"),
    "accel_y": ("m/s²", -200.0, 200.0, None, "Acceleration Y"),
    "accel_z": ("m/s²", -200.0, 200.0, None, "Acceleration Z"),
    "orientation_alpha": ("°", 0.0, 360.0, None, "Orientation alpha (about Z)"),
    "orientation_beta": ("°", -180.0, 180.0, None, "Orientation beta (about X)"),
    "orientation_gamma": ("°", -90.0, 90.0, None, "Orientation gamma (about Y)"),
    "latitude": ("°", -90.0, 90.0, None, "Latitude"),
    "longitude": ("°", -180.0, 180.0, None, "Longitude"),
}
GENERIC_RANGE = (-1e9, 1e9)
# Binary data frames (docs/protocol.md section 1.1) may name a metric by its index here, one byte
# instead of its name. Append only: an id never changes meaning. A metric without one goes by name.
METRIC_IDS = ("temperature", "humidity", "pressure", "co2", "light", "soil_moisture", "cpu_temperature",
              "voltage", "battery", "rssi", "analog")

# Default limits; the gateway announces its own in the welcome frame.
MAX_FRAME_BYTES = 16384
MAX_BATCH = 100
MAX_METRICS = 16
MAX_NAME = 32
MAX_TEXT = 256
MAX_SEQ = 9007199254740991  # 2**53 - 1: exact in every JSON implementation
DEFAULT_RATE = 10.0
DEFAULT_BURST = 20.0

DEVICE_TOKEN_PREFIX = "ewt_"  # device tokens; a credential without it is a JWT

_INF = float("inf")
_NAME_CHARS = "abcdefghijklmnopqrstuvwxyz0123456789_"
_ID_CHARS = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_-.:"


class ProtocolError(ValueError):
    """A frame broke the protocol. ``code`` is one of the E_* constants."""

    def __init__(self, code, message):
        super().__init__(message)  # ValueError.__init__(self, ...) fails on MicroPython
        self.code = code
        self.message = message

    def close_code(self):
        """The close code this error ends the connection with, or 0 if it does not."""
        return CLOSE_FOR_ERROR.get(self.code, 0)


# ---------------------------------------------------------------- values

def is_number(value):
    """True for int or float, never for bool (bool is not an int on MicroPython)."""
    kind = type(value)
    return kind is int or kind is float


def is_finite(value):
    """True for an int, or a float that is neither NaN nor infinite."""
    if type(value) is int:
        return True
    return value == value and value != _INF and value != -_INF


def spelled_with(text, alphabet, longest):
    """Whether ``text`` is a string of 1 to ``longest`` characters, each one of ``alphabet``: the
    shape of every name and id of the protocol (device ids, metric names, OTA versions and files)."""
    if type(text) is not str or not 0 < len(text) <= longest:
        return False
    for ch in text:
        if ch not in alphabet:
            return False
    return True


def valid_device_id(text):
    """Device ids: 1-64 characters from A-Z a-z 0-9 _ - . :"""
    return spelled_with(text, _ID_CHARS, 64)


def is_device_token(credential):
    """True for a device token (``ewt_`` + 32 characters); anything else is taken for a JWT.

    The one test every side uses to tell the two credentials apart.
    """
    return type(credential) is str and credential.startswith(DEVICE_TOKEN_PREFIX)


def valid_metric_name(text):
    """Metric names: 1-32 characters of a-z 0-9 _, starting with a letter."""
    return spelled_with(text, _NAME_CHARS, MAX_NAME) and text[0] in "abcdefghijklmnopqrstuvwxyz"


def metric_range(name, table=None):
    """(low, high) plausible range for a metric name, from ``table`` (default METRICS)."""
    row = (METRICS if table is None else table).get(name)
    if row is None:
        return GENERIC_RANGE
    return (row[1], row[2])


def _int_field(msg, key, low, high, required):
    value = msg.get(key)
    if value is None:
        if required:
            raise ProtocolError(E_BAD_FRAME, "missing field '" + key + "'")
        return None
    if type(value) is not int:
        raise ProtocolError(E_BAD_FRAME, "field '" + key + "' must be an integer")
    if value < low or value > high:
        raise ProtocolError(E_BAD_VALUE, "field '" + key + "' out of range")
    return value


def _text_field(msg, key, required, limit=MAX_TEXT):
    value = msg.get(key)
    if value is None:
        if required:
            raise ProtocolError(E_BAD_FRAME, "missing field '" + key + "'")
        return None
    if type(value) is not str:
        raise ProtocolError(E_BAD_FRAME, "field '" + key + "' must be a string")
    if len(value) > limit:
        raise ProtocolError(E_TOO_LARGE, "field '" + key + "' longer than " + str(limit))
    return value


# ---------------------------------------------------------------- codec

def _refuse_constant(name):
    raise ValueError("not JSON: " + name)


def _strict_loads(text):
    """json.loads that refuses NaN and Infinity (CPython accepts them by default)."""
    return json.loads(text, parse_constant=_refuse_constant)


if not _CPYTHON:  # MicroPython's json.loads takes no keyword arguments and refuses NaN and Infinity already
    _strict_loads = json.loads


def encode(msg):
    """Encode one message dict as a JSON text frame."""
    return json.dumps(msg)


def decode(text, loads=None, max_bytes=MAX_FRAME_BYTES):
    """Decode one text frame into a message dict with a string ``t`` field.

    Raises ProtocolError only. A frame with no ``t`` but with ``device_id`` and
    ``token`` is the seed's auth shape and decodes as an auth message.
    """
    if type(text) is not str:
        if type(text) in (bytes, bytearray, memoryview):
            raise ProtocolError(E_BINARY, "binary frames are not supported; send JSON text frames")
        raise ProtocolError(E_BAD_FRAME, "frame must be text")
    if len(text) > max_bytes:
        raise ProtocolError(E_TOO_LARGE, "frame larger than " + str(max_bytes) + " bytes")
    try:
        msg = (loads or _strict_loads)(text)
    except Exception as err:
        detail = str(err)
        if "infinity" in detail:  # orjson: a number that overflows a double
            raise ProtocolError(E_BAD_VALUE, "numbers must be finite")
        if "NaN" in text or "Infinity" in text:
            detail = "NaN and Infinity are not JSON; " + detail
        raise ProtocolError(E_BAD_JSON, "frame is not valid JSON: " + detail[:120])
    if type(msg) is not dict:
        raise ProtocolError(E_BAD_FRAME, "frame must be a JSON object")
    kind = msg.get("t")
    if kind is None and "device_id" in msg and "token" in msg:
        msg["t"] = T_AUTH
        return msg
    if type(kind) is not str:
        raise ProtocolError(E_BAD_FRAME, "frame needs a string field 't' naming its type")
    return msg


# ---------------------------------------------------------------- messages


class Reading:
    """One reading: seq, metrics dict, optional device time / uptime (ms), quality."""

    __slots__ = ("metrics", "quality", "seq", "ts", "up")

    def __init__(self, seq, metrics, ts=None, up=None, quality=None):
        self.seq = seq
        self.metrics = metrics
        self.ts = ts
        self.up = up
        self.quality = quality

    def to_wire(self):
        item = {"m": self.metrics}
        if self.ts is not None:
            item["ts"] = self.ts
        if self.up is not None:
            item["up"] = self.up
        if self.quality is not None:
            item["q"] = self.quality
        return item


class DataFrame:
    """A decoded, validated telemetry frame. ``readings`` have seq, seq+1, ..."""

    __slots__ = ("boot", "device_id", "readings", "seq", "up")

    def __init__(self, seq, boot, up, readings, device_id=None):
        self.seq = seq
        self.boot = boot
        self.up = up
        self.readings = readings
        self.device_id = device_id

    @property
    def last_seq(self):
        """Seq of the last reading; for a frame emptied as duplicate, seq - 1."""
        return self.seq + len(self.readings) - 1


_CHECKED_NAMES = {}  # valid metric names seen (the check loops per character, per reading)


def _parse_metrics(raw, table):
    if type(raw) is not dict:
        raise ProtocolError(E_BAD_FRAME, "reading field 'm' must be an object of metric: number")
    if not raw:
        raise ProtocolError(E_BAD_FRAME, "reading has no metrics")
    if len(raw) > MAX_METRICS:
        raise ProtocolError(E_TOO_LARGE, "reading has more than " + str(MAX_METRICS) + " metrics")
    for name in raw:
        value = raw[name]
        if name not in _CHECKED_NAMES:
            if not valid_metric_name(name):
                raise ProtocolError(E_BAD_FRAME, "metric names are 1-32 chars of a-z 0-9 _ starting with a letter")
            if len(_CHECKED_NAMES) < 1024:  # bounded: a hostile device cannot grow it
                _CHECKED_NAMES[name] = True
        if not is_number(value):
            raise ProtocolError(E_BAD_FRAME, "metric '" + name + "' must be a number")
        if not is_finite(value):
            raise ProtocolError(E_BAD_VALUE, "metric '" + name + "' must be finite")
        low, high = metric_range(name, table)
        if value < low or value > high:
            raise ProtocolError(
                E_BAD_VALUE,
                "metric '" + name + "' = " + str(value) + " outside plausible range "
                + str(low) + ".." + str(high) + "; check the sensor and its units")
    return raw


def batch_too_large(count, max_batch):
    """The error for a frame of ``count`` readings, above ``max_batch`` (either encoding)."""
    return ProtocolError(E_TOO_LARGE, "batch of " + str(count) + " readings exceeds " + str(max_batch))


def parse_data(msg, max_batch=MAX_BATCH, table=None):
    """Validate a decoded ``data`` message and return a DataFrame.

    The whole frame is rejected (ProtocolError) if any part is invalid, so a
    device never gets a partial ack for a frame it will resend. ``table`` is the
    metric table whose ranges apply (default METRICS).
    """
    seq = _int_field(msg, "seq", 1, MAX_SEQ, True)
    boot = _text_field(msg, "boot", False, 64)
    up = _int_field(msg, "up", 0, MAX_SEQ, False)
    batch = msg.get("r")
    if type(batch) is not list:
        raise ProtocolError(E_BAD_FRAME, "field 'r' must be a list of readings")
    if not batch:
        raise ProtocolError(E_BAD_FRAME, "field 'r' is empty")
    if len(batch) > max_batch:
        raise batch_too_large(len(batch), max_batch)
    if seq + len(batch) - 1 > MAX_SEQ:
        raise ProtocolError(E_BAD_VALUE, "sequence numbers out of range")
    readings = []
    index = 0
    for item in batch:
        if type(item) is not dict:
            raise ProtocolError(E_BAD_FRAME, "each reading must be an object")
        metrics = _parse_metrics(item.get("m"), table)
        ts = _int_field(item, "ts", 0, MAX_SEQ, False)
        rup = _int_field(item, "up", 0, MAX_SEQ, False)
        quality = item.get("q")
        if quality is not None and quality not in QUALITIES:
            raise ProtocolError(E_BAD_FRAME, "reading quality 'q' must be one of " + ", ".join(QUALITIES))
        readings.append(Reading(seq + index, metrics, ts, rup, quality))
        index += 1
    return DataFrame(seq, boot, up, readings, msg.get("device_id"))


def data_message(seq, readings, boot=None, up=None):
    """Build a data message dict; ``readings`` must hold consecutive seqs from ``seq``."""
    msg = {"t": T_DATA, "seq": seq, "r": [r.to_wire() for r in readings]}
    if boot is not None:
        msg["boot"] = boot
    if up is not None:
        msg["up"] = up
    return msg


def reading_time_ms(reading, frame, received_ms):
    """Best estimate of when a reading was taken, in Unix ms.

    The device timestamp wins; otherwise, if reading and frame both carry an
    uptime, the age ``frame.up - reading.up`` is subtracted from the receive time.
    """
    if reading.ts is not None:
        return reading.ts
    if reading.up is not None and frame.up is not None and frame.up >= reading.up:
        return received_ms - (frame.up - reading.up)
    return received_ms


def error_message(code, message, seq=None):
    msg = {"t": T_ERROR, "code": code, "msg": message}
    if seq is not None:
        msg["seq"] = seq
    return msg


# ---------------------------------------------------------------- commands (docs/protocol.md section 8)

# Argument kinds of a command row.
ARG_NUMBER = "number"  # finite int or float (not bool)
ARG_METRIC = "metric"  # a metric name (valid_metric_name)
ARG_NAME = "name"  # a string of 1..MAX_NAME characters
ARG_BOOL = "bool"  # true or false
ARG_TEXT = "text"  # a string of 1..MAX_COMMAND_TEXT characters (its row's check may say more)

MAX_COMMAND_TEXT = 12000  # the longest text argument: an OTA manifest (protocol/ota.py)

MAX_INTERVAL_S = 86400  # set_interval's cap: one day (the agent keeps readings 7 days by default)


def _check_interval(args):
    seconds = args["seconds"]
    if not 0 < seconds <= MAX_INTERVAL_S:
        return "got " + str(seconds)
    return None


def _check_thresholds(args):
    high = args.get("high")
    low = args.get("low")
    if high is None and low is None:
        return "neither high nor low given"
    if high is not None and low is not None and not low < high:
        return "low must be below high"
    return None


def _check_ota(args):
    sig = args["sig"]
    if len(sig) != 128:
        return "sig must be 128 hex characters"
    for ch in sig:
        if ch not in "0123456789abcdef":
            return "sig must be 128 lowercase hex characters"
    return None


# Downlink commands: name -> (usage, arguments, check). An argument is (name, kind, required);
# ``check(args)`` returns what is wrong across arguments, or None. Errors read "<usage>: <what>".
# Adding a command is one row here plus a handler in each driver that supports it.
COMMANDS = {
    "set_interval": ("set_interval needs seconds > 0 and <= " + str(MAX_INTERVAL_S) + " (a number)",
                     (("seconds", ARG_NUMBER, True),), _check_interval),
    "set_thresholds": ("set_thresholds needs metric (a metric name) and high, low or both (numbers)",
                       (("metric", ARG_METRIC, True), ("high", ARG_NUMBER, False), ("low", ARG_NUMBER, False)),
                       _check_thresholds),
    "set_output": ("set_output needs output (name) and on (boolean)",
                   (("output", ARG_NAME, True), ("on", ARG_BOOL, True)), None),
    "reboot": ("reboot takes no arguments", (), None),
    "ping": ("ping takes no arguments", (), None),
    # an over-the-air update offer (protocol/ota.py): the manifest's exact text and its signature
    "ota": ("ota needs manifest (the manifest text, at most " + str(MAX_COMMAND_TEXT) + " characters) and sig "
            "(128 hex characters)", (("manifest", ARG_TEXT, True), ("sig", ARG_TEXT, True)), _check_ota),
}

_ARG_HELP = {
    ARG_NUMBER: "a finite number",
    ARG_METRIC: "a metric name (1-32 chars of a-z 0-9 _)",
    ARG_NAME: "a name of 1-32 characters",
    ARG_BOOL: "true or false",
    ARG_TEXT: "a string of 1-" + str(MAX_COMMAND_TEXT) + " characters",
}


def _arg_ok(kind, value):
    if kind == ARG_NUMBER:
        return is_number(value) and is_finite(value)
    if kind == ARG_METRIC:
        return valid_metric_name(value)
    if kind == ARG_NAME:
        return type(value) is str and 0 < len(value) <= MAX_NAME
    if kind == ARG_TEXT:
        return type(value) is str and 0 < len(value) <= MAX_COMMAND_TEXT
    return type(value) is bool


def parse_command(name, args):
    """Validate a command against its COMMANDS row; return the arguments it names.

    ``args`` None counts as {}. Unknown argument names are ignored (a newer gateway may
    send more). Raises ProtocolError (E_UNKNOWN_TYPE for an unknown command, E_BAD_FRAME
    for args that are not an object, else E_BAD_VALUE) whose message is the text to
    answer with.
    """
    row = COMMANDS.get(name) if type(name) is str else None
    if row is None:
        raise ProtocolError(E_UNKNOWN_TYPE, "unknown command '" + str(name)[:32] + "'; known: "
                            + ", ".join(sorted(COMMANDS)))
    if args is None:
        args = {}
    if type(args) is not dict:
        raise ProtocolError(E_BAD_FRAME, "command args must be an object")
    usage, spec, check = row
    out = {}
    for arg, kind, required in spec:
        value = args.get(arg)
        if value is None:
            if required:
                raise ProtocolError(E_BAD_VALUE, usage + ": '" + arg + "' is missing")
            continue
        if not _arg_ok(kind, value):
            raise ProtocolError(E_BAD_VALUE, usage + ": '" + arg + "' must be " + _ARG_HELP[kind])
        out[arg] = value
    if check is not None:
        problem = check(out)
        if problem is not None:
            raise ProtocolError(E_BAD_VALUE, usage + ": " + problem)
    return out


# ---------------------------------------------------------------- CPython only
# Value equality and a repr for Readings, for tests and logs on the gateway and the PC. Not
# defined on the board, where their code would take heap for nothing.
if _CPYTHON:

    def _reading_eq(self, other):
        return (
            isinstance(other, Reading)
            and self.seq == other.seq
            and self.metrics == other.metrics
            and self.ts == other.ts
            and self.up == other.up
            and self.quality == other.quality
        )

    def _reading_repr(self):
        return "Reading(%r, %r, ts=%r, up=%r, quality=%r)" % (
            self.seq, self.metrics, self.ts, self.up, self.quality)

    Reading.__eq__ = _reading_eq
    Reading.__hash__ = None  # as when __eq__ is defined in the class body: unhashable
    Reading.__repr__ = _reading_repr
