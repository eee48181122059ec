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
    assert "ExecStart=/opt/edgewire/venv/bin/edgewire-agent run" in text
    unit = tmp_path / "edgewire-agent.service"
    unit.write_text(text.replace("/opt/edgewire/venv/bin/edgewire-agent", str(script)))
    proc = subprocess.run(["systemd-analyze", "verify", str(unit)], capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == 0, proc.stderr
    problems = [line for line in proc.stderr.splitlines() if "edgewire-agent.service" in line]
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
