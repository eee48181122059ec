"""Simulated hardware with the same surface as the real drivers: DHT11/DHT22 (dht), the CPU
temperature (cpu) and DS18B20 probes behind the kernel's w1_therm driver (w1)."""
