"""`make bench`: the gateway under load, side by side with Mosquitto (docs/performance.md)."""
