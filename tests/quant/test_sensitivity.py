"""Sensitivity and float fallback: ranking by energy saved per fidelity lost, keeping the
worst offenders in float until the budget holds, and the ledger showing both."""

from __future__ import annotations

import warnings

import numpy as np

import greencc as gc
from greencc.pipeline.base import get_pass_class
from greencc.pipeline.context import PassContext
from greencc.quant.sensitivity import LayerSensitivity, choose_float_layers
from greencc.verify.fidelity import Fidelity, FidelityBudget
from tests.passes.test_fuse_support import reasons


def _fidelity(cos: float) -> Fidelity:
    return Fidelity(cosine_mean=cos, cosine_min=cos, max_abs_error=0.0, max_rel_error=0.0, samples=1)


def _additive_score(losses: dict[str, float]):
    """A model whose min cosine is 1 minus the losses of the layers left in int8."""
    calls: list[frozenset[str]] = []

    def score(keep_float: frozenset[str]) -> Fidelity:
        calls.append(keep_float)
        return _fidelity(1.0 - sum(loss for name, loss in losses.items() if name not in keep_float))

    return score, calls


def test_ranks_by_energy_per_fidelity_and_keeps_the_worst_in_float():
    losses = {"a": 0.001, "b": 0.02, "c": 0.004, "d": 0.0}
    energy = {"a": 1.0, "b": 1.0, "c": 0.1, "d": 0.5}
    layers = [LayerSensitivity(name, "MatMul", energy[name]) for name in losses]
    score, calls = _additive_score(losses)
    report = choose_float_layers(layers, score, FidelityBudget(min_cosine=0.99))
    # Leave-one-out losses are measured exactly; ranking is mJ per cosine, best first.
    assert {layer.name: round(layer.loss, 6) for layer in report.layers} == losses
    assert [layer.name for layer in report.layers] == ["d", "a", "b", "c"]
    # 1 - 0.025 misses 0.99: c (0.1 mJ for 0.004) goes first, then b (1 mJ for 0.02).
    assert report.kept_float == ["c", "b"]
    assert report.final.cosine_min >= 0.99 and report.all_int8.cosine_min < 0.99
    assert {layer.name: layer.decision for layer in report.layers} == {"a": "int8", "b": "float", "c": "float", "d": "int8"}
    stats = report.stats()
    assert stats["sensitivity.kept_float"] == 2
    assert stats["rank04 c float"] == 1 and stats["rank01 d float"] == 0
    assert "rank02 a mJ_saved" in stats and "rank03 b cos_loss" in stats
    assert "c" in report.table()


def test_layers_that_cost_energy_go_back_to_float_even_within_budget():
    layers = [LayerSensitivity("cheap", "Conv", -0.01), LayerSensitivity("big", "MatMul", 2.0)]
    score, _ = _additive_score({"cheap": 0.0, "big": 0.0})
    report = choose_float_layers(layers, score, FidelityBudget(min_cosine=0.9))
    assert report.kept_float == ["cheap"]
    assert "costs more energy than it saves" in report.layers[-1].why


def test_nothing_returns_to_float_when_the_budget_already_holds():
    layers = [LayerSensitivity(n, "MatMul", 1.0) for n in "xyz"]
    score, calls = _additive_score({"x": 0.001, "y": 0.002, "z": 0.0})
    report = choose_float_layers(layers, score, FidelityBudget(min_cosine=0.99))
    assert report.kept_float == [] and all(layer.decision == "int8" for layer in report.layers)
    # No layer has to go back, so no leave-one-out: one score instead of four, and the
    # ledger says the losses were not measured rather than showing zeros.
    assert calls == [frozenset()] and report.measured is False
    stats = report.stats()
    assert stats["sensitivity.leave_one_out"] == 0 and not any(key.endswith("cos_loss") for key in stats)
    assert "-" in report.table().splitlines()[1]


WIDTH = 256


def _outlier_model() -> gc.Model:
    """Two 256-wide MatMuls: one reads an input with a huge outlier channel (its
    weight row is 0, so the channel carries nothing, yet per-tensor int8 activations flush
    every other channel to zero), the other a well-behaved input."""
    import onnx
    import onnx.helper as oh
    from onnx import numpy_helper

    rng = np.random.default_rng(0)
    w = (rng.standard_normal((WIDTH, WIDTH)) * 0.1).astype(np.float32)
    w[-1] = 0.0
    big = np.ones(WIDTH, np.float32)
    big[-1] = 1000.0
    v = (rng.standard_normal((WIDTH, WIDTH)) * 0.1).astype(np.float32)
    graph = oh.make_graph(
        [oh.make_node("Mul", ["x", "big"], ["xs"], name="scale"),
         oh.make_node("MatMul", ["xs", "w"], ["a"], name="outlier_matmul"),
         oh.make_node("MatMul", ["u", "v"], ["b"], name="plain_matmul")],
        "g",
        [oh.make_tensor_value_info(n, onnx.TensorProto.FLOAT, ["N", WIDTH]) for n in ("x", "u")],
        [oh.make_tensor_value_info(n, onnx.TensorProto.FLOAT, ["N", WIDTH]) for n in ("a", "b")],
        [numpy_helper.from_array(a, n) for a, n in ((w, "w"), (v, "v"), (big, "big"))],
    )
    return gc.load(oh.make_model(graph, opset_imports=[oh.make_opsetid("", 17)], ir_version=10))


def _calibration() -> list[dict[str, np.ndarray]]:
    rng = np.random.default_rng(1)
    return [{"x": rng.standard_normal((512, WIDTH)).astype(np.float32),
             "u": rng.standard_normal((512, WIDTH)).astype(np.float32)} for _ in range(2)]


def test_pass_keeps_the_outlier_layer_in_float_and_the_ledger_shows_it():
    model = _outlier_model()
    ctx = PassContext(target="ort-cpu", calibration=_calibration(), budget="cos=0.999", dims={"N": 512})
    with ctx:
        result = get_pass_class("quantize-int8")(fallback="sensitivity", per_channel=False).call(model, ctx)
    stats = result.stats
    assert stats["quantized"] == 1 and stats["float_fallback"] == 1
    assert stats["sensitivity.min_cosine_final"] >= 0.999 > stats["sensitivity.min_cosine_all_int8"]
    float_layers = [key.split(" ")[1] for key, value in stats.items() if key.endswith(" float") and value]
    assert float_layers == ["outlier_matmul"]
    assert any(r.startswith("sensitivity: kept in float for the budget") for r in reasons(ctx, "quantize-int8"))
    assert [n.op_type for n in model.graph].count("MatMul") == 1


def test_o3_ledger_row_carries_ranking_and_splits_the_outlier_instead_of_falling_back():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        # A profile on which int8 pays for these layers: on the uncalibrated x86-avx512 one (a
        # 96-core socket) the cost model sends both back to float for energy, not fidelity.
        _, report = gc.optimize(_outlier_model(), "-O3", calibration=_calibration(), budget="cos=0.999",
                                dims={"N": 512}, profile="asic-int8-systolic")
    row = next(r for r in report.rows if r.name.startswith("quantize-int8"))
    assert any(key.startswith("rank01 ") for key in row.stats)
    # -O3 splits the outlier channel off in float, so no whole layer has to stay float.
    assert row.stats["outlier_split_layers"] == 1 and row.stats["float_fallback"] == 0
    assert row.stats["quantized"] == 2
    assert row.fidelity is not None and row.fidelity["cosine_min"] >= 0.999
    assert "est_energy_saved_mJ" in row.stats
