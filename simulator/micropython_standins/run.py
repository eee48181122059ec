"""Run the deployed firmware under CPython: ``python -m simulator.micropython_standins.run --fs DIR``.

DIR is the simulated flash: main.py, the firmware modules, protocol/ and
config.json (the firmware reads DIR/config.json where a board reads
/config.json). Resets re-execute this command with the same arguments.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--fs", required=True, help="directory acting as the board's flash")
    args = parser.parse_args(argv)
    fs = Path(args.fs).resolve()
    if not (fs / "app.py").exists():
        print(f"{fs} holds no firmware (app.py); deploy firmware/*.py and protocol/ there", file=sys.stderr)
        return 2
    os.environ["EW_SIM_FS"] = str(fs)
    from simulator.micropython_standins import install

    install()
    sys.path.insert(0, str(fs))
    for name in [m for m in sys.modules if m == "protocol" or m.startswith("protocol.")]:
        del sys.modules[name]  # the board imports the copy deployed on its flash
    import app  # type: ignore[import-not-found]

    app.main(str(fs / "config.json"))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
