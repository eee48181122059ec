"""Every `make` target the README and docs name installs its Debian packages first (scripts/system-deps),
as `make test` does, so it works on a fresh Debian machine as root, unaided (issue 20.11)."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
VENV_STAMPS = ("$(STAMP)", "$(ANSIBLE_STAMP)")  # making these needs python3-venv


def rules() -> dict[str, list[str]]:
    """Makefile target -> its prerequisites, in order."""
    found: dict[str, list[str]] = {}
    for line in (ROOT / "Makefile").read_text().splitlines():
        match = re.match(r"^([A-Za-z0-9_.$()/-]+):(?!=)\s*(.*)$", line)
        if match and not line.startswith("\t") and not match.group(1).startswith("."):
            found[match.group(1)] = match.group(2).split()
    return found


def expanded(target: str, table: dict[str, list[str]], seen: set[str] | None = None) -> list[str]:
    """Prerequisites of ``target`` depth first, in the order make visits them (without -j)."""
    seen = set() if seen is None else seen
    order: list[str] = []
    for prerequisite in table.get(target, []):
        if prerequisite in seen:
            continue
        seen.add(prerequisite)
        order += expanded(prerequisite, table, seen)
        order.append(prerequisite)
    return order


def documented_targets(table: dict[str, list[str]]) -> set[str]:
    texts = [ROOT / "README.md", ROOT / "hardware.md", *sorted((ROOT / "docs").glob("*.md"))]
    named = {name for path in texts for name in re.findall(r"\bmake ([a-z][a-z0-9-]*)", path.read_text())}
    return named & set(table)


def test_every_documented_target_installs_its_debian_packages_before_the_venv() -> None:
    table = rules()
    targets = documented_targets(table)
    assert {"demo", "test", "provision-test", "flash", "cluster-demo", "bench-dashboard"} <= targets
    for target in sorted(targets):
        order = expanded(target, table)
        deps = [i for i, name in enumerate(order) if name.startswith("system-deps-")]
        assert deps, f"make {target} does not install its Debian packages (a system-deps-* prerequisite)"
        stamps = [i for i, name in enumerate(order) if name in VENV_STAMPS]
        assert not stamps or deps[0] < stamps[0], f"make {target} makes a venv before installing python3-venv"
    assert "system-deps-provision" in expanded("provision-test", table)  # debootstrap, zstd, nginx, ...


def test_each_system_deps_target_names_a_profile_the_script_knows() -> None:
    for target in rules():
        if target.startswith("system-deps-"):
            profile = target.removeprefix("system-deps-")
            script = (ROOT / "scripts" / "system-deps").read_text()
            assert f"\n  {profile}) wanted=" in script, f"scripts/system-deps has no profile {profile}"
    proc = subprocess.run([str(ROOT / "scripts" / "system-deps"), "no-such-profile"], capture_output=True,
                          text=True, timeout=30)
    assert proc.returncode == 2 and "unknown profile" in proc.stderr
