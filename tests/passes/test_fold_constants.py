"""fold-constants: constant subgraphs become initializers; outputs keep their names."""

from __future__ import annotations

import numpy as np
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
g (float[2, 3] x) => (float[2, 3] y, float[3] k)
<float[3] a = {1.0, 2.0, 3.0}, float[3] b = {0.5, 0.5, 0.5}>
{
  two = Constant<value_float = 2.0>()
  s = Add(a, b)
  t = Mul(s, two)
  y = Add(x, t)
  k = Sub(a, b)
}
"""

EXPECTED = """
<ir_version: 10, opset_import: ["" : 17]>
g (float[2, 3] x) => (float[2, 3] y, float[3] k)
<float[3] a = {1.0, 2.0, 3.0}, float[3] b = {0.5, 0.5, 0.5}, float two = {2.0},
 float[3] s = {1.5, 2.5, 3.5}, float[3] t = {3.0, 5.0, 7.0}, float[3] k_value = {0.5, 1.5, 2.5}>
{
  y = Add(x, t)
  k = Identity(k_value)
}
"""


def test_golden_folds_constant_arithmetic_and_lifts_constants():
    model = model_from_text(BEFORE)
    result, _ = run_pass(model, "fold-constants")
    assert result.modified is True
    assert result.stats == {"folded": 3, "lifted_constants": 1}
    # Unused inputs of folded nodes stay for dce; the constant output keeps its name.
    assert canonical(model) == canonical(model_from_text(EXPECTED))
    carrier = model.graph.node(1)
    assert carrier.op_type == "Identity" and carrier.outputs[0].name == "k"
    assert "greencc.replaced" in carrier.metadata_props


def test_matches_ort_on_random_data():
    model = model_from_text(BEFORE)
    feeds = random_feeds(model, seed=11)
    expected = run_ort(model, feeds)
    run_pass(model, "fold-constants")
    onnx.checker.check_model(ir.to_proto(model.ir), full_check=True)
    assert_same_outputs(expected, run_ort(model, feeds))


def test_idempotent():
    model = model_from_text(BEFORE)
    run_pass(model, "fold-constants")
    before = fingerprint(model)
    again, _ = run_pass(model, "fold-constants")
    assert again.modified is False
    assert fingerprint(model) == before


def test_declines_large_random_and_custom_domain_results_with_reasons():
    model = model_from_text(
        """
        <ir_version: 10, opset_import: ["" : 17, "com.example" : 1]>
        g (float[4, 256] x) => (float[4, 256] y, float[2] r, float[2] z)
        <float[1, 256] row = {...}, int64[2] reps = {4, 1}, float[2] seed = {1.0, 2.0}>
        {
          tiled = Tile(row, reps)
          y = Add(x, tiled)
          r = RandomNormalLike(seed)
          z = com.example.Twice(seed)
        }
        """.replace("{...}", "{" + ", ".join(["1.0"] * 256) + "}")
    )
    before = fingerprint(model)
    result, ctx = run_pass(model, "fold-constants", max_size=1024)
    assert result.modified is False
    assert fingerprint(model) == before
    reasons = sorted(m.reason for m in ctx.near_misses)
    assert len(reasons) == 3
    assert any("4096 bytes, over max_size=1024 bytes" in r for r in reasons)
    assert any("RandomNormalLike is not deterministic" in r for r in reasons)
    assert any("domain 'com.example'" in r for r in reasons)
    # With room for the 4 KiB result it folds.
    result, _ = run_pass(model, "fold-constants", max_size=4096)
    assert result.stats["folded"] == 1


def test_folds_shape_of_a_constant_without_reading_it_and_keeps_dtypes():
    model = model_from_text(
        """
        <ir_version: 10, opset_import: ["" : 17]>
        g (int64[2] x) => (int64[2] y)
        <float[3, 5] w = {1.0, 2.0, 3.0, 4.0, 5.0, 1.0, 2.0, 3.0, 4.0, 5.0, 1.0, 2.0, 3.0, 4.0, 5.0}>
        {
          s = Shape(w)
          y = Add(x, s)
        }
        """
    )
    run_pass(model, "fold-constants")
    folded = model.graph.initializers["s"].const_value
    assert folded.dtype == ir.DataType.INT64
    np.testing.assert_array_equal(folded.numpy(), [3, 5])


def test_folded_values_inside_subgraphs_and_never_the_if_itself():
    model = model_from_text(
        """
        <ir_version: 10, opset_import: ["" : 17]>
        g (bool c, float[2] x) => (float[2] y)
        <float[2] a = {1.0, 2.0}>
        {
          y = If(c) <
            then_branch = t () => (float[2] t_out) { d = Add(a, a)  t_out = Mul(x, d) },
            else_branch = e () => (float[2] e_out) { e_out = Neg(x) }>
        }
        """
    )
    feeds = {"c": np.array(True), "x": np.array([1.0, -2.0], np.float32)}
    expected = run_ort(model, feeds)
    result, _ = run_pass(model, "fold-constants")
    assert result.stats["folded"] == 1
    then_branch = model.graph.node(0).attributes["then_branch"].as_graph()
    assert [n.op_type for n in then_branch] == ["Mul"]
    assert "d" in then_branch.initializers
    onnx.checker.check_model(ir.to_proto(model.ir), full_check=True)
    assert_same_outputs(expected, run_ort(model, feeds))


def test_never_mutates_tensors_shared_with_a_clone():
    model = model_from_text(BEFORE)
    clone = model.clone()
    snapshot = {name: (v.const_value.name, v.const_value.numpy().copy())
                for name, v in clone.graph.initializers.items()}
    run_pass(model, "fold-constants")
    for name, (tensor_name, data) in snapshot.items():
        tensor = clone.graph.initializers[name].const_value
        assert tensor.name == tensor_name
        np.testing.assert_array_equal(tensor.numpy(), data)
    assert [n.op_type for n in clone.graph] == ["Constant", "Add", "Mul", "Add", "Sub"]


def test_provenance_of_folded_output_names_the_folded_node():
    model = model_from_text(BEFORE)
    model.graph.node(4).name = "torch_sub"
    run_pass(model, "fold-constants")
    carrier = next(n for n in model.graph if n.op_type == "Identity")
    assert "torch_sub" in carrier.metadata_props[REPLACED_KEY]


@PROPERTY_SETTINGS
@given(proto=graphs())
def test_property_random_graphs(proto):
    check_exact_pass(proto, "fold-constants")


def test_constant_output_read_by_later_nodes_keeps_folding_through_it():
    model = model_from_text(
        """
        <ir_version: 10, opset_import: ["" : 17]>
        g (float[2] x) => (float[2] k, float[2] y)
        <float[2] a = {1.0, 2.0}>
        {
          k = Add(a, a)
          k2 = Mul(k, a)
          y = Add(x, k2)
        }
        """
    )
    result, _ = run_pass(model, "fold-constants")
    assert result.stats["folded"] == 2
    assert [n.op_type for n in model.graph] == ["Identity", "Add"]
    np.testing.assert_array_equal(model.graph.initializers["k2"].const_value.numpy(), [2.0, 8.0])
    assert [v.name for v in model.graph.outputs] == ["k", "y"]


def test_value_sized_results_are_sized_before_they_are_evaluated():
    # A 40 GB ConstantOfShape must be declined from its inferred shape, never allocated.
    model = model_from_text(
        """
        <ir_version: 10, opset_import: ["" : 17]>
        g (float[2] x) => (float[2] y, float[100000, 100000] big)
        <int64[2] shape = {100000, 100000}>
        {
          big = ConstantOfShape(shape)
          y = Identity(x)
        }
        """
    )
    before = fingerprint(model)
    result, ctx = run_pass(model, "fold-constants", max_size=1024)
    assert result.modified is False and fingerprint(model) == before
    assert any("over max_size=1024 bytes" in m.reason for m in ctx.near_misses)
