"""Edgewire device protocol v1: the pure core (no I/O).

Frames (JSON text) in, events and frames out. The gateway, the Pi agent, the
simulator and the ESP32 firmware are thin drivers around this module, so it is
written in the Python subset MicroPython accepts: no ``match``, no positional-only
parameters, no dataclasses, no typing at run time, no ``[*a, *b]``. Annotations
that name typing constructs are strings, because MicroPython ignores annotations
while CPython evaluates them.

docs/protocol.md is the contract; this module implements it.
"""

try:
    import json
except ImportError:  # pragma: no cover - very small MicroPython builds
    import ujson as json  # type: ignore[no-redef]

PROTOCOL_VERSION = 1

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

# Stable error codes carried in error frames and HTTP rejection bodies.
E_BAD_JSON = "bad_json"
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
E_TOO_MANY_ERRORS = "too_many_errors"

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
    E_TOO_MANY_ERRORS: CLOSE_TOO_MANY_ERRORS,
    E_RATE: CLOSE_RATE_LIMITED,  # only when the limit is persistently ignored
}

# Read quality of one reading.
QUALITY_OK = "ok"  # first read succeeded
QUALITY_RETRIED = "retried"  # succeeded after one or more failed reads
QUALITY_SUSPECT = "suspect"  # read succeeded but the value looks wrong (stuck, spike)
QUALITY_STALE = "stale"  # read failed; last good value repeated
QUALITIES = (QUALITY_OK, QUALITY_RETRIED, QUALITY_SUSPECT, QUALITY_STALE)

# Metrics the gateway knows: name -> (unit, lowest plausible, highest plausible).
# Adding a metric is one row here. Metrics not listed are accepted within
# GENERIC_RANGE so new sensors work before their row lands.
METRICS = {
    "temperature": ("°C", -60.0, 150.0),
    "humidity": ("%RH", 0.0, 100.0),
    "pressure": ("hPa", 300.0, 1100.0),
    "co2": ("ppm", 0.0, 40000.0),
    "light": ("lx", 0.0, 200000.0),
    "soil_moisture": ("%", 0.0, 100.0),
    "cpu_temperature": ("°C", -40.0, 125.0),
    "voltage": ("V", 0.0, 60.0),
    "battery": ("%", 0.0, 100.0),
    "rssi": ("dBm", -127.0, 0.0),
    "analog": ("fraction", 0.0, 1.0),
}
GENERIC_RANGE = (-1e9, 1e9)

# Default limits; the gateway announces its own in the welcome frame.
MAX_FRAME_BYTES = 16384
MAX_BATCH = 100
MAX_METRICS = 16
MAX_NAME = 32
MAX_TEXT = 256
MAX_SEQ = 9007199254740991  # 2**53 - 1: exact in every JSON implementation
DEFAULT_RATE = 10.0
DEFAULT_BURST = 20.0

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


def valid_device_id(text):
    """Device ids: 1-64 characters from A-Z a-z 0-9 _ - . :"""
    if type(text) is not str or not 0 < len(text) <= 64:
        return False
    for ch in text:
        if ch not in _ID_CHARS:
            return False
    return True


def valid_metric_name(text):
    """Metric names: 1-32 characters of a-z 0-9 _, starting with a letter."""
    if type(text) is not str or not 0 < len(text) <= MAX_NAME:
        return False
    if text[0] not in "abcdefghijklmnopqrstuvwxyz":
        return False
    for ch in text:
        if ch not in _NAME_CHARS:
            return False
    return True


def metric_range(name):
    """(low, high) plausible range for a metric name."""
    row = METRICS.get(name)
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
    try:
        return json.loads(text, parse_constant=_refuse_constant)
    except TypeError:  # MicroPython: no keyword arguments, and already strict
        return json.loads(text)


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
        if "infinity" in str(err):  # orjson: a number that overflows a double
            raise ProtocolError(E_BAD_VALUE, "numbers must be finite")
        raise ProtocolError(E_BAD_JSON, "frame is not valid JSON (NaN and Infinity are not JSON)")
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

    def __eq__(self, other):
        return (
            isinstance(other, Reading)
            and self.seq == other.seq
            and self.metrics == other.metrics
            and self.ts == other.ts
            and self.up == other.up
            and self.quality == other.quality
        )

    def __repr__(self):
        return "Reading(%r, %r, ts=%r, up=%r, quality=%r)" % (
            self.seq, self.metrics, self.ts, self.up, self.quality)


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


def _parse_metrics(raw):
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
        low, high = metric_range(name)
        if value < low or value > high:
            raise ProtocolError(
                E_BAD_VALUE,
                "metric '" + name + "' = " + str(value) + " outside plausible range "
                + str(low) + ".." + str(high) + "; check the sensor and its units")
    return raw


def parse_data(msg, max_batch=MAX_BATCH):
    """Validate a decoded ``data`` message and return a DataFrame.

    The whole frame is rejected (ProtocolError) if any part is invalid, so a
    device never gets a partial ack for a frame it will resend.
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
        raise ProtocolError(E_TOO_LARGE, "batch of " + str(len(batch)) + " readings exceeds " + str(max_batch))
    if seq + len(batch) - 1 > MAX_SEQ:
        raise ProtocolError(E_BAD_VALUE, "sequence numbers out of range")
    readings = []
    index = 0
    for item in batch:
        if type(item) is not dict:
            raise ProtocolError(E_BAD_FRAME, "each reading must be an object")
        metrics = _parse_metrics(item.get("m"))
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


# ---------------------------------------------------------------- rate limit


class TokenBucket:
    """Token bucket: ``rate`` tokens/s, at most ``burst`` stored. Time is passed in (s)."""

    __slots__ = ("burst", "rate", "stamp", "tokens")

    def __init__(self, rate, burst, now):
        self.rate = float(rate)
        self.burst = float(burst)
        self.tokens = float(burst)
        self.stamp = now

    def take(self, now, cost=1.0):
        """Take ``cost`` tokens if available; return True if taken."""
        elapsed = now - self.stamp
        if elapsed > 0:
            self.tokens = min(self.burst, self.tokens + elapsed * self.rate)
            self.stamp = now
        if self.tokens >= cost:
            self.tokens -= cost
            return True
        return False

    def wait_ms(self, cost=1.0):
        """Milliseconds until ``cost`` tokens are available."""
        missing = cost - self.tokens
        if missing <= 0:
            return 0
        return int(missing / self.rate * 1000) + 1


# ---------------------------------------------------------------- gateway side

ST_AWAIT_AUTH = 0
ST_ACTIVE = 1
ST_CLOSED = 2

# Events the gateway session returns from receive(); the driver acts on them.
EV_AUTH = "auth"  # payload: dict with device_id / token / jwt
EV_DATA = "data"  # payload: DataFrame
EV_RESULT = "result"  # payload: dict id, ok, msg, data
EV_STATUS = "status"  # payload: dict of status fields
EV_REJECT = "reject"  # payload: ProtocolError (frame rejected; error frame in .reply)
EV_THROTTLE = "throttle"  # payload: ProtocolError (rate limited; slow frame in .reply)
EV_CLOSE = "close"  # payload: ProtocolError (send .reply, then close with .close_code)


class Event:
    """What one received frame means. ``reply`` is a frame to send back, or None."""

    __slots__ = ("close_code", "kind", "payload", "reply")

    def __init__(self, kind, payload=None, reply=None, close_code=0):
        self.kind = kind
        self.payload = payload
        self.reply = reply
        self.close_code = close_code


class GatewaySession:
    """Per-connection protocol state on the gateway. No I/O, no clock of its own.

    Feed frames to ``receive(frame, now)``; it returns an Event. The driver checks
    credentials on EV_AUTH and calls ``accept()`` or ``refuse()``; it stores
    EV_DATA frames and calls ``ack()`` once they are durably committed.
    """

    def __init__(self, rate=DEFAULT_RATE, burst=DEFAULT_BURST, now=0.0,
                 max_batch=MAX_BATCH, max_frame=MAX_FRAME_BYTES, loads=None, dumps=None,
                 max_strikes=10, rate_strikes=40):
        self.state = ST_AWAIT_AUTH
        self.device_id = None
        self.last_seq = 0  # highest seq durably stored (acknowledged) for this device
        self.accepted_seq = 0  # highest seq handed to storage; >= last_seq
        self.hold_from = 0  # after a throttle: frames beyond this seq wait for its resend
        self.max_batch = max_batch
        self.max_frame = max_frame
        self.loads = loads
        self.dumps = dumps or json.dumps
        self.bucket = TokenBucket(rate, burst, now)
        self.strikes = 0  # consecutive bad frames
        self.max_strikes = max_strikes
        self.rate_strikes = 0  # frames refused for rate since the last accepted one
        self.max_rate_strikes = rate_strikes
        self.bad_frames = 0
        self.throttled = 0
        self.duplicates = 0

    # -- outgoing frames
    def frame(self, msg):
        return self.dumps(msg)

    def error_frame(self, code, message, seq=None):
        return self.dumps(error_message(code, message, seq))

    def _close_event(self, code, message):
        err = ProtocolError(code, message)
        self.state = ST_CLOSED
        return Event(EV_CLOSE, err, self.error_frame(code, message), err.close_code())

    def accept(self, device_id, last_seq, now_ms, extra=None):
        """Mark the session authenticated; return the welcome frame."""
        self.state = ST_ACTIVE
        self.device_id = device_id
        self.last_seq = last_seq
        self.accepted_seq = last_seq
        msg = {
            "t": T_WELCOME, "v": PROTOCOL_VERSION, "device": device_id, "last_seq": last_seq,
            "rate": self.bucket.rate, "burst": self.bucket.burst, "max_batch": self.max_batch,
            "max_frame": self.max_frame, "time": now_ms,
        }
        if extra:
            for key in extra:
                msg[key] = extra[key]
        return self.dumps(msg)

    def refuse(self, code, message):
        """Authentication failed: return the close Event to carry out."""
        return self._close_event(code, message)

    def close(self, code, message):
        """End an active session for ``code`` (expiry, replacement, shutdown)."""
        return self._close_event(code, message)

    def ack(self, seq):
        """Record that everything through ``seq`` is stored; return the ack frame."""
        if seq > self.last_seq:
            self.last_seq = seq
        return self.dumps({"t": T_ACK, "seq": self.last_seq})

    def command_frame(self, command_id, name, args=None):
        return self.dumps({"t": T_CMD, "id": command_id, "name": name, "args": args or {}})

    # -- incoming frames
    def receive(self, frame, now):
        """Interpret one received frame (str or bytes) at time ``now`` (s)."""
        if self.state == ST_CLOSED:
            return Event(EV_REJECT, ProtocolError(E_BAD_FRAME, "session closed"))
        try:
            msg = decode(frame, self.loads, self.max_frame)
        except ProtocolError as err:
            return self._bad(err)
        kind = msg["t"]
        if self.state == ST_AWAIT_AUTH:
            if kind != T_AUTH:
                return self._close_event(
                    E_AUTH_REQUIRED, "authenticate first: send an auth frame or an Authorization header")
            return self._auth(msg)
        claimed = msg.get("device_id")
        if claimed is not None and claimed != self.device_id:
            return self._close_event(
                E_IDENTITY, "frame names device '" + str(claimed)[:64]
                + "' but this connection is authenticated as another device")
        if kind == T_DATA:
            return self._data(msg, now)
        if kind == T_RESULT:
            return self._result(msg)
        if kind == T_STATUS:
            return Event(EV_STATUS, msg)
        if kind == T_AUTH:
            return self._bad(ProtocolError(E_BAD_FRAME, "already authenticated"))
        return self._bad(ProtocolError(E_UNKNOWN_TYPE, "unknown message type '" + kind[:32] + "'"))

    def _bad(self, err):
        self.bad_frames += 1
        self.strikes += 1
        if self.state == ST_AWAIT_AUTH:
            if err.code == E_BINARY or err.code == E_BAD_JSON or err.code == E_BAD_FRAME:
                return self._close_event(E_AUTH_REQUIRED, "authenticate first: " + err.message)
        if self.strikes >= self.max_strikes:
            return self._close_event(
                E_TOO_MANY_ERRORS, str(self.strikes) + " invalid frames in a row; fix the device's encoder")
        return Event(EV_REJECT, err, self.error_frame(err.code, err.message))

    def _auth(self, msg):
        device_id = msg.get("device_id")
        token = msg.get("token")
        jwt = msg.get("jwt")
        if device_id is not None and not valid_device_id(device_id):
            return self._close_event(E_AUTH_FAILED, "authentication failed")
        if token is not None and (type(token) is not str or len(token) > 512):
            return self._close_event(E_AUTH_FAILED, "authentication failed")
        if jwt is not None and (type(jwt) is not str or len(jwt) > 4096):
            return self._close_event(E_AUTH_FAILED, "authentication failed")
        if token is None and jwt is None:
            return self._close_event(E_AUTH_FAILED, "auth frame needs 'token' (with 'device_id') or 'jwt'")
        if token is not None and device_id is None:
            return self._close_event(E_AUTH_FAILED, "auth frame with 'token' needs 'device_id'")
        return Event(EV_AUTH, {"device_id": device_id, "token": token, "jwt": jwt})

    def _data(self, msg, now):
        try:
            frame = parse_data(msg, self.max_batch)
        except ProtocolError as err:
            seq = msg.get("seq")
            err_event = self._bad(err)
            if err_event.kind == EV_REJECT and type(seq) is int:
                err_event.reply = self.error_frame(err.code, err.message, seq)
            return err_event
        self.strikes = 0
        if self.hold_from:
            if frame.seq > self.hold_from:
                # Sent before the device saw the slow-down; it resends from hold_from.
                # Counted as a strike so a device that ignores slow-downs is still cut off.
                self.throttled += 1
                self.rate_strikes += 1
                if self.rate_strikes > self.max_rate_strikes:
                    return self._close_event(E_RATE, "rate limit exceeded after slow-down; reconnect later")
                err = ProtocolError(E_RATE, "waiting for resend of seq " + str(self.hold_from))
                return Event(EV_THROTTLE, err)
            self.hold_from = 0
        if not self.bucket.take(now):
            self.throttled += 1
            self.rate_strikes += 1
            if self.rate_strikes > self.max_rate_strikes:
                return self._close_event(E_RATE, "rate limit exceeded after slow-down; reconnect later at "
                                         + str(self.bucket.rate) + " frames/s or less")
            err = ProtocolError(
                E_RATE, "rate limit " + str(self.bucket.rate) + " frames/s exceeded; frame not stored, resend later")
            self.hold_from = frame.seq
            slow = {"t": T_SLOW, "rate": self.bucket.rate, "retry_ms": self.bucket.wait_ms(),
                    "seq": frame.seq}
            return Event(EV_THROTTLE, err, self.dumps(slow))
        self.rate_strikes = 0
        if frame.last_seq <= self.accepted_seq:
            # Every reading is already stored or being stored: nothing new to store.
            self.duplicates += len(frame.readings)
            frame.readings = []
            return Event(EV_DATA, frame)
        if frame.seq <= self.accepted_seq:
            # Partly seen: keep only the new tail.
            drop = self.accepted_seq - frame.seq + 1
            self.duplicates += drop
            frame.readings = frame.readings[drop:]
            frame.seq = self.accepted_seq + 1
        self.accepted_seq = frame.last_seq
        return Event(EV_DATA, frame)

    def _result(self, msg):
        command_id = _text_field(msg, "id", False, 64)
        ok = msg.get("ok")
        if command_id is None or type(ok) is not bool:
            return self._bad(ProtocolError(E_BAD_FRAME, "result needs string 'id' and boolean 'ok'"))
        self.strikes = 0
        return Event(EV_RESULT, {"id": command_id, "ok": ok, "msg": msg.get("msg"), "data": msg.get("data")})


# ---------------------------------------------------------------- device side

DEV_WELCOME = "welcome"  # payload: welcome dict
DEV_ACK = "ack"  # payload: int seq acknowledged (cumulative)
DEV_CMD = "cmd"  # payload: dict id, name, args
DEV_SLOW = "slow"  # payload: dict rate, retry_ms
DEV_ERROR = "error"  # payload: dict code, msg, seq


class DeviceSession:
    """Device-side protocol state: auth, what to send next, what is acknowledged.

    The driver owns the readings (RAM list, flash ring file, SQLite queue); it
    calls ``next_frame(pending)`` with readings not yet acknowledged, in seq
    order, and deletes readings through ``acked`` once the gateway confirms them.
    """

    def __init__(self, device_id, token=None, jwt=None, boot=None, max_batch=20, window=4,
                 loads=None, dumps=None):
        self.device_id = device_id
        self.token = token
        self.jwt = jwt
        self.boot = boot
        self.max_batch = max_batch
        self.window = window  # frames in flight before waiting for an ack
        self.loads = loads
        self.dumps = dumps or json.dumps
        self.acked = 0  # highest seq the gateway confirmed stored
        self.sent = 0  # highest seq sent on this connection
        self.in_flight = []  # last seq of each unacknowledged frame sent
        self.online = False
        self.rate = DEFAULT_RATE
        self.send_after_ms = 0  # set by slow-down: wait this long before the next frame
        self.welcome = None
        self.rejected = 0  # frames the gateway refused as invalid

    def auth_frame(self):
        """The first frame to send, or None when the credential went in a header."""
        msg = {"t": T_AUTH, "device_id": self.device_id}
        if self.jwt is not None:
            msg["jwt"] = self.jwt
        elif self.token is not None:
            msg["token"] = self.token
        else:
            return None
        return self.dumps(msg)

    def connection_lost(self):
        """Forget what was in flight: it is resent after the next welcome."""
        self.online = False
        self.sent = self.acked
        self.in_flight = []

    def receive(self, text):
        """Interpret one frame from the gateway; return (event kind, payload)."""
        msg = decode(text, self.loads, 1 << 20)
        kind = msg["t"]
        if kind == T_ACK:
            seq = msg.get("seq")
            if type(seq) is not int:
                raise ProtocolError(E_BAD_FRAME, "ack without integer seq")
            if seq > self.acked:
                self.acked = seq
            while self.in_flight and self.in_flight[0] <= seq:
                self.in_flight.pop(0)
            if self.sent < self.acked:
                self.sent = self.acked
            return (DEV_ACK, self.acked)
        if kind == T_WELCOME:
            self.online = True
            self.welcome = msg
            last = msg.get("last_seq")
            if type(last) is int and last > self.acked:
                self.acked = last
            self.sent = self.acked
            self.in_flight = []
            batch = msg.get("max_batch")
            if type(batch) is int and 0 < batch < self.max_batch:
                self.max_batch = batch
            rate = msg.get("rate")
            if is_number(rate) and rate > 0:
                self.rate = rate
            return (DEV_WELCOME, msg)
        if kind == T_CMD:
            return (DEV_CMD, {"id": msg.get("id"), "name": msg.get("name"), "args": msg.get("args") or {}})
        if kind == T_SLOW:
            rate = msg.get("rate")
            if is_number(rate) and rate > 0:
                self.rate = rate
            wait = msg.get("retry_ms")
            self.send_after_ms = wait if type(wait) is int and wait > 0 else int(1000 / self.rate)
            # the refused frame was not stored: send it again
            seq = msg.get("seq")
            self._rewind(seq)
            return (DEV_SLOW, msg)
        if kind == T_ERROR:
            seq = msg.get("seq")
            code = msg.get("code")
            if code == E_RATE or code == E_STORAGE:
                self._rewind(seq)  # not stored: send again
            else:
                self.rejected += 1  # invalid: resending would not help
                if type(seq) is int:
                    self._release(seq)
            return (DEV_ERROR, {"code": code, "msg": msg.get("msg"), "seq": seq})
        raise ProtocolError(E_UNKNOWN_TYPE, "unknown message type from gateway")

    def _rewind(self, seq):
        if type(seq) is int and seq > self.acked and seq <= self.sent:
            self.sent = seq - 1
            while self.in_flight and self.in_flight[-1] >= seq:
                self.in_flight.pop()

    def _release(self, seq):
        """Free the window slot of the refused frame that starts at ``seq``."""
        for index in range(len(self.in_flight)):
            if self.in_flight[index] >= seq:
                self.in_flight.pop(index)
                return

    def can_send(self):
        return self.online and len(self.in_flight) < self.window

    def next_frame(self, pending, up=None):
        """Build the next data frame from ``pending`` (Readings in seq order), or None.

        Takes the readings after the last one sent, up to ``max_batch``, stopping
        at the first gap in sequence numbers (a gap is sent as a new frame).
        """
        if not self.can_send():
            return None
        batch = []
        expect = 0
        for reading in pending:
            if reading.seq <= self.sent:
                continue
            if batch and reading.seq != expect:
                break
            batch.append(reading)
            expect = reading.seq + 1
            if len(batch) >= self.max_batch:
                break
        if not batch:
            return None
        self.sent = batch[-1].seq
        self.in_flight.append(self.sent)
        return self.dumps(data_message(batch[0].seq, batch, self.boot, up))

    def result_frame(self, command_id, ok, message=None, data=None):
        msg = {"t": T_RESULT, "id": command_id, "ok": ok}
        if message is not None:
            msg["msg"] = message
        if data is not None:
            msg["data"] = data
        return self.dumps(msg)

    def status_frame(self, fields):
        msg = {"t": T_STATUS}
        for key in fields:
            msg[key] = fields[key]
        return self.dumps(msg)
