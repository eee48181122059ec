"""Edgewire protocol v1, implemented once (pure, MicroPython-safe).

protocol.wire: constants, codec, validation and the command table; protocol.gateway:
GatewaySession; protocol.device: DeviceSession (every device-side decision) and Backoff;
protocol.outbox: an in-memory outbox. docs/protocol.md is the contract.
"""

# The device core's modules, what every device that runs protocol/ itself loads (the ESP32 app,
# firmware/flash.py; the phone page, gateway/dashboard/phone_page.py); never the gateway's half.
DEVICE_CORE = ("__init__.py", "wire.py", "decisions.py", "device_frames.py", "device_commands.py",
               "device_endings.py", "device.py")
