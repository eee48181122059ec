"""`make fuzz`: structure-aware fuzzing of protocol/ and of a live gateway.

    python -m fuzz [--frames 1000000] [--targets gateway,device,live] [--seed 1] [--json FILE]

hypothesis draws a corpus of frames of the protocol's shapes and boundaries (fuzz/frames.py);
a seeded mutator (fuzz/mutate.py) turns it into --frames frames per target. Reports crashes
(exceptions the core must not raise, broken invariants), and for the live gateway task deaths,
tracebacks, 1011 closes, /healthz after the run, SIGTERM's exit status and RSS growth.
Exit status 1 if anything crashed. Loopback only; every loop is bounded by --frames.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from typing import Any

from fuzz import frames as frame_strategies
from fuzz.core import fuzz_device_session, fuzz_gateway_session
from fuzz.mutate import Mutator

TARGETS = ("gateway", "device", "live")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m fuzz", description=__doc__.split("\n\n")[0])
    parser.add_argument("--frames", type=int, default=1_000_000, help="fuzzed frames per target (default 10^6)")
    parser.add_argument("--targets", default=",".join(TARGETS), help=f"subset of {','.join(TARGETS)}")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--corpus", type=int, default=2000, help="frames hypothesis draws for the corpus")
    parser.add_argument("--devices", type=int, default=16, help="live connections")
    parser.add_argument("--json", dest="json_path", help="write the report here as well")
    args = parser.parse_args(argv)
    targets = [t.strip() for t in args.targets.split(",") if t.strip()]
    unknown = set(targets) - set(TARGETS)
    if unknown or args.frames < 1:
        parser.error(f"--targets must be a subset of {','.join(TARGETS)}; --frames at least 1")

    def say(text: str) -> None:
        print(f"[fuzz {time.strftime('%H:%M:%S')}] {text}", file=sys.stderr, flush=True)

    reports: list[dict[str, Any]] = []
    corpus_n = min(args.corpus, max(100, args.frames // 5))
    if "gateway" in targets or "live" in targets:
        say(f"hypothesis: drawing {corpus_n} device frames (seed {args.seed})")
        device_frames = Mutator(frame_strategies.device_corpus(corpus_n, args.seed), args.seed)
    if "gateway" in targets:
        say(f"GatewaySession: {args.frames} frames")
        reports.append(fuzz_gateway_session(device_frames, args.frames,
                                            lambda n: say(f"  GatewaySession {n} frames")).as_dict())
    if "device" in targets:
        say(f"hypothesis: drawing {corpus_n} gateway frames")
        gateway_frames = Mutator(frame_strategies.gateway_corpus(corpus_n, args.seed), args.seed)
        say(f"DeviceSession: {args.frames} frames")
        reports.append(fuzz_device_session(gateway_frames, args.frames).as_dict())
    if "live" in targets:
        from fuzz.live import fuzz_live

        say(f"live gateway: {args.frames} fuzzed frames over {args.devices} connections")
        live_mutator = Mutator(device_frames.corpus, args.seed + 1)
        reports.append(fuzz_live(live_mutator, args.frames, args.devices,
                                 progress=lambda n: say(f"  live {n} fuzzed frames") if n % 50_000 < 3000 else None))
    crashes = sum(int(r["crash_count"]) for r in reports)
    summary = {"seed": args.seed, "frames_per_target": args.frames, "crashes": crashes, "reports": reports}
    text = json.dumps(summary, indent=2)
    print(text)
    if args.json_path:
        with open(args.json_path, "w") as handle:
            handle.write(text + "\n")
    say(f"{crashes} crash(es)")
    return 1 if crashes else 0


if __name__ == "__main__":
    raise SystemExit(main())
