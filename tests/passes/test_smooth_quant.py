"""smooth-quant: activation outliers migrate into the weights, exactly in float, with the
inverse scale folded into the LayerNorm / Attention / MatMul that produces the activation."""

from __future__ import annotations

import numpy as np
import pytest

import greencc as gc
from greencc.errors import UsageError
from greencc.pipeline.base import get_pass_class
from greencc.pipeline.context import PassContext
from tests.helpers import model_from_text, run_ort
from tests.passes.strategies import fingerprint
from tests.passes.test_fuse_support import assert_close, ops, reasons


def _floats(values: np.ndarray) -> str:
    return ", ".join(f"{v:.5f}" for v in np.asarray(values).ravel())


RNG = np.random.default_rng(0)
GAMMA = np.ones(16)
GAMMA[3] = 20.0  # an outlier channel, as in transformer LayerNorms
BETA = RNG.standard_normal(16) * 0.1
W1 = RNG.standard_normal((16, 32)) * 0.2
W2 = RNG.standard_normal((16, 8)) * 0.2

LAYERNORM = f"""
<ir_version: 10, opset_import: ["" : 17]>
g (float[N, 16] x) => (float[N, 32] y, float[N, 8] z)
<float[16] gamma = {{{_floats(GAMMA)}}}, float[16] beta = {{{_floats(BETA)}}},
 float[16, 32] w1 = {{{_floats(W1)}}}, float[16, 8] w2 = {{{_floats(W2)}}}>
{{
  h = LayerNormalization(x, gamma, beta) <axis = -1>
  y = MatMul(h, w1)
  z = MatMul(h, w2)
}}
"""

RESIDUAL = f"""
<ir_version: 10, opset_import: ["" : 17]>
g (float[N, 16] x) => (float[N, 32] y, float[N, 16] r)
<float[16] gamma = {{{_floats(GAMMA)}}}, float[16] beta = {{{_floats(BETA)}}},
 float[16, 32] w1 = {{{_floats(W1)}}}>
{{
  h = LayerNormalization(x, gamma, beta) <axis = -1>
  y = MatMul(h, w1)
  r = Add(h, x)
}}
"""


def _calibration(n: int = 4) -> list[dict[str, np.ndarray]]:
    rng = np.random.default_rng(7)
    return [{"x": rng.standard_normal((6, 16)).astype(np.float32)} for _ in range(n)]


def _run(model: gc.Model, **options: object):
    ctx = PassContext(target="ort-cpu", calibration=_calibration())
    with ctx:
        result = get_pass_class("smooth-quant")(**options).call(model, ctx)
    return result, ctx


def test_golden_folds_into_layernorm_and_scales_both_readers():
    model = model_from_text(LAYERNORM)
    result, _ = _run(model)
    assert result.stats == {"smoothed": 2, "folded_into.LayerNormalization": 1}
    assert ops(model) == ["LayerNormalization", "MatMul", "MatMul"]  # no node added
    original = model_from_text(LAYERNORM).graph.initializers
    ln = model.graph.node(0)
    gamma = ln.inputs[1].const_value.numpy()
    # The outlier channel shrank the most: s_j grows with max|x_j|.
    ratio = gamma / original["gamma"].const_value.numpy()
    assert ratio[3] == pytest.approx(ratio.min()) and ratio[3] < 0.5
    np.testing.assert_allclose(ln.inputs[2].const_value.numpy() / original["beta"].const_value.numpy(), ratio, rtol=1e-5)
    for index, name in ((1, "w1"), (2, "w2")):
        w = model.graph.node(index).inputs[1].const_value.numpy()
        w0 = original[name].const_value.numpy()
        np.testing.assert_allclose(w, w0 / ratio[:, None], rtol=1e-5)


def test_exact_against_ort_on_the_original():
    model = model_from_text(LAYERNORM)
    feeds = {"x": np.random.default_rng(3).standard_normal((5, 16)).astype(np.float32)}
    expected = run_ort(model, feeds)
    _run(model)
    assert_close(expected, run_ort(model, feeds))


def test_declines_when_the_layernorm_output_is_also_the_residual():
    model = model_from_text(RESIDUAL)
    result, ctx = _run(model)
    assert result.modified is False
    assert any("also read by" in r and "unfoldable=mul" in r for r in reasons(ctx, "smooth-quant"))


def test_unfoldable_mul_inserts_a_mul_and_stays_exact():
    model = model_from_text(RESIDUAL)
    feeds = {"x": np.random.default_rng(4).standard_normal((5, 16)).astype(np.float32)}
    expected = run_ort(model, feeds)
    result, _ = _run(model, unfoldable="mul")
    assert result.stats["folded_into.Mul"] == 1
    assert ops(model) == ["LayerNormalization", "Mul", "MatMul", "Add"]
    assert_close(expected, run_ort(model, feeds))


def test_idempotent():
    model = model_from_text(LAYERNORM)
    _run(model)
    before = fingerprint(model)
    again, ctx = _run(model)
    assert again.modified is False and fingerprint(model) == before
    assert any("already balanced" in r for r in reasons(ctx, "smooth-quant"))


def test_bad_alpha_is_a_usage_error():
    with pytest.raises(UsageError, match="alpha"):
        _run(model_from_text(LAYERNORM), alpha=1.5)


def test_folds_into_attention_v_projection_exactly_on_tiny_bert():
    from tests.models import tiny_bert_inputs, tiny_bert_model

    fused, _ = gc.optimize(tiny_bert_model(), "-O2", dims={"batch": 2, "seq": 16})
    ids, mask = tiny_bert_inputs(batch=2, seq=16)
    feeds = {"input_ids": ids.numpy(), "attention_mask": mask.numpy()}
    expected = run_ort(fused, feeds)
    ctx = PassContext(target="ort-cpu", calibration=[feeds])
    with ctx:
        result = get_pass_class("smooth-quant")().call(fused, ctx)
    assert result.stats.get("folded_into.Attention", 0) >= 1
    np.testing.assert_allclose(run_ort(fused, feeds)[0], expected[0], rtol=1e-4, atol=1e-4)
