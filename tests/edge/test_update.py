"""edge/update.py and edge/release.py without processes: a fake pip, a fake clock (docs/ota.md#pi-agent)."""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Sequence
from pathlib import Path

import pytest

from edge.config import AgentConfig, parse
from edge.errors import ConfigError, UpdateError
from edge.release import Releases
from edge.update import Updater, file_sha256, main, read_json
from tests.helpers.ota_release import ReleaseKey, manifest_text


class FakeClock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds


class FakePip:
    """Stands in for ``python -m venv`` and ``pip install``: makes the script, or fails."""

    def __init__(self, fail: str = "") -> None:
        self.calls: list[list[str]] = []
        self.fail = fail

    def __call__(self, argv: Sequence[str]) -> subprocess.CompletedProcess[str]:
        argv = list(argv)
        self.calls.append(argv)
        if self.fail and self.fail in argv:
            return subprocess.CompletedProcess(argv, 1, "", "ERROR: No matching distribution found for gpiozero")
        if "venv" in argv:
            (Path(argv[-1]) / "bin").mkdir(parents=True)
        else:
            python = Path(argv[argv.index("--python") + 1])
            (python.parent / "edgewire-agent").write_text("#!/bin/sh\n")
        return subprocess.CompletedProcess(argv, 0, "", "")


class Tree:
    def __init__(self, tmp: Path, key: ReleaseKey) -> None:
        self.cfg = AgentConfig(device_id="PI-1", token="t", gateway="ws://x/v1/device", state_dir=str(tmp / "state"),
                               ota_pubkey=key.pubkey, update_health_s=10.0, prefix=str(tmp / "opt"))
        self.key = key
        self.pip = FakePip()
        self.releases = Releases(tmp / "opt", python="python3", runner=self.pip)
        self.clock = FakeClock()
        self.restarts: list[str | None] = []
        self.updater = Updater(self.cfg, self.releases, restart=lambda: self.restarts.append(self.releases.current()),
                               clock=self.clock, sleep=self.clock.sleep)
        self.cfg.ota_dir.mkdir(parents=True)
        self.install("0.1.0")
        self.releases.switch("0.1.0")
        self.updater.link_good("0.1.0")

    def install(self, version: str) -> None:
        wheel = self.cfg.ota_dir / f"edgewire-{version}-py3-none-any.whl"
        wheel.write_bytes(version.encode())
        self.releases.install(version, wheel, file_sha256(wheel))

    def request(self, version: str, content: bytes, sig_key: ReleaseKey | None = None, staged: bytes | None = None,
                ) -> None:
        name = f"edgewire-{version}-py3-none-any.whl"
        text = manifest_text(version, {name: content}, kind="pi", min_runtime="3.11")
        stage = self.cfg.ota_dir / "staged" / f"pi-{version}"
        stage.mkdir(parents=True)
        (stage / name).write_bytes(content if staged is None else staged)
        (self.cfg.ota_dir / "request.json").write_text(json.dumps(
            {"release": f"pi-{version}", "manifest": text, "sig": (sig_key or self.key).sign(text)}))

    def healthy(self, version: str, acked: bool = True) -> None:
        self.cfg.status_path.write_text(json.dumps({"fw": version, "acked": acked, "started": self.clock.now}))

    def result(self) -> dict[str, object]:
        return read_json(self.cfg.ota_dir / "result.json") or {}

    def good(self) -> str:
        return os.readlink(Path(self.cfg.prefix) / "good")


@pytest.fixture
def tree(tmp_path: Path) -> Tree:
    return Tree(tmp_path, ReleaseKey())


def test_a_request_is_installed_switched_and_marked_good_once_the_agent_acks(tree: Tree) -> None:
    tree.request("0.2.0", b"wheel 0.2.0")

    def restart() -> None:  # the new agent starts, connects and gets its first ack
        tree.restarts.append(tree.releases.current())
        tree.healthy("0.2.0")

    tree.updater.restart = restart
    assert tree.updater.run() == "good"
    assert tree.restarts == ["0.2.0"]
    assert tree.releases.current() == "0.2.0" and tree.good() == "releases/0.2.0"
    assert tree.result()["state"] == "good"
    assert not (tree.cfg.ota_dir / "request.json").exists() and not (tree.cfg.ota_dir / "trial.json").exists()
    assert tree.updater.run() == "idle"  # the request was consumed


def test_an_agent_that_never_acks_is_rolled_back_after_update_health_s(tree: Tree) -> None:
    tree.request("0.2.0", b"wheel 0.2.0")
    tree.healthy("0.2.0", acked=False)  # it started and connected, but no ack came
    started = tree.clock.now
    assert tree.updater.run() == "rolled_back"
    assert tree.clock.now - started >= tree.cfg.update_health_s
    assert tree.restarts == ["0.2.0", "0.1.0"]  # restarted into the trial, then back
    assert tree.releases.current() == "0.1.0" and tree.good() == "releases/0.1.0"
    assert {k: tree.result()[k] for k in ("release", "state", "reason")} == {
        "release": "pi-0.2.0", "state": "rolled_back", "reason": "health_check"}


def test_a_status_left_by_the_old_agent_does_not_pass_the_health_check(tree: Tree) -> None:
    tree.request("0.2.0", b"wheel 0.2.0")
    tree.cfg.status_path.write_text(json.dumps({"fw": "0.2.0", "acked": True, "started": tree.clock.now - 60}))
    assert tree.updater.run() == "rolled_back"


@pytest.mark.parametrize("leftover", ["trial.json", "no trial.json"])
def test_a_trial_cut_short_by_a_power_cut_is_checked_again_at_boot(tree: Tree, leftover: str) -> None:
    tree.install("0.2.0")
    if leftover == "trial.json":
        (tree.cfg.ota_dir / "trial.json").write_text(json.dumps({"release": "pi-0.2.0", "version": "0.2.0",
                                                                  "previous": "0.1.0", "switched_at": 0}))
    tree.releases.switch("0.2.0")  # the power went after the switch, before the verdict
    assert tree.updater.run() == "rolled_back"  # the boot's run: the new agent never acked
    assert tree.releases.current() == "0.1.0" and tree.result()["reason"] == "health_check"
    assert tree.result()["release"] == "pi-0.2.0"
    tree.releases.switch("0.2.0")
    tree.updater.restart = lambda: tree.healthy("0.2.0")
    assert tree.updater.run() == "good" and tree.good() == "releases/0.2.0"


@pytest.mark.parametrize(("case", "code"), [("bad signature", "bad_signature"), ("bad hash", "bad_hash"),
                                            ("pip fails", "install"), ("not json", "bad_manifest"),
                                            ("staged as a symlink", "install")])
def test_a_bad_request_fails_and_nothing_switches(tmp_path: Path, case: str, code: str) -> None:
    tree = Tree(tmp_path, ReleaseKey())
    tree.pip.fail = "install" if case == "pip fails" else ""
    if case == "bad signature":
        tree.request("0.2.0", b"wheel", sig_key=ReleaseKey())
    elif case == "bad hash":
        tree.request("0.2.0", b"wheel", staged=b"wheel, changed on disk")
    elif case == "pip fails":
        tree.request("0.2.0", b"wheel")
    elif case == "staged as a symlink":  # the agent's user must not point root at another file
        tree.request("0.2.0", b"wheel")
        staged = tree.cfg.ota_dir / "staged" / "pi-0.2.0" / "edgewire-0.2.0-py3-none-any.whl"
        (tmp_path / "elsewhere.whl").write_bytes(b"wheel")
        staged.unlink()
        staged.symlink_to(tmp_path / "elsewhere.whl")
    else:
        (tree.cfg.ota_dir / "request.json").write_text("[1, 2")
    calls = len(tree.pip.calls)
    assert tree.updater.run() == "failed"
    assert tree.result()["state"] == "failed" and tree.result()["reason"] == code, tree.result()
    assert tree.releases.current() == "0.1.0" and tree.good() == "releases/0.1.0"
    assert tree.releases.versions() == ["0.1.0"] and tree.restarts == []
    assert not (tree.cfg.ota_dir / "trial.json").exists()
    assert not (tree.cfg.ota_dir / "request.json").exists()  # consumed: a bad request runs once
    if case != "pip fails":
        assert len(tree.pip.calls) == calls  # nothing was installed


def test_the_switch_replaces_the_symlink_and_leaves_nothing_behind(tree: Tree) -> None:
    tree.install("0.2.0")
    tree.releases.switch("0.2.0")
    prefix = Path(tree.cfg.prefix)
    assert os.readlink(prefix / "current") == "releases/0.2.0"
    assert sorted(p.name for p in prefix.iterdir()) == ["current", "good", "releases"]
    with pytest.raises(UpdateError) as err:
        tree.releases.switch("0.9.0")
    assert err.value.code == "install" and os.readlink(prefix / "current") == "releases/0.2.0"
    with pytest.raises(UpdateError):
        tree.releases.release_dir("../etc")


def test_the_cli_fails_in_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--config", str(tmp_path / "missing.toml")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: config file: ") and err.count("\n") == 1


BASE = {"agent": {"device_id": "PI-1", "token": "t", "gateway": "ws://g/v1/device"}}


def test_the_update_table_is_checked() -> None:
    key = ReleaseKey().pubkey
    cfg = parse({**BASE, "update": {"ota_pubkey": key.upper(), "update_health_s": 30, "prefix": "/srv/ew"}})
    assert (cfg.ota_pubkey, cfg.update_health_s, cfg.prefix) == (key, 30.0, "/srv/ew")
    assert parse(BASE).ota_pubkey == "" and parse(BASE).update_health_s == 60.0
    for table, name in [({"ota_pubkey": "04" + "ab" * 64}, "update.ota_pubkey"),  # not on the curve
                        ({"update_health_s": 0}, "update.update_health_s"), ({"prefix": "opt"}, "update.prefix"),
                        ({"health": 1}, "update.health")]:
        with pytest.raises(ConfigError) as err:
            parse({**BASE, "update": table})
        assert err.value.key == name
