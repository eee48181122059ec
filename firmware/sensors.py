"""Sensor table and the retry layer shared by every sensor driver.

A driver is one small module with a class taking the pin number and having
``METRICS`` (names it returns), ``RETRY_MS`` (wait before a retry, at least the
sensor's minimum read interval) and ``measure()`` -> {metric: value}, raising
SensorError (an OSError) or OSError when a read fails. Adding a sensor is that
module plus one row in DRIVERS.
"""

from errors import SensorError

# config "sensor" value -> (module, class)
DRIVERS = {
    "dht22": ("dhtsensor", "DHT22"),
    "dht11": ("dhtsensor", "DHT11"),
    "ds18b20": ("ds18b20", "DS18B20"),
}

QUALITY_OK = "ok"
QUALITY_RETRIED = "retried"
QUALITY_STALE = "stale"


def open_driver(name, pin):
    """Instantiate the driver for config value ``name`` on ``pin``."""
    module_name, class_name = DRIVERS[name]
    module = __import__(module_name)
    return getattr(module, class_name)(pin)


class Sensor:
    """Reads a driver with retries and reports quality.

    ``read()`` returns (metrics, quality): "ok" on the first try, "retried"
    after failed attempts, "stale" (last good values repeated) when every
    attempt failed, at most ``max_stale`` samples in a row; then, or with no
    good value yet, it raises SensorError.
    """

    def __init__(self, driver, wait_ms, retries=2, max_stale=3):
        self.driver = driver
        self.wait_ms = wait_ms  # sleep that keeps the watchdog fed
        self.retries = retries
        self.max_stale = max_stale
        self.last = None
        self.stale = 0
        self.failures = 0  # failed read attempts since boot
        self.reads = 0

    def read(self):
        attempt = 0
        while True:
            self.reads += 1
            try:
                values = self.driver.measure()
            except OSError as err:
                self.failures += 1
                attempt += 1
                if attempt > self.retries:
                    error = err
                    break
                self.wait_ms(self.driver.RETRY_MS)
                continue
            self.last = values
            self.stale = 0
            return values, (QUALITY_OK if attempt == 0 else QUALITY_RETRIED)
        if self.last is None or self.stale >= self.max_stale:
            raise SensorError("sensor read failed " + str(attempt) + " times (" + str(error)
                              + "); check wiring, pin and power")
        self.stale += 1
        return self.last, QUALITY_STALE
