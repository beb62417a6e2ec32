"""prune-channels: Conv output channels removed with their BatchNorm parameters and the
matching input channels downstream (Conv or Flatten -> Gemm), equal to masking them;
accuracy of the trained digits CNN at a budget, declines and idempotence."""

from __future__ import annotations

import numpy as np
import onnx
import onnx.helper as oh
import pytest

import greencc as gc
from greencc.passes.prune.prune_channels import PruneChannels
from greencc.passes.prune.unit_pruning import UnitMaskedModel, unit_stats
from greencc.passes.prune.units import find_unit_groups
from greencc.pipeline.context import PassContext
from greencc.pipeline.manager import PassManager
from tests.models import (
    digits_cnn_model,
    digits_data,
    ort_outputs,
    small_cnn_model,
    tiny_bert_model,
)


def _calibration() -> list[dict[str, np.ndarray]]:
    rng = np.random.default_rng(0)
    return [{"x": rng.standard_normal((4, 1, 8, 8)).astype(np.float32)} for _ in range(4)]


def _widths(model: gc.Model) -> list[int]:
    return [g.width for g in find_unit_groups(model.ir, "channels")[0]]


def test_golden_structure_with_batchnorm():
    model = small_cnn_model()
    groups, _ = find_unit_groups(model.ir, "channels")
    assert [(g.width, g.consumer.op_type) for g in groups] == [(8, "Conv"), (16, "Gemm")]
    assert sum(1 for n, _, _ in groups[0].slices if n.op_type == "BatchNormalization") == 4
    with PassContext(calibration=_calibration()) as ctx:
        result = PruneChannels(ratio=0.25, scope="layer").call(model.clone(), ctx)
    pruned = result.model
    assert _widths(pruned) == [6, 12]
    shapes = {n.name: [tuple(v.const_value.shape) for v in n.inputs if v is not None and v.const_value is not None]
              for n in pruned.graph}
    conv1, bn1, conv2 = (next(k for k in shapes if k.endswith(s)) for s in ("conv1/Conv", "bn1/BatchNormalization", "conv2/Conv"))
    assert shapes[conv1] == [(6, 1, 3, 3), (6,)]
    assert shapes[bn1] == [(6,)] * 4
    assert shapes[conv2] == [(12, 6, 3, 3), (12,)]
    assert pruned.op_counts() == model.op_counts()


@pytest.mark.parametrize("correct", [False, True])
def test_pruned_equals_masked_reference(correct):
    model = small_cnn_model()
    masked = UnitMaskedModel(model, "channels")
    calibration = _calibration()
    with PassContext(calibration=calibration) as ctx:
        pruned = PruneChannels(ratio=0.5, correct=correct, reconstruct=False, scope="layer").call(model.clone(), ctx).model
    stats = unit_stats(masked, calibration)
    masks, fills = [], []
    for before, after, stat in zip(masked.groups, find_unit_groups(pruned.ir, "channels")[0], stats, strict=True):
        # Which channels stayed: the (distinct) Conv biases that are still there.
        bias = before.producer.inputs[2].const_value.numpy()
        mask = np.isin(bias, after.producer.inputs[2].const_value.numpy()).astype(float)
        exact = before.consumer.op_type == "Gemm"
        masks.append(mask)
        fills.append(stat.mean * (1 - mask) if correct and exact else np.zeros_like(mask))
    assert [int(m.sum()) for m in masks] == [4, 8]
    feeds = {"x": np.random.default_rng(5).standard_normal((3, 1, 8, 8)).astype(np.float32)}  # another batch size
    np.testing.assert_allclose(ort_outputs(pruned, feeds)[0], masked.run(feeds, masks, fills)[0][0], atol=1e-4, rtol=0)


def test_digits_accuracy_within_one_point_at_budget():
    model = digits_cnn_model()
    data = digits_data()
    calibration = [{"image": data.train_x[i : i + 32]} for i in range(0, 256, 32)]

    def accuracy(m: gc.Model) -> float:
        return float((ort_outputs(m, {"image": data.test_x})[0].argmax(1) == data.test_y).mean())

    pruned, report = gc.optimize(model, "prune-channels{budget=0.995}", calibration=calibration, budget="cos=0.995")
    assert report.rows[-1].stats["units_pruned"] >= 1
    assert accuracy(pruned) >= accuracy(model) - 0.01


def test_declines_with_reasons():
    with PassContext() as ctx:
        assert not PruneChannels(ratio=0.5).call(tiny_bert_model(), ctx).modified
    assert ctx.near_misses[-1].reason == "no prunable channel group"
    weights = [oh.make_tensor("w1", onnx.TensorProto.FLOAT, [4, 2, 1, 1], np.ones(8)),
               oh.make_tensor("w2", onnx.TensorProto.FLOAT, [4, 4, 1, 1], np.ones(16))]
    graph = oh.make_graph(
        [oh.make_node("Conv", ["x", "w1"], ["h"], group=2), oh.make_node("Conv", ["h", "w2"], ["y"])],
        "grouped", [oh.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1, 4, 6, 6])],
        [oh.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1, 4, 6, 6])], weights)
    grouped = gc.load(oh.make_model(graph, opset_imports=[oh.make_opsetid("", 17)]))
    with PassContext() as ctx:
        assert not PruneChannels(ratio=0.5).call(grouped, ctx).modified
    assert any("grouped convolution" in m.reason for m in ctx.near_misses)


def test_idempotent():
    model = small_cnn_model()
    manager = PassManager("prune-channels{ratio=0.25,scope=layer}")
    with PassContext(verify=False, calibration=_calibration()) as ctx:
        once = manager.run(model, ctx)
        twice = manager.run(once, ctx)
    assert manager.records[-1].modified is False
    assert _widths(twice) == _widths(once) == [6, 12]
