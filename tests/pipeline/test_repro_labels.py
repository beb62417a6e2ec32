"""A reproducer keeps the calibration samples' labels, so a run with an accuracy budget
(``acc=``) replays instead of being refused for want of labels."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnx.parser
import pytest

import greencc as gc
from greencc.driver import replay
from greencc.errors import PassFailedError
from greencc.pipeline import base

MODEL = """<ir_version: 10, opset_import: ["" : 17]>
g (float[N, 8] x) => (float[N, 8] y) {
  i = Identity(x)
  y = Relu(i)
}"""


@pytest.fixture
def failing_pass(monkeypatch: pytest.MonkeyPatch) -> str:
    """A pass that always raises, registered in a private copy of the registry."""
    base.load_builtins()
    monkeypatch.setattr(base, "_PASSES", dict(base._PASSES))

    @gc.register_pass("test-repro-labels-raises")
    def raises(model, ctx):  # noqa: ANN001, ANN202 - a plain-function pass
        """x -> error"""
        raise RuntimeError("still broken")

    return "test-repro-labels-raises"


def _data() -> tuple[list[dict[str, np.ndarray]], np.ndarray]:
    """Three batches of two samples and each sample's label (the argmax of its input)."""
    x = np.random.default_rng(3).standard_normal((3, 2, 8)).astype(np.float32)
    return [{"x": batch} for batch in x], x.reshape(6, 8).argmax(-1)


@pytest.mark.parametrize("source", ["labels=", "npz"])
def test_a_reproducer_of_an_acc_budget_run_keeps_its_labels_and_replays(
        tmp_path: Path, failing_pass: str, source: str) -> None:
    model = tmp_path / "m.onnx"
    onnx.save(onnx.parser.parse_model(MODEL), model)
    batches, labels = _data()
    if source == "npz":
        calibration: object = tmp_path / "calib.npz"
        np.savez(calibration, x=np.stack([b["x"] for b in batches]), labels=labels)
        given = None
    else:
        calibration, given = batches, labels
    with pytest.raises(PassFailedError) as failure:
        gc.compile(model, "ort-cpu", f"cleanup,{failing_pass}", calibration=calibration, labels=given,
                   budget="acc=0.1", threads=1, reproducer_dir=tmp_path / "repro")
    reproducer = Path(failure.value.reproducer)
    with np.load(reproducer / "calibration.npz") as stored:
        assert "labels" in stored.files and np.array_equal(stored["labels"], labels)
        assert stored["x"].shape == (3, 2, 8)
    # Without the labels the replay would be refused ("acc=0.1 needs labels"); with them
    # it fails where the run failed.
    with pytest.raises(PassFailedError, match="still broken"):
        replay(reproducer)
