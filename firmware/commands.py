"""Downlink commands. Each handler validates its args and returns (ok, msg, data).

Adding a command is one function plus one row in HANDLERS. The app sends the
result frame; a reboot is carried out after its result has been sent.
"""

from protocol import wire


def _number_arg(args, key):
    value = args.get(key)
    if not wire.is_number(value) or not wire.is_finite(value):
        return None
    return value


def set_interval(app, args):
    seconds = _number_arg(args, "seconds")
    if seconds is None or seconds <= 0 or seconds > 86400:
        return False, "set_interval needs 'seconds': a number in (0, 86400]", None
    floor = app.sensor.driver.RETRY_MS / 1000
    if seconds < floor:
        return False, "interval below the sensor's minimum of " + str(floor) + " s", None
    ms = app.adaptive.set_interval(seconds)
    app.next_sample_ms = app.now_ms  # apply at once
    return True, "interval " + str(seconds) + " s", {"interval_ms": ms}


def set_thresholds(app, args):
    metric = args.get("metric")
    if not wire.valid_metric_name(metric):
        return False, "set_thresholds needs 'metric': a metric name like 'temperature'", None
    high = args.get("high")
    low = args.get("low")
    for bound in (high, low):
        if bound is not None and (not wire.is_number(bound) or not wire.is_finite(bound)):
            return False, "'high' and 'low' must be finite numbers", None
    if high is not None and low is not None and not low < high:
        return False, "'low' must be below 'high'", None
    app.adaptive.set_threshold(metric, high, low)
    app.next_sample_ms = app.now_ms
    return True, "thresholds for " + metric + " set", {"thresholds": app.adaptive.thresholds.get(metric)}


def set_output(app, args):
    name = args.get("output")
    on = args.get("on")
    pin = app.outputs.get(name) if type(name) is str else None
    if pin is None:
        return False, "unknown output; configured outputs: " + ", ".join(sorted(app.outputs)), None
    if type(on) is not bool:
        return False, "set_output needs 'on': true or false", None
    pin.value(1 if on else 0)
    return True, name + (" on" if on else " off"), {"output": name, "on": on}


def reboot(app, args):
    app.reboot_requested = True
    return True, "rebooting", None


def ping(app, args):
    return True, "pong", {"up": app.now_ms, "buffered": app.ring.count}


HANDLERS = {
    "set_interval": set_interval,
    "set_thresholds": set_thresholds,
    "set_output": set_output,
    "reboot": reboot,
    "ping": ping,
}


def run(app, name, args):
    """Carry out one command; never raises for bad input."""
    handler = HANDLERS.get(name) if type(name) is str else None
    if handler is None:
        return False, "unknown command '" + str(name)[:32] + "'; known: " + ", ".join(sorted(HANDLERS)), None
    if type(args) is not dict:
        return False, "command args must be an object", None
    return handler(app, args)
