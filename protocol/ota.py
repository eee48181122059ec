"""Edgewire over-the-air updates, the device side (no I/O): manifest checks, ECDSA P-256
verification and the download core. One implementation for the ESP32 firmware and the Pi agent.

The contract is the OTA section of docs/protocol.md (frames ``ota`` command, ``ota_get``,
``ota_chunk``, ``ota`` state). MicroPython subset like wire.py: no ``match``, no positional-only
parameters, no typing at run time; the types live in ota.pyi.

- ``verify(pubkey_hex, message, sig_hex)``: ECDSA over NIST P-256 with SHA-256, pure Python (the
  curve arithmetic is protocol/p256.py, imported at the first verification; ``unload_p256()``
  frees it again on a device short of heap).
- ``parse_manifest(text, ...)``: the manifest's exact text, checked field by field
  (OtaError with a stable code on the first problem).
- ``OtaCore``: given an offer it validates (signature first), then yields the ``ota_get``
  requests one at a time (at most one outstanding: the flow control), takes the ``ota_chunk``
  frames (the driver writes the bytes it returns), keeps a running SHA-256 per file, resumes
  at an offset after a reconnect, and after a power cut from state() + the bytes already on
  storage (absorb()). It says when every file matches (state ``verifying``): the driver then
  switches. DeviceSession (protocol/device.py) wires it to the ``ota`` command and the
  ``ota_chunk`` frames, so every driver gets it the same way.
"""

try:
    import hashlib
except ImportError:  # pragma: no cover - MicroPython builds that only have uhashlib
    import uhashlib as hashlib  # type: ignore[no-redef]

import binascii

from protocol.wire import E_BAD_REQUEST, E_OTA_UNKNOWN, T_OTA, T_OTA_GET, _strict_loads, encode, spelled_with

# Update states (the ``ota`` frame's ``state``).
S_DOWNLOADING = "downloading"
S_VERIFYING = "verifying"
S_TRIAL = "trial"
S_GOOD = "good"
S_ROLLED_BACK = "rolled_back"
S_FAILED = "failed"
STATES = (S_DOWNLOADING, S_VERIFYING, S_TRIAL, S_GOOD, S_ROLLED_BACK, S_FAILED)
FINAL = (S_GOOD, S_ROLLED_BACK, S_FAILED)  # an update in another state is not finished

# Refusal codes of the offer (the result's data.code) and reasons of a state frame.
C_BAD_SIGNATURE = "bad_signature"
C_BAD_MANIFEST = "bad_manifest"
C_WRONG_KIND = "wrong_kind"
C_RUNTIME_TOO_OLD = "runtime_too_old"
C_DISABLED = "ota_disabled"
C_BUSY = "busy"
C_NO_SPACE = "no_space"
R_BAD_HASH = "bad_hash"
R_BAD_SIGNATURE = "bad_signature"
R_NO_SPACE = "no_space"
R_CRASHED = "crashed"
R_NO_GATEWAY = "no_gateway"
R_HEALTH_CHECK = "health_check"
R_INSTALL = "install"
R_ABORTED = "aborted"

KINDS = ("esp32", "pi")
MAX_MANIFEST = 12000  # characters of manifest text (the ota command's limit)
MAX_FILES = 64
MAX_FILE_BYTES = {"esp32": 256 * 1024, "pi": 64 * 1024 * 1024}
MAX_GET = 4096  # the largest ota_get len
CHUNK = {"esp32": 2048, "pi": 4096}  # the len each kind asks for
STATE_VERSION = 1

_VERSION_CHARS = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz.+-"
_NAME_CHARS = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz_.-"
_HEX = "0123456789abcdef"


class OtaError(ValueError):
    """An offer or manifest refused; ``code`` is one of the C_* codes."""

    def __init__(self, code, message):
        super().__init__(message)
        self.code = code
        self.message = message


# ---------------------------------------------------------------- signatures (protocol/p256.py)


def _hex_int(text, length):
    """The integer a string of ``length`` lowercase hex digits spells, or None."""
    if not spelled_with(text, _HEX, length) or len(text) != length:
        return None
    return int(text, 16)


def valid_sig(text):
    """True for 128 lowercase hex characters (``r || s``)."""
    return _hex_int(text, 128) is not None


def parse_pubkey(text):
    """An uncompressed P-256 point as 130 hex chars (``04 || X || Y``) -> (x, y), or None when it
    is not one, or not on the curve."""
    if type(text) is not str:
        return None
    text = text.strip().lower()
    if len(text) != 130 or text[:2] != "04":
        return None
    x = _hex_int(text[2:66], 64)
    y = _hex_int(text[66:], 64)
    if x is None or y is None:
        return None
    from protocol.p256 import on_curve

    return (x, y) if on_curve(x, y) else None


def verify(pubkey, message, sig):
    """True when ``sig`` (128 hex chars, r || s) is a valid ECDSA P-256 / SHA-256 signature of
    ``message`` (bytes or str, UTF-8) by ``pubkey`` (130 hex chars, or an (x, y) from
    parse_pubkey). Never raises for bad input: False. The curve arithmetic is protocol/p256.py,
    imported here: a device may unload it (unload_p256) while it downloads."""
    point = pubkey if type(pubkey) is tuple else parse_pubkey(pubkey)
    if point is None or not valid_sig(sig):
        return False
    if type(message) is str:
        message = message.encode()
    from protocol.p256 import verify_digest

    return verify_digest(point, hashlib.sha256(message).digest(), int(sig[:64], 16), int(sig[64:], 16))


def unload_p256():
    """Drop protocol/p256.py from memory (about 2.7 KB of heap on MicroPython); the next verify()
    imports it again."""
    import sys

    sys.modules.pop("protocol.p256", None)
    import protocol

    if hasattr(protocol, "p256"):
        delattr(protocol, "p256")


# ---------------------------------------------------------------- manifest


class Manifest:
    """A checked manifest: its exact text and fields. ``files`` holds (name, size, sha256 hex)."""

    __slots__ = ("created_ms", "files", "kind", "min_runtime", "release", "text", "total", "version")

    def __init__(self, text, release, kind, version, min_runtime, files, created_ms):
        self.text = text
        self.release = release
        self.kind = kind
        self.version = version
        self.min_runtime = min_runtime
        self.files = files
        self.created_ms = created_ms
        total = 0
        for entry in files:
            total += entry[1]
        self.total = total


def valid_version(text):
    """Versions: 1-32 characters of 0-9 A-Z a-z . + -"""
    return spelled_with(text, _VERSION_CHARS, 32)


def valid_file_name(text):
    """File names: 1-64 characters of A-Z a-z 0-9 _ . -, flat (no ``/``), never ``.`` or with ``..``."""
    return spelled_with(text, _NAME_CHARS, 64) and text != "." and ".." not in text


def runtime_tuple(text):
    """"1.22.0" -> (1, 22, 0); None when it is not 1-4 dot-separated numbers."""
    if type(text) is not str or not 0 < len(text) <= 32:
        return None
    parts = text.split(".")
    if len(parts) > 4:
        return None
    out = []
    for part in parts:
        if not part or len(part) > 6:
            return None
        for ch in part:
            if ch not in "0123456789":
                return None
        out.append(int(part))
    return tuple(out)


def runtime_ok(running, minimum):
    """True when the running runtime (a tuple of ints, as sys.implementation.version / sys.version_info
    start) is at least ``minimum`` (a tuple from runtime_tuple)."""
    have = []
    for part in running:
        if type(part) is not int:
            break
        have.append(part)
    width = len(minimum)
    while len(have) < width:
        have.append(0)
    return tuple(have[:width]) >= minimum


def _bad(message):
    return OtaError(C_BAD_MANIFEST, "bad manifest: " + message)


def parse_manifest(text, loads=None):
    """Check a manifest's exact text (docs/protocol.md, OTA section); return a Manifest or raise
    OtaError(bad_manifest). Unknown keys are ignored (a newer gateway may send more)."""
    if type(text) is not str or not 0 < len(text) <= MAX_MANIFEST:
        raise _bad("the text must be 1-" + str(MAX_MANIFEST) + " characters")
    try:
        msg = (loads or _strict_loads)(text)
    except Exception:  # ValueError, a decoder's own error
        raise _bad("not JSON")
    if type(msg) is not dict:
        raise _bad("not a JSON object")
    if msg.get("v") != 1 or type(msg.get("v")) is not int:
        raise _bad("'v' must be 1")
    kind = msg.get("kind")
    if kind not in KINDS:
        raise _bad("'kind' must be one of " + ", ".join(KINDS))
    version = msg.get("version")
    if not valid_version(version):
        raise _bad("'version' must be 1-32 characters of 0-9 A-Z a-z . + -")
    release = msg.get("release")
    if release != kind + "-" + version:
        raise _bad("'release' must be '<kind>-<version>'")
    minimum = runtime_tuple(msg.get("min_runtime"))
    if minimum is None:
        raise _bad("'min_runtime' must be a version such as 1.22.0")
    created = msg.get("created_ms")
    if type(created) is not int or created < 0:
        raise _bad("'created_ms' must be a non-negative integer")
    raw = msg.get("files")
    if type(raw) is not list or not 0 < len(raw) <= MAX_FILES:
        raise _bad("'files' must list 1-" + str(MAX_FILES) + " files")
    limit = MAX_FILE_BYTES[kind]
    files = []
    seen = {}
    for item in raw:
        if type(item) is not dict:
            raise _bad("each file must be an object")
        name = item.get("name")
        size = item.get("size")
        digest = item.get("sha256")
        if not valid_file_name(name):
            raise _bad("file names are 1-64 characters of A-Z a-z 0-9 _ . - (flat)")
        if name in seen:
            raise _bad("file '" + name + "' listed twice")
        seen[name] = True
        if type(size) is not int or not 0 <= size <= limit:
            raise _bad("file '" + name + "': 'size' must be 0.." + str(limit))
        if _hex_int(digest, 64) is None:
            raise _bad("file '" + name + "': 'sha256' must be 64 lowercase hex characters")
        files.append((name, size, digest))
    return Manifest(text, release, kind, version, minimum, files, created)


# ---------------------------------------------------------------- the download core


class OtaCore:
    """One device's update, across connections (and, with state()/restore(), across a power cut).

    ``kind``: "esp32" or "pi"; ``running``: the version running now; ``runtime``: the runtime's
    version tuple; ``pubkey``: the release key (130 hex chars; None: every offer is refused
    ``ota_disabled``); ``free()``: bytes free for the new files, or None when unknown; ``chunk``:
    the ota_get len. Drivers call, in this order of events:

    - ``offer(args)`` (the ``ota`` command's handler; DeviceSession calls it): (ok, msg, data).
      A new download makes ``begin_due`` True: the driver empties the slot, saves state(), and
      calls ``begun()``.
    - ``next_frame()`` while online: the state frame when one is due, else the next ota_get
      (one outstanding), else None.
    - ``on_chunk(msg)`` for each ota_chunk: (file name, offset, bytes) for the driver to write,
      or None (a chunk not asked for, or the update failed: see ``stage``/``reason``).
    - ``connection_lost()`` / ``online()`` around reconnects; ``refused(code)`` when the gateway
      answered an ota_get with an error.
    - When every file is in and matches, ``stage`` is ``verifying``: the driver checks what it
      wrote and switches (``set_state``); ``fail(reason)`` on its own errors.
    """

    def __init__(self, kind, running, runtime, pubkey=None, free=None, chunk=None, dumps=None, loads=None):
        self.kind = kind
        self.running = running
        self.runtime = runtime
        self.key = parse_pubkey(pubkey) if pubkey else None
        self.free = free
        self.chunk = chunk if chunk is not None else CHUNK.get(kind, 2048)
        self.dumps = dumps or encode
        self.loads = loads
        self.manifest = None
        self.sig = None
        self.release = None
        self.stage = None  # one of STATES, or None: no update
        self.reason = None
        self.index = 0  # the file being fetched
        self.off = 0  # bytes of it received
        self.done = 0  # bytes of every file received
        self.outstanding = False  # an ota_get is unanswered
        self.report_due = False
        self.begin_due = False
        self._hash = None

    # ------------------------------------------------------------ the offer
    def busy(self):
        """An update is in progress (downloading, verifying, or the new app on trial)."""
        return self.stage is not None and self.stage not in FINAL

    def offer(self, args):
        """The ``ota`` command: (ok, message, data). Checks in the contract's order of cost:
        disabled, signature format, busy, the signature, the manifest, kind, version, runtime, space."""
        text = args.get("manifest")
        sig = args.get("sig")
        if self.key is None:
            return False, "no ota_pubkey on this device: updates are disabled", {"code": C_DISABLED}
        if type(text) is not str or not valid_sig(sig):
            return False, "bad signature: sig must be 128 lowercase hex characters", {"code": C_BAD_SIGNATURE}
        if self.busy():
            if self.manifest is not None and text == self.manifest.text and self.stage == S_DOWNLOADING:
                return True, "downloading " + self.release, None  # the same offer again: go on
            return False, "busy: " + str(self.release) + " is " + str(self.stage), {"code": C_BUSY}
        if not verify(self.key, text, sig):
            return False, "bad signature: the manifest is not signed by this device's release key", \
                {"code": C_BAD_SIGNATURE}
        try:
            manifest = parse_manifest(text, self.loads)
        except OtaError as err:
            return False, err.message, {"code": err.code}
        if manifest.kind != self.kind:
            return False, "wrong kind: " + manifest.kind + " release for a " + self.kind + " device", \
                {"code": C_WRONG_KIND}
        if manifest.version == self.running:
            return True, "already running " + manifest.version, {"state": S_GOOD}
        if not runtime_ok(self.runtime, manifest.min_runtime):
            return False, "runtime too old: the release needs " + ".".join([str(p) for p in manifest.min_runtime]), \
                {"code": C_RUNTIME_TOO_OLD}
        free = self.free() if self.free is not None else None
        if free is not None and manifest.total > free:
            return False, "no space: " + str(manifest.total) + " bytes needed, " + str(free) + " free", \
                {"code": C_NO_SPACE}
        self._start(manifest, sig)
        self.begin_due = True
        return True, "downloading " + manifest.release, None

    def _start(self, manifest, sig):
        self.manifest = manifest
        self.sig = sig
        self.release = manifest.release
        self.index = 0
        self.off = 0
        self.done = 0
        self.outstanding = False
        self._hash = hashlib.sha256()
        self._set(S_DOWNLOADING, None)
        self._advance()  # files of 0 bytes

    def begun(self):
        """The driver has emptied the slot and saved state(): requests may start."""
        self.begin_due = False

    # ------------------------------------------------------------ states
    def _set(self, state, reason):
        self.stage = state
        self.reason = reason
        self.report_due = True

    def set_state(self, state, reason=None, release=None):
        """A driver's own step (trial, good, rolled_back, failed); ``release`` names it when this
        core did not download it (the app that boots after the switch). The frame is due."""
        if release is not None:
            self.release = release
        self._set(state, reason)
        self.outstanding = False

    def fail(self, reason):
        """The update failed (``reason``: bad_hash, no_space, aborted, ...): stop requesting."""
        self.set_state(S_FAILED, reason)
        self.begin_due = False

    def refused(self, code):
        """The gateway answered the outstanding ota_get with error ``code`` (ota_unknown: the release
        was withdrawn or is not offered to this device): the update is aborted. False when no
        request was outstanding (the error is about something else)."""
        if not self.outstanding or self.stage != S_DOWNLOADING or (code != E_OTA_UNKNOWN and code != E_BAD_REQUEST):
            return False
        self.fail(R_ABORTED)
        return True

    def online(self):
        """A new connection got its welcome: the state goes again while the update is not finished."""
        self.outstanding = False
        if self.stage is not None and self.stage not in FINAL:
            self.report_due = True

    def connection_lost(self):
        """The answer to the outstanding request will not come: ask again after the reconnect."""
        self.outstanding = False

    # ------------------------------------------------------------ frames
    def position(self):
        """(file name, offset) the download is at, or None when not downloading."""
        if self.stage != S_DOWNLOADING or self.manifest is None:
            return None
        return self.manifest.files[self.index][0], self.off

    def state_frame(self):
        """The ``ota`` state frame for now (a dict)."""
        msg = {"t": T_OTA, "release": self.release, "state": self.stage}
        if self.reason is not None:
            msg["reason"] = self.reason
        if self.stage == S_DOWNLOADING and self.manifest is not None:
            msg["done"] = self.done
            msg["total"] = self.manifest.total
        return msg

    def next_frame(self):
        """What to send now: the state frame when due, else the next ota_get, else None."""
        if self.report_due and self.stage is not None and self.release is not None:
            self.report_due = False
            return self.dumps(self.state_frame())
        if self.stage != S_DOWNLOADING or self.outstanding or self.begin_due:
            return None
        name, size, _digest = self.manifest.files[self.index]
        want = size - self.off
        self.outstanding = True
        return self.dumps({"t": T_OTA_GET, "release": self.release, "file": name, "off": self.off,
                           "len": self.chunk if want > self.chunk else want})

    def on_chunk(self, msg):
        """An ota_chunk frame: (name, offset, bytes) to write, or None. A chunk for another
        release, file or offset (a late answer) is ignored; one that contradicts the manifest
        (its size, a wrong length, data that is not base64) fails the update ``bad_hash``."""
        if self.stage != S_DOWNLOADING or not self.outstanding:
            return None
        name, size, _digest = self.manifest.files[self.index]
        if msg.get("release") != self.release or msg.get("file") != name or msg.get("off") != self.off:
            return None
        self.outstanding = False
        data = msg.get("data")
        try:
            data = binascii.a2b_base64(data.encode()) if type(data) is str and data else None
        except ValueError:  # binascii.Error is a ValueError
            data = None
        want = size - self.off
        want = self.chunk if want > self.chunk else want
        if msg.get("size") != size or data is None or len(data) != want:
            self.fail(R_BAD_HASH)
            return None
        offset = self.off
        self._take(data)
        return name, offset, data

    def absorb(self, data):
        """Bytes already on storage for position()'s file from its offset (after restore()): hashed
        and counted as if received. Returns how many were taken (0: not downloading); a file that
        completes moves on (and may fail bad_hash)."""
        if self.stage != S_DOWNLOADING or not data:
            return 0
        size = self.manifest.files[self.index][1]
        take = size - self.off
        if len(data) > take:
            data = data[:take]
        self._take(data)
        return len(data)

    def _take(self, data):
        self._hash.update(data)
        self.off += len(data)
        self.done += len(data)
        self._advance()

    def _advance(self):
        files = self.manifest.files
        while self.stage == S_DOWNLOADING and self.off >= files[self.index][1]:
            digest = binascii.hexlify(self._hash.digest()).decode()
            if digest != files[self.index][2]:
                self.fail(R_BAD_HASH)
                return
            self.index += 1
            self.off = 0
            self._hash = hashlib.sha256()
            if self.index >= len(files):
                self.index = len(files) - 1
                self.off = files[self.index][1]
                self._set(S_VERIFYING, None)
                return

    # ------------------------------------------------------------ across a power cut
    def state(self):
        """A JSON-able snapshot of the download (None when there is none to resume): the manifest's
        text and signature. Offsets are not in it: after restore() the driver absorb()s the bytes
        it has on storage, which are the truth after a power cut."""
        if self.manifest is None or self.stage != S_DOWNLOADING:
            return None
        return {"v": STATE_VERSION, "manifest": self.manifest.text, "sig": self.sig}

    def restore(self, snapshot):
        """Take back a state() snapshot: the signature is checked again (nothing is trusted from
        storage alone) and the download starts over at the first file, at offset 0; the driver
        then absorb()s what it has. False (nothing changed) when it is not a valid snapshot."""
        if type(snapshot) is not dict or snapshot.get("v") != STATE_VERSION or self.key is None:
            return False
        text = snapshot.get("manifest")
        sig = snapshot.get("sig")
        if type(text) is not str or not verify(self.key, text, sig):
            return False
        try:
            manifest = parse_manifest(text, self.loads)
        except OtaError:
            return False
        if manifest.kind != self.kind:
            return False
        self._start(manifest, sig)
        return True
