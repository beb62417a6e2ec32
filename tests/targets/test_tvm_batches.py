"""Several batch sizes for tvm-llvm (``batches=1,3``): one module per size, each call runs
on its batch's, another size is refused naming the compiled ones, compile time says which
batches the artifact accepts, the artifact round-trips; asic-int8 refuses the option and
says why. A two-node model keeps the TVM builds short."""

from __future__ import annotations

import json
import warnings

import numpy as np
import onnx.parser
import pytest

import greencc as gc
from greencc.cli import main
from greencc.errors import InputMismatchError, UsageError
from greencc.target import resolve_target

pytest.importorskip("tvm", reason="apache-tvm is not installed (pip install 'greencc[tvm]')")

MODEL = """
<ir_version: 8, opset_import: ["" : 17]>
g (float[N, 4] x) => (float[N, 4] y) <float[4] w = {1.0, -2.0, 3.0, -4.0}> {
  a = Add(x, w)
  y = Relu(a)
}"""


def _model() -> gc.Model:
    return gc.load(onnx.parser.parse_model(MODEL))


def _expected(x: np.ndarray) -> np.ndarray:
    return np.maximum(x + np.array([1.0, -2.0, 3.0, -4.0], np.float32), 0)


@pytest.fixture(scope="module")
def batched():
    with pytest.warns(UserWarning, match=r"'tvm-llvm' compiles static shapes: the artifact accepts only "
                      r"x: float32\[N, 4\] \(N in \{1, 3\}\); compile again with --target-option batches=\.\.\.,N"):
        return gc.compile(_model(), "tvm-llvm", "-O0", dims={"N": 2}, threads=1, verify=False,
                          target_options={"batches": "3,1"})


def test_each_batch_runs_on_its_module_and_others_are_refused(batched):
    assert batched.accepted_sizes == {"N": [1, 3]} and batched.dynamic_dims == []
    assert batched.dims == {"N": 1}  # the compile's N=2 was not built: bench runs the first batch
    for batch in (1, 3):
        x = np.random.default_rng(batch).standard_normal((batch, 4)).astype(np.float32)
        np.testing.assert_allclose(batched({"x": x})["y"], _expected(x), rtol=1e-6)
    with pytest.raises(InputMismatchError, match=r"batch 2 was not compiled: this 'tvm-llvm' artifact runs N = 1, 3 "
                       r"only \(.*batches=1, 3,2"):
        batched({"x": np.zeros((2, 4), np.float32)})
    assert batched.benchmark(repeats=3, warmup=1).shapes == {"x": [1, 4]}


def test_the_artifact_keeps_every_batch(batched, tmp_path):
    batched.save(tmp_path / "out")
    manifest = json.loads((tmp_path / "out" / "greencc.json").read_text())
    assert {"model-b1.so", "model-b3.so", "tvm_target.json"} <= set(manifest["files"])
    assert manifest["accepted_sizes"] == {"N": [1, 3]} and manifest["signature"]["inputs"][0]["shape"] == ["N", 4]
    again = gc.CompiledModel.load(tmp_path / "out", threads=1)
    x = np.ones((3, 4), np.float32)
    np.testing.assert_allclose(again({"x": x})["y"], _expected(x), rtol=1e-6)
    with pytest.raises(InputMismatchError, match="runs N = 1, 3 only"):
        again({"x": np.ones((4, 4), np.float32)})


def test_bad_batches_and_models_without_a_batch_dim_are_usage_errors():
    with pytest.raises(UsageError, match="batches='1,x' must list batch sizes >= 1"):
        resolve_target("tvm-llvm", batches="1,x")
    static = gc.load(onnx.parser.parse_model(MODEL.replace("float[N, 4]", "float[2, 4]")))
    with warnings.catch_warnings(), pytest.raises(UsageError, match="needs inputs that all lead with one symbolic batch dim"):
        warnings.simplefilter("ignore")
        gc.compile(static, "tvm-llvm", "-O0", threads=1, verify=False, target_options={"batches": [1, 2]})


def test_asic_int8_refuses_batches_and_says_why(tmp_path, capsys):
    with pytest.raises(UsageError, match="'asic-int8' compiles one batch size: its accelerator calls"):
        resolve_target("asic-int8", batches=[1, 8])
    path = tmp_path / "m.onnx"
    onnx.save(onnx.parser.parse_model(MODEL), path)
    assert main(["compile", str(path), "-t", "asic-int8", "-O0", "--target-option", "batches=1,8",
                 "-o", str(tmp_path / "out")]) == 2
    assert "compiles one batch size" in capsys.readouterr().err
