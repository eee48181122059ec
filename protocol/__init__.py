"""Edgewire protocol v1, implemented once (pure, MicroPython-safe).

protocol.wire: constants, codec and validation; protocol.gateway: GatewaySession;
protocol.device: DeviceSession. docs/protocol.md is the contract.
"""
