"""Fixtures for the dashboard's browser tests: one Chromium per session, a gateway per test."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from playwright.sync_api import Browser, Playwright, expect, sync_playwright

from tests.browser.harness import CHROMIUM, CHROMIUM_ARGS, DeviceLoop, device_loop
from tests.helpers.gateway import GatewayProcess

expect.set_options(timeout=15_000)  # a loaded 2-core machine; tests that bound a wait say so
ALERT_RULES = [{"metric": "temperature", "above": 30.0, "hysteresis": 1.0}]


@pytest.fixture(scope="module")
def playwright() -> Iterator[Playwright]:
    """Module-scoped: Playwright's sync API runs an event loop in this thread while it is open, and
    the other test modules call asyncio.run()."""
    with sync_playwright() as pw:
        yield pw


@pytest.fixture(scope="module")
def browser(playwright: Playwright) -> Iterator[Browser]:
    """Debian's Chromium (scripts/system-deps test installs it); missing it is an error, not a skip."""
    if not Path(CHROMIUM).exists():
        pytest.fail(f"{CHROMIUM} not found: run scripts/system-deps test (apt-get install chromium)")
    chromium = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
    try:
        yield chromium
    finally:
        chromium.close()


@pytest.fixture
def gw(tmp_path: Path) -> Iterator[GatewayProcess]:
    """A gateway on loopback with a temperature alert rule, dashboard updates every 100 ms."""
    with GatewayProcess(tmp_path, dashboard_interval_ms=100, registry_recheck_s=0.5, alerts=ALERT_RULES) as gateway:
        yield gateway


@pytest.fixture
def devices() -> Iterator[DeviceLoop]:
    with device_loop() as loop:
        yield loop
