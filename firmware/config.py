"""Load and validate /config.json. Returns a plain dict with defaults filled in.

Every problem raises ConfigError naming the key and what to check; nothing is
half-applied. The schema is documented in firmware/README.md.
"""

import json

from errors import ConfigError
from sensors import DRIVERS

from protocol import wire

PATH = "/config.json"

# key -> default (None: required unless noted in validate())
DEFAULTS = {
    "wifi_ssid": None,
    "wifi_password": "",
    "gateway_url": None,
    "device_id": None,
    "token": None,
    "jwt": None,
    "ca_cert": None,
    "sensor": "dht22",
    "sensor_pin": 4,
    "led_pin": None,
    "output_pins": {},
    "interval_s": 60,
    "min_interval_s": None,  # default: interval_s / 6
    "max_interval_s": None,  # default: interval_s * 10
    "deadband": {},
    "thresholds": {},
    "ring_path": "/ring.bin",
    "ring_records": 512,
    "deep_sleep": False,
    "watchdog_s": 60,
    "max_batch": 10,  # fits a stock ESP32 without PSRAM (docs/firmware.md, Memory)
    "encoding": "cbor",  # binary CBOR data frames when the gateway selects edgewire.v1.cbor; "json": never
    "ota_pubkey": None,  # the gateway's release key (130 hex chars, 04 || X || Y); None: updates refused
    "ota_trial_s": 300,  # a new app on trial that gets no welcome within this resets (docs/ota.md)
}


def _fail(key, what):
    raise ConfigError("config key '" + key + "': " + what)


def _number(cfg, key, low, high):
    value = cfg[key]
    if not wire.is_number(value) or not wire.is_finite(value):
        _fail(key, "must be a number, got " + repr(value)[:40])
    if value < low or value > high:
        _fail(key, "must be within " + str(low) + ".." + str(high) + ", got " + str(value))
    return value


def _int(cfg, key, low, high):
    value = cfg[key]
    if type(value) is not int:
        _fail(key, "must be an integer, got " + repr(value)[:40])
    if value < low or value > high:
        _fail(key, "must be within " + str(low) + ".." + str(high) + ", got " + str(value))
    return value


def _text(cfg, key, required):
    value = cfg[key]
    if value is None:
        if required:
            _fail(key, "is required")
        return None
    if type(value) is not str or not value:
        _fail(key, "must be a non-empty string")
    return value


def _metric_map(cfg, key):
    value = cfg[key]
    if type(value) is not dict:
        _fail(key, "must be an object of metric name -> value")
    for name in value:
        if not wire.valid_metric_name(name):
            _fail(key, "metric name '" + str(name)[:32] + "' is not 1-32 chars of a-z 0-9 _")
    return value


def validate(raw):
    """Check a decoded config dict; return a new dict with every key present."""
    if type(raw) is not dict:
        raise ConfigError("config must be a JSON object of key: value")
    cfg = {}
    for key in DEFAULTS:
        cfg[key] = raw.get(key, DEFAULTS[key])
    for key in raw:
        if key not in DEFAULTS:
            raise ConfigError("config key '" + str(key)[:40]
                              + "' is unknown; see firmware/README.md for the keys")
    _text(cfg, "wifi_ssid", True)
    if type(cfg["wifi_password"]) is not str:
        _fail("wifi_password", "must be a string (empty for an open network)")
    url = _text(cfg, "gateway_url", True)
    if not (url.startswith("ws://") or url.startswith("wss://")):
        _fail("gateway_url", "must start with ws:// or wss://")
    if not wire.valid_device_id(cfg["device_id"]):
        _fail("device_id", "must be 1-64 characters of A-Z a-z 0-9 _ - . :")
    token = _text(cfg, "token", False)
    jwt = _text(cfg, "jwt", False)
    if token is None and jwt is None:
        _fail("token", "a device token (or 'jwt') is required; register the device with the gateway")
    _text(cfg, "ca_cert", False)
    if cfg["ca_cert"] is not None and not url.startswith("wss://"):
        _fail("ca_cert", "is only used with a wss:// gateway_url")
    if cfg["sensor"] not in DRIVERS:
        _fail("sensor", "must be one of " + ", ".join(sorted(DRIVERS)))
    _int(cfg, "sensor_pin", 0, 48)
    if cfg["led_pin"] is not None:
        _int(cfg, "led_pin", 0, 48)
    pins = cfg["output_pins"]
    if type(pins) is not dict:
        _fail("output_pins", "must be an object of output name -> pin number")
    for name in pins:
        if type(name) is not str or not 0 < len(name) <= 32:
            _fail("output_pins", "output names must be 1-32 character strings")
        if type(pins[name]) is not int or not 0 <= pins[name] <= 48:
            _fail("output_pins", "pin for '" + name + "' must be an integer 0..48")
    interval = _number(cfg, "interval_s", 0.05, 86400)
    if cfg["min_interval_s"] is None:
        cfg["min_interval_s"] = interval / 6
    if cfg["max_interval_s"] is None:
        cfg["max_interval_s"] = interval * 10
    low = _number(cfg, "min_interval_s", 0.05, 86400)
    high = _number(cfg, "max_interval_s", 0.05, 864000)
    if not low <= interval <= high:
        _fail("interval_s", "must satisfy min_interval_s <= interval_s <= max_interval_s")
    band = _metric_map(cfg, "deadband")
    for name in band:
        value = band[name]
        if not wire.is_number(value) or not wire.is_finite(value) or value < 0:
            _fail("deadband", "value for '" + name + "' must be a number >= 0")
    limits = _metric_map(cfg, "thresholds")
    for name in limits:
        check_threshold(name, limits[name], "thresholds")
    _text(cfg, "ring_path", True)
    _int(cfg, "ring_records", 8, 100000)
    if type(cfg["deep_sleep"]) is not bool:
        _fail("deep_sleep", "must be true or false")
    _number(cfg, "watchdog_s", 0, 3600)
    if 0 < cfg["watchdog_s"] < 10:
        _fail("watchdog_s", "must be 0 (off) or at least 10 s, longer than the longest blocking step")
    _int(cfg, "max_batch", 1, wire.MAX_BATCH)
    if cfg["encoding"] not in ("cbor", "json"):
        _fail("encoding", "must be \"cbor\" (binary data frames when the gateway offers them) or \"json\"")
    key = _text(cfg, "ota_pubkey", False)
    if key is not None:
        key = cfg["ota_pubkey"] = key.lower()
        if len(key) != 130 or not key.startswith("04") or key.strip("0123456789abcdef"):
            _fail("ota_pubkey", "must be the release key as 130 hex characters starting 04 "
                  "(`python -m gateway ota pubkey`)")
        if not cfg["watchdog_s"]:
            _fail("ota_pubkey", "updates need the watchdog: set watchdog_s (a trial app is only good with it running)")
    _int(cfg, "ota_trial_s", 5, 86400)
    return cfg


def check_threshold(name, limit, key):
    """Validate one {"high": n, "low": n} entry (either bound optional)."""
    if type(limit) is not dict or not limit:
        _fail(key, "entry for '" + name + "' must be an object with 'high' and/or 'low'")
    for bound in limit:
        if bound not in ("high", "low"):
            _fail(key, "entry for '" + name + "' has unknown bound '" + str(bound)[:16] + "'")
        value = limit[bound]
        if not wire.is_number(value) or not wire.is_finite(value):
            _fail(key, "'" + bound + "' for '" + name + "' must be a finite number")
    if "high" in limit and "low" in limit and not limit["low"] < limit["high"]:
        _fail(key, "'low' for '" + name + "' must be below 'high'")
    return limit


def load(path=PATH):
    """Read and validate the config file at ``path``."""
    try:
        with open(path) as handle:
            text = handle.read()
    except OSError:
        raise ConfigError("cannot read " + path + "; copy firmware/config.example.json there (flash.py does)")
    try:
        raw = json.loads(text)
    except ValueError:
        raise ConfigError(path + " is not valid JSON; check quotes and commas")
    return validate(raw)


def read_ca(cfg):
    """The pinned CA certificate bytes (PEM or DER) named by ca_cert, or None."""
    path = cfg["ca_cert"]
    if path is None:
        return None
    try:
        with open(path, "rb") as handle:
            return handle.read()
    except OSError:
        raise ConfigError("config key 'ca_cert': cannot read " + path + "; upload the CA file")
