"""The forwarding settings, parsed and checked without importing a client library.

``mqtt_url``: ``mqtt://HOST[:PORT]`` (1883) or ``mqtts://HOST[:PORT]`` (8883, TLS, the server
certificate checked against ``mqtt_ca_file`` or the system's CAs). A user name may be given in
the URL or as ``mqtt_username``; the password comes from ``mqtt_password_file`` (or the URL,
discouraged: it ends up in configs and process listings). ``nats_url``: ``nats://HOST[:PORT]``
(4222) or ``tls://HOST[:PORT]``. Errors are ConfigError naming the setting, never the password.
"""

from __future__ import annotations

import re
import urllib.parse
from dataclasses import dataclass

from gateway.errors import ConfigError
from gateway.urls import hide_password, split_server_url

MQTT_PORTS = {"mqtt": 1883, "mqtts": 8883}
NATS_PORTS = {"nats": 4222, "tls": 4222}
PREFIX_RE = re.compile(r"^[A-Za-z0-9_-]+(/[A-Za-z0-9_-]+)*$")  # MQTT topic levels, no wildcards
SUBJECT_RE = re.compile(r"^[A-Za-z0-9_-]+(\.[A-Za-z0-9_-]+)*$")  # NATS subject tokens, no wildcards
CLIENT_ID_RE = re.compile(r"^[A-Za-z0-9_.:-]{1,64}$")


@dataclass(frozen=True, slots=True)
class BrokerUrl:
    scheme: str
    host: str
    port: int
    username: str = ""
    password: str = ""  # from the URL; never logged

    @property
    def tls(self) -> bool:
        return self.scheme in ("mqtts", "tls")

    @property
    def display(self) -> str:
        """The URL as it may be logged: without user and password."""
        return f"{self.scheme}://{self.host}:{self.port}"


def parse_broker_url(key: str, text: str, ports: dict[str, int]) -> BrokerUrl:
    """Check a broker URL setting; ConfigError naming ``key`` and what is expected."""
    expected = "expected " + " or ".join(f"{scheme}://HOST[:PORT]" for scheme in ports)
    parts, scheme, port = split_server_url(key, text.strip(), ports, expected, hide_password(text))
    if parts.path.strip("/") or parts.query or parts.fragment:
        raise ConfigError(f"{key}: {hide_password(text)} has a path, query or fragment; {expected}")
    return BrokerUrl(scheme, parts.hostname or "", port or ports[scheme],
                     urllib.parse.unquote(parts.username or ""), urllib.parse.unquote(parts.password or ""))


def check_topic_prefix(key: str, value: str) -> None:
    if not PREFIX_RE.match(value):
        raise ConfigError(f"{key}: {value!r} must be MQTT topic levels of A-Z a-z 0-9 _ - separated by '/' "
                          "(no wildcards, no leading or trailing '/')")


def check_subject_prefix(key: str, value: str) -> None:
    if not SUBJECT_RE.match(value):
        raise ConfigError(f"{key}: {value!r} must be NATS subject tokens of A-Z a-z 0-9 _ - separated by '.' "
                          "(no wildcards)")


def check_client_id(key: str, value: str) -> None:
    if value and not CLIENT_ID_RE.match(value):
        raise ConfigError(f"{key}: {value!r} must be 1-64 characters of A-Z a-z 0-9 _ . : -")


@dataclass(frozen=True, slots=True)
class MqttSettings:
    """What the MQTT bridge needs, checked (``from_config`` reads the password file)."""

    url: BrokerUrl
    client_id: str
    username: str = ""
    password: str = ""
    ca_file: str = ""
    prefix: str = "edgewire"
    discovery: bool = True
    discovery_prefix: str = "homeassistant"
    commands: bool = False

