"""Status LED patterns, driven by ``tick()`` from the main loop (no timers, no threads).

connecting: fast blink; online: short blip every 2 s; buffering (offline,
readings kept on flash): double blink; updating (an update downloading or being
checked): triple blink; error: slow blink; off.
"""

import machine

# mode -> alternating on/off durations in ms (starts with "on")
PATTERNS = {
    "connecting": (100, 100),
    "online": (50, 1950),
    "buffering": (100, 150, 100, 650),
    "updating": (50, 100, 50, 100, 50, 650),
    "error": (1000, 1000),
    "off": (),
}


class Led:
    def __init__(self, pin):
        self.pin = machine.Pin(pin, machine.Pin.OUT) if pin is not None else None
        self.mode = "off"
        self.step = 0
        self.since = 0

    def set(self, mode, now_ms):
        if mode != self.mode:
            self.mode = mode
            self.step = 0
            self.since = now_ms
            self._show()

    def tick(self, now_ms):
        pattern = PATTERNS[self.mode]
        if pattern and now_ms - self.since >= pattern[self.step]:
            self.since = now_ms
            self.step = (self.step + 1) % len(pattern)
            self._show()

    def _show(self):
        if self.pin is not None:
            self.pin.value(1 if PATTERNS[self.mode] and self.step % 2 == 0 else 0)
