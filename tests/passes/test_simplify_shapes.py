"""simplify-shapes: shape arithmetic on static dims becomes constants; symbolic dims stay."""

from __future__ import annotations

import numpy as np
import onnx
import onnx_ir as ir
from hypothesis import given

from tests.helpers import model_from_text, random_feeds, run_ort
from tests.passes.strategies import (
    PROPERTY_SETTINGS,
    assert_same_outputs,
    canonical,
    check_exact_pass,
    fingerprint,
    graphs,
    run_pass,
)

BEFORE = """
<ir_version: 10, opset_import: ["" : 17]>
g (float[N, 3, 4] x) => (float[N, 12] y, float[3, 4] z, int64 n)
<int64 one = {1}, int64 two = {2}, int64[1] ax = {0}, int64[1] minus_one = {-1}>
{
  s = Shape(x)
  d1 = Gather<axis = 0>(s, one)
  d2 = Gather<axis = 0>(s, two)
  prod = Mul(d1, d2)
  prod_1d = Unsqueeze(prod, ax)
  target = Concat<axis = 0>(minus_one, prod_1d)
  y = Reshape(x, target)
  tail = Shape<start = 1>(x)
  filled = ConstantOfShape<value = float[1] {0.5}>(tail)
  z = Neg(filled)
  n = Size(filled)
}
"""

EXPECTED = """
<ir_version: 10, opset_import: ["" : 17]>
g (float[N, 3, 4] x) => (float[N, 12] y, float[3, 4] z, int64 n)
<int64 one = {1}, int64 two = {2}, int64[1] ax = {0}, int64[1] minus_one = {-1},
 int64 d1 = {3}, int64 d2 = {4}, int64 prod = {12}, int64[1] prod_1d = {12},
 int64[2] target = {-1, 12}, int64[2] tail = {3, 4},
 float[3, 4] filled = {0.5, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5},
 float[3, 4] z_value = {-0.5, -0.5, -0.5, -0.5, -0.5, -0.5, -0.5, -0.5, -0.5, -0.5, -0.5, -0.5},
 int64 n_value = {12}>
{
  s = Shape(x)
  y = Reshape(x, target)
  z = Identity(z_value)
  n = Identity(n_value)
}
"""


def test_golden_folds_static_dims_under_a_symbolic_batch():
    model = model_from_text(BEFORE)
    result, _ = run_pass(model, "simplify-shapes")
    assert result.modified is True
    assert result.stats == {"resolved_shapes": 3, "folded": 6}
    # Shape(x) itself stays: axis 0 is symbolic; dce removes it once unused. What reads
    # a new constant folds too (Mul, Concat, Neg, Size), through fold-constants' folder.
    assert canonical(model) == canonical(model_from_text(EXPECTED))


def test_matches_ort_on_random_data():
    model = model_from_text(BEFORE)
    feeds = random_feeds(model, seed=9, dims={"N": 5})
    expected = run_ort(model, feeds)
    run_pass(model, "simplify-shapes")
    onnx.checker.check_model(ir.to_proto(model.ir), full_check=True)
    assert_same_outputs(expected, run_ort(model, feeds))


def test_idempotent():
    model = model_from_text(BEFORE)
    run_pass(model, "simplify-shapes")
    before = fingerprint(model)
    again, _ = run_pass(model, "simplify-shapes")
    assert again.modified is False
    assert fingerprint(model) == before


def test_declines_symbolic_dims_and_large_constant_of_shape():
    model = model_from_text(
        """
        <ir_version: 10, opset_import: ["" : 17]>
        g (float[N, 3] x, float[64, 512] w) => (float[N, 3] y, float[64, 512] z)
        <int64 zero = {0}, int64[1] ax = {0}, int64[2] big = {64, 512}>
        {
          s = Shape(x)
          batch = Gather<axis = 0>(s, zero)
          batch_1d = Unsqueeze(batch, ax)
          flat = Reshape(x, s)
          y = Identity(flat)
          filled = ConstantOfShape<value = float[1] {1.0}>(big)
          z = Add(w, filled)
        }
        """
    )
    before = fingerprint(model)
    result, ctx = run_pass(model, "simplify-shapes")
    assert result.modified is False
    assert fingerprint(model) == before
    reasons = [m.reason for m in ctx.near_misses]
    assert "dims of 'x' are symbolic ('N')" in reasons
    assert any("131072 bytes, over max_size=65536 bytes" in r for r in reasons)


def test_static_model_folds_to_constants_and_keeps_output_names():
    model = model_from_text(
        """
        <ir_version: 10, opset_import: ["" : 17]>
        g (float[2, 3] x) => (int64[2] s, float[6] y)
        <int64[1] flat = {-1}>
        {
          s = Shape(x)
          sz = Size(x)
          sz_1d = Reshape(sz, flat)
          y = Reshape(x, sz_1d)
        }
        """
    )
    run_pass(model, "simplify-shapes")
    assert [v.name for v in model.graph.outputs] == ["s", "y"]
    assert [n.op_type for n in model.graph] == ["Identity", "Reshape"]
    np.testing.assert_array_equal(model.graph.initializers["sz_1d"].const_value.numpy(), [6])
    onnx.checker.check_model(ir.to_proto(model.ir), full_check=True)


@PROPERTY_SETTINGS
@given(proto=graphs())
def test_property_random_graphs(proto):
    check_exact_pass(proto, "simplify-shapes")
