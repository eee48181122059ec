"""bench.forward_bench runs end to end on a small fleet (the figures themselves are make bench-forward's)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path


def test_forward_bench_small_run(tmp_path: Path) -> None:
    out = tmp_path / "forward.json"
    done = subprocess.run([sys.executable, "-m", "bench.forward_bench", "--devices", "200", "--seconds", "2",
                           "--warmup", "2", "--backlog", "1000", "--json", str(out)],
                          capture_output=True, text=True, timeout=240)
    assert done.returncode in (0, 1), done.stderr[-2000:]
    result = json.loads(out.read_text())
    for phase in ("baseline", "worker", "in_process"):
        assert result[phase]["stored_per_s"] > 0
    # The measured windows are short here (their rates depend on the machine's load); the drain shows
    # the worker forwarding: it must get through the whole backlog.
    assert result["drain"]["complete"] and result["drain"]["readings"] >= 1000
    assert isinstance(result["gateway_cpu_us_added_per_reading"], float)
