"""Agent configuration: /etc/edgewire/agent.toml (or --config / EDGEWIRE_AGENT_CONFIG).

Validated on load; any problem raises ConfigError naming the key, e.g.
``config agent.interval: must be > 0``. See edge/agent.example.toml for every key.
"""

from __future__ import annotations

import os
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edge.errors import ConfigError
from edge.sensors.base import BACKENDS, SensorSpec, bcm_pin, metric_name, validate_sensor
from protocol import ota, wire

DEFAULT_PATH = "/etc/edgewire/agent.toml"
ENV_PATH = "EDGEWIRE_AGENT_CONFIG"
ENV_BACKEND = "EDGEWIRE_SENSOR_BACKEND"
OUTPUT_NAMES = ("led", "buzzer", "relay")


@dataclass(slots=True)
class OutputSpec:
    """One output on a BCM pin; ``active_high = false`` for relay boards that switch on LOW."""

    name: str
    pin: int
    active_high: bool = True


@dataclass(slots=True)
class RuleSpec:
    """Local alert: ``metric`` above ``high`` or below ``low`` switches ``outputs`` on (offline only)."""

    metric: str
    high: float | None = None
    low: float | None = None
    hysteresis: float = 0.5
    outputs: list[str] = field(default_factory=list)


@dataclass(slots=True)
class AgentConfig:
    device_id: str = ""
    token: str = ""
    token_file: str = ""
    gateway: str = ""
    interval: float = 30.0
    state_dir: str = "/var/lib/edgewire"
    backend: str = "hardware"
    pin_factory: str = ""
    log_level: str = "info"
    # queue
    max_readings: int = 100_000
    max_age: float = 7 * 86400.0
    max_batch: int = 50
    window: int = 4
    # uplink
    backoff_min: float = 1.0
    backoff_max: float = 60.0
    connect_timeout: float = 10.0
    status_interval: float = 60.0
    ping_interval: float = 20.0
    compression: bool = True
    encoding: str = "cbor"  # offer edgewire.v1.cbor (binary data frames); "json": never
    sensors: list[SensorSpec] = field(default_factory=list)
    outputs: dict[str, OutputSpec] = field(default_factory=dict)
    rules: list[RuleSpec] = field(default_factory=list)
    # [update]: releases over the air (docs/ota.md#pi-agent)
    ota_pubkey: str = ""  # the release key's public point, 130 hex (04 || X || Y); empty: every offer refused
    update_health_s: float = 60.0  # after a switch: reconnected and first ack within this, or rolled back
    prefix: str = "/opt/edgewire"  # releases/<version>/venv, current, good, wheelhouse
    system_site_packages: bool = True  # release venvs see Debian's python3-lgpio / python3-spidev
    path: str = ""

    @property
    def queue_path(self) -> Path:
        return Path(self.state_dir) / "queue.db"

    @property
    def status_path(self) -> Path:
        return Path(self.state_dir) / "status.json"

    @property
    def ota_dir(self) -> Path:
        """Downloads, the request to the updater and its result (docs/ota.md#pi-agent)."""
        return Path(self.state_dir) / "ota"


def config_path(cli_path: str | None) -> str:
    return cli_path or os.environ.get(ENV_PATH) or DEFAULT_PATH


def _take(table: dict[str, Any], section: str, key: str, kinds: tuple[type, ...], default: Any) -> Any:
    name = f"{section}.{key}" if section else key
    if key not in table:
        return default
    value = table[key]
    if (isinstance(value, bool) and bool not in kinds) or not isinstance(value, kinds):
        raise ConfigError.wrong_type(name, kinds, value)
    return value


def _positive(name: str, value: float) -> float:
    if value <= 0:
        raise ConfigError(name, "must be > 0")
    return float(value)


def _known(table: dict[str, Any], section: str, keys: set[str]) -> None:
    for key in table:
        if key not in keys:
            where = f"{section}.{key}" if section else key
            raise ConfigError(where, f"unknown key; known keys: {', '.join(sorted(keys))}")


def _table(raw: dict[str, Any], key: str) -> dict[str, Any]:
    value = raw.get(key, {})
    if not isinstance(value, dict):
        raise ConfigError(key, "must be a table [" + key + "]")
    return value


def load(path: str | None = None) -> AgentConfig:
    """Read and validate the config file; ConfigError names the offending key."""
    where = config_path(path)
    try:
        with open(where, "rb") as handle:
            raw = tomllib.load(handle)
    except FileNotFoundError:
        raise ConfigError("file", f"{where} not found; copy edge/agent.example.toml there "
                                  f"or pass --config / set {ENV_PATH}") from None
    except PermissionError:
        raise ConfigError("file", f"{where} is not readable by this user; check its owner and mode "
                                  "(the service runs as user edgewire)") from None
    except OSError as err:
        raise ConfigError("file", f"cannot read {where} ({err.strerror or err}); --config / "
                                  f"${ENV_PATH} must name the agent's TOML file") from None
    except UnicodeDecodeError:
        raise ConfigError("file", f"{where} is not UTF-8 text; is it the agent's TOML file?") from None
    except tomllib.TOMLDecodeError as err:
        raise ConfigError("file", f"{where} is not valid TOML: {err}") from None
    cfg = parse(raw)
    cfg.path = where
    return cfg


def parse(raw: dict[str, Any]) -> AgentConfig:
    """Validate a decoded TOML document."""
    _known(raw, "", {"agent", "queue", "uplink", "update", "sensors", "outputs", "rules"})
    cfg = AgentConfig()
    agent = _table(raw, "agent")
    _known(agent, "agent", {"device_id", "token", "token_file", "gateway", "interval", "state_dir", "backend",
                            "pin_factory", "log_level"})
    cfg.device_id = _take(agent, "agent", "device_id", (str,), "")
    if not wire.valid_device_id(cfg.device_id):
        raise ConfigError("agent.device_id", "required: 1-64 characters of A-Z a-z 0-9 _ - . :")
    token = _take(agent, "agent", "token", (str,), "")
    token_file = _take(agent, "agent", "token_file", (str,), "")
    if token and token_file:
        raise ConfigError("agent.token", "set token or token_file, not both")
    if token_file:
        try:
            token = Path(token_file).read_text().strip()
        except OSError as err:
            raise ConfigError("agent.token_file", f"cannot read {token_file} ({err.strerror}); "
                                                  "check the path and that user edgewire may read it",
                              ) from None
    if not token:
        raise ConfigError("agent.token", "required (or agent.token_file): the device token from "
                                         "`python -m gateway devices add ID`")
    cfg.token = token
    cfg.token_file = token_file
    cfg.gateway = _take(agent, "agent", "gateway", (str,), "")
    if not cfg.gateway.startswith(("ws://", "wss://")):
        raise ConfigError("agent.gateway", "required: the device endpoint, e.g. ws://gateway.local:8080/v1/device")
    cfg.interval = _positive("agent.interval", _take(agent, "agent", "interval", (int, float), cfg.interval))
    default_state = os.environ.get("STATE_DIRECTORY", cfg.state_dir)
    cfg.state_dir = _take(agent, "agent", "state_dir", (str,), default_state)
    if not cfg.state_dir:
        raise ConfigError("agent.state_dir", "must not be empty")
    cfg.backend = os.environ.get(ENV_BACKEND) or _take(agent, "agent", "backend", (str,), cfg.backend)
    if cfg.backend not in BACKENDS:
        key = ENV_BACKEND if os.environ.get(ENV_BACKEND) else "agent.backend"
        raise ConfigError(key, f"{cfg.backend!r} is not a backend; use one of {', '.join(BACKENDS)}")
    cfg.pin_factory = _take(agent, "agent", "pin_factory", (str,), "")
    cfg.log_level = _take(agent, "agent", "log_level", (str,), cfg.log_level).lower()
    if cfg.log_level not in ("debug", "info", "warning", "error"):
        raise ConfigError("agent.log_level", "use debug, info, warning or error")

    queue = _table(raw, "queue")
    _known(queue, "queue", {"max_readings", "max_age", "max_batch", "window"})
    cfg.max_readings = int(_positive("queue.max_readings",
                                     _take(queue, "queue", "max_readings", (int,), cfg.max_readings)))
    cfg.max_age = _positive("queue.max_age", _take(queue, "queue", "max_age", (int, float), cfg.max_age))
    cfg.max_batch = int(_positive("queue.max_batch",
                                  _take(queue, "queue", "max_batch", (int,), cfg.max_batch)))
    if cfg.max_batch > wire.MAX_BATCH:
        raise ConfigError("queue.max_batch", f"must be <= {wire.MAX_BATCH}")
    cfg.window = int(_positive("queue.window", _take(queue, "queue", "window", (int,), cfg.window)))

    uplink = _table(raw, "uplink")
    _known(uplink, "uplink", {"backoff_min", "backoff_max", "connect_timeout", "status_interval",
                              "ping_interval", "compression", "encoding"})
    for key in ("backoff_min", "backoff_max", "connect_timeout", "status_interval", "ping_interval"):
        value = _take(uplink, "uplink", key, (int, float), getattr(cfg, key))
        setattr(cfg, key, _positive(f"uplink.{key}", value))
    if cfg.backoff_max < cfg.backoff_min:
        raise ConfigError("uplink.backoff_max", "must be >= uplink.backoff_min")
    cfg.compression = _take(uplink, "uplink", "compression", (bool,), cfg.compression)
    cfg.encoding = _take(uplink, "uplink", "encoding", (str,), cfg.encoding)
    if cfg.encoding not in ("cbor", "json"):
        raise ConfigError("uplink.encoding", f"must be \"cbor\" (binary data frames when the gateway offers "
                          f"them) or \"json\", not {cfg.encoding!r}")

    parse_update(_table(raw, "update"), cfg)

    sensors = raw.get("sensors", [])
    if not isinstance(sensors, list):
        raise ConfigError("sensors", "must be an array of tables ([[sensors]])")
    seen: dict[str, str] = {}
    for index, entry in enumerate(sensors):
        spec = validate_sensor(index, entry)
        for metric in spec.metrics:
            if metric in seen:
                raise ConfigError(f"sensors[{index}]", f"metric {metric!r} is also produced by sensor "
                                  f"{seen[metric]!r}; rename one (e.g. its `metric` option)")
            seen[metric] = spec.name
        cfg.sensors.append(spec)

    outputs = _table(raw, "outputs")
    _known(outputs, "outputs", set(OUTPUT_NAMES))
    pins: dict[int, str] = {}
    for name, table in outputs.items():
        section = f"outputs.{name}"
        if not isinstance(table, dict):
            raise ConfigError(section, "must be a table with pin = N")
        _known(table, section, {"pin", "active_high"})
        pin = _take(table, section, "pin", (int,), None)
        if pin is None:
            raise ConfigError(f"{section}.pin", "required: BCM GPIO number")
        problem = bcm_pin(pin)
        if problem:
            raise ConfigError(f"{section}.pin", problem)
        if pin in pins:
            raise ConfigError(f"{section}.pin", f"GPIO{pin} is already used by outputs.{pins[pin]}")
        pins[pin] = name
        cfg.outputs[name] = OutputSpec(name, pin, _take(table, section, "active_high", (bool,), True))

    rules = raw.get("rules", [])
    if not isinstance(rules, list):
        raise ConfigError("rules", "must be an array of tables ([[rules]])")
    for index, entry in enumerate(rules):
        cfg.rules.append(parse_rule(f"rules[{index}]", entry, cfg.outputs))
    return cfg


def parse_update(update: dict[str, Any], cfg: AgentConfig) -> None:
    """The [update] table: the release key, the health window after a switch, the install prefix."""
    _known(update, "update", {"ota_pubkey", "update_health_s", "prefix", "system_site_packages"})
    key = _take(update, "update", "ota_pubkey", (str,), "").strip().lower()
    if key and ota.parse_pubkey(key) is None:
        raise ConfigError("update.ota_pubkey", "must be the release key's public point, 130 hex characters "
                                               "04 || X || Y on P-256 (docs/ota.md#pi-agent)")
    cfg.ota_pubkey = key
    cfg.update_health_s = _positive("update.update_health_s", _take(update, "update", "update_health_s",
                                                                    (int, float), cfg.update_health_s))
    cfg.prefix = _take(update, "update", "prefix", (str,), cfg.prefix)
    if not cfg.prefix.startswith("/"):
        raise ConfigError("update.prefix", "must be an absolute path (the directory holding releases/ and current)")
    cfg.system_site_packages = _take(update, "update", "system_site_packages", (bool,), cfg.system_site_packages)


def parse_rule(section: str, entry: Any, outputs: dict[str, OutputSpec]) -> RuleSpec:
    if not isinstance(entry, dict):
        raise ConfigError(section, "must be a table ([[rules]])")
    _known(entry, section, {"metric", "high", "low", "hysteresis", "outputs"})
    metric = _take(entry, section, "metric", (str,), "")
    if not metric or metric_name(metric):
        raise ConfigError(f"{section}.metric", "required: a metric name like temperature")
    high = _take(entry, section, "high", (int, float), None)
    low = _take(entry, section, "low", (int, float), None)
    if high is None and low is None:
        raise ConfigError(f"{section}.high", "set high, low or both")
    if high is not None and low is not None and low >= high:
        raise ConfigError(f"{section}.low", "must be below high")
    hysteresis = _take(entry, section, "hysteresis", (int, float), 0.5)
    if hysteresis < 0:
        raise ConfigError(f"{section}.hysteresis", "must be >= 0")
    names = _take(entry, section, "outputs", (list,), [])
    for name in names:
        if name not in ("buzzer", "relay"):
            raise ConfigError(f"{section}.outputs", f"{name!r}: rules drive buzzer and relay only")
        if name not in outputs:
            raise ConfigError(f"{section}.outputs", f"{name!r} is not configured under [outputs.{name}]")
    return RuleSpec(metric, None if high is None else float(high), None if low is None else float(low),
                    float(hysteresis), list(names))
