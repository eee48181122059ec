"""Forwarding settings (config keys, errors naming the setting), the Forwarding group and its /metrics lines."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from gateway.config import load_config
from gateway.errors import ConfigError
from gateway.forward import metrics
from gateway.forward.discovery import Topics, device_of_unique_id, object_id, unique_id
from gateway.forward.setup import Forwarding, mqtt_settings
from gateway.storage.base import ReadingRow
from gateway.storage.sqlite import SQLiteStorage


def test_settings_from_file_environment_and_flags(tmp_path: Path) -> None:
    secret = tmp_path / "mqtt.pw"
    secret.write_text("s3cret\n")
    conf = tmp_path / "g.toml"
    conf.write_text(f'mqtt_url = "mqtts://broker.lan"\nmqtt_username = "edgewire"\n'
                    f'mqtt_password_file = "{secret}"\nmqtt_ca_file = "/etc/ssl/ca.pem"\nmqtt_commands = true\n')
    config = load_config(conf, env={"EDGEWIRE_MQTT_PREFIX": "site/a", "EDGEWIRE_INSTANCE_ID": "gw-7"},
                         overrides={"nats_url": "nats://127.0.0.1:4333"})
    settings = mqtt_settings(config, "gw-7")
    assert (settings.url.host, settings.url.port, settings.url.tls) == ("broker.lan", 8883, True)
    assert (settings.username, settings.password, settings.client_id) == ("edgewire", "s3cret", "edgewire-gw-7")
    assert settings.prefix == "site/a" and settings.commands and settings.discovery
    assert settings.discovery_prefix == "homeassistant" and settings.ca_file == "/etc/ssl/ca.pem"
    assert config.nats_url == "nats://127.0.0.1:4333" and config.forward_window == 2000
    assert load_config(env={"EDGEWIRE_MQTT_URL": "mqtt://h:1"}).mqtt_url == "mqtt://h:1"


@pytest.mark.parametrize(("values", "names"), [
    ({"mqtt_url": "http://broker"}, "mqtt_url: scheme 'http'"),
    ({"mqtt_url": "mqtt://"}, "mqtt_url: "),
    ({"mqtt_url": "mqtt://user:hunter2@broker/x"}, "has a path"),
    ({"nats_url": "redis://x"}, "nats_url: scheme"),
    ({"mqtt_prefix": "edge/#"}, "mqtt_prefix"),
    ({"mqtt_discovery_prefix": "/ha"}, "mqtt_discovery_prefix"),
    ({"nats_subject_prefix": "a.*"}, "nats_subject_prefix"),
    ({"mqtt_client_id": "has space"}, "mqtt_client_id"),
    ({"forward_window": 0}, "forward_window"),
    ({"mqtt_url": "mqtt://b", "storage": "none"}, "storage = \"none\""),
])
def test_bad_settings_name_the_setting_never_the_password(values: dict[str, object], names: str) -> None:
    with pytest.raises(ConfigError) as caught:
        load_config(env={}, overrides=values)
    assert names in str(caught.value)
    assert "hunter2" not in str(caught.value)


def test_password_file_and_ca_file_errors(tmp_path: Path) -> None:
    config = load_config(env={}, overrides={"mqtt_url": "mqtt://b", "mqtt_password_file": str(tmp_path / "none")})
    with pytest.raises(ConfigError, match="mqtt_password_file: cannot read"):
        mqtt_settings(config, "gw")
    config = load_config(env={}, overrides={"mqtt_url": "mqtt://b", "mqtt_ca_file": "/x.pem"})
    with pytest.raises(ConfigError, match="mqtt_ca_file: set, but mqtt_url is not mqtts://"):
        mqtt_settings(config, "gw")


def test_topics_and_ids() -> None:
    topics = Topics("edgewire", "homeassistant", "gw1")
    assert topics.command_of("edgewire/S-1/command/ping") == ("S-1", "ping")
    assert topics.command_of("edgewire/S-1/command/ping/result") is None
    assert topics.command_of("edgewire/bridge/gw1/status") is None
    assert topics.command_of("other/S-1/command/ping") is None
    assert device_of_unique_id(unique_id("a:b.c", "soil_moisture")) == "a:b.c"
    assert device_of_unique_id("zigbee:x") is None and device_of_unique_id(5) is None
    # Ids of different devices never share a discovery topic, also after their characters are replaced.
    ids = ["a.b", "a_b", "a:b", "a-b", "A-B"]
    assert len({topics.config(d, "temperature") for d in ids}) == len(ids)
    assert object_id("a-b") == "a-b" and re.fullmatch(r"a_b_[0-9a-f]{8}", object_id("a.b"))


def test_forwarding_group_and_metrics(tmp_path: Path) -> None:
    storage = SQLiteStorage(tmp_path / "m.db")
    urls = {"mqtt_url": "mqtt://127.0.0.1:1", "nats_url": "nats://127.0.0.1:2", "mqtt_commands": True}
    here = Forwarding.from_config(load_config(env={}, overrides={**urls, "forward_process": False}), storage,
                                  "gw1", "0.1.0", run_command=None)
    assert [f.name for f in here.forwarders] == ["mqtt", "nats"] and here.worker is None
    assert [name for name, _ in here.tasks()] == ["forward_mqtt", "forward_nats", "mqtt_upkeep"]
    here.forwarders[0].counters.refused = 2
    text = metrics.render(here, now=0.0)
    names = set()
    for line in text.splitlines():
        if line.startswith("# TYPE "):
            names.add(line.split()[2])
            continue
        if line.startswith("#"):
            continue
        name = re.split(r"[{ ]", line, maxsplit=1)[0]
        assert name in names, f"{name} has no TYPE line"
        assert re.fullmatch(r"[a-z_]+(\{[a-z_]+=\"[a-z_]+\"(,[a-z_]+=\"[a-z_]+\")*\})? -?[0-9.e+-]+", line), line
    assert 'edgewire_forward_dropped_total{sink="mqtt",reason="refused"} 2' in text
    assert 'edgewire_forward_connected{sink="nats"} 0' in text
    assert "edgewire_mqtt_dropped_total" in text and "edgewire_forward_worker_up" not in text
    # The default: readings forwarded by the worker process; the bridge stays in the gateway.
    worker = Forwarding.from_config(load_config(env={}, overrides=urls), storage, "gw1", "0.1.0")
    assert worker.forwarders == [] and worker.worker is not None and worker.bridge is not None
    assert worker.sink_names == ["mqtt", "nats"]
    assert [name for name, _ in worker.tasks()] == ["forward_worker", "mqtt_upkeep"]
    worker.worker.stats = [dict(here.forwarders[1].stats(0.0), acked=7)]
    assert 'edgewire_forward_acked_total{sink="nats"} 7' in metrics.render(worker)
    assert "edgewire_forward_worker_up 0" in metrics.render(worker)
    assert metrics.render(Forwarding(storage, [])) == ""
    empty = Forwarding.from_config(load_config(env={}), storage, "gw1", "0.1.0")
    empty.device_online("x")  # no-ops without MQTT
    empty.committed([ReadingRow("x", 1, 1, 1, {"temperature": 1.0})])
    assert empty.forwarders == [] and empty.tasks() == [] and empty.worker is None


def test_committed_rows_wake_the_forwarders_and_reach_discovery(tmp_path: Path) -> None:
    """Forwarding's commit listener (gateway/fanout.py): one wake per committed batch, and the
    bridge's discovery sees every stored reading's device and metrics."""
    woken: list[str] = []
    seen: list[tuple[str, list[str]]] = []

    class Forwarder:
        name = "mqtt"

        def wake(self) -> None:
            woken.append(self.name)

    class Bridge:
        def saw_reading(self, device_id: str, metrics: dict[str, float]) -> None:
            seen.append((device_id, sorted(metrics)))

    forwarding = Forwarding(SQLiteStorage(tmp_path / "e.db"), [Forwarder()], bridge=Bridge())  # type: ignore[list-item]
    forwarding.committed([ReadingRow("a", 1, 1, 1, {"temperature": 1.0, "humidity": 2.0}),
                          ReadingRow("b", 7, 1, 1, {"co2": 400.0})])
    assert woken == ["mqtt"]
    assert seen == [("a", ["humidity", "temperature"]), ("b", ["co2"])]
