"""The emulated ESP32 board on a TCP port: reset model, download mode, MicroPython application.

Model (a USB dev board such as ESP32-DevKitC, seen through a TCP "serial cable"):

* Power-on: the ROM boots from flash. A valid image at 0x1000 (magic 0xE9, segments inside
  the flash, correct checksum) boots the application: the MicroPython WebAssembly port in a
  Node.js child process (node/board.mjs) whose filesystem mirrors DIR/fs/; it runs boot.py,
  then main.py, then the REPL. Anything else is a ROM boot loop: the console repeats the
  ROM's error ("flash read err, 1000", "csum err").
* The app's hardware is here (simulator/esp32/peripherals.py): each blocking call of the board's
  modules (sockets on loopback, Wi-Fi against DIR/world.json, the DHT's physics, pins, RTC
  memory, the watchdog, resets and deep sleep) is a request on a pipe, answered when done.
  A Ctrl-C byte from the console interrupts main.py into the REPL, as on the board's UART0.
  A watchdog that is not fed, machine.reset() and machine.deepsleep(ms) reset the chip: the
  interpreter restarts (RAM lost, files and RTC memory kept) with the matching reset cause.
* There is no DTR/RTS over TCP, so the auto-reset circuit is modelled on the traffic:
  a connection whose first byte is a SLIP frame start (0xC0, esptool's SYNC) is esptool
  resetting the chip into download mode (EN pulse with GPIO0 low): the application stops
  and the ROM serial loader answers (plus esptool's flasher stub once it is uploaded).
  Any other first byte talks to whatever runs (the MicroPython REPL, or the boot loop).
* The download session ends, and the chip resets and boots from flash, when esptool asks
  for it (FLASH_END / FLASH_DEFL_END with reboot, RUN_USER_CODE) or when its connection
  closes (what `--after hard-reset` does with RTS on a real cable).
* One client at a time, like a serial port: a second connection waits for the first to close.
* State: DIR/flash.bin (4 MiB NOR image), DIR/board.json (MAC), DIR/fs/ (the MicroPython
  filesystem, i.e. the vfs partition at 0x200000: erasing that region wipes it), DIR/world.json
  (the access point and the sensor; see peripherals.py), DIR/uart.log (everything UART0 sent,
  also while no terminal was connected: a serial capture).
* Heap: MicroPython's heap starts at HEAP_BYTES, what the ESP32 port gets without PSRAM.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import socket
import struct
import sys
from pathlib import Path
from typing import BinaryIO, TextIO

from simulator.esp32 import slip
from simulator.esp32.chip import VFS_OFFSET, VFS_SIZE, Chip, valid_boot_image, wipe_fs
from simulator.esp32.errors import AppError
from simulator.esp32.loader import LoaderSession
from simulator.esp32.peripherals import DEEPSLEEP_RESET, PWRON_RESET, SOFT_RESET, WDT_RESET, Peripherals, World
from simulator.hardware.dht import DHTModel

NODE_DIR = Path(__file__).resolve().parent / "node"
ROM_BANNER = "ets Jul 29 2019 12:21:46\r\n\r\n"
BOOT_LOOP_PERIOD_S = 1.0
# MicroPython's heap on an ESP32 without PSRAM ("GC: total" in micropython.mem_info() on a stock
# module), the figure tests/firmware and docs/firmware.md's measurements use. The WebAssembly port
# grows its heap past it instead of failing: see docs/firmware.md, "Heap".
HEAP_BYTES = 110 * 1024
# ROM reset lines by machine.reset_cause()
RESET_LINES = {
    PWRON_RESET: "rst:0x1 (POWERON_RESET)",
    SOFT_RESET: "rst:0xc (SW_CPU_RESET)",
    WDT_RESET: "rst:0x7 (TG0WDT_SYS_RESET)",
    DEEPSLEEP_RESET: "rst:0x5 (DEEPSLEEP_RESET)",
}


def find_node(node: str | None = None) -> str:
    """Path of the node binary and a check that `npm ci` ran in simulator/esp32/node."""
    exe = node or os.environ.get("EDGEWIRE_NODE") or shutil.which("node")
    if not exe:
        raise AppError("node not found: install Node.js 20 (apt-get install nodejs) or pass --node")
    pkg = NODE_DIR / "node_modules" / "@micropython" / "micropython-webassembly-pyscript"
    if not pkg.is_dir():
        raise AppError(f"MicroPython WebAssembly package missing: run `npm ci --prefix {NODE_DIR}`")
    return exe


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


def _quick_ack(writer: asyncio.StreamWriter) -> None:
    """ACK at once: a UART has no delayed ACK, and Nagle + delayed ACK would add ~40 ms to every
    small request/response exchange (pyserial's socket:// client does not set TCP_NODELAY)."""
    sock = writer.get_extra_info("socket")
    if sock is not None and hasattr(socket, "TCP_QUICKACK"):
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_QUICKACK, 1)


class Board:
    """One emulated ESP32 on 127.0.0.1:port with its state in `state_dir`."""

    def __init__(
        self,
        state_dir: Path,
        host: str = "127.0.0.1",
        port: int = 0,
        node: str | None = None,
        heap: int = HEAP_BYTES,
        log: TextIO | None = sys.stderr,
    ) -> None:
        self.state_dir = state_dir
        self.host = host
        self.port = port
        self.node = find_node(node)
        self.heap = heap
        self._log_stream = log
        self.chip = Chip(state_dir)
        self.fs_dir = state_dir / "fs"
        self.chip.flash.on_erase = self._on_erase
        self.mode = "off"  # off | app | bootfail | download
        self.boot_reason = ""
        self._app: asyncio.subprocess.Process | None = None
        self._app_reader: asyncio.Task[None] | None = None
        self._client: asyncio.StreamWriter | None = None
        self._lock = asyncio.Lock()
        self._server: asyncio.Server | None = None
        self.world = World(state_dir / "world.json")
        self.rtc_memory = bytearray()  # survives resets and deep sleep, not a power cut
        self.sensors: dict[int, DHTModel] = {}
        self.interrupted = asyncio.Event()
        self.peripherals: Peripherals | None = None
        self._app_tasks: list[asyncio.Task[None]] = []
        self._reboot_task: asyncio.Task[None] | None = None
        self.boots = 0
        self._uart_log: BinaryIO | None = None

    def log(self, msg: str) -> None:
        if self._log_stream is not None:
            print(f"esp32[{self.port}]: {msg}", file=self._log_stream, flush=True)

    # ---- lifecycle ---------------------------------------------------------------------

    async def start(self) -> int:
        """Power on and listen; returns the bound port."""
        self._uart_log = open(self.state_dir / "uart.log", "ab", buffering=0)  # noqa: SIM115 - open while the board runs
        self._server = await asyncio.start_server(self._handle, self.host, self.port)
        self.port = self._server.sockets[0].getsockname()[1]
        await self._boot(PWRON_RESET)
        return self.port

    async def serve_forever(self) -> None:
        assert self._server is not None
        async with self._server:
            await self._server.serve_forever()

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
        if self._reboot_task is not None:
            self._reboot_task.cancel()
        await self._stop_app()
        self.chip.flash.flush()
        self.chip.flash.close()
        if self._uart_log is not None:
            self._uart_log.close()

    # ---- boot ----------------------------------------------------------------------------

    def _on_erase(self, start: int, length: int) -> None:
        if start < VFS_OFFSET + VFS_SIZE and start + length > VFS_OFFSET and self.fs_dir.exists():
            wipe_fs(self.fs_dir)
            self.log("vfs partition erased: filesystem wiped")

    def _reset_request(self, cause: int, sleep_ms: int) -> None:
        """machine.reset() / deepsleep(ms) from the app: stop it and boot again (after the sleep)."""
        self._reboot_task = asyncio.create_task(self._reboot(cause, sleep_ms))

    async def _reboot(self, cause: int, sleep_ms: int = 0) -> None:
        await self._stop_app()
        if sleep_ms > 0:
            self.log(f"deep sleep for {sleep_ms} ms")
            await asyncio.sleep(sleep_ms / 1000)
        await self._boot(cause)

    async def _boot(self, reset_cause: int) -> None:
        """Reset and boot from flash: start the application or enter the ROM boot loop."""
        await self._stop_app()
        if reset_cause == PWRON_RESET:
            self.rtc_memory.clear()
        self.chip.flash.flush()
        ok, reason = valid_boot_image(self.chip.flash)
        rom = f"{ROM_BANNER}{RESET_LINES[reset_cause]},boot:0x13 (SPI_FAST_FLASH_BOOT)\r\n"
        if not ok:
            self.mode = "bootfail"
            self.boot_reason = reason
            self.log(f"boot failed: {reason}")
            await self._to_client((rom + f"{reason}\r\nets_main.c 371 \r\n").encode())
            return
        entry = struct.unpack("<I", self.chip.flash.read(0x1004, 4))[0]
        await self._to_client((rom + f"mode:DIO, clock div:2\r\nentry 0x{entry:08x}\r\n").encode())
        await self._start_app(reset_cause)

    async def _start_app(self, reset_cause: int) -> None:
        script = NODE_DIR / "board.mjs"
        req_r, req_w = os.pipe()  # the board's requests
        rsp_r, rsp_w = os.pipe()  # their answers
        try:
            self._app = await asyncio.create_subprocess_exec(
                self.node, str(script), "--fs", str(self.fs_dir), "--heap", str(self.heap),
                "--rpc-in", str(rsp_r), "--rpc-out", str(req_w),
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE,
                cwd=str(NODE_DIR),
                pass_fds=(rsp_r, req_w),
            )
        except OSError as exc:
            for fd in (req_r, req_w, rsp_r, rsp_w):
                os.close(fd)
            raise AppError(f"cannot start {self.node}: {exc}") from exc
        os.close(rsp_r)
        os.close(req_w)
        self.boots += 1
        self.interrupted.clear()
        self.peripherals = Peripherals(self.world, self.chip.mac, reset_cause, self.rtc_memory,
                                       self._reset_request, self.interrupted, self.sensors)
        self.mode = "app"
        self.boot_reason = "ok"
        self._app_reader = asyncio.create_task(self._pump_app_output(self._app))
        self._app_tasks = [asyncio.create_task(self._serve_requests(self.peripherals, req_r, rsp_w)),
                           asyncio.create_task(self._watchdog(self.peripherals))]
        self.log("booted: MicroPython running boot.py and main.py")

    async def _serve_requests(self, periph: Peripherals, req_r: int, rsp_w: int) -> None:
        """Answer the board's requests in order, until the interpreter goes away."""
        loop = asyncio.get_running_loop()
        reader = asyncio.StreamReader(limit=1 << 20)
        transport, _ = await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader),
                                                    os.fdopen(req_r, "rb", buffering=0))
        try:
            while True:
                line = await reader.readline()
                if not line:
                    return
                reply = await periph.handle(line)
                data = (json.dumps(reply, separators=(",", ":")) + "\n").encode()
                _write_all(rsp_w, data)  # the interpreter waits for it: the pipe never fills
        except (BrokenPipeError, ConnectionError):
            return
        finally:
            transport.close()
            periph.close()
            with contextlib.suppress(OSError):
                os.close(rsp_w)

    async def _watchdog(self, periph: Peripherals) -> None:
        """The task watchdog: resets the chip when the app stops feeding it, wherever it hangs."""
        while True:
            await asyncio.sleep(0.05)
            if periph.wdt_expired():
                self.log(f"watchdog: not fed for {periph.wdt_ms} ms: reset")
                await self._to_client(b"E (0) task_wdt: Task watchdog got triggered.\r\n")
                self._reboot_task = asyncio.create_task(self._reboot(WDT_RESET))
                return

    async def _stop_app(self) -> None:
        app, self._app = self._app, None
        tasks, self._app_tasks = self._app_tasks, []
        current = asyncio.current_task()
        for task in tasks:
            if task is not current:
                task.cancel()
        if app is None:
            return
        if app.returncode is None:
            app.kill()
        await app.wait()
        for task in tasks:
            if task is not current:
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        if self._app_reader is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await self._app_reader
            self._app_reader = None
        if self.peripherals is not None:
            self.peripherals.close()

    async def _pump_app_output(self, app: asyncio.subprocess.Process) -> None:
        assert app.stdout is not None
        while True:
            data = await app.stdout.read(4096)
            if not data:
                break
            await self._to_client(data)
        if self._app is app:  # died on its own: a crash; the real chip would reset
            code = await app.wait()
            self.log(f"MicroPython exited with {code}: rebooting")
            self._app = None
            await self._boot(SOFT_RESET)

    async def _to_client(self, data: bytes) -> None:
        if self._uart_log is not None:
            self._uart_log.write(data)
        client = self._client
        if client is None or client.is_closing():
            return  # UART bytes with nobody listening are lost
        try:
            client.write(data)
            await client.drain()
        except (ConnectionError, OSError):
            pass

    # ---- connections -----------------------------------------------------------------------

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        async with self._lock:
            try:
                first = await reader.read(4096)
                if not first:
                    return
                self._client = writer
                if first[0] == slip.END:
                    await self._download(first, reader, writer)
                else:
                    await self._console(first, reader, writer)
            except (ConnectionError, OSError) as exc:
                self.log(f"connection lost: {exc}")
            finally:
                self._client = None
                writer.close()
                with contextlib.suppress(ConnectionError, OSError):
                    await writer.wait_closed()

    async def _download(self, first: bytes, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """esptool reset the chip into the ROM serial loader; serve it until reboot or close."""
        await self._stop_app()
        self.chip.reset()
        self.mode = "download"
        self.log("reset into download mode (esptool)")
        session = LoaderSession(self.chip)
        decoder = slip.Decoder()
        data = first
        while data:
            for packet in decoder.feed(data):
                for reply in session.handle(packet):
                    writer.write(slip.encode(reply))
                for line in session.log:
                    self.log(line)
                session.log.clear()
                if session.rebooted:
                    break
            await writer.drain()
            if session.rebooted:
                self.log("esptool requested a reboot")
                await self._boot(PWRON_RESET)
                await self._console(b"", reader, writer)
                return
            data = await reader.read(65536)
            _quick_ack(writer)
        self.log("esptool disconnected: reset")
        self._client = None
        await self._boot(PWRON_RESET)

    async def _console(self, first: bytes, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """Talk to whatever runs: MicroPython's REPL, or the ROM boot loop."""
        data = first
        while True:
            if self.mode == "app" and self._app is not None and self._app.stdin is not None:
                if b"\x03" in data and self.peripherals is not None:
                    self.peripherals.interrupt()  # Ctrl-C: KeyboardInterrupt in main.py
                if data:
                    self._app.stdin.write(data)
                    await self._app.stdin.drain()
                data = await reader.read(4096)
                _quick_ack(writer)
                if not data:
                    return
                continue
            # ROM boot loop: the watchdog resets the chip and the ROM complains again
            msg = (
                f"{ROM_BANNER}rst:0x10 (RTCWDT_RTC_RESET),boot:0x13 (SPI_FAST_FLASH_BOOT)\r\n"
                f"{self.boot_reason}\r\nets_main.c 371 \r\n"
            )
            await self._to_client(msg.encode())
            try:
                data = await asyncio.wait_for(reader.read(4096), BOOT_LOOP_PERIOD_S)
            except TimeoutError:
                data = b"\x00"
                continue
            if not data:
                return
            data = b""
