"""Structured units between two weight layers: FFN neurons (``MatMul -> act -> MatMul``,
and the gated MLP of Llama-family decoders, SwiGLU) and CNN channels
(``Conv -> BN -> Relu -> pool -> Conv``/``Gemm``).

A :class:`UnitGroup` is a producer whose weight makes ``width`` units along one axis, the
region of per-unit ops they flow through (elementwise ops whose constants are scalars or
one value per unit, BatchNormalization, pooling, a Flatten of a 1×1 map), and the one
consumer whose weight reads them along one axis. Unit ``j`` then lives only in slice ``j``
of each of those weights and constants, so removing it is slicing them all:

    MatMul(x, W1[in, F]) (+ b1[F]) -> act -> MatMul(·, W2[F, out])
        -> MatMul(x, W1[:, K]) (+ b1[K]) -> act -> MatMul(·, W2[K, :])
    Conv(x, W1[C, ...], b1[C]) -> BN(γ,β,μ,σ²[C]) -> Relu -> MaxPool -> Conv(·, W2[:, C, ...])
        -> the same with C -> K

A region may also read a second producer of the same width (a gate): in SwiGLU,
``MatMul(silu(MatMul(x, Wg[in, F])) · MatMul(x, Wu[in, F]), Wd[F, out])``, neuron ``j`` is
the triple (``Wg[:, j]``, ``Wu[:, j]``, ``Wd[j]``), whichever of x·σ(x), QuickGelu or Swish
computes the silu.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import onnx_ir as ir

from greencc.ir import infer_shapes, symbolic_dims
from greencc.passes.lib.graph_edits import NameScope, constant_array, new_initializer
from greencc.passes.lib.matching import CONTRIB_DOMAIN, int_attr, label

UNARY = frozenset({"Relu", "Gelu", "Erf", "Tanh", "Sigmoid", "Neg", "Abs", "Exp", "Softplus", "Softsign",
                   "HardSigmoid", "HardSwish", "LeakyRelu", "Elu", "Selu", "Celu", "Mish", "Identity",
                   "Dropout", "Clip", "Sqrt", "Reciprocal", "Swish"})
BINARY = frozenset({"Add", "Sub", "Mul", "Div", "Pow", "Max", "Min"})
CONTRIB_PER_UNIT = frozenset({"BiasGelu", "FastGelu", "Gelu", "QuickGelu"})
# Axis marker of a slice entry that is a Reshape target whose last entry is the unit count.
RESHAPE_LAST = "reshape-last"
POOLING = frozenset({"MaxPool", "AveragePool", "GlobalAveragePool", "GlobalMaxPool", "LpPool"})


@dataclass
class UnitGroup:
    """``width`` units made by ``producer`` and read by ``consumer`` (see module doc).

    ``slices`` lists ``(node, input index, axis)`` of every constant holding one value per
    unit (producer weight and bias, per-unit constants in the region, consumer weight),
    and, with axis :data:`RESHAPE_LAST`, Reshape targets ending in the unit count;
    ``activation`` is the consumer's input, units on ``unit_axis``; ``co_producers`` are
    the further producers the region multiplies in (SwiGLU's up projection), whose
    weights are in ``slices`` too.
    """

    name: str
    producer: ir.Node
    consumer: ir.Node
    width: int
    activation: ir.Value
    unit_axis: int
    slices: list[tuple[ir.Node, int, int | str]] = field(default_factory=list)
    consumer_weight: tuple[int, int] = (1, 0)  # (input index, unit axis) of the consumer weight
    co_producers: list[ir.Node] = field(default_factory=list)

    def consumer_rows(self) -> np.ndarray:
        """The consumer weight with units on axis 0, flattened per unit ``[width, rest]``."""
        index, axis = self.consumer_weight
        weight = np.asarray(constant_array(self.consumer.inputs[index]), dtype=np.float64)
        return np.moveaxis(weight, axis, 0).reshape(self.width, -1)


def find_unit_groups(model: ir.Model, kind: str) -> tuple[list[UnitGroup], dict[str, str]]:
    """Groups of ``kind`` (``"ffn"``: MatMul/Gemm producers; ``"channels"``: Conv) in the
    main graph and, for producers that looked like one but are not, why (infers shapes)."""
    infer_shapes(model, symbolic=bool(symbolic_dims(model)))
    graph = model.graph
    groups: list[UnitGroup] = []
    declined: dict[str, str] = {}
    claimed: set[ir.Node] = set()  # co-producers of a group found earlier
    for node in graph:
        if node.domain not in ("", "ai.onnx") or node in claimed:
            continue
        if kind == "ffn" and node.op_type in ("MatMul", "Gemm"):
            found = _group(node, unit_axis=-1)
        elif kind == "channels" and node.op_type == "Conv":
            found = _group(node, unit_axis=1)
        else:
            continue
        if isinstance(found, UnitGroup):
            groups.append(found)
            claimed.update(found.co_producers)
        elif found:
            declined[label(node)] = found
    return groups, declined


def _producer_weight(node: ir.Node) -> tuple[int, list[tuple[int, int]]] | str:
    """(width, [(input index, unit axis)]) of a producer's weight and bias."""
    weight = constant_array(node.inputs[1]) if len(node.inputs) > 1 else None
    if weight is None:
        return ""
    if node.op_type == "Conv":
        if int_attr(node, "group", 1) != 1:
            return f"{label(node)} is a grouped convolution"
        slices = [(1, 0)]
        if len(node.inputs) > 2 and node.inputs[2] is not None:
            slices.append((2, 0))
        return int(weight.shape[0]), slices
    if weight.ndim != 2:
        return ""
    if node.op_type == "Gemm":
        if int_attr(node, "transA", 0):
            return ""
        axis = 0 if int_attr(node, "transB", 0) else 1
        slices = [(1, axis)]
        if len(node.inputs) > 2 and node.inputs[2] is not None:
            bias = constant_array(node.inputs[2])
            if bias is None or bias.size == 1:
                return f"{label(node)} has a bias that is not one value per unit"
            slices.append((2, -1))
        return int(weight.shape[axis]), slices
    return int(weight.shape[1]), [(1, 1)]


def _group(start: ir.Node, unit_axis: int) -> UnitGroup | str:
    """The unit group produced by ``start``, "" when it is plainly not one, or why not."""
    produced = _producer_weight(start)
    if isinstance(produced, str):
        return produced
    width, own = produced
    if width < 2:
        return ""
    slices = [(start, index, axis) for index, axis in own]
    region: set[ir.Node] = set()
    co_producers: list[ir.Node] = []
    pending = [start.outputs[0]]
    consumer: ir.Node | None = None
    activation: ir.Value | None = None
    seen: set[ir.Value] = set()
    while pending:
        values, pending = pending, []
        while values:
            value = values.pop()
            if value in seen:
                continue
            seen.add(value)
            if value.is_graph_output():
                return ""
            for user, index in value.uses():
                reading = _reads_units(user, index, unit_axis)
                if reading is not None:
                    if consumer is not None and (consumer is not user or activation is not value):
                        return ""
                    consumer, activation = user, value
                    continue
                edits = _region_node(user, value, width, unit_axis)
                if edits is None:
                    return ""
                if user not in region:
                    region.add(user)
                    slices.extend((user, i, axis) for i, axis in edits)
                    values.extend(v for v in user.outputs[:1])
                    if user.op_type == "Dropout" or user.op_type == "BatchNormalization":
                        if any(out.uses() for out in user.outputs[1:]):
                            return ""
        if consumer is None or activation is None:
            return ""
        # Every region input that is not a constant must come from the region itself or
        # from a further producer of the same width (a gate), whose output joins the walk.
        produced_values = {p.outputs[0] for p in (start, *co_producers)} | {out for node in region for out in node.outputs}
        for node in region:
            for value in node.inputs:
                if value is None or value in produced_values or constant_array(value) is not None:
                    continue
                gate = _co_producer(value, unit_axis)
                if isinstance(gate, str):
                    return gate
                if gate not in co_producers:
                    co_producers.append(gate)
                    slices.extend((gate, index, axis) for index, axis in _producer_weight(gate)[1])  # type: ignore[index]
                    pending.append(value)
    index, axis = _reads_units(consumer, list(consumer.inputs).index(activation), unit_axis)  # type: ignore[misc]
    weight = constant_array(consumer.inputs[index])
    if weight is None or weight.shape[axis] != width:
        return f"{label(consumer)} reads {label(start)}'s units with a weight of another width"
    slices.append((consumer, index, axis))
    return UnitGroup(label(start), start, consumer, width, activation, unit_axis, slices, (index, axis), co_producers)


def _co_producer(value: ir.Value, unit_axis: int) -> ir.Node | str:
    """The MatMul/Gemm with a constant weight producing ``value`` (a gate multiplied into
    the region, of its width: region values have one shape), or why not ("" when
    ``value`` is plainly not a gate)."""
    node = value.producer()
    if unit_axis != -1 or node is None or node.domain not in ("", "ai.onnx") or node.op_type not in ("MatMul", "Gemm"):
        return ""
    produced = _producer_weight(node)
    return produced if isinstance(produced, str) else node


def _reads_units(node: ir.Node, index: int, unit_axis: int) -> tuple[int, int] | None:
    """(weight input index, unit axis of that weight) when ``node`` contracts its input
    ``index`` over the units with a constant weight."""
    if node.domain not in ("", "ai.onnx") or index != 0:
        return None
    if node.op_type == "MatMul" and unit_axis == -1 and constant_array(node.inputs[1]) is not None:
        return (1, 0) if np.ndim(constant_array(node.inputs[1])) == 2 else None
    if node.op_type == "Gemm" and not int_attr(node, "transA", 0) and constant_array(node.inputs[1]) is not None:
        return 1, 1 if int_attr(node, "transB", 0) else 0
    if node.op_type == "Conv" and unit_axis == 1 and int_attr(node, "group", 1) == 1:
        return (1, 1) if constant_array(node.inputs[1]) is not None else None
    return None


def _region_node(node: ir.Node, value: ir.Value, width: int, unit_axis: int) -> list[tuple[int, int]] | None:
    """The per-unit constant inputs ``(index, axis)`` of a region node, or ``None`` if the
    node mixes units (or is not understood)."""
    op = node.op_type
    if node.domain == CONTRIB_DOMAIN and op in CONTRIB_PER_UNIT:
        edits = []
        for i, other in enumerate(node.inputs):
            if other is None or other is value:
                continue
            axis = _per_unit_axis(other, width, unit_axis, value)
            if axis is None:
                return None
            if axis != "scalar":
                edits.append((i, axis))
        return edits
    if node.domain not in ("", "ai.onnx"):
        return None
    if op in UNARY:
        if any(v is not None and v is not value and constant_array(v) is None for v in node.inputs[1:]):
            return None
        if op == "Clip" or op == "Dropout":
            return [] if all(v is None or np.size(constant_array(v)) <= 1 for v in node.inputs[1:]) else None
        return []
    if op in BINARY:
        edits = []
        for i, other in enumerate(node.inputs):
            if other is value:
                continue
            if constant_array(other) is None:
                # another region value: checked at the end; must have the same shape
                if other is not None and other.shape is not None and value.shape is not None and list(other.shape) == list(value.shape):
                    continue
                return None
            axis = _per_unit_axis(other, width, unit_axis, value)
            if axis is None:
                return None
            if axis != "scalar":
                edits.append((i, axis))
        return edits
    if unit_axis == -1 and op == "Reshape" and node.inputs[0] is value:
        # [b, s, F] <-> [b·s, F] around a rank-2 Gemm (GPT-2's Conv1D): units stay last
        target = constant_array(node.inputs[1])
        shapes = (value.shape, node.outputs[0].shape)
        if target is None or target.ndim != 1 or any(sh is None or sh[-1] != width for sh in shapes):
            return None
        if int(target[-1]) == width:
            return [(1, RESHAPE_LAST)]
        return [] if int(target[-1]) == -1 else None
    if unit_axis == 1 and op == "BatchNormalization" and node.inputs[0] is value:
        if any(constant_array(v) is None for v in node.inputs[1:5]):
            return None
        return [(i, 0) for i in range(1, 5)]
    if unit_axis == 1 and op in POOLING and node.inputs[0] is value:
        return []
    if unit_axis == 1 and op == "Flatten" and node.inputs[0] is value:
        shape = value.shape
        if int_attr(node, "axis", 1) == 1 and shape is not None and len(shape) >= 2 and all(d == 1 for d in list(shape)[2:]):
            return []
    return None


def _per_unit_axis(constant: ir.Value, width: int, unit_axis: int, value: ir.Value):  # noqa: ANN202
    """The axis of ``constant`` holding one value per unit, ``"scalar"``, or ``None``."""
    array = constant_array(constant)
    if array is None:
        return None
    if array.size == 1:
        return "scalar"
    rank = len(value.shape) if value.shape is not None else None
    if unit_axis == -1:
        if array.shape[-1] == width and all(s == 1 for s in array.shape[:-1]):
            return array.ndim - 1
        return None
    if rank is None or array.ndim > rank:
        return None
    position = unit_axis - (rank - array.ndim)
    if position < 0 or array.shape[position] != width:
        return None
    if any(s != 1 for i, s in enumerate(array.shape) if i != position):
        return None
    return position


def slice_group(graph: ir.Graph, group: UnitGroup, keep: np.ndarray, names: NameScope,
                consumer_bias_shift: np.ndarray | None = None) -> None:
    """Keep only units ``keep`` (indices) of ``group``: every per-unit constant is sliced
    into a new initializer. ``consumer_bias_shift`` (one value per consumer output) is
    added to the consumer's bias (the mean contribution of the removed units)."""
    for node, index, axis in group.slices:
        old = node.inputs[index]
        if axis == RESHAPE_LAST:
            array = np.asarray(constant_array(old)).copy()
            array[-1] = len(keep)
        else:
            array = np.take(np.asarray(constant_array(old)), keep, axis=axis)
        node.replace_input_with(index, new_initializer(graph, names.fresh(f"{old.name or 'w'}.pruned"), np.ascontiguousarray(array)))
    if consumer_bias_shift is not None:
        add_consumer_bias(graph, group, consumer_bias_shift, names)


def consumer_bias(group: UnitGroup) -> tuple[ir.Node, int] | None:
    """Where the consumer's bias lives: ``(node, input index)`` (Gemm/Conv bias input, or
    the constant of the Add right after a MatMul), or ``None``."""
    node = group.consumer
    if node.op_type in ("Gemm", "Conv"):
        return (node, 2) if len(node.inputs) > 2 and node.inputs[2] is not None else None
    out = node.outputs[0]
    uses = list(out.uses())
    if len(uses) == 1 and uses[0][0].op_type == "Add" and not out.is_graph_output():
        add = uses[0][0]
        other = 1 - uses[0][1]
        if constant_array(add.inputs[other]) is not None:
            return add, other
    return None


def add_consumer_bias(graph: ir.Graph, group: UnitGroup, shift: np.ndarray, names: NameScope) -> bool:
    """Add ``shift`` to the consumer's bias; ``False`` when it has none to add to."""
    where = consumer_bias(group)
    if where is None:
        return False
    node, index = where
    old = np.asarray(constant_array(node.inputs[index]))
    updated = (old + shift.reshape(old.shape[-1:] if old.ndim else shift.shape)).astype(old.dtype)
    node.replace_input_with(index, new_initializer(graph, names.fresh(f"{node.inputs[index].name or 'b'}.shifted"), updated))
    return True
