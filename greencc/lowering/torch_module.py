"""A greencc model as a ``torch.fx.GraphModule`` (``lower_to_torch``), and trained weights back
into the IR (``write_back``).

Each ONNX node becomes one ``call_function`` of its converter (``registry``); float
initializers that act as weights (MatMul/Gemm/Conv operands, normalization scales and biases,
bias Adds, embedding tables, the float weights of fused ops) become ``nn.Parameter``s named
after the initializer, every other constant a buffer. Constant subgraphs are folded while
lowering; shape arithmetic runs on Python ints (see ``shape_ops``).
"""

from __future__ import annotations

import json
import keyword
import operator
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import onnx_ir as ir
import torch
import torch.fx as fx

from greencc.errors import UnsupportedOpError, UsageError
from greencc.ir import set_meta
from greencc.ir.meta import PREFIX
from greencc.lowering import (  # noqa: F401 - register converters
    contrib_ops,
    decoder_ops,
    integer_ops,
    shape_ops,
    standard_ops,
)
from greencc.lowering.dtypes import numpy_to_torch, torch_dtype
from greencc.lowering.registry import CONTRIB, OpConverter, lookup
from greencc.model import Model

# (domain, op) -> the input positions that hold a layer's float weights. An initializer that
# reaches one of them, directly or through layout ops, becomes a trainable parameter.
WEIGHT_INPUTS: dict[tuple[str, str], tuple[int, ...]] = {
    ("", "MatMul"): (0, 1), ("", "Gemm"): (0, 1, 2), ("", "Conv"): (1, 2), ("", "ConvTranspose"): (1, 2),
    ("", "LayerNormalization"): (1, 2), ("", "BatchNormalization"): (1, 2), ("", "RMSNormalization"): (1,),
    ("", "Add"): (0, 1), ("", "Mul"): (0, 1), ("", "Gather"): (0,), ("", "Einsum"): (0, 1, 2),
    ("", "PRelu"): (1,),
    (CONTRIB, "Attention"): (1, 2), (CONTRIB, "QAttention"): (2,), (CONTRIB, "MultiHeadAttention"): (3,),
    (CONTRIB, "SkipLayerNormalization"): (2, 3, 4), (CONTRIB, "SkipSimplifiedLayerNormalization"): (2, 3),
    (CONTRIB, "SimplifiedLayerNormalization"): (1,), ("", "SimplifiedLayerNormalization"): (1,),
    (CONTRIB, "EmbedLayerNormalization"): (2, 3, 4, 5, 6), (CONTRIB, "BiasGelu"): (1,),
    (CONTRIB, "FastGelu"): (1,), (CONTRIB, "BiasAdd"): (1,), (CONTRIB, "FusedConv"): (1, 2),
    (CONTRIB, "FusedGemm"): (0, 1, 2), (CONTRIB, "FusedMatMul"): (0, 1),
    (CONTRIB, "MatMulIntegerToFloat"): (6,), (CONTRIB, "DynamicQuantizeMatMul"): (4,),
    (CONTRIB, "MatMulNBits"): (5,),
}
# Ops a weight may pass through on its way to a weight input (a transposed or reshaped weight).
LAYOUT_OPS = frozenset({"Transpose", "Reshape", "Identity", "Unsqueeze", "Squeeze", "Flatten", "Cast"})
FLOAT_TYPES = frozenset({ir.DataType.FLOAT, ir.DataType.FLOAT16, ir.DataType.BFLOAT16, ir.DataType.DOUBLE})
# Constant subexpressions are evaluated while lowering when all their inputs are this small
# (elements): shape arithmetic and scalars, never a weight-sized tensor.
FOLD_LIMIT = 4096
PROVENANCE_KEY = "provenance"


@dataclass(frozen=True)
class _Const:
    """A value known while lowering (an initializer, a Constant, a folded subexpression)."""

    array: np.ndarray


@dataclass(frozen=True)
class _Ints:
    """A value computed at run time as a Python int or int list (shape arithmetic)."""

    node: fx.Node


Slot = fx.Node | _Const | _Ints | None


@dataclass
class LoweredModule:
    """A greencc model lowered to torch: ``module`` (a ``torch.fx.GraphModule``) computes the
    graph's outputs, in order, as a tuple, from its inputs in order."""

    module: fx.GraphModule
    input_names: list[str]
    output_names: list[str]
    input_dtypes: list[torch.dtype]
    _parameters: dict[str, str] = field(default_factory=dict)
    _buffers: dict[str, str] = field(default_factory=dict)

    def parameter_names(self) -> dict[str, str]:
        """torch parameter name -> IR initializer name, for every trainable weight."""
        return dict(self._parameters)

    def buffer_names(self) -> dict[str, str]:
        """torch buffer name -> IR initializer name, for the initializers kept as buffers."""
        return dict(self._buffers)

    def __call__(self, *tensors: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """The graph's outputs (a tuple, in ``output_names`` order) for inputs in ``input_names`` order."""
        return self.module(*tensors)

    def run(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Run without gradients on numpy ``feeds`` keyed by input name; outputs by name."""
        missing = [name for name in self.input_names if name not in feeds]
        if missing:
            raise UsageError(f"missing input(s) {', '.join(missing)} for the lowered model",
                             hint=f"feed {', '.join(self.input_names)}")
        device = next((t.device for t in self.module.state_dict().values()), torch.device("cpu"))
        tensors = [torch.from_numpy(np.ascontiguousarray(feeds[name])).to(device=device, dtype=dtype)
                   for name, dtype in zip(self.input_names, self.input_dtypes, strict=True)]
        with torch.no_grad():
            outputs = self.module(*tensors)
        return {name: out.detach().cpu().numpy() for name, out in zip(self.output_names, outputs, strict=True)}


def lower_to_torch(model: ir.Model | Model, *, trainable: bool = True) -> LoweredModule:
    """``model`` as a ``LoweredModule`` whose GraphModule computes what ONNX Runtime computes.

    With ``trainable`` the float weights are ``nn.Parameter``s (see ``WEIGHT_INPUTS``), else
    every initializer is a buffer. The model is not modified. Raises ``UnsupportedOpError``
    naming every op that has no converter, or a node with a subgraph (If, Loop, Scan).
    """
    ir_model = model.ir if isinstance(model, Model) else model
    graph = ir_model.graph
    _check_supported(graph)
    return _Lowering(graph, trainable).run()


def write_back(lowered: LoweredModule, model: ir.Model | Model, *, provenance: str) -> list[str]:
    """Copy the lowered module's parameters into ``model``'s initializers (in place), keeping
    each initializer's dtype and shape; returns the names of the initializers whose values
    changed. Each changed initializer and every node reading it record ``provenance`` (e.g.
    ``"recover{optimizer=adamw}"``) under ``greencc.provenance``. Raises ``UsageError`` when
    a parameter's shape no longer matches its initializer, or the initializer is gone.
    """
    ir_model = model.ir if isinstance(model, Model) else model
    initializers = ir_model.graph.initializers
    params = dict(lowered.module.named_parameters())
    updates: list[tuple[ir.Value, np.ndarray]] = []
    for torch_name, ir_name in lowered.parameter_names().items():
        value = initializers.get(ir_name)
        if value is None or value.const_value is None:
            raise UsageError(f"write_back: the model has no initializer '{ir_name}' for parameter '{torch_name}'",
                             hint="write back into the model that was lowered (or a clone of it)")
        current = value.const_value.numpy()
        new = params[torch_name].detach().cpu().numpy()
        if tuple(new.shape) != tuple(current.shape):
            raise UsageError(
                f"write_back: parameter '{torch_name}' has shape {tuple(new.shape)}, its initializer "
                f"'{ir_name}' {tuple(current.shape)}",
                hint="lowered weights can change values, not shapes; prune in the IR, then lower again")
        new = new.astype(current.dtype, copy=False)
        if not np.array_equal(new, current):
            updates.append((value, new))
    for value, new in updates:
        value.const_value = ir.Tensor(np.ascontiguousarray(new), name=value.name)
        value.metadata_props[PREFIX + PROVENANCE_KEY] = json.dumps(provenance)
        for user, _ in value.uses():
            set_meta(user, PROVENANCE_KEY, provenance)
    return [value.name or "" for value, _ in updates]


# -- lowering ---------------------------------------------------------------------------

def _check_supported(graph: ir.Graph) -> None:
    missing: set[str] = set()
    for node in graph:
        if any(attr.type in (ir.AttributeType.GRAPH, ir.AttributeType.GRAPHS) for attr in node.attributes.values()):
            missing.add(f"{node.op_type} (subgraphs)")
        elif node.op_type != "Constant" and lookup(node.domain, node.op_type) is None:
            missing.add(f"{node.domain}::{node.op_type}" if node.domain not in ("", "ai.onnx") else node.op_type)
    if missing:
        raise UnsupportedOpError(
            f"cannot lower to torch: no converter for {', '.join(sorted(missing))}",
            hint="greencc.lowering.supported_ops() lists the ops it lowers; register one with "
                 "greencc.lowering.registry.converts",
        )


def _identifier(name: str, taken: set[str]) -> str:
    """A Python identifier from an ONNX name, unique within ``taken`` (which it joins)."""
    base = re.sub(r"\W", "_", name) or "value"
    if base[0].isdigit() or keyword.iskeyword(base) or hasattr(torch.nn.Module, base):
        base = f"w_{base}"
    candidate, i = base, 1
    while candidate in taken:
        candidate = f"{base}_{i}"
        i += 1
    taken.add(candidate)
    return candidate


def trainable_initializers(graph: ir.Graph) -> set[str]:
    """Names of the float initializers that reach a weight input (``WEIGHT_INPUTS``), directly
    or through layout ops, and hold more than one element."""
    chosen: set[str] = set()
    for name, value in graph.initializers.items():
        if value.dtype not in FLOAT_TYPES or value.const_value is None or value.const_value.size <= 1:
            continue
        frontier, seen = [value], set()
        while frontier:
            current = frontier.pop()
            for user, index in current.uses():
                key = ("" if user.domain in ("", "ai.onnx") else user.domain, user.op_type)
                if index in WEIGHT_INPUTS.get(key, ()):
                    chosen.add(name)
                    frontier.clear()
                    break
                if user.op_type in LAYOUT_OPS and index == 0 and id(user) not in seen:
                    seen.add(id(user))
                    frontier.extend(user.outputs)
    return chosen


def _attributes(node: ir.Node) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name, attr in node.attributes.items():
        value = attr.value
        if attr.type == ir.AttributeType.TENSOR:
            array = value.numpy()
            out[name] = (array.tolist(), torch.from_numpy(np.zeros(0, array.dtype)).dtype)
        elif isinstance(value, tuple):
            out[name] = list(value)
        else:
            out[name] = value
    return out


def _constant_array(node: ir.Node) -> np.ndarray:
    attrs = node.attributes
    if "value" in attrs:
        return np.asarray(attrs["value"].value.numpy())
    for key, dtype in (("value_float", np.float32), ("value_floats", np.float32), ("value_int", np.int64),
                       ("value_ints", np.int64)):
        if key in attrs:
            return np.asarray(attrs[key].value, dtype=dtype)
    raise UnsupportedOpError(f"Constant node '{node.name}' with attributes {sorted(attrs)}",
                             hint="use a tensor, float(s) or int(s) value")


def _small_int(slot: Slot) -> bool:
    return isinstance(slot, _Const) and slot.array.dtype.kind in "iub" and slot.array.ndim <= 1 \
        and slot.array.size <= FOLD_LIMIT


def _to_python(array: np.ndarray) -> Any:
    return array.tolist()


def ints_to_tensor(values: Any, dtype: torch.dtype) -> torch.Tensor:
    """Shape arithmetic (an int or int list) as a tensor, where a tensor op reads it."""
    return torch.tensor(values, dtype=dtype)


class _Lowering:
    """One lowering: the fx graph under construction and the value environment."""

    def __init__(self, graph: ir.Graph, trainable: bool) -> None:
        self.ir_graph = graph
        self.graph = fx.Graph()
        self.root = torch.nn.Module()
        self.env: dict[ir.Value, Slot] = {}
        self.names: set[str] = set()
        self.parameters: dict[str, str] = {}
        self.buffers: dict[str, str] = {}
        self.attr_nodes: dict[ir.Value, fx.Node] = {}
        self.trainable = trainable_initializers(graph) if trainable else set()

    def run(self) -> LoweredModule:
        inputs = [v for v in self.ir_graph.inputs if v.name not in self.ir_graph.initializers]
        for value in inputs:
            self.env[value] = self.graph.placeholder(_identifier(value.name or "input", self.names))
        for name, value in self.ir_graph.initializers.items():
            if value.const_value is None:
                continue
            if name in self.trainable:
                torch_name = _identifier(name, self.names)
                self.root.register_parameter(torch_name, torch.nn.Parameter(numpy_to_torch(value.const_value.numpy())))
                self.parameters[torch_name] = name
                self.env[value] = self.graph.get_attr(torch_name)
            else:
                self.env[value] = _Const(np.asarray(value.const_value.numpy()))
        for node in self.ir_graph:
            self._lower(node)
        outputs = tuple(self._tensor(self.env[v], v) for v in self.ir_graph.outputs)
        self.graph.output(outputs)
        module = fx.GraphModule(self.root, self.graph, class_name="LoweredGraph")
        module.eval()
        return LoweredModule(
            module=module,
            input_names=[v.name or "" for v in inputs],
            output_names=[v.name or "" for v in self.ir_graph.outputs],
            input_dtypes=[torch_dtype(v.dtype.value) if v.dtype is not None else torch.float32 for v in inputs],
            _parameters=self.parameters,
            _buffers=self.buffers,
        )

    # -- arguments ---------------------------------------------------------------------
    def _tensor(self, slot: Slot, value: ir.Value) -> Any:
        """``slot`` as an fx argument that is a tensor."""
        if slot is None or isinstance(slot, fx.Node):
            return slot
        if isinstance(slot, _Ints):
            dtype = torch_dtype(value.dtype.value) if value.dtype is not None else torch.int64
            return self.graph.call_function(ints_to_tensor, (slot.node, dtype))
        if value not in self.attr_nodes:
            torch_name = _identifier(value.name or "constant", self.names)
            self.root.register_buffer(torch_name, numpy_to_torch(slot.array))
            if value.name in self.ir_graph.initializers:
                self.buffers[torch_name] = value.name
            self.attr_nodes[value] = self.graph.get_attr(torch_name)
        return self.attr_nodes[value]

    def _int(self, slot: Slot) -> Any:
        """``slot`` as an fx argument that is an int or int list (read at run time from a tensor)."""
        if isinstance(slot, _Const):
            return _to_python(slot.array)
        if isinstance(slot, _Ints):
            return slot.node
        return slot

    # -- nodes ----------------------------------------------------------------------------
    def _lower(self, node: ir.Node) -> None:
        if node.op_type == "Constant" and node.domain in ("", "ai.onnx"):
            self.env[node.outputs[0]] = _Const(_constant_array(node))
            return
        converter = lookup(node.domain, node.op_type)
        assert converter is not None
        slots = [self.env[v] if v is not None else None for v in node.inputs]
        kwargs = _attributes(node)
        if converter.takes_output_count:
            kwargs["outputs"] = len(node.outputs)
        if node.op_type == "Shape" and self._static_shape(node) is not None:
            self.env[node.outputs[0]] = _Const(self._static_shape(node))
            return
        if self._foldable(slots, converter):
            self._fold(node, converter, slots, kwargs)
            return
        if converter.shape_fn is not None and self._shape_arithmetic(slots):
            args = tuple(self._int(s) for s in slots)
            self._bind(node, self.graph.call_function(converter.shape_fn, args, _shape_kwargs(kwargs)), ints=True)
            return
        args = tuple(self._int(s) if i in converter.int_inputs else self._tensor(s, v)
                     for i, (s, v) in enumerate(zip(slots, node.inputs, strict=True)))
        call = self.graph.call_function(converter.fn, args, kwargs)
        self._bind(node, call, ints=node.op_type in ("Shape", "Size") and node.domain in ("", "ai.onnx"))

    def _static_shape(self, node: ir.Node) -> np.ndarray | None:
        shape = node.inputs[0].shape if node.inputs[0] is not None else None
        if shape is None or not all(isinstance(d, int) for d in shape):
            return None
        attrs = _attributes(node)
        dims = [int(d) for d in shape][attrs.get("start", 0):attrs.get("end")]
        return np.asarray(dims, dtype=np.int64)

    @staticmethod
    def _foldable(slots: Sequence[Slot], converter: OpConverter) -> bool:
        present = [s for s in slots if s is not None]
        return bool(present) and all(isinstance(s, _Const) and s.array.size <= FOLD_LIMIT for s in present)

    @staticmethod
    def _shape_arithmetic(slots: Sequence[Slot]) -> bool:
        present = [s for s in slots if s is not None]
        return any(isinstance(s, _Ints) for s in present) and all(
            isinstance(s, _Ints) or _small_int(s) for s in present)

    def _fold(self, node: ir.Node, converter: OpConverter, slots: Sequence[Slot], kwargs: dict[str, Any]) -> None:
        args = [None if s is None else (_to_python(s.array) if i in converter.int_inputs else numpy_to_torch(s.array))
                for i, s in enumerate(slots)]  # type: ignore[union-attr]
        with torch.no_grad():
            result = converter.fn(*args, **kwargs)
        results = result if isinstance(result, tuple) and len(node.outputs) > 1 else (result,)
        for value, out in zip(node.outputs, results, strict=False):
            if isinstance(out, torch.Tensor):
                self.env[value] = _Const(out.numpy())
            else:
                self.env[value] = _Const(np.asarray(out, dtype=np.int64))

    def _bind(self, node: ir.Node, call: fx.Node, *, ints: bool) -> None:
        if len(node.outputs) == 1:
            self.env[node.outputs[0]] = _Ints(call) if ints else call
            return
        for i, value in enumerate(node.outputs):
            item = self.graph.call_function(operator.getitem, (call, i))
            self.env[value] = _Ints(item) if ints else item


def _shape_kwargs(kwargs: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in kwargs.items() if k != "outputs"}
