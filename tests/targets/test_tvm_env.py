"""TVM availability and its reasons, checked with and without TVM installed: ``greencc
targets`` must list tvm-llvm either way, with the reason when it cannot run, and importing
greencc's TVM modules must not import TVM."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

import greencc as gc
from greencc.target import registered_targets
from greencc.targets.tvm import env as tvm_env
from greencc.targets.tvm.llvm import TvmLlvm

ROOT = Path(__file__).resolve().parents[2]
HAS_TVM = importlib.util.find_spec("tvm") is not None


@pytest.fixture
def fresh_availability():
    tvm_env.tvm_availability.cache_clear()
    yield
    tvm_env.tvm_availability.cache_clear()


def test_registered_even_without_tvm_and_import_is_lazy():
    assert registered_targets()["tvm-llvm"] is TvmLlvm
    code = ("import sys, greencc.targets.tvm.llvm, greencc.targets.tvm.env; "
            "print(sorted(m for m in sys.modules if m.split('.')[0] == 'tvm'))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          cwd=ROOT, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "[]"


def test_missing_tvm_is_unavailable_with_the_install_command(fresh_availability, monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "tvm" else real(name, *a))
    availability = TvmLlvm().available()
    assert not availability and "apache-tvm is not installed" in availability.reason
    assert "greencc[tvm]" in availability.reason
    with pytest.raises(gc.TargetUnavailableError, match="not available"):
        TvmLlvm().require_available()


def test_tvm_ffi_015_makes_tuning_unavailable(monkeypatch):
    if not HAS_TVM:
        pytest.skip("apache-tvm is not installed: tuning is unavailable for that reason instead")
    monkeypatch.setattr(tvm_env, "tvm_ffi_version", lambda: "0.1.15")
    availability = tvm_env.tuning_availability()
    assert not availability and "0.1.14.post1" in availability.reason


def test_cli_targets_lists_tvm_llvm_with_its_state(capsys):
    from greencc.cli import main

    assert main(["targets"]) == 0
    line = next(row for row in capsys.readouterr().out.splitlines() if row.startswith("tvm-llvm"))
    if HAS_TVM:
        assert "available" in line and "unavailable" not in line
    else:
        assert "apache-tvm is not installed" in line


def test_llvm_target_spec_is_the_dict_form():
    spec = tvm_env.llvm_target_spec(2, mcpu="cortex-a76", mtriple="aarch64-linux-gnu")
    assert spec == {"kind": "llvm", "mcpu": "cortex-a76", "num-cores": 2, "mtriple": "aarch64-linux-gnu"}
