"""`import greencc` (and the energy windows) load none of the serving stack."""

from __future__ import annotations

import subprocess
import sys


def test_import_greencc_loads_neither_ray_nor_fastapi():
    code = ("import sys, greencc; greencc.energy_window; import greencc.measure.windows; "
            "print(sorted(m for m in ('ray', 'fastapi', 'uvicorn', 'prometheus_client', 'torch') if m in sys.modules))")
    loaded = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert loaded.strip() == "[]"
