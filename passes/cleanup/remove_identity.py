"""Identity removal: bypass nodes whose output provably equals one of their inputs.

Each rule is a check that answers "same as this input", "not applicable", or declines
with a reason (unknown shape or dtype, a broadcast that would change the shape). Shapes
are inferred at most once per run, and only when a rule needs a fact the IR lacks.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import onnx_ir as ir

from greencc.ir import infer_shapes
from greencc.model import Model
from greencc.passes.lib.graph_edits import (
    all_graphs,
    can_take_output_name,
    constant_array,
    is_onnx_op,
    redirect,
    remove_node,
)
from greencc.pipeline.base import Pass, PassResult, register_pass
from greencc.pipeline.context import PassContext

# Constants larger than this (elements) are not read to test for all-ones / all-zeros.
MAX_NEUTRAL_ELEMENTS = 65536


@dataclass(frozen=True)
class Verdict:
    """A rule's answer: the input the output equals, or why that could not be shown."""

    same_as: ir.Value | None = None
    reason: str | None = None
    needs_shapes: bool = False


def _same(value: ir.Value | None) -> Verdict | None:
    return Verdict(same_as=value) if value is not None else None


def _unknown(reason: str) -> Verdict:
    return Verdict(reason=reason, needs_shapes=True)


def _declined(reason: str) -> Verdict:
    return Verdict(reason=reason)


Rule = Callable[[ir.Node], "Verdict | None"]


def _dim_name(dim: object) -> str:
    return str(dim.value) if isinstance(dim, ir.SymbolicDim) and dim.value else "?"


def _identity(node: ir.Node) -> Verdict | None:
    return _same(node.inputs[0]) if node.inputs else None


def _dropout(node: ir.Node) -> Verdict | None:
    if len(node.inputs) > 2 and node.inputs[2] is not None:
        training = constant_array(node.inputs[2], max_elements=1)
        if training is None:
            return _declined("training_mode is not a constant, so inference mode is not certain")
        if bool(np.asarray(training).reshape(-1)[0]):
            return None  # a real, random dropout
    if len(node.outputs) > 1 and (node.outputs[1].uses() or node.outputs[1].is_graph_output()):
        return _declined("its mask output is used")
    return _same(node.inputs[0])


def _cast(node: ir.Node) -> Verdict | None:
    source = node.inputs[0]
    to = node.attributes.get("to")
    if source is None or to is None:
        return None
    if source.dtype is None:
        return _unknown(f"the dtype of '{source.name}' is unknown")
    return _same(source) if source.dtype == ir.DataType(to.as_int()) else None


def _cast_like(node: ir.Node) -> Verdict | None:
    source, target = node.inputs[0], node.inputs[1]
    if source is None or target is None:
        return None
    if source.dtype is None or target.dtype is None:
        return _unknown("the input or target dtype is unknown")
    return _same(source) if source.dtype == target.dtype else None


def _reshape(node: ir.Node) -> Verdict | None:
    data = node.inputs[0]
    target = constant_array(node.inputs[1] if len(node.inputs) > 1 else None, max_elements=64)
    if data is None or target is None:
        return None
    if data.shape is None:
        return _unknown(f"the shape of '{data.name}' is unknown")
    allowzero = node.attributes.get("allowzero")
    copies_zero = allowzero is None or allowzero.as_int() == 0
    dims = list(data.shape)
    target = [int(t) for t in np.asarray(target).reshape(-1)]
    if len(target) != len(dims):
        return None
    if target.count(-1) > 1:
        return None
    for axis, (want, have) in enumerate(zip(target, dims, strict=True)):
        if want == -1 or (want == 0 and copies_zero):
            continue
        if isinstance(have, int):
            if have != want:
                return None
            continue
        return _declined(
            f"axis {axis} of '{data.name}' is symbolic ('{_dim_name(have)}'); the target is {want}"
        )
    # Every other axis is unchanged, so the product leaves the -1 axis unchanged too.
    return _same(data)


def _expand(node: ir.Node) -> Verdict | None:
    data = node.inputs[0]
    target = constant_array(node.inputs[1] if len(node.inputs) > 1 else None, max_elements=64)
    if data is None or target is None:
        return None
    if data.shape is None:
        return _unknown(f"the shape of '{data.name}' is unknown")
    shape = tuple(int(t) for t in np.asarray(target).reshape(-1))
    return _broadcast_keeps_shape(data, shape, report_changes=False)


def _broadcast_keeps_shape(
    data: ir.Value, other: tuple[int, ...], *, report_changes: bool = True
) -> Verdict | None:
    """``same_as(data)`` when broadcasting ``data`` against shape ``other`` changes nothing.

    A shape that certainly changes is a near miss for a neutral constant (reported when
    ``report_changes``) but simply the point of an Expand; a symbolic dim that might
    change is always reported.
    """
    if not other:
        return _same(data)
    if data.shape is None:
        return _unknown(f"the shape of '{data.name}' is unknown")
    dims = list(data.shape)
    if len(other) > len(dims):
        if not report_changes:
            return None
        return _declined(
            f"broadcasting against shape {list(other)} raises the rank of '{data.name}' "
            f"from {len(dims)} to {len(other)}"
        )
    offset = len(dims) - len(other)
    for j, want in enumerate(other):
        axis = offset + j
        have = dims[axis]
        if want == 1:
            continue
        if isinstance(have, int):
            if have == want:
                continue
            if not report_changes:
                return None
            return _declined(
                f"broadcasting against shape {list(other)} changes axis {axis} of "
                f"'{data.name}' from {have} to {want}"
            )
        return _declined(
            f"axis {axis} of '{data.name}' is symbolic ('{_dim_name(have)}'); broadcasting "
            f"against {want} may change it"
        )
    return _same(data)


def _neutral_operand(neutral: float, constant_positions: tuple[int, ...]) -> Rule:
    """A rule for ``x op c`` where ``c`` is all ``neutral`` (Mul/Div by 1, Add/Sub of 0)."""

    def rule(node: ir.Node) -> Verdict | None:
        if len(node.inputs) != 2 or None in node.inputs:
            return None
        best: Verdict | None = None
        for position in constant_positions:
            constant = node.inputs[position]
            data = node.inputs[1 - position]
            array = constant_array(constant, max_elements=MAX_NEUTRAL_ELEMENTS)
            if array is None or array.dtype.kind not in "fiuc" or not np.all(array == neutral):
                continue
            if data.dtype is not None and constant.dtype is not None and data.dtype != constant.dtype:
                continue  # invalid ONNX; leave it to the checker
            verdict = _broadcast_keeps_shape(data, tuple(array.shape))
            if verdict is not None and verdict.same_as is not None:
                return verdict
            best = best or verdict
        return best

    return rule


def _transpose(node: ir.Node) -> Verdict | None:
    data = node.inputs[0]
    if data is None:
        return None
    perm = node.attributes.get("perm")
    if perm is not None:
        axes = list(perm.as_ints())
        return _same(data) if axes == list(range(len(axes))) else None
    if data.shape is None:
        return _unknown(f"the rank of '{data.name}' is unknown (no perm: reverses all axes)")
    return _same(data) if len(data.shape) <= 1 else None


def _axes(node: ir.Node) -> list[int] | None:
    """The axes of a Squeeze/Unsqueeze: its second input (opset 13+) or its attribute."""
    if len(node.inputs) > 1 and node.inputs[1] is not None:
        array = constant_array(node.inputs[1], max_elements=64)
        return None if array is None else [int(a) for a in np.asarray(array).reshape(-1)]
    attr = node.attributes.get("axes")
    return list(attr.as_ints()) if attr is not None else None


def _normalized(axes: list[int], rank: int | None) -> set[int] | None:
    if any(a < 0 for a in axes):
        if rank is None:
            return None
        axes = [a + rank if a < 0 else a for a in axes]
    return set(axes)


def _rank(value: ir.Value | None) -> int | None:
    return None if value is None or value.shape is None else len(value.shape)


def _squeeze_pair(inverse: str) -> Rule:
    """``Squeeze(Unsqueeze(x, a), a)`` and ``Unsqueeze(Squeeze(x, a), a)`` are ``x``."""

    def rule(node: ir.Node) -> Verdict | None:
        inner_value = node.inputs[0]
        inner = inner_value.producer() if inner_value is not None else None
        if inner is None or inner.op_type != inverse or not is_onnx_op(inner):
            return None
        outer_axes, inner_axes = _axes(node), _axes(inner)
        if outer_axes is None or inner_axes is None:
            return None
        source = inner.inputs[0]
        if node.op_type == "Squeeze":  # both axis lists index the unsqueezed tensor
            source_rank = _rank(source)
            rank = None if source_rank is None else source_rank + len(inner_axes)
        else:  # both index the original tensor
            rank = _rank(source)
        outer_set, inner_set = _normalized(outer_axes, rank), _normalized(inner_axes, rank)
        if outer_set is None or inner_set is None:
            return _unknown("negative axes need the rank, which is unknown")
        return _same(source) if outer_set == inner_set and len(inner_set) == len(inner_axes) else None

    return rule


RULES: dict[str, Rule] = {
    "Identity": _identity,
    "Dropout": _dropout,
    "Cast": _cast,
    "CastLike": _cast_like,
    "Reshape": _reshape,
    "Expand": _expand,
    "Mul": _neutral_operand(1, (0, 1)),
    "Div": _neutral_operand(1, (1,)),
    "Add": _neutral_operand(0, (0, 1)),
    "Sub": _neutral_operand(0, (1,)),
    "Transpose": _transpose,
    "Squeeze": _squeeze_pair("Unsqueeze"),
    "Unsqueeze": _squeeze_pair("Squeeze"),
}


@register_pass("remove-identity")
class RemoveIdentity(Pass):
    """Bypass nodes that return one of their inputs unchanged.

    Rewrites (each only where the shape and dtype provably do not change):
      Identity(x) -> y                                   ->  x
      Dropout(x, ratio, training_mode=false|absent) -> y ->  x   (mask output unused)
      Cast[to=T](x: T) -> y,  CastLike(x: T, t: T) -> y   ->  x
      Reshape(x: [2,3], [2,3] | [0,-1]) -> y             ->  x
      Expand(x: [2,3], [1,3]) -> y                       ->  x
      Mul(x, 1), Mul(1, x), Div(x, 1) -> y               ->  x   (1 broadcasts into x's shape)
      Add(x, 0), Add(0, x), Sub(x, 0) -> y               ->  x   (-0 + 0 gives +0: equal)
      Transpose[perm=0,1,..](x) -> y                     ->  x
      Squeeze(Unsqueeze(x, a), a), Unsqueeze(Squeeze(x, a), a) -> y  ->  x

    Declines, with the reason, when a shape or dtype is unknown or a broadcast would
    change the shape. Graph output names never change: when ``y`` is an output and ``x``
    cannot take its name (a graph input, an initializer, another output), an ``Identity``
    carries it instead (an Identity already doing so stays).
    """

    lossy = False

    def call(self, model: Model, ctx: PassContext) -> PassResult:
        removed = 0
        inferred = False
        for graph in all_graphs(model.ir):
            for node in list(graph):
                if node.graph is not graph or not is_onnx_op(node):
                    continue
                rule = RULES.get(node.op_type)
                if rule is None:
                    continue
                verdict = rule(node)
                if verdict is not None and verdict.needs_shapes and not inferred:
                    infer_shapes(model.ir)
                    inferred = True
                    verdict = rule(node)
                if verdict is None:
                    continue
                if verdict.same_as is None:
                    self.decline(ctx, node, verdict.reason or "not provably an identity")
                    continue
                if self._bypass(graph, node, verdict.same_as, ctx):
                    removed += 1
        return PassResult(model, modified=removed > 0, stats={"removed": removed})

    def _bypass(self, graph: ir.Graph, node: ir.Node, source: ir.Value, ctx: PassContext) -> bool:
        output = node.outputs[0]
        if (
            node.op_type == "Identity"
            and output.is_graph_output()
            and not can_take_output_name(graph, source)
        ):
            self.decline(
                ctx,
                node,
                f"it carries graph output '{output.name}' from '{source.name}', which cannot "
                "be renamed (a graph input, initializer, output or outer-scope value)",
            )
            return False
        redirect(graph, output, source, before=node, replaced=[node])
        remove_node(node)
        return True
