"""The operator's console (#/console) in a real browser (Chromium) against a real gateway process.

Devices: added from the page, the QR code decoded independently (jsQR, tests/browser/vendor) to
the phone page's address with the device's token, which then works; label, disable and enable,
rotate and delete reach the registry. Rules: created, edited and deleted from the page take effect
without a restart and survive one; the preview over a stored week agrees with an independent
replay written here. Roles, keyboard, labels and the 390 px width.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import json
import math
import re
import time
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import Browser, Page, expect

from tests.browser.conftest import ALERT_RULES
from tests.browser.harness import DeviceLoop, open_page, operator_url, send_history
from tests.helpers.gateway import GatewayProcess
from tests.helpers.waiting import until_sync

JSQR = Path(__file__).parent / "vendor" / "jsQR.js"
MIN = 60_000
WEEK = 7 * 1440


def add_token(gw: GatewayProcess, name: str, role: str) -> str:
    return gw.cli("tokens", "add", name, "--role", role).stdout.strip().splitlines()[-1]


def admin(gw: GatewayProcess, request: dict[str, Any]) -> dict[str, Any]:
    """An admin API request, from another thread (Playwright's sync API runs a loop in this one)."""
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, gw.admin(request)).result(60)


def registered(gw: GatewayProcess) -> dict[str, dict[str, Any]]:
    return {d["id"]: d for d in admin(gw, {"t": "devices"})["devices"]}


def decode_qr(page: Page, selector: str) -> str:
    """The text of the QR code drawn on a canvas, read by jsQR in a blank page (not the dashboard's code)."""
    pixels = page.eval_on_selector(selector, """c => {
      const d = c.getContext("2d").getImageData(0, 0, c.width, c.height);
      return {w: d.width, h: d.height, data: Array.from(d.data)};
    }""")
    blank = page.context.new_page()
    try:
        blank.add_script_tag(path=str(JSQR))
        found = blank.evaluate("p => { const r = jsQR(new Uint8ClampedArray(p.data), p.w, p.h); return r && r.data; }",
                               pixels)
    finally:
        blank.close()
    assert isinstance(found, str), "jsQR found no QR code"
    return found


def test_add_a_device_from_the_console_its_qr_code_and_every_change(gw: GatewayProcess, browser: Browser,
                                                                    devices: DeviceLoop) -> None:
    page, errors = open_page(browser, operator_url(gw, "/console"))
    expect(page.locator("#console-link")).to_be_visible()
    page.fill("#add-device-id", "PHONE-7")
    page.fill("#add-device-label", "Ana's phone")
    page.click("#add-device button[type=submit]")
    expect(page.locator("#device-token-value")).to_have_text(re.compile(r"^ewt_"))
    token = page.locator("#device-token-value").inner_text()
    expect(page.locator("#device-qr")).to_have_attribute("data-ready", "1")
    phone = f"{gw.http_url}/phone#token={token}&device=PHONE-7"
    assert decode_qr(page, "#device-qr") == phone
    assert page.locator("#device-phone-url").inner_text() == phone
    flash = page.locator("#device-flash").inner_text()
    host = gw.http_url.split("://", 1)[1]
    assert flash.startswith("make flash PORT=") and "DEVICE_ID=PHONE-7" in flash and f"TOKEN={token}" in flash
    assert f"GATEWAY_URL=ws://{host}/v1/device" in flash
    assert registered(gw)["PHONE-7"]["label"] == "Ana's phone"
    assert devices.run(send_history(gw.device_url, "PHONE-7", token, [(int(time.time() * 1000), {"temperature": 20})]))

    page.click("#device-token button:has-text('Done')")
    expect(page.locator("#device-token")).to_be_hidden()
    assert token not in page.content()  # shown once: gone from the page
    page.select_option("#manage-device", "PHONE-7")
    page.fill("#manage-label", "north bed")
    page.click("#manage-device-form button[type=submit]")
    until_sync(lambda: registered(gw)["PHONE-7"]["label"] == "north bed", 10, "the label saved")
    page.click("#device-toggle")
    until_sync(lambda: registered(gw)["PHONE-7"]["enabled"] is False, 10, "the device disabled")
    expect(page.locator("#device-toggle")).to_have_text("Enable")
    page.click("#device-toggle")
    until_sync(lambda: registered(gw)["PHONE-7"]["enabled"] is True, 10, "the device enabled")
    page.click("#device-rotate")
    expect(page.locator("#token-title")).to_contain_text("rotated")
    rotated = page.locator("#device-token-value").inner_text()
    assert rotated != token and rotated.startswith("ewt_")
    expect(page.locator("#device-qr")).to_have_attribute("data-ready", "1")
    assert decode_qr(page, "#device-qr") == f"{gw.http_url}/phone#token={rotated}&device=PHONE-7"
    page.click("#device-delete")
    expect(page.locator("#delete-confirm-text")).to_contain_text("stored readings stay")
    expect(page.locator("#device-delete-confirm")).to_be_focused()
    page.keyboard.press("Enter")
    until_sync(lambda: "PHONE-7" not in registered(gw), 10, "the device deleted")
    expect(page.locator("#console-status")).to_contain_text("done (PHONE-7)")
    log = gw.log_text()
    assert log.count("dashboard_device_change") == 6 and "dashboard:dashboard.token" in log
    assert token not in log and rotated not in log
    assert errors.messages == []


def week(now_ms: int) -> list[tuple[int, dict[str, float]]]:
    """A stored week of one-minute temperatures ending now: a daily swing and a few short spikes."""
    start = now_ms - WEEK * MIN
    points = []
    for i in range(WEEK):
        value = 22 + 6 * math.sin(2 * math.pi * i / 1440) + (9 if i % 1777 < 4 else 0)
        points.append((start + i * MIN, {"temperature": round(value, 2)}))
    return points


def independent(points: list[tuple[int, dict[str, float]]], above: float, hysteresis: float,
                for_s: float) -> list[list[Any]]:
    """The rule 'above' replayed by a plain loop (docs/alerts.md), not by the gateway's code."""
    marks: list[list[Any]] = []
    is_open, since = False, None
    for t, metrics in points:
        v = metrics["temperature"]
        if v > above:
            if not is_open:
                since = t if since is None else since
                if t - since >= for_s * 1000:
                    is_open, since = True, None
                    marks.append(["raised", t])
            continue
        since = None
        if is_open and v < above - hysteresis:
            is_open = False
            marks.append(["cleared", t])
    return marks


@pytest.fixture
def fast_gw(tmp_path: Path) -> Any:
    """The browser tests' gateway, taking a week of readings at once (rate and burst raised)."""
    with GatewayProcess(tmp_path, dashboard_interval_ms=100, registry_recheck_s=0.5, alerts=ALERT_RULES,
                        rate=100_000.0, burst=100_000.0) as gateway:
        yield gateway


def fill_rule(page: Page, values: dict[str, str]) -> None:
    for name, value in values.items():
        page.fill(f"#rule-form [name={name}]", value)


def test_rules_from_the_console_take_effect_survive_a_restart_and_the_preview_agrees(
        fast_gw: GatewayProcess, browser: Browser, devices: DeviceLoop) -> None:
    gw = fast_gw
    token = gw.register("W-1")
    points = week(int(time.time() * 1000))
    devices.run(send_history(gw.device_url, "W-1", token, points), timeout=180)
    expected = independent(points, 27.5, 1.0, 600)
    assert sum(1 for kind, _ in expected if kind == "raised") >= 3

    page, errors = open_page(browser, operator_url(gw, "/console"))
    expect(page.locator("#rules-body tr[data-rule]")).to_have_count(1)  # the config file's rule
    page.select_option("#rule-type", "above")
    fill_rule(page, {"id": "warm", "metric": "temperature", "above": "27.5", "hysteresis": "1", "for_s": "600"})
    page.select_option("#preview-device", "W-1")
    page.click("#rule-preview")
    summary = page.locator("#preview-summary")
    expect(summary).to_contain_text("in the last 7 days", timeout=60_000)
    marks = json.loads(page.locator("#preview-marks").get_attribute("data-marks") or "[]")
    assert marks == expected  # the engine's replay == the loop above, mark by mark
    alerts = sum(1 for kind, _ in expected if kind == "raised")
    expect(summary).to_contain_text(f"{alerts} alerts in the last 7 days")
    chart = page.locator('#preview-chart figure.chart[data-metric="temperature"]')
    expect(chart).to_have_attribute("data-episodes", str(alerts))
    expect(chart).not_to_have_attribute("data-points", "0")
    assert admin(gw, {"t": "alert_rules"})["rules"][0]["id"] != "warm"  # a preview stores nothing

    page.click("#rule-form button[type=submit]")
    expect(page.locator("#rules-status")).to_contain_text("in force now")
    expect(page.locator('#rules-body tr[data-rule="warm"]')).to_contain_text("dashboard:dashboard.token")
    page.click('#rules-body button[aria-label="Edit rule warm"]')
    expect(page.locator("#rule-id")).to_be_focused()
    fill_rule(page, {"above": "25", "for_s": ""})
    page.click("#rule-form button[type=submit]")
    expect(page.locator('#rules-body tr[data-rule="warm"]')).to_contain_text("above 25")
    # in force without a restart: a live reading above 25 (below the config's 30) raises "warm"
    devices.run(send_history(gw.device_url, "W-1", token, [(int(time.time() * 1000), {"temperature": 26.0})]))

    def open_warm() -> list[dict[str, Any]]:
        return [a for a in admin(gw, {"t": "alerts", "state": "open"})["alerts"] if a["rule"] == "warm"]

    until_sync(lambda: len(open_warm()) == 1, 10, "the edited rule raised on a live reading")

    gw.restart()
    rules = {r["id"]: r for r in admin(gw, {"t": "alert_rules"})["rules"]}
    assert rules["warm"]["above"] == 25.0 and rules["warm"]["updated_by"] == "dashboard:dashboard.token"
    expect(page.locator("#conn")).to_have_attribute("data-state", "live", timeout=30_000)
    page.click('#rules-body button[aria-label="Delete rule warm"]')
    expect(page.locator('#rules-body tr[data-rule="warm"]')).to_have_count(0)
    assert "warm" not in {r["id"] for r in admin(gw, {"t": "alert_rules"})["rules"]}
    until_sync(lambda: open_warm() == [], 10, "the deleted rule's alert cleared")
    gw.restart()
    assert "warm" not in {r["id"] for r in admin(gw, {"t": "alert_rules"})["rules"]}
    errors.messages = [m for m in errors.messages if "ERR_CONNECTION_REFUSED" not in m
                       and "WebSocket" not in m]  # the restarts themselves
    assert errors.messages == []


def test_a_viewer_sees_none_of_the_operator_forms(gw: GatewayProcess, browser: Browser) -> None:
    viewer = add_token(gw, "wall-screen", "viewer")
    page, errors = open_page(browser, f"{gw.http_url}/#/console?token={viewer}")
    expect(page.locator("#role")).to_contain_text("viewer · wall-screen")
    expect(page.locator("#console-note")).to_be_visible()
    expect(page.locator("#console-link")).to_be_hidden()
    expect(page.locator("#console-forms")).to_be_hidden()
    visible = "#console-view form:visible, #console-view input:visible, #console-view select:visible"
    assert page.locator(visible).count() == 0
    page.goto(f"{gw.http_url}/#/")
    expect(page.locator("#devices")).to_be_visible()
    assert page.locator("#console-link:visible").count() == 0
    assert errors.messages == []


LABELS_JS = """() => [...document.querySelectorAll('#console-forms :is(input, select, button)')]
  .filter((el) => el.offsetParent)
  .filter((el) => !(el.labels && el.labels.length) && !el.getAttribute('aria-label') && !el.textContent.trim())
  .map((el) => el.id || el.name || el.outerHTML.slice(0, 60))"""


def test_the_console_is_labelled_reachable_by_keyboard_and_fits_390_px(gw: GatewayProcess, browser: Browser,
                                                                       devices: DeviceLoop) -> None:
    token = gw.register("KB-1")
    now = int(time.time() * 1000)
    devices.run(send_history(gw.device_url, "KB-1", token,
                             [(now - (10 - i) * MIN, {"temperature": 20.0 + i}) for i in range(10)]))
    page, errors = open_page(browser, operator_url(gw), width=390, height=844)
    expect(page.locator("#console-link")).to_be_visible()
    page.focus("#console-link")
    page.keyboard.press("Enter")
    expect(page.locator("#console-title")).to_be_focused()
    expect(page.locator("#rule-type option")).not_to_have_count(0)
    assert page.evaluate(LABELS_JS) == []
    reached: list[str] = []
    for _ in range(80):  # Tab alone reaches the add form, then its submit button
        page.keyboard.press("Tab")
        reached.append(page.evaluate("document.activeElement.id || document.activeElement.textContent.trim()"))
        if reached[-1] == "add-device-id":
            page.keyboard.type("KB-2")
        if reached[-1] == "Add device":
            break
    assert "add-device-id" in reached and reached[-1] == "Add device", reached
    page.keyboard.press("Enter")
    expect(page.locator("#device-token-value")).to_be_visible()
    expect(page.locator("#token-title")).to_be_focused()
    assert "KB-2" in registered(gw)
    for _ in range(120):  # on to the rule form's fields and its preview button
        page.keyboard.press("Tab")
        if page.evaluate("document.activeElement.id") == "rule-preview":
            break
    assert page.evaluate("document.activeElement.id") == "rule-preview"
    page.fill("#rule-metric", "temperature")
    page.fill("#rule-p-above", "25")
    page.focus("#rule-preview")
    page.keyboard.press("Enter")
    expect(page.locator("#preview-summary")).to_contain_text("1 alert in the last 7 days")
    expect(page.locator("#preview-chart figure.chart")).not_to_have_attribute("data-points", "0")
    assert page.evaluate("document.documentElement.scrollWidth") <= 390
    assert errors.messages == []
