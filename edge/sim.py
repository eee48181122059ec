"""Simulated hardware for backend = "sim": gpiozero MockFactory pins and a mock MCP3008.

The DHT stand-in lives in the simulator package (simulator.hardware.dht); the
DS18B20 and CPU temperature use a fake sysfs tree (their paths are options).
"""

from __future__ import annotations

from typing import Any

SPI_PINS = {"clock": 11, "mosi": 10, "miso": 9}
SELECT_PINS = (8, 7)
_chips: dict[int, Any] = {}


def use_mock_pins() -> Any:
    """Make gpiozero use MockFactory unless one is already set (GPIOZERO_PIN_FACTORY=mock)."""
    from gpiozero import Device
    from gpiozero.pins.mock import MockFactory

    if not isinstance(Device.pin_factory, MockFactory):
        Device.pin_factory = MockFactory()
    return Device.pin_factory


def _mock_chip_class() -> Any:
    from gpiozero.pins.mock import MockSPIDevice

    class MockMCP3008(MockSPIDevice):  # type: ignore[misc]
        """The slave side of an MCP3008: start bit, SGL/DIFF, 3 channel bits, then null + 10 bits."""

        def __init__(self, select_pin: int) -> None:
            super().__init__(SPI_PINS["clock"], SPI_PINS["mosi"], SPI_PINS["miso"], select_pin)
            self.channels = [0.0] * 8
            self.rx_buf: list[int] = []
            self.phase = "idle"

        def on_start(self) -> None:
            super().on_start()
            self.phase = "idle"

        def on_bit(self) -> None:
            if self.phase == "idle":
                if self.rx_buf[-1]:
                    self.phase = "mode"
                    self.rx_buf = []
            elif self.phase == "mode":
                self.phase = "single" if self.rx_buf[-1] else "diff"
                self.rx_buf = []
            elif self.phase in ("single", "diff") and len(self.rx_buf) == 3:
                fraction = min(max(self.channels[self.rx_word()], 0.0), 1.0)
                self.tx_word(round(fraction * 1023), 12)  # sample bit, null bit, 10 data bits
                self.phase = "result"

    return MockMCP3008


def attach_mock_mcp3008(chip_select: int, channel: int, fraction: float) -> Any:
    """Attach (once per chip select) a mock MCP3008 and set ``channel`` to ``fraction`` of Vref."""
    use_mock_pins()
    chip = _chips.get(chip_select)
    if chip is None:
        chip = _mock_chip_class()(SELECT_PINS[chip_select])
        _chips[chip_select] = chip
    chip.channels[channel] = fraction
    return chip


def reset() -> None:
    """Forget attached chips (tests that reset the pin factory call this)."""
    for chip in _chips.values():
        chip.close()
    _chips.clear()
