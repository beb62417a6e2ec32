"""Rewrite rules: a pattern declared once, a check that names the condition that failed,
and a rewrite that builds the replacement, on the :class:`FusionPass` frame.

A :class:`Rule` matches its pattern upwards from a root node (the pattern's output op)
through producers; operands of a commutative op are tried in both orders, and an input
may be optional. When the pattern is there but the check returns a reason, the reason is
recorded at the root (``--explain NAME``); when the check passes, ``rewrite`` runs.

    class FuseMatMulAdd(Rule):
        pattern = Op("Add", Op("MatMul", Var("a"), Var("b"), name="matmul"), Var("c"),
                     commute=True, name="add")

        def check(self, m: Match, run: FusionRun) -> str:
            return "" if run.rank(m["a"]) == 2 else "A is not a matrix"

        def rewrite(self, m: Match, run: FusionRun) -> None:
            gemm = run.new_node("Gemm", [m["a"], m["b"], m["c"]], anchor=m.node("matmul"))
            run.replace(m.output, gemm, gemm.outputs[0], m.nodes, before=m.root)
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, ClassVar

import onnx_ir as ir

from greencc.passes.lib.graph_edits import constant_tensor, is_onnx_op
from greencc.passes.lib.matching import FusionPass, FusionRun

ONNX_DOMAIN = ""
ANY_DOMAIN = None


class Pattern:
    """A piece of a pattern: :class:`Op` (a node) or :class:`Var` (any value)."""


class Var(Pattern):
    """Any value, bound under ``name``; a name used twice must bind the same value.

    ``const=True`` asks for a constant (an initializer or a Constant's output),
    ``const=False`` for a value that is not one; ``where`` is any further test.
    """

    def __init__(
        self, name: str, *, const: bool | None = None, where: Callable[[ir.Value], bool] | None = None
    ) -> None:
        self.name = name
        self.const = const
        self.where = where

    def __repr__(self) -> str:
        return f"Var({self.name!r})"


class Optional(Pattern):
    """An input that may be absent (empty or past the node's last input); binds ``None`` then."""

    def __init__(self, inner: Pattern) -> None:
        self.inner = inner


class Either(Pattern):
    """The first of ``alternatives`` that matches (tried in order, each from the bindings
    made so far); an op a chain may or may not contain is ``Either(Op(..., inner), inner)``."""

    def __init__(self, *alternatives: Pattern) -> None:
        self.alternatives = alternatives


class Op(Pattern):
    """A node of one of ``op_types`` in ``domain`` (ONNX by default, ``ANY_DOMAIN`` for any),
    whose inputs match ``inputs`` in order (both orders of a two-input op with ``commute``).

    ``more_inputs`` lets the node have inputs past the listed ones; ``where`` tests the
    node itself; ``name`` binds the node (:meth:`Match.node`) and its output
    (``match[name]``).
    """

    def __init__(
        self,
        op_types: str | Sequence[str],
        *inputs: Pattern,
        name: str | None = None,
        domain: str | None = ONNX_DOMAIN,
        commute: bool = False,
        more_inputs: bool = False,
        where: Callable[[ir.Node], bool] | None = None,
    ) -> None:
        self.op_types = (op_types,) if isinstance(op_types, str) else tuple(op_types)
        self.inputs = inputs
        self.name = name
        self.domain = domain
        self.commute = commute and len(inputs) == 2
        self.more_inputs = more_inputs
        self.where = where

    def __repr__(self) -> str:
        return f"Op({'|'.join(self.op_types)}{', ' + repr(self.name) if self.name else ''})"


class Match:
    """What a pattern bound at one root: values and nodes by name, the matched nodes in
    pattern order (outermost first), and facts a check derived for its rewrite."""

    def __init__(self, root: ir.Node) -> None:
        self.root = root
        self.values: dict[str, ir.Value | None] = {}
        self.named_nodes: dict[str, ir.Node] = {}
        self.nodes: list[ir.Node] = []
        self.facts: dict[str, Any] = {}

    @property
    def output(self) -> ir.Value:
        """The root's first output (the value the rewrite replaces)."""
        return self.root.outputs[0]

    def __getitem__(self, name: str) -> Any:
        """A bound value, or a fact the check stored under ``name``."""
        if name in self.facts:
            return self.facts[name]
        return self.values[name]

    def __setitem__(self, name: str, fact: Any) -> None:
        """Store a fact derived by the check for the rewrite."""
        self.facts[name] = fact

    def node(self, name: str) -> ir.Node:
        """The node bound under ``name``."""
        return self.named_nodes[name]

    def _copy(self) -> Match:
        copy = Match(self.root)
        copy.values, copy.named_nodes, copy.nodes = dict(self.values), dict(self.named_nodes), list(self.nodes)
        return copy


def match_pattern(pattern: Op, root: ir.Node) -> Match | None:
    """The bindings of ``pattern`` with its output op at ``root``, or ``None``.

    The first binding found wins: operands in their written order before the commuted one.
    Recursion follows the pattern, never the graph, so its depth is the pattern's.
    """
    return _match_node(pattern, root, Match(root))


def _match_node(pattern: Op, node: ir.Node, match: Match) -> Match | None:
    # Bindings are added in place; only a commuted op or an Either, where a failed
    # alternative must leave nothing behind, works on copies.
    if node.op_type not in pattern.op_types:
        return None
    if pattern.domain == ONNX_DOMAIN and not is_onnx_op(node):
        return None
    if pattern.domain not in (ONNX_DOMAIN, ANY_DOMAIN) and node.domain != pattern.domain:
        return None
    if len(node.inputs) > len(pattern.inputs) and not pattern.more_inputs:
        return None
    if pattern.where is not None and not pattern.where(node):
        return None
    match.nodes.append(node)
    if pattern.name is not None:
        match.named_nodes[pattern.name] = node
        match.values[pattern.name] = node.outputs[0]
    if not pattern.commute:
        return _match_inputs(pattern.inputs, node, match)
    for order in (pattern.inputs, pattern.inputs[::-1]):
        found = _match_inputs(order, node, match._copy())
        if found is not None:
            return found
    return None


def _match_inputs(patterns: Sequence[Pattern], node: ir.Node, match: Match | None) -> Match | None:
    for index, pattern in enumerate(patterns):
        if match is None:
            return None
        value = node.inputs[index] if index < len(node.inputs) else None
        match = _match_value(pattern, value, match)
    return match


def _match_value(pattern: Pattern, value: ir.Value | None, match: Match) -> Match | None:
    if isinstance(pattern, Optional):
        if value is None:
            for name in _names(pattern.inner):
                match.values.setdefault(name, None)
            return match
        pattern = pattern.inner
    if value is None:
        return None
    if isinstance(pattern, Either):
        for alternative in pattern.alternatives:
            found = _match_value(alternative, value, match._copy())
            if found is not None:
                return found
        return None
    if isinstance(pattern, Var):
        bound = match.values.get(pattern.name, value)
        if bound is not value:
            return None
        if pattern.const is not None and (constant_tensor(value) is not None) != pattern.const:
            return None
        if pattern.where is not None and not pattern.where(value):
            return None
        match.values[pattern.name] = value
        return match
    assert isinstance(pattern, Op)
    producer = value.producer()
    if producer is None:
        return None
    return _match_node(pattern, producer, match)


def _names(pattern: Pattern) -> list[str]:
    """The value names ``pattern`` binds (an absent optional input binds them to ``None``)."""
    names, stack = [], [pattern]
    while stack:
        part = stack.pop()
        if isinstance(part, Optional):
            stack.append(part.inner)
        elif isinstance(part, Either):
            stack.extend(part.alternatives)
        elif isinstance(part, Var):
            names.append(part.name)
        elif isinstance(part, Op):
            names.extend([part.name] if part.name else [])
            stack.extend(part.inputs)
    return names


class Rule(FusionPass):
    """A fusion written as a rule: ``pattern``, then ``check``, then ``rewrite``.

    ``check(m, run)`` returns ``""`` when the site may be rewritten, else the reason it
    may not (recorded at ``m.root`` as a near-miss); it may store facts for the rewrite
    with ``m[name] = fact``. ``rewrite(m, run)`` builds the replacement through
    :meth:`FusionRun.replace` (which carries provenance) and counts what it fused away.
    """

    pattern: ClassVar[Op]

    def match(self, node: ir.Node, run: FusionRun) -> Match | None:
        """The site at ``node`` when the pattern matches and the check passes."""
        if node.op_type not in self.pattern.op_types:
            return None
        found = match_pattern(self.pattern, node)
        if found is None:
            return None
        reason = self.check(found, run)
        if reason:
            run.decline(node, reason)
            return None
        return found

    def check(self, m: Match, run: FusionRun) -> str:
        """``""`` when the matched site may be rewritten, else why not."""
        return ""
