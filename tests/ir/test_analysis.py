"""Analysis views and metadata: ``to_networkx``, ``find_cycle``, ``topological_sort``,
``set_meta``/``get_meta``, ``source_module`` and ``inherit_provenance`` on real exports.
"""

from __future__ import annotations

import json
from pathlib import Path

import networkx as nx
import onnx
import onnx.parser
import pytest

import greencc as gc
from greencc import ir
from tests import models

DIAMOND_TEXT = """
<ir_version: 8, opset_import: ["" : 17]>
diamond (float[4] x, bool flag) => (float[4] y)
{
  a = Relu (x)
  b = Neg (a)
  c = Abs (a)
  d = Add (b, c)
  e = Mul (a, a)
  y = If (flag) <
    then_branch = then_graph () => (float[4] t) { t = Add (d, e) },
    else_branch = else_graph () => (float[4] f) { f = Identity (d) }
  >
}
"""


def _by_output(graph: ir.Graph) -> dict[str, ir.Node]:
    return {n.outputs[0].name: n for n in graph}


def test_to_networkx_edges_and_attributes() -> None:
    model = gc.load(onnx.parser.parse_model(DIAMOND_TEXT))
    view = gc.ir.to_networkx(model)
    node = _by_output(model.graph)
    assert set(view.nodes) == set(model.graph)
    edges = {(u.outputs[0].name, v.outputs[0].name): data["values"] for u, v, data in view.edges(data=True)}
    assert edges == {
        ("a", "b"): ["a"],
        ("a", "c"): ["a"],
        ("a", "e"): ["a"],  # Mul(a, a): one edge, the value listed once
        ("b", "d"): ["b"],
        ("c", "d"): ["c"],
        # If reads d and e only inside its branches: still dependencies.
        ("d", "y"): ["d"],
        ("e", "y"): ["e"],
    }
    attributes = view.nodes[node["y"]]
    assert attributes["op_type"] == "If" and attributes["domain"] == ""
    assert attributes["index"] == list(model.graph).index(node["y"])
    assert view.nodes[node["a"]]["name"] == node["a"].name
    # Analyses work on the view and map straight back to IR nodes.
    assert nx.immediate_dominators(view, node["a"])[node["d"]] is node["a"]
    assert list(nx.topological_generations(view))[0] == [node["a"]]
    assert gc.ir.to_networkx(model.ir).number_of_edges() == gc.ir.to_networkx(model.graph).number_of_edges() == 7


def test_find_cycle_returns_the_cycle_in_data_flow_order() -> None:
    raw = ir.from_proto(models.cyclic_model_proto())  # gc.load would refuse it
    cycle = gc.ir.find_cycle(raw.graph)
    assert cycle is not None and {n.name for n in cycle} == {"add", "relu", "neg"}
    for producer, consumer in zip(cycle, cycle[1:] + cycle[:1], strict=True):
        assert any(v in consumer.inputs for v in producer.outputs)
    with pytest.raises(ValueError, match="cycle through"):
        gc.ir.topological_sort(raw.graph)


def test_find_cycle_sees_dependencies_through_subgraphs() -> None:
    model = gc.load(onnx.parser.parse_model(DIAMOND_TEXT))
    assert gc.ir.find_cycle(model) is None
    node = _by_output(model.graph)
    # Make e read the If's output: e -> (If reads e in a branch) -> y -> e.
    node["e"].replace_input_with(1, node["y"].outputs[0])
    cycle = gc.ir.find_cycle(model.graph)
    assert cycle is not None and {n.outputs[0].name for n in cycle} == {"e", "y"}


def test_find_cycle_ignores_a_sorted_or_unsorted_acyclic_graph() -> None:
    model = gc.load(onnx.parser.parse_model(DIAMOND_TEXT))
    nodes = list(model.graph)
    model.graph.remove(nodes, safe=False)
    model.graph.extend(reversed(nodes))
    assert gc.ir.find_cycle(model.graph) is None
    gc.ir.topological_sort(model)
    order = [n.outputs[0].name for n in model.graph]
    assert order.index("a") < order.index("d") < order.index("y") and order.index("e") < order.index("y")


def test_node_label() -> None:
    model = gc.load(models.custom_op_model_proto())
    relu, frob = list(model.graph)
    frob.name = "frob"
    relu.name = ""
    assert gc.ir.node_label(frob) == "frob (com.example::Frobnicate)"
    assert gc.ir.node_label(relu) == "<unnamed Relu -> r>"


# --------------------------------------------------------------------------- metadata


def test_set_and_get_meta_round_trip_through_a_file(tmp_path: Path) -> None:
    model = gc.load(models.weighted_model_proto())
    first = model.graph.node(0)
    gc.ir.set_meta(first, "quant", {"scale": 0.5, "zero_point": 3, "axes": [0, 1]})
    gc.ir.set_meta(first, "sparsity", 0.25)
    assert first.metadata_props["greencc.sparsity"] == "0.25"
    with pytest.raises(TypeError):
        gc.ir.set_meta(first, "bad", object())
    reloaded = gc.load(model.save(tmp_path / "m.onnx"))
    again = reloaded.graph.node(0)
    assert gc.ir.get_meta(again, "quant") == {"scale": 0.5, "zero_point": 3, "axes": [0, 1]}
    assert gc.ir.get_meta(again, "sparsity") == 0.25
    assert gc.ir.get_meta(again, "missing", default="none") == "none"
    again.metadata_props["greencc.broken"] = "{not json"
    assert gc.ir.get_meta(again, "broken", default=-1) == -1


def test_source_module_from_the_dynamo_export() -> None:
    model = models.minilm_model("dynamo")
    modules = {gc.ir.source_module(n) for n in model.graph}
    assert "encoder.encoder.layer.0.attention.self.query" in modules
    assert "encoder.encoder.layer.5.output.dense" in modules
    query = [n for n in model.graph if gc.ir.source_module(n) == "encoder.encoder.layer.0.attention.self.query"]
    assert {n.op_type for n in query} <= {"MatMul", "Add", "Gemm", "Transpose"} and query
    assert all("query" in n.metadata_props["pkg.torch.onnx.stack_trace"] for n in query)


def test_source_module_from_legacy_node_names() -> None:
    model = models.minilm_model("legacy")
    modules = {gc.ir.source_module(n) for n in model.graph}
    assert "encoder.encoder.layer.0.attention.self.query" in modules
    assert all(m is None or not m.startswith(".") for m in modules)


def test_source_module_of_hand_written_nodes_is_unknown() -> None:
    node = ir.Node("", "Relu", [ir.Value(name="x")], name="relu")
    assert gc.ir.source_module(node) is None
    node.metadata_props["pkg.torch.onnx.name_scopes"] = "__import__('os').system('true')"
    assert gc.ir.source_module(node) is None  # parsed as a literal, never evaluated


def test_inherit_provenance_on_a_fused_dynamo_node(tmp_path: Path) -> None:
    model = models.minilm_model("dynamo")
    matmul = next(
        n for n in model.graph
        if n.op_type == "MatMul" and gc.ir.source_module(n) == "encoder.encoder.layer.0.attention.self.query"
    )
    (add,) = [use.node for use in matmul.outputs[0].uses()]
    assert add.op_type == "Add"
    assert add.metadata_props["pkg.torch.onnx.stack_trace"] == matmul.metadata_props["pkg.torch.onnx.stack_trace"]
    matmul.metadata_props["only.on.matmul"] = "1"

    fused = ir.Node("", "Gemm", list(matmul.inputs) + [add.inputs[1]], name="fused_query")
    fused.metadata_props["greencc.cost"] = "7"
    gc.ir.inherit_provenance(fused, [matmul, add])
    assert json.loads(fused.metadata_props["greencc.replaced"]) == [matmul.name, add.name]
    assert fused.metadata_props["pkg.torch.onnx.stack_trace"] == matmul.metadata_props["pkg.torch.onnx.stack_trace"]
    assert fused.metadata_props["only.on.matmul"] == "1"
    assert fused.metadata_props["greencc.cost"] == "7"  # the new node's own facts win
    assert gc.ir.source_module(fused) == "encoder.encoder.layer.0.attention.self.query"

    # A second rewrite accumulates the original names, not the intermediate one.
    refused = ir.Node("", "Gemm", [], name="twice")
    other = ir.Node("", "Relu", [], name="other_relu")
    gc.ir.inherit_provenance(refused, [fused, other])
    assert json.loads(refused.metadata_props["greencc.replaced"]) == [matmul.name, add.name, "other_relu"]
    # A surviving node absorbing another keeps the list growing, without itself.
    gc.ir.inherit_provenance(refused, [refused, ir.Node("", "Neg", [], name="neg")])
    assert json.loads(refused.metadata_props["greencc.replaced"]) == [matmul.name, add.name, "other_relu", "neg"]

    # The provenance a surviving node inherits is saved with the model.
    gc.ir.inherit_provenance(add, [matmul])
    reloaded = gc.load(model.save(tmp_path / "m.onnx"))
    survivor = next(n for n in reloaded.graph if n.name == add.name)
    assert json.loads(survivor.metadata_props["greencc.replaced"]) == [matmul.name]
    assert survivor.metadata_props["only.on.matmul"] == "1"
