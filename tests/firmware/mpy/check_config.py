"""firmware/config.py: validation with clear errors; the example config is valid."""

import json

import config
from errors import ConfigError
from mpytest import raises, run, tmp_file

BASE = {"wifi_ssid": "lab", "wifi_password": "pw", "gateway_url": "ws://10.0.0.2:8080/v1/device",
        "device_id": "SENSOR-01", "token": "ewt_" + "x" * 32}


def _with(**changes):
    cfg = dict(BASE)
    for key in changes:
        if changes[key] is None:
            del cfg[key]
        else:
            cfg[key] = changes[key]
    return cfg


def test_defaults_filled():
    cfg = config.validate(dict(BASE))
    assert cfg["sensor"] == "dht22" and cfg["ring_records"] == 512 and cfg["deep_sleep"] is False
    assert cfg["min_interval_s"] == 10 and cfg["max_interval_s"] == 600


def test_errors_name_the_key():
    cases = [
        (_with(wifi_ssid=None), "wifi_ssid"),
        (_with(gateway_url="http://x"), "gateway_url"),
        (_with(device_id="bad id!"), "device_id"),
        (_with(token=None), "token"),
        (_with(sensor="bme680"), "sensor"),
        (_with(sensor_pin=True), "sensor_pin"),  # bool is not an int
        (_with(interval_s=0), "interval_s"),
        (_with(interval_s=5, min_interval_s=10), "interval_s"),
        (_with(deadband={"temperature": -1}), "deadband"),
        (_with(thresholds={"temperature": {"high": 10, "low": 20}}), "thresholds"),
        (_with(output_pins={"relay": "5"}), "output_pins"),
        (_with(deep_sleep=1), "deep_sleep"),
        (_with(ca_cert="/ca.pem"), "ca_cert"),  # only with wss://
        (_with(colour="blue"), "colour"),
    ]
    for raw, key in cases:
        err = raises(ConfigError, config.validate, raw)
        assert key in str(err), (key, str(err))


def test_ota_settings():
    key = "04" + "ab" * 64
    cfg = config.validate(_with(ota_pubkey=key.upper()))
    assert cfg["ota_pubkey"] == key and cfg["ota_trial_s"] == 300
    assert config.validate(dict(BASE))["ota_pubkey"] is None  # updates refused (ota_disabled)
    for bad in (_with(ota_pubkey="04ab"), _with(ota_pubkey="04" + "zz" * 64), _with(ota_pubkey=key, watchdog_s=0),
                _with(ota_trial_s=1)):
        err = raises(ConfigError, config.validate, bad)
        assert "'ota_" in str(err), str(err)


def test_jwt_instead_of_token():
    cfg = config.validate(_with(token=None, jwt="eyJ.x.y"))
    assert cfg["jwt"] == "eyJ.x.y" and cfg["token"] is None


def test_load_file_errors():
    path = tmp_file("config.json")
    assert "cannot read" in str(raises(ConfigError, config.load, path))
    with open(path, "w") as f:
        f.write("{not json")
    assert "not valid JSON" in str(raises(ConfigError, config.load, path))
    with open(path, "w") as f:
        f.write(json.dumps(BASE))
    assert config.load(path)["device_id"] == "SENSOR-01"


def test_example_config_is_valid():
    with open("/lib/config.example.json") if __import__("sys").implementation.name == "micropython" \
            else open(EXAMPLE) as f:
        cfg = config.validate(json.load(f))
    assert cfg["sensor"] in ("dht22", "dht11", "ds18b20")


EXAMPLE = "firmware/config.example.json"
run(globals())
