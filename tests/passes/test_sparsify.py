"""sparsify: unstructured, 2:4 and block zeros chosen by magnitude or Wanda, the pattern
verified exactly and recorded on the node; the cost model counts the saving only on
profiles that exploit it (2:4 on the H100 profile, zeros on the ASIC's, none on ort-cpu's)."""

from __future__ import annotations

import numpy as np
import onnx
import onnx.helper as oh
import onnx.numpy_helper
import pytest

import greencc as gc
from greencc.cost.estimate import estimate_cost
from greencc.ir import get_meta
from greencc.passes.prune.sparsify import Sparsify, weight_view
from greencc.passes.prune.sparsity_patterns import Pattern, keep_mask, satisfies
from greencc.pipeline.context import PassContext
from greencc.pipeline.manager import PassManager
from greencc.verify.fidelity import measure_fidelity
from tests.models import feeds_of, ort_outputs, small_cnn_model, tiny_bert_inputs, tiny_bert_model


def _one_matmul(weight: np.ndarray) -> gc.Model:
    k, n = weight.shape
    graph = oh.make_graph(
        [oh.make_node("MatMul", ["x", "w"], ["y"], name="mm")], "mm",
        [oh.make_tensor_value_info("x", onnx.TensorProto.FLOAT, ["batch", k])],
        [oh.make_tensor_value_info("y", onnx.TensorProto.FLOAT, ["batch", n])],
        [onnx.numpy_helper.from_array(weight, "w")])
    return gc.load(oh.make_model(graph, opset_imports=[oh.make_opsetid("", 17)]))


def _sparse_weights(model: gc.Model) -> list[tuple[object, np.ndarray]]:
    return [(n, weight_view(n, n.inputs[1].const_value.numpy())) for n in model.graph if get_meta(n, "sparsity")]


def test_golden_two_four_magnitude():
    weight = np.arange(1, 33, dtype=np.float32).reshape(8, 4) * np.array([1, -1, 1, -1], np.float32)
    weight[1, 0], weight[2, 0] = 100.0, -50.0  # the largest of column 0's first group
    model = _one_matmul(weight)
    with PassContext() as ctx:
        result = Sparsify(pattern="2:4", min_size=1).call(model, ctx)
    got = result.model.graph.node("mm").inputs[1].const_value.numpy()
    expected = weight.copy()
    for group in range(2):
        rows = slice(4 * group, 4 * group + 4)
        block = np.abs(weight[rows])
        order = np.argsort(block, axis=0, kind="stable")[:2]
        np.put_along_axis(expected[rows], order, 0.0, axis=0)
    np.testing.assert_array_equal(got, expected)
    assert got[1, 0] == 100.0 and got[2, 0] == -50.0
    assert get_meta(result.model.graph.node("mm"), "sparsity") == {"input": 1, "pattern": "2:4", "density": 0.5}
    assert result.stats["zeros"] == 16


@pytest.mark.parametrize("pattern", ["2:4", "unstructured", "block:4x8"])
@pytest.mark.parametrize("score", ["magnitude", "wanda"])
def test_every_weight_satisfies_the_pattern_and_fidelity_holds(pattern, score):
    model = tiny_bert_model()
    calibration = [feeds_of(tiny_bert_inputs(seed=s)) for s in range(2)]
    with PassContext(calibration=calibration) as ctx:
        result = Sparsify(pattern=pattern, score=score, ratio=0.5, min_size=256).call(model.clone(), ctx)
    sparse = _sparse_weights(result.model)
    assert len(sparse) == 12  # Q, K, V, O and both FFN layers of two blocks
    for _, view in sparse:
        assert satisfies(view, Pattern.parse(pattern), 0.5)
        assert (view == 0).mean() >= 0.5
    feeds = feeds_of(tiny_bert_inputs(seed=9))
    fidelity = measure_fidelity([ort_outputs(model, feeds)], [ort_outputs(result.model, feeds)])
    assert fidelity.cosine_min > 0.99


def test_wanda_keeps_weights_of_loud_inputs():
    rng = np.random.default_rng(0)
    weight = rng.standard_normal((8, 4)).astype(np.float32)
    model = _one_matmul(weight)
    loud = np.ones((16, 8), np.float32)
    loud[:, 0] = 100.0  # feature 0 dominates the activations
    with PassContext(calibration=[{"x": loud}]) as ctx:
        result = Sparsify(pattern="2:4", score="wanda", min_size=1).call(model, ctx)
    kept = result.model.graph.node("mm").inputs[1].const_value.numpy()
    assert (kept[0] != 0).all()  # row 0 survives in every column whatever its magnitude


def test_cost_model_counts_sparsity_only_where_exploited():
    model = tiny_bert_model()
    with PassContext() as ctx:
        two_four = Sparsify(pattern="2:4", min_size=256).call(model.clone(), ctx).model
        unstructured = Sparsify(pattern="unstructured", min_size=256).call(model.clone(), ctx).model
    dims = {"batch": 1, "seq": 16}
    dense = {p: estimate_cost(model, p, dims=dims) for p in ("nvidia-h100", "x86-avx512", "asic-int8-systolic")}
    h100 = estimate_cost(two_four, "nvidia-h100", dims=dims)
    saved = sum(n.macs for n in estimate_cost(model, "nvidia-h100", dims=dims).nodes
                if n.name in {node.name for node, _ in _sparse_weights(two_four)}) // 2
    assert h100.total_macs == dense["nvidia-h100"].total_macs - saved
    assert h100.bytes_read < dense["nvidia-h100"].bytes_read
    cpu = estimate_cost(two_four, "x86-avx512", dims=dims)  # ort-cpu's profile
    assert (cpu.total_macs, cpu.bytes_read, cpu.latency_ms) == (
        dense["x86-avx512"].total_macs, dense["x86-avx512"].bytes_read, dense["x86-avx512"].latency_ms)
    assert any("counted dense" in note for note in cpu.notes)
    # Unstructured zeros: not on tensor cores, but a zero-skipping accelerator skips them.
    assert estimate_cost(unstructured, "nvidia-h100", dims=dims).total_macs == dense["nvidia-h100"].total_macs
    assert estimate_cost(unstructured, "asic-int8-systolic", dims=dims).total_macs < dense["asic-int8-systolic"].total_macs


def test_fusion_after_sparsify_keeps_the_credit_exact():
    # Q, K and V packed into one Attention weight: the sparsity credit must follow the
    # weight (still 2:4), and must not halve the attention products QKᵀ and AV.
    model = tiny_bert_model()
    dims = {"batch": 1, "seq": 16}
    sparse = Sparsify(pattern="2:4", min_size=256).call(model.clone(), PassContext()).model
    fused = gc.optimize(sparse, "cleanup,fuse,dce", verify=False, dims=dims)[0]
    assert fused.op_counts().get("com.microsoft::Attention", 0) == 2
    dense_fused = gc.optimize(model, "cleanup,fuse,dce", verify=False, dims=dims)[0]
    saved_unfused = estimate_cost(model, "nvidia-h100", dims=dims).total_macs - estimate_cost(sparse, "nvidia-h100", dims=dims).total_macs
    saved_fused = estimate_cost(dense_fused, "nvidia-h100", dims=dims).total_macs - estimate_cost(fused, "nvidia-h100", dims=dims).total_macs
    assert saved_unfused > 0 and saved_fused == saved_unfused


def test_declines_with_reasons():
    model = _one_matmul(np.ones((6, 4), np.float32))
    with PassContext() as ctx:
        assert not Sparsify(pattern="2:4", min_size=1).call(model, ctx).modified
    assert "not a multiple of 4" in ctx.near_misses[0].reason
    with PassContext() as ctx:
        assert not Sparsify(pattern="2:4", min_size=4096).call(small_cnn_model(), ctx).modified
    assert "no MatMul/Gemm/Conv weight" in ctx.near_misses[-1].reason
    with pytest.raises(gc.UsageError):
        Sparsify(pattern="3:8")


def test_keep_mask_block_and_unstructured_counts():
    scores = np.random.default_rng(1).random((8, 8))
    block = keep_mask(scores, Pattern.parse("block:2x4"), 0.25)
    assert (~block).sum() == 0.25 * 64
    assert satisfies(np.where(block, 1.0, 0.0), Pattern.parse("block:2x4"), 0.25)
    assert (~keep_mask(scores, Pattern("unstructured"), 0.5)).sum(axis=0).tolist() == [4] * 8


def test_idempotent():
    model = tiny_bert_model()
    manager = PassManager("sparsify{pattern=2:4,min_size=256}")
    with PassContext(verify=False) as ctx:
        once = manager.run(model, ctx)
        twice = manager.run(once, ctx)
    assert manager.records[-1].modified is False
    for (_, a), (_, b) in zip(_sparse_weights(once), _sparse_weights(twice), strict=True):
        np.testing.assert_array_equal(a, b)
