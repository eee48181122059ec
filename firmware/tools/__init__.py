"""Technician and CI tools for the ESP32 firmware (run on a PC under CPython)."""
