"""Every driver's session and outbox against the same scripted gateway frames (scenarios.py).

In-process drivers (drivers.IN_PROCESS) run each scenario as its own test; the firmware runs
all scenarios once per interpreter (drivers.INTERPRETERS: CPython with the stand-ins, and
real MicroPython through the Node harness) and each scenario's PASS line is checked here.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.conformance.drivers import IN_PROCESS, INTERPRETERS
from tests.conformance.scenarios import FIRMWARE_FEATURES, SCENARIOS, applicable

CASES = [(driver, name) for driver, (name, _func, needs) in itertools.product(sorted(IN_PROCESS), SCENARIOS)
         if applicable(needs, IN_PROCESS[driver].features)]
FUNCS = {name: func for name, func, _needs in SCENARIOS}
# The firmware is a device that takes updates: firmware_adapter.FirmwareAdapter.features is FIRMWARE_FEATURES.
FIRMWARE_CASES = [name for name, _func, needs in SCENARIOS if applicable(needs, FIRMWARE_FEATURES)]


@pytest.mark.parametrize(("driver", "scenario"), CASES, ids=[f"{d}-{s}" for d, s in CASES])
def test_driver(driver: str, scenario: str, tmp_path: Path, mock_pins: Any) -> None:
    counter = itertools.count()
    cls = IN_PROCESS[driver]

    def make(fresh: bool = False) -> Any:
        return cls(tmp_path / f"run{next(counter)}", fresh)

    FUNCS[scenario](make)


_runs: dict[str, dict[str, str]] = {}


def firmware_results(interpreter: str, tmp: Path) -> dict[str, str]:
    """scenario -> its result line, from one run of every scenario under ``interpreter``."""
    if interpreter not in _runs:
        run: Callable[[Path], Any] = INTERPRETERS[interpreter]
        proc = run(tmp)
        out = proc.stdout + proc.stderr
        results: dict[str, str] = {}
        for line in proc.stdout.splitlines():
            word, _, rest = line.partition(" ")
            if word in ("PASS", "FAIL", "N/A"):
                results[rest.split(":")[0]] = line
        results["__output__"] = out[-4000:]
        results["__rc__"] = str(proc.returncode)
        _runs[interpreter] = results
    return _runs[interpreter]


@pytest.mark.timeout(200)
@pytest.mark.parametrize("interpreter", sorted(INTERPRETERS))
@pytest.mark.parametrize("scenario", FIRMWARE_CASES)
def test_firmware(interpreter: str, scenario: str, tmp_path_factory: pytest.TempPathFactory) -> None:
    results = firmware_results(interpreter, tmp_path_factory.mktemp(interpreter))
    line = results.get(scenario)
    assert line is not None, f"{scenario} did not run under {interpreter}:\n{results['__output__']}"
    assert line.startswith("PASS"), f"{line}\n{results['__output__']}"
