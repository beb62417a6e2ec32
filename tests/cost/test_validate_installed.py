"""``greencc cost validate`` works from an installed package: its held-out suite is built by
``greencc.calibration.held_out``, not by the repository's tests/models.py."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

SCRIPT = """
import sys
from greencc.calibration.validate import default_suite
cases = default_suite(quick=True)
model = next(c for c in cases if c.name.startswith("tiny-bert")).build()
assert "tests" not in sys.modules, "the suite imported the repository's tests package"
print(len(cases), len(model.graph))
"""


def test_the_default_suite_builds_outside_a_checkout(tmp_path: Path) -> None:
    done = subprocess.run([sys.executable, "-c", SCRIPT], cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    count, nodes = done.stdout.split()
    assert int(count) > 10 and int(nodes) > 10
