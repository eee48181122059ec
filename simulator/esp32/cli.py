"""`python -m simulator esp32 --port PORT --state DIR`: run one emulated ESP32 board.

Prints `esp32 board ready on socket://HOST:PORT` on stdout once it accepts connections, then
serves until SIGINT/SIGTERM. Exit status 0 on a clean stop, 2 on a usage or setup error.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
import sys
from pathlib import Path

from simulator.esp32.board import HEAP_BYTES, Board
from simulator.esp32.errors import BoardError


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m simulator esp32",
        description="Emulated ESP32 board: esptool serial loader, then a MicroPython raw REPL, on TCP.",
    )
    p.add_argument("--port", type=int, default=0, help="TCP port on 127.0.0.1 (0: pick a free one)")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    p.add_argument("--state", required=True, type=Path, help="state directory: flash.bin, board.json, fs/")
    p.add_argument("--node", default=None, help="node binary (default: $EDGEWIRE_NODE or node on PATH)")
    p.add_argument("--heap", type=int, default=HEAP_BYTES,
                   help=f"MicroPython heap in bytes (default {HEAP_BYTES}: an ESP32 without PSRAM)")
    p.add_argument("--quiet", action="store_true", help="no event log on stderr")
    return p


async def _run(args: argparse.Namespace) -> int:
    board = Board(
        args.state, host=args.host, port=args.port, node=args.node, heap=args.heap,
        log=None if args.quiet else sys.stderr,
    )
    port = await board.start()
    print(f"esp32 board ready on socket://{args.host}:{port} (MAC {board.chip.mac_str})", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    serve = asyncio.create_task(board.serve_forever())
    await stop.wait()
    serve.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await serve
    await board.close()
    return 0


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        return asyncio.run(_run(args))
    except BoardError as exc:
        print(f"esp32 board: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
