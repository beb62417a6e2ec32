"""An accuracy budget (``acc=``) is checked against labels: a ``labels`` array in the
calibration .npz (``--calib``) or ``labels=`` in Python; without them it is refused with an
error that says what is missing, on the CLI as one line."""

from __future__ import annotations

import json

import numpy as np
import onnx
import onnx.parser
import onnx_ir as ir
import pytest

import greencc as gc
from greencc.cli import main
from greencc.data import load_npz_labels, load_npz_samples
from greencc.errors import UsageError
from greencc.pipeline import base
from tests.helpers import GOOD

SAMPLES = 6


@pytest.fixture
def negate_weights(monkeypatch):
    """A lossy pass that negates the first weight vector: the argmax of GOOD's output moves."""
    base.load_builtins()
    monkeypatch.setattr(base, "_PASSES", dict(base._PASSES))

    @gc.register_pass("negate-weights", lossy=True)
    def negate(model, ctx):
        """w -> -w (lossy on purpose)."""
        for value in model.graph.initializers.values():
            array = value.const_value.numpy()
            if array.size > 1:
                value.const_value = ir.tensor(-array, name=value.name)
                return True
        return False


def _reference_labels(x: np.ndarray) -> np.ndarray:
    """GOOD's predicted class per sample: argmax of Relu(x + w)."""
    return (np.maximum(x + np.arange(1.0, 9.0, dtype=np.float32), 0)).reshape(len(x), -1).argmax(-1)


def _write(tmp_path, *, labels: bool):
    model = tmp_path / "m.onnx"
    onnx.save(onnx.parser.parse_model(GOOD), model)
    x = np.random.default_rng(0).standard_normal((SAMPLES, 1, 8)).astype(np.float32)
    arrays = {"x": x, **({"labels": _reference_labels(x)} if labels else {})}
    calib = tmp_path / "calib.npz"
    np.savez(calib, **arrays)
    return model, calib


def test_npz_labels_check_the_accuracy_budget_and_roll_back_a_pass_that_breaks_it(tmp_path, negate_weights):
    model, calib = _write(tmp_path, labels=True)
    with pytest.warns(UserWarning, match=r"rolled back lossy pass 'negate-weights': accuracy 0\.\d+ dropped "
                      r"more than 0\.1 from 1\.0000"):
        compiled = gc.compile(model, "ort-cpu", "negate-weights", calibration=calib, budget="acc=0.1", threads=1)
    row = compiled.report.rows[-1]
    assert row.rolled_back and row.fidelity["accuracy"] < 0.9 and row.fidelity["reference_accuracy"] == 1.0


def test_cli_reads_labels_from_calib_and_refuses_acc_without_them(tmp_path, capsys):
    model, calib = _write(tmp_path, labels=True)
    out = tmp_path / "out"
    assert main(["compile", str(model), "-O1", "--calib", str(calib), "--budget", "acc=0.01",
                 "-o", str(out), "-q"]) == 0
    assert json.loads((out / "report.json").read_text())["config"]["budget"] == "acc=0.01"

    (tmp_path / "bare").mkdir()
    bare_model, bare_calib = _write(tmp_path / "bare", labels=False)
    assert main(["compile", str(bare_model), "-O1", "--calib", str(bare_calib), "--budget", "acc=0.01",
                 "-o", str(tmp_path / "o2")]) == 2
    err = capsys.readouterr().err
    assert "acc=0.01 needs labels" in err and "'labels' array" in err and "--calib" in err
    assert not (tmp_path / "o2").exists()


def test_npz_labels_are_not_a_feed_and_must_be_integers(tmp_path):
    model_path, calib = _write(tmp_path, labels=True)
    model = gc.load(model_path)
    samples = load_npz_samples(calib, model)
    assert len(samples) == SAMPLES and set(samples[0]) == {"x"}
    assert load_npz_labels(calib, model).shape == (SAMPLES,)
    np.savez(tmp_path / "float.npz", x=np.zeros((2, 1, 8), np.float32), labels=np.zeros(2, np.float32))
    with pytest.raises(UsageError, match="'labels' is a float32 array"):
        load_npz_labels(tmp_path / "float.npz", model)
    np.savez(tmp_path / "none.npz", x=np.zeros((2, 1, 8), np.float32))
    assert load_npz_labels(tmp_path / "none.npz", model) is None


def test_labels_of_stacked_batches_may_come_one_row_per_batch():
    model = gc.load(onnx.parser.parse_model(GOOD.replace("float[1, 8]", "float[N, 8]")))
    x = np.random.default_rng(1).standard_normal((3, 2, 8)).astype(np.float32)  # 3 batches of 2
    labels = _reference_labels(x.reshape(6, 8)).reshape(3, 2)
    _, report = gc.optimize(model, "cleanup", calibration=[{"x": b} for b in x], labels=labels,
                            budget="acc=0.5")
    assert report.rows[-1].fidelity["reference_accuracy"] == 1.0
    with pytest.raises(UsageError, match="4 labels for 6 calibration samples"):
        gc.optimize(model, "cleanup", calibration=[{"x": b} for b in x], labels=labels[:2].ravel(),
                    budget="acc=0.5")
