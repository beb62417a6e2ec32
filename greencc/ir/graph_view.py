"""A networkx view of an IR graph for analysis (dominators, paths, generations)."""

from __future__ import annotations

from typing import Any

import networkx as nx
import onnx_ir as ir

from greencc.ir.traversal import _as_graph, captured_values


def to_networkx(graph: Any) -> nx.DiGraph:
    """Return a DiGraph whose vertices are the graph's nodes and edges carry value names.

    Accepts an ``ir.Graph``, an ``ir.Model`` or a ``greencc.Model``. Vertices are the
    ``ir.Node`` objects themselves (attributes ``op_type``, ``domain``, ``name`` and
    ``index``, the position in the graph), so a result of a networkx algorithm maps
    straight back to the IR. Graph inputs and initializers are not vertices; an edge
    ``a -> b`` means ``b`` reads a value ``a`` wrote, directly or inside one of ``b``'s
    subgraphs, with attribute ``values`` listing those value names in first-read order.
    """
    graph: ir.Graph = _as_graph(graph)
    view = nx.DiGraph()
    for index, node in enumerate(graph):
        view.add_node(node, op_type=node.op_type, domain=node.domain, name=node.name or "", index=index)
    for node in graph:
        for value in [*node.inputs, *captured_values(node)]:
            if value is None:
                continue
            producer = value.producer()
            if producer is None or producer.graph is not graph:
                continue
            if view.has_edge(producer, node):
                names = view.edges[producer, node]["values"]
                if value.name not in names:
                    names.append(value.name)
            else:
                view.add_edge(producer, node, values=[value.name])
    return view
