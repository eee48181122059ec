"""The dashboard in a real browser (Chromium) against a real gateway process on loopback.

Waits are on the DOM (Playwright's expect), never fixed sleeps; a bound such as "a live reading
appears within 2 s" is the bound of the wait.
"""

from __future__ import annotations

import re
import time
from pathlib import Path

from playwright.sync_api import Browser, Page, expect

from tests.browser.harness import DeviceLoop, SettableSensor, open_page, operator_url, send_history
from tests.edge.agentproc import AgentProcess
from tests.helpers.gateway import GatewayProcess
from tests.helpers.waiting import until_sync


def add_token(gw: GatewayProcess, name: str, role: str) -> str:
    return gw.cli("tokens", "add", name, "--role", role).stdout.strip().splitlines()[-1]


def rows(page: Page) -> list[str]:
    return list(page.eval_on_selector_all("#devices tbody tr", "trs => trs.map(tr => tr.dataset.device)"))


def test_fleet_lists_registered_devices_that_never_connected_and_search_filters(gw: GatewayProcess,
                                                                                browser: Browser) -> None:
    gw.register("GH-TOMATO-1", "--label", "greenhouse")
    gw.register("GH-TOMATO-2", "--label", "greenhouse")
    gw.register("SHED-1", "--label", "shed")
    page, errors = open_page(browser, operator_url(gw))
    expect(page.locator("#conn")).to_have_attribute("data-state", "live")
    expect(page.locator("#devices tbody tr")).to_have_count(3)
    for tr in page.locator("#devices tbody tr").all():
        expect(tr).to_have_attribute("data-state", "never")
        expect(tr).to_contain_text("never connected")
    expect(page.locator('[data-count="never"]')).to_have_text("3")
    expect(page.locator("#role")).to_contain_text("operator")
    assert "token=" not in page.url  # the token left the address bar

    page.fill("#q", "tomato")
    expect(page.locator("#devices tbody tr")).to_have_count(2)
    assert rows(page) == ["GH-TOMATO-1", "GH-TOMATO-2"]
    page.fill("#q", "shed")  # labels are searched too
    expect(page.locator("#devices tbody tr")).to_have_count(1)
    page.fill("#q", "")
    page.select_option("#label-filter", "greenhouse")
    expect(page.locator("#devices tbody tr")).to_have_count(2)
    page.go_back()  # filters live in the URL: back undoes the label filter
    expect(page.locator("#devices tbody tr")).to_have_count(3)
    page.click('#status-filter button[data-status="online"]')
    expect(page.locator("#fleet-count")).to_have_text("No device matches these filters.")
    assert errors.messages == []


def test_device_page_draws_history_and_shows_a_live_reading_within_2_s(gw: GatewayProcess, browser: Browser,
                                                                      devices: DeviceLoop) -> None:
    token = gw.register("SENSOR-01")
    now = int(time.time() * 1000)
    history = [(now - 3_300_000 + i * 60_000, {"temperature": 20.0 + (i % 7) * 0.5, "humidity": 40.0 + i % 5})
               for i in range(55)]
    devices.run(send_history(gw.device_url, "SENSOR-01", token, history))

    page, errors = open_page(browser, operator_url(gw, "/device/SENSOR-01?range=1h"))
    expect(page.locator("#device-title")).to_have_text("SENSOR-01")
    chart = page.locator('figure.chart[data-metric="temperature"]')
    expect(chart).not_to_have_attribute("data-points", "0")
    assert int(chart.get_attribute("data-points") or 0) == 55  # 1 h in buckets of seconds: one per reading
    expect(chart.locator("canvas")).to_have_count(1)
    expect(page.locator('figure.chart[data-metric="humidity"]')).to_be_visible()
    expect(page.locator('#ranges button[data-range="1h"]')).to_have_attribute("aria-pressed", "true")
    page.click("#zoom-in")  # half the span around its middle, fetched again in finer buckets
    expect(page).to_have_url(re.compile(r"from=\d+&to=\d+"))
    expect(page.locator("#custom-range")).to_be_visible()
    expect(chart).to_have_attribute("data-points", re.compile(r"^[2-4][0-9]$"))  # about half of the 55
    page.go_back()
    expect(page.locator('#ranges button[data-range="1h"]')).to_have_attribute("aria-pressed", "true")
    expect(chart).to_have_attribute("data-points", "55")

    sensor = SettableSensor(temperature=23.25, humidity=41.0)
    device = devices.device(gw.device_url, "SENSOR-01", token, sensor, rate=5.0)
    expect(page.locator("#device-state")).to_have_text("online")
    sensor.values["temperature"] = 27.75
    set_at = time.monotonic()
    expect(page.locator('#live-values .card[data-metric="temperature"] .card-value')).to_have_text(
        "27.75 °C", timeout=2000)
    assert time.monotonic() - set_at < 2.0
    expect(page.locator('#device-status [data-field="fw"] dd')).to_have_text("sim-0.1.0")
    expect(page.locator('#device-status [data-field="buffered"]')).to_be_visible()
    assert device.counters.acked > 0
    assert errors.messages == []


def test_a_pi_agent_shows_every_metric(gw: GatewayProcess, browser: Browser, tmp_path: Path) -> None:
    token = gw.register("PI-1")
    agent = AgentProcess(tmp_path, gw.device_url, token, device_id="PI-1", dht=True).start()
    try:
        page, errors = open_page(browser, operator_url(gw, "/device/PI-1"))
        # The agent sends one reading per sensor in each frame: every one must reach the page.
        for metric in ("temperature", "humidity", "cpu_temperature", "soil_temperature", "soil_moisture"):
            expect(page.locator(f'#live-values .card[data-metric="{metric}"]')).to_be_visible(timeout=20_000)
        expect(page.locator('#live-values .card[data-metric="humidity"] .card-value')).to_have_text(
            re.compile(r"^[0-9.]+ %$"))
        expect(page.locator('#live-values .card[data-metric="humidity"] .card-label')).to_have_text("Humidity")
        assert errors.messages == []
    finally:
        agent.stop()


def test_an_alert_appears_is_acknowledged_and_clears_and_survives_a_restart(gw: GatewayProcess, browser: Browser,
                                                                           devices: DeviceLoop) -> None:
    token = gw.register("HOT-1")
    gw.register("IDLE-1")
    page, errors = open_page(browser, operator_url(gw))
    expect(page.locator("#conn")).to_have_attribute("data-state", "live")
    sensor = SettableSensor(temperature=22.0)
    devices.device(gw.device_url, "HOT-1", token, sensor, rate=5.0)
    expect(page.locator('#devices tbody tr[data-device="HOT-1"]')).to_have_attribute("data-state", "online")

    sensor.values["temperature"] = 35.0
    alert = page.locator('#alerts tbody tr[data-device="HOT-1"]')
    expect(alert).to_be_visible()
    expect(page.locator("#announcer")).to_contain_text("HOT-1")  # aria-live
    assert rows(page)[0] == "HOT-1"  # alerting devices first
    alert.get_by_role("button", name=re.compile("Acknowledge")).click()
    expect(alert).to_have_attribute("data-state", "acknowledged")
    expect(alert).to_contain_text("dashboard:dashboard.token")
    expect(page.locator("#alert-action-status")).to_contain_text("acknowledged")

    gw.restart()  # alerts and devices are stored: the page shows them again after a restart
    page.reload()
    expect(page.locator("#devices tbody tr")).to_have_count(2)
    expect(page.locator('#alerts tbody tr[data-device="HOT-1"]')).to_have_attribute("data-state", "acknowledged")

    sensor.values["temperature"] = 20.0  # the device reconnects by itself and the alert clears
    expect(page.locator('#alerts tbody tr[data-device="HOT-1"]')).to_have_count(0, timeout=30_000)
    expect(page.locator("#no-alerts")).to_be_visible()
    errors.messages = [m for m in errors.messages if "ERR_CONNECTION_REFUSED" not in m
                       and "WebSocket" not in m]  # the restart itself
    assert errors.messages == []


def test_operator_sends_commands_viewer_cannot(gw: GatewayProcess, browser: Browser, devices: DeviceLoop) -> None:
    token = gw.register("ACT-1")
    device = devices.device(gw.device_url, "ACT-1", token, SettableSensor(temperature=21.0), rate=2.0)
    viewer = add_token(gw, "wall-screen", "viewer")
    operator = add_token(gw, "alice", "operator")

    page, errors = open_page(browser, f"{gw.http_url}/#/device/ACT-1?token={viewer}")
    expect(page.locator("#role")).to_contain_text("viewer · wall-screen")
    expect(page.locator('form[data-command="set_interval"] button')).to_be_disabled()
    expect(page.locator('form[data-command="set_interval"] input[name="seconds"]')).to_be_disabled()
    expect(page.locator("#commands-note")).to_contain_text("operator")
    page.close()

    page, errors = open_page(browser, f"{gw.http_url}/#/device/ACT-1?token={operator}")
    expect(page.locator("#device-state")).to_have_text("online")
    form = page.locator('form[data-command="set_interval"]')
    form.locator('input[name="seconds"]').fill("0.25")
    form.get_by_role("button").click()
    expect(page.locator('#command-log li[data-command="set_interval"]')).to_have_attribute("data-outcome", "ok")
    until_sync(lambda: device.interval_s == 0.25, 5, "the device's interval set to 0.25 s")
    form.locator('input[name="seconds"]').fill("-3")  # the gateway refuses it with the table's usage
    form.get_by_role("button").click()
    refused = page.locator('#command-log li[data-command="set_interval"]').first
    expect(refused).to_have_attribute("data-outcome", "error")
    expect(refused).to_contain_text("bad_value")
    assert device.interval_s == 0.25
    assert errors.messages == []


def test_a_page_without_a_valid_token_says_how_to_get_one(tmp_path: Path, browser: Browser) -> None:
    gateway = GatewayProcess(tmp_path, dashboard_auth="on")
    with gateway:
        page, _ = open_page(browser, gateway.http_url + "/")
        expect(page.locator("#auth")).to_be_visible()
        expect(page.locator("#auth")).to_contain_text("tokens add")
        expect(page.locator("#conn")).to_have_attribute("data-state", "auth")
        page.fill("#token-input", "ewd_not-a-real-token")
        page.click("#token-form button")
        expect(page.locator("#auth-reason")).to_contain_text("refused the token")
        token = (gateway.data_dir / "dashboard.token").read_text().strip()
        page.fill("#token-input", token)
        page.click("#token-form button")
        expect(page.locator("#conn")).to_have_attribute("data-state", "live")
        expect(page.locator("#auth")).to_be_hidden()


def test_keyboard_alone_reaches_a_device_page_and_back(gw: GatewayProcess, browser: Browser) -> None:
    for device_id in ("KB-1", "KB-2"):
        gw.register(device_id)
    page, errors = open_page(browser, operator_url(gw))
    expect(page.locator("#devices tbody tr")).to_have_count(2)
    for _ in range(60):
        page.keyboard.press("Tab")
        focused = page.evaluate("document.activeElement.getAttribute('href')")
        if focused == "#/device/KB-1":
            break
    else:
        raise AssertionError("Tab never reached the KB-1 link")
    outline = page.evaluate("getComputedStyle(document.activeElement).outlineStyle")
    assert outline not in ("none", ""), "focus is not visible"
    page.keyboard.press("Enter")
    expect(page).to_have_url(re.compile(r"#/device/KB-1$"))
    expect(page.locator("#device-title")).to_be_focused()
    # every control of the device page is reachable: Tab to the 7 d range button and press it
    for _ in range(80):
        page.keyboard.press("Tab")
        if page.evaluate("document.activeElement.dataset.range") == "7d":
            break
    else:
        raise AssertionError("Tab never reached the 7 d range button")
    page.keyboard.press("Enter")
    expect(page).to_have_url(re.compile(r"range=7d"))
    page.go_back()  # no range in the address: the range fitted to the data
    expect(page.locator('#ranges button[data-range="fit"]')).to_have_attribute("aria-pressed", "true")
    page.go_back()
    expect(page.locator('#devices tbody a[href="#/device/KB-1"]')).to_be_focused()
    page.go_forward()
    expect(page.locator("#device-title")).to_have_text("KB-1")
    assert errors.messages == []


def test_phone_width_and_contrast(gw: GatewayProcess, browser: Browser, devices: DeviceLoop) -> None:
    token = gw.register("PHONE-1", "--label", "a rather long label for a small screen")
    devices.device(gw.device_url, "PHONE-1", token, SettableSensor(temperature=21.5, humidity=45.0), rate=2.0)
    page, errors = open_page(browser, operator_url(gw), width=390, height=844)
    expect(page.locator('#devices tbody tr[data-state="online"]')).to_have_count(1)
    assert page.evaluate("document.documentElement.scrollWidth") <= 390
    assert_contrast(page)
    page.click('#devices tbody a[href="#/device/PHONE-1"]')
    expect(page.locator('figure.chart[data-metric="temperature"]')).not_to_have_attribute("data-points", "0")
    assert page.evaluate("document.documentElement.scrollWidth") <= 390
    assert_contrast(page)
    assert errors.messages == []


CONTRAST_JS = """() => {
  const lum = (rgb) => {
    const c = rgb.map((v) => { v /= 255; return v <= 0.03928 ? v / 12.92 : ((v + 0.055) / 1.055) ** 2.4; });
    return 0.2126 * c[0] + 0.7152 * c[1] + 0.0722 * c[2];
  };
  const parse = (s) => (s.match(/[0-9.]+/g) || []).map(Number);
  const background = (el) => {
    for (let e = el; e; e = e.parentElement) {
      const c = parse(getComputedStyle(e).backgroundColor);
      if (c.length === 3 || (c.length === 4 && c[3] > 0.5)) return c.slice(0, 3);
    }
    return [255, 255, 255];
  };
  const bad = [];
  for (const el of document.querySelectorAll("body *")) {
    if (!el.offsetParent && el.tagName !== "BODY") continue;
    if (el.closest("[disabled], .u-legend, canvas, .sr-only")) continue;
    const text = [...el.childNodes].filter((n) => n.nodeType === 3 && n.textContent.trim()).length;
    if (!text) continue;
    const style = getComputedStyle(el);
    const fg = parse(style.color);
    const bg = background(el);
    const [a, b] = [lum(fg.slice(0, 3)), lum(bg)].sort((x, y) => y - x);
    const ratio = (a + 0.05) / (b + 0.05);
    const size = parseFloat(style.fontSize);
    const large = size >= 24 || (size >= 18.66 && Number(style.fontWeight) >= 700);
    const what = `${el.tagName}.${el.className} "${el.textContent.trim().slice(0, 30)}"`;
    if (ratio < (large ? 3 : 4.5)) bad.push(`${what} ${ratio.toFixed(2)}`);
  }
  return bad;
}"""


def assert_contrast(page: Page) -> None:
    """WCAG AA: every visible text at least 4.5:1 against its background (3:1 when large)."""
    bad = page.evaluate(CONTRAST_JS)
    assert bad == [], bad
