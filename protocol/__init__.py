"""Edgewire protocol v1, implemented once (pure, MicroPython-safe).

protocol.wire: constants, codec, validation and the command table; protocol.gateway:
GatewaySession; protocol.device: DeviceSession (every device-side decision) and Backoff;
protocol.outbox: an in-memory outbox. docs/protocol.md is the contract.
"""
