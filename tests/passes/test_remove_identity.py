"""remove-identity: no-op nodes are bypassed, each only where it provably changes nothing."""

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
g (float[N, 3, 4] x) => (float[N, 3, 4] y)
<float one = {1.0}, float[4] zeros = {0.0, 0.0, 0.0, 0.0}, float[1, 1] ones = {1.0},
 int64[3] same = {0, 3, -1}, int64[2] bcast = {1, 4}, int64[1] ax = {0}>
{
  a = Identity(x)
  b = Cast<to = 1>(a)
  c = Mul(one, b)
  d = Add(c, zeros)
  e = Div(d, ones)
  f = Sub(e, zeros)
  g1 = Reshape(f, same)
  h = Expand(g1, bcast)
  i = Transpose<perm = [0, 1, 2]>(h)
  j, mask = Dropout(i)
  k = Unsqueeze(j, ax)
  l = Squeeze(k, ax)
  m = Relu(l)
  y = Identity(m)
}
"""

EXPECTED = """
<ir_version: 10, opset_import: ["" : 17]>
g (float[N, 3, 4] x) => (float[N, 3, 4] y)
<float one = {1.0}, float[4] zeros = {0.0, 0.0, 0.0, 0.0}, float[1, 1] ones = {1.0},
 int64[3] same = {0, 3, -1}, int64[2] bcast = {1, 4}, int64[1] ax = {0}>
{
  k = Unsqueeze(x, ax)
  y = Relu(x)
}
"""


def test_golden_bypasses_every_kind_of_identity():
    model = model_from_text(BEFORE)
    result, _ = run_pass(model, "remove-identity")
    assert result.modified is True
    assert result.stats == {"removed": 12}
    # The Unsqueeze is left for dce; the output keeps its name on the Relu.
    assert canonical(model) == canonical(model_from_text(EXPECTED))


def test_matches_ort_on_random_data():
    model = model_from_text(BEFORE)
    feeds = random_feeds(model, seed=5, dims={"N": 3})
    expected = run_ort(model, feeds)
    run_pass(model, "remove-identity")
    onnx.checker.check_model(ir.to_proto(model.ir), full_check=True)
    assert_same_outputs(expected, run_ort(model, feeds))


def test_idempotent():
    model = model_from_text(BEFORE)
    run_pass(model, "remove-identity")
    before = fingerprint(model)
    again, _ = run_pass(model, "remove-identity")
    assert again.modified is False
    assert fingerprint(model) == before


DECLINED = """
<ir_version: 10, opset_import: ["" : 17]>
g (float[N, 3] x, bool training) => (float[N, 3] y1, float[2, N, 3] y2, float[N, 3] y3,
                                    float[N, 3] y4, float[N, 3] y5, bool[N, 3] y6, float[3, 3] y7)
<float[2, 1, 1] ones = {1.0, 1.0}, float[3, 1] col_ones = {1.0, 1.0, 1.0}, int64[2] to_3x3 = {3, 3},
 int64[2] expand_3 = {3, 1}>
{
  y1 = Identity(x)
  y2 = Mul(x, ones)
  y3, m3 = Dropout(x, "", training)
  y4 = Mul(x, col_ones)
  y5, y6 = Dropout(x)
  y7 = Reshape(x, to_3x3)
}
"""


def test_declines_with_reasons_and_changes_nothing():
    model = model_from_text(DECLINED)
    before = fingerprint(model)
    result, ctx = run_pass(model, "remove-identity")
    assert result.modified is False
    assert fingerprint(model) == before
    reasons = [m.reason for m in ctx.near_misses]
    assert len(reasons) == 6, reasons
    assert any("carries graph output 'y1' from 'x'" in r for r in reasons)
    assert any("raises the rank of 'x' from 2 to 3" in r for r in reasons)
    assert any("training_mode is not a constant" in r for r in reasons)
    assert any("axis 0 of 'x' is symbolic ('N'); broadcasting against 3" in r for r in reasons)
    assert any("mask output is used" in r for r in reasons)
    assert any("axis 0 of 'x' is symbolic ('N'); the target is 3" in r for r in reasons)


def test_expand_that_broadcasts_is_not_an_identity():
    model = model_from_text(
        """
        <ir_version: 10, opset_import: ["" : 17]>
        g (float[1, 3] x) => (float[2, 3] y)
        <int64[2] to = {2, 3}>
        { y = Expand(x, to) }
        """
    )
    result, ctx = run_pass(model, "remove-identity")
    assert result.modified is False
    assert len(ctx.near_misses) == 0  # a real broadcast, not a near miss


def test_output_fed_by_an_input_gets_an_identity_in_place_of_the_no_op():
    model = model_from_text(
        """
        <ir_version: 10, opset_import: ["" : 17]>
        g (float[2] x) => (float[2] y)
        <float one = {1.0}>
        { y = Mul(x, one) }
        """
    )
    result, _ = run_pass(model, "remove-identity")
    assert result.stats == {"removed": 1}
    assert [n.op_type for n in model.graph] == ["Identity"]
    assert [v.name for v in model.graph.outputs] == ["y"]
    onnx.checker.check_model(ir.to_proto(model.ir), full_check=True)
    x = np.array([1.5, -2.0], np.float32)
    np.testing.assert_array_equal(run_ort(model, {"x": x})[0], x)


def test_infers_shapes_only_when_a_rule_needs_them():
    model = model_from_text(
        """
        <ir_version: 10, opset_import: ["" : 17]>
        g (float[2, 3] x) => (float[2, 3] y)
        <float[3] zeros = {0.0, 0.0, 0.0}>
        {
          r = Relu(x)
          c = Cast<to = 1>(r)
          y = Add(c, zeros)
        }
        """
    )
    assert model.graph.node(0).outputs[0].dtype is None  # nothing inferred at load
    result, ctx = run_pass(model, "remove-identity")
    assert result.stats == {"removed": 2}
    assert [n.op_type for n in model.graph] == ["Relu"]
    assert model.graph.outputs[0].name == "y"


@PROPERTY_SETTINGS
@given(proto=graphs())
def test_property_random_graphs(proto):
    check_exact_pass(proto, "remove-identity")
