"""protocol/ota.py under MicroPython: verify the signatures in /lib/ota_vectors.json (made by
`cryptography` in tests/firmware/test_ota_micropython.py), run a download through the core,
and measure one verification's time and heap. Prints RESULT/MEASURE lines for the test."""

import gc
import json
import sys
import time

from protocol import ota

with open("/lib/ota_vectors.json") as f:
    VECTORS = json.load(f)
gc.collect()

answers = []
for case in VECTORS["cases"]:
    answers.append(ota.verify(case["pub"], case["message"], case["sig"]))
print("RESULT", json.dumps(answers))

# time: the median of a few verifications of a valid signature of the manifest
case = VECTORS["timed"]
times = []
for _ in range(5):
    t0 = time.ticks_ms()
    assert ota.verify(case["pub"], case["message"], case["sig"])
    times.append(time.ticks_diff(time.ticks_ms(), t0))
times.sort()
# heap: bytes allocated by one verification (collections off: every temporary counts), and the
# live heap taken by the imported module
gc.collect()
gc.disable()
before = gc.mem_alloc()
ota.verify(case["pub"], case["message"], case["sig"])
churn = gc.mem_alloc() - before
gc.enable()
print("MEASURE", json.dumps({"verify_ms": times[len(times) // 2], "verify_alloc_bytes": churn,
                             "impl": sys.implementation.name}))

# the core under MicroPython: an offer, every chunk, the hashes
core = ota.OtaCore("esp32", "1.0.0", sys.implementation.version, VECTORS["offer"]["pub"], chunk=1000)
ok, msg, data = core.offer({"manifest": VECTORS["offer"]["manifest"], "sig": VECTORS["offer"]["sig"]})
assert ok, msg
core.begun()
files = VECTORS["offer"]["files"]
import binascii

frames = 0
while True:
    frame = core.next_frame()
    if frame is None:
        break
    frames += 1
    msg = json.loads(frame)
    if msg["t"] != "ota_get":
        continue
    raw = binascii.a2b_base64(files[msg["file"]].encode())
    part = raw[msg["off"]:msg["off"] + msg["len"]]
    got = core.on_chunk({"t": "ota_chunk", "release": msg["release"], "file": msg["file"], "off": msg["off"],
                         "data": binascii.b2a_base64(part).decode().strip(), "size": len(raw)})
    assert got is not None and got[2] == part
print("CORE", core.stage, frames)
