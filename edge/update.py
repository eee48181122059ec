"""``edgewire-agent-update``: install a downloaded release, switch to it, health-check it, roll back.

It runs as root in its own unit (edgewire-agent-update.service, started by
edgewire-agent-update.path when the agent leaves a request, and once at every boot),
never inside the agent it replaces, and always from the ``good`` release: a new release
that cannot even start cannot stop its own rollback.

Files (``<state_dir>/ota/``, docs/ota.md#pi-agent):
- ``request.json``  the agent's: a release it downloaded and checked (manifest text, signature,
  the wheel under ``staged/<release>/``). Consumed (deleted) first, so a bad one runs once.
- ``trial.json``    ours: the release on trial, the release to go back to, when it was switched.
- ``result.json``   ours: the latest state (trial, good, rolled_back, failed) and reason; the
  agent reports it to the gateway (an ``ota`` frame).

Symlinks under the prefix (edge/release.py): ``current`` (what the agent unit runs) and
``good`` (the last release that passed its health check; this program runs from it). A
trial is in progress exactly when they differ, whatever file a power cut left behind.
Everything takes an injected clock, sleep and restart, so tests run it in a temporary tree.
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import hashlib
import json
import logging
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edge import logs
from edge.config import AgentConfig, load
from edge.errors import ConfigError, UpdateError
from edge.release import Releases
from protocol import ota

LOG = logging.getLogger("edgewire.edge.update")
AGENT_UNIT = "edgewire-agent.service"
POLL_S = 0.5

Clock = Callable[[], float]
Sleep = Callable[[float], None]
Restart = Callable[[], None]


def restart_agent() -> None:
    """Ask systemd to restart the agent; never waits for it (a broken release may never be ready)."""
    subprocess.run(["systemctl", "--no-block", "restart", AGENT_UNIT], check=False, timeout=60,
                   capture_output=True)


def write_json(path: Path, value: dict[str, Any]) -> None:
    """Write ``value`` atomically (temp file, fsync, rename), readable by the agent's user."""
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    with os.fdopen(fd, "w") as handle:
        handle.write(json.dumps(value))
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)


def read_json(path: Path) -> dict[str, Any] | None:
    try:
        value = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return value if isinstance(value, dict) else None


@dataclass(frozen=True)
class Offer:
    """A checked pi release: its one wheel."""

    release: str
    version: str
    file: str
    size: int
    sha256: str


def check_offer(text: str, sig: str, pubkey: str) -> Offer:
    """The signature, then the manifest (protocol/ota.py, the one verifier), then what a Pi needs:
    kind pi, one wheel file. UpdateError with the contract's code otherwise."""
    if not pubkey:
        raise UpdateError(ota.C_DISABLED, "no update.ota_pubkey in the agent's config: updates are disabled")
    if not ota.verify(pubkey, text, sig):
        raise UpdateError(ota.C_BAD_SIGNATURE, "the manifest is not signed by this Pi's release key")
    try:
        manifest = ota.parse_manifest(text)
    except ota.OtaError as err:
        raise UpdateError(err.code, err.message) from None
    if manifest.kind != "pi":
        raise UpdateError(ota.C_WRONG_KIND, f"wrong kind: {manifest.kind} release for a pi device")
    if len(manifest.files) != 1 or not manifest.files[0][0].endswith(".whl"):
        raise UpdateError(ota.C_BAD_MANIFEST, "bad manifest: a pi release is one .whl file")
    name, size, digest = manifest.files[0]
    return Offer(manifest.release, manifest.version, name, size, digest)


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 16), b""):
            digest.update(block)
    return digest.hexdigest()


@dataclass
class Paths:
    """The updater's files in the agent's state directory."""

    root: Path

    @property
    def request(self) -> Path:
        return self.root / "request.json"

    @property
    def trial(self) -> Path:
        return self.root / "trial.json"

    @property
    def result(self) -> Path:
        return self.root / "result.json"

    @property
    def staged(self) -> Path:
        return self.root / "staged"


class Updater:
    """One run: finish a trial in progress, else take a request; returns the final state written."""

    def __init__(self, cfg: AgentConfig, releases: Releases | None = None, restart: Restart = restart_agent,
                 clock: Clock = time.time, sleep: Sleep = time.sleep) -> None:
        self.cfg = cfg
        self.releases = releases or Releases(cfg.prefix, system_site_packages=cfg.system_site_packages)
        self.paths = Paths(cfg.ota_dir)
        self.restart = restart
        self.clock = clock
        self.sleep = sleep

    @property
    def good_link(self) -> Path:
        return self.releases.prefix / "good"

    def good(self) -> str | None:
        try:
            return Path(os.readlink(self.good_link)).name
        except OSError:
            return None

    def result(self, release: str, state: str, reason: str = "", msg: str = "") -> str:
        write_json(self.paths.result, {"release": release, "state": state, "reason": reason, "msg": msg[:300],
                                       "at": self.clock()})
        log = LOG.info if state in ("trial", "good") else LOG.error
        log("update %s: %s%s%s", release, state, f" ({reason})" if reason else "", f": {msg}" if msg else "")
        return state

    def run(self) -> str:
        """What this run did: good, rolled_back, failed, or idle."""
        current, good = self.releases.current(), self.good()
        if current and good and current != good:  # a trial in progress (the updater or the Pi stopped)
            trial = read_json(self.paths.trial) or {}
            release = str(trial.get("release") or f"pi-{current}")
            LOG.warning("release %s is on trial since an earlier run: checking it again", current)
            self.restart()
            return self.health_check(release, current, good, self.clock())
        if current and not good:
            self.link_good(current)  # first run after an install without a good link: what runs is good
        request = read_json(self.paths.request)
        if request is None:
            if self.paths.request.exists():
                self.paths.request.unlink()
                return self.result("", "failed", "bad_manifest", "request.json is not a JSON object")
            return "idle"
        self.paths.request.unlink()  # consumed: a request that fails is not taken again
        try:
            offer = check_offer(str(request.get("manifest", "")), str(request.get("sig", "")), self.cfg.ota_pubkey)
        except UpdateError as err:
            return self.result(str(request.get("release", ""))[:40], "failed", err.code, str(err))
        return self.take(offer)

    def take(self, offer: Offer) -> str:
        try:
            wheel = self.copy_in(self.paths.staged / offer.release / offer.file)
            if file_sha256(wheel) != offer.sha256:
                raise UpdateError("bad_hash", f"{wheel.name} does not match the manifest's SHA-256")
            previous = self.releases.current()
            if previous == offer.version:
                return self.result(offer.release, "good", "", f"already running {offer.version}")
            self.releases.install(offer.version, wheel, offer.sha256)
        except UpdateError as err:
            return self.result(offer.release, "failed", err.code, str(err))
        except OSError as err:
            code = "no_space" if err.errno == errno.ENOSPC else "install"
            return self.result(offer.release, "failed", code, f"{type(err).__name__}: {err.strerror or err}")
        good = self.good() or previous or ""
        switched = self.clock()
        write_json(self.paths.trial, {"release": offer.release, "version": offer.version, "previous": good,
                                      "switched_at": switched})
        self.releases.switch(offer.version)
        self.result(offer.release, "trial", "", f"switched from {good or 'nothing'}; health check "
                                                f"{self.cfg.update_health_s:g} s")
        self.restart()
        return self.health_check(offer.release, offer.version, good, switched)

    def copy_in(self, staged: Path) -> Path:
        """Copy the agent's staged wheel into a directory only root writes, and check and install that copy:
        the agent's user cannot swap the file between the check and pip (nor make it a symlink)."""
        incoming = self.releases.prefix / "incoming"
        shutil.rmtree(incoming, ignore_errors=True)
        incoming.mkdir(mode=0o755, parents=True)
        target = incoming / staged.name
        source = os.open(staged, os.O_RDONLY | os.O_NOFOLLOW)
        try:
            with os.fdopen(source, "rb", closefd=False) as src, target.open("wb") as dst:
                shutil.copyfileobj(src, dst, 1 << 20)
        finally:
            os.close(source)
        return target

    def health_check(self, release: str, version: str, previous: str | None, since: float) -> str:
        """Wait until the agent of ``version`` reconnected and got its first ack, else switch back."""
        deadline = self.clock() + self.cfg.update_health_s
        while True:
            if self.healthy(version, since):
                self.link_good(version)
                self.paths.trial.unlink(missing_ok=True)
                self.releases.prune([version, previous or ""])
                return self.result(release, "good", "", f"agent {version} reconnected and got its first ack")
            if self.clock() >= deadline:
                break
            self.sleep(POLL_S)
        if not previous:  # nothing to go back to (a Pi installed by hand): leave it running
            self.paths.trial.unlink(missing_ok=True)
            return self.result(release, "failed", "health_check", f"agent {version} never got an ack and there "
                                                                  "is no earlier release to go back to")
        self.releases.switch(previous)
        self.paths.trial.unlink(missing_ok=True)
        self.result(release, "rolled_back", "health_check", f"agent {version} did not reconnect and get an ack "
                                                            f"within {self.cfg.update_health_s:g} s; back to "
                                                            f"{previous}")
        self.restart()
        return "rolled_back"

    def healthy(self, version: str, since: float) -> bool:
        status = read_json(self.cfg.status_path)
        if status is None:
            return False
        started = status.get("started")
        return (status.get("fw") == version and status.get("acked") is True
                and isinstance(started, int | float) and started >= since - 1.0)

    def link_good(self, version: str) -> None:
        prefix = self.releases.prefix
        tmp = prefix / f".good.{os.getpid()}"
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        os.symlink(Path("releases") / version, tmp)
        os.replace(tmp, self.good_link)


def main(argv: list[str] | None = None) -> int:
    """``edgewire-agent-update [--config PATH]``: one run; exit 0 unless it could not run at all."""
    parser = argparse.ArgumentParser(prog="edgewire-agent-update",
                                     description="install, switch and health-check an agent release (systemd)")
    parser.add_argument("--config", help="the agent's config file (default $EDGEWIRE_AGENT_CONFIG or "
                                         "/etc/edgewire/agent.toml)")
    args = parser.parse_args(argv)
    try:
        cfg = load(args.config)
    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    logs.setup(cfg.log_level)
    if not cfg.ota_dir.is_dir():
        return 0  # nothing was ever downloaded
    try:
        state = Updater(cfg).run()
    except OSError as err:
        print(f"error: update: {err.strerror or err} ({getattr(err, 'filename', '')})", file=sys.stderr)
        return 1
    if state != "idle":
        print(f"update: {state}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
