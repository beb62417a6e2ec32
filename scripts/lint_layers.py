"""Check greencc's import layers with import-linter (contracts in pyproject.toml).

``passes/`` and ``targets/`` install as ``greencc.passes`` / ``greencc.targets`` through
setuptools' package-dir mapping, which grimp cannot follow; this lays the three folders
out as one ``greencc`` tree in a temporary directory (source files only) and runs
``lint-imports`` there. Exit status is lint-imports' own.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def main() -> int:
    with tempfile.TemporaryDirectory(prefix="greencc-layers-") as tmp:
        tree = Path(tmp) / "greencc"
        ignore = shutil.ignore_patterns("__pycache__", "*.pyc", "*.json", "*.so")
        shutil.copytree(ROOT / "greencc", tree, ignore=ignore)
        shutil.copytree(ROOT / "passes", tree / "passes", ignore=ignore)
        shutil.copytree(ROOT / "targets", tree / "targets", ignore=ignore)
        env = {**os.environ, "PYTHONPATH": tmp}
        lint = Path(sys.executable).with_name("lint-imports")
        command = [str(lint), "--no-cache", str(ROOT / "pyproject.toml")]
        return subprocess.run(command, cwd=tmp, env=env, check=False).returncode


if __name__ == "__main__":
    sys.exit(main())
