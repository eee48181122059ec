"""Import every module `make flash` puts on a board, from its .mpy (run_mpy.mjs --deploy-mpy).

Checks that the .mpy files firmware/flash.py compiles are ones this MicroPython release loads
(run under 1.24.1, the release flashed onto boards, and 1.27, the emulated board's), and that
no source of a compiled module is left to shadow it. Prints one line per module and ALL PASS.
"""

import os
import sys

# The ESP32 port's 1-Wire modules are not in the WebAssembly port: stand-ins so ds18b20 imports.
for name, text in (("onewire", "class OneWire:\n    def __init__(self, pin):\n        pass\n"),
                   ("ds18x20", "class DS18X20:\n    def __init__(self, bus):\n        pass\n")):
    with open("/lib/" + name + ".py", "w") as f:
        f.write(text)

top = sorted(n for n in os.listdir("/") if n.endswith(".mpy"))
package = sorted(n for n in os.listdir("/protocol") if n.endswith(".mpy"))
sources = sorted(n for n in os.listdir("/") if n.endswith(".py")) + sorted(
    "protocol/" + n for n in os.listdir("/protocol") if n.endswith(".py"))
# The device side of protocol/ (firmware/flash.py PROTOCOL_FILES), never the gateway's half.
assert "app.mpy" in top, top
assert all(n in package for n in ("__init__.mpy", "cbor.mpy", "device.mpy", "ota.mpy", "p256.mpy", "wire.mpy")) \
    and "gateway.mpy" not in package and "cbor_decode.mpy" not in package, package
assert sources == ["boot.py", "main.py"], sources
modules = ["protocol"] + [n[:-4] for n in top] + ["protocol." + n[:-4] for n in package if n != "__init__.mpy"]
for name in modules:
    __import__(name)
    where = sys.modules[name].__file__
    assert where.endswith(".mpy"), (name, where)
    print("loaded", name, "from", where)
print("implementation:", sys.implementation.name, ".".join(str(v) for v in sys.implementation.version[:3]),
      "mpy version", sys.implementation._mpy & 0xFF)
print("ALL PASS")
