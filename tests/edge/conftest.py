"""Edge agent test fixtures: gpiozero MockFactory pins, fake sysfs trees, config files."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

W1_OK = "72 01 4b 46 7f ff 0e 10 57 : crc=57 YES\n72 01 4b 46 7f ff 0e 10 57 t={milli}\n"
W1_BAD_CRC = "72 01 4b 46 7f ff 0e 10 57 : crc=57 NO\n72 01 4b 46 7f ff 0e 10 57 t=0\n"


@pytest.fixture
def mock_pins() -> Iterator[Any]:
    """A fresh gpiozero MockFactory for the test; closed and reset afterwards."""
    from gpiozero import Device
    from gpiozero.pins.mock import MockFactory

    from edge import sim

    sim.reset()
    factory = MockFactory()
    Device.pin_factory = factory
    yield factory
    sim.reset()
    factory.reset()
    Device.pin_factory = None


def write_probe(w1_dir: Path, device: str, milli: int | None = None, text: str | None = None) -> Path:
    """Create or update a fake /sys/bus/w1/devices/<device>/w1_slave."""
    path = w1_dir / device / "w1_slave"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text if text is not None else W1_OK.format(milli=milli))
    return path


@pytest.fixture
def w1_dir(tmp_path: Path) -> Path:
    path = tmp_path / "w1" / "devices"
    path.mkdir(parents=True)
    return path


def agent_toml(state_dir: Path, gateway: str = "ws://127.0.0.1:9/v1/device", token: str = "ewt_test",
               extra: str = "", agent_extra: str = "") -> str:
    return f'''
[agent]
device_id = "PI-TEST"
token = "{token}"
gateway = "{gateway}"
interval = 0.2
state_dir = "{state_dir}"
backend = "sim"
{agent_extra}
{extra}
'''
