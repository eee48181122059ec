"""Simulated hardware with the same surface as the real drivers (DHT11/DHT22 for now)."""
