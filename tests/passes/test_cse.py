"""cse: equal nodes and equal initializers are computed and stored once."""

from __future__ import annotations

import onnx
import onnx_ir as ir
from hypothesis import given

from greencc.ir.meta import REPLACED_KEY
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
g (float[2, 3] x, float[2, 3] z) => (float[2, 3] y, float[2, 3] o1, float[2, 3] o2)
<float[3] w1 = {1.0, 2.0, 3.0}, float[3] w2 = {1.0, 2.0, 3.0}>
{
  a1 = Mul(x, w1)
  a2 = Mul(x, w2)
  s1 = Add(a1, z)
  s2 = Add(z, a2)
  k1 = Constant<value_float = 2.0>()
  k2 = Constant<value_float = 2.0>()
  p1 = Pow(s1, k1)
  p2 = Pow(s2, k2)
  y = Sub(p1, p2)
  o1 = Softmax<axis = 1>(x)
  o2 = Softmax<axis = 1>(x)
}
"""

EXPECTED = """
<ir_version: 10, opset_import: ["" : 17]>
g (float[2, 3] x, float[2, 3] z) => (float[2, 3] y, float[2, 3] o1, float[2, 3] o2)
<float[3] w1 = {1.0, 2.0, 3.0}>
{
  a1 = Mul(x, w1)
  s1 = Add(a1, z)
  k1 = Constant<value_float = 2.0>()
  p1 = Pow(s1, k1)
  y = Sub(p1, p1)
  o1 = Softmax<axis = 1>(x)
  o2 = Identity(o1)
}
"""


def test_golden_merges_initializers_commutative_nodes_constants_and_outputs():
    model = model_from_text(BEFORE)
    result, _ = run_pass(model, "cse")
    assert result.modified is True
    assert result.stats == {"merged_nodes": 5, "merged_initializers": 1}
    assert canonical(model) == canonical(model_from_text(EXPECTED))
    # The kept node records the one it stands for.
    assert "greencc.replaced" in model.graph.node(0).metadata_props


def test_matches_ort_on_random_data():
    model = model_from_text(BEFORE)
    feeds = random_feeds(model, seed=3)
    expected = run_ort(model, feeds)
    run_pass(model, "cse")
    onnx.checker.check_model(ir.to_proto(model.ir), full_check=True)
    assert_same_outputs(expected, run_ort(model, feeds))


def test_idempotent():
    model = model_from_text(BEFORE)
    run_pass(model, "cse")
    before = fingerprint(model)
    again, _ = run_pass(model, "cse")
    assert again.modified is False
    assert fingerprint(model) == before


def test_declines_random_custom_and_different_attributes():
    model = model_from_text(
        """
        <ir_version: 10, opset_import: ["" : 17, "com.example" : 1]>
        g (float[2] x) => (float[2] y)
        {
          r1 = RandomNormalLike(x)
          r2 = RandomNormalLike(x)
          c1 = com.example.Sample(x)
          c2 = com.example.Sample(x)
          pos = LeakyRelu<alpha = 0.0>(x)
          neg = LeakyRelu<alpha = -0.0>(x)
          s1 = Sum(r1, r2, c1)
          s2 = Sum(c2, pos, neg)
          y = Add(s1, s2)
        }
        """
    )
    before = fingerprint(model)
    result, ctx = run_pass(model, "cse")
    assert result.modified is False
    assert fingerprint(model) == before
    assert len(ctx.near_misses) == 1
    assert "domain 'com.example' is not known to be deterministic" in ctx.near_misses[0].reason


def test_does_not_merge_initializers_that_are_inputs_or_differ_in_shape():
    model = model_from_text(
        """
        <ir_version: 10, opset_import: ["" : 17]>
        g (float[2] x, float[2] override) => (float[2] y)
        <float[2] override = {1.0, 1.0}, float[2] ones = {1.0, 1.0}, float[1, 2] ones_2d = {1.0, 1.0}>
        {
          a = Add(x, override)
          b = Add(x, ones)
          c = Add(a, b)
          y = Add(c, ones_2d)
        }
        """
    )
    result, _ = run_pass(model, "cse")
    assert result.modified is False


def test_merges_inside_subgraphs_and_records_provenance():
    model = model_from_text(
        """
        <ir_version: 10, opset_import: ["" : 17]>
        g (bool c, float[2] x) => (float[2] y)
        {
          y = If(c) <
            then_branch = t () => (float[2] t_out) { n1 = Neg(x)  n2 = Neg(x)  t_out = Add(n1, n2) },
            else_branch = e () => (float[2] e_out) { e_out = Relu(x) }>
        }
        """
    )
    then_branch = model.graph.node(0).attributes["then_branch"].as_graph()
    then_branch.node(1).name = "second_neg"
    result, _ = run_pass(model, "cse")
    assert result.stats["merged_nodes"] == 1
    assert [n.op_type for n in then_branch] == ["Neg", "Add"]
    assert "second_neg" in then_branch.node(0).metadata_props[REPLACED_KEY]
    onnx.checker.check_model(ir.to_proto(model.ir), full_check=True)


@PROPERTY_SETTINGS
@given(proto=graphs())
def test_property_random_graphs(proto):
    check_exact_pass(proto, "cse")
