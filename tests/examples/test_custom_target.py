"""examples/custom_target.py: a new accelerator variant in one file, run as a script (it
registers itself) and installed as a plugin from a clean directory (the entry point in
``greencc.targets`` registers it in every process: ``greencc targets`` lists it, and its
compiled artifacts reload)."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

pytest.importorskip("tvm", reason="the example's targets need apache-tvm (pip install 'greencc[tvm]')")


def test_custom_target_example_runs_and_simulates_both_arrays():
    proc = subprocess.run([sys.executable, str(ROOT / "examples" / "custom_target.py")], capture_output=True,
                          text=True, timeout=600, env=dict(os.environ, PYTHONPATH=str(ROOT)))
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert any(line.startswith("asic-int8") and "128x128 array" in line for line in lines)
    assert any(line.startswith("edge-npu-32x32") and "32x32 array" in line for line in lines)


def test_custom_target_installs_as_a_plugin(tmp_path):
    # Build from a copy: setuptools writes build/ and *.egg-info beside the sources.
    source = tmp_path / "examples"
    (source / "custom_target").mkdir(parents=True)
    shutil.copy(ROOT / "examples" / "custom_target.py", source)
    shutil.copy(ROOT / "examples" / "custom_target" / "pyproject.toml", source / "custom_target")
    site = tmp_path / "site"
    install = subprocess.run(
        [sys.executable, "-m", "pip", "install", "--no-deps", "--no-build-isolation", "--quiet",
         "--target", str(site), str(source / "custom_target")],
        capture_output=True, text=True, timeout=600)
    assert install.returncode == 0, install.stderr
    script = f"""
import sys
import numpy as np
import greencc as gc
from greencc.cli import main
from greencc.target import registered_targets, resolve_target
code = main(["targets"])
assert "edge-npu-32x32" in registered_targets(), sorted(registered_targets())
from custom_target import mlp
target = resolve_target("edge-npu-32x32", threads=1)
assert target.array().rows == 32 and target.profile.name == "edge-npu-32x32"
x = np.random.default_rng(0).normal(size=(4, 64)).astype(np.float32)
compiled = gc.compile(mlp(), target, "cleanup,quantize-int8{{mode=static}}", calibration=[{{"x": x}}], dims={{"batch": 4}})
before = compiled({{"x": x}})["y"]
compiled.save(r"{tmp_path / 'artifact'}")
again = gc.CompiledModel.load(r"{tmp_path / 'artifact'}")
assert np.array_equal(again({{"x": x}})["y"], before) and again.simulation.array == "32x32"
print("plugin ok", code)
"""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=600,
                          cwd=tmp_path, env=dict(env, PYTHONPATH=str(site)))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "plugin ok 0" in proc.stdout
    listed = [line for line in proc.stdout.splitlines() if line.startswith("edge-npu-32x32")]
    assert listed and "available" in listed[0]
