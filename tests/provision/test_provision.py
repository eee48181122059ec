"""``make provision-test``: ansible/site.yml against real Debian root filesystems (docs/deploy.md).

1. A debootstrap'd bookworm base, cached as a tarball under var/cache; one copy per host
   (gateway, pi-1, pi-2) under $ANSIBLE_TEST_ROOT (default var/ansible-test), left there.
2. site.yml through the community.general.chroot connection: first the gateway (its service
   is then started from its root filesystem, as systemd would once the play starts it: a
   chroot has no systemd), then every host, so the Pis register through the running
   gateway's admin API; then a second run, which must change nothing.
3. The units pass ``systemd-analyze verify --root``, are enabled, nginx's config passes
   ``nginx -t``; pi-1's agent, started from its root filesystem with its unit's ExecStart and
   the simulated sensors, sends readings through nginx (TLS, the self-signed certificate the
   Pi was made to trust) that the provisioned gateway stores.
4. Bad inventories fail at the first task, naming the variable.

Skipped unless EDGEWIRE_PROVISION_TEST=1 (it needs root, debootstrap and the ansible venv).
"""

from __future__ import annotations

import asyncio
import hashlib
import importlib.util
import json
import os
import re
import shutil
import sqlite3
import stat
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from tests.edge.conftest import write_probe
from tests.helpers.gateway import free_port
from tests.provision.rootfs import Service, base_tarball, make_rootfs, wait_for

pytestmark = pytest.mark.skipif(os.environ.get("EDGEWIRE_PROVISION_TEST") != "1",
                                reason="run by `make provision-test` (root, debootstrap, the ansible venv)")

REPO = Path(__file__).resolve().parents[2]
TEST_ROOT = Path(os.environ.get("ANSIBLE_TEST_ROOT", REPO / "var" / "ansible-test")).resolve()
CACHE = REPO / "var" / "cache"
ANSIBLE_BIN = Path(os.environ.get("ANSIBLE_BIN", REPO / "var" / "ansible-venv" / "bin"))
PI_UNITS = ("edgewire-agent.service", "edgewire-agent-update.service", "edgewire-agent-update.path")
GATEWAY_UNITS = ("edgewire-gateway.service", "edgewire-gateway-backup.service", "edgewire-gateway-backup.timer")
CONFIG_TXT = "# Raspberry Pi OS config.txt (stand-in)\ndtparam=audio=on\ncamera_auto_detect=1\n"


@dataclass
class Run:
    rc: int
    output: str
    recap: dict[str, dict[str, int]]
    changed: list[str]


@dataclass
class Fleet:
    root: Path
    gateway_port: int
    https_port: int
    timings: dict[str, float] = field(default_factory=dict)
    services: dict[str, Service] = field(default_factory=dict)

    def rootfs(self, host: str) -> Path:
        return self.root / host

    def inventory(self, drop: tuple[str, ...] = ()) -> dict[str, Any]:
        def host(name: str, **hostvars: Any) -> dict[str, Any]:
            return {"ansible_connection": "community.general.chroot", "ansible_host": str(self.rootfs(name)),
                    "ansible_become": False, "ansible_python_interpreter": "/usr/bin/python3", **hostvars}

        pis_vars = {
            "edgewire_pi_gateway_url": f"wss://localhost:{self.https_port}/v1/device",
            "edgewire_pi_gateway_admin_url": f"ws://127.0.0.1:{self.gateway_port}",
            "edgewire_pi_gateway_ca_cert": "/etc/edgewire/tls/edgewire-gateway.crt",
            "edgewire_pi_sensor_backend": "sim",  # the test-only variable: simulated sensors and pins
            "edgewire_pi_apt_packages": ["python3-spidev"],  # python3-lgpio is Raspberry Pi OS only
            "edgewire_pi_interval": 1,
        }
        for key in drop:
            pis_vars.pop(key, None)
        return {"all": {"children": {
            "gateways": {"hosts": {"gateway": host(
                "gateway", edgewire_gateway_port=self.gateway_port, edgewire_gateway_server_name="localhost",
                edgewire_gateway_nginx_address="127.0.0.1", edgewire_gateway_nginx_https_port=self.https_port,
                edgewire_gateway_nginx_http_port=0, edgewire_gateway_backup_keep=3,
                edgewire_gateway_alerts=[{"metric": "temperature", "above": 35, "hysteresis": 1}])}},
            "pis": {"vars": pis_vars, "hosts": {
                "pi-1": host("pi-1", edgewire_pi_device_id="PI-1", edgewire_pi_sensors=[
                    {"type": "dht22", "name": "air", "pin": 23, "samples": 1, "sim_failure_rate": 0.0},
                    {"type": "mcp3008", "name": "soil", "channel": 0, "metric": "soil_moisture",
                     "out_range": [0, 100], "sim_value": 0.4}],
                    edgewire_pi_outputs={"led": {"pin": 17}, "relay": {"pin": 22, "active_high": False}},
                    edgewire_pi_rules=[{"metric": "temperature", "high": 35.0, "outputs": ["relay"]}]),
                "pi-2": host("pi-2", edgewire_pi_device_id="PI-2", edgewire_pi_w1_gpio_pin=17, edgewire_pi_sensors=[
                    {"type": "ds18b20", "metric": "soil_temperature", "devices_dir": "/srv/fake-sys/w1/devices"},
                    {"type": "cpu_temperature", "sensor_file": "/srv/fake-sys/thermal_zone0/temp"}]),
            }},
        }}}

    def write_inventory(self, name: str, drop: tuple[str, ...] = ()) -> Path:
        path = self.root / name
        path.write_text(json.dumps(self.inventory(drop), indent=2))  # JSON is YAML
        return path


def playbook(fleet: Fleet, log_name: str, *args: str, inventory: Path | None = None, play: str = "site.yml") -> Run:
    env = dict(os.environ, ANSIBLE_CONFIG=str(REPO / "ansible" / "ansible.cfg"), ANSIBLE_NOCOLOR="1",
               ANSIBLE_FORCE_COLOR="0", PATH=f"{ANSIBLE_BIN}:{os.environ['PATH']}",
               ANSIBLE_LOCAL_TEMP=str(fleet.root / ".ansible-tmp"), ANSIBLE_HOME=str(fleet.root / ".ansible"))
    started = time.monotonic()
    proc = subprocess.run([str(ANSIBLE_BIN / "ansible-playbook"), "-i", str(inventory or fleet.root / "inventory.yml"),
                           str(REPO / "ansible" / play), *args], capture_output=True, text=True, env=env,
                          timeout=1800, cwd=REPO)
    fleet.timings[log_name] = round(time.monotonic() - started, 1)
    output = proc.stdout + proc.stderr
    (fleet.root / "logs").mkdir(exist_ok=True)
    (fleet.root / "logs" / f"{log_name}.log").write_text(output)
    recap = {m[0]: {"ok": int(m[1]), "changed": int(m[2]), "unreachable": int(m[3]), "failed": int(m[4])}
             for m in re.findall(r"^(\S+)\s+: ok=(\d+)\s+changed=(\d+)\s+unreachable=(\d+)\s+failed=(\d+)",
                                 output, re.M)}
    changed, task = [], ""
    for line in output.splitlines():
        if line.startswith(("TASK [", "RUNNING HANDLER [")):
            task = line.split("[", 1)[1].rsplit("]", 1)[0]
        elif line.startswith("changed: ["):
            changed.append(f"{task} on {line.split('[', 1)[1].split(']', 1)[0]}")
    return Run(proc.returncode, output, recap, changed)


def ok(run: Run, what: str) -> Run:
    assert run.rc == 0 and run.recap and not any(r["failed"] or r["unreachable"] for r in run.recap.values()), (
        f"{what} failed (rc {run.rc}); the end of its output:\n{run.output[-6000:]}")
    return run


@pytest.fixture(scope="module")
def fleet() -> Iterator[Fleet]:
    TEST_ROOT.mkdir(parents=True, exist_ok=True)
    fleet = Fleet(TEST_ROOT, free_port(), free_port())
    started = time.monotonic()
    tarball, built = base_tarball(CACHE)
    fleet.timings["debootstrap" if built else "base (cached)"] = round(time.monotonic() - started, 1)
    for name in ("gateway", "pi-1", "pi-2"):
        make_rootfs(tarball, fleet.rootfs(name), name)
    firmware = fleet.rootfs("pi-1") / "boot" / "firmware"
    firmware.mkdir(parents=True)
    (firmware / "config.txt").write_text(CONFIG_TXT)  # Bookworm's place
    (fleet.rootfs("pi-2") / "boot" / "config.txt").write_text(CONFIG_TXT)  # older releases' place
    fake = fleet.rootfs("pi-2") / "srv" / "fake-sys"
    write_probe(fake / "w1" / "devices", "28-0000075a1b2c", 18500)
    (fake / "thermal_zone0").mkdir(parents=True)
    (fake / "thermal_zone0" / "temp").write_text("47250\n")
    fleet.write_inventory("inventory.yml")
    try:
        yield fleet
    finally:
        for service in reversed(list(fleet.services.values())):
            service.stop()
        (fleet.root / "timings.json").write_text(json.dumps(fleet.timings, indent=2) + "\n")
        print(f"\nprovision-test timings (s): {fleet.timings}; root filesystems left in {fleet.root}")


def start_gateway(fleet: Fleet) -> None:
    gw = fleet.rootfs("gateway")
    logs = fleet.root / "logs"
    logs.mkdir(exist_ok=True)
    fleet.services["gateway"] = gateway = Service(gw, "edgewire-gateway.service", logs / "gateway.log").start()
    wait_for(lambda: "gateway_started" in (logs / "gateway.log").read_text() or not gateway.alive(), 60,
             "the gateway's gateway_started log line")
    assert gateway.alive(), (logs / "gateway.log").read_text()[-3000:]
    fleet.services["nginx"] = nginx = Service(gw, "nginx.service", logs / "nginx.log")
    nginx.proc = subprocess.Popen(nginx.command(["/usr/sbin/nginx", "-g", "daemon off; master_process on;"]),
                                  stdout=open(logs / "nginx.log", "ab"), stderr=subprocess.STDOUT,  # noqa: SIM115
                                  start_new_session=True)
    wait_for(lambda: (gw / "run" / "nginx.pid").exists() or not nginx.alive(), 30, "nginx's pid file")
    assert nginx.alive(), (logs / "nginx.log").read_text()[-3000:]


def test_site_yml_provisions_the_gateway_and_the_pis(fleet: Fleet) -> None:
    ok(playbook(fleet, "1-gateway", "--limit", "gateways"), "site.yml on the gateway")
    start_gateway(fleet)
    run = ok(playbook(fleet, "2-all"), "site.yml on every host")
    assert set(run.recap) >= {"gateway", "pi-1", "pi-2"}
    assert run.recap["gateway"]["changed"] == 0, run.changed  # it was provisioned a moment ago
    assert sum("minting a token" in line for line in run.changed) == 2, run.changed  # pi-1 and pi-2


def test_second_run_changes_nothing(fleet: Fleet) -> None:
    run = ok(playbook(fleet, "3-again"), "the second run of site.yml")
    assert {host: r["changed"] for host, r in run.recap.items()} == {h: 0 for h in run.recap}, (
        "the second run changed: " + "; ".join(run.changed))
    print(f"second run: {sum(r['changed'] for r in run.recap.values())} changed")


def test_units_verify_and_are_enabled(fleet: Fleet) -> None:
    checks = {"gateway": (GATEWAY_UNITS, ["multi-user.target.wants/edgewire-gateway.service",
                                          "timers.target.wants/edgewire-gateway-backup.timer",
                                          "multi-user.target.wants/nginx.service"]),
              **{pi: (PI_UNITS, ["multi-user.target.wants/edgewire-agent.service",
                                 "multi-user.target.wants/edgewire-agent-update.service",
                                 "paths.target.wants/edgewire-agent-update.path"]) for pi in ("pi-1", "pi-2")}}
    for host, (units, links) in checks.items():
        root = fleet.rootfs(host)
        proc = subprocess.run(["systemd-analyze", "verify", f"--root={root}", *units], capture_output=True,
                              text=True, timeout=120)
        problems = [line for line in proc.stderr.splitlines() if any(u in line for u in units)]
        assert proc.returncode == 0 and not problems, f"{host}: {proc.stderr}"
        for link in links:
            path = root / "etc" / "systemd" / "system" / link
            assert path.is_symlink(), f"{host}: {link} is not enabled"


def test_nginx_config_passes_nginx_t(fleet: Fleet) -> None:
    proc = subprocess.run(["chroot", str(fleet.rootfs("gateway")), "nginx", "-t"], capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == 0, proc.stderr
    nginx = fleet.rootfs("gateway") / "etc" / "nginx"
    link = (nginx / "sites-enabled" / "edgewire-gateway.conf").readlink()
    assert link == Path("/etc/nginx/sites-available/edgewire-gateway.conf")
    assert not os.path.lexists(nginx / "sites-enabled" / "default")
    site = (nginx / "sites-available" / "edgewire-gateway.conf").read_text()
    for line in ("proxy_set_header Upgrade $http_upgrade;", "proxy_read_timeout 3600s;", "deny all;"):
        assert line in site, line


def owner_and_mode(root: Path, relative: str) -> tuple[str, int]:
    info = (root / relative).stat()
    passwd = {int(f[2]): f[0] for f in (line.split(":") for line in (root / "etc" / "passwd").read_text().splitlines())}
    return passwd[info.st_uid], stat.S_IMODE(info.st_mode)


def test_secrets_and_config_txt(fleet: Fleet) -> None:
    gw = fleet.rootfs("gateway")
    for name in ("token.key", "admin.token", "dashboard.token"):
        assert owner_and_mode(gw, f"var/lib/edgewire-gateway/{name}") == ("edgewire", 0o600), name
    assert owner_and_mode(gw, "etc/edgewire/gateway.toml") == ("root", 0o640)
    assert owner_and_mode(gw, "etc/edgewire/tls/edgewire-gateway.key")[1] == 0o640
    for pi in ("pi-1", "pi-2"):
        assert owner_and_mode(fleet.rootfs(pi), "etc/edgewire/token") == ("edgewire", 0o600), pi
        groups = (fleet.rootfs(pi) / "etc" / "group").read_text()
        for group in ("gpio", "spi", "i2c"):
            assert re.search(rf"^{group}:x:\d+:.*\bedgewire\b", groups, re.M), (pi, group)
    pi1 = (fleet.rootfs("pi-1") / "boot" / "firmware" / "config.txt").read_text()
    assert "dtparam=spi=on" in pi1 and "w1-gpio" not in pi1 and "i2c" not in pi1  # mcp3008 only
    pi2 = (fleet.rootfs("pi-2") / "boot" / "config.txt").read_text()
    assert "dtoverlay=w1-gpio,gpiopin=17" in pi2 and "spi" not in pi2  # ds18b20 only
    assert pi1.startswith(CONFIG_TXT) and pi2.startswith(CONFIG_TXT)


def test_a_pi_gets_the_edge_extra_only(fleet: Fleet) -> None:
    def packages(host: str) -> set[str]:
        venv = "venv" if host == "gateway" else "current/venv"  # a Pi: releases side by side (docs/ota.md#pi-agent)
        (site,) = (fleet.rootfs(host) / "opt" / "edgewire" / venv / "lib").glob("python3*/site-packages")
        return {p.name.split("-")[0].lower() for p in site.glob("*.dist-info")}

    gateway, pi = packages("gateway"), packages("pi-1")
    assert {"edgewire", "websockets", "orjson", "pyjwt", "uvloop"} <= gateway
    assert {"edgewire", "websockets", "gpiozero", "adafruit_circuitpython_dht"} <= pi
    assert not {"orjson", "pyjwt", "uvloop", "cryptography"} & pi, pi


def test_a_pi_has_its_release_side_by_side_and_a_wheelhouse(fleet: Fleet) -> None:
    prefix = fleet.rootfs("pi-1") / "opt" / "edgewire"
    assert os.readlink(prefix / "current") == "releases/0.1.0" and os.readlink(prefix / "good") == "releases/0.1.0"
    (wheel,) = (prefix / "wheels").glob("edgewire-0.1.0-*.whl")
    digest = hashlib.sha256(wheel.read_bytes()).hexdigest()
    assert (prefix / "releases" / "0.1.0" / ".installed").read_text().strip() == digest
    wheels = {p.name.split("-")[0].lower() for p in (prefix / "wheelhouse").glob("*.whl")}
    assert {"websockets", "gpiozero"} <= wheels, wheels  # an over-the-air install needs no index
    config = (fleet.rootfs("pi-1") / "etc" / "edgewire" / "agent.toml").read_text()
    assert '[update]\nota_pubkey = ""\nupdate_health_s = 60.0' in config


def test_pi_1_readings_are_stored_by_the_provisioned_gateway(fleet: Fleet) -> None:
    from gateway.cli.admin_client import admin_call

    assert fleet.services["gateway"].alive(), "the gateway stopped"
    logs = fleet.root / "logs"
    fleet.services["agent"] = agent = Service(fleet.rootfs("pi-1"), "edgewire-agent.service", logs / "agent-pi-1.log")
    assert agent.unit.user == "edgewire" and agent.unit.groups == ["gpio", "spi", "i2c"]
    agent.start()
    db = fleet.rootfs("gateway") / "var" / "lib" / "edgewire-gateway" / "edgewire.db"

    def stored() -> int:
        assert agent.alive(), (logs / "agent-pi-1.log").read_text()[-3000:]
        conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=10)
        try:
            return int(conn.execute("SELECT count(*) FROM readings WHERE device_id = 'PI-1'").fetchone()[0])
        finally:
            conn.close()

    wait_for(lambda: stored() >= 3, 120, "3 readings of PI-1 in the gateway's database")
    token = (fleet.rootfs("gateway") / "var" / "lib" / "edgewire-gateway" / "admin.token").read_text().strip()
    reply = asyncio.run(admin_call(f"ws://127.0.0.1:{fleet.gateway_port}", token,
                                   {"t": "latest", "device_id": "PI-1"}))
    assert {"temperature", "humidity", "soil_moisture"} <= set(reply["latest"]), reply
    assert abs(reply["latest"]["soil_moisture"][0] - 40.0) < 1.0  # the simulated MCP3008 at 0.4 of Vref
    devices = asyncio.run(admin_call(f"ws://127.0.0.1:{fleet.gateway_port}", token, {"t": "devices"}))["devices"]
    assert {d["id"]: d["online"] for d in devices} == {"PI-1": True, "PI-2": False}
    assert "TLS" not in (logs / "agent-pi-1.log").read_text()  # it reached the gateway through nginx's TLS
    assert agent.stop() == 0


def test_backup_service_backs_up_the_gateway(fleet: Fleet) -> None:
    backup = Service(fleet.rootfs("gateway"), "edgewire-gateway-backup.service", fleet.root / "logs" / "backup.log")
    proc = backup.run(backup.unit.exec_start)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("backup /var/backups/edgewire-gateway/edgewire-"), proc.stdout
    copies = sorted((fleet.rootfs("gateway") / "var" / "backups" / "edgewire-gateway").glob("edgewire-*.db"))
    assert copies and owner_and_mode(fleet.rootfs("gateway"), str(copies[-1].relative_to(fleet.rootfs("gateway")))) \
        == ("edgewire", 0o600)


BAD = [
    ("storage", "--limit=gateway", ["-e", "edgewire_gateway_storage=mysql"], "edgewire_gateway_storage: mysql must be"),
    ("port", "--limit=gateway", ["-e", "edgewire_gateway_port=http"], "edgewire_gateway_port: http is not a TCP port"),
    ("sensor type", "--limit=pi-2", ["-e", '{"edgewire_pi_sensors": [{"type": "dht23", "pin": 4}]}'],
     "edgewire_pi_sensors: unknown sensor type dht23"),
    ("pin", "--limit=pi-2", ["-e", '{"edgewire_pi_sensors": [{"type": "dht22", "pin": 40}]}'],
     "edgewire_pi_sensors: a pin must be a BCM GPIO number"),
    ("missing gateway url", "--limit=pi-2", [], "edgewire_pi_gateway_url: required"),
]


@pytest.mark.parametrize(("case", "limit", "extra", "message"), BAD, ids=[case[0] for case in BAD])
def test_a_bad_inventory_fails_at_the_start(fleet: Fleet, case: str, limit: str, extra: list[str],
                                            message: str) -> None:
    inventory = fleet.root / "inventory.yml"
    if case == "missing gateway url":
        inventory = fleet.write_inventory("inventory-missing-url.yml", drop=("edgewire_pi_gateway_url",))
    run = playbook(fleet, f"bad-{case.replace(' ', '-')}", "--check", limit, *extra, inventory=inventory)
    assert run.rc != 0, run.output[-3000:]
    assert message in run.output, run.output[-3000:]
    tasks = re.findall(r"^TASK \[([^\]]+)\]", run.output, re.M)
    assert next(t for t in tasks if t != "Gathering Facts").endswith("inventory variables"), tasks
    assert tasks[-1].endswith("inventory variables"), tasks  # nothing ran after it
    assert all(r["changed"] == 0 for r in run.recap.values()), run.recap


def test_the_example_inventory_passes_the_checks(fleet: Fleet) -> None:
    """Only the tagged checks, on the controller: the example's variables are what the roles accept."""
    example = REPO / "ansible" / "inventories" / "example" / "hosts.yml"
    run = ok(playbook(fleet, "example-inventory", "--tags", "validate", "-e", "ansible_connection=local",
                      "-e", "ansible_become=false", inventory=example), "the checks on the example inventory")
    assert len(run.recap) == 4 and all(r["changed"] == 0 for r in run.recap.values()), run.recap


# ------------------------------------------------------------ ansible/upgrade.yml (docs/ota.md#pi-agent)


# its `check` works (the role's last step passes) but `run` exits at once: only the health check can tell
BROKEN_RUN = '\n\ndef run(cfg):\n    raise SystemExit("broken release")\n'


def build_release(fleet: Fleet, version: str, broken: bool = False) -> Path:
    """The controller's wheel of this checkout as ``version`` (whose agent exits at start when broken)."""
    spec = importlib.util.spec_from_file_location("build_wheel", REPO / "ansible" / "build_wheel.py")
    assert spec is not None and spec.loader is not None
    build_wheel = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(build_wheel)
    with tempfile.TemporaryDirectory(prefix="edgewire-release-") as tmp:  # outside the checkout: not its git tree
        tree = Path(tmp) / "src"
        for rel in build_wheel.source_files(REPO):
            (tree / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / rel, tree / rel)
        for rel, old, new in [("pyproject.toml", 'version = "0.1.0"', f'version = "{version}"'),
                              ("edge/__init__.py", '__version__ = "0.1.0"', f'__version__ = "{version}"')]:
            text = (tree / rel).read_text()
            assert old in text, rel
            (tree / rel).write_text(text.replace(old, new, 1))
        if broken:
            agent = tree / "edge" / "agent.py"
            agent.write_text(agent.read_text() + BROKEN_RUN)
        wheel: Path = build_wheel.build(tree, fleet.root / "wheels")
    return wheel


class Restarter:
    """What the Pi role's "Restart the agent" handler does where systemd runs (a chroot has none):
    restart pi-1's agent whenever its ``current`` symlink changes."""

    def __init__(self, fleet: Fleet) -> None:
        self.fleet = fleet
        self.link = fleet.rootfs("pi-1") / "opt" / "edgewire" / "current"
        self.targets: list[str] = []
        self.started = 0.0  # when the agent was last started (status.json's "started" is the agent's own)
        self.stop_flag = threading.Event()
        self.thread = threading.Thread(target=self.watch, daemon=True)

    def start_agent(self) -> None:
        old = self.fleet.services.pop("agent", None)
        if old is not None:
            old.stop()
        self.started = time.time()
        self.fleet.services["agent"] = Service(self.fleet.rootfs("pi-1"), "edgewire-agent.service",
                                               self.fleet.root / "logs" / "agent-pi-1.log").start()
        self.targets.append(os.readlink(self.link))

    def watch(self) -> None:
        while not self.stop_flag.wait(0.2):
            if os.readlink(self.link) != self.targets[-1]:
                self.start_agent()

    def __enter__(self) -> Restarter:
        self.start_agent()
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop_flag.set()
        self.thread.join(10)


def pi_status(fleet: Fleet, pi: str = "pi-1") -> dict[str, Any]:
    try:
        status: dict[str, Any] = json.loads((fleet.rootfs(pi) / "var" / "lib" / "edgewire" / "status.json").read_text())
    except (OSError, ValueError):
        return {}
    return status


def test_upgrade_yml_upgrades_pi_1_and_a_second_run_changes_nothing(fleet: Fleet) -> None:
    wheel = build_release(fleet, "0.1.1")
    prefix = fleet.rootfs("pi-1") / "opt" / "edgewire"
    with Restarter(fleet) as restarter:
        wait_for(lambda: pi_status(fleet).get("acked") is True, 120, "pi-1's agent 0.1.0 acked")
        run = ok(playbook(fleet, "upgrade-good", "--limit", "pi-1", "-e", f"edgewire_common_wheel={wheel}",
                          play="upgrade.yml"), "upgrade.yml to 0.1.1")
        assert os.readlink(prefix / "current") == "releases/0.1.1" and os.readlink(prefix / "good") == "releases/0.1.1"
        assert (prefix / "releases" / "0.1.0" / "venv").is_dir()  # the old release stays, for a rollback
        assert pi_status(fleet)["fw"] == "0.1.1" and restarter.targets == ["releases/0.1.0", "releases/0.1.1"]
        assert any("Mark the new release good" in line for line in run.changed), run.changed
        again = ok(playbook(fleet, "upgrade-again", "--limit", "pi-1", "-e", f"edgewire_common_wheel={wheel}",
                            play="upgrade.yml"), "upgrade.yml to 0.1.1 again")
        assert again.recap["pi-1"]["changed"] == 0, again.changed
        assert restarter.targets == ["releases/0.1.0", "releases/0.1.1"]


def test_upgrade_yml_rolls_back_a_broken_release_and_stops_at_the_failure_limit(fleet: Fleet) -> None:
    wheel = build_release(fleet, "0.1.2", broken=True)
    pi1, pi2 = (fleet.rootfs(pi) / "opt" / "edgewire" for pi in ("pi-1", "pi-2"))
    with Restarter(fleet) as restarter:
        wait_for(lambda: pi_status(fleet).get("fw") == "0.1.1" and pi_status(fleet).get("acked") is True, 120,
                 "pi-1's agent 0.1.1 acked")
        run = playbook(fleet, "upgrade-broken", "-e", f"edgewire_common_wheel={wheel}",
                       "-e", "edgewire_upgrade_serial=1", "-e", "edgewire_pi_upgrade_health_s=20",
                       "-e", "edgewire_pi_upgrade_poll_s=1", play="upgrade.yml")
        assert run.rc != 0 and run.recap["pi-1"]["failed"] == 1, run.output[-4000:]
        assert "rolled back to 0.1.1: agent 0.1.2 did not reconnect and get its first ack" in run.output, \
            run.output[-4000:]
        assert "pi-2" not in run.recap or run.recap["pi-2"]["changed"] == 0, run.recap  # the failure limit stopped it
        assert os.readlink(pi1 / "current") == "releases/0.1.1" and os.readlink(pi1 / "good") == "releases/0.1.1"
        assert os.readlink(pi2 / "current") == "releases/0.1.0" and not (pi2 / "releases" / "0.1.2").exists()
        wait_for(lambda: restarter.targets == ["releases/0.1.1", "releases/0.1.2", "releases/0.1.1"], 30,
                 "pi-1's agent restarted on 0.1.2, then on 0.1.1 again")
        # the agent started last (not the status file the one before it left) is 0.1.1 and acked
        wait_for(lambda: pi_status(fleet).get("fw") == "0.1.1" and pi_status(fleet).get("acked") is True
                 and pi_status(fleet).get("started", 0) >= restarter.started - 1.0, 120,
                 "pi-1's agent 0.1.1 back and acked")
        assert "broken release" in (fleet.root / "logs" / "agent-pi-1.log").read_text()
    assert fleet.services.pop("agent").stop() == 0
