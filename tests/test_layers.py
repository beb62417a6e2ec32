"""The layer contract covers the whole package: every module and subpackage directly under
greencc/ (and the installed ``passes`` / ``targets``) has a layer in pyproject.toml, so a
new room cannot slip past ``scripts/lint_layers.py`` (which ``make test`` runs)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import tomllib

ROOT = Path(__file__).resolve().parent.parent


def _layer_names() -> set[str]:
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["importlinter"]
    (layers,) = [c for c in config["contracts"] if c["type"] == "layers"]
    names = set()
    for layer in layers["layers"]:
        for name in layer.split("|"):
            names.add(name.strip().strip("()"))
    return names


def test_every_room_of_greencc_has_a_layer():
    rooms = {"passes", "targets"}
    for entry in (ROOT / "greencc").iterdir():
        if entry.name.startswith(("_", ".")) or entry.name == "py.typed":
            continue
        if entry.is_dir() and (entry / "__init__.py").is_file():
            rooms.add(entry.name)
        elif entry.suffix == ".py":
            rooms.add(entry.stem)
    assert rooms - _layer_names() == set(), "add the new module to [tool.importlinter] layers"


def test_the_layer_contracts_hold():
    result = subprocess.run([sys.executable, str(ROOT / "scripts" / "lint_layers.py")],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
    assert "BROKEN" not in result.stdout and "KEPT" in result.stdout
