"""Run every conformance scenario against the firmware (executed under MicroPython or CPython)."""

import sys

import firmware_adapter
import scenarios

failed = scenarios.run_all(firmware_adapter.make, firmware_adapter.FirmwareAdapter.features)
print("implementation:", sys.implementation.name, "failed:", len(failed))
