"""The agent's releases on disk: one venv per version side by side, and the ``current`` symlink.

Layout under the prefix (``[update] prefix``, default /opt/edgewire)::

    releases/<version>/venv/             the wheel installed into its own virtualenv
    releases/<version>/.installed        written last: the wheel's SHA-256 (no file: unfinished, redone)
    current -> releases/<version>        the systemd unit runs current/venv/bin/edgewire-agent
    wheelhouse/                          dependency wheels, so that an install needs no network

``switch()`` makes a new symlink next to ``current`` and renames it over ``current``
(rename(2) is atomic: after a power cut ``current`` names the old or the new release,
never nothing). Everything here is synchronous and takes its commands injected, so tests
run it in a temporary tree.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from edge.errors import UpdateError

DEFAULT_PREFIX = "/opt/edgewire"
VERSION_RE = re.compile(r"^[0-9A-Za-z.+-]{1,32}$")
WHEEL_RE = re.compile(r"^[A-Za-z0-9_.-]{1,64}\.whl$")
INSTALL_TIMEOUT_S = 900.0

Runner = Callable[[Sequence[str]], "subprocess.CompletedProcess[str]"]


def run_command(argv: Sequence[str]) -> subprocess.CompletedProcess[str]:
    """Run one install step; never raises for a failed command (the caller reads returncode)."""
    return subprocess.run(list(argv), capture_output=True, text=True, timeout=INSTALL_TIMEOUT_S, check=False)


def valid_version(version: str) -> bool:
    return bool(VERSION_RE.match(version)) and version not in (".", "..")


class Releases:
    """Install, switch and prune the releases under ``prefix``."""

    def __init__(self, prefix: str | Path, python: str = sys.executable, system_site_packages: bool = True,
                 extras: Sequence[str] = ("edge",), runner: Runner = run_command) -> None:
        self.prefix = Path(prefix)
        self.python = python
        self.system_site_packages = system_site_packages
        self.extras = tuple(extras)
        self.runner = runner

    # ------------------------------------------------------------ paths
    @property
    def current_link(self) -> Path:
        return self.prefix / "current"

    @property
    def wheelhouse(self) -> Path:
        return self.prefix / "wheelhouse"

    def release_dir(self, version: str) -> Path:
        if not valid_version(version):
            raise UpdateError("bad_manifest", f"{version[:40]!r} is not a release version ([0-9A-Za-z.+-]{{1,32}})")
        return self.prefix / "releases" / version

    def agent(self, version: str) -> Path:
        return self.release_dir(version) / "venv" / "bin" / "edgewire-agent"

    def current(self) -> str | None:
        """The version ``current`` points at (None: no symlink yet)."""
        try:
            target = os.readlink(self.current_link)
        except OSError:
            return None
        return Path(target).name

    def installed(self, version: str) -> str | None:
        """The SHA-256 of the wheel installed as ``version``, None when it is not (completely) installed."""
        try:
            return (self.release_dir(version) / ".installed").read_text().strip() or None
        except OSError:
            return None

    def versions(self) -> list[str]:
        root = self.prefix / "releases"
        if not root.is_dir():
            return []
        return sorted(p.name for p in root.iterdir() if valid_version(p.name) and self.installed(p.name))

    # ------------------------------------------------------------ install
    def install(self, version: str, wheel: Path, sha256: str) -> Path:
        """Install ``wheel`` as ``version``: a fresh venv, then pip with no index (the wheelhouse only).

        An existing complete install of the same wheel is kept as it is. The ``.installed``
        marker is written last, so a half-done install (power cut, failure) is redone.
        UpdateError("install", ...) when a step fails; nothing else is touched.
        """
        target = self.release_dir(version)
        if self.installed(version) == sha256:
            return target
        if version == self.current():
            raise UpdateError("install", f"release {version} is the running one and was installed from another "
                                         "wheel; give the new build another version")
        if not WHEEL_RE.match(wheel.name):
            raise UpdateError("bad_manifest", f"{wheel.name[:80]!r} is not a wheel file name")
        shutil.rmtree(target, ignore_errors=True)
        target.mkdir(parents=True, mode=0o755)
        venv = target / "venv"  # scripts hold this path in their #! line: install in place, never rename
        self.step([self.python, "-m", "venv", "--without-pip",
                   *(["--system-site-packages"] if self.system_site_packages else []), str(venv)], "venv")
        spec = str(wheel) + (f"[{','.join(self.extras)}]" if self.extras else "")
        self.step([self.python, "-m", "pip", "--python", str(venv / "bin" / "python"), "install", "--quiet",
                   "--no-index", "--find-links", str(self.wheelhouse), "--find-links", str(wheel.parent),
                   "--no-warn-script-location", "--disable-pip-version-check", spec], "pip install")
        if not (venv / "bin" / "edgewire-agent").exists():
            shutil.rmtree(target, ignore_errors=True)
            raise UpdateError("install", f"{wheel.name} installed no edgewire-agent script; is it the agent's wheel?")
        marker = target / ".installed.tmp"
        marker.write_text(sha256 + "\n")
        os.replace(marker, target / ".installed")
        return target

    def step(self, argv: list[str], what: str) -> None:
        try:
            proc = self.runner(argv)
        except (OSError, subprocess.SubprocessError) as err:
            raise UpdateError("install", f"{what} failed: {err}") from None
        if proc.returncode != 0:
            lines = (proc.stderr or proc.stdout or "").strip().splitlines()
            raise UpdateError("install", f"{what} failed (exit {proc.returncode}): "
                                         f"{lines[-1][:300] if lines else 'no output'}")

    # ------------------------------------------------------------ switch
    def switch(self, version: str) -> None:
        """Point ``current`` at ``version``: a new symlink, then rename(2) over the old one, then fsync."""
        if not self.installed(version):
            raise UpdateError("install", f"release {version} is not installed under {self.prefix / 'releases'}")
        tmp = self.prefix / f".current.{os.getpid()}"
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        os.symlink(Path("releases") / version, tmp)
        os.replace(tmp, self.current_link)
        fd = os.open(self.prefix, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

    def prune(self, keep: Sequence[str]) -> list[str]:
        """Remove every release except ``keep`` (and the current one); the removed versions."""
        keep_set = {v for v in keep if v} | {self.current() or ""}
        removed: list[str] = []
        root = self.prefix / "releases"
        if not root.is_dir():
            return removed
        for path in sorted(root.iterdir()):
            if path.name not in keep_set and path.is_dir():
                shutil.rmtree(path, ignore_errors=True)
                removed.append(path.name)
        return removed
