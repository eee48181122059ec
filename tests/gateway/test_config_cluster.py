"""The scale-out settings: bus (EDGEWIRE_BUS) and instance_id, checked and named in errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from gateway.config import load_config
from gateway.errors import ConfigError


@pytest.mark.parametrize(("value", "display"), [
    ("", "embedded"),
    ("redis://127.0.0.1:6379/0", "redis://127.0.0.1:6379/0"),
    ("redis://redis.example", "redis://redis.example:6379/0"),
    ("redis://:s3cret@10.0.0.5:6380/3", "redis://10.0.0.5:6380/3"),
    ("nats://127.0.0.1:4222", "nats://127.0.0.1:4222"),
    ("nats://user:pw@nats.example", "nats://nats.example:4222"),
])
def test_bus_urls_are_accepted_and_shown_without_secrets(value: str, display: str) -> None:
    config = load_config(env={"EDGEWIRE_BUS": value, "EDGEWIRE_INSTANCE_ID": "gw-7"})
    assert config.bus == value and config.instance_id == "gw-7"
    assert config.bus_display == display


@pytest.mark.parametrize(("env", "message"), [
    ({"EDGEWIRE_BUS": "kafka://127.0.0.1:9092"}, "bus: scheme 'kafka'"),
    ({"EDGEWIRE_BUS": "redis://127.0.0.1:6379/99"}, "bus: Redis database '99'"),
    ({"EDGEWIRE_BUS": "redis://127.0.0.1:notaport/0"}, "bus: .* is not a URL"),
    ({"EDGEWIRE_BUS": "nats://127.0.0.1:4222/x"}, "bus: a NATS URL has no path"),
    ({"EDGEWIRE_BUS": "redis:///0"}, "bus: .* names no host"),
    ({"EDGEWIRE_BUS": "nats://127.0.0.1:4222?x=1"}, "bus: .* query"),
    ({"EDGEWIRE_INSTANCE_ID": "gw.1"}, "instance_id: 'gw.1'"),
    ({"EDGEWIRE_INSTANCE_ID": "-gw"}, "instance_id"),
])
def test_bad_values_name_the_setting(env: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_config(env=env)


def test_password_never_appears_in_the_error() -> None:
    with pytest.raises(ConfigError) as refused:
        load_config(env={"EDGEWIRE_BUS": "redis://:hunter2@127.0.0.1:notaport/0"})
    assert "hunter2" not in str(refused.value)


def test_toml_file(tmp_path: Path) -> None:
    path = tmp_path / "gw.toml"
    path.write_text('[gateway]\nbus = "nats://10.1.2.3:4222"\ninstance_id = "edge-a"\n')
    config = load_config(path, env={})
    assert (config.bus, config.instance_id) == ("nats://10.1.2.3:4222", "edge-a")
