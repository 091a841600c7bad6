"""Print pip constraints that pin every dependency of pyproject.toml to the lowest version it
allows (`name>=X` -> `name==X`), so a lower bound that no longer holds is found before a user
meets it. torch is left out: its lowest allowed release would pull a CUDA build of several GB;
the run uses the CPU build CI installs first, and says so."""

from __future__ import annotations

import re
import sys
from pathlib import Path

import tomllib

SKIP = {"torch"}


def lowest_pins(requirements: list[str]) -> list[str]:
    pins = []
    for requirement in requirements:
        match = re.fullmatch(r"\s*([A-Za-z0-9_.\-\[\]]+?)\s*>=\s*([0-9][^,;\s]*)\s*(?:[,;].*)?", requirement)
        if match is None:
            continue  # no lower bound to test (an unpinned or exact requirement)
        name = match.group(1).split("[")[0]
        if name.lower() not in SKIP:
            pins.append(f"{name}=={match.group(2)}")
    return pins


def main() -> int:
    project = tomllib.loads(Path(sys.argv[1] if len(sys.argv) > 1 else "pyproject.toml").read_text())["project"]
    for pin in lowest_pins(project["dependencies"]):
        print(pin)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
