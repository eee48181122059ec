"""Edgewire simulator: sensor physics, fake DHT hardware, virtual protocol-v1 devices, fleets, faults.

Entry points: ``python -m simulator fleet|provision|esp32 ...`` (simulator.cli), ``VirtualDevice``
(simulator.device), ``Fleet`` (simulator.fleet), ``FaultPlan`` (simulator.faults).
"""
