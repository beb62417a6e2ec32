"""Shapes are never silently 1 and no node is silently priced at 0 MACs: a dynamic-axis
export prices like the static one at -O3 (integer and contrib ops get shapes), the nodes
still without shapes are listed, dims come from calibration data or example inputs (else
a warning names each), and the artifact records its dims and benchmarks at them."""

from __future__ import annotations

import json
import warnings

import numpy as np
import onnx
import pytest

import greencc as gc
from greencc.cost.estimate import estimate_cost
from greencc.data import as_calibration
from greencc.driver import inspect, resolve_dims
from greencc.errors import UsageError
from tests import models

PROFILE = "x86-avx512"


def _feeds() -> dict[str, np.ndarray]:
    return models.feeds_of(models.tiny_bert_inputs())


def _compile(dynamic: bool, pipeline: str = "-O3", **kwargs):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        compiled = gc.compile(models.tiny_bert_model(dynamic=dynamic), "ort-cpu", pipeline, threads=1,
                              calibration=[_feeds()], **kwargs)
    return compiled, [str(w.message) for w in caught]


@pytest.fixture(scope="module")
def o3() -> dict[bool, tuple]:
    return {dynamic: _compile(dynamic) for dynamic in (True, False)}


def test_dynamic_export_prices_like_the_static_one_at_o3(o3):
    (dynamic, messages), (static, _) = o3[True], o3[False]
    assert dynamic.dims == models.TINY_BERT_DIMS  # bound by the calibration arrays' shapes
    assert not [m for m in messages if "symbolic dim" in m]
    for row in (0, -1):
        got, want = dynamic.report.rows[row].total_macs, static.report.rows[row].total_macs
        assert want > 0 and abs(got - want) <= 0.01 * want, (row, got, want)
    assert dynamic.report.unpriced_nodes == {"input": [], "final": []}


def test_integer_and_contrib_ops_get_shapes_through_symbolic_dims():
    model = models.tiny_bert_model(dynamic=True)
    quantized, _ = gc.optimize(model, "cleanup,fuse,dce,quantize-int8", calibration=[_feeds()])
    ops = quantized.op_counts()
    assert ops["com.microsoft::QAttention"] == 2 and ops["MatMulInteger"] >= 4, ops
    cost = estimate_cost(quantized, PROFILE, dims=models.TINY_BERT_DIMS)
    assert cost.unpriced_nodes() == []
    assert all(n.macs > 0 for n in cost.nodes if n.op_type in ("QAttention", "MatMulInteger"))
    assert not any("shapes unknown" in note for note in cost.notes)
    gc.ir.infer_shapes(quantized, symbolic=True)
    attention = next(n for n in quantized.graph if n.op_type == "QAttention")
    output = attention.outputs[0]
    assert output.dtype == gc.ir.DataType.FLOAT
    assert [d if isinstance(d, int) else d.value for d in output.shape] == ["batch", "seq", 32]


def test_nodes_without_shapes_are_listed_with_their_share():
    model = gc.load(models.custom_op_model_proto())
    cost = estimate_cost(model, PROFILE)
    (node,) = cost.unpriced_nodes()
    assert node["op_type"] == "com.example::Frobnicate" and node["reason"] == "no cost function"
    assert node["weight_share"] == 0.0
    info = inspect(model, profile=PROFILE)
    assert info["cost"]["unpriced_nodes"] == [node]
    _, report = gc.optimize(model, "cleanup", target=None, profile=PROFILE, verify=False)
    assert report.unpriced_nodes["final"] == [node]
    text = report.to_console()
    assert "not priced: 1 of 2 nodes" in text and "Frobnicate" in text


def test_a_weighted_unshaped_node_counts_its_share_of_the_weights():
    proto = onnx.parser.parse_model("""
        <ir_version: 8, opset_import: ["" : 17, "com.example" : 1]>
        g (float[N, 4] x) => (float[N, 4] y) {
          h = com.example.Opaque (x)
          y = MatMul (h, w)
        }""")
    proto.graph.initializer.append(onnx.numpy_helper.from_array(np.ones((4, 4), np.float32), "w"))
    cost = estimate_cost(gc.load(proto), PROFILE, dims={"N": 3})
    unpriced = {n["op_type"]: n for n in cost.unpriced_nodes()}
    assert unpriced["MatMul"]["reason"] == "shape unknown"
    assert unpriced["MatMul"]["weight_share"] == pytest.approx(1.0)


def test_a_dim_that_falls_back_to_one_is_a_warning_naming_it():
    model = models.tiny_bert_model(dynamic=True)
    model.provenance.options = {}  # as loaded from an ONNX file: no example inputs
    with pytest.warns(UserWarning, match="'batch', 'seq'.*--dim batch=N --dim seq=N"):
        assert resolve_dims(model, None) == {"batch": 1, "seq": 1}
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert resolve_dims(model, {"batch": 1, "seq": 8}) == {"batch": 1, "seq": 8}
        assert resolve_dims(model, {"batch": 4}, as_calibration([_feeds()])) == {"batch": 4, "seq": 16}


def test_dims_default_to_the_example_inputs_of_an_export():
    model = models.tiny_bert_model(dynamic=True)
    assert model.provenance.options["example_dims"] == models.TINY_BERT_DIMS
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert resolve_dims(model, None) == models.TINY_BERT_DIMS


def test_the_artifact_records_its_dims_and_benchmarks_at_them(o3, tmp_path, capsys):
    from greencc.cli import main

    compiled = o3[True][0]
    compiled.save(tmp_path / "out")
    manifest = json.loads((tmp_path / "out" / "greencc.json").read_text())
    assert manifest["dims"] == models.TINY_BERT_DIMS and manifest["dynamic_dims"] == ["batch", "seq"]
    loaded = gc.CompiledModel.load(tmp_path / "out")
    assert loaded.dims == models.TINY_BERT_DIMS
    stats = loaded.benchmark(warmup=1, repeats=3)
    assert stats.shapes == {"input_ids": [2, 16], "attention_mask": [2, 16]}
    assert "at input_ids[2, 16], attention_mask[2, 16]" in str(stats)
    assert main(["bench", str(tmp_path / "out"), "--repeats", "3", "--warmup", "1"]) == 0
    assert "at input_ids[2, 16], attention_mask[2, 16]" in capsys.readouterr().out
    assert main(["bench", str(tmp_path / "out"), "--repeats", "3", "--warmup", "1", "--dim", "seq=8"]) == 0
    assert "at input_ids[2, 8], attention_mask[2, 8]" in capsys.readouterr().out


def test_a_manifest_with_bad_dims_is_refused(o3, tmp_path):
    compiled = o3[False][0]
    compiled.save(tmp_path / "out")
    path = tmp_path / "out" / "greencc.json"
    manifest = json.loads(path.read_text())
    manifest["dims"] = {"seq": -1}
    path.write_text(json.dumps(manifest))
    with pytest.raises(gc.GreenccError, match="dims|SHA-256|changed|modified"):
        gc.CompiledModel.load(tmp_path / "out")


# -- budgets that cannot be checked ---------------------------------------------------------
def test_an_accuracy_budget_without_labels_is_refused():
    with pytest.raises(UsageError, match="acc=0.01 needs labels"):
        gc.compile(models.tiny_bert_model(), "ort-cpu", "cleanup", calibration=[_feeds()], budget="acc=0.01")


@pytest.mark.parametrize("budget", ["ppl=1.02", "agree=0.95"])
def test_language_model_budgets_on_an_encoder_are_refused(budget):
    with pytest.raises(UsageError, match=f"{budget} needs a language model"):
        gc.optimize(models.tiny_bert_model(), "cleanup", calibration=[_feeds()], budget=budget)


def test_labels_make_the_accuracy_budget_checked():
    model = models.tiny_bert_model()
    feeds = _feeds()
    reference = models.ort_outputs(model, feeds)[0]
    labels = reference.argmax(-1)  # one label row per sample: the float model scores 1.0
    _, report = gc.optimize(model, "cleanup,fuse,dce,quantize-int8", calibration=[feeds], labels=labels,
                            budget="acc=0.5")
    fidelity = report.rows[-1].fidelity
    assert fidelity["reference_accuracy"] == 1.0 and fidelity["accuracy"] is not None
    with pytest.raises(UsageError, match="3 labels for 2 calibration samples"):
        gc.optimize(model, "cleanup", calibration=[feeds], labels=labels[:1].repeat(3, 0), budget="acc=0.5")


def test_a_target_that_fixes_the_shapes_says_which_it_accepts():
    pytest.importorskip("tvm", reason="the tvm extra is not installed")
    proto = onnx.parser.parse_model("""
        <ir_version: 8, opset_import: ["" : 17]>
        g (float[N, 4] x) => (float[N, 4] y) {
          y = Relu (x)
        }""")
    with pytest.warns(UserWarning, match=r"'tvm-llvm' compiles static shapes: the artifact accepts only "
                      r"x: float32\[3, 4\] \(N=3\); compile again with --dim N=N"):
        compiled = gc.compile(gc.load(proto), "tvm-llvm", "-O0", dims={"N": 3}, threads=1, verify=False)
    assert compiled.dims == {"N": 3} and compiled.dynamic_dims == []
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        gc.compile(gc.load(proto), "ort-cpu", "-O0", dims={"N": 3}, threads=1, verify=False)
