"""The torch-inductor target: a tiny model compiles into an AOTInductor package that matches
ONNX Runtime at several batch sizes (dynamic dims), saves, and loads in a fresh process; its
options, capability and refusals. MiniLM is benchmarks/fusion.py's (a cold compile is ~30 s)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("torch")

import greencc as gc  # noqa: E402
from greencc.errors import TargetUnavailableError, UsageError  # noqa: E402
from greencc.target import UNSUPPORTED, resolve_target  # noqa: E402
from tests.helpers import model_from_text, run_ort  # noqa: E402

# A dense layer, GELU, a LayerNorm and a com.microsoft SkipLayerNormalization with a
# symbolic batch: the shapes of an encoder block, in a few kernels.
BLOCK = """<ir_version: 10, opset_import: ["" : 17, "com.microsoft" : 1]>
block (float[batch, 8] x) => (float[batch, 8] y)
<float[8, 8] w = {WEIGHTS}, float[8] b = {BIAS}, float[8] gamma = {GAMMA}, float[8] beta = {BETA}> {
  h = MatMul(x, w)
  a = Add(h, b)
  g = com.microsoft.Gelu(a)
  n = LayerNormalization<axis = -1>(g, gamma, beta)
  y = com.microsoft.SkipLayerNormalization<epsilon = 0.00001>(n, x, gamma, beta)
}"""

FROBNICATE = """<ir_version: 10, opset_import: ["" : 17, "com.example" : 1]>
frob_model (float[2] x) => (float[2] y) {
  [relu_in] a = Relu(x)
  [frob] y = com.example.Frobnicate(a)
}"""


def _block() -> gc.Model:
    rng = np.random.default_rng(0)
    arrays = {"WEIGHTS": rng.standard_normal(64), "BIAS": rng.standard_normal(8),
              "GAMMA": 1 + 0.1 * rng.standard_normal(8), "BETA": 0.1 * rng.standard_normal(8)}
    text = BLOCK
    for key, array in arrays.items():
        text = text.replace(key, ", ".join(f"{v:.6f}" for v in array))
    return model_from_text(text)


def _feeds(batch: int, seed: int = 1) -> dict[str, np.ndarray]:
    return {"x": np.random.default_rng(seed).standard_normal((batch, 8)).astype(np.float32)}


@pytest.fixture(scope="module")
def compiled() -> gc.CompiledModel:
    target = resolve_target("torch-inductor", threads=1)
    if not target.available():
        pytest.skip(target.available().reason)
    return gc.compile(_block(), target=target, pipeline="-O0", dims={"batch": 4}, verify=False)


def test_compiled_package_matches_onnx_runtime_at_every_batch(compiled: gc.CompiledModel) -> None:
    assert compiled.dynamic_dims == ["batch"]
    for batch in (1, 3, 7):
        feeds = _feeds(batch)
        (want,) = run_ort(_block(), feeds)
        np.testing.assert_allclose(compiled(feeds)["y"], want, atol=1e-4, rtol=0)
    assert compiled.compile_s > 0


def test_saved_package_runs_in_a_fresh_process(compiled: gc.CompiledModel, tmp_path: Path) -> None:
    compiled.save(tmp_path / "artifact")
    assert {"model.pt2", "model.onnx", "inductor.json"} <= {p.name for p in (tmp_path / "artifact").iterdir()}
    feeds = _feeds(5, seed=2)
    np.save(tmp_path / "x.npy", feeds["x"])
    script = (
        "import sys, numpy as np, greencc as gc\n"
        "m = gc.CompiledModel.load(sys.argv[1])\n"
        "assert m.target == 'torch-inductor', m.target\n"
        "np.save(sys.argv[3], m({'x': np.load(sys.argv[2])})['y'])\n"
    )
    subprocess.run([sys.executable, "-c", script, str(tmp_path / "artifact"), str(tmp_path / "x.npy"),
                    str(tmp_path / "y.npy")], check=True, timeout=300)
    np.testing.assert_array_equal(np.load(tmp_path / "y.npy"), compiled(feeds)["y"])


def test_threads_change_without_a_new_compile(compiled: gc.CompiledModel) -> None:
    two = compiled.with_options(threads=2)
    assert two.options["threads"] == 2 and two.package_path == compiled.package_path
    np.testing.assert_allclose(two(_feeds(4))["y"], compiled(_feeds(4))["y"], atol=1e-5)
    with pytest.raises(UsageError):
        compiled.with_options(mode="max-autotune")


def test_artifact_of_another_torch_is_refused(compiled: gc.CompiledModel, tmp_path: Path) -> None:
    from greencc.targets.torch.inductor import InductorCompiledModel

    directory = compiled.save(tmp_path / "artifact")
    meta = json.loads((directory / "inductor.json").read_text())
    (directory / "inductor.json").write_text(json.dumps({**meta, "torch": "1.0.0"}))
    manifest = json.loads((directory / "greencc.json").read_text())
    with pytest.raises(gc.GreenccError, match="torch 1.0.0"):
        InductorCompiledModel._load_artifact(directory, manifest)


def test_options_are_checked() -> None:
    with pytest.raises(UsageError, match="device"):
        resolve_target("torch-inductor", device="tpu")
    with pytest.raises(UsageError, match="mode"):
        resolve_target("torch-inductor", mode="fastest")
    with pytest.raises(UsageError, match="dynamic"):
        resolve_target("torch-inductor", dynamic="sometimes")
    target = resolve_target("torch-inductor", dynamic="false", device="cuda")
    assert target.options["dynamic"] is False and target.device == "gpu"


def test_cuda_without_a_gpu_is_unavailable_with_the_reason() -> None:
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a CUDA device")
    target = resolve_target("torch-inductor", device="cuda")
    assert not target.available() and "CUDA" in target.available().reason
    with pytest.raises(TargetUnavailableError):
        target.lower(_block())


def test_capability_names_the_op_the_lowering_lacks() -> None:
    partitions = resolve_target("torch-inductor").capability(model_from_text(FROBNICATE))
    assert [p.target for p in partitions] == ["torch-inductor", UNSUPPORTED]
    assert "com.example::Frobnicate" in partitions[1].reason
