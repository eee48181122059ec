"""The hardware backends (edge/hardware.py, edge/sim.py): the backend hands sensors their devices
and files; sensor classes never ask which backend they run on, and the sim options are the sim
backend's."""

from __future__ import annotations

import ast
from pathlib import Path
from typing import Any, ClassVar

import pytest

from edge import sensors
from edge.errors import ConfigError
from edge.hardware import Hardware
from edge.sensors import base
from edge.sensors.base import SENSOR_TYPES, SensorContext, backend_class, build_sensor, sensor_class, validate_sensor
from edge.sim import SimHardware

SENSORS_DIR = Path(sensors.__file__).resolve().parent


class ScriptedHardware(Hardware):
    """A backend a test registers: probes and a thermometer from dicts, no sysfs, no simulator."""

    files: ClassVar[dict[str, str]] = {"/bus/28-0001/w1_slave": "aa : crc=aa YES\naa t=21500\n"}

    def w1_probes(self, devices_dir: str) -> list[str]:
        return sorted(path for path in self.files if path.startswith(devices_dir + "/"))

    def w1_read(self, path: str) -> str:
        try:
            return self.files[path]
        except KeyError:
            raise FileNotFoundError(path) from None

    def cpu_temperature(self, name: str, sensor_file: str) -> Any:
        class Thermometer:
            temperature = 51.25

            def close(self) -> None:
                return None

        return Thermometer()


def test_a_backend_registered_by_name_hands_the_sensors_their_hardware(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(base.BACKENDS, "scripted", f"{__name__}:ScriptedHardware")
    ctx = SensorContext("scripted", lambda s: None)
    probe = build_sensor(validate_sensor(0, {"type": "ds18b20", "devices_dir": "/bus"}), ctx)
    assert probe.read().metrics == {"temperature": 21.5}
    cpu = build_sensor(validate_sensor(1, {"type": "cpu_temperature"}), ctx)
    assert cpu.read().metrics == {"cpu_temperature": 51.25}


def test_sensor_classes_never_test_for_a_backend() -> None:
    """Issue 21 item 6: cpu.py, dht.py, ds18b20.py and mcp3008.py tested ``ctx.backend == "sim"``."""
    modules = {row.partition(":")[0].rpartition(".")[2] for row in SENSOR_TYPES.values()}
    assert modules == {"cpu", "dht", "ds18b20", "mcp3008"}
    for path in sorted(SENSORS_DIR / f"{module}.py" for module in modules):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            assert not (isinstance(node, ast.Attribute) and node.attr == "backend"), f"{path.name}:{node.lineno}"
            if isinstance(node, ast.Constant) and isinstance(node.value, str):
                assert node.value != "sim", f"{path.name}:{node.lineno} names the sim backend"
                assert not node.value.startswith("sim_"), f"{path.name}:{node.lineno}: {node.value}"
            assert not (isinstance(node, ast.ImportFrom) and node.module and node.module.startswith(
                ("edge.sim", "simulator"))), f"{path.name} imports the simulator"


def test_sensor_schemas_hold_no_sim_options_and_the_sim_backend_has_them() -> None:
    for kind in SENSOR_TYPES:
        assert not [key for key in sensor_class(kind).OPTIONS if key.startswith("sim_")], kind
        assert SimHardware.OPTIONS[kind], kind
        assert all(key.startswith("sim_") for key in SimHardware.OPTIONS[kind])
    assert Hardware.OPTIONS == {}


def test_sim_options_go_to_the_backend_and_a_hardware_config_may_keep_them() -> None:
    spec = validate_sensor(0, {"type": "ds18b20", "sim_temperature": -5, "attempts": 2})
    assert "sim_temperature" not in spec.options and spec.options["attempts"] == 2
    assert spec.backend_options == {"sim_temperature": -5, "sim_failure_rate": 0.05, "sim_seed": 0}
    sensor = build_sensor(spec, SensorContext("hardware"))  # the hardware backend ignores them
    assert type(sensor.hardware) is Hardware  # type: ignore[attr-defined]
    simulated = build_sensor(spec, SensorContext("sim", lambda s: None))
    assert isinstance(simulated.hardware, SimHardware)  # type: ignore[attr-defined]
    assert simulated.hardware.options["sim_temperature"] == -5  # type: ignore[attr-defined]


@pytest.mark.parametrize(("raw", "key", "words"), [
    ({"type": "mcp3008", "channel": 0, "sim_value": 2.0}, "sensors[0].sim_value", "between 0 and 1"),
    ({"type": "dht22", "pin": 4, "sim_seed": "x"}, "sensors[0].sim_seed", "int"),
    ({"type": "cpu_temperature", "sim_value": 0.5}, "sensors[0].sim_value", "unknown option"),
])
def test_bad_sim_options_are_refused_by_key(raw: dict[str, Any], key: str, words: str) -> None:
    with pytest.raises(ConfigError) as err:
        validate_sensor(0, raw)
    assert err.value.key == key and words in str(err.value)


def test_every_backend_row_imports_and_prepares() -> None:
    for name in base.BACKENDS:
        cls = backend_class(name)
        assert issubclass(cls, Hardware)
        assert set(cls.OPTIONS) <= set(SENSOR_TYPES)
