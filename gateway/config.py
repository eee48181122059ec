"""Gateway configuration: defaults, then a TOML file, then EDGEWIRE_* environment, then flags.

Every setting is a field of GatewayConfig with its default; docs/configuration.md lists them.
"""

from __future__ import annotations

import dataclasses
import difflib
import ipaddress
import os
import tomllib
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gateway.alerts.localtime import zone
from gateway.alerts.rules import DEFAULT_RULES, parse_rules
from gateway.alerts.webhook import WebhookConfig, parse_webhooks
from gateway.bus.url import check_name, parse_bus_url
from gateway.errors import ConfigError
from gateway.forward.settings import (
    MQTT_PORTS,
    NATS_PORTS,
    check_client_id,
    check_subject_prefix,
    check_topic_prefix,
    parse_broker_url,
)
from gateway.metric_table import MetricSpec, MetricTable, parse_metrics
from gateway.storage.dsn import redact, storage_kind

ENV_PREFIX = "EDGEWIRE_"
MAX_WORKERS = 64


@dataclass(slots=True)
class GatewayConfig:
    host: str = "127.0.0.1"
    port: int = 8080
    data_dir: str = "var/gateway"
    storage: str = "sqlite"  # "sqlite", "none" (transport only: readings are not stored) or a postgresql:// URL
    db_path: str = ""  # default: <data_dir>/edgewire.db
    readings_retention_days: int = 30  # raw readings older than this are deleted (hourly)
    rollup_retention_days: int = 730  # 5-minute and 1-hour rollups older than this are deleted
    commit_interval_ms: float = 5.0
    synchronous: str = "FULL"
    rate: float = 10.0  # frames per second per device
    burst: float = 20.0
    max_frame: int = 16384
    max_batch: int = 100
    max_clock_skew_s: float = 86400.0  # a reading's ts further ahead of the gateway's clock is refused
    auth_timeout_s: float = 5.0
    ping_interval_s: float = 20.0
    ping_timeout_s: float = 20.0
    compression: bool = True
    cbor: bool = False  # select the subprotocol edgewire.v1.cbor for devices that offer it (binary data frames)
    uvloop: bool = True  # use uvloop's event loop when it is installed (the "fast" extra)
    workers: int = 0  # worker processes (gateway/workers.py); 0 = one per core; 1 = one process, no host
    commit_process: bool = False  # with workers: readings committed by one commit process (else each worker)
    max_unauthenticated: int = 4096  # connections not yet authenticated, in all (at most half the open-files limit)
    max_unauthenticated_per_address: int = 256  # ... from one TCP peer address (trusted proxies exempt)
    registry_recheck_s: float = 5.0  # how often live sessions are checked against the registry
    allow_cidrs: list[str] = field(default_factory=list)
    trusted_proxies: list[str] = field(default_factory=list)
    jwt_secret_file: str = ""
    jwt_public_key_file: str = ""
    dashboard_interval_ms: float = 250.0
    dashboard_queue: int = 32
    dashboard_auth: str = "auto"  # "on", "off", or "auto": see dashboard_token_needed
    dashboard_origins: list[str] = field(default_factory=list)  # Origins allowed besides the gateway's own
    allowed_hosts: list[str] = field(default_factory=list)  # Host names served a token-less dashboard
    alerts: list[dict[str, Any]] = field(default_factory=lambda: parse_rules(DEFAULT_RULES))  # [[alerts]]
    webhooks: list[WebhookConfig] = field(default_factory=list)  # [[webhooks]]: alert notifications
    metrics: list[MetricSpec] = field(default_factory=list)  # [[metrics]]: metrics beyond protocol.wire.METRICS
    alert_timezone: str = ""  # IANA name for hour-of-day baselines and alert texts; "" = the system's
    alert_max_open: int = 10000  # open alerts loaded at start (older open ones beyond this are cleared)
    alert_suspended_expiry_s: float = 604800.0  # a suspended alert whose device stays away this long clears
    alert_save_interval_s: float = 300.0  # how often learned baselines are stored (and at shutdown)
    # OTA (docs/ota.md): rollouts are driven every ota_tick_s; a release is offered only if its
    # signature verifies with ota_pubkey ("" = the public half of <data_dir>/ota-signing.pem).
    ota_pubkey: str = ""  # 130 hex: 04 || X || Y (P-256), as the devices hold it
    ota_tick_s: float = 2.0
    ota_offer_timeout_s: float = 30.0  # how long an offer (the ``ota`` command) waits for the device's answer
    tls_cert: str = ""
    tls_key: str = ""
    log_level: str = "info"
    log_format: str = "json"  # "json" or "text"
    # Scale-out (docs/scaling.md): several instances joined by a bus.
    bus: str = ""  # "" (embedded: no bus), redis://HOST:PORT/DB or nats://HOST:PORT
    instance_id: str = ""  # this instance's name on the bus; "" = the host name's first label
    lease_ttl_s: float = 10.0  # an instance that stops renewing its lease this long is dead to its peers
    takeover_timeout_s: float = 5.0  # how long a new holder waits for the old one to release a device
    drain_rate: float = 200.0  # devices closed per second on SIGTERM when a bus is set (spread over the pods)
    command_max_pending: int = 32  # queued (unanswered, unexpired) commands per device
    # Forwarding (docs/mqtt.md): stored readings to an MQTT broker (with Home Assistant discovery)
    # and to NATS JetStream, each from a cursor kept in storage.
    mqtt_url: str = ""  # mqtt://HOST[:PORT] or mqtts://HOST[:PORT]; "" = no MQTT bridge
    mqtt_username: str = ""  # or the URL's user
    mqtt_password_file: str = ""  # a file holding the broker password (kept out of the config)
    mqtt_ca_file: str = ""  # PEM CA bundle for mqtts:// ("" = the system's CAs)
    mqtt_client_id: str = ""  # "" = edgewire-<instance_id>
    mqtt_prefix: str = "edgewire"  # topics: <prefix>/<device>/state, ...
    mqtt_discovery: bool = True  # Home Assistant MQTT discovery
    mqtt_discovery_prefix: str = "homeassistant"
    mqtt_commands: bool = False  # accept commands on <prefix>/<device>/command/<name>
    nats_url: str = ""  # nats://HOST[:PORT] or tls://HOST[:PORT]; "" = no NATS sink
    nats_stream: str = "EDGEWIRE_READINGS"  # the JetStream stream (created if missing)
    nats_subject_prefix: str = "edgewire.readings"  # subjects: <prefix>.<device>
    forward_window: int = 2000  # readings a sink may have beyond its stored cursor (a crash resends at most these)
    forward_process: bool = True  # forward readings from a worker process of their own (else in the gateway's)
    forward_lag_degraded_s: float = 60.0  # /healthz: forwarding "degraded" once a sink's lag passes this (0 = never)

    @property
    def dashboard_token_required(self) -> bool:
        """Whether /v1/dashboard asks for the dashboard token (auto: unless bound to loopback)."""
        if self.dashboard_auth != "auto":
            return self.dashboard_auth == "on"
        try:
            return not ipaddress.ip_address(self.host).is_loopback
        except ValueError:
            return self.host != "localhost"  # a host name: assume it is reachable from elsewhere

    def dashboard_token_needed(self, client_address: str) -> bool:
        """Whether a /v1/dashboard client at ``client_address`` (after the proxy rules) must show the token.

        ``auto``: yes when the gateway listens beyond loopback, when a trusted proxy is configured
        (the proxy's own clients may be anywhere), or when the client is not on loopback."""
        if self.dashboard_auth != "auto" or self.dashboard_token_required or self.trusted_proxies:
            return self.dashboard_auth != "off"
        try:
            return not ipaddress.ip_address(client_address).is_loopback
        except ValueError:
            return True

    def metric_table(self) -> MetricTable:
        """protocol.wire.METRICS plus the [[metrics]] declared here (gateway/metric_table.py)."""
        return MetricTable(self.metrics)

    @property
    def storage_kind(self) -> str:
        """``sqlite``, ``none`` or ``postgresql``."""
        return storage_kind(self.storage)

    @property
    def storage_display(self) -> str:
        """The storage setting as it may be logged: a PostgreSQL URL without its password."""
        return redact(self.storage)

    @property
    def bus_display(self) -> str:
        """The bus setting as it may be logged: ``embedded``, or the URL without user and password."""
        return parse_bus_url(self.bus).display

    @property
    def database(self) -> Path:
        return Path(self.db_path) if self.db_path else Path(self.data_dir) / "edgewire.db"

    def validate(self) -> GatewayConfig:
        """Check every value; raise ConfigError naming the key."""
        if not 0 <= self.port <= 65535:
            raise ConfigError(f"port: {self.port} is not a TCP port (0-65535)")
        storage_kind(self.storage)  # ConfigError naming the setting
        parse_bus_url(self.bus)  # ConfigError naming the setting
        if self.instance_id:
            check_name("instance_id", self.instance_id)
        for key in ("lease_ttl_s", "takeover_timeout_s", "drain_rate"):
            if getattr(self, key) <= 0:
                raise ConfigError(f"{key}: must be greater than 0")
        if self.lease_ttl_s < 1:
            raise ConfigError("lease_ttl_s: must be at least 1 (the lease is renewed every third of it)")
        if self.command_max_pending < 1:
            raise ConfigError("command_max_pending: must be at least 1")
        if self.readings_retention_days < 1:
            raise ConfigError("readings_retention_days: must be at least 1")
        if self.rollup_retention_days < self.readings_retention_days:
            raise ConfigError("rollup_retention_days: must be at least readings_retention_days "
                              "(long-range history is served from the rollups)")
        if self.synchronous.upper() not in ("FULL", "NORMAL", "EXTRA"):
            raise ConfigError("synchronous: must be FULL, NORMAL or EXTRA")
        for key in ("rate", "burst", "auth_timeout_s", "ping_interval_s", "ping_timeout_s",
                    "dashboard_interval_ms", "registry_recheck_s", "max_clock_skew_s"):
            if getattr(self, key) <= 0:
                raise ConfigError(f"{key}: must be greater than 0")
        if self.burst < 1:
            raise ConfigError("burst: must be at least 1")
        for key in ("max_frame", "max_batch", "dashboard_queue", "max_unauthenticated",
                    "max_unauthenticated_per_address"):
            if getattr(self, key) < 1:
                raise ConfigError(f"{key}: must be at least 1")
        for key in ("allow_cidrs", "trusted_proxies"):
            for cidr in getattr(self, key):
                try:
                    ipaddress.ip_network(cidr, strict=False)
                except ValueError as err:
                    raise ConfigError(f"{key}: {cidr!r} is not an address or CIDR ({err})") from None
        if bool(self.tls_cert) != bool(self.tls_key):
            raise ConfigError("tls_cert and tls_key: set both or neither")
        if self.dashboard_auth not in ("auto", "on", "off"):
            raise ConfigError("dashboard_auth: must be 'auto', 'on' or 'off'")
        for origin in self.dashboard_origins:
            parts = urllib.parse.urlsplit(origin)
            if parts.scheme not in ("http", "https") or not parts.netloc or parts.path not in ("", "/"):
                raise ConfigError(f"dashboard_origins: {origin!r} is not an origin like https://fleet.example.com")
        self._validate_forwarding()
        if self.log_format not in ("json", "text"):
            raise ConfigError("log_format: must be 'json' or 'text'")
        zone(self.alert_timezone)  # ConfigError naming the setting
        for key in ("alert_suspended_expiry_s", "alert_save_interval_s"):
            if getattr(self, key) <= 0:
                raise ConfigError(f"{key}: must be greater than 0")
        if self.alert_max_open < 1:
            raise ConfigError("alert_max_open: must be at least 1")
        for key in ("ota_tick_s", "ota_offer_timeout_s"):
            if not getattr(self, key) > 0:
                raise ConfigError(f"{key}: must be greater than 0")
        if self.ota_pubkey and (len(self.ota_pubkey) != 130 or not self.ota_pubkey.startswith("04")
                                or any(c not in "0123456789abcdef" for c in self.ota_pubkey)):
            raise ConfigError("ota_pubkey: 130 lowercase hex characters starting with 04 (what `ota pubkey` prints)")
        return self


    def _validate_forwarding(self) -> None:
        if self.mqtt_url:
            parse_broker_url("mqtt_url", self.mqtt_url, MQTT_PORTS)
        if self.nats_url:
            parse_broker_url("nats_url", self.nats_url, NATS_PORTS)
        check_topic_prefix("mqtt_prefix", self.mqtt_prefix)
        check_topic_prefix("mqtt_discovery_prefix", self.mqtt_discovery_prefix)
        check_subject_prefix("nats_subject_prefix", self.nats_subject_prefix)
        check_client_id("mqtt_client_id", self.mqtt_client_id)
        if self.nats_stream and not self.nats_stream.replace("_", "").replace("-", "").isalnum():
            raise ConfigError(f"nats_stream: {self.nats_stream!r} must be letters, digits, _ and -")
        if not 0 <= self.workers <= MAX_WORKERS:
            raise ConfigError(f"workers: {self.workers} must be from 0 (one per core) to {MAX_WORKERS}; "
                              "1 runs the gateway in one process")
        if self.forward_window < 1:
            raise ConfigError("forward_window: must be at least 1")
        if not 0 <= self.forward_lag_degraded_s < 10 ** 9:
            raise ConfigError("forward_lag_degraded_s: must be 0 (never) or a number of seconds")
        if (self.mqtt_url or self.nats_url) and self.storage_kind == "none":
            raise ConfigError("mqtt_url, nats_url: forwarding reads stored readings, and storage = \"none\" "
                              "stores none; use sqlite or postgresql storage")


_FIELDS = {f.name: f for f in dataclasses.fields(GatewayConfig)}
TABLES = ("alerts", "webhooks", "metrics")  # lists of TOML tables: file only, never from the environment

# EDGEWIRE_* variables that are not gateway settings: secrets, the agent's, the tools'.
OTHER_ENV = frozenset({"EDGEWIRE_TOKEN_KEY", "EDGEWIRE_JWT_SECRET", "EDGEWIRE_AGENT_CONFIG",
                       "EDGEWIRE_SENSOR_BACKEND", "EDGEWIRE_CACHE", "EDGEWIRE_NODE"})


def _coerce(key: str, value: Any) -> Any:
    """Convert a TOML or environment value to the field's type, or raise ConfigError."""
    if key == "alerts":
        return parse_rules(value)  # ConfigError naming the rule and the key
    if key == "webhooks":
        return parse_webhooks(value)
    if key == "metrics":
        return parse_metrics(value)
    default = getattr(GatewayConfig(), key)
    if isinstance(default, bool):
        expected = "true or false"
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("1", "true", "yes", "on", "0", "false", "no", "off"):
            return value.lower() in ("1", "true", "yes", "on")
    elif isinstance(default, int):
        expected = "an integer"
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, str) and value.strip().lstrip("+-").isdigit():
            return int(value)
    elif isinstance(default, float):
        expected = "a number"
        if isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                pass
    elif isinstance(default, list):
        expected = "a list"
        if isinstance(value, str):
            return [item.strip() for item in value.split(",") if item.strip()]
        if isinstance(value, list) and all(isinstance(item, str | int | float) for item in value):
            return [str(item) for item in value]
    else:
        expected = "a string"
        if isinstance(value, str):
            return value
    raise ConfigError(f"{key}: invalid value {value!r:.60} (expected {expected})")


def unknown_env(env: dict[str, str] | os._Environ[str]) -> list[str]:
    """One warning per EDGEWIRE_* variable that is not a setting (a misspelt one is otherwise silent)."""
    warnings = []
    for name in sorted(env):
        if not name.startswith(ENV_PREFIX) or name in OTHER_ENV:
            continue
        key = name[len(ENV_PREFIX):].lower()
        if key in TABLES:
            what = "alert rules" if key == "alerts" else key
            warnings.append(f"{name} is ignored: {what} go in the config file ([[{key}]])")
        elif key not in _FIELDS:
            close = difflib.get_close_matches(key, list(_FIELDS), n=1)
            hint = f" (did you mean {ENV_PREFIX}{close[0].upper()}?)" if close else ""
            warnings.append(f"{name} is not a gateway setting and is ignored{hint}; see docs/configuration.md")
    return warnings


def load_config(path: str | Path | None = None, env: dict[str, str] | None = None,
                overrides: dict[str, Any] | None = None,
                warn: Callable[[str], None] | None = None,
                given: dict[str, str] | None = None) -> GatewayConfig:
    """Build the configuration: defaults < TOML file < environment < overrides (flags).

    ``warn`` receives one message per unknown EDGEWIRE_* variable. ``given``, if passed, is filled
    with each setting that did not keep its default and where it came from: ``file``, ``env``
    or ``flag`` (the overrides)."""
    values: dict[str, Any] = {}
    sources: dict[str, str] = {} if given is None else given
    if path:
        try:
            with open(path, "rb") as handle:
                data = tomllib.load(handle)
        except FileNotFoundError:
            raise ConfigError(f"config file {path} not found") from None
        except OSError as err:
            raise ConfigError(f"config file {path}: cannot read it ({err.strerror})") from None
        except tomllib.TOMLDecodeError as err:
            raise ConfigError(f"config file {path}: {err}") from None
        section = data.get("gateway", data)
        if not isinstance(section, dict):
            raise ConfigError(f"config file {path}: [gateway] must be a table")
        for key, value in section.items():
            if key not in _FIELDS:
                raise ConfigError(f"{key}: unknown setting in {path} (see docs/configuration.md)")
            values[key] = _coerce(key, value)
            sources[key] = "file"
    environ = os.environ if env is None else env
    for name, raw in environ.items():
        if not name.startswith(ENV_PREFIX):
            continue
        key = name[len(ENV_PREFIX):].lower()
        if key in _FIELDS and key not in TABLES:
            values[key] = _coerce(key, raw)
            sources[key] = "env"
    if warn is not None:
        for message in unknown_env(environ):
            warn(message)
    for key, value in (overrides or {}).items():
        if value is not None:
            values[key] = _coerce(key, value)
            sources[key] = "flag"
    return GatewayConfig(**values).validate()
