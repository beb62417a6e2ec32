"""Shape simplification: turn shape arithmetic on statically known dims into constants.

Shape vectors are tracked element by element, so ``Gather(Shape(x), 1)`` folds even when
axis 0 of ``x`` is a symbolic batch dim; once a value is fully known it becomes a
constant and the ordinary constant folder (shared with fold-constants) takes the
arithmetic downstream of it.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import onnx_ir as ir

from greencc.ir import infer_shapes
from greencc.model import Model
from greencc.passes.lib.graph_edits import (
    NameScope,
    all_graphs,
    constant_array,
    constant_tensor,
    is_onnx_op,
    new_initializer,
    remove_node,
    replace_with_constant,
)
from greencc.pipeline.base import Pass, PassResult, register_pass
from greencc.pipeline.context import PassContext

from .fold_constants import ConstantFolder, admit_initializers, shape_slice

Dim = int | str | None  # a known size, a symbolic dim's name, or unknown


@dataclass(frozen=True)
class KnownDims:
    """A 1-D (or scalar) integer tensor holding tensor dims, some of them known."""

    dims: tuple[Dim, ...]
    scalar: bool = False
    dtype: ir.DataType = ir.DataType.INT64

    @property
    def static(self) -> bool:
        """Whether every element is a known integer."""
        return all(isinstance(d, int) for d in self.dims)

    def array(self) -> np.ndarray:
        """The elements as an array (only when ``static``)."""
        array = np.array(self.dims, dtype=self.dtype.numpy())
        return array.reshape(()) if self.scalar else array


Known = dict[ir.Value, KnownDims]


def _operand(value: ir.Value | None, known: Known) -> KnownDims | None:
    """``value`` as known dims: tracked, or a small integer constant."""
    if value is None:
        return None
    if value in known:
        return known[value]
    array = constant_array(value, max_elements=64)
    if array is None or array.dtype.kind not in "iu" or array.ndim > 1:
        return None
    return KnownDims(
        tuple(int(a) for a in array.reshape(-1)), array.ndim == 0, ir.DataType.from_numpy(array.dtype)
    )


def _int_list(value: ir.Value | None) -> list[int] | None:
    array = constant_array(value, max_elements=64)
    if array is None or array.dtype.kind not in "iu":
        return None
    return [int(a) for a in array.reshape(-1)]


def _axis(node: ir.Node, default: int = 0) -> int:
    attr = node.attributes.get("axis")
    return attr.as_int() if attr is not None else default


def _shape(node: ir.Node, known: Known) -> KnownDims | None:
    data = node.inputs[0]
    if data is None or data.shape is None:
        return None
    dims: list[Dim] = []
    for dim in data.shape:
        dims.append(dim if isinstance(dim, int) else (dim.value or None))
    start = node.attributes.get("start")
    end = node.attributes.get("end")
    window = shape_slice(
        start.as_int() if start is not None else 0,
        end.as_int() if end is not None else len(dims),
        len(dims),
    )
    return KnownDims(tuple(dims[window]))


def _size(node: ir.Node, known: Known) -> KnownDims | None:
    data = node.inputs[0]
    if data is None or data.shape is None:
        return None
    dims = list(data.shape)
    if not all(isinstance(d, int) for d in dims):
        return None
    return KnownDims((math.prod(dims),), scalar=True)


def _gather(node: ir.Node, known: Known) -> KnownDims | None:
    data = _operand(node.inputs[0], known)
    indices = constant_array(node.inputs[1], max_elements=64) if len(node.inputs) > 1 else None
    if data is None or data.scalar or indices is None or indices.ndim > 1:
        return None
    if _axis(node) not in (0, -1):
        return None
    picked: list[Dim] = []
    size = len(data.dims)
    for index in indices.reshape(-1):
        i = int(index) + size if index < 0 else int(index)
        if not 0 <= i < size:
            return None
        picked.append(data.dims[i])
    return KnownDims(tuple(picked), scalar=indices.ndim == 0, dtype=data.dtype)


def _slice(node: ir.Node, known: Known) -> KnownDims | None:
    data = _operand(node.inputs[0], known)
    if data is None or data.scalar or len(node.inputs) < 3:
        return None
    starts, ends = _int_list(node.inputs[1]), _int_list(node.inputs[2])
    axes = _int_list(node.inputs[3]) if len(node.inputs) > 3 and node.inputs[3] is not None else [0]
    steps = _int_list(node.inputs[4]) if len(node.inputs) > 4 and node.inputs[4] is not None else [1]
    if None in (starts, ends, axes, steps) or not (len(starts) == len(ends) == len(axes) == len(steps) == 1):
        return None
    if axes[0] not in (0, -1) or steps[0] == 0:
        return None
    return KnownDims(
        tuple(data.dims[i] for i in _slice_indices(starts[0], ends[0], steps[0], len(data.dims))),
        dtype=data.dtype,
    )


def _slice_indices(start: int, end: int, step: int, size: int) -> range:
    """The indices ONNX ``Slice`` selects along one axis of length ``size``."""
    if start < 0:
        start += size
    if end < 0:
        end += size
    if step > 0:
        start, end = min(max(start, 0), size), min(max(end, 0), size)
    else:
        start, end = min(max(start, 0), size - 1), min(max(end, -1), size - 1)
    return range(start, end, step)


def _concat(node: ir.Node, known: Known) -> KnownDims | None:
    if _axis(node) not in (0, -1):
        return None
    parts = [_operand(v, known) for v in node.inputs]
    if not parts or any(p is None or p.scalar for p in parts):
        return None
    dims: list[Dim] = []
    for part in parts:
        assert part is not None
        dims.extend(part.dims)
    return KnownDims(tuple(dims), dtype=parts[0].dtype)  # type: ignore[union-attr]


def _axes_of(node: ir.Node) -> list[int] | None:
    if len(node.inputs) > 1 and node.inputs[1] is not None:
        return _int_list(node.inputs[1])
    attr = node.attributes.get("axes")
    return list(attr.as_ints()) if attr is not None else []


def _unsqueeze(node: ir.Node, known: Known) -> KnownDims | None:
    data = _operand(node.inputs[0], known)
    if data is None or not data.scalar or _axes_of(node) not in ([0], [-1]):
        return None
    return KnownDims(data.dims, dtype=data.dtype)


def _squeeze(node: ir.Node, known: Known) -> KnownDims | None:
    data = _operand(node.inputs[0], known)
    if data is None or data.scalar or len(data.dims) != 1 or _axes_of(node) not in ([], [0], [-1]):
        return None
    return KnownDims(data.dims, scalar=True, dtype=data.dtype)


def _cast(node: ir.Node, known: Known) -> KnownDims | None:
    data = _operand(node.inputs[0], known)
    to = node.attributes.get("to")
    if data is None or to is None:
        return None
    dtype = ir.DataType(to.as_int())
    if dtype not in (ir.DataType.INT64, ir.DataType.INT32):
        return None
    return KnownDims(data.dims, data.scalar, dtype)


def _identity(node: ir.Node, known: Known) -> KnownDims | None:
    return _operand(node.inputs[0], known)


HANDLERS: dict[str, Callable[[ir.Node, Known], KnownDims | None]] = {
    "Shape": _shape,
    "Size": _size,
    "Gather": _gather,
    "Slice": _slice,
    "Concat": _concat,
    "Unsqueeze": _unsqueeze,
    "Squeeze": _squeeze,
    "Cast": _cast,
    "Identity": _identity,
}


def _why_dynamic(value: ir.Value) -> str:
    """Why the shape of ``value`` is not a constant, naming its symbolic dims."""
    if value.shape is None:
        return f"the shape of '{value.name}' is unknown"
    names = [
        repr(d.value) if d.value else "?" for d in value.shape if not isinstance(d, int)
    ]
    return f"dims of '{value.name}' are symbolic ({', '.join(names)})"


@register_pass("simplify-shapes")
class SimplifyShapes(Pass):
    """Replace shape computations on statically known dims by constants.

    Rewrites:
      Shape[start,end](x: [N,3,4]) -> s, Gather(s, 1) -> d     ->  initializer d = 3
      Shape(x: [2,3]) -> s                                      ->  initializer s = [2, 3]
      Size(x: [2,3]) -> n                                       ->  initializer n = 6
      Concat(Unsqueeze(d), [-1]) -> t  (all known)              ->  initializer t
      Slice / Squeeze / Cast / Identity of known dims           ->  initializer
      ConstantOfShape(static shape) -> z  (z up to max_size)    ->  initializer z
      arithmetic on those constants (Mul, Add, Div, Equal...)   ->  initializer (fold-constants' folder)
      Range(s, l: [1], d)                                       ->  Range(s, Reshape(l, []), d)

    ``max_size`` bounds each materialized result in bytes. Symbolic dims are never
    specialized: a Shape whose selected dims are symbolic is declined with their names.
    Shapes are inferred first when the graph has Shape or Size nodes.

    Range's operands must be scalars; ONNX Runtime runs one-element vectors until its
    optimizer sees their shape (for instance once it inlines an ``If`` whose condition
    this pass made constant) and then rejects the model, so they are made scalars.
    """

    lossy = False
    max_size: int = 65536

    def call(self, model: Model, ctx: PassContext) -> PassResult:
        graphs = all_graphs(model.ir)
        if any(n.op_type in ("Shape", "Size") and is_onnx_op(n) for g in graphs for n in g):
            infer_shapes(model.ir)
        names = NameScope(model.ir)
        folder = ConstantFolder(model.ir, self.max_size, names, lambda n, r: self.decline(ctx, n, r))
        known: Known = {}
        cone: set[ir.Node] = set()  # nodes reading a constant this pass introduced
        resolved = folded = 0
        for graph in graphs:
            for node in list(graph):
                if node.graph is not graph or not is_onnx_op(node):
                    continue
                if node in cone or node.op_type == "ConstantOfShape":
                    readers = _readers(node)
                    if folder.try_fold(node):
                        folded += 1
                        cone.update(readers)
                        continue
                handler = HANDLERS.get(node.op_type)
                if handler is None or _reads_only_constants(node):
                    # Arithmetic on constants alone is fold-constants' business (this
                    # also leaves alone an Identity that carries a constant output).
                    continue
                result = handler(node, known)
                if result is None or not result.static:
                    if result is not None:
                        known[node.outputs[0]] = result
                    if node.op_type in ("Shape", "Size"):
                        self.decline(ctx, node, _why_dynamic(node.inputs[0]))
                    continue
                output = node.outputs[0]
                if not (output.uses() or output.is_graph_output()):
                    continue
                readers = _readers(node)
                replace_with_constant(
                    graph, output, result.array(), names, before=node, replaced=[node]
                )
                remove_node(node)
                cone.update(readers)
                resolved += 1
        scalars = sum(_scalar_range_operands(graph, names) for graph in graphs)
        if resolved or folded or scalars:
            admit_initializers(model.ir)
        stats = {"resolved_shapes": resolved, "folded": folded}
        if scalars:
            stats["scalar_range_operands"] = scalars
        return PassResult(model, modified=bool(resolved or folded or scalars), stats=stats)


def _scalar_range_operands(graph: ir.Graph, names: NameScope) -> int:
    """Make every Range operand of ``graph`` whose shape is ``[1]`` a scalar: a constant
    becomes a scalar initializer, anything else is read through ``Reshape(x, [])``.
    Returns how many operands changed."""
    changed = 0
    scalar_shape: ir.Value | None = None
    for node in list(graph):
        if node.op_type != "Range" or not is_onnx_op(node):
            continue
        for index, operand in enumerate(node.inputs):
            if operand is None or operand.shape is None or tuple(operand.shape) != (1,):
                continue
            array = constant_array(operand, max_elements=1)
            if array is not None:
                scalar = new_initializer(graph, names.fresh(f"{operand.name}_scalar"), array.reshape(()))
            else:
                if scalar_shape is None:
                    scalar_shape = new_initializer(graph, names.fresh("scalar_shape"), np.zeros(0, np.int64))
                reshape = ir.node("Reshape", [operand, scalar_shape], name=names.fresh(f"{node.name or 'range'}_operand"))
                scalar = reshape.outputs[0]
                scalar.name = names.fresh(f"{operand.name}_scalar")
                scalar.shape = ir.Shape([])
                scalar.type = operand.type
                graph.insert_before(node, reshape)
            node.replace_input_with(index, scalar)
            changed += 1
    return changed


def _reads_only_constants(node: ir.Node) -> bool:
    return all(constant_tensor(v) is not None for v in node.inputs if v is not None)


def _readers(node: ir.Node) -> list[ir.Node]:
    return [use.node for out in node.outputs for use in out.uses()]
