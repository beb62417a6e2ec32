"""The tvm-llvm target: registration, lowering the tiny BERT and the digits CNN with outputs
matching ONNX Runtime on the original, save/load, input checks, errors naming the node and
op TVM cannot import, and the CLI end to end.

Skipped as a whole only when apache-tvm cannot be imported (the ``tvm`` extra is missing).
"""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest

import greencc as gc
from greencc.target import UNSUPPORTED, registered_targets, resolve_target
from greencc.verify.feeds import random_feeds
from tests import models
from tests.helpers import model_from_text, run_ort

pytest.importorskip("tvm", reason="apache-tvm is not installed (pip install 'greencc[tvm]')")

from greencc.targets.tvm.llvm import TvmCompiledModel, TvmLlvm  # noqa: E402

TOLERANCE = 1e-4

MLP = """<ir_version: 10, opset_import: ["" : 17]>
mlp (float[N, 12] x) => (float[N, 5] y) <float[12, 5] w = {
 0.1, -0.2, 0.3, 0.4, -0.5, 0.6, 0.7, -0.8, 0.9, 1.0, -1.1, 1.2, 0.1, 0.2, -0.3,
 0.4, 0.5, -0.6, 0.7, 0.8, -0.9, 1.0, 1.1, -1.2, 0.1, 0.2, 0.3, -0.4, 0.5, 0.6,
 -0.7, 0.8, 0.9, -1.0, 1.1, 1.2, -0.1, 0.2, 0.3, 0.4, -0.5, 0.6, 0.7, 0.8, -0.9,
 1.0, -1.1, 1.2, 0.1, -0.2, 0.3, 0.4, 0.5, -0.6, 0.7, 0.8, 0.9, -1.0, 1.1, 1.2},
 float[5] b = {0.5, -0.5, 0.25, -0.25, 0.0}> {
  [mm] h = MatMul(x, w)
  [add] a = Add(h, b)
  [relu] y = Relu(a)
}"""

CUSTOM_OP = """<ir_version: 10, opset_import: ["" : 17, "com.example" : 1]>
frob (float[2, 4] x) => (float[2, 4] y) {
  [relu_in] a = Relu(x)
  [frob] b = com.example.Frobnicate(a)
  [relu_out] y = Relu(b)
}"""

# Reshape to a shape only known at run time: TVM's importer needs it statically.
RUNTIME_RESHAPE = """<ir_version: 10, opset_import: ["" : 17]>
reshape (float[2, 6] x, int64[2] shape) => (float[?, ?] y) {
  [dynamic_reshape] r = Reshape(x, shape)
  [relu] y = Relu(r)
}"""


@pytest.fixture(scope="module")
def tiny_bert_compiled():
    model = models.tiny_bert_model()
    compiled = gc.compile(model, target="tvm-llvm", pipeline="-O1", dims=models.TINY_BERT_DIMS,
                          threads=2, verify=False)
    return model, compiled


def _max_error(outputs: dict[str, np.ndarray], reference: list[np.ndarray]) -> float:
    assert len(outputs) == len(reference)
    return max(float(np.abs(o - r).max()) for o, r in zip(outputs.values(), reference, strict=True))


def test_registered_available_and_lazily_imported():
    assert registered_targets()["tvm-llvm"] is TvmLlvm
    assert TvmLlvm().available().ok
    target = resolve_target("tvm-llvm", threads=2)
    spec = target.target_spec()
    # TVM 0.27 takes the dict form; the CPU is the host's as LLVM names it.
    assert spec["kind"] == "llvm" and spec["num-cores"] == 2 and spec["mcpu"]
    assert resolve_target("tvm-llvm", mcpu="skylake-avx512").target_spec()["mcpu"] == "skylake-avx512"


@pytest.mark.parametrize(
    "options, fragment",
    [({"threads": 0}, "threads"), ({"tune_budget_s": -1}, "tune_budget_s"),
     ({"tune_trials": "many"}, "tune_trials"), ({"unroll": 4}, "no option 'unroll'")],
)
def test_bad_options_are_usage_errors(options, fragment):
    with pytest.raises(gc.UsageError, match=fragment):
        resolve_target("tvm-llvm", **options)


def test_tiny_bert_matches_onnxruntime_on_the_original(tiny_bert_compiled):
    model, compiled = tiny_bert_compiled
    assert isinstance(compiled, TvmCompiledModel) and compiled.target == "tvm-llvm"
    assert [s.shape for s in compiled.model.inputs] == [(2, 16), (2, 16)]
    for seed in (0, 1):
        feeds = models.feeds_of(models.tiny_bert_inputs(seed=seed))
        assert _max_error(compiled(feeds), run_ort(model, feeds)) < TOLERANCE


def test_legacy_export_imports_once_greencc_prepares_it():
    # TVM's importer alone fails on the legacy export's ConstantOfShape/Expand shape chains;
    # bound dims plus cleanup fold them into constants.
    model = models.tiny_bert_model(exporter="legacy")
    assert model.op_counts()["ConstantOfShape"] > 0
    compiled = gc.compile(model, target="tvm-llvm", pipeline="-O0", dims=models.TINY_BERT_DIMS,
                          threads=1, verify=False)
    feeds = models.feeds_of(models.tiny_bert_inputs(seed=2))
    assert _max_error(compiled(feeds), run_ort(model, feeds)) < TOLERANCE


def test_digits_cnn_matches_onnxruntime_and_keeps_accuracy():
    model = models.digits_cnn_model()
    data = models.digits_data()
    batch = 16
    compiled = gc.compile(model, target="tvm-llvm", pipeline="-O2", dims={"batch": batch}, threads=2)
    images = data.test_x[:batch]
    outputs = compiled({"image": images})
    reference = run_ort(model, {"image": images})
    assert _max_error(outputs, reference) < TOLERANCE
    assert np.array_equal(outputs["logits"].argmax(1), reference[0].argmax(1))


def test_save_load_round_trip(tiny_bert_compiled, tmp_path):
    _, compiled = tiny_bert_compiled
    feeds = models.feeds_of(models.tiny_bert_inputs(seed=3))
    expected = compiled(feeds)
    path = compiled.save(tmp_path / "bert")
    manifest = json.loads((path / "greencc.json").read_text())
    assert manifest["target"] == "tvm-llvm"
    assert {"model.so", "model.onnx", "tvm_target.json"} <= set(manifest["files"])
    # The library is a real shared object.
    assert (path / "model.so").read_bytes()[:4] == b"\x7fELF"
    again = gc.CompiledModel.load(path)
    assert isinstance(again, TvmCompiledModel)
    assert again.target_spec == compiled.target_spec
    for name, value in again(feeds).items():
        np.testing.assert_array_equal(value, expected[name])
    one_thread = gc.CompiledModel.load(path, threads=1)
    assert one_thread.options["threads"] == 1
    np.testing.assert_allclose(list(one_thread(feeds).values())[0], list(expected.values())[0],
                               rtol=0, atol=1e-5)


def test_benchmark_and_with_options(tiny_bert_compiled):
    _, compiled = tiny_bert_compiled
    stats = compiled.benchmark(warmup=1, repeats=3, threads=1)
    assert stats.median_ms > 0 and stats.threads == 1
    with pytest.raises(gc.UsageError, match="mcpu"):
        compiled.with_options(mcpu="generic")


def test_feeds_of_another_shape_are_rejected(tiny_bert_compiled):
    _, compiled = tiny_bert_compiled
    feeds = models.feeds_of(models.tiny_bert_inputs(batch=3))
    with pytest.raises(gc.InputMismatchError):
        compiled(feeds)


def test_symbolic_dims_are_bound_from_the_context_and_input_left_alone():
    model = model_from_text(MLP)
    before = [(n.name, n.op_type) for n in model.graph]
    compiled = TvmLlvm(threads=1).lower(model, gc.PassContext(dims={"N": 3}))
    assert compiled.model.inputs[0].shape == (3, 12)
    assert model.inputs[0].shape == ("N", 12)
    assert [(n.name, n.op_type) for n in model.graph] == before
    feeds = {"x": np.random.default_rng(0).standard_normal((3, 12)).astype(np.float32)}
    assert _max_error(compiled(feeds), run_ort(model, feeds)) < 1e-5


def test_custom_domain_op_names_node_and_op():
    model = model_from_text(CUSTOM_OP)
    target = TvmLlvm(threads=1)
    partitions = target.capability(model)
    assert [(p.target, p.nodes) for p in partitions] == [
        ("tvm-llvm", ["relu_in"]), (UNSUPPORTED, ["frob"]), ("tvm-llvm", ["relu_out"])]
    assert "com.example::Frobnicate" in partitions[1].reason
    with pytest.raises(gc.UnsupportedOpError, match=r"frob .*Frobnicate") as info:
        target.lower(model)
    assert info.value.hint
    # gc.compile fails fast, before any pass runs, naming the node and the op.
    with pytest.raises(gc.UnsupportedOpError, match=r"at node frob \(com.example::Frobnicate\)"):
        gc.compile(model, target="tvm-llvm", threads=1)


def test_import_failure_is_a_greencc_error_naming_the_node():
    model = model_from_text(RUNTIME_RESHAPE)
    with pytest.raises(gc.UnsupportedOpError, match=r"node 'dynamic_reshape' \(op 'Reshape'\)") as info:
        TvmLlvm(threads=1).lower(model)
    assert "InternalError" not in str(info.value)


def test_cli_compile_and_targets(tmp_path, capsys):
    from greencc.cli import main

    path = tmp_path / "mlp.onnx"
    onnx.save(onnx.parser.parse_model(MLP), path)
    out = tmp_path / "out"
    assert main(["compile", str(path), "-t", "tvm-llvm", "-O1", "--dim", "N=4", "--threads", "1",
                 "-o", str(out), "-q"]) == 0
    again = gc.CompiledModel.load(out)
    assert again.target == "tvm-llvm" and again.model.inputs[0].shape == (4, 12)
    assert main(["targets"]) == 0
    text = capsys.readouterr().out
    assert "tvm-llvm" in text


def test_running_a_tvm_model_leaves_the_process_cpu_affinity_alone():
    # TVM's pool used to pin the calling thread (and every thread created later: ONNX
    # Runtime's and PyTorch's pools) to one core.
    import os
    import threading

    before = os.sched_getaffinity(0)
    model = models.digits_cnn_model()
    compiled = gc.compile(model, "tvm-llvm", "-O2", dims={"batch": 1}, threads=2, verify=False)
    compiled(random_feeds(compiled.model, seed=0, dims={"batch": 1}))
    assert os.sched_getaffinity(0) == before
    seen: dict[str, set[int]] = {}
    thread = threading.Thread(target=lambda: seen.update(cpus=os.sched_getaffinity(0)))
    thread.start()
    thread.join()
    assert seen["cpus"] == before


def test_the_runtime_pool_runs_as_many_threads_as_asked():
    # TVM sizes its pool at start to half the cores on x86 (assuming hyper-threads) and
    # cannot grow it later: on a 2-vCPU machine every kernel ran on one thread.
    import os

    import tvm

    if len(os.sched_getaffinity(0)) < 2:
        pytest.skip("needs 2 usable cores")
    model = models.digits_cnn_model()
    compiled = gc.compile(model, "tvm-llvm", "-O2", dims={"batch": 1}, threads=2, verify=False)
    compiled(random_feeds(compiled.model, seed=0, dims={"batch": 1}))
    assert tvm.get_global_func("runtime.NumThreads")() == 2
