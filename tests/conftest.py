"""Shared fixtures: a real gateway process on loopback."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers.gateway import GatewayProcess

os.environ.setdefault("GPIOZERO_PIN_FACTORY", "mock")


@pytest.fixture
def gateway(tmp_path: Path) -> Iterator[GatewayProcess]:
    """A started gateway with default settings; stopped (SIGTERM, then SIGKILL) afterwards."""
    gw = GatewayProcess(tmp_path)
    gw.start()
    try:
        yield gw
    finally:
        try:
            gw.stop()
        finally:
            gw.kill()
