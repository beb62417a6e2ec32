"""Where the attention heads are inside a tensor, followed through Reshape and Transpose.

Exporters split a projection ``[batch, seq, hidden]`` into heads with many different
chains (``Reshape -> Transpose``, ``Reshape -> Transpose -> Reshape(-1, S, D) ->
Transpose -> Reshape``, shape targets computed with ``Shape -> Slice -> Concat`` on
dynamic axes...). Rather than pattern-match each chain, this module tracks the *layout*:
a tensor is a list of axes, each axis a run of named factors (``b`` batch, ``s`` sequence,
``h`` heads, ``d`` head size, ``c`` the still unsplit hidden axis) in row-major order.
Transpose permutes axes; Reshape regroups the same factor sequence, which is decided
uniquely from sizes (factors of size 1 are dropped, so every factor is >= 2 and a
product of consecutive factors names one boundary). The chain is proven to deliver
``[b, h, s, d]`` (or ``[b, h, d, s]``) exactly when the final layout says so.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np
import onnx_ir as ir

from greencc.passes.lib.graph_edits import constant_array
from greencc.passes.lib.matching import int_attr, ints_attr, producer, scalar_constant

Size = int | str | None  # a static size, a symbolic dim's name, or unknown
Axis = tuple[str, ...]  # the factors of one axis, outermost first
Layout = tuple[Axis, ...]

# Ops a head chain may pass through: data movement, and scaling by one number.
MOVEMENT_OPS = frozenset({"Reshape", "Transpose", "Squeeze", "Unsqueeze", "Flatten", "Identity"})
SCALING_OPS = frozenset({"Mul", "Div"})
# Shape expressions nest a few ops deep (Shape -> Slice -> Squeeze -> Unsqueeze -> Concat).
MAX_EXPRESSION_DEPTH = 12


class _Wild:
    """A target dim that takes whatever factors are left (-1, or an unknown size)."""

    def __repr__(self) -> str:
        return "WILD"


WILD = _Wild()
# One target dim: a static size, a symbol, WILD, or exactly these factors.
Dim = int | str | _Wild | tuple[str, ...]


@dataclass
class Factors:
    """Sizes of the named factors of one chain; ``c`` splits into ``h`` and ``d`` once."""

    sizes: dict[str, Size]

    def size(self, name: str) -> Size:
        return self.sizes[name]

    def present(self, names: Axis) -> Axis:
        """``names`` without factors of size 1 (they do not affect memory order)."""
        return tuple(n for n in names if self.sizes.get(n) != 1)


@dataclass
class ChainResult:
    """A traced chain: its final layout, the overall scale it applied, and its nodes."""

    layout: Layout
    scale: float
    nodes: list[ir.Node] = field(default_factory=list)
    values: dict[ir.Value, Layout] = field(default_factory=dict)


def regroup(atoms: list[str], dims: list[Dim], factors: Factors) -> Layout | None:
    """Group the factor sequence ``atoms`` into the axes ``dims`` describes, or ``None``.

    At most one WILD dim; the unsplit factor ``c`` may be split into ``h`` (outer) and
    ``d`` (inner) by an integer dim that divides it.
    """
    atoms = list(factors.present(tuple(atoms)))
    wild = [i for i, d in enumerate(dims) if d is WILD]
    if len(wild) > 1:
        return None
    cut = wild[0] if wild else len(dims)
    left: list[Axis] = []
    for dim in dims[:cut]:
        taken = _take(atoms, dim, factors, from_left=True)
        if taken is None:
            return None
        left.append(taken)
    right: list[Axis] = []
    for dim in reversed(dims[cut + 1 :]):
        taken = _take(atoms, dim, factors, from_left=False)
        if taken is None:
            return None
        right.append(taken)
    if wild:
        middle = tuple(atoms)
        atoms.clear()
        return (*left, middle, *reversed(right))
    if atoms:
        return None
    return (*left, *reversed(right))


def _take(atoms: list[str], dim: Dim, factors: Factors, *, from_left: bool) -> Axis | None:
    """Remove from one end of ``atoms`` the factors making up ``dim``; ``None`` if none do."""

    def peek() -> str | None:
        return (atoms[0] if from_left else atoms[-1]) if atoms else None

    def pop() -> str:
        return atoms.pop(0) if from_left else atoms.pop()

    if isinstance(dim, tuple):
        wanted = list(factors.present(dim))
        run = atoms[: len(wanted)] if from_left else atoms[len(atoms) - len(wanted) :]
        if run != wanted:
            return None
        for _ in wanted:
            pop()
        return tuple(wanted)
    if isinstance(dim, str):
        name = peek()
        if name is None or factors.size(name) != dim:
            return None
        return (pop(),)
    assert isinstance(dim, int)
    taken: list[str] = []
    product = 1
    while product < dim:
        name = peek()
        if name is None:
            return None
        size = factors.size(name)
        if not isinstance(size, int):
            return None
        if name == "c" and size > 1 and product * size > dim:
            need = dim // product
            if dim % product or size % need:
                return None
            outer, inner = (need, size // need) if from_left else (size // need, need)
            factors.sizes.pop("c")
            factors.sizes["h"], factors.sizes["d"] = outer, inner
            index = 0 if from_left else len(atoms) - 1
            atoms[index : index + 1] = [n for n in ("h", "d") if factors.sizes[n] != 1]
            continue
        pop()
        taken.append(name)
        product *= size
    if product != dim:
        return None
    return tuple(taken) if from_left else tuple(reversed(taken))


def shape_expression(value: ir.Value | None, known: Mapping[ir.Value, Layout], depth: int = 0) -> list[Dim | None] | None:
    """The entries of a 1-D int64 shape tensor: ints, symbols, factor runs of values whose
    layout is ``known``, or ``None`` for an entry that cannot be read. ``None`` overall
    when the tensor's structure is not understood (bounded depth; never raises)."""
    if value is None or depth > MAX_EXPRESSION_DEPTH:
        return None
    array = constant_array(value, max_elements=64)
    if array is not None:
        return [int(v) for v in np.asarray(array).reshape(-1)]
    node = value.producer()
    if node is None or node.domain not in ("", "ai.onnx"):
        return None
    op = node.op_type
    if op == "Shape":
        source = node.inputs[0]
        if source in known:
            entries: list[Dim | None] = list(known[source])
        elif source.shape is not None:
            entries = [d if isinstance(d, int) else d.value for d in source.shape]
        else:
            return None
        start, end = int_attr(node, "start", 0), node.attributes.get("end")
        return entries[start : end.as_int() if end is not None else None]
    if op == "Concat":
        result: list[Dim | None] = []
        for part in node.inputs:
            entries = shape_expression(part, known, depth + 1)
            if entries is None:
                return None
            result.extend(entries)
        return result
    if op in ("Cast", "Identity", "Squeeze", "Unsqueeze", "Reshape"):
        return shape_expression(node.inputs[0], known, depth + 1)
    if op in ("Gather", "Slice"):
        entries = shape_expression(node.inputs[0], known, depth + 1)
        if entries is None:
            return None
        if op == "Gather":
            index = constant_array(node.inputs[1], max_elements=8)
            if index is None or int_attr(node, "axis", 0) != 0:
                return None
            picked = [int(i) for i in np.asarray(index).reshape(-1)]
            try:
                return [entries[i] for i in picked]
            except IndexError:
                return None
        params = [constant_array(v, max_elements=8) if v is not None else None for v in node.inputs[1:5]]
        params += [None] * (4 - len(params))
        starts, ends, axes, steps = params
        if starts is None or ends is None:
            return None
        if axes is not None and np.asarray(axes).reshape(-1).tolist() not in ([0], [-1]):
            return None
        if steps is not None and np.asarray(steps).reshape(-1).tolist() != [1]:
            return None
        s, e = int(np.asarray(starts).reshape(-1)[0]), int(np.asarray(ends).reshape(-1)[0])
        n = len(entries)
        s = max(0, min(n, s + n if s < 0 else s))
        e = max(0, min(n, e + n if e < 0 else e))
        return entries[s:e]
    return None


def _target_dims(entries: list[Dim | None], input_layout: Layout, allowzero: bool) -> list[Dim]:
    dims: list[Dim] = []
    for i, entry in enumerate(entries):
        if entry is None or entry == -1:
            dims.append(WILD)
        elif entry == 0 and not allowzero:
            dims.append(input_layout[i] if i < len(input_layout) else WILD)
        else:
            dims.append(entry)  # type: ignore[arg-type]
    return dims


def _output_dims(value: ir.Value) -> list[Dim] | None:
    if value.shape is None:
        return None
    return [d if isinstance(d, int) else (d.value if d.value and not d.value.startswith("unk__") else WILD) for d in value.shape]


def apply(node: ir.Node, layout: Layout, factors: Factors, known: Mapping[ir.Value, Layout]) -> Layout | None:
    """The layout of ``node``'s output given its data input's ``layout``, or ``None``."""
    op = node.op_type
    rank = len(layout)
    if op == "Identity":
        return layout
    if op == "Transpose":
        perm = ints_attr(node, "perm") or list(reversed(range(rank)))
        if sorted(perm) != list(range(rank)):
            return None
        return tuple(layout[p] for p in perm)
    atoms = [a for axis in layout for a in axis]
    if op == "Reshape":
        allowzero = bool(int_attr(node, "allowzero", 0))
        entries = shape_expression(node.inputs[1], known)
        candidates = []
        if entries is not None:
            candidates.append(_target_dims(entries, layout, allowzero))
        shown = _output_dims(node.outputs[0])
        if shown is not None:
            candidates.append(shown)
        for dims in candidates:
            trial = Factors(dict(factors.sizes))
            result = regroup(atoms, dims, trial)
            if result is not None:
                factors.sizes = trial.sizes
                return result
        return None
    if op == "Flatten":
        axis = int_attr(node, "axis", 1)
        axis = axis + rank if axis < 0 else axis
        return (tuple(a for ax in layout[:axis] for a in ax), tuple(a for ax in layout[axis:] for a in ax))
    if op in ("Squeeze", "Unsqueeze"):
        axes = ints_attr(node, "axes")
        if axes is None and len(node.inputs) > 1 and node.inputs[1] is not None:
            array = constant_array(node.inputs[1], max_elements=8)
            axes = None if array is None else [int(a) for a in np.asarray(array).reshape(-1)]
        if op == "Squeeze":
            if axes is None:
                return tuple(axis for axis in layout if axis)
            axes = [a + rank if a < 0 else a for a in axes]
            if any(layout[a] for a in axes if a < rank):
                return None
            return tuple(axis for i, axis in enumerate(layout) if i not in axes)
        if axes is None:
            return None
        out_rank = rank + len(axes)
        axes = sorted(a + out_rank if a < 0 else a for a in axes)
        result: list[Axis] = list(layout)
        for a in axes:
            result.insert(a, ())
        return tuple(result)
    return None


def trace_back(value: ir.Value) -> tuple[ir.Value, list[ir.Node]]:
    """Walk from ``value`` up through data movement and scalar scaling; returns the value
    where the chain starts and the chain's nodes in execution order."""
    nodes: list[ir.Node] = []
    current = value
    for _ in range(32):
        node = producer(current, *MOVEMENT_OPS, *SCALING_OPS)
        if node is None:
            break
        if node.op_type in SCALING_OPS:
            data, factor = _scaled_operand(node)
            if data is None or factor is None:
                break
            current = data
        else:
            current = node.inputs[0]
        nodes.append(node)
    nodes.reverse()
    return current, nodes


def _scaled_operand(node: ir.Node) -> tuple[ir.Value | None, float | None]:
    """``(x, c)`` for Mul(x, c) / Mul(c, x) / Div(x, c) by one constant number."""
    a, b = node.inputs[0], node.inputs[1]
    cb = scalar_constant(b)
    if cb is not None and scalar_constant(a) is None:
        if node.op_type == "Div":
            return (a, 1.0 / cb) if cb != 0 else (None, None)
        return a, cb
    if node.op_type == "Mul":
        ca = scalar_constant(a)
        if ca is not None and cb is None:
            return b, ca
    return None, None


def replay(start: Layout, factors: Factors, nodes: list[ir.Node], first_input: ir.Value) -> ChainResult | None:
    """Apply ``nodes`` (a chain from :func:`trace_back` or walked forward) to ``start``."""
    layout = start
    scale = 1.0
    known: dict[ir.Value, Layout] = {first_input: start}
    for node in nodes:
        if node.op_type in SCALING_OPS:
            _, factor = _scaled_operand(node)
            constant = node.inputs[1] if scalar_constant(node.inputs[1]) is not None else node.inputs[0]
            if factor is None or (constant.shape is not None and len(constant.shape) > len(layout)):
                return None
            scale *= factor
        else:
            result = apply(node, layout, factors, known)
            if result is None:
                return None
            layout = result
        known[node.outputs[0]] = layout
    return ChainResult(layout, scale, list(nodes), known)
