"""Build the edgewire wheel once on the controller, reproducibly: ``python build_wheel.py SOURCE OUTDIR``.

The source is copied first (git's tracked and untracked-but-not-ignored files, or the whole
tree less var/, .venv/ and build/ outside git), so stale files of an earlier build never land
in the wheel. SOURCE_DATE_EPOCH fixes the timestamps inside it: the same source gives the same
bytes, so a second Ansible run copies nothing and restarts nothing. Prints the wheel's path.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

EPOCH = "315532800"  # 1980-01-01, the earliest time a zip file can hold
SKIP = {"var", ".venv", "build", "dist", ".git", "node_modules", "__pycache__"}


def source_files(source: Path) -> list[Path]:
    try:
        out = subprocess.run(["git", "-C", str(source), "ls-files", "-z", "--cached", "--others",
                              "--exclude-standard"], capture_output=True, check=True, timeout=60).stdout
    except (OSError, subprocess.CalledProcessError):
        return [p.relative_to(source) for p in source.rglob("*")
                if p.is_file() and not SKIP.intersection(p.relative_to(source).parts)]
    return [Path(name) for name in out.decode().split("\0") if name and (source / name).is_file()]


def build(source: Path, outdir: Path) -> Path:
    with tempfile.TemporaryDirectory(prefix="edgewire-wheel-") as tmp:
        tree = Path(tmp) / "src"
        for rel in source_files(source):
            (tree / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source / rel, tree / rel)
        dist = Path(tmp) / "dist"
        env = dict(os.environ, SOURCE_DATE_EPOCH=os.environ.get("SOURCE_DATE_EPOCH", EPOCH),
                   PIP_DISABLE_PIP_VERSION_CHECK="1")
        proc = subprocess.run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--wheel-dir",
                               str(dist), str(tree)], capture_output=True, text=True, env=env, timeout=600)
        if proc.returncode != 0:
            raise SystemExit(f"build_wheel: pip wheel failed:\n{proc.stdout}{proc.stderr}")
        (wheel,) = dist.glob("edgewire-*.whl")
        outdir.mkdir(parents=True, exist_ok=True)
        target = outdir / wheel.name
        if not target.exists() or target.read_bytes() != wheel.read_bytes():
            shutil.copyfile(wheel, target)
        return target


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print("usage: build_wheel.py SOURCE_DIR OUT_DIR", file=sys.stderr)
        return 2
    source = Path(argv[0]).resolve()
    if not (source / "pyproject.toml").is_file():
        print(f"build_wheel: {source} has no pyproject.toml; set edgewire_common_source_dir to the "
              "repository's root", file=sys.stderr)
        return 2
    print(build(source, Path(argv[1]).resolve()))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
