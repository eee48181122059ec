"""The dashboard's defects a new user met in the first hour (issue 20, "Dashboard"), each in a real
browser against a real gateway: deep links, a token pasted into an open page, alert texts and
their "since" times, the history's first range, unknown devices, outputs, status, chart marks and
the CSV download.

Waits are on the DOM (Playwright's expect), never fixed sleeps.
"""

from __future__ import annotations

import csv
import io
import re
import time
from pathlib import Path

import pytest
from playwright.sync_api import Browser, Locator, Page, expect

from tests.browser.harness import DeviceLoop, SettableSensor, open_page, operator_url, send_history
from tests.helpers.gateway import GatewayProcess
from tests.helpers.waiting import until_sync

RE_AGO = re.compile(r"^\d+ s ago$")


def file_token(gw: GatewayProcess) -> str:
    return (gw.data_dir / "dashboard.token").read_text().strip()


def history(minutes: int, every_s: int, metric: str = "temperature") -> list[tuple[int, dict[str, float]]]:
    """Readings every ``every_s`` over the last ``minutes``, oldest first."""
    now = int(time.time() * 1000)
    n = minutes * 60 // every_s
    return [(now - minutes * 60_000 + i * every_s * 1000, {metric: 20.0 + (i % 7) * 0.5}) for i in range(n)]


def chart(page: Page, metric: str = "temperature") -> Locator:
    return page.locator(f'figure.chart[data-metric="{metric}"]')


@pytest.mark.parametrize("width", [1280, 390])
def test_a_deep_link_opens_the_device_page_alone(gw: GatewayProcess, browser: Browser, width: int) -> None:
    gw.register("DEEP-1")
    page, errors = open_page(browser, operator_url(gw, "/device/DEEP-1"), width=width, height=844)
    expect(page.locator("#device-title")).to_have_text("DEEP-1")
    expect(page.locator("#device-state")).to_have_text("never connected")
    expect(page.locator("#fleet-view")).to_be_hidden()  # no empty "Fleet" above the device
    expect(page.locator("#fleet-title")).to_be_hidden()
    page.click("#back")
    expect(page.locator("#devices tbody tr")).to_have_count(1)
    expect(page.locator("#device-view")).to_be_hidden()
    assert errors.messages == []


def test_a_token_pasted_into_an_open_page_is_taken_and_leaves_the_address_bar(gw: GatewayProcess,
                                                                              browser: Browser) -> None:
    gw.register("PASTE-1")
    page, errors = open_page(browser, f"{gw.http_url}/#/device/PASTE-1")
    expect(page.locator("#role")).to_have_text("viewer")  # loopback without a token: a viewer
    expect(page.locator('form[data-command="ping"] button')).to_be_disabled()
    page.goto(f"{gw.http_url}/#/device/PASTE-1?token={file_token(gw)}")  # the printed address, pasted
    expect(page.locator("#role")).to_have_text("operator · dashboard.token")
    expect(page.locator('form[data-command="ping"] button')).to_be_enabled()
    expect(page.locator("#device-title")).to_have_text("PASTE-1")
    assert "token=" not in page.url and page.url.endswith("#/device/PASTE-1")
    assert errors.messages == []


def test_a_page_asking_for_a_token_takes_a_pasted_address(tmp_path: Path, browser: Browser) -> None:
    with GatewayProcess(tmp_path, dashboard_auth="on") as gateway:
        page, _ = open_page(browser, gateway.http_url + "/")
        expect(page.locator("#auth")).to_be_visible()
        page.goto(f"{gateway.http_url}/#token={file_token(gateway)}")
        expect(page.locator("#conn")).to_have_attribute("data-state", "live")
        expect(page.locator("#auth")).to_be_hidden()
        expect(page.locator("#role")).to_contain_text("operator")
        assert "token=" not in page.url


def test_an_alert_just_past_its_threshold_says_so_and_its_since_time_ticks(gw: GatewayProcess, browser: Browser,
                                                                          devices: DeviceLoop) -> None:
    token = gw.register("EDGE-1")
    page, errors = open_page(browser, operator_url(gw))
    devices.device(gw.device_url, "EDGE-1", token, SettableSensor(temperature=30.04), rate=2.0)
    row = page.locator('#alerts tbody tr[data-device="EDGE-1"]')
    expect(row.locator(".alert-text")).to_have_text("temperature 30.04 °C above 30.00 °C")
    since = row.locator("td").nth(5)  # Severity, Device, Alert, Value, State, Since
    expect(since).to_have_text(RE_AGO)
    shown = since.text_content()
    expect(since).not_to_have_text(shown or "", timeout=3000)  # refreshed every second, not every 30 s
    page.click('#alerts a[href="#/device/EDGE-1"]')
    cell = page.locator("#device-alerts tbody tr td").nth(4)  # Severity, Alert, Value, State, Since
    expect(cell).to_have_text(RE_AGO)
    shown = cell.text_content()
    expect(cell).not_to_have_text(shown or "", timeout=3000)
    assert errors.messages == []


def test_history_opens_on_a_range_fitted_to_the_data(gw: GatewayProcess, browser: Browser,
                                                     devices: DeviceLoop) -> None:
    token = gw.register("NEW-1")
    devices.run(send_history(gw.device_url, "NEW-1", token, history(10, 30)))  # 10 minutes of data
    page, errors = open_page(browser, operator_url(gw, "/device/NEW-1"))
    temperature = chart(page)
    expect(temperature).to_have_attribute("data-points", "20")
    expect(page.locator('#ranges button[data-range="fit"]')).to_have_attribute("aria-pressed", "true")
    span = int(temperature.get_attribute("data-span") or 0)
    assert 10 * 60_000 <= span <= 15 * 60_000, span  # not a sliver of 24 h
    page.click('#ranges button[data-range="24h"]')  # the presets are still there
    expect(temperature).to_have_attribute("data-span", str(24 * 3_600_000))
    page.click('#ranges button[data-range="fit"]')  # and back to the fitted one
    expect(page.locator('#ranges button[data-range="fit"]')).to_have_attribute("aria-pressed", "true")
    expect(temperature).to_have_attribute("data-points", "20")
    assert errors.messages == []


def test_an_unknown_device_page_says_it_does_not_exist(gw: GatewayProcess, browser: Browser) -> None:
    gw.register("REAL-1")
    page, errors = open_page(browser, operator_url(gw, "/device/GHOST-9"))
    missing = page.locator("#device-missing")
    expect(missing).to_contain_text("No device “GHOST-9” exists on this gateway")
    expect(missing.get_by_role("link", name="see all devices")).to_be_visible()
    for hidden in ("#live-title", "#status-title", "#history-title", "#commands-title", "#device-state"):
        expect(page.locator(hidden)).to_be_hidden()
    assert page.locator("form[data-command]:visible").count() == 0
    page.goto(operator_url(gw, "/device/REAL-1"))  # a registered one has its page
    expect(page.locator("#commands-title")).to_be_visible()
    expect(missing).to_be_hidden()
    assert errors.messages == []


def test_set_output_offers_the_reported_outputs_and_status_reads_as_items(gw: GatewayProcess, browser: Browser,
                                                                          devices: DeviceLoop) -> None:
    token = gw.register("OUT-1")
    device = devices.device(gw.device_url, "OUT-1", token, SettableSensor(temperature=21.0), rate=2.0)
    page, errors = open_page(browser, operator_url(gw, "/device/OUT-1"))
    form = page.locator('form[data-command="set_output"]')
    options = form.locator('select[name="output"] option')
    expect(options).to_have_count(3)
    assert options.evaluate_all("os => os.map(o => o.value)") == ["buzzer", "led", "relay"]
    form.locator('select[name="output"]').select_option("relay")
    form.locator('input[name="on"]').check()
    form.get_by_role("button").click()
    expect(page.locator('#command-log li[data-command="set_output"]')).to_have_attribute("data-outcome", "ok")
    until_sync(lambda: device.outputs["relay"] is True, 5, "the relay switched on")
    outputs = page.locator('#device-status [data-field="outputs"]')
    expect(outputs.locator('li[data-item="relay"]')).to_have_text("relay on")
    expect(outputs.locator('li[data-item="led"]')).to_have_text("led off")
    expect(outputs.locator("dt")).to_have_text("Outputs")
    assert "{" not in page.locator("#device-status").inner_text()  # no raw JSON
    assert errors.messages == []


def test_charts_draw_the_rules_threshold_and_each_alert_episode(gw: GatewayProcess, browser: Browser,
                                                                devices: DeviceLoop) -> None:
    token = gw.register("HOT-2")
    sensor = SettableSensor(temperature=31.5)
    devices.device(gw.device_url, "HOT-2", token, sensor, rate=5.0)
    page, errors = open_page(browser, operator_url(gw, "/device/HOT-2?range=1h"))
    expect(page.locator("#device-alerts tbody tr")).to_have_count(1)
    temperature = chart(page)
    expect(temperature).to_have_attribute("data-thresholds", "30")
    expect(temperature).to_have_attribute("data-drawn-thresholds", "1")
    expect(temperature).to_have_attribute("data-episodes", "1")
    expect(temperature).to_have_attribute("data-drawn-episodes", "1")
    expect(temperature.locator(".chart-marks")).to_contain_text("above 30 °C")
    sensor.values["temperature"] = 25.0  # below 30 - 1 (the hysteresis): the alert clears, its episode stays
    expect(page.locator("#device-alerts tbody tr")).to_have_count(0)
    expect(page.locator("#alert-history-list li")).to_contain_text("cleared")
    expect(temperature).to_have_attribute("data-episodes", "1")
    expect(temperature).to_have_attribute("data-drawn-episodes", "1")
    assert errors.messages == []


def test_a_chart_downloads_what_it_shows_as_csv(tmp_path: Path, browser: Browser, devices: DeviceLoop) -> None:
    with GatewayProcess(tmp_path, dashboard_auth="on") as gateway:  # the download carries the token
        token = gateway.register("CSV-1")
        devices.run(send_history(gateway.device_url, "CSV-1", token, history(50, 60)))
        page, errors = open_page(browser, operator_url(gateway, "/device/CSV-1?range=1h"))
        temperature = chart(page)
        expect(temperature).to_have_attribute("data-points", "50")
        with page.expect_download() as info:
            temperature.get_by_role("button", name="Download Temperature as CSV").click()
        download = info.value
        assert download.suggested_filename == "CSV-1-temperature.csv"
        rows = list(csv.DictReader(io.StringIO(Path(download.path()).read_text())))
        assert len(rows) == 50 and all(int(r["count"]) == 1 for r in rows)
        assert [float(r["avg"]) for r in rows[:3]] == [20.0, 20.5, 21.0]
        assert errors.messages == []
