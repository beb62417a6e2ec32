"""dce: dead nodes, initializers, optional outputs, functions and opsets go; the signature stays."""

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
<ir_version: 10, opset_import: ["" : 17, "ai.onnx.ml" : 3]>
g (float[2, 3] x) => (float[2, 3] y, float[2, 3] m)
<float[3] w = {1.0, 2.0, 3.0}, float[3] unused = {4.0, 5.0, 6.0}>
{
  a = Relu(x)
  dead1 = Exp(a)
  dead2 = Neg(dead1)
  dead3 = Add(dead2, unused)
  y = Add(a, w)
  m, mask = Dropout(a)
}
"""

EXPECTED = """
<ir_version: 10, opset_import: ["" : 17]>
g (float[2, 3] x) => (float[2, 3] y, float[2, 3] m)
<float[3] w = {1.0, 2.0, 3.0}>
{
  a = Relu(x)
  y = Add(a, w)
  m = Dropout(a)
}
"""


def test_golden_removes_dead_chain_initializer_output_and_opset():
    model = model_from_text(BEFORE)
    result, _ = run_pass(model, "dce")
    assert result.modified is True
    assert result.stats["removed_nodes"] == 3
    assert result.stats["removed_initializers"] == 1
    assert result.stats["trimmed_outputs"] == 1
    assert result.stats["removed_opsets"] == 1
    assert canonical(model) == canonical(model_from_text(EXPECTED))
    assert set(model.ir.opset_imports) == {""}


def test_matches_ort_on_random_data():
    model = model_from_text(BEFORE)
    feeds = random_feeds(model, seed=7)
    expected = run_ort(model, feeds)
    run_pass(model, "dce")
    onnx.checker.check_model(ir.to_proto(model.ir), full_check=True)
    assert_same_outputs(expected, run_ort(model, feeds))


def test_idempotent():
    model = model_from_text(BEFORE)
    run_pass(model, "dce")
    before = fingerprint(model)
    again, _ = run_pass(model, "dce")
    assert again.modified is False
    assert fingerprint(model) == before


def test_declines_unused_custom_domain_node_and_changes_nothing():
    model = model_from_text(
        """
        <ir_version: 10, opset_import: ["" : 17, "com.example" : 1]>
        g (float[2] x) => (float[2] y)
        {
          y = Relu(x)
          logged = com.example.Log(x)
        }
        """
    )
    before = fingerprint(model)
    result, ctx = run_pass(model, "dce")
    assert result.modified is False
    assert fingerprint(model) == before
    assert [m.pass_name for m in ctx.near_misses] == ["dce"]
    assert "not known to be side-effect free" in ctx.near_misses[0].reason
    # Opting in removes it, and then its opset import too.
    result, _ = run_pass(model, "dce", remove_custom_ops=True)
    assert result.stats["removed_nodes"] == 1 and result.stats["removed_opsets"] == 1


def test_keeps_graph_inputs_outputs_and_initializer_inputs():
    # An input that feeds nothing, an output that is an input, and an initializer that is
    # also an input (an overridable default) are all part of the signature.
    model = model_from_text(
        """
        <ir_version: 10, opset_import: ["" : 17]>
        g (float[2] x, float[2] spare, float[2] bias) => (float[2] x_out, float[2] y)
        <float[2] bias = {1.0, 1.0}>
        {
          x_out = Identity(x)
          y = Relu(x)
        }
        """
    )
    before = fingerprint(model)
    result, _ = run_pass(model, "dce")
    assert result.modified is False
    assert fingerprint(model) == before


def test_sweeps_subgraphs_and_frees_values_only_a_dead_branch_captured():
    model = model_from_text(
        """
        <ir_version: 10, opset_import: ["" : 17]>
        g (bool c, float[2] x) => (float[2] y)
        {
          only_for_dead_if = Exp(x)
          dead_if = If(c) <
            then_branch = t () => (float[2] t_out) { t_out = Neg(only_for_dead_if) },
            else_branch = e () => (float[2] e_out) { e_out = Relu(only_for_dead_if) }>
          y = If(c) <
            then_branch = t2 () => (float[2] t2_out) { unused_inner = Exp(x)  t2_out = Neg(x) },
            else_branch = e2 () => (float[2] e2_out) { e2_out = Relu(x) }>
        }
        """
    )
    feeds = {"c": np.array(True), "x": np.array([1.0, -2.0], np.float32)}
    expected = run_ort(model, feeds)
    result, _ = run_pass(model, "dce")
    assert result.stats["removed_nodes"] == 3  # dead_if, the Exp only it read, the inner Exp
    assert [n.op_type for n in model.graph] == ["If"]
    then_branch = model.graph.node(0).attributes["then_branch"].as_graph()
    assert [n.op_type for n in then_branch] == ["Neg"]
    onnx.checker.check_model(ir.to_proto(model.ir), full_check=True)
    assert_same_outputs(expected, run_ort(model, feeds))


def test_removes_a_20000_deep_dead_chain_without_recursion():
    x = ir.val("x", ir.DataType.FLOAT, [2])
    live = ir.node("Relu", [x], name="live")
    live.outputs[0].name = "y"
    nodes, current = [live], x
    for i in range(20000):
        node = ir.node("Neg", [current], name=f"dead{i}")
        node.outputs[0].name = f"d{i}"
        nodes.append(node)
        current = node.outputs[0]
    graph = ir.Graph([x], [live.outputs[0]], nodes=nodes, opset_imports={"": 17}, name="g")
    from greencc.model import Model

    model = Model(ir.Model(graph, ir_version=10))
    result, _ = run_pass(model, "dce")
    assert result.stats["removed_nodes"] == 20000
    assert [n.op_type for n in model.graph] == ["Relu"]


def test_removes_unused_functions_and_dead_nodes_inside_used_ones():
    model = model_from_text(
        """
        <ir_version: 10, opset_import: ["" : 17, "local" : 1]>
        g (float[2] x) => (float[2] y)
        {
          y = local.Used(x)
        }
        <domain: "local", opset_import: ["" : 17]>
        Used (a) => (b) { t = Neg(a)  dead = Exp(a)  b = Relu(t) }
        <domain: "local", opset_import: ["" : 17]>
        Unused (a) => (b) { b = Neg(a) }
        """
    )
    feeds = {"x": np.array([1.0, -3.0], np.float32)}
    expected = run_ort(model, feeds)
    result, _ = run_pass(model, "dce")
    assert result.stats["removed_functions"] == 1
    assert result.stats["removed_nodes"] == 1
    assert list(model.ir.functions) == [("local", "Used", "")]
    assert [n.op_type for n in model.ir.functions[("local", "Used", "")]] == ["Neg", "Relu"]
    assert_same_outputs(expected, run_ort(model, feeds))


@PROPERTY_SETTINGS
@given(proto=graphs())
def test_property_random_graphs(proto):
    check_exact_pass(proto, "dce")
