"""Iterative graph algorithms on the IR: topological order and cycle detection.

Real graphs are 20k nodes deep, so nothing here recurses on graph depth. This module is
``greencc.ir.traversal``; it also offers onnx_ir's ``RecursiveGraphIterator`` (nodes of a
graph and its subgraphs), so code written against ``onnx_ir.traversal`` keeps working.
"""

from __future__ import annotations

from collections import deque
from typing import Any

import onnx_ir as ir
from onnx_ir.traversal import RecursiveGraphIterator

__all__ = [
    "RecursiveGraphIterator", "captured_values", "find_cycle", "node_label", "subgraphs",
    "topological_sort",
]


def _as_graph(graph_or_model: Any) -> ir.Graph:
    """The graph of an ``ir.Graph``, an ``ir.Model`` or a ``greencc.Model``."""
    if isinstance(graph_or_model, ir.Graph):
        return graph_or_model
    if isinstance(graph_or_model, ir.Model):
        return graph_or_model.graph
    inner = getattr(graph_or_model, "ir", None)  # greencc.Model, without importing it here
    if isinstance(inner, ir.Model):
        return inner.graph
    raise TypeError(f"expected an onnx_ir Graph or a model, got {type(graph_or_model).__name__}")


def _predecessors(graph: ir.Graph) -> dict[ir.Node, list[ir.Node]]:
    """Direct producers of each node's inputs that live in ``graph`` (outer scope skipped)."""
    members = set(graph)
    preds: dict[ir.Node, list[ir.Node]] = {}
    for node in graph:
        found = []
        for value in node.inputs:
            producer = value.producer() if value is not None else None
            if producer is not None and producer in members:
                found.append(producer)
        # A node with subgraphs also depends on outer values its subgraphs capture.
        for value in captured_values(node):
            producer = value.producer()
            if producer is not None and producer in members:
                found.append(producer)
        preds[node] = found
    return preds


def captured_values(node: ir.Node) -> list[ir.Value]:
    """Values from an enclosing scope read inside ``node``'s subgraphs (found iteratively)."""
    captured: list[ir.Value] = []
    stack: list[ir.Graph] = list(subgraphs(node))
    inner: set[ir.Graph] = set(stack)
    while stack:
        sub = stack.pop()
        for inner_node in sub:
            for value in inner_node.inputs:
                if value is None:
                    continue
                producer = value.producer()
                owner = value.graph if producer is None else producer.graph
                if owner is not None and owner not in inner:
                    captured.append(value)
            for g in subgraphs(inner_node):
                inner.add(g)
                stack.append(g)
    return captured


def subgraphs(node: ir.Node) -> list[ir.Graph]:
    """The graphs held in ``node``'s attributes (``If`` branches, ``Loop``/``Scan`` bodies)."""
    graphs: list[ir.Graph] = []
    for attr in node.attributes.values():
        if not isinstance(attr, ir.Attr) or attr.is_ref():
            continue
        if attr.type == ir.AttributeType.GRAPH:
            graphs.append(attr.value)
        elif attr.type == ir.AttributeType.GRAPHS:
            graphs.extend(attr.value)
    return graphs


def find_cycle(graph: ir.Graph) -> list[ir.Node] | None:
    """Return the nodes of one dependency cycle in ``graph``, or ``None`` when it is acyclic.

    The cycle is listed in data-flow order (each node feeds the next, the last feeds the
    first). Kahn's algorithm removes every node not on or behind a cycle; from what is
    left, a walk along predecessors must revisit a node, which closes the cycle.
    Accepts an ``ir.Graph``, an ``ir.Model`` or a ``greencc.Model``.
    """
    graph = _as_graph(graph)
    preds = _predecessors(graph)
    indegree = {node: len(p) for node, p in preds.items()}
    users: dict[ir.Node, list[ir.Node]] = {node: [] for node in preds}
    for node, plist in preds.items():
        for p in plist:
            users[p].append(node)
    ready = deque(node for node, d in indegree.items() if d == 0)
    removed = 0
    while ready:
        node = ready.popleft()
        removed += 1
        for user in users[node]:
            indegree[user] -= 1
            if indegree[user] == 0:
                ready.append(user)
    if removed == len(preds):
        return None
    start = next(node for node, d in indegree.items() if d > 0)
    seen: dict[ir.Node, int] = {}
    path: list[ir.Node] = []
    node = start
    while node not in seen:
        seen[node] = len(path)
        path.append(node)
        node = next(p for p in preds[node] if indegree[p] > 0)
    return path[seen[node] :][::-1]


def topological_sort(graph: ir.Graph) -> None:
    """Sort ``graph`` and its subgraphs in place, stably (iterative, O(nodes + values)).

    Accepts an ``ir.Graph``, an ``ir.Model`` or a ``greencc.Model``. Raises
    ``ValueError`` naming the nodes of a cycle when there is one.
    """
    graph = _as_graph(graph)
    try:
        graph.sort()
    except ValueError as exc:
        cycle = find_cycle(graph)
        if cycle is None:
            raise
        names = " -> ".join(node_label(n) for n in cycle[:6])
        raise ValueError(f"the graph has a cycle through {names}") from exc


def node_label(node: ir.Node) -> str:
    """A short human name for a node: ``name (OpType)``, or its op and first output."""
    op = node.op_type if node.domain in ("", "ai.onnx") else f"{node.domain}::{node.op_type}"
    if node.name:
        return f"{node.name} ({op})"
    outputs = [v.name for v in node.outputs if v is not None and v.name]
    return f"<unnamed {op} -> {outputs[0]}>" if outputs else f"<unnamed {op}>"
