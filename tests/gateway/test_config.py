"""Gateway configuration: precedence, coercion, validation messages that name the key."""

from __future__ import annotations

from pathlib import Path

import pytest

from gateway.config import GatewayConfig, load_config
from gateway.errors import ConfigError
from protocol import wire


def test_defaults_are_documented_values() -> None:
    config = load_config(env={})
    assert (config.host, config.port, config.storage, config.rate, config.burst) == ("127.0.0.1", 8080, "sqlite",
                                                                                     10.0, 20.0)
    assert config.database == Path("var/gateway/edgewire.db")
    assert [(r["id"], r["type"], r["above"], r["hysteresis"]) for r in config.alerts] == [
        ("temperature_above_30", "above", 30.0, 1.0)]
    documented = Path(__file__).resolve().parents[2].joinpath("docs/configuration.md").read_text()
    for name in GatewayConfig.__dataclass_fields__:
        assert f"`{name}`" in documented or f"[[{name}]]" in documented, name


def test_precedence_file_then_env_then_flags(tmp_path: Path) -> None:
    path = tmp_path / "gw.toml"
    path.write_text('[gateway]\nport = 9000\nrate = 5\nallow_cidrs = ["10.0.0.0/8"]\n'
                    '[[gateway.alerts]]\nmetric = "humidity"\nabove = 80\nhysteresis = 5\n')
    config = load_config(path, env={"EDGEWIRE_RATE": "7.5", "EDGEWIRE_COMPRESSION": "false", "EDGEWIRE_CBOR": "true",
                                    "OTHER": "x"}, overrides={"port": 9100, "host": None})
    assert config.port == 9100  # flag beats file
    assert config.rate == 7.5  # env beats file
    assert config.compression is False and config.cbor is True and load_config(env={}).cbor is False
    assert config.allow_cidrs == ["10.0.0.0/8"]
    assert [(r["metric"], r["above"], r["hysteresis"]) for r in config.alerts] == [("humidity", 80.0, 5.0)]
    assert config.host == "127.0.0.1"  # unset flag changes nothing


@pytest.mark.parametrize(("env", "key"), [
    ({"EDGEWIRE_PORT": "eighty"}, "port"),
    ({"EDGEWIRE_PORT": "70000"}, "port"),
    ({"EDGEWIRE_RATE": "0"}, "rate"),
    ({"EDGEWIRE_STORAGE": "mongodb"}, "storage"),
    ({"EDGEWIRE_ALLOW_CIDRS": "10.0.0.0/8,not-an-address"}, "allow_cidrs"),
    ({"EDGEWIRE_COMPRESSION": "maybe"}, "compression"),
    ({"EDGEWIRE_TLS_CERT": "/etc/cert.pem"}, "tls_cert"),
    ({"EDGEWIRE_FORWARD_LAG_DEGRADED_S": "-1"}, "forward_lag_degraded_s"),
])
def test_bad_values_name_the_key(env: dict[str, str], key: str) -> None:
    with pytest.raises(ConfigError, match=key):
        load_config(env=env)


def test_unknown_key_and_bad_toml(tmp_path: Path) -> None:
    path = tmp_path / "gw.toml"
    path.write_text("prot = 80\n")
    with pytest.raises(ConfigError, match="prot: unknown setting"):
        load_config(path, env={})
    path.write_text("port = \n")
    with pytest.raises(ConfigError, match=str(path)):
        load_config(path, env={})
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "missing.toml", env={})
    assert isinstance(ConfigError("x"), ValueError)


def test_serve_with_bad_config_exits_2_with_message(tmp_path: Path) -> None:
    import subprocess
    import sys

    path = tmp_path / "gw.toml"
    path.write_text("rate = -1\n")
    proc = subprocess.run([sys.executable, "-m", "gateway", "serve", "--config", str(path)], capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == 2
    assert "rate: must be greater than 0" in proc.stderr
    assert "Traceback" not in proc.stderr


@pytest.mark.parametrize(("host", "auth", "required"), [
    ("127.0.0.1", "auto", False), ("::1", "auto", False), ("localhost", "auto", False),
    ("0.0.0.0", "auto", True), ("192.0.2.10", "auto", True), ("gateway.example", "auto", True),
    ("127.0.0.1", "on", True), ("0.0.0.0", "off", False),
])
def test_dashboard_auth_is_required_beyond_loopback(host: str, auth: str, required: bool) -> None:
    config = load_config(env={}, overrides={"host": host, "dashboard_auth": auth})
    assert config.dashboard_token_required is required


@pytest.mark.parametrize(("host", "auth", "proxies", "client", "needed"), [
    ("127.0.0.1", "auto", [], "127.0.0.1", False),
    ("127.0.0.1", "auto", [], "::1", False),
    ("127.0.0.1", "auto", [], "203.0.113.9", True),  # a client beyond loopback (after the proxy rules)
    ("127.0.0.1", "auto", ["127.0.0.1/32"], "127.0.0.1", True),  # behind a proxy: always
    ("127.0.0.1", "auto", ["127.0.0.1/32"], "203.0.113.9", True),
    ("0.0.0.0", "auto", [], "127.0.0.1", True),
    ("127.0.0.1", "auto", [], "not-an-address", True),
    ("127.0.0.1", "on", [], "127.0.0.1", True),
    ("0.0.0.0", "off", ["10.0.0.0/8"], "203.0.113.9", False),
])
def test_dashboard_token_needed_per_client(host: str, auth: str, proxies: list[str], client: str,
                                           needed: bool) -> None:
    config = load_config(env={}, overrides={"host": host, "dashboard_auth": auth, "trusted_proxies": proxies})
    assert config.dashboard_token_needed(client) is needed


def test_alert_rules_and_webhooks_from_toml(tmp_path: Path) -> None:
    path = tmp_path / "gw.toml"
    path.write_text('alert_timezone = "Europe/Paris"\n'
                    '[[alerts]]\nmetric = "soil_moisture"\nbelow = 20\nhysteresis = 5\nfor_s = 600\n'
                    '[[alerts]]\nid = "offline"\ntype = "no_data"\nintervals = 3\nseverity = "critical"\n'
                    '[[webhooks]]\nname = "ops"\nurl = "https://hooks.example.com/edgewire"\n'
                    'secret_env = "OPS_HOOK_SECRET"\nseverities = ["critical", "major"]\n')
    config = load_config(path, env={})
    assert [(r["id"], r["type"], r["severity"]) for r in config.alerts] == [
        ("soil_moisture_below_20", "below", "major"), ("offline", "no_data", "critical")]
    assert config.alerts[0]["for_s"] == 600.0
    assert [(w.name, w.severities) for w in config.webhooks] == [("ops", ("critical", "major"))]
    assert config.alert_timezone == "Europe/Paris"


@pytest.mark.parametrize(("toml", "message"), [
    ('[[alerts]]\nmetric = "temperature"\nbelow = "five"\n', "alerts: rule 1: below: must be a number, not 'five'"),
    ('[[alerts]]\nmetric = "temperature"\nabove = 30\nbelow = 5\n', "alerts: rule 1: unknown key 'below'"),
    ('[[alerts]]\ntype = "anomaly"\n', "alerts: rule 1: metric: missing"),
    ('[[alerts]]\ntype = "rate"\nmetric = "co2"\nper_minute = -1\n',
     "alerts: rule 1: per_minute: must be greater than 0"),
    ('[[alerts]]\nmetric = "temperature"\nabove = 30\nseverity = "high"\n',
     "alerts: rule 1: severity: must be one of critical, major, minor, warning"),
    ('[[alerts]]\nmetric = "temperature"\nabove = 30\n[[alerts]]\nmetric = "temperature"\nabove = 30\n',
     "alerts: rules 1 and 2 have the same id 'temperature_above_30'"),
    ('alerts = 5\n', "alerts: expected a list of [[alerts]] tables"),
    ('[[webhooks]]\nname = "x"\n', "webhooks: webhook 1 (x): url: missing"),
    ('alert_timezone = "Mars/Olympus"\n', "alert_timezone: 'Mars/Olympus' is not a time zone name"),
])
def test_alert_config_errors_name_the_key(tmp_path: Path, toml: str, message: str) -> None:
    path = tmp_path / "gw.toml"
    path.write_text(toml)
    with pytest.raises(ConfigError) as err:
        load_config(path, env={})
    assert message in str(err.value)
    assert "keyword argument" not in str(err.value)


def test_extra_metrics_from_toml_join_the_metric_table(tmp_path: Path) -> None:
    """Issue 20 item 8: an operator's [[metrics]] make a custom sensor first-class."""
    path = tmp_path / "gw.toml"
    path.write_text('[gateway]\n[[gateway.metrics]]\nname = "rain"\nunit = "mm"\nlow = 0\nhigh = 500\n'
                    'device_class = "precipitation"\nstate_class = "total_increasing"\nlabel = "Rain"\n'
                    '[[gateway.metrics]]\nname = "leaf_wetness"\n')
    config = load_config(path, env={"EDGEWIRE_METRICS": "rain"}, warn=lambda message: None)
    table = config.metric_table()
    assert table.rows["rain"] == ("mm", 0.0, 500.0, "precipitation", "Rain")
    assert table.state_class("rain") == "total_increasing" and table.state_class("temperature") == "measurement"
    assert table.rows["leaf_wetness"] == ("", *wire.GENERIC_RANGE, None, "Leaf wetness")
    assert table.unit("leaf_wetness") is None and table.unit("rain") == "mm"
    assert {k: v for k, v in table.rows.items() if k in wire.METRICS} == wire.METRICS  # built-ins unchanged
    assert load_config(env={}).metric_table().rows == wire.METRICS
    warnings: list[str] = []
    load_config(env={"EDGEWIRE_METRICS": "rain"}, warn=warnings.append)
    assert warnings and "[[metrics]]" in warnings[0]


@pytest.mark.parametrize(("toml", "message"), [
    ('[[metrics]]\nname = "temperature"\nunit = "K"\n', "metrics[0].name: 'temperature' is built in"),
    ('[[metrics]]\nname = "Rain"\n', "metrics[0].name: must be 1-32 characters of a-z 0-9 _"),
    ('[[metrics]]\nname = "rain"\nlow = 10\nhigh = 5\n', "metrics[0]: low (10) must be below high (5)"),
    ('[[metrics]]\nname = "rain"\nhigh = "lots"\n', "metrics[0].high: must be a finite number"),
    ('[[metrics]]\nname = "rain"\nunits = "mm"\n', "metrics[0]: unknown key 'units'"),
    ('[[metrics]]\nname = "rain"\nstate_class = "sum"\n', "metrics[0].state_class: must be one of measurement"),
    ('[[metrics]]\nname = "rain"\ndevice_class = "Rain Fall"\n', "metrics[0].device_class: must be a Home Assistant"),
    ('[[metrics]]\nname = "rain"\n[[metrics]]\nname = "rain"\n', "metrics[1].name: 'rain' is declared twice"),
    ('metrics = 5\n', "metrics: must be a list of tables"),
])
def test_metric_config_errors_name_the_key(tmp_path: Path, toml: str, message: str) -> None:
    path = tmp_path / "gw.toml"
    path.write_text(toml)
    with pytest.raises(ConfigError) as err:
        load_config(path, env={})
    assert message in str(err.value)
