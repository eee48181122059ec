"""Journald log lines, the systemd unit, the CLI (sd_notify: tests/runtime/test_sdnotify.py)."""

from __future__ import annotations

import logging
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from edge import logs
from tests.edge.conftest import agent_toml, write_probe

ROOT = Path(__file__).resolve().parents[2]
UNIT = ROOT / "edge" / "systemd" / "edgewire-agent.service"


def test_journal_lines_have_priority_and_no_timestamp() -> None:
    fmt = logs.JournalFormatter()
    record = logging.LogRecord("edgewire.edge", logging.WARNING, __file__, 1, "sensor %s failed", ("air",),
                               None)
    assert fmt.format(record) == "<4>warning sensor air failed"
    plain = logs.PlainFormatter().format(record)
    assert re.match(r"\d\d:\d\d:\d\d warning +sensor air failed", plain)


def test_journald_detected_only_when_stderr_is_the_journal_stream(monkeypatch: pytest.MonkeyPatch) -> None:
    st = os.fstat(sys.stderr.fileno())
    monkeypatch.setenv("JOURNAL_STREAM", f"{st.st_dev}:{st.st_ino}")
    assert logs.under_journald() is True
    monkeypatch.setenv("JOURNAL_STREAM", f"{st.st_dev}:{st.st_ino + 1}")  # inherited by a child with other stderr
    assert logs.under_journald() is False
    monkeypatch.delenv("JOURNAL_STREAM")
    assert logs.under_journald() is False


def test_unit_file_has_the_required_settings() -> None:
    text = UNIT.read_text()
    for line in ("Type=notify", "WatchdogSec=", "Restart=on-failure", "User=edgewire",
                 "SupplementaryGroups=gpio spi i2c", "StateDirectory=edgewire", "ProtectSystem=strict",
                 "NoNewPrivileges=yes", "PrivateTmp=yes", "ProtectHome=yes", "DeviceAllow=/dev/gpiomem rw"):
        assert line in text, line


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze not installed")
def test_systemd_analyze_verify(tmp_path: Path) -> None:
    """The shipped unit with ExecStart pointed at this venv's console script verifies cleanly."""
    script = Path(sys.executable).parent / "edgewire-agent"
    assert script.exists(), "install the project (pip install -e '.[edge]') to get the console script"
    text = UNIT.read_text()
    assert "ExecStart=/opt/edgewire/current/venv/bin/edgewire-agent run" in text
    unit = tmp_path / "edgewire-agent.service"
    unit.write_text(text.replace("/opt/edgewire/current/venv/bin/edgewire-agent", str(script)))
    # the updater's units (docs/ota.md#pi-agent): it runs from the good release, the .path starts it
    update = (UNIT.parent / "edgewire-agent-update.service").read_text()
    assert "ExecStart=/opt/edgewire/good/venv/bin/edgewire-agent-update --config /etc/edgewire/agent.toml" in update
    assert "Type=oneshot" in update and "WantedBy=multi-user.target" in update
    (tmp_path / "edgewire-agent-update.service").write_text(
        update.replace("/opt/edgewire/good/venv/bin/edgewire-agent-update", str(script)))
    path = (UNIT.parent / "edgewire-agent-update.path").read_text()
    assert "PathExists=/var/lib/edgewire/ota/request.json" in path and "Unit=edgewire-agent-update.service" in path
    (tmp_path / "edgewire-agent-update.path").write_text(path)
    units = [str(tmp_path / name) for name in ("edgewire-agent.service", "edgewire-agent-update.service",
                                               "edgewire-agent-update.path")]
    proc = subprocess.run(["systemd-analyze", "verify", *units], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    problems = [line for line in proc.stderr.splitlines() if "edgewire-agent" in line]
    assert not problems, problems


def test_check_prints_each_sensor(tmp_path: Path, w1_dir: Path) -> None:
    write_probe(w1_dir, "28-0001", 21250)
    (tmp_path / "cpu").write_text("51000\n")
    extra = f'''
[[sensors]]
type = "dht22"
name = "air"
pin = 23
samples = 1
sim_failure_rate = 0.0
[[sensors]]
type = "cpu_temperature"
sensor_file = "{tmp_path}/cpu"
[[sensors]]
type = "ds18b20"
devices_dir = "{w1_dir}"
metric = "soil_temperature"
[[sensors]]
type = "mcp3008"
name = "soil"
channel = 0
metric = "soil_moisture"
out_range = [0, 100]
sim_value = 0.25
'''
    path = tmp_path / "agent.toml"
    path.write_text(agent_toml(tmp_path, extra=extra))
    script = Path(sys.executable).parent / "edgewire-agent"
    proc = subprocess.run([str(script), "--config", str(path), "check"], capture_output=True, text=True,
                          timeout=60, env=dict(os.environ, GPIOZERO_PIN_FACTORY="mock"))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    out = proc.stdout
    dht_line = r"^air \(dht22\): temperature=-?\d+(\.\d+)?, humidity=\d+(\.\d+)? \[(ok|retried)\]$"
    assert re.search(dht_line, out, re.M)
    assert "cpu_temperature (cpu_temperature): cpu_temperature=51 [ok]" in out
    assert "ds18b20 (ds18b20): soil_temperature=21.25 [ok]" in out
    assert re.search(r"^soil \(mcp3008\): soil_moisture=25\.\d+ \[ok\]$", out, re.M)
    assert not (tmp_path / "queue.db").exists()  # check sends and stores nothing


def test_check_reports_a_failed_sensor(tmp_path: Path) -> None:
    path = tmp_path / "agent.toml"
    path.write_text(agent_toml(tmp_path, extra=f'[[sensors]]\ntype = "ds18b20"\ndevices_dir = "{tmp_path}"'))
    proc = subprocess.run([sys.executable, "-m", "edge", "--config", str(path), "check"], capture_output=True,
                          text=True, timeout=60, cwd=ROOT)
    assert proc.returncode == 1
    assert "ds18b20 (ds18b20): FAILED" in proc.stdout and "w1-gpio" in proc.stdout


def test_unit_documentation_path_is_where_the_install_puts_the_docs() -> None:
    """Issue 15 item 12: docs/edge-agent.md copies the checkout to /opt/edgewire/src/."""
    doc = (ROOT / "docs" / "edge-agent.md").read_text()
    assert "rsync -a ./ /opt/edgewire/src/" in doc
    line = next(x for x in UNIT.read_text().splitlines() if x.startswith("Documentation="))
    prefix = "file:///opt/edgewire/src/"
    assert line.startswith("Documentation=" + prefix)
    assert (ROOT / line[len("Documentation=" + prefix):]).is_file(), line


def test_unit_keeps_the_state_directory_private() -> None:
    assert "StateDirectoryMode=0700" in UNIT.read_text() and "UMask=0077" in UNIT.read_text()


def run_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """``python -m edge`` from this checkout (the console script would run the installed copy)."""
    return subprocess.run([sys.executable, "-m", "edge", *args], capture_output=True, text=True, timeout=60,
                          cwd=ROOT, env=env if env is not None else dict(os.environ))


def assert_one_line(proc: subprocess.CompletedProcess[str], code: int, *pieces: str) -> str:
    out = proc.stdout + proc.stderr
    assert proc.returncode == code, out
    assert "Traceback" not in out and "Error:" not in out.replace("edgewire-agent:", ""), out
    lines = [line for line in out.splitlines() if line.strip()]
    assert len(lines) == 1, out
    for piece in pieces:
        assert piece in lines[0], out
    return lines[0]


def test_check_off_a_pi_says_so_once_then_one_line_per_sensor(tmp_path: Path) -> None:
    """Issue 15 item 11: hardware backend, no GPIO library: BadPinFactory used to escape. Issue 20 item 9:
    the lines came wrapped in Blinka's two "GENERIC_X86 is not fully supported" prints and gpiozero's
    four PinFactoryFallback warnings per GPIO device: one note says it now."""
    sensors = ('[[sensors]]\ntype = "dht22"\nname = "air"\npin = 23\nsamples = 1\nattempts = 1\n'
               '[[sensors]]\ntype = "cpu_temperature"\n'
               '[[sensors]]\ntype = "mcp3008"\nname = "soil"\nchannel = 0\nmetric = "soil_moisture"\n')
    path = tmp_path / "agent.toml"
    path.write_text(agent_toml(tmp_path, extra=sensors).replace('backend = "sim"', 'backend = "hardware"'))
    env = {k: v for k, v in os.environ.items() if k != "GPIOZERO_PIN_FACTORY"}
    proc = run_cli("--config", str(path), "check", env=env)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 1, out
    assert "Traceback" not in out and "GENERIC_X86" not in out and "Falling back" not in out, out
    lines = [line for line in proc.stdout.splitlines() if line.strip()]
    assert lines[0].startswith("note: no GPIO here") and "not a Raspberry Pi" in lines[0], out
    assert 'backend = "sim"' in lines[0]
    assert [line.split(" ", 1)[0] for line in lines[1:]] == ["air", "cpu_temperature", "soil"], out
    assert all("FAILED" in line for line in lines[1:]), out
    assert not [line for line in proc.stderr.splitlines() if "warning" in line.lower()], proc.stderr


@pytest.mark.parametrize(("setup", "pieces"), [
    ("dir", ("cannot read", "must name the agent's TOML file")),
    ("binary", ("not UTF-8",)),
    ('interval = "30"', ("agent.interval", "must be a number", "got a string '30'")),
    ("interval = true", ("agent.interval", "must be a number", "got true")),
    ('device_id = 7', ("agent.device_id", "must be a string", "got an integer 7")),
    ("[queue]\nmax_readings = 1.5", ("queue.max_readings", "must be an integer", "got a number 1.5")),
    ('[[sensors]]\ntype = "ds18b20"\nattempts = "3"', ("sensors[0].attempts", "must be an integer")),
    ('[outputs.led]\npin = "17"', ("outputs.led.pin", "must be an integer")),
])
def test_config_errors_name_the_key_and_what_is_expected(tmp_path: Path, setup: str,
                                                        pieces: tuple[str, ...]) -> None:
    """Issue 15 item 11: no Python internals ("invalid literal for int()", type names) in config errors."""
    path = tmp_path / "agent.toml"
    if setup == "dir":
        path = tmp_path
    elif setup == "binary":
        path.write_bytes(b"\xff\xfe\x00garbage")
    elif setup.startswith(("interval", "device_id")):
        text = agent_toml(tmp_path).replace("interval = 0.2", "").replace('device_id = "PI-TEST"', "")
        keep_id = 'device_id = "PI-TEST"\n' if setup.startswith("interval") else ""
        path.write_text(text.replace("[agent]\n", f"[agent]\n{keep_id}{setup}\n", 1))
    else:
        path.write_text(agent_toml(tmp_path, extra=setup))
    for command in ("check", "run"):
        line = assert_one_line(run_cli("--config", str(path), command), 2, *pieces)
        assert not re.search(r"int\(\)|\b(str|int|float|bool|NoneType)\b", line), line
