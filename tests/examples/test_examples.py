"""The examples run as a user would run them (the MiniLM one is exercised by `make demo`)."""

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_custom_pass_example_runs_and_its_pass_fires():
    proc = subprocess.run([sys.executable, str(ROOT / "examples" / "custom_pass.py")], capture_output=True,
                          text=True, timeout=300, env=dict(os.environ, PYTHONPATH=str(ROOT)))
    assert proc.returncode == 0, proc.stderr
    assert "fold-mul-one" in proc.stdout and "folded=1" in proc.stdout


def test_generate_example_compiles_a_directory_and_generates():
    proc = subprocess.run([sys.executable, str(ROOT / "examples" / "generate.py")], capture_output=True,
                          text=True, timeout=600, env=dict(os.environ, PYTHONPATH=str(ROOT), HF_HUB_OFFLINE="1"))
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.count("greedy:") == 2 and proc.stdout.count("sampled:") == 2
    assert "tokens/s" in proc.stdout and "J/token" in proc.stdout and "peak RSS" in proc.stdout
