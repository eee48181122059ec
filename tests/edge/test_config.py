"""Configuration: the example parses; every bad value names its key and changes nothing."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from edge import config
from edge.errors import ConfigError, EdgeError
from tests.edge.conftest import agent_toml

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "edge" / "agent.example.toml"


def load_text(tmp_path: Path, text: str) -> config.AgentConfig:
    path = tmp_path / "agent.toml"
    path.write_text(text)
    return config.load(str(path))


def test_example_config_is_valid() -> None:
    cfg = config.load(str(EXAMPLE))
    assert cfg.device_id == "PI-GREENHOUSE-1"
    assert [s.type for s in cfg.sensors] == ["dht22", "cpu_temperature", "mcp3008", "mcp3008", "ds18b20"]
    assert cfg.sensors[0].metrics == ["temperature", "humidity"]
    assert cfg.outputs["relay"].active_high is False
    assert cfg.rules[0].outputs == ["buzzer", "relay"]


def test_every_metric_of_the_example_has_a_row_in_the_metric_table() -> None:
    """Issue 20 item 8: the example's DS18B20 sent soil_temperature, which the table lacked: the dashboard
    showed it without a unit and Home Assistant got no unit or device class."""
    from protocol import wire

    cfg = config.load(str(EXAMPLE))
    used = [metric for spec in cfg.sensors for metric in spec.metrics]
    assert "soil_temperature" in used and set(used) <= set(wire.METRICS), set(used) - set(wire.METRICS)
    assert wire.METRICS["soil_temperature"][0] == "°C"


def test_defaults_and_env_backend(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    text = agent_toml(tmp_path).replace('backend = "sim"', "")
    assert load_text(tmp_path, text).backend == "hardware"
    monkeypatch.setenv(config.ENV_BACKEND, "sim")
    assert load_text(tmp_path, text).backend == "sim"


def test_config_path_from_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "elsewhere.toml"
    path.write_text(agent_toml(tmp_path))
    monkeypatch.setenv(config.ENV_PATH, str(path))
    assert config.load(None).path == str(path)
    assert config.config_path("/x.toml") == "/x.toml"


BAD = [
    ("agent.device_id", 'device_id = "PI-TEST"', 'device_id = "bad id!"'),
    ("agent.gateway", 'gateway = "ws://127.0.0.1:9/v1/device"', 'gateway = "http://x"'),
    ("agent.interval", "interval = 0.2", "interval = -1"),
    ("agent.interval", "interval = 0.2", 'interval = "fast"'),
    ("agent.backend", 'backend = "sim"', 'backend = "fpga"'),
    ("agent.token", 'token = "ewt_test"', 'token = ""'),
    ("agent.colour", 'backend = "sim"', 'backend = "sim"\ncolour = "red"'),
    ("queue.max_batch", "", "[queue]\nmax_batch = 1000"),
    ("uplink.backoff_max", "", "[uplink]\nbackoff_min = 10.0\nbackoff_max = 1.0"),
    ("sensors[0].type", "", '[[sensors]]\ntype = "bme999"'),
    ("sensors[0].pin", "", '[[sensors]]\ntype = "dht22"'),
    ("sensors[0].pin", "", '[[sensors]]\ntype = "dht22"\npin = 40'),
    ("sensors[0].pin", "", '[[sensors]]\ntype = "dht22"\npin = true'),
    ("sensors[0].channel", "", '[[sensors]]\ntype = "mcp3008"\nchannel = 9'),
    ("sensors[0].raw_range", "", '[[sensors]]\ntype = "mcp3008"\nchannel = 1\nraw_range = [1, 1]'),
    ("sensors[0].speed", "", '[[sensors]]\ntype = "ds18b20"\nspeed = 3'),
    ("sensors[1]", "", '[[sensors]]\ntype = "ds18b20"\n[[sensors]]\ntype = "dht22"\npin = 4'),
    ("outputs.relay.pin", "", "[outputs.led]\npin = 17\n[outputs.relay]\npin = 17"),
    ("outputs.siren", "", "[outputs.siren]\npin = 5"),
    ("rules[0].outputs", "", '[[rules]]\nmetric = "temperature"\nhigh = 30\noutputs = ["relay"]'),
    ("rules[0].low", "", '[outputs.relay]\npin = 5\n[[rules]]\nmetric = "t"\nhigh = 3\nlow = 5'),
]


@pytest.mark.parametrize(("key", "old", "new"), BAD, ids=[f"{b[0]}-{i}" for i, b in enumerate(BAD)])
def test_bad_value_names_the_key(tmp_path: Path, key: str, old: str, new: str) -> None:
    text = agent_toml(tmp_path)
    text = text.replace(old, new) if old else text + "\n" + new + "\n"
    with pytest.raises(ConfigError) as info:
        load_text(tmp_path, text)
    assert info.value.key == key
    assert f"config {key}:" in str(info.value)
    assert isinstance(info.value, ValueError) and isinstance(info.value, EdgeError)


def test_missing_and_broken_files(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not found"):
        config.load(str(tmp_path / "nope.toml"))
    (tmp_path / "bad.toml").write_text("[agent\n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        config.load(str(tmp_path / "bad.toml"))


def test_token_file(tmp_path: Path) -> None:
    (tmp_path / "token").write_text("ewt_from_file\n")
    text = agent_toml(tmp_path).replace('token = "ewt_test"', f'token_file = "{tmp_path}/token"')
    assert load_text(tmp_path, text).token == "ewt_from_file"
    text = agent_toml(tmp_path).replace('token = "ewt_test"', f'token_file = "{tmp_path}/missing"')
    with pytest.raises(ConfigError, match=r"agent\.token_file"):
        load_text(tmp_path, text)


@pytest.mark.parametrize("command", ["run", "check"])
def test_cli_bad_config_exits_non_zero_naming_the_key(tmp_path: Path, command: str) -> None:
    path = tmp_path / "agent.toml"
    path.write_text(agent_toml(tmp_path).replace("interval = 0.2", "interval = 0"))
    proc = subprocess.run([sys.executable, "-m", "edge", "--config", str(path), command], cwd=ROOT,
                          capture_output=True, text=True, timeout=60, env=dict(os.environ))
    assert proc.returncode == 2
    assert "agent.interval" in proc.stderr and "must be > 0" in proc.stderr
    assert not (tmp_path / "queue.db").exists()  # nothing started
