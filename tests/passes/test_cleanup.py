"""cleanup: the group runs its members in order and leaves a minimal, equivalent graph."""

from __future__ import annotations

import time

import numpy as np
import onnx
import onnx_ir as ir
from hypothesis import given

from greencc.model import Model
from greencc.pipeline.base import get_pass_class
from greencc.pipeline.text import Pipeline
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
g (float[N, 3, 4] x) => (float[N, 12] y, float[N, 3, 4] z)
<int64 one = {1}, int64 two = {2}, int64[1] ax = {0}, int64[1] minus_one = {-1},
 float[4] b1 = {1.0, 2.0, 3.0, 4.0}, float[4] b2 = {1.0, 2.0, 3.0, 4.0}, float[4] half = {0.5, 0.5, 0.5, 0.5}>
{
  s = Shape(x)
  d1 = Gather<axis = 0>(s, one)
  d2 = Gather<axis = 0>(s, two)
  prod = Mul(d1, d2)
  prod_1d = Unsqueeze(prod, ax)
  target = Concat<axis = 0>(minus_one, prod_1d)
  i = Identity(x)
  doubled = Add(half, half)
  scaled = Mul(i, doubled)
  y = Reshape(scaled, target)
  u1 = Add(x, b1)
  u2 = Add(x, b2)
  r1 = Relu(u1)
  r2 = Relu(u2)
  unused = Exp(r2)
  z = Add(r1, r2)
}
"""

EXPECTED = """
<ir_version: 10, opset_import: ["" : 17]>
g (float[N, 3, 4] x) => (float[N, 12] y, float[N, 3, 4] z)
<int64[2] target = {-1, 12}, float[4] b1 = {1.0, 2.0, 3.0, 4.0}>
{
  y = Reshape(x, target)
  u1 = Add(x, b1)
  r1 = Relu(u1)
  z = Add(r1, r1)
}
"""


def test_members_are_the_documented_order():
    members = [spec.name for spec in Pipeline.parse(get_pass_class("cleanup").members).items]
    assert members == ["simplify-shapes", "fold-constants", "remove-identity", "cse", "dce"]


def test_golden_end_to_end():
    model = model_from_text(BEFORE)
    result, _ = run_pass(model, "cleanup")
    assert result.modified is True
    assert result.stats["remove-identity.removed"] == 2  # the Identity and the Mul by 1
    assert result.stats["cse.merged_nodes"] == 2
    assert canonical(model) == canonical(model_from_text(EXPECTED))


def test_matches_ort_on_random_data():
    model = model_from_text(BEFORE)
    feeds = random_feeds(model, seed=21, dims={"N": 4})
    expected = run_ort(model, feeds)
    run_pass(model, "cleanup")
    onnx.checker.check_model(ir.to_proto(model.ir), full_check=True)
    assert_same_outputs(expected, run_ort(model, feeds))


def test_idempotent():
    model = model_from_text(BEFORE)
    run_pass(model, "cleanup")
    before = fingerprint(model)
    again, _ = run_pass(model, "cleanup")
    assert again.modified is False
    assert fingerprint(model) == before


def test_a_clean_model_is_left_alone():
    model = model_from_text(EXPECTED)
    before = fingerprint(model)
    result, ctx = run_pass(model, "cleanup")
    assert result.modified is False
    assert fingerprint(model) == before
    assert ctx.near_misses == []


def _deep_chain(length: int) -> Model:
    """x -> Identity -> Add 0 -> Relu -> Cast(float) -> ... ``length`` nodes deep."""
    x = ir.val("x", ir.DataType.FLOAT, ["N", 4])
    zero = ir.Value(
        name="zero", type=ir.TensorType(ir.DataType.FLOAT), shape=ir.Shape([1]),
        const_value=ir.tensor(np.zeros(1, np.float32), name="zero"),
    )
    nodes, current = [], x
    for i in range(length):
        kind = i % 4
        if kind == 0:
            node = ir.node("Identity", [current], name=f"n{i}")
        elif kind == 1:
            node = ir.node("Add", [current, zero], name=f"n{i}")
        elif kind == 2:
            node = ir.node("Relu", [current], name=f"n{i}")
        else:
            node = ir.node("Cast", [current], {"to": ir.DataType.FLOAT}, name=f"n{i}")
        node.outputs[0].name = f"v{i}"
        nodes.append(node)
        current = node.outputs[0]
    current.type = ir.TensorType(ir.DataType.FLOAT)
    graph = ir.Graph(
        [x], [current], nodes=nodes, initializers=[zero], opset_imports={"": 17}, name="deep"
    )
    return Model(ir.Model(graph, ir_version=10))


def test_20000_deep_chain_cleans_up_iteratively_and_quickly():
    model = _deep_chain(20000)
    feeds = {"x": np.random.default_rng(0).standard_normal((3, 4)).astype(np.float32)}
    start = time.perf_counter()
    result, _ = run_pass(model, "cleanup")
    elapsed = time.perf_counter() - start
    assert result.stats["remove-identity.removed"] == 15000
    assert [n.op_type for n in model.graph] == ["Relu"] * 5000
    assert [v.name for v in model.graph.outputs] == ["v19999"]
    assert elapsed < 20, f"cleanup took {elapsed:.1f} s on the 20k-deep chain"
    np.testing.assert_array_equal(run_ort(model, feeds)[0], np.maximum(feeds["x"], 0))


@PROPERTY_SETTINGS
@given(proto=graphs())
def test_property_random_graphs(proto):
    check_exact_pass(proto, "cleanup")
