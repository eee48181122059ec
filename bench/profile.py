"""Summarise a py-spy ``--format raw`` profile (collapsed stacks): top functions by self and total time.

    python -m bench.profile bench/results/profile-gateway-10000.txt [--top 25] [--match gateway/]

`make bench` writes these files with ``--profile gateway`` (py-spy record on the server
process during the hold phase). Inclusive time counts a function once per stack sample.
"""

from __future__ import annotations

import argparse
import re
from collections import Counter
from pathlib import Path

_FRAME = re.compile(r"^(?P<func>.*?) \((?P<file>[^()]*?)(?::(?P<line>\d+))?\)$")


def parse_collapsed(text: str) -> list[tuple[list[str], int]]:
    """[(frames root..leaf, samples)] from collapsed-stack lines ``a;b;c 12``."""
    out = []
    for line in text.splitlines():
        line = line.strip()
        if not line:
            continue
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        out.append((stack.split(";"), int(count)))
    return out


def short(frame: str) -> str:
    """``func (path/to/file.py:12)`` -> ``func (file.py)`` keeping the last two path parts."""
    m = _FRAME.match(frame)
    if not m:
        return frame
    parts = m.group("file").split("/")
    return f"{m.group('func')} ({'/'.join(parts[-2:])})"


# Leaves where a thread waits rather than runs; py-spy reports some of them as active.
IDLE_LEAVES = (("_worker", "concurrent/futures/thread.py"), ("select", "selectors.py"), ("wait", "threading.py"),
               ("get", "queue.py"))


def is_idle(frames: list[str]) -> bool:
    """True when the innermost frame is a known blocking wait (thread-pool queue, selector, lock)."""
    if not frames:
        return True
    m = _FRAME.match(frames[-1])
    if not m:
        return False
    return any(m.group("func") == func and m.group("file").endswith(file) for func, file in IDLE_LEAVES)


def summarise(stacks: list[tuple[list[str], int]],
              keep_idle: bool = False) -> tuple[int, Counter[str], Counter[str]]:
    """(samples, self samples per function, inclusive samples per function); idle stacks dropped."""
    total = 0
    self_time: Counter[str] = Counter()
    incl: Counter[str] = Counter()
    for frames, count in stacks:
        if not keep_idle and is_idle(frames):
            continue
        total += count
        names = [short(f) for f in frames]
        if names:
            self_time[names[-1]] += count
        for name in set(names):
            incl[name] += count
    return total, self_time, incl


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.profile", description=__doc__.split("\n\n")[0])
    parser.add_argument("file")
    parser.add_argument("--top", type=int, default=25)
    parser.add_argument("--match", default="", help="only list functions whose location contains this text")
    parser.add_argument("--keep-idle", action="store_true", help="keep samples of threads waiting in a queue/select")
    args = parser.parse_args(argv)
    stacks = parse_collapsed(Path(args.file).read_text())
    total, self_time, incl = summarise(stacks, args.keep_idle)
    if not total:
        print("no samples")
        return 1
    print(f"{total} samples (idle waits excluded)" if not args.keep_idle else f"{total} samples")
    for title, counter in (("self", self_time), ("total (inclusive)", incl)):
        print(f"\n-- top {args.top} by {title}")
        shown = 0
        for name, count in counter.most_common():
            if args.match and args.match not in name:
                continue
            print(f"{100 * count / total:6.1f}%  {name}")
            shown += 1
            if shown >= args.top:
                break
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
