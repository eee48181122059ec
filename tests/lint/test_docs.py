"""Claims in the README that code decides: they must match the code."""

from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def bench_default(option: str) -> float:
    """The default of a ``bench.run`` command-line option, read from its argparse call."""
    tree = ast.parse((ROOT / "bench" / "run.py").read_text())
    for node in ast.walk(tree):
        if (isinstance(node, ast.Call) and getattr(node.func, "attr", "") == "add_argument" and node.args
                and isinstance(node.args[0], ast.Constant) and node.args[0].value == option):
            for keyword in node.keywords:
                if keyword.arg == "default" and isinstance(keyword.value, ast.Constant):
                    return float(keyword.value.value)
    raise AssertionError(f"bench/run.py has no {option} with a default")


def test_readme_latency_figures_say_which_coalescing_interval_they_were_measured_with() -> None:
    interval = bench_default("--dashboard-interval-ms")
    performance = (ROOT / "README.md").read_text().split("## Performance", 1)[1].split("\n## ", 1)[0]
    stated = {float(ms) for ms in re.findall(r"(\d+) ms (?:dashboard )?coalescing", performance)}
    assert stated == {interval}, f"README's Performance section must say the bench used {interval:g} ms coalescing"
