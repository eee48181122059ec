"""Hardware watchdog fed only while the main loop makes progress.

The loop calls ``progress(ok)`` once per iteration: ok iterations feed the
WDT; after ``max_failures`` failed iterations in a row feeding stops and the
WDT resets the board. Being offline is not a failure: a node that cannot
reach the gateway keeps sampling into flash and is never rebooted for it.
"""

import machine


class Watchdog:
    def __init__(self, timeout_s, max_failures=10):
        self.wdt = None
        if timeout_s:
            self.wdt = machine.WDT(timeout=int(timeout_s * 1000))
        self.max_failures = max_failures
        self.failures = 0

    def feed(self):
        """Feed during deliberate waits inside a healthy iteration."""
        if self.wdt is not None and self.failures < self.max_failures:
            self.wdt.feed()

    def progress(self, ok):
        """End of one loop iteration: ``ok`` False if it failed unexpectedly."""
        self.failures = 0 if ok else self.failures + 1
        self.feed()
