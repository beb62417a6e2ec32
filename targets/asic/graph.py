"""Where each node of a QDQ int8 graph runs on ``asic-int8``: the accelerator's calls
(integer GEMM/conv groups and the quantization ops) and the host CPU's share (the rest),
found on the static, cleaned-up ONNX graph TVM imports.

    DQ(a) , DQ(W) -> MatMul/Gemm/Conv [+ bias] [-> Relu] [-> QuantizeLinear]   one gemm/conv call
    MatMulInteger(a, W, za, zw), ConvInteger(...)                               one gemm/conv call (int32 out)
    QuantizeLinear, DequantizeLinear, DynamicQuantizeLinear                     one vector-unit call
    anything else TVM imports                                                   host CPU (TVM LLVM)

``accelerator_proto`` replaces each call's nodes by one ``greencc.asic::AsicCall`` node,
which the Relax importer turns into a call of the simulator (``asic_relax``).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import onnx
from onnx import numpy_helper

DOMAIN = "greencc.asic"
CALL_OP = "AsicCall"
HOST = "host"  # placement of nodes the host CPU runs
_ONNX = ("", "ai.onnx")
_INT8 = (np.dtype(np.int8), np.dtype(np.uint8))


@dataclass
class AsicCall:
    """One accelerator call: ``kind`` (``gemm``, ``conv``, ``quantize``, ``dequantize``,
    ``dynamic_quantize``), ``node`` (the node it is named after: the MatMul/Conv, or the
    quantization op), ``replaced`` (every graph node it runs, in graph order), ``inputs``
    (role -> tensor name: ``a``, ``w``, ``a_scale``, ``a_zp``, ``w_scale``, ``w_zp``,
    ``bias``, ``y_scale``, ``y_zp`` for GEMMs; ``x``, ``scale``, ``zp`` for vector ops),
    ``outputs`` (tensor names) and ``attrs`` (``out``: ``float``/``int32``/``quant``,
    ``relu``, ``trans_b``, ``bias_add`` (the Add node folded in as bias), conv
    ``pads``/``strides``/``dilations``, ``axis``)."""

    call_id: int
    kind: str
    node: str
    op: str
    replaced: list[str]
    inputs: dict[str, str]
    outputs: list[str]
    attrs: dict[str, Any] = field(default_factory=dict)
    integer_product: str = ""  # the MatMul/Gemm/Conv of a QDQ group (computed in integers)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready (tuples become lists)."""
        return {"call_id": self.call_id, "kind": self.kind, "node": self.node, "op": self.op,
                "replaced": list(self.replaced), "inputs": dict(self.inputs), "outputs": list(self.outputs),
                "attrs": {k: list(v) if isinstance(v, tuple) else v for k, v in self.attrs.items()},
                "integer_product": self.integer_product}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> AsicCall:
        """Inverse of :meth:`to_dict`."""
        attrs = {k: tuple(v) if isinstance(v, list) else v for k, v in data["attrs"].items()}
        return cls(int(data["call_id"]), str(data["kind"]), str(data["node"]), str(data["op"]),
                   [str(n) for n in data["replaced"]], {str(k): str(v) for k, v in data["inputs"].items()},
                   [str(n) for n in data["outputs"]], attrs, str(data.get("integer_product", "")))


@dataclass
class Placement:
    """Every node's place: ``calls`` (the accelerator's), ``host`` (node -> why the
    accelerator does not run it; TVM LLVM does) and ``unsupported`` (node -> why nothing
    here runs it)."""

    calls: list[AsicCall]
    host: dict[str, str]
    unsupported: dict[str, str]
    order: list[str]  # node names in graph order

    def where(self) -> dict[str, str]:
        """node name -> ``"asic"``, ``"host"`` or ``"unsupported"``."""
        places = dict.fromkeys(self.host, HOST) | dict.fromkeys(self.unsupported, "unsupported")
        for call in self.calls:
            places.update(dict.fromkeys(call.replaced, "asic"))
        return places


def node_names(proto: onnx.ModelProto) -> onnx.ModelProto:
    """``proto`` with every unnamed node named ``<Op#index>`` (as greencc's partitions do)."""
    for index, node in enumerate(proto.graph.node):
        if not node.name:
            node.name = f"<{node.op_type}#{index}>"
    return proto


class _Graph:
    """Lookups on a GraphProto: producers, consumers, constants."""

    def __init__(self, graph: onnx.GraphProto) -> None:
        self.graph = graph
        self.producer = {out: node for node in graph.node for out in node.output if out}
        self.consumers: dict[str, list[onnx.NodeProto]] = defaultdict(list)
        for node in graph.node:
            for name in node.input:
                if name:
                    self.consumers[name].append(node)
        self.outputs = {o.name for o in graph.output}
        self._initializers = {t.name: t for t in graph.initializer}
        self._arrays: dict[str, np.ndarray] = {}
        self.ranks = {v.name: len(v.type.tensor_type.shape.dim) for v in (*graph.input, *graph.value_info)
                      if v.type.tensor_type.HasField("shape")}
        self.ranks.update({t.name: len(t.dims) for t in graph.initializer})

    def constant(self, name: str) -> np.ndarray | None:
        if name not in self._initializers:
            return None
        if name not in self._arrays:
            self._arrays[name] = numpy_helper.to_array(self._initializers[name])
        return self._arrays[name]

    def only_reader(self, name: str) -> onnx.NodeProto | None:
        readers = self.consumers.get(name, [])
        return readers[0] if len(readers) == 1 and name not in self.outputs else None


def _attr(node: onnx.NodeProto, name: str, default: Any = None) -> Any:
    for a in node.attribute:
        if a.name == name:
            return onnx.helper.get_attribute_value(a)
    return default


def _input(node: onnx.NodeProto, index: int) -> str:
    return node.input[index] if len(node.input) > index else ""


def plan(proto: onnx.ModelProto, host_ops: Iterable[str]) -> Placement:
    """Place every node of ``proto`` (static shapes, named nodes): accelerator calls first,
    then the host for ops in ``host_ops`` (TVM's ONNX converters), else unsupported."""
    g = _Graph(proto.graph)
    host_ops = frozenset(host_ops)
    taken: dict[str, int] = {}  # node name -> call id
    calls: list[AsicCall] = []
    why_not: dict[str, str] = {}
    # GEMM/conv groups first: they absorb the DequantizeLinear nodes feeding them.
    for node in proto.graph.node:
        if node.domain not in _ONNX or node.name in taken:
            continue
        call, reason = _gemm_call(node, g, len(calls))
        if call is None:
            if reason:
                why_not[node.name] = reason
            continue
        if any(name in taken for name in call.replaced):
            why_not[node.name] = "its QuantizeLinear output is already part of another call"
            continue
        calls.append(call)
        taken.update(dict.fromkeys(call.replaced, call.call_id))
    # A DequantizeLinear feeding groups runs inside them when nothing else reads it.
    for call in list(calls):
        for extra in call.attrs.pop("_dq", ()):
            dq = g.producer[extra]
            if dq.name not in taken and all(r.name in taken for r in g.consumers[dq.output[0]]) \
                    and dq.output[0] not in g.outputs:
                call.replaced.insert(0, dq.name)
                taken[dq.name] = call.call_id
    for node in proto.graph.node:
        if node.name in taken or node.domain not in _ONNX:
            continue
        call, reason = _vector_call(node, g, len(calls))
        if call is not None:
            calls.append(call)
            taken[node.name] = call.call_id
        elif reason:
            why_not[node.name] = reason
    host: dict[str, str] = {}
    unsupported: dict[str, str] = {}
    for node in proto.graph.node:
        if node.name in taken:
            continue
        op = node.op_type if node.domain in _ONNX else f"{node.domain}::{node.op_type}"
        if node.domain in _ONNX and node.op_type in host_ops:
            host[node.name] = why_not.get(node.name) or f"the accelerator has no kernel for {op}"
        else:
            unsupported[node.name] = (f"op '{op}' at node {node.name}: neither the accelerator nor "
                                      "TVM's ONNX importer (host CPU) can run it")
    order = [n.name for n in proto.graph.node]
    position = {name: i for i, name in enumerate(order)}
    for call in calls:
        call.replaced.sort(key=position.__getitem__)
    calls.sort(key=lambda c: position[c.replaced[-1]])
    return Placement(calls, host, unsupported, order)


def _gemm_call(node: onnx.NodeProto, g: _Graph, call_id: int) -> tuple[AsicCall | None, str]:
    op = node.op_type
    if op in ("MatMulInteger", "ConvInteger"):
        return _integer_call(node, g, call_id)
    if op not in ("MatMul", "Gemm", "Conv"):
        return None, ""
    a_dq = g.producer.get(_input(node, 0))
    w_dq = g.producer.get(_input(node, 1))
    if a_dq is None or a_dq.op_type != "DequantizeLinear" or w_dq is None or w_dq.op_type != "DequantizeLinear":
        return None, f"{op} reads float operands (no DequantizeLinear on both inputs): not an int8 product"
    w = g.constant(_input(w_dq, 0))
    if w is None or w.dtype not in _INT8:
        return None, f"{op}'s weight is not a constant int8 tensor"
    a_scale, a_zp = g.constant(_input(a_dq, 1)), g.constant(_input(a_dq, 2))
    if a_scale is None or a_scale.size != 1 or a_zp is None or a_zp.dtype not in _INT8:
        return None, f"{op}'s activation is not quantized per tensor to int8/uint8 with constant parameters"
    w_scale, w_zp = g.constant(_input(w_dq, 1)), g.constant(_input(w_dq, 2))
    if w_scale is None or (w_zp is not None and w_zp.shape != w_scale.shape):
        return None, f"{op}'s weight scale is not constant"
    attrs: dict[str, Any] = {}
    if op == "MatMul":
        if w.ndim != 2:
            return None, "MatMul weight of rank != 2"
        n_axis = 1
    elif op == "Gemm":
        if _attr(node, "alpha", 1.0) != 1.0 or _attr(node, "beta", 1.0) != 1.0 or _attr(node, "transA", 0):
            return None, "Gemm with alpha/beta != 1 or transA"
        attrs["trans_b"] = int(_attr(node, "transB", 0))
        n_axis = 0 if attrs["trans_b"] else 1
    else:
        conv, reason = _conv_attrs(node, w.ndim)
        if conv is None:
            return None, reason
        attrs.update(conv)
        n_axis = 0
    if w_scale.size != 1 and (w_scale.ndim != 1 or int(_attr(w_dq, "axis", 1)) % w.ndim != n_axis):
        return None, f"{op}'s weight is quantized along an axis other than its output channels"
    inputs = {"a": _input(a_dq, 0), "a_scale": _input(a_dq, 1), "a_zp": _input(a_dq, 2),
              "w": _input(w_dq, 0), "w_scale": _input(w_dq, 1)}
    if _input(w_dq, 2):
        inputs["w_zp"] = _input(w_dq, 2)
    bias = _input(node, 2)
    if bias and op in ("Gemm", "Conv"):
        b = g.constant(bias)
        n = w.shape[n_axis]
        if b is None or b.size != n:
            return None, f"{op}'s bias is not a constant row of {n}"
        inputs["bias"] = bias
    replaced = [node.name]
    if _input(w_dq, 0) and all(r is node for r in g.consumers[w_dq.output[0]]) and w_dq.output[0] not in g.outputs:
        replaced.insert(0, w_dq.name)
    outputs = [node.output[0]]
    attrs["out"] = "float"
    # Epilogue fusion: [bias Add ->] [Relu ->] QuantizeLinear per tensor.
    reader = g.only_reader(node.output[0])
    if op == "MatMul" and reader is not None and reader.op_type == "Add" and reader.domain in _ONNX:
        other = [name for name in reader.input if name != node.output[0]]
        b = g.constant(other[0]) if len(other) == 1 else None
        if b is not None and b.dtype == np.float32 and b.size == w.shape[1] and b.shape[-1:] == (b.size,):
            inputs["bias"] = other[0]
            replaced.append(reader.name)
            outputs = [reader.output[0]]
            attrs["bias_add"] = reader.name
            reader = g.only_reader(reader.output[0])
    relu = None
    if reader is not None and reader.op_type == "Relu" and reader.domain in _ONNX:
        relu, reader = reader, g.only_reader(reader.output[0])
    if reader is not None and reader.op_type == "QuantizeLinear" and _plain_quantize(reader, g, per_tensor=True):
        inputs["y_scale"], inputs["y_zp"] = _input(reader, 1), _input(reader, 2)
        replaced += [n.name for n in (relu, reader) if n is not None]
        outputs = [reader.output[0]]
        attrs.update(out="quant", relu=int(relu is not None))
    attrs["_dq"] = (a_dq.output[0],)
    kind = "conv" if op == "Conv" else "gemm"
    return AsicCall(call_id, kind, node.name, op, replaced, inputs, outputs, attrs, integer_product=node.name), ""


def _integer_call(node: onnx.NodeProto, g: _Graph, call_id: int) -> tuple[AsicCall | None, str]:
    op = node.op_type
    inputs = {"a": _input(node, 0), "w": _input(node, 1)}
    for role, index in (("a_zp", 2), ("w_zp", 3)):
        if _input(node, index):
            inputs[role] = _input(node, index)
    attrs: dict[str, Any] = {"out": "int32"}
    if op == "ConvInteger":
        rank = g.ranks.get(inputs["w"])
        if rank is None:
            return None, "ConvInteger weight of unknown rank (run shape inference first)"
        conv, reason = _conv_attrs(node, rank)
        if conv is None:
            return None, reason
        attrs.update(conv)
    return AsicCall(call_id, "conv" if op == "ConvInteger" else "gemm", node.name, op, [node.name], inputs,
                    [node.output[0]], attrs), ""


def _conv_attrs(node: onnx.NodeProto, rank: int) -> tuple[dict[str, Any] | None, str]:
    if rank != 4:
        return None, f"{node.op_type} is not 2-D (weight rank {rank}): the accelerator's im2col is 2-D only"
    if int(_attr(node, "group", 1)) != 1:
        return None, f"grouped {node.op_type} (group={_attr(node, 'group')}) does not map onto one GEMM"
    auto_pad = _attr(node, "auto_pad", b"NOTSET")
    if (auto_pad.decode() if isinstance(auto_pad, bytes) else auto_pad) not in ("NOTSET", ""):
        return None, f"{node.op_type} with auto_pad (run cleanup to make pads explicit)"
    pads = tuple(int(p) for p in _attr(node, "pads", (0, 0, 0, 0)))
    return {"pads": (pads[0], pads[1], pads[2], pads[3]),
            "strides": tuple(int(s) for s in _attr(node, "strides", (1, 1))),
            "dilations": tuple(int(d) for d in _attr(node, "dilations", (1, 1)))}, ""


def _plain_quantize(node: onnx.NodeProto, g: _Graph, *, per_tensor: bool) -> bool:
    """A QuantizeLinear to int8/uint8 without float8, blocks or output_dtype."""
    if any(a.name in ("block_size", "output_dtype") for a in node.attribute) or int(_attr(node, "saturate", 1)) != 1:
        return False
    zp = g.constant(_input(node, 2)) if _input(node, 2) else np.zeros((), np.uint8)
    scale = g.constant(_input(node, 1))
    if zp is None or zp.dtype not in _INT8:
        return False
    return not per_tensor or (scale is not None and scale.size == 1 and zp.size == 1)


def _vector_call(node: onnx.NodeProto, g: _Graph, call_id: int) -> tuple[AsicCall | None, str]:
    op = node.op_type
    if op == "DynamicQuantizeLinear":
        return AsicCall(call_id, "dynamic_quantize", node.name, op, [node.name], {"x": node.input[0]},
                        list(node.output)), ""
    if op not in ("QuantizeLinear", "DequantizeLinear"):
        return None, ""
    if op == "QuantizeLinear" and not _plain_quantize(node, g, per_tensor=False):
        return None, "QuantizeLinear to a type other than int8/uint8 (or blocked, or with a run-time zero point)"
    if op == "DequantizeLinear" and any(a.name == "block_size" for a in node.attribute):
        return None, "blocked DequantizeLinear"
    inputs = {"x": node.input[0], "scale": node.input[1]}
    if _input(node, 2):
        inputs["zp"] = _input(node, 2)
    kind = "quantize" if op == "QuantizeLinear" else "dequantize"
    return AsicCall(call_id, kind, node.name, op, [node.name], inputs, [node.output[0]],
                    {"axis": int(_attr(node, "axis", 1))}), ""


def accelerator_proto(proto: onnx.ModelProto, placement: Placement) -> onnx.ModelProto:
    """A copy of ``proto`` where each call's nodes are one ``greencc.asic::AsicCall`` node
    (attribute ``call_id``; inputs in the order of ``call.inputs``), placed where its last
    node was."""
    out = onnx.ModelProto()
    out.CopyFrom(proto)
    by_last = {call.replaced[-1]: call for call in placement.calls}
    absorbed = {name for call in placement.calls for name in call.replaced}
    nodes = []
    for node in proto.graph.node:
        call = by_last.get(node.name)
        if call is not None:
            nodes.append(onnx.helper.make_node(
                CALL_OP, list(call.inputs.values()), call.outputs, name=f"asic:{call.node}",
                domain=DOMAIN, call_id=call.call_id))
        elif node.name not in absorbed:
            nodes.append(node)
    del out.graph.node[:]
    out.graph.node.extend(nodes)
    if not any(o.domain == DOMAIN for o in out.opset_import):
        out.opset_import.append(onnx.helper.make_opsetid(DOMAIN, 1))
    return out


__all__ = ["AsicCall", "CALL_OP", "DOMAIN", "Placement", "accelerator_proto", "node_names", "plan"]
