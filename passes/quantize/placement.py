"""Where int8 pays on a target: the quantizable sites of a model (MatMul, Gemm, Conv and
the fused Attention) and, for every node that looks like one but is not, the reason.

A site is a node whose weight is a constant float tensor and whose activation input is a
float tensor the target can quantize. Numerically fragile tensors are never sites:
attention masks and softmax inputs live inside Attention (only its QKV projection is
quantized), LayerNorm statistics inside the normalization ops, which stay in float.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
import onnx_ir as ir

from greencc.errors import UsageError
from greencc.ir import infer_shapes, node_label
from greencc.model import Model
from greencc.passes.lib.graph_edits import constant_tensor, is_onnx_op

CONTRIB = "com.microsoft"
# The op types a site can have, as users name them in the ``ops`` option.
SITE_OPS = ("MatMul", "Gemm", "Conv", "Attention")
FLOAT_TYPES = (ir.DataType.FLOAT,)
# Below this many weight elements int8 saves less than the Q/DQ and scale traffic costs.
MIN_WEIGHT_ELEMENTS = 64


@dataclass
class QuantSite:
    """One node int8 can run: ``activation`` (quantized per tensor at run time or with a
    calibrated range), ``weight`` (a constant, quantized per channel along ``channel_axis``
    or per tensor), and the op ``kind`` ("MatMul", "Gemm", "Conv", "Attention")."""

    node: ir.Node
    kind: str
    activation: ir.Value
    weight: ir.Value
    channel_axis: int

    @property
    def name(self) -> str:
        """How ledgers and ``keep_float`` name the site: the node's name."""
        return self.node.name or node_label(self.node)

    @property
    def weight_array(self) -> np.ndarray:
        """The float weight as a numpy array (read lazily)."""
        tensor = constant_tensor(self.weight)
        assert tensor is not None
        return np.asarray(tensor.numpy())


@dataclass(frozen=True)
class Decline:
    """A node the pass looked at and left in float, and why (``--explain``)."""

    node: ir.Node
    reason: str


def parse_ops(text: str) -> tuple[str, ...]:
    """The op types named in ``ops`` (``"MatMul,Attention"``); unknown ones are errors."""

    ops = tuple(op.strip() for op in text.split(",") if op.strip())
    unknown = [op for op in ops if op not in SITE_OPS]
    if unknown:
        raise UsageError(
            f"quantize-int8: op type(s) {', '.join(unknown)} cannot be quantized",
            hint=f"choose among {', '.join(SITE_OPS)}",
        )
    return ops


def ensure_types(model: ir.Model) -> None:
    """Run shape inference when an input of a candidate node has no known dtype or shape."""

    for node in model.graph:
        if _kind(node) is not None and node.inputs and node.inputs[0] is not None:
            value = node.inputs[0]
            if value.dtype is None or value.shape is None:
                infer_shapes(model)
                return


def find_sites(
    graph: ir.Graph, ops: Iterable[str], kernels: frozenset[str], *, mode: str = "dynamic"
) -> tuple[list[QuantSite], list[Decline]]:
    """The quantizable sites of ``graph`` among ``ops``, in graph order, and the declines.

    ``kernels`` are the integer kernels the target runs (see :func:`target_int8_kernels`);
    ``mode`` ("dynamic" or "static") decides which of them a site needs.
    """
    wanted = set(ops)
    sites: list[QuantSite] = []
    declines: list[Decline] = []
    for node in graph:
        kind = _kind(node)
        if kind is None:
            continue
        if kind not in wanted:
            declines.append(Decline(node, f"{kind} is not in ops={','.join(sorted(wanted))}"))
            continue
        site, reason = _check(node, kind, kernels, mode)
        if site is None:
            declines.append(Decline(node, reason))
        else:
            sites.append(site)
    return sites, declines


def _kind(node: ir.Node) -> str | None:
    if node.op_type == "Attention" and node.domain == CONTRIB:
        return "Attention"
    if node.op_type == "FusedConv" and node.domain == CONTRIB:
        return "Conv"
    if node.op_type in ("MatMul", "Gemm", "Conv") and is_onnx_op(node):
        return node.op_type
    return None


# The integer kernels each kind needs, for dynamic and for static (QDQ) quantization.
NEEDED = {
    "dynamic": {
        "MatMul": ("MatMulInteger", "DynamicQuantizeLinear"),
        "Gemm": ("MatMulInteger", "DynamicQuantizeLinear"),
        "Conv": ("ConvInteger", "DynamicQuantizeLinear"),
        "Attention": (f"{CONTRIB}::QAttention", "DynamicQuantizeLinear"),
    },
    "static": {
        "MatMul": ("QuantizeLinear", "DequantizeLinear"),
        "Gemm": ("QuantizeLinear", "DequantizeLinear"),
        "Conv": ("QuantizeLinear", "DequantizeLinear"),
    },
}


def _check(node: ir.Node, kind: str, kernels: frozenset[str], mode: str) -> tuple[QuantSite | None, str]:
    needed = NEEDED[mode].get(kind)
    if needed is None:
        return None, f"{kind} has no QDQ (static) int8 form on the target; mode=dynamic quantizes it"
    missing = [k for k in needed if k not in kernels]
    if missing:
        return None, f"the target has no integer kernel for {kind} ({', '.join(missing)})"
    if len(node.inputs) < 2 or node.inputs[0] is None or node.inputs[1] is None:
        return None, f"{kind} has no weight input"
    activation, weight = node.inputs[0], node.inputs[1]
    if activation.dtype not in FLOAT_TYPES:
        return None, f"activation '{activation.name}' is {activation.dtype}, not float32"
    tensor = constant_tensor(weight)
    if tensor is None:
        return None, f"weight '{weight.name}' is not a constant (both operands are activations)"
    if tensor.dtype not in FLOAT_TYPES:
        return None, f"weight '{weight.name}' is {tensor.dtype}, not float32"
    if tensor.size < MIN_WEIGHT_ELEMENTS:
        return None, (
            f"weight '{weight.name}' has {tensor.size} elements (< {MIN_WEIGHT_ELEMENTS}): "
            "int8 would save less than the quantization steps cost"
        )
    shape = tuple(tensor.shape)
    if kind == "MatMul":
        if len(shape) != 2:
            return None, f"MatMul weight '{weight.name}' has rank {len(shape)}; integer MatMul needs rank 2"
        return QuantSite(node, kind, activation, weight, channel_axis=1), ""
    if kind == "Gemm":
        for attr, default in (("alpha", 1.0), ("beta", 1.0)):
            value = node.attributes.get(attr)
            if value is not None and value.as_float() != default:
                return None, f"Gemm has {attr}={value.as_float()}; only alpha=beta=1 maps to MatMulInteger"
        trans_a = node.attributes.get("transA")
        if trans_a is not None and trans_a.as_int():
            return None, "Gemm transposes its activation (transA=1)"
        trans_b = node.attributes.get("transB")
        axis = 0 if trans_b is not None and trans_b.as_int() else 1
        if len(node.inputs) > 2 and node.inputs[2] is not None:
            bias = constant_tensor(node.inputs[2])
            n = shape[axis]
            if bias is None or tuple(bias.shape) not in ((n,), (1, n)):
                return None, "Gemm bias is not a constant row of the output width"
        return QuantSite(node, kind, activation, weight, channel_axis=axis), ""
    if kind == "Conv":
        if node.op_type == "FusedConv":
            activation_attr = node.attributes.get("activation")
            act = activation_attr.as_string() if activation_attr is not None else ""
            if act != "Relu":
                return None, f"FusedConv with activation {act or 'none'}: only Relu splits off for int8"
            if len(node.inputs) > 3 and node.inputs[3] is not None:
                return None, "FusedConv with a sum input (Z) has no int8 form"
        group = node.attributes.get("group")
        if group is not None and group.as_int() != 1:
            return None, f"grouped Conv (group={group.as_int()}) has no int8 kernel gain on this target"
        return QuantSite(node, kind, activation, weight, channel_axis=0), ""
    # Attention: only the packed QKV projection runs in int8; scores and softmax stay float.
    for index, what in ((4, "past state"), (5, "attention bias"), (6, "past sequence length")):
        if len(node.inputs) > index and node.inputs[index] is not None:
            return None, f"Attention with a {what} input has no QAttention form"
    for attr in ("qkv_hidden_sizes", "rotary_embedding_dim", "do_rotary", "past_present_share_buffer"):
        if attr in node.attributes and (attr != "do_rotary" or node.attributes[attr].as_int()):
            return None, f"Attention attribute {attr} has no QAttention equivalent"
    if len(node.inputs) < 3 or node.inputs[2] is None or constant_tensor(node.inputs[2]) is None:
        return None, "QAttention needs a constant QKV bias"
    return QuantSite(node, kind, activation, weight, channel_axis=1), ""


_KERNEL_CACHE: dict[tuple[str, str], frozenset[str]] = {}
_PROBED = ("MatMulInteger", "ConvInteger", "DynamicQuantizeLinear", "QuantizeLinear", "DequantizeLinear")


def target_int8_kernels(target: object | None) -> frozenset[str]:
    """The integer kernels ``target`` runs: ONNX ops (``MatMulInteger``) found by asking the
    target's ``capability`` about a one-node model, contrib ops (``com.microsoft::QAttention``)
    from its ``supported_fused_ops``. Empty without a target."""
    if target is None:
        return frozenset()
    key = (type(target).__module__ + "." + type(target).__qualname__, repr(target))
    if key not in _KERNEL_CACHE:
        found = {op for op in _PROBED if _claims(target, op)}
        found |= {op for op in target.supported_fused_ops() if op.startswith(CONTRIB + "::")}  # type: ignore[attr-defined]
        _KERNEL_CACHE[key] = frozenset(found)
    return _KERNEL_CACHE[key]


def _claims(target: object, op: str) -> bool:
    model = Model(_probe_model(op))
    try:
        partitions = target.capability(model)  # type: ignore[attr-defined]
    except NotImplementedError:
        return False
    return bool(partitions) and all(p.claimed for p in partitions)


def _probe_model(op: str) -> ir.Model:
    """A one-node model using ``op`` with int8 operands (only its signature matters)."""
    u8 = ir.TensorType(ir.DataType.UINT8)
    f32 = ir.TensorType(ir.DataType.FLOAT)
    if op == "DynamicQuantizeLinear":
        inputs = [ir.Value(name="x", type=f32, shape=ir.Shape([2, 2]))]
        outputs = [ir.Value(name=n) for n in ("y", "s", "z")]
    elif op in ("MatMulInteger", "ConvInteger"):
        shape = [1, 1, 2, 2] if op == "ConvInteger" else [2, 2]
        inputs = [ir.Value(name="a", type=u8, shape=ir.Shape(shape)),
                  ir.Value(name="b", type=u8, shape=ir.Shape(shape))]
        outputs = [ir.Value(name="y")]
    elif op == "QuantizeLinear":
        inputs = [ir.Value(name="x", type=f32, shape=ir.Shape([2])),
                  ir.Value(name="s", type=f32, shape=ir.Shape([]))]
        outputs = [ir.Value(name="y")]
    else:  # DequantizeLinear
        inputs = [ir.Value(name="x", type=u8, shape=ir.Shape([2])),
                  ir.Value(name="s", type=f32, shape=ir.Shape([]))]
        outputs = [ir.Value(name="y")]
    node = ir.node(op, inputs, outputs=outputs, name="probe")
    graph = ir.Graph(inputs, outputs, nodes=[node], opset_imports={"": 17}, name="probe")
    return ir.Model(graph, ir_version=8)
