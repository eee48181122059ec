"""Over-the-air updates on the ESP32: the I/O around protocol.ota.OtaCore (docs/ota.md).

The core decides (offer checks, signature, requests, hashes, states); this module writes the
inactive slot's files, keeps the download's state on flash for a power cut, checks the files
it wrote, switches (start_trial: /app_try, written by slots.write with an atomic rename) and
resets into the trial; in the new app it marks the trial good after the gateway's welcome, or
resets when no welcome comes within ``ota_trial_s``; after a fallback it reports ``rolled_back``.

This updater lives in the app slot and is replaced with the app: a new app brings its own
updater. The old one only ever writes the inactive slot and the pointer; the logic that must
never break (which slot boots, the trial count, the fallback) is in boot.py and slots.py.

Release files are flat names (docs/protocol.md): ``protocol.wire.mpy`` is stored as
``protocol/wire.mpy`` (the dots of the module path before the extension become directories).
"""

import binascii
import hashlib
import os
import sys

import slots
from micropython import const

from protocol.ota import (
    S_DOWNLOADING,
    S_FAILED,
    S_GOOD,
    S_ROLLED_BACK,
    S_TRIAL,
    S_VERIFYING,
    OtaCore,
    unload_p256,
)

STATE = slots.DOWNLOAD  # the download in progress: {"slot": ..., "snap": OtaCore.state()}
_READ = const(512)  # bytes per read when hashing files back from flash


def log(*parts):
    print("ota:", *parts)


def slot_path(slot, name):
    """The path of release file ``name`` in ``slot`` ("protocol.wire.mpy" -> /app_b/protocol/wire.mpy)."""
    cut = name.rfind(".")
    stem = name[:cut] if cut > 0 else name
    return slots.directory(slot) + "/" + stem.replace(".", "/") + (name[cut:] if cut > 0 else "")


def _wipe(path):
    """Remove a directory tree (the inactive slot before a download)."""
    try:
        entries = list(os.ilistdir(path))
    except OSError:
        return
    for entry in entries:
        child = path + "/" + entry[0]
        if entry[1] == 0x4000:
            _wipe(child)
        else:
            os.remove(child)
    os.rmdir(path)


def _mkdirs(path):
    cur = ""
    for part in path.split("/")[1:-1]:
        cur += "/" + part
        try:
            os.mkdir(cur)
        except OSError:
            pass


def _tree_bytes(path):
    total = 0
    try:
        entries = list(os.ilistdir(path))
    except OSError:
        return 0
    for entry in entries:
        if entry[1] == 0x4000:
            total += _tree_bytes(path + "/" + entry[0])
        elif len(entry) > 3:
            total += entry[3]
    return total


def inactive():
    """The slot an update may write: never the good one, never the running one."""
    return "b" if slots.current()["slot"] == "a" else "a"


def start_trial(slot, release):
    """The switch: the next boot runs ``slot`` on trial (boot.py counts its boots)."""
    slots.write(slots.TRY, {"slot": slot, "release": release, "boots": 0, "why": None})


def failed_trial(why):
    """The trial app gives up (``why``: no_gateway); the reset that follows counts as a failed boot."""
    attempt = slots.read(slots.TRY)
    if attempt is not None:
        attempt["why"] = why
        slots.write(slots.TRY, attempt)


def mark_good():
    """The trial app is good: it becomes the current slot (then the trial record goes)."""
    attempt = slots.trial if slots.trial is not None else slots.read(slots.TRY)
    if attempt is None:
        return False
    slots.write(slots.CUR, {"slot": attempt["slot"], "release": attempt.get("release")})
    slots.remove(slots.TRY)
    return True


class OtaAgent:
    """The ESP32's updater: ``core`` goes to the DeviceSession (ota=); the app calls begin(),
    write(), welcome(), sent() and tick() as the session's decisions say."""

    def __init__(self, cfg, version, up_ms):
        self.core = OtaCore("esp32", version, sys.implementation.version, cfg["ota_pubkey"], free=self.free)
        self.trial_ms = cfg["ota_trial_s"] * 1000
        self.boot_ms = up_ms
        self.slot = None  # the slot being written
        self.buf = bytearray(_READ)  # allocated once: hashing files back never allocates per read
        self.result = False  # a fallback's rolled_back is to be reported, then /ota_result removed
        self._resume()
        if self.core.stage is None:
            self._after_boot()
        unload_p256()  # the curve arithmetic is needed again only for the next offer

    def offer(self, args):
        """The ``ota`` command (commands.ota): the core's checks; the curve code is freed after."""
        try:
            return self.core.offer(args)
        finally:
            unload_p256()

    # ------------------------------------------------------------ boot
    def _after_boot(self):
        result = slots.read(slots.RESULT)
        if result is not None and type(result.get("release")) is str:
            self.core.set_state(S_ROLLED_BACK, result.get("reason") or "crashed", result["release"])
            self.result = True
            log("rolled back from", result["release"], "(" + str(self.core.reason) + ")")
        elif slots.trial is not None:
            self.core.set_state(S_TRIAL, None, slots.trial.get("release"))
            log("on trial:", slots.trial.get("release"), "boot", slots.trial.get("boots"))

    def _resume(self):
        """After a power cut mid-download: the saved offer, checked again, and the bytes on flash."""
        saved = slots.read(STATE)
        if saved is None:
            return
        slot = saved.get("slot")
        # on trial, the download was finished and switched to (the power went before its record was
        # removed): what runs now is that slot, never to be written
        if slots.trial is not None or slot != inactive() or not self.core.restore(saved.get("snap")):
            log("saved download dropped")
            slots.remove(STATE)
            return
        self.slot = slot
        buf = self.buf
        core = self.core
        while core.stage == S_DOWNLOADING:
            name, off = core.position()
            try:
                with open(slot_path(slot, name), "rb") as f:
                    f.seek(off)
                    n = f.readinto(buf)
            except OSError:
                break
            if not n or not core.absorb(memoryview(buf)[:n]):
                break
        if core.stage == S_FAILED:
            self._failed()
        else:
            log("resuming", core.release, "at", core.done, "of", core.manifest.total, "bytes")

    # ------------------------------------------------------------ download
    def free(self):
        """Bytes an update may use: free blocks plus what the inactive slot holds now."""
        try:
            st = os.statvfs("/")
            return st[0] * st[4] + _tree_bytes(slots.directory(inactive()))
        except (OSError, AttributeError):
            return None

    def begin(self):
        """A new offer was taken: empty the inactive slot and save the offer, then requests may start."""
        core = self.core
        self.slot = inactive()
        try:
            _wipe(slots.directory(self.slot))
            os.mkdir(slots.directory(self.slot))
            slots.write(STATE, {"slot": self.slot, "snap": core.state()})
        except OSError as err:
            log("cannot prepare slot", self.slot, err)
            core.fail("no_space")
            return
        core.begun()
        log("downloading", core.release, "into slot", self.slot, core.manifest.total, "bytes")

    def write(self, name, off, data):
        """One chunk from the core: appended to its file (created at offset 0)."""
        path = slot_path(self.slot, name)
        try:
            if off == 0:
                _mkdirs(path)
            with open(path, "ab" if off else "wb") as f:
                f.write(data)
        except OSError as err:
            log("write failed:", err)
            self.core.fail("no_space")
        if self.core.stage == S_FAILED:
            self._failed()

    def _failed(self):
        log("update", self.core.release, "failed:", self.core.reason)
        slots.remove(STATE)
        if self.slot is not None:
            try:
                _wipe(slots.directory(self.slot))
            except OSError:
                pass

    def check_files(self):
        """Every file read back from flash against the manifest (what was written, not what came)."""
        buf = self.buf
        for name, size, digest in self.core.manifest.files:
            h = hashlib.sha256()
            got = 0
            try:
                with open(slot_path(self.slot, name), "rb") as f:
                    while True:
                        n = f.readinto(buf)
                        if not n:
                            break
                        h.update(memoryview(buf)[:n])
                        got += n
            except OSError:
                return False
            if got != size or binascii.hexlify(h.digest()).decode() != digest:
                return False
        return True

    def tick(self, now, app):
        """From the main loop: switch once verified (its frame sent); the trial's deadline."""
        core = self.core
        if core.stage == S_VERIFYING and not core.report_due:
            if not self.check_files():
                core.fail("bad_hash")
                self._failed()
                return
            start_trial(self.slot, core.release)
            slots.remove(STATE)
            log("switching to slot", self.slot, "for", core.release, ": reset into the trial")
            app.reboot()
        elif core.stage == S_TRIAL and now - self.boot_ms > self.trial_ms:
            log("no welcome from the gateway within", self.trial_ms // 1000, "s on trial: reset")
            failed_trial("no_gateway")
            app.reboot()

    def welcome(self, app, send):
        """Online: a trial app with its watchdog running is good now (its trial frame first)."""
        core = self.core
        if core.stage != S_TRIAL:
            return
        if app.watchdog.wdt is None:
            log("not marking the trial good: the watchdog is not running")
            return
        frame = core.next_frame()
        if frame is not None:
            send(frame)
        mark_good()
        core.set_state(S_GOOD)
        log("trial good:", core.release, "is the current app")

    def sent(self):
        """After the session's OTA frames went out: a reported fallback is forgotten."""
        if self.result and not self.core.report_due:
            slots.remove(slots.RESULT)
            self.result = False

    def updating(self):
        return self.core.stage == S_DOWNLOADING or self.core.stage == S_VERIFYING
