"""Adaptive sampling and reporting.

Report a sample when a metric moved beyond its deadband since the last report,
while any metric is beyond its threshold, or as a heartbeat once max_interval
has passed without a report. Sample at min_interval while beyond a threshold,
back at interval after a change, and double the interval (up to max_interval)
for each stable sample.
"""


class Adaptive:
    """Decides, per sample, whether to report it and how long to wait for the next one."""

    def __init__(self, interval_s, min_interval_s, max_interval_s, deadband=None, thresholds=None):
        self.base_ms = int(interval_s * 1000)
        self.min_ms = int(min_interval_s * 1000)
        self.max_ms = int(max_interval_s * 1000)
        self.interval_ms = self.base_ms
        self.deadband = deadband or {}
        self.thresholds = thresholds or {}
        self.last = None  # metrics of the last report
        self.last_report_ms = None
        self.alert = False  # some metric beyond its threshold at the last sample

    def set_interval(self, seconds):
        """Base interval; min/max widen to include it. Returns the interval in ms."""
        ms = int(seconds * 1000)
        self.base_ms = ms
        if ms < self.min_ms:
            self.min_ms = ms
        if ms > self.max_ms:
            self.max_ms = ms
        self.interval_ms = self.min_ms if self.alert else ms
        return ms

    def set_threshold(self, metric, high=None, low=None):
        limit = {}
        if high is not None:
            limit["high"] = high
        if low is not None:
            limit["low"] = low
        if limit:
            self.thresholds[metric] = limit
        elif metric in self.thresholds:
            del self.thresholds[metric]

    def beyond(self, metrics):
        """Names of metrics at or beyond their high/low threshold."""
        out = []
        for name in metrics:
            limit = self.thresholds.get(name)
            if limit is None:
                continue
            value = metrics[name]
            if ("high" in limit and value >= limit["high"]) or ("low" in limit and value <= limit["low"]):
                out.append(name)
        return out

    def changed(self, metrics):
        """True if any metric moved beyond its deadband (default 0) since the last report."""
        last = self.last
        if last is None:
            return True
        for name in metrics:
            if name not in last or abs(metrics[name] - last[name]) > self.deadband.get(name, 0):
                return True
        return False

    def decide(self, metrics, now_ms):
        """Record one sample; True if it should be reported. Updates ``interval_ms``."""
        self.alert = bool(self.beyond(metrics))
        moved = self.changed(metrics)
        due = self.last_report_ms is None or now_ms - self.last_report_ms >= self.max_ms
        if self.alert:
            self.interval_ms = self.min_ms
        elif moved:
            self.interval_ms = self.base_ms
        else:
            self.interval_ms = min(self.max_ms, max(self.base_ms, self.interval_ms * 2))
        report = self.alert or moved or due
        if report:
            self.last = metrics
            self.last_report_ms = now_ms
        return report

    def state(self, now_ms):
        """What must survive a deep sleep (kept in RTC memory)."""
        age = None if self.last_report_ms is None else now_ms - self.last_report_ms
        return {"i": self.interval_ms, "l": self.last, "a": self.alert, "h": age}

    def restore(self, state, now_ms, slept_ms):
        """Continue from ``state()`` saved ``slept_ms`` before this boot's ``now_ms``."""
        if type(state) is not dict:
            return
        self.interval_ms = state.get("i", self.base_ms)
        self.last = state.get("l")
        self.alert = bool(state.get("a"))
        age = state.get("h")
        if type(age) is int:
            self.last_report_ms = now_ms - age - slept_ms
