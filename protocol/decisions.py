"""Edgewire protocol v1, the device side: what the device core decides (no I/O).

The kinds of a Decision (what one gateway frame means) and of a Reconnect (what to do when a
connection ends), the close-code table, ``refusal_code`` (what an HTTP refusal's body says),
``Backoff`` (the one reconnect backoff every driver uses) and ``Policy``. DeviceSession
(protocol/device.py) makes the decisions; its public names include all of these.
MicroPython-safe like wire.py.
"""

try:
    import random
except ImportError:  # pragma: no cover - MicroPython builds that only have urandom
    import urandom as random  # type: ignore[no-redef]

from protocol.wire import (
    CLOSE_ADDRESS,
    CLOSE_AUTH_FAILED,
    CLOSE_DISABLED,
    CLOSE_EXPIRED,
    CLOSE_FOR_ERROR,
    CLOSE_IDENTITY,
    CLOSE_REPLACED,
    CLOSE_TOO_BIG,
    CLOSE_TOO_MANY_ERRORS,
    _strict_loads,
)

__all__ = (  # public in protocol.device too
    "CLOSE_ACTIONS",
    "DEVICE",
    "D_ACK",
    "D_CLOSING",
    "D_COMMAND",
    "D_DROP",
    "D_INVALID",
    "D_NOTE",
    "D_OTA_CHUNK",
    "D_RESEND",
    "D_SLOW",
    "D_WELCOME",
    "ENC_CBOR",
    "ENC_JSON",
    "HOURLY_MS",
    "LOADGEN",
    "MAX_RATE",
    "MAX_RETRY_MS",
    "MIN_RATE",
    "REFUSAL_MAX_BYTES",
    "REPEATED",
    "REPEATS_KEPT",
    "REPEAT_MAX_BYTES",
    "R_BACKOFF",
    "R_HOURLY",
    "R_REFRESH",
    "R_SLOW",
    "R_STOP",
    "STATE_VERSION",
    "Backoff",
    "Decision",
    "Policy",
    "Reconnect",
    "refusal_code",
)

# What one gateway frame means (Decision.kind).
D_WELCOME = "welcome"  # online; outbox reconciled: renumbered by .renumber, or acked through .seq
D_ACK = "ack"  # acked through .seq; .count readings removed
D_DROP = "drop"  # a frame in flight was refused as invalid: .seq..last dropped and counted rejected
D_RESEND = "resend"  # a frame was not stored (rate_limited / storage_unavailable): resent from .seq
D_SLOW = "slow"  # slow-down: resent from .seq after .wait_ms, then paced at session.rate
D_COMMAND = "command"  # a command: send .reply; reboot after sending when .name == "reboot" and .ok
# (.ok is False for a repeated command id: .code REPEATED, .reply the first answer again, nothing run)
D_CLOSING = "closing"  # an error frame that ends the connection; close .close_code follows
D_NOTE = "note"  # an error frame about no frame in flight: log .code / .message
D_INVALID = "invalid"  # a gateway frame the session could not read (bad JSON, unknown type): log
D_OTA_CHUNK = "ota_chunk"  # an update's chunk: write .data at offset .seq of file .name (protocol/ota.py)

# What to do after a connection ended (Reconnect.action), docs/protocol.md section 11.
R_BACKOFF = "backoff"  # reconnect after .delay_ms (exponential backoff with jitter)
R_SLOW = "slow"  # reconnect after .delay_ms at the backoff cap (too many errors)
R_HOURLY = "hourly"  # one attempt per hour (device disabled)
R_STOP = "stop"  # no attempt until the credential changes (set_credential); keep sampling
R_REFRESH = "refresh"  # get a new credential from the driver's provider, then refreshed()

HOURLY_MS = 3600000

# Encodings a driver may ask for (DeviceSession(encoding=...)): JSON only, or CBOR data frames when
# the gateway selects edgewire.v1.cbor at the upgrade (JSON otherwise).
ENC_JSON = "json"
ENC_CBOR = "cbor"

# Commands are delivered at least once (a gateway may send one again after the device moved to
# another instance): the answers to the last REPEATS_KEPT command ids are kept, and a repeated id
# gets its first answer again without running the command twice. An answer longer than
# REPEAT_MAX_BYTES is kept without its data (the ESP32's heap is small).
REPEATS_KEPT = 8
REPEAT_MAX_BYTES = 512
REPEATED = "repeated"

_NO_STATUS = 1005  # close frame without a code (RFC 6455)
_ABNORMAL = 1006  # no close frame at all: the connection dropped

# Close code -> action. Every code not listed (1000, 1001, 1006, 1009, 1011, 1012, 1013,
# 4002, 4008, 4009, unknown ones) backs off; 1009 also halves the batch size.
CLOSE_ACTIONS = {
    CLOSE_TOO_MANY_ERRORS: R_SLOW,
    CLOSE_AUTH_FAILED: R_STOP,
    CLOSE_DISABLED: R_HOURLY,
    CLOSE_EXPIRED: R_REFRESH,
    CLOSE_REPLACED: R_STOP,
    CLOSE_ADDRESS: R_STOP,
    CLOSE_IDENTITY: R_STOP,
}

# An HTTP refusal's body is read only up to this size (the gateway's is a small JSON object).
REFUSAL_MAX_BYTES = 1024

# state() / restore(): the snapshot's format version.
STATE_VERSION = 1

_ACTION_TEXT = {
    R_BACKOFF: "reconnect in %d ms",
    R_SLOW: "reconnect slowly, in %d ms; the device sent invalid frames: check its firmware",
    R_HOURLY: "retry in %d ms (hourly): the device is disabled at the gateway",
    R_STOP: "stopped: no reconnect until the credential changes%s",
    R_REFRESH: "the credential expired: getting a new one%s",
}


def _close_name(code):
    """The error code (or RFC 6455 name) a close code stands for."""
    for error in CLOSE_FOR_ERROR:
        if CLOSE_FOR_ERROR[error] == code:
            return error
    if code == CLOSE_TOO_BIG:
        return "message too big"
    if code == _ABNORMAL:
        return "connection lost"
    return "close"


def refusal_code(body, loads=None):
    """The error code of an HTTP refusal's JSON body (``{"code": ..., "message": ...}``,
    docs/protocol.md section 2), or None: no body, longer than REFUSAL_MAX_BYTES, not UTF-8,
    not JSON, not an object, or no code of 1-64 characters. Never raises: the body comes from
    the network. ``body`` is bytes, bytearray or str; ``loads`` as DeviceSession's."""
    if body is None or len(body) > REFUSAL_MAX_BYTES:
        return None
    try:
        text = body if type(body) is str else bytes(body).decode()
        msg = (loads or _strict_loads)(text)
    except Exception:  # ValueError, UnicodeError, a decoder's own error, nesting too deep
        return None
    code = msg.get("code") if type(msg) is dict else None
    return code if type(code) is str and 0 < len(code) <= 64 else None


def _fingerprint(credential):
    """A CRC-32 of the credential: state() records which credential a stop was for without the secret."""
    from binascii import crc32

    return crc32((credential or "").encode()) & 0xFFFFFFFF


def _rand():
    return random.getrandbits(16) / 65536


# Bounds on what the gateway may ask for (welcome "rate", slow "rate" and "retry_ms").
MIN_RATE = 0.001  # frames/s: one frame per 1,000 s at the slowest
MAX_RATE = 1000.0
MAX_RETRY_MS = 3600000  # a slow-down longer than an hour is taken as an hour


class Backoff:
    """Exponential backoff: base, 2*base, 4*base ... cap, each delay drawn from [d/2, d].

    ``rand()`` returns a float in [0, 1) (injected so tests are exact). The clock is not
    needed here: DeviceSession adds the delay to the ``now_ms`` its caller passes in.
    """

    def __init__(self, base_ms=1000, cap_ms=60000, rand=None):
        self.base_ms = int(base_ms) if base_ms >= 1 else 1
        self.cap_ms = int(cap_ms) if cap_ms >= self.base_ms else self.base_ms
        self.rand = rand or _rand
        self.attempt = 0

    def draw(self, delay):
        """A delay in [delay/2, delay] (equal jitter)."""
        half = delay // 2
        return half + int(self.rand() * (delay - half + 1))

    def next_ms(self):
        """The next delay; counts one more failed attempt."""
        delay = self.base_ms << self.attempt if self.attempt < 24 else self.cap_ms
        if delay >= self.cap_ms:
            delay = self.cap_ms
        else:
            self.attempt += 1
        return self.draw(delay)

    def at_cap_ms(self):
        """A delay at the cap, and stay there until reset()."""
        self.attempt = 24
        return self.draw(self.cap_ms)

    def reset(self):
        self.attempt = 0


class Policy:
    """What a driver may skip. Devices use DEVICE; the load generator uses LOADGEN."""

    def __init__(self, reconnect=True, obey_slow=True, run_commands=True):
        self.reconnect = reconnect  # False: every closed/refused/failed answers R_STOP
        self.obey_slow = obey_slow  # False: slow frames still rewind, but no wait and no pacing
        self.run_commands = run_commands  # False: every command is answered ok without running it


DEVICE = Policy()
LOADGEN = Policy(False, False, False)  # a benchmark client: one connection, full speed, commands not run


class Decision:
    """What one gateway frame means for the device (see the D_* kinds)."""

    __slots__ = ("close_code", "code", "count", "data", "kind", "last", "message", "name", "ok", "renumber",
                 "reply", "seq", "wait_ms")

    def __init__(self, kind, seq=0, last=0, count=0, renumber=0, wait_ms=0, reply=None, name=None, ok=True,
                 code=None, message="", close_code=0, data=None):
        self.kind = kind
        self.seq = seq
        self.last = last
        self.count = count
        self.renumber = renumber
        self.wait_ms = wait_ms
        self.reply = reply
        self.name = name
        self.ok = ok
        self.code = code
        self.message = message
        self.close_code = close_code
        self.data = data


class Reconnect:
    """What to do after a connection ended (see the R_* actions). ``at_ms`` = -1 when stopped."""

    __slots__ = ("action", "at_ms", "code", "delay_ms", "error", "reason")

    def __init__(self, action, delay_ms, at_ms, code, reason, error=None):
        self.action = action
        self.delay_ms = delay_ms
        self.at_ms = at_ms
        self.code = code  # the close code, or the HTTP status of a refusal (0: unreachable)
        self.reason = reason
        self.error = error  # the error code an HTTP refusal's body named (None: none readable)


def _seq_or_zero(value):
    return value if type(value) is int and value >= 0 else 0
