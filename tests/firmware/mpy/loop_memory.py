# ruff: noqa: F704 - run_mpy.mjs runs scripts with top-level await (runPythonAsync)
"""The firmware main loop under real MicroPython, with heap measurements (run with run_mpy.mjs).

Runs firmware/app.py unmodified against stand-ins for machine/network/dht/
ntptime and a loopback ``socket`` whose far end is protocol.gateway.GatewaySession
(tests/firmware/mpy/board/). Phase 1: gateway down, readings pile up in the
ring file. Phase 2: gateway back, the backlog drains in 20-reading frames, a
command is answered. Every step runs with the GC disabled between a collect
before and a reading after it, so ``after`` bounds the heap the step needed:
live data at its start plus everything it allocated (garbage included). The
in-memory gateway is not on a board: its code (``gateway_alloc``, measured when
it is imported, after protocol.wire and before the firmware) and its own
allocations are subtracted from every figure.
Between steps the script yields to JS (``await asyncio.sleep(0)``): this port's
gc.collect() frees garbage only after that. Phase 3 runs steps with the GC
left alone, as on a board; mem_info's "GC: total" shows whether the heap had
to grow beyond its starting size. Prints one ``MEMORY {json}`` line; raises
if delivery is wrong.
"""

import asyncio
import gc
import json
import socket as fakenet  # the loopback stand-in
import time

import dht  # noqa: F401 - stand-ins load before the baseline so they are not counted
import machine  # noqa: F401
import micropython
import network  # noqa: F401
import ntptime  # noqa: F401

await asyncio.sleep(0)
gc.collect()
start_alloc = gc.mem_alloc()
import protocol.wire  # noqa: E402 - board code, shared with the gateway below: counted

await asyncio.sleep(0)
gc.collect()
wire_alloc = gc.mem_alloc() - start_alloc
import protocol.gateway  # noqa: E402, F401 - the far end, not on a board: subtracted

await asyncio.sleep(0)
gc.collect()
gateway_alloc = gc.mem_alloc() - start_alloc - wire_alloc
import app  # noqa: E402
import clock  # noqa: E402
import config  # noqa: E402
import dhtsensor  # noqa: E402

await asyncio.sleep(0)
gc.collect()
code_alloc = gc.mem_alloc() - start_alloc - gateway_alloc
dhtsensor.DHT22.RETRY_MS = 10  # the stand-in sensor has no 2 s limit; keep the run short
_sleep = time.sleep_ms
clock.sleep_ms = lambda ms: _sleep(ms if ms < 5 else 5)

cfg = config.validate({
    "wifi_ssid": "lab", "gateway_url": "ws://127.0.0.1:8080/v1/device", "device_id": "ESP-MEM",
    "token": "ewt_" + "m" * 32, "sensor": "dht22", "led_pin": 2, "output_pins": {"relay": 5},
    "interval_s": 0.05, "min_interval_s": 0.05, "max_interval_s": 0.2, "ring_path": "/ring.bin",
    "ring_records": 256, "max_batch": 20,
    "thresholds": {"temperature": {"high": 40.0}}, "deadband": {"temperature": 0.05},
})
node = app.App(cfg)
await asyncio.sleep(0)
gc.collect()
app_alloc = gc.mem_alloc() - start_alloc - gateway_alloc - code_alloc
stats = {"live_max": 0, "peak_max": 0, "step_alloc_max": 0, "steps": 0}


async def step():
    await asyncio.sleep(0)
    gc.collect()
    before = gc.mem_alloc() - gateway_alloc
    fakenet.GATEWAY_ALLOC[0] = 0
    gc.disable()
    try:
        node.step()
    finally:
        after = gc.mem_alloc() - gateway_alloc - fakenet.GATEWAY_ALLOC[0]  # the device's share only
        gc.enable()
    stats["steps"] += 1
    stats["live_max"] = max(stats["live_max"], before)
    stats["peak_max"] = max(stats["peak_max"], after)
    stats["step_alloc_max"] = max(stats["step_alloc_max"], after - before)


fakenet.OUTAGE[0] = True
for _ in range(5000):
    if node.ring.count >= 45:
        break
    await step()
assert node.ring.count >= 45, "backlog did not build: " + str(node.ring.count)
backlog = node.ring.count
fakenet.OUTAGE[0] = False
node.next_connect_ms = 0
node.session.retry_at_ms = 0  # skip the backoff the outage built up
for _ in range(5000):
    await step()
    if node.ws is not None and node.ring.count == 0 and len(fakenet.STORED) > backlog:
        break
assert node.ws is not None, "never reconnected"
stored = fakenet.STORED
assert stored == list(range(1, len(stored) + 1)), "gap or duplicate in " + str(stored)
assert len(stored) >= backlog
node.ws.sock._send(1, node.ws.sock.session.command_frame("c-1", "set_output", {"output": "relay", "on": True})
                   .encode())  # the connection's own session, which then accepts the result
for _ in range(50):
    await step()
    if fakenet.RESULTS:
        break
assert fakenet.RESULTS and fakenet.RESULTS[0]["ok"] is True, fakenet.RESULTS
assert fakenet.STATUS and "heap_free" in fakenet.STATUS[0], fakenet.STATUS

# The same loop with the GC left alone, as on the board; mem_info shows whether the heap grew.
for _ in range(300):
    await asyncio.sleep(0)
    node.step()
await asyncio.sleep(0)
gc.collect()
stats.update({"start_alloc": start_alloc, "code_alloc": code_alloc, "app_alloc": app_alloc, "backlog": backlog,
              "gateway_alloc": gateway_alloc, "stored": len(fakenet.STORED), "final_live": gc.mem_alloc()})
print("MEMORY " + json.dumps(stats))
micropython.mem_info()
