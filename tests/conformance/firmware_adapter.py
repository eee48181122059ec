"""The firmware's conformance adapter: firmware/app.App, its flash ring and its DeviceSession.

Runs where the firmware runs: under real MicroPython (Node harness, board stand-ins from
tests/firmware/mpy/board) and under CPython (simulator/micropython_standins), driven by
run_firmware.py. The interface is the one tests/conformance/scenarios.py documents.
"""

import json
import os
import sys

import app
import clock
import config as config_module
import machine
import scenarios
from errors import NetError

MICROPYTHON = sys.implementation.name == "micropython"
_made = [0]
_base = []


def _scratch(name):
    if not _base:
        if MICROPYTHON:
            _base.append("/tmp")
        else:
            import tempfile

            _base.append(tempfile.mkdtemp(prefix="conformance-fw-"))
    return _base[0] + "/" + name


def _remove(path):
    try:
        os.remove(path)
    except OSError:
        pass


def _config(path, deep_sleep=False):
    return config_module.validate({
        "wifi_ssid": "lab", "gateway_url": "ws://127.0.0.1:9/v1/device", "device_id": "ESP-CONF",
        "token": "ewt_" + "f" * 32, "sensor": "dht22", "output_pins": {"relay": 5}, "interval_s": 30,
        "ring_path": path, "ring_records": 64, "watchdog_s": 0, "max_batch": 20, "deep_sleep": deep_sleep,
    })


def _deep_sleep_reset():
    return machine.DEEPSLEEP_RESET


class FirmwareAdapter:
    features = scenarios.FIRMWARE_FEATURES
    output = "relay"

    def __init__(self, path, fresh, deep_sleep=False):
        if fresh is not None:
            _remove(path)  # a new ring file: a reflashed board
        self.path = path
        self.app = app.App(_config(path, deep_sleep))
        self.session = self.app.session
        if fresh is False:
            self.app.ring.confirm()

    def sample(self, n):
        ring = self.app.ring
        return [ring.append({"temperature": 20.0 + i / 10}, self.app.boot, None, 1000 * (i + 1), "ok")
                for i in range(n)]

    def held(self):
        return [r.seq for r in self.app.ring.pending(0, 100000)]

    def rejected(self):
        return self.app.ring.rejected

    def reopen(self):
        self.app.ring.close()
        return FirmwareAdapter(self.path, None)

    def state(self):
        outs = {}
        for name in self.app.outputs:
            outs[name] = self.app.outputs[name].value()
        snapshot = {"interval": self.app.adaptive.base_ms, "thresholds": self.app.adaptive.thresholds,
                    "outputs": outs}
        return json.loads(json.dumps(snapshot))  # a copy: later commands must not change it

    def reboots(self):
        return self.app.reboot_requested

    def refuse(self, status, body):
        err = NetError("gateway refused the upgrade: HTTP " + str(status))
        err.http_status = status
        err.http_body = body  # as wsclient.WSClient hands it over
        return self.app.ended(err, False, clock.up_ms())

    def sleep(self):
        """What wake_once() does before machine.deepsleep(), then the boot after it: RTC memory
        kept, RAM lost (a new App), reset_cause() DEEPSLEEP_RESET."""
        self.app.save_sleep_state(clock.up_ms() + 1000)
        self.app.ring.close()
        cause = machine.reset_cause
        saved = getattr(machine, "_RESET_CAUSE", None)  # the CPython stand-in's RTC reads it
        machine.reset_cause = _deep_sleep_reset
        if saved is not None:
            machine._RESET_CAUSE = machine.DEEPSLEEP_RESET
        try:
            return FirmwareAdapter(self.path, None, True)
        finally:
            machine.reset_cause = cause
            if saved is not None:
                machine._RESET_CAUSE = saved

    def close(self):
        self.app.ring.close()


def make(fresh=False):
    _made[0] += 1
    return FirmwareAdapter(_scratch("ring-%d.bin" % _made[0]), fresh)
