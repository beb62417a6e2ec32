"""The rule layer itself (passes/lib/rules.py): commuted operands, optional inputs, a name
bound twice, the reason a check declines with, and the provenance a rewrite carries."""

from __future__ import annotations

import json

import numpy as np
import onnx_ir as ir

from greencc.ir.meta import REPLACED_KEY
from greencc.passes.lib.graph_edits import constant_array
from greencc.passes.lib.matching import FusionRun
from greencc.passes.lib.rules import Match, Op, Optional, Rule, Var, match_pattern
from greencc.pipeline.context import PassContext
from tests.helpers import model_from_text, random_feeds, run_ort


class DropZeroBias(Rule):
    """Relu(Add(x, 0)) -> Relu(x): a rule small enough to see every part of the layer."""

    name = "drop-zero-bias-test"  # not registered: the pass list stays the product's
    pattern = Op("Relu", Op("Add", Var("x"), Var("c", const=True), commute=True, name="add"))

    def check(self, m: Match, run: FusionRun) -> str:
        if np.any(constant_array(m["c"]) != 0):
            return f"the constant '{m['c'].name}' is not zero"
        return ""

    def rewrite(self, m: Match, run: FusionRun) -> None:
        relu = run.new_node("Relu", [m["x"]], anchor=m.root)
        run.replace(m.output, relu, relu.outputs[0], [m.node("add"), m.root], before=m.root)


def _model(add: str, bias: str = "0.0, 0.0, 0.0"):
    return model_from_text(f"""
        <ir_version: 10, opset_import: ["" : 17]>
        g (float[2, 3] x) => (float[2, 3] y) <float[3] c = {{{bias}}}> {{
            s = {add}
            y = Relu(s)
        }}""")


def _run(model):
    ctx = PassContext()
    with ctx:
        result = DropZeroBias().call(model, ctx)
    return result, ctx


def test_commuted_operands_match_in_either_order():
    for add in ("Add(x, c)", "Add(c, x)"):
        model = _model(add)
        feeds = random_feeds(model)
        expected = run_ort(model, feeds)
        result, ctx = _run(model)
        assert result.modified and result.stats["fused"] == 1, add
        assert [n.op_type for n in model.graph] == ["Relu"]
        np.testing.assert_array_equal(run_ort(model, feeds)[0], expected[0])
        assert ctx.near_misses == []


def test_check_declines_with_its_reason_at_the_root_and_changes_nothing():
    model = _model("Add(x, c)", bias="0.0, 1.0, 0.0")
    result, ctx = _run(model)
    assert not result.modified
    assert [n.op_type for n in model.graph] == ["Add", "Relu"]
    [miss] = ctx.near_misses
    assert miss.pass_name == "drop-zero-bias-test"
    assert miss.node == "<unnamed Relu -> y>"
    assert miss.reason == "the constant 'c' is not zero"


def test_absent_pattern_is_not_a_near_miss():
    model = _model("Mul(x, c)")
    result, ctx = _run(model)
    assert not result.modified and ctx.near_misses == []


def test_rewrite_carries_provenance_of_the_matched_nodes():
    model = _model("Add(x, c)")
    add, relu = list(model.graph)
    add.name, relu.name = "/layer/add", "/layer/relu"
    add.metadata_props["pkg.torch.onnx.stack_trace"] = "model.py:12"
    _run(model)
    [fused] = list(model.graph)
    assert json.loads(fused.metadata_props[REPLACED_KEY]) == ["/layer/add", "/layer/relu"]
    assert fused.metadata_props["pkg.torch.onnx.stack_trace"] == "model.py:12"


def test_optional_input_binds_none_when_absent_and_the_value_when_present():
    pattern = Op("Clip", Var("x"), Optional(Var("lo", const=True)), Optional(Var("hi", const=True)))
    model = model_from_text("""
        <ir_version: 10, opset_import: ["" : 17]>
        g (float[4] x) => (float[4] a, float[4] b, float[4] c) <float lo = {0.0}> {
            a = Clip(x)
            b = Clip(x, lo)
            c = Clip(x, x)
        }""")
    bare, low, not_constant = list(model.graph)
    m = match_pattern(pattern, bare)
    assert m is not None and m["lo"] is None and m["hi"] is None
    m = match_pattern(pattern, low)
    assert m is not None and m["lo"] is low.inputs[1] and m["hi"] is None
    assert match_pattern(pattern, not_constant) is None


def test_a_name_used_twice_binds_one_value_and_other_inputs_are_refused():
    square = Op("Mul", Var("x"), Var("x"))
    model = model_from_text("""
        <ir_version: 10, opset_import: ["" : 17]>
        g (float[4] x, float[4] z) => (float[4] a, float[4] b, float[4] c) {
            a = Mul(x, x)
            b = Mul(x, z)
            c = Clip(x, z, z)
        }""")
    same, different, clip = list(model.graph)
    assert match_pattern(square, same) is not None
    assert match_pattern(square, different) is None
    assert match_pattern(Op("Clip", Var("x")), clip) is None
    assert match_pattern(Op("Clip", Var("x"), more_inputs=True), clip) is not None


def test_domain_is_checked():
    model = model_from_text("""
        <ir_version: 10, opset_import: ["" : 17, "com.microsoft" : 1]>
        g (float[4] x) => (float[4] y) {
            y = com.microsoft.Gelu(x)
        }""")
    [gelu] = list(model.graph)
    assert match_pattern(Op("Gelu", Var("x")), gelu) is None
    assert match_pattern(Op("Gelu", Var("x"), domain="com.microsoft"), gelu) is not None
    assert isinstance(gelu, ir.Node)
