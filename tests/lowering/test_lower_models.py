"""Acceptance: the tiny BERT, GPT-2, ViT and the digits CNN's architecture at -O0, -O2, -O3 and
in both int8 forms lower to torch and match ONNX Runtime running the same graph within 1e-4."""

from __future__ import annotations

import functools

import pytest

pytest.importorskip("torch")

import greencc as gc  # noqa: E402
from greencc.lowering import lower_to_torch  # noqa: E402
from tests.lowering.helpers import LEVELS, TINY, TOLERANCE, max_error, ort_run, tiny_feeds  # noqa: E402


@functools.cache
def optimized(name: str, level: str) -> gc.Model:
    calibration = [tiny_feeds(name, seed) for seed in (1, 2)]
    # Unverified, so that the int8 forms stay int8 on random weights.
    return gc.optimize(TINY[name](), LEVELS[level], calibration=calibration, verify=False)[0]


@pytest.mark.parametrize("level", sorted(LEVELS))
@pytest.mark.parametrize("name", sorted(TINY))
def test_lowered_model_matches_onnx_runtime(name: str, level: str) -> None:
    model = optimized(name, level)
    lowered = lower_to_torch(model)
    for seed in (10, 11):
        feeds = tiny_feeds(name, seed)
        assert max_error(lowered.run(feeds), ort_run(model, feeds)) <= TOLERANCE


@pytest.mark.parametrize(("name", "level", "ops"), [
    ("bert", "int8-dynamic", {"QAttention", "DynamicQuantizeLinear", "MatMulInteger"}),
    ("vit", "int8-dynamic", {"ConvInteger", "MatMulInteger"}),
    ("cnn", "int8-static", {"QuantizeLinear", "DequantizeLinear", "Conv"}),
    ("bert", "-O2", {"Attention", "EmbedLayerNormalization", "SkipLayerNormalization"}),
])
def test_the_graphs_hold_the_ops_they_are_meant_to_cover(name: str, level: str, ops: set[str]) -> None:
    assert ops <= {node.op_type for node in optimized(name, level).graph}


def test_weights_are_parameters_and_the_rest_buffers() -> None:
    model = optimized("bert", "int8-dynamic")
    lowered = lower_to_torch(model)
    params = set(lowered.parameter_names().values())
    by_name = model.graph.initializers
    assert params and all(by_name[name].dtype == gc.ir.DataType.FLOAT for name in params)
    int8_weights = {name for name, value in by_name.items() if value.dtype == gc.ir.DataType.INT8}
    assert int8_weights and not params & int8_weights
    assert int8_weights <= set(lowered.buffer_names().values())
    assert all(p.requires_grad for p in lowered.module.parameters())
    assert not dict(lower_to_torch(model, trainable=False).module.named_parameters())


@pytest.mark.parametrize(("name", "level"), [("bert", "int8-dynamic"), ("cnn", "int8-static")])
def test_int8_graphs_match_node_by_node(name: str, level: str) -> None:
    from greencc.lowering.verify import node_errors

    model = optimized(name, level)
    errors = node_errors(model, tiny_feeds(name, 12))
    checked = {error.op_type for error in errors}
    assert {"MatMulInteger", "DynamicQuantizeLinear"} <= checked or {"QuantizeLinear", "DequantizeLinear"} <= checked
    assert len(errors) == sum(1 for node in model.graph if node.op_type != "Constant")
    worst = max(errors, key=lambda error: error.error)
    assert worst.error <= TOLERANCE, worst
