"""Debian root filesystems for ``make provision-test``: build, copy, and run a unit's ExecStart inside.

The base is ``debootstrap --variant=minbase bookworm`` (with systemd and python3, as on a
fresh Debian or Raspberry Pi OS host) from the mirror apt on this machine uses, cached as a
tarball under var/ so reruns only unpack it. Each host gets its own copy. Nothing is mounted:
the chroots share the host's network (loopback only) and need no /proc.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import shlex
import shutil
import signal
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

SUITE = "bookworm"
INCLUDE = ("systemd", "python3", "python3-apt", "ca-certificates")
# invoke-rc.d asks this before starting a daemon from a package's postinst: never in a chroot,
# or nginx's postinst would start it on the host's network
POLICY_RC_D = "#!/bin/sh\n# make provision-test: no service starts inside the chroot\nexit 101\n"


def debian_mirror() -> str:
    """The Debian mirror apt on this machine uses (deb822 debian.sources or sources.list)."""
    if os.environ.get("DEBIAN_MIRROR"):
        return os.environ["DEBIAN_MIRROR"]
    for path in sorted(Path("/etc/apt/sources.list.d").glob("*.sources")):
        for stanza in path.read_text().split("\n\n"):
            fields = dict(re.findall(r"^(\w[\w-]*):\s*(.+)$", stanza, re.M))
            suites = fields.get("Suites", "").split()
            if SUITE in suites and "deb" in fields.get("Types", "").split() and fields.get("Enabled", "yes") != "no":
                return fields["URIs"].split()[0]
    with contextlib.suppress(OSError):
        for line in Path("/etc/apt/sources.list").read_text().splitlines():
            parts = line.split()
            if len(parts) >= 3 and parts[0] == "deb" and parts[2] == SUITE:
                return parts[1]
    return "http://deb.debian.org/debian"


def _compression() -> list[str]:
    return ["--zstd"] if shutil.which("zstd") else ["--gzip"]


def base_tarball(cache_dir: Path) -> tuple[Path, bool]:
    """The cached base root filesystem (built with debootstrap if missing); (path, was it built now)."""
    key = hashlib.sha256(f"{SUITE} {' '.join(INCLUDE)}".encode()).hexdigest()[:12]
    tarball = cache_dir / f"debootstrap-{SUITE}-minbase-{key}.tar"
    if tarball.exists():
        return tarball, False
    cache_dir.mkdir(parents=True, exist_ok=True)
    work = cache_dir / f"debootstrap-{SUITE}.partial"
    shutil.rmtree(work, ignore_errors=True)
    proc = subprocess.run(["debootstrap", "--variant=minbase", f"--include={','.join(INCLUDE)}", SUITE, str(work),
                           debian_mirror()], capture_output=True, text=True, timeout=1800)
    if proc.returncode != 0:
        raise RuntimeError(f"debootstrap failed ({proc.returncode}):\n{proc.stdout[-3000:]}{proc.stderr[-3000:]}")
    partial = tarball.with_suffix(".tar.partial")
    subprocess.run(["tar", "-C", str(work), *_compression(), "-cf", str(partial), "."], check=True, timeout=600)
    os.replace(partial, tarball)
    shutil.rmtree(work, ignore_errors=True)
    return tarball, True


def make_rootfs(tarball: Path, target: Path, hostname: str) -> Path:
    """A fresh copy of the base for one host: this machine's DNS and local CAs (for pip and apt),
    and no service starts."""
    if target.exists():
        shutil.rmtree(target)
    target.mkdir(parents=True)
    subprocess.run(["tar", "-C", str(target), *_compression(), "-xf", str(tarball)], check=True, timeout=600)
    shutil.copyfile("/etc/resolv.conf", target / "etc" / "resolv.conf")
    (target / "etc" / "hosts").write_text(f"127.0.0.1 localhost\n::1 localhost ip6-localhost\n127.0.1.1 {hostname}\n")
    (target / "etc" / "hostname").write_text(hostname + "\n")
    policy = target / "usr" / "sbin" / "policy-rc.d"
    policy.write_text(POLICY_RC_D)
    policy.chmod(0o755)
    # the local CAs this machine trusts (a TLS-inspecting egress proxy's, say), so pip reaches PyPI
    local_cas = sorted(Path("/usr/local/share/ca-certificates").glob("*.crt"))
    if local_cas and (target / "usr" / "sbin" / "update-ca-certificates").exists():
        for cert in local_cas:
            shutil.copyfile(cert, target / "usr" / "local" / "share" / "ca-certificates" / cert.name)
        subprocess.run(["chroot", str(target), "update-ca-certificates"], check=True, capture_output=True,
                       timeout=300)
    return target


@dataclass
class Unit:
    """The [Service] settings of a systemd unit that starting it by hand needs."""

    exec_start: list[str]
    user: str = "root"
    group: str = ""
    groups: list[str] = field(default_factory=list)
    environment: dict[str, str] = field(default_factory=dict)
    umask: int = 0o022
    state_directory: str = ""


def read_unit(path: Path) -> Unit:
    settings: dict[str, list[str]] = {}
    section = ""
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("["):
            section = line
        elif section == "[Service]" and "=" in line:
            key, _, value = line.partition("=")
            settings.setdefault(key.strip(), []).append(value.strip())
    env: dict[str, str] = {}
    for value in settings.get("Environment", []):
        for item in shlex.split(value):
            name, _, val = item.partition("=")
            env[name] = val
    user = settings.get("User", ["root"])[-1]
    return Unit(exec_start=shlex.split(settings["ExecStart"][-1].lstrip("-@+!")), user=user,
                group=settings.get("Group", [user])[-1],
                groups=" ".join(settings.get("SupplementaryGroups", [])).split(), environment=env,
                umask=int(settings.get("UMask", ["0022"])[-1], 8),
                state_directory=settings.get("StateDirectory", [""])[-1])


class Service:
    """A unit's ExecStart run inside a root filesystem as its User=, with its Environment= and UMask=,
    the way systemd would (StateDirectory= created and owned as systemd does). Logs to a file."""

    def __init__(self, rootfs: Path, unit_name: str, log: Path, extra_env: dict[str, str] | None = None) -> None:
        self.rootfs = rootfs
        local = rootfs / "etc" / "systemd" / "system" / unit_name
        self.unit = read_unit(local if local.exists() else rootfs / "lib" / "systemd" / "system" / unit_name)
        self.log = log
        self.extra_env = extra_env or {}
        self.proc: subprocess.Popen[bytes] | None = None

    def command(self, argv: list[str] | None = None) -> list[str]:
        unit = self.unit
        env = {"PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C.UTF-8",
               **unit.environment, **self.extra_env}
        if unit.state_directory:
            env["STATE_DIRECTORY"] = f"/var/lib/{unit.state_directory}"
        userspec = [f"--userspec={unit.user}:{unit.group}"]
        if unit.groups:
            userspec.append(f"--groups={','.join(unit.groups)}")
        return ["chroot", *userspec, str(self.rootfs), "/usr/bin/env", "-i",
                *(f"{k}={v}" for k, v in env.items()), *(argv or unit.exec_start)]

    def prepare_state_directory(self) -> None:
        if not self.unit.state_directory:
            return
        path = self.rootfs / "var" / "lib" / self.unit.state_directory
        path.mkdir(mode=0o750, parents=True, exist_ok=True)
        subprocess.run(["chroot", str(self.rootfs), "chown", f"{self.unit.user}:{self.unit.group}",
                        f"/var/lib/{self.unit.state_directory}"], check=True, timeout=60)

    def start(self) -> Service:
        self.prepare_state_directory()
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(self.command(), stdout=log, stderr=subprocess.STDOUT,
                                         umask=self.unit.umask, start_new_session=True)
        return self

    def run(self, argv: list[str], timeout: float = 120) -> subprocess.CompletedProcess[str]:
        """Run another command of the unit's program (e.g. the backup) in the same way, to completion."""
        return subprocess.run(self.command(argv), capture_output=True, text=True, umask=self.unit.umask,
                              timeout=timeout)

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self, timeout: float = 30) -> int | None:
        """SIGTERM its process group (ours: start_new_session), then SIGKILL after ``timeout``."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        return self.proc.returncode


def wait_for(predicate: object, timeout: float, what: str, interval: float = 0.2) -> None:
    """Poll ``predicate()`` until true; AssertionError naming ``what`` after ``timeout`` s."""
    assert callable(predicate)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
