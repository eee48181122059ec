"""The agent's side of an over-the-air update (docs/ota.md#pi-agent): download, hand over, report.

protocol/ota.py's OtaCore decides everything the contract fixes (the offer's checks, one
``ota_get`` outstanding, each chunk against the manifest, the state frames); this module is
its Pi driver, unprivileged, in ``<state_dir>/ota/``.

DeviceSession (protocol/device.py) runs the core: the ``ota`` command, the ``ota_chunk``
frames (a D_OTA_CHUNK decision: the uplink calls ``write()``), the frames to send. Files:

- ``dl/<release>/<file>`` the wheel being downloaded; ``download.json`` the core's state(),
  so a restarted agent resumes where its file ends (the core hashes those bytes again);
- once the core says ``verifying``: the file is hashed again on disk, moved to
  ``staged/<release>/`` and ``request.json`` written. The agent installs nothing itself:
  edgewire-agent-update (edge/update.py, root, its own unit) checks the signature again,
  installs, switches, health-checks and rolls back;
- the updater's ``result.json`` (trial, good, rolled_back, failed) is handed to the core,
  which sends it as an ``ota`` frame; ``reported.json`` keeps a finished one from being sent
  again by the next agent process.
"""

from __future__ import annotations

import errno
import logging
import os
import shutil
import sys
from pathlib import Path
from typing import Any

from edge.update import Paths, file_sha256, read_json, write_json
from protocol import ota

LOG = logging.getLogger("edgewire.edge.ota")
CHUNK = ota.CHUNK["pi"]


def new_core(version: str, pubkey: str, state_dir: str) -> ota.OtaCore:
    """The core for this agent: kind pi, this Python, the free space of the state directory."""

    def free() -> int | None:
        try:
            return shutil.disk_usage(state_dir).free
        except OSError:
            return None

    return ota.OtaCore("pi", version, tuple(sys.version_info[:3]), pubkey=pubkey or None, free=free, chunk=CHUNK)


class PiUpdates:
    """Files for one OtaCore: call ``start()`` once, ``poll()`` often, ``write()`` for each chunk taken."""

    def __init__(self, core: ota.OtaCore, ota_dir: Path) -> None:
        self.core = core
        self.paths = Paths(ota_dir)
        self.dl = ota_dir / "dl"
        self.download_state = ota_dir / "download.json"
        self.reported = ota_dir / "reported.json"
        self.seen: tuple[Any, ...] | None = None  # the result.json last handed to the core
        self.final_pending = False

    # ------------------------------------------------------------ start
    def start(self) -> None:
        """Take up what an earlier agent process left: a download to resume, a request being installed,
        or the updater's result not yet reported."""
        self.paths.root.mkdir(mode=0o700, parents=True, exist_ok=True)
        snapshot = read_json(self.download_state)
        if snapshot is not None and self.core.restore(snapshot):
            self.resume()
        elif self.paths.request.exists() or self.paths.trial.exists():
            request = read_json(self.paths.request) or read_json(self.paths.trial) or {}
            self.core.set_state(ota.S_VERIFYING, None, str(request.get("release") or "pi-unknown"))
        self.poll()

    def resume(self) -> None:
        """After restore(): feed the core the bytes already on disk, file by file."""
        release = self.core.release
        while True:
            position = self.core.position()
            if position is None:
                break
            name, offset = position
            try:
                with (self.dl / str(release) / name).open("rb") as handle:
                    handle.seek(offset)
                    data = handle.read(1 << 20)
            except OSError:
                data = b""
            if not data or not self.core.absorb(data):
                break
        LOG.info("resuming the download of %s at %d bytes", release, self.core.done)

    # ------------------------------------------------------------ events
    def write(self, name: str, offset: int, data: bytes) -> None:
        """A chunk the core took (DeviceSession's D_OTA_CHUNK): its bytes go to the file at their offset."""
        path = self.dl / str(self.core.release) / name
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o600)
            try:
                os.pwrite(fd, data, offset)
                if self.core.stage != ota.S_DOWNLOADING:
                    os.fsync(fd)
            finally:
                os.close(fd)
        except OSError as err:
            LOG.error("update %s: cannot write %s: %s", self.core.release, path, err.strerror or err)
            self.core.fail(ota.R_NO_SPACE if err.errno == errno.ENOSPC else ota.R_ABORTED)
        self.poll()

    def poll(self) -> bool:
        """Do what the core's state asks; True when a frame may be due (wake the sender)."""
        core = self.core
        if core.begin_due:
            self.begin()
        if core.stage == ota.S_VERIFYING and core.manifest is not None and self.download_state.exists():
            self.hand_over()
        if core.stage in ota.FINAL and self.download_state.exists():
            self.download_state.unlink(missing_ok=True)  # a failed download is not resumed
        self.take_result()
        if self.final_pending and not core.report_due:
            self.final_pending = False
            write_json(self.reported, {"key": list(self.seen or ())})
        return core.report_due or (core.stage == ota.S_DOWNLOADING and not core.outstanding)

    def begin(self) -> None:
        release = str(self.core.release)
        shutil.rmtree(self.dl, ignore_errors=True)
        (self.dl / release).mkdir(parents=True, mode=0o700)
        for path in (self.paths.result, self.reported):
            path.unlink(missing_ok=True)  # a new update: the last one's result is history
        self.seen = None
        write_json(self.download_state, self.core.state() or {})
        self.core.begun()
        LOG.info("update %s: downloading %d bytes", release, self.core.manifest.total if self.core.manifest else 0)

    def hand_over(self) -> None:
        """Every byte is in and matched while streaming: check the file on disk, stage it, ask the updater."""
        core = self.core
        manifest = core.manifest
        assert manifest is not None
        release = str(core.release)
        name, _size, digest = manifest.files[0]
        source = self.dl / release
        try:
            if file_sha256(source / name) != digest:
                LOG.error("update %s: %s on disk does not match its SHA-256", release, name)
                core.fail(ota.R_BAD_HASH)
                return
            staged = self.paths.staged / release
            shutil.rmtree(staged, ignore_errors=True)
            staged.parent.mkdir(parents=True, exist_ok=True, mode=0o755)
            os.replace(source, staged)
            os.chmod(staged, 0o755)
            write_json(self.paths.request, {"release": release, "manifest": manifest.text, "sig": core.sig})
        except OSError as err:
            LOG.error("update %s: cannot stage %s: %s", release, name, err.strerror or err)
            core.fail(ota.R_NO_SPACE if err.errno == errno.ENOSPC else ota.R_ABORTED)
            return
        finally:
            self.download_state.unlink(missing_ok=True)
        LOG.info("update %s: downloaded and checked; the updater installs it", release)

    def take_result(self) -> None:
        """The updater's latest result, once per change: the core sends it."""
        result = read_json(self.paths.result)
        if result is None:
            return
        key = (result.get("release"), result.get("state"), result.get("at"))
        if key == self.seen:
            return
        self.seen = key
        state, release = result.get("state"), result.get("release")
        if state not in ota.STATES or not isinstance(release, str) or not release:
            return
        done = read_json(self.reported)
        if state in ota.FINAL and done is not None and done.get("key") == list(key):
            return  # reported by an earlier agent process
        if self.core.stage == ota.S_DOWNLOADING:
            return  # a newer download is under way; that result is of an older one
        reason = result.get("reason")
        self.core.set_state(state, reason if isinstance(reason, str) and reason else None, release)
        self.final_pending = state in ota.FINAL
        log = LOG.info if state in (ota.S_TRIAL, ota.S_GOOD) else LOG.error
        log("update %s: %s %s", release, state, result.get("msg", ""))

