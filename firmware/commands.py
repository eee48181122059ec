"""Downlink command handlers. protocol.device.DeviceSession checks the arguments against
protocol.wire.COMMANDS before calling one; a handler checks only what depends on this node
(the sensor's fastest interval, the configured outputs) and returns (ok, msg, data).

Adding a command is one row in wire.COMMANDS plus one function here (and its entry in
handlers()). A reboot is carried out by the app after its result has been sent.
"""


def set_interval(app, args):
    seconds = args["seconds"]
    floor = app.sensor.driver.RETRY_MS / 1000
    if seconds < floor:
        return False, "interval below the sensor's minimum of " + str(floor) + " s", None
    ms = app.adaptive.set_interval(seconds)
    app.next_sample_ms = app.now_ms  # apply at once
    return True, "interval " + str(seconds) + " s", {"interval_ms": ms}


def set_thresholds(app, args):
    metric = args["metric"]
    app.adaptive.set_threshold(metric, args.get("high"), args.get("low"))
    app.next_sample_ms = app.now_ms
    return True, "thresholds for " + metric + " set", {"thresholds": app.adaptive.thresholds.get(metric)}


def set_output(app, args):
    name = args["output"]
    pin = app.outputs.get(name)
    if pin is None:
        return False, "no output '" + name + "'; configured outputs: " + ", ".join(sorted(app.outputs)), None
    on = args["on"]
    pin.value(1 if on else 0)
    return True, name + (" on" if on else " off"), {"output": name, "on": on}


def reboot(app, args):
    app.reboot_requested = True
    return True, "rebooting", None


def ping(app, args):
    return True, "pong", {"up": app.now_ms, "buffered": app.ring.count}


def ota(app, args):
    """An update offer: the updater (and protocol.ota) is loaded at the first one (docs/ota.md)."""
    if app.cfg["ota_pubkey"] is None:  # the code protocol.ota would answer, without loading it
        return False, "no ota_pubkey on this device: updates are disabled", {"code": "ota_disabled"}
    return app.updater().offer(args)


HANDLERS = {
    "set_interval": set_interval,
    "set_thresholds": set_thresholds,
    "set_output": set_output,
    "reboot": reboot,
    "ping": ping,
    "ota": ota,
}


def handlers(app):
    """The handlers bound to ``app``, for DeviceSession(handlers=...)."""
    bound = {}
    for name in HANDLERS:
        bound[name] = _bind(HANDLERS[name], app)
    return bound


def _bind(func, app):
    return lambda args: func(app, args)
