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


def test_no_file_points_to_a_path_of_a_development_machine() -> None:
    """gateway/alerts/__init__.py and model.py sent readers to a coordination file of the machine
    they were written on, never in the repository. Code, docs and comments name files by their path
    in the tree. (The pattern is assembled so that this file does not match itself.)"""
    import subprocess

    listed = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True, timeout=30)
    found = []
    for name in listed.stdout.decode().split("\0"):
        path = ROOT / name
        if not name or not path.is_file() or path.suffix not in (".py", ".pyi", ".md", ".toml", ".json", ".yml",
                                                                 ".yaml", ".j2", ".cfg", ".txt", ".sh", ""):
            continue
        try:
            text = path.read_text()
        except (UnicodeDecodeError, OSError):
            continue
        for number, line in enumerate(text.splitlines(), 1):
            if re.search(r"(?<![\w.~])/" + "work" + "/", line):
                found.append(f"{name}:{number}: {line.strip()[:120]}")
    assert not found, "absolute paths of a development machine:\n" + "\n".join(found)
