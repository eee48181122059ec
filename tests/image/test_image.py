"""The gateway's container image, run with podman (make image-test: the image built on a debootstrap'd base).

1. The image: non-root (uid 10001), no compiler, its HEALTHCHECK passes, its root read-only.
2. A device's readings are acknowledged and stored on the data volume; ``podman stop`` drains
   within the grace period (exit code 0, not a SIGKILL), and a new container on the same volume
   has them all and takes the device back with the same token.
3. Two gateway containers join a Redis and a PostgreSQL on the host (docs/scaling.md): a device
   registered through one is served by the other, its readings stored in PostgreSQL.

Skipped unless EDGEWIRE_IMAGE_TEST=1 (root, podman; EDGEWIRE_IMAGE names the image). Containers
use the host's network and listen on loopback only.
"""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator

import pytest

from services.process import free_port
from services.redis import RedisServer
from tests.helpers.devices import GoodDevice
from tests.helpers.postgres import stored_seqs
from tests.helpers.waiting import until_sync

pytestmark = pytest.mark.skipif(os.environ.get("EDGEWIRE_IMAGE_TEST") != "1",
                                reason="run by `make image-test` (root, podman, the image built)")
IMAGE = os.environ.get("EDGEWIRE_IMAGE", "edgewire-gateway:0.1.0")
DATA = "/var/lib/edgewire"
GRACE_S = 30


def podman(*args: str, check: bool = True, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(["podman", *args], capture_output=True, text=True, timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f"podman {' '.join(args)}: exit {proc.returncode}\n{proc.stdout}{proc.stderr}")
    return proc


class Container:
    """One gateway container on the host network, listening on 127.0.0.1:``port``."""

    def __init__(self, name: str, volume: str, *serve: str, env: dict[str, str] | None = None) -> None:
        self.name = name
        self.port = free_port()
        # the port through EDGEWIRE_PORT, which the image's HEALTHCHECK follows too
        options = [f"--env={k}={v}" for k, v in {**(env or {}), "EDGEWIRE_PORT": str(self.port)}.items()]
        podman("run", "--detach", "--name", name, "--network", "host", "--read-only", "--tmpfs", "/tmp",
               "--volume", f"{volume}:{DATA}", *options, IMAGE,
               "serve", "--host", "127.0.0.1", "--data-dir", DATA, *serve)
        until_sync(self.healthy, timeout=60, what=f"{name} healthy")

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}"

    def health(self) -> tuple[int, dict[str, object]]:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/healthz", timeout=2) as resp:
                return resp.status, json.load(resp)
        except urllib.error.HTTPError as err:
            return err.code, json.load(err)
        except OSError:
            return 0, {}

    def healthy(self) -> bool:
        return self.health()[0] == 200

    def cli(self, *args: str) -> str:
        return podman("exec", self.name, "edgewire-gateway", *args).stdout

    def register(self, device_id: str, *extra: str) -> str:
        token = self.cli("devices", "add", device_id, "--data-dir", DATA, *extra).strip().splitlines()[-1].strip()
        assert token.startswith("ewt_"), token
        return token

    def stop(self) -> tuple[int, float]:
        """``podman stop`` with the grace period: (exit code, seconds it took)."""
        started = time.monotonic()
        podman("stop", "--time", str(GRACE_S), self.name, timeout=GRACE_S + 30)
        took = time.monotonic() - started
        return int(podman("inspect", self.name, "--format", "{{.State.ExitCode}}").stdout.strip()), took

    def logs(self) -> str:
        proc = podman("logs", self.name, check=False)
        return proc.stdout + proc.stderr

    def remove(self) -> None:
        podman("rm", "--force", "--time", "5", self.name, check=False)


@pytest.fixture
def volume() -> Iterator[str]:
    name = f"edgewire-test-{secrets.token_hex(4)}"
    podman("volume", "create", name)
    yield name
    podman("volume", "rm", "--force", name, check=False)


def count_stored(volume: str, device_id: str) -> int:
    """Readings of ``device_id`` in the SQLite database on ``volume`` (a one-off container reads it)."""
    script = ("import sqlite3, sys; db = sqlite3.connect('file:/var/lib/edgewire/edgewire.db?mode=ro', uri=True); "
              "print(db.execute('SELECT count(*) FROM readings WHERE device_id = ?', (sys.argv[1],)).fetchone()[0])")
    out = podman("run", "--rm", "--network", "none", "--volume", f"{volume}:{DATA}", "--entrypoint", "python3",
                 IMAGE, "-c", script, device_id).stdout
    return int(out.strip())


def test_the_image_is_small_non_root_and_has_no_compiler() -> None:
    image = json.loads(podman("image", "inspect", IMAGE).stdout)[0]
    config = image["Config"]
    assert config["User"] == "10001:10001" and f"{DATA}" in config["Volumes"]
    check = image.get("Healthcheck") or config.get("Healthcheck")  # podman 4.3 shows it beside Config
    assert check["Test"][0] == "CMD" and "/healthz" in check["Test"][-1], check
    assert config["StopSignal"] in ("SIGTERM", "15")
    found = podman("run", "--rm", "--network", "none", "--entrypoint", "sh", IMAGE, "-c",
                   "command -v gcc cc c++ x86_64-linux-gnu-gcc-12 make || true").stdout
    assert found.strip() == "", f"compilers in the image: {found}"
    assert podman("run", "--rm", "--network", "none", "--entrypoint", "id", IMAGE, "-u").stdout.strip() == "10001"


def test_readings_survive_a_drained_stop_and_a_new_container(volume: str) -> None:
    first = Container(f"ew-first-{volume[-8:]}", volume, "--workers", "2")
    try:
        assert podman("healthcheck", "run", first.name, check=False).returncode == 0, first.logs()
        token = first.register("IMG-1")

        async def stream(url: str, count: int) -> int:
            async with GoodDevice(url + "/v1/device", "IMG-1", token, rate=20.0) as device:
                await device.wait_acked(count, timeout=60)
                return device.acked

        acked = asyncio.run(stream(first.url, 40))
        code, took = first.stop()
        assert code == 0 and took < GRACE_S, (code, took, first.logs()[-2000:])
        assert '"gateway_stopped"' in first.logs()
    finally:
        first.remove()
    assert count_stored(volume, "IMG-1") >= acked  # every acknowledged reading is on the volume
    second = Container(f"ew-second-{volume[-8:]}", volume, "--workers", "1")
    try:
        again = asyncio.run(stream(second.url, 10))  # the same token: the registry is on the volume too
        assert again >= 10
        assert second.stop()[0] == 0
    finally:
        second.remove()
    assert count_stored(volume, "IMG-1") >= acked + 10


def test_two_containers_join_a_redis_and_a_postgresql_on_the_host(postgres_dsn: str) -> None:
    key = secrets.token_hex(32)  # every instance shares the token key (docs/scaling.md section 8)
    with RedisServer() as redis:
        names = [f"edgewire-test-{secrets.token_hex(4)}" for _ in range(2)]
        for name in names:
            podman("volume", "create", name)
        gateways: list[Container] = []
        try:
            for i, name in enumerate(names):
                gateways.append(Container(f"ew-gw{i}-{name[-8:]}", name, "--workers", "1", "--storage", postgres_dsn,
                                          "--bus", redis.url, "--instance-id", f"gw-{i}",
                                          env={"EDGEWIRE_TOKEN_KEY": key}))
            one, two = gateways

            def both_on_the_bus() -> bool:
                states = [gw.health()[1].get("checks", {}) for gw in gateways]
                return all(isinstance(c, dict) and c.get("bus", {}).get("state") == "ok" for c in states)

            until_sync(both_on_the_bus, timeout=30, what="both containers on the bus")
            token = one.register("IMG-PG", "--storage", postgres_dsn)

            async def served_by_two() -> int:
                async with GoodDevice(two.url + "/v1/device", "IMG-PG", token, rate=20.0) as device:
                    await device.wait_acked(20, timeout=60)
                    return device.acked

            acked = asyncio.run(served_by_two())
            seqs = asyncio.run(stored_seqs(postgres_dsn))["IMG-PG"]
            assert len(seqs) >= acked and len(set(seqs)) == len(seqs)
            _, report = one.health()
            assert sorted(report["checks"]["bus"]["peers"]) == ["gw-1"], report  # type: ignore[index]
            for gw in gateways:
                assert gw.stop()[0] == 0
        finally:
            for gw in gateways:
                gw.remove()
            for name in names:
                podman("volume", "rm", "--force", name, check=False)
