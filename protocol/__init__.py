"""Edgewire protocol v1. The implementation is protocol.core (pure, MicroPython-safe)."""
