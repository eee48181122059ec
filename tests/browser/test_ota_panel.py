"""The dashboard's Updates panel (gateway/dashboard/static/ota.js) in a real browser: a rollout and a
device's app version and update state, from a real gateway and a scripted OTA device."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from playwright.sync_api import Browser, expect

from tests.browser.harness import DeviceLoop, open_page, operator_url
from tests.helpers.gateway import GatewayProcess
from tests.helpers.ota_device import OtaDevice


@pytest.fixture
def ota_gw(tmp_path: Path) -> Iterator[GatewayProcess]:
    with GatewayProcess(tmp_path, dashboard_interval_ms=100, ota_tick_s=0.1) as gateway:
        yield gateway


def test_updates_panel_shows_rollouts_app_versions_and_update_states(ota_gw: GatewayProcess, browser: Browser,
                                                                     devices: DeviceLoop, tmp_path: Path) -> None:
    gw = ota_gw
    page, errors = open_page(browser, operator_url(gw))
    expect(page.locator("#conn")).to_have_attribute("data-state", "live")
    expect(page.locator("#ota-panel")).to_be_hidden()  # nothing to show yet
    token = gw.register("B1")
    (tmp_path / "app").mkdir()
    (tmp_path / "app" / "app.mpy").write_bytes(b"\x4d\x06" + bytes(5000))
    release = gw.cli("ota", "upload", "--kind", "esp32", "--version", "1.1.0", str(tmp_path / "app")).stdout.strip()
    device = OtaDevice(gw.device_url, "B1", token, gw.cli("ota", "pubkey").stdout.strip())

    async def update() -> None:
        await device.connect()
        assert device.ws is not None
        await device.ws.send(json.dumps({"t": "status", "fw": "1.0.0", "kind": "esp32"}))
        await gw.admin({"t": "ota_rollout_create", "release": release, "devices": ["B1"]})
        await asyncio.wait_for(device.finished.wait(), 30)

    devices.run(update())
    panel = page.locator("#ota-panel")
    expect(panel).to_be_visible()
    expect(panel.locator("table.ota-rollouts tbody tr")).to_have_count(1)
    expect(panel.locator("table.ota-rollouts tbody tr")).to_have_attribute("data-state", "done")
    expect(panel.locator("table.ota-rollouts tbody tr")).to_contain_text(release)
    row = panel.locator('table.ota-devices tr[data-device="B1"]')
    expect(row).to_contain_text(f"good {release}")
    expect(row).to_contain_text("1.0.0")  # the app version from the device's status
    page.goto(operator_url(gw, "/device/B1"))
    expect(panel).to_be_hidden()  # the fleet page's panel, not the device page's
    devices.run(device.close())
    assert errors.messages == []
