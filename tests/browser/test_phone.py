"""The phone page (/phone) in an emulated phone (Playwright's Pixel 7 descriptor, Debian's Chromium)
against a real gateway process: protocol/device.py on MicroPython's WebAssembly port as a device.

Waits poll the page or the gateway's storage with a bound, never fixed sleeps. What the runs
measure (the page's bytes and load time, bytes per reading on the wire) is printed, not asserted:
``pytest -s tests/browser/test_phone.py`` shows it.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
from playwright.sync_api import Browser, BrowserContext, Page, Playwright, WebSocket, WebSocketRoute, expect

from tests.browser.harness import (
    CHROMIUM,
    CHROMIUM_ARGS,
    ConsoleErrors,
    DeviceLoop,
    open_page,
    operator_url,
    send_history,
)
from tests.browser.test_console import decode_qr
from tests.helpers.gateway import GatewayProcess
from tests.helpers.waiting import until_sync

DEVICE = "PHONE-1"
PHONE = "Pixel 7"

# Runs in the page (a function: the page's CSP forbids evaluating strings).
MOTION = """([x, y, z]) => window.dispatchEvent(new DeviceMotionEvent("devicemotion",
    {accelerationIncludingGravity: {x, y, z}, acceleration: {x: 0, y: 0, z: 0}, interval: 16}))"""
ORIENTATION = """([alpha, beta, gamma]) => window.dispatchEvent(new DeviceOrientationEvent("deviceorientation",
    {alpha, beta, gamma, absolute: false}))"""
MOVING = """() => setInterval(() => {  // a phone carried about: motion and orientation events at 20 Hz
    const t = performance.now() / 1000;
    window.dispatchEvent(new DeviceMotionEvent("devicemotion", {accelerationIncludingGravity:
        {x: 2.5 * Math.sin(t), y: 9.81 + 0.8 * Math.cos(3 * t), z: 1.2 * Math.sin(2 * t)}, interval: 50}));
    window.dispatchEvent(new DeviceOrientationEvent("deviceorientation",
        {alpha: (40 * t) % 360, beta: 30 * Math.sin(t), gamma: 20 * Math.cos(t), absolute: false}));
}, 50)"""
IDB_COUNT = """() => new Promise((resolve, reject) => {
    const open = indexedDB.open("edgewire-phone");
    open.onerror = () => reject(open.error);
    open.onsuccess = () => {
        const req = open.result.transaction("readings").objectStore("readings").count();
        req.onsuccess = () => { resolve(req.result); open.result.close(); };
    };
})"""


@dataclass
class Recorder:
    """Every request URL and WebSocket URL the page opens, the bytes it received, its data frames."""

    urls: list[str] = field(default_factory=list)
    received: dict[str, int] = field(default_factory=dict)  # URL -> Content-Length as sent (gzip)
    data_frames: list[str] = field(default_factory=list)
    statuses: list[dict[str, Any]] = field(default_factory=list)

    def attach(self, context: BrowserContext, page: Page) -> None:
        context.on("request", lambda r: self.urls.append(r.url))
        context.on("response", lambda r: self.received.__setitem__(r.url, int(r.headers.get("content-length", 0))))
        page.on("websocket", self._websocket)

    def readings(self, frames: list[str] | None = None) -> int:
        return sum(len(json.loads(f)["r"]) for f in (self.data_frames if frames is None else frames))

    def _websocket(self, ws: WebSocket) -> None:
        self.urls.append(ws.url)
        ws.on("framesent", self._sent)

    def _sent(self, payload: str | bytes) -> None:
        frame = json.loads(payload) if isinstance(payload, str) else {}
        if frame.get("t") == "data":
            self.data_frames.append(payload)
        elif frame.get("t") == "status":
            self.statuses.append(frame)


@pytest.fixture
def gw(tmp_path: Any) -> Iterator[GatewayProcess]:
    with GatewayProcess(tmp_path, registry_recheck_s=0.5) as gateway:
        yield gateway


def phone_url(gw: GatewayProcess, token: str) -> str:
    """The address the console's add-device QR code holds (test_from_the_console_s_qr_code_to_a_phone)."""
    return f"{gw.http_url}/phone#token={token}&device={DEVICE}"


def open_phone(playwright: Playwright, browser: Browser, url: str, state: str = "online",
               route: Any = None) -> tuple[BrowserContext, Page, ConsoleErrors, Recorder, float]:
    """The phone page in an emulated phone, opened at ``url`` (the add-device QR code's); returns
    also the seconds from navigation to ``state`` (online: MicroPython loaded, welcome received).
    ``route`` handles the page's WebSocket to /v1/device (Playwright's route_web_socket)."""
    context = browser.new_context(**playwright.devices[PHONE])
    if route is not None:
        context.route_web_socket(re.compile(r".*/v1/device$"), route)
    page = context.new_page()
    page.set_default_timeout(15_000)
    errors = ConsoleErrors(page)
    recorder = Recorder()
    recorder.attach(context, page)
    started = time.monotonic()
    page.goto(url)
    expect(page.locator("#conn")).to_have_attribute("data-state", state, timeout=30_000)
    return context, page, errors, recorder, time.monotonic() - started


def command(loop: DeviceLoop, gw: GatewayProcess, name: str, args: dict[str, Any] | None = None) -> dict[str, Any]:
    """A command through the admin API, answered by the page (run on the harness's loop: the sync
    Playwright API holds this thread's)."""
    reply = loop.run(gw.admin({"t": "command", "device_id": DEVICE, "name": name, "args": args or {},
                               "timeout": 10}))
    result: dict[str, Any] = reply["result"]
    return result


def number(page: Page, selector: str) -> int:
    return int(page.inner_text(selector))


def stored(gw: GatewayProcess) -> list[tuple[int, int, dict[str, float]]]:
    return [(seq, ts, json.loads(metrics)) for seq, ts, metrics in
            gw.query("SELECT seq, device_ts, metrics FROM readings WHERE device_id=? ORDER BY seq", (DEVICE,))]


def test_from_the_console_s_qr_code_to_a_phone(playwright: Playwright, browser: Browser,
                                               gw: GatewayProcess) -> None:
    console, console_errors = open_page(browser, operator_url(gw, "/console"))
    console.fill("#add-device-id", DEVICE)
    console.click("#add-device button[type=submit]")
    expect(console.locator("#device-qr")).to_have_attribute("data-ready", "1")
    token = console.locator("#device-token-value").inner_text()
    url = decode_qr(console, "#device-qr")
    assert url == phone_url(gw, token)
    context, page, errors, _, _ = open_phone(playwright, browser, url)
    page.evaluate(MOTION, [-3.5, 0.0, 9.75])
    until_sync(lambda: any(m.get("accel_x") == -3.5 for _, _, m in stored(gw)), 15, "a motion reading stored")
    assert errors.messages == [] and console_errors.messages == []
    context.close()
    console.context.close()


def test_phone_streams_motion_answers_commands_and_keeps_the_token_out_of_urls(
        playwright: Playwright, browser: Browser, gw: GatewayProcess, devices: DeviceLoop) -> None:
    token = gw.register(DEVICE)
    context, page, errors, recorder, load_s = open_phone(playwright, browser, phone_url(gw, token))
    assert "token" not in page.url and page.url.endswith("/phone")  # the fragment left the address bar
    held = json.loads(page.evaluate("() => localStorage.getItem('edgewire-phone')"))
    assert held == {"device": DEVICE, "token": token}

    page.evaluate(MOTION, [0.25, 9.81, -1.5])
    page.evaluate(ORIENTATION, [270.5, 12.24, -45.0])
    until_sync(lambda: any("accel_x" in m for _, _, m in stored(gw)), 15, "a motion reading stored")
    motion = next(m for _, _, m in stored(gw) if "accel_x" in m)
    assert (motion["accel_x"], motion["accel_y"], motion["accel_z"]) == (0.25, 9.81, -1.5)
    assert (motion["orientation_alpha"], motion["orientation_beta"], motion["orientation_gamma"]) == \
        (270.5, 12.2, -45.0)  # orientation kept to 0.1 degree
    assert motion["battery"] == 100  # headless Chromium's battery: full

    result = command(devices, gw, "set_interval", {"seconds": 0.5})
    assert result["ok"] is True, result
    expect(page.locator("#interval")).to_have_text("0.5 s")
    result = command(devices, gw, "ping")
    assert result["ok"] is True and result["msg"] == "pong" and "buffered" in result["data"], result
    result = command(devices, gw, "set_output", {"output": "screen", "on": True})
    assert result["ok"] is True, result
    expect(page.locator("body")).to_have_attribute("data-screen", "on")
    until_sync(lambda: page.evaluate("() => true") and bool(recorder.statuses)
               and recorder.statuses[-1]["outputs"]["screen"] is True, 10, "a status with the screen on")
    status = recorder.statuses[-1]  # docs/protocol.md section 7: the Status panel, the MQTT bridge's switches
    assert status["kind"] == "phone" and status["fw"].startswith("phone page, MicroPython 1.27"), status
    assert status["interval"] == 0.5 and status["outputs"] == {"screen": True, "vibrate": False}, status
    assert command(devices, gw, "set_output", {"output": "screen", "on": False})["ok"] is True
    expect(page.locator("body")).to_have_attribute("data-screen", "off")
    refused = command(devices, gw, "set_output", {"output": "relay", "on": True})
    assert refused["ok"] is False and "screen, vibrate" in refused["msg"], refused
    assert command(devices, gw, "reboot")["ok"] is False  # not a command this device has

    readings = len(stored(gw))
    until_sync(lambda: len(stored(gw)) >= readings + 4, 15, "readings at the new interval")
    seqs = [seq for seq, _, _ in stored(gw)]
    assert seqs == list(range(1, len(seqs) + 1))

    second = context.new_page()  # the same browser: one tab runs the device, the other says so
    second.goto(f"{gw.http_url}/phone")
    expect(second.locator("#conn")).to_have_attribute("data-state", "other-tab")
    second.close()

    assert recorder.urls and not [url for url in recorder.urls if token in url or "token=" in url]
    assert any(url.endswith("/v1/device") for url in recorder.urls)
    assert errors.messages == []

    print(f"\nphone page: {sum(recorder.received.values())} bytes transferred ({len(recorder.received)} responses, "
          f"gzip), online {load_s:.2f} s after navigation on {PHONE} emulation "
          f"(MicroPython ready {page.locator('body').get_attribute('data-load-ms')} ms after the script started)")
    context.close()


def test_readings_taken_offline_are_buffered_in_indexeddb_and_stored_exactly_once(
        playwright: Playwright, browser: Browser, gw: GatewayProcess, devices: DeviceLoop) -> None:
    token = gw.register(DEVICE)
    context, page, errors, recorder, _ = open_phone(playwright, browser, phone_url(gw, token))
    assert command(devices, gw, "set_interval", {"seconds": 0.2})["ok"] is True
    page.evaluate(MOVING)
    until_sync(lambda: number(page, "#acked") >= 5, 15, "readings acknowledged before the outage")

    context.set_offline(True)
    went_offline = int(time.time() * 1000)
    expect(page.locator("#conn")).not_to_have_attribute("data-state", "online")
    until_sync(lambda: number(page, "#buffered") >= 10, 20, "readings buffered while offline")
    assert page.evaluate(IDB_COUNT) >= 10  # in IndexedDB, not only in memory
    until_sync(lambda: number(page, "#buffered") >= 15, 20, "more readings buffered")
    stored_offline = len(stored(gw))
    back_online = int(time.time() * 1000)
    context.set_offline(False)

    expect(page.locator("#conn")).to_have_attribute("data-state", "online", timeout=20_000)
    until_sync(lambda: number(page, "#buffered") <= 2 and len(stored(gw)) >= stored_offline + 15, 20,
               "the buffered readings delivered")
    assert command(devices, gw, "set_interval", {"seconds": 3600})["ok"] is True  # sampling stops
    taken = number(page, "#next-seq") - 1
    until_sync(lambda: number(page, "#acked") == taken and number(page, "#buffered") == 0, 15,
               "every reading acknowledged")

    rows = stored(gw)
    seqs = [seq for seq, _, _ in rows]
    assert seqs == list(range(1, taken + 1))  # every reading the page took, once: no gap, no duplicate
    assert gw.query("SELECT count(*), count(DISTINCT seq) FROM readings WHERE device_id=?", (DEVICE,)) == \
        [(taken, taken)]
    during = [m for _, ts, m in rows if went_offline <= ts <= back_online]
    assert len(during) >= 10  # taken during the outage (their own time), delivered after it
    assert all("accel_x" in m and "orientation_alpha" in m for m in during)  # the motion while offline
    assert page.evaluate(IDB_COUNT) == 0  # acked readings leave the store
    assert [m for m in errors.messages if "ERR_INTERNET_DISCONNECTED" not in m] == []  # Chromium's own, offline

    # Playwright delivers the page's events when this thread calls into it: call until they are in
    until_sync(lambda: page.evaluate("() => true") and recorder.readings() >= taken, 15, "data frames recorded")
    full = [f for f in recorder.data_frames if all("accel_x" in r["m"] for r in json.loads(f)["r"])]
    for what, frames in (("online, one reading a frame", [f for f in full if len(json.loads(f)["r"]) == 1]),
                         ("the backlog after the outage", [f for f in full if len(json.loads(f)["r"]) > 1])):
        if frames:
            count = recorder.readings(frames)
            size = sum(len(f.encode()) for f in frames) / count
            print(f"\nphone, {what}: {size:.1f} bytes per reading on the wire (JSON payload; {count}"
                  f" readings of accel x/y/z, orientation alpha/beta/gamma and battery in {len(frames)} frames)")
    context.close()


def test_readings_buffered_before_a_reload_are_delivered_after_it_and_renumbered_after_another_phone(
        playwright: Playwright, browser: Browser, gw: GatewayProcess, devices: DeviceLoop) -> None:
    """The device's token was used before (another phone, 3 readings stored): this fresh browser's
    counter was never confirmed, so its readings are renumbered after the stored ones (the core's
    rule, docs/protocol.md section 3), in IndexedDB too."""
    token = gw.register(DEVICE)
    earlier = int(time.time() * 1000) - 60_000
    assert devices.run(send_history(gw.device_url, DEVICE, token, [(earlier + i, {"battery": 50}) for i in range(3)]))
    blocked = [True]

    def route(ws: WebSocketRoute) -> None:  # the gateway unreachable (a dead uplink), until unblocked
        if blocked[0]:
            ws.close(code=1013, reason="test: no uplink")
        else:
            ws.connect_to_server()

    context, page, errors, _, _ = open_phone(playwright, browser, phone_url(gw, token), "waiting", route)
    page.evaluate(MOTION, [7.0, 8.0, 9.0])
    until_sync(lambda: number(page, "#buffered") >= 2, 20, "readings buffered before the reload")
    taken_before = number(page, "#next-seq") - 1
    reloaded_at = int(time.time() * 1000)
    page.reload()  # a closed tab, a killed browser: the store outlives the page
    expect(page.locator("#buffered")).not_to_have_text("0")
    expect(page.locator("#conn")).to_have_attribute("data-state", "waiting")
    until_sync(lambda: number(page, "#buffered") >= 4, 20, "more readings buffered after the reload")
    blocked[0] = False
    expect(page.locator("#conn")).to_have_attribute("data-state", "online", timeout=20_000)
    until_sync(lambda: number(page, "#buffered") == 0 and number(page, "#acked") >= 4, 20, "the backlog delivered")
    rows = stored(gw)
    assert [seq for seq, _, _ in rows] == list(range(1, len(rows) + 1))
    assert [m for _, _, m in rows[:3]] == [{"battery": 50}] * 3  # the other phone's
    before = [m for _, ts, m in rows[3:] if ts < reloaded_at]
    assert len(before) >= taken_before >= 2  # the page before the reload took them, the page after sent them
    assert before[0]["accel_x"] == 7.0

    page.reload()  # the renumbered counter was kept: the next readings follow, no gap, no duplicate
    expect(page.locator("#conn")).to_have_attribute("data-state", "online")
    count = len(rows)
    # the routed WebSocket's frames pass through this thread's Playwright loop: call into it while waiting
    until_sync(lambda: page.evaluate("() => true") and len(stored(gw)) >= count + 2, 20,
               "readings after the second reload")
    seqs = [seq for seq, _, _ in stored(gw)]
    assert seqs == list(range(1, len(seqs) + 1))
    assert errors.messages == []
    context.close()


def test_on_plain_http_the_page_says_sensors_need_https_and_still_answers_commands(
        playwright: Playwright, gw: GatewayProcess, devices: DeviceLoop) -> None:
    """A LAN name over plain HTTP is not a secure context (127.0.0.1 would be): Chromium hides the
    motion, orientation and battery APIs there; the device connects and answers all the same. With
    Chrome's switch for that origin, the sensors are back."""
    token = gw.register(DEVICE)
    lan = playwright.chromium.launch(executable_path=CHROMIUM,
                                     args=[*CHROMIUM_ARGS, "--host-resolver-rules=MAP gateway.lan 127.0.0.1"])
    try:
        context = lan.new_context(**playwright.devices[PHONE])
        page = context.new_page()
        errors = ConsoleErrors(page)
        page.goto(phone_url(gw, token).replace("127.0.0.1", "gateway.lan"))
        expect(page.locator("#conn")).to_have_attribute("data-state", "online", timeout=30_000)
        expect(page.locator("#insecure")).to_be_visible()
        expect(page.locator('[data-sensor="motion"]')).to_have_text("needs HTTPS")
        expect(page.locator('[data-sensor="battery"]')).to_have_text("needs HTTPS")
        page.click("#position-button")
        expect(page.locator('[data-sensor="position"]')).to_have_text("needs HTTPS")
        result = command(devices, gw, "ping")
        assert result["ok"] is True and result["data"] == {"buffered": 0}, result
        assert command(devices, gw, "set_output", {"output": "screen", "on": True})["ok"] is True
        expect(page.locator("body")).to_have_attribute("data-screen", "on")
        assert stored(gw) == []  # no sensor, no reading
        assert errors.messages == []
    finally:
        lan.close()
    # Chrome's switch for one insecure origin (chrome://flags/#unsafely-treat-insecure-origin-as-secure)
    flagged = playwright.chromium.launch(executable_path=CHROMIUM, args=[
        *CHROMIUM_ARGS, "--host-resolver-rules=MAP gateway.lan 127.0.0.1",
        f"--unsafely-treat-insecure-origin-as-secure=http://gateway.lan:{gw.port}"])
    try:
        page = flagged.new_context(**playwright.devices[PHONE]).new_page()
        page.goto(phone_url(gw, token).replace("127.0.0.1", "gateway.lan"))
        expect(page.locator("#conn")).to_have_attribute("data-state", "online", timeout=30_000)
        expect(page.locator("#insecure")).to_be_hidden()
        expect(page.locator('[data-sensor="motion"]')).to_have_text("listening")
        page.evaluate(MOTION, [0.5, 0.5, 9.5])
        until_sync(lambda: any(m.get("accel_z") == 9.5 for _, _, m in stored(gw)), 15, "a motion reading stored")
    finally:
        flagged.close()
