"""Per-op arithmetic for the cost model: how many MACs and other FLOPs a node performs.

Each cost function reads static shapes off a node (``with_static_inputs`` has bound them)
and returns an :class:`OpWork`; bytes moved are counted generically in ``estimate.py``.
Register more with ``@register_op_cost("MyOp", domain="my.domain")``: one function per op
family, in this file or in the module that introduces the op.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

import onnx_ir as ir

OP_CLASSES: tuple[str, ...] = (
    "matmul", "conv", "elementwise", "normalization", "softmax", "reduction",
    "data-movement", "quantization", "other",
)
# How a node touches memory. "kernel": reads every input and writes every output.
# "view": ORT aliases the output to the input (Reshape, Squeeze...): dispatch cost only.
# "free": not executed as a kernel (Shape, Constant, Identity): costs nothing.
EXECUTIONS: tuple[str, ...] = ("kernel", "view", "free")

# FLOPs per element for a transcendental (exp, erf, tanh, log, sqrt...). Vectorised
# polynomial implementations take several FMAs each; 4 is a round convention, uncalibrated.
TRANSCENDENTAL_FLOPS = 4
# GELU, exact (0.5·x·(1+erf(x/√2))) or tanh-approximated: ~4 arithmetic ops + one
# transcendental.
GELU_FLOPS = 4 + TRANSCENDENTAL_FLOPS
# Softmax per element: max-reduce, subtract, exp, sum-reduce, divide.
SOFTMAX_FLOPS = 4 + TRANSCENDENTAL_FLOPS
# LayerNorm per element: mean (1), subtract (1), square-and-sum (2), scale by 1/σ (1),
# γ (1), β (1); the per-row rsqrt is negligible.
LAYERNORM_FLOPS = 7
# RMSNorm (SimplifiedLayerNormalization) per element: square-and-sum (2), scale (1), γ (1).
RMSNORM_FLOPS = 4
# Per attention score: scale, mask add and softmax.
ATTENTION_SCORE_FLOPS = 2 + SOFTMAX_FLOPS


class ShapeUnknown(Exception):
    """A cost function needed a static shape that shape inference could not provide."""


@dataclass
class OpWork:
    """The arithmetic one node performs, per inference.

    ``macs``: multiply-accumulates in dtype class ``dtype``; ``flops``: other arithmetic
    operations (add, compare, exp...), also in ``dtype``; ``other_macs``: MACs run in a
    second dtype class (e.g. QAttention's float attention core after an int8 projection);
    ``op_class``: one of :data:`OP_CLASSES`; ``execution``: one of :data:`EXECUTIONS`;
    ``partial_reads``: indices of inputs the op reads only in part, as many bytes as its
    first output holds (Gather reads the rows it picks, not the whole embedding table).
    """

    macs: int = 0
    flops: int = 0
    dtype: str = "float32"
    op_class: str = "other"
    other_macs: dict[str, int] = field(default_factory=dict)
    execution: str = "kernel"
    partial_reads: tuple[int, ...] = ()


OpCostFunction = Callable[[ir.Node], OpWork]

_OP_COSTS: dict[tuple[str, str], OpCostFunction] = {}


def _normal_domain(domain: str) -> str:
    return "" if domain in ("", "ai.onnx") else domain


def register_op_cost(*op_types: str, domain: str = "") -> Callable[[OpCostFunction], OpCostFunction]:
    """Register ``f(node) -> OpWork`` as the cost function of ``op_types`` in ``domain``.

    A later registration for the same op replaces the earlier one, so a target or a pass
    that introduces an op can also say what it costs.
    """
    if not op_types:
        raise TypeError("register_op_cost needs at least one op type")

    def decorate(func: OpCostFunction) -> OpCostFunction:
        for op_type in op_types:
            _OP_COSTS[(_normal_domain(domain), op_type)] = func
        return func

    return decorate


def cost_function(op_type: str, domain: str = "") -> OpCostFunction | None:
    """The registered cost function of ``domain::op_type``, or ``None``."""
    return _OP_COSTS.get((_normal_domain(domain), op_type))


def op_work(node: ir.Node) -> OpWork | None:
    """The work of ``node``, or ``None`` when no cost function is registered for its op.

    Raises :class:`ShapeUnknown` when a shape the count depends on is not static.
    """
    func = cost_function(node.op_type, node.domain)
    return None if func is None else func(node)


def registered_op_costs() -> list[str]:
    """``Op`` / ``domain::Op`` names that have a cost function, sorted."""
    return sorted(f"{d}::{op}" if d else op for d, op in _OP_COSTS)


# -- dtype classes --------------------------------------------------------------------------
_INT8_CLASS = {
    ir.DataType.INT8, ir.DataType.UINT8, ir.DataType.INT4, ir.DataType.UINT4,
    ir.DataType.INT2, ir.DataType.UINT2, ir.DataType.BOOL,
    ir.DataType.FLOAT8E4M3FN, ir.DataType.FLOAT8E4M3FNUZ, ir.DataType.FLOAT8E5M2,
    ir.DataType.FLOAT8E5M2FNUZ, ir.DataType.FLOAT8E8M0, ir.DataType.FLOAT4E2M1,
}


def dtype_class(dtype: ir.DataType | None) -> str:
    """The throughput/energy class arithmetic on ``dtype`` runs in.

    8-bit and narrower types (and bool) run as ``int8``; float16 and bfloat16 as
    themselves; everything else (float32, float64, wider integers) as ``float32``, a
    stand-in for the device's 32-bit vector ALUs.
    """
    if dtype == ir.DataType.FLOAT16:
        return "float16"
    if dtype == ir.DataType.BFLOAT16:
        return "bfloat16"
    if dtype in _INT8_CLASS:
        return "int8"
    return "float32"


# -- shape helpers ----------------------------------------------------------------------
def static_shape(value: ir.Value | None) -> tuple[int, ...] | None:
    """The shape of ``value`` when every dim is a known int, else ``None``."""
    if value is None or value.shape is None:
        return None
    dims = value.shape.dims
    if all(isinstance(d, int) for d in dims):
        return tuple(dims)
    return None


def _shape(node: ir.Node, index: int, *, output: bool = False) -> tuple[int, ...]:
    values = node.outputs if output else node.inputs
    value = values[index] if index < len(values) else None
    shape = static_shape(value)
    if shape is None:
        where = "output" if output else "input"
        raise ShapeUnknown(f"{node.op_type} {where} {index} has no static shape")
    return shape


def _maybe_shape(node: ir.Node, index: int) -> tuple[int, ...] | None:
    return static_shape(node.inputs[index]) if index < len(node.inputs) else None


def _present(node: ir.Node, index: int) -> bool:
    return index < len(node.inputs) and node.inputs[index] is not None


def _numel(shape: Sequence[int]) -> int:
    return math.prod(shape)


def _out_numel(node: ir.Node, index: int = 0) -> int:
    return _numel(_shape(node, index, output=True))


def _attr_int(node: ir.Node, name: str, default: int) -> int:
    attr = node.attributes.get(name)
    return default if attr is None else attr.as_int()


def _attr_ints(node: ir.Node, name: str) -> list[int] | None:
    attr = node.attributes.get(name)
    return None if attr is None else list(attr.as_ints())


def _attr_float(node: ir.Node, name: str, default: float) -> float:
    attr = node.attributes.get(name)
    return default if attr is None else attr.as_float()


def _attr_str(node: ir.Node, name: str, default: str) -> str:
    attr = node.attributes.get(name)
    if attr is None:
        return default
    value = attr.as_string()
    return value.decode() if isinstance(value, bytes) else value


def _dtype_of(values: Iterable[ir.Value | None]) -> str:
    """The class of the first floating-point value, else of the first typed value."""
    typed = [v.dtype for v in values if v is not None and v.dtype is not None]
    for dtype in typed:
        if dtype.is_floating_point():
            return dtype_class(dtype)
    return dtype_class(typed[0]) if typed else "float32"


def _node_dtype(node: ir.Node) -> str:
    return _dtype_of([*node.inputs, *node.outputs])


def _broadcast(a: Sequence[int], b: Sequence[int]) -> list[int]:
    rank = max(len(a), len(b))
    a = [1] * (rank - len(a)) + list(a)
    b = [1] * (rank - len(b)) + list(b)
    return [x if y == 1 else y if x == 1 else max(x, y) for x, y in zip(a, b, strict=True)]


def matmul_macs(
    a_shape: Sequence[int], b_shape: Sequence[int], *, trans_a: bool = False, trans_b: bool = False
) -> int:
    """MACs of ``A @ B`` with numpy matmul semantics: prod(broadcast batch) · M · K · N."""
    a, b = list(a_shape), list(b_shape)
    if not a or not b:
        return 0
    if len(a) == 1:
        a = [1, a[0]]
    elif trans_a:
        a[-2], a[-1] = a[-1], a[-2]
    if len(b) == 1:
        b = [b[0], 1]
    elif trans_b:
        b[-2], b[-1] = b[-1], b[-2]
    m, k, n = a[-2], a[-1], b[-1]
    return _numel(_broadcast(a[:-2], b[:-2])) * m * k * n


def conv_output_spatial(node: ir.Node, x_shape: Sequence[int], w_shape: Sequence[int]) -> list[int]:
    """Output spatial dims of a Conv-like node from ``pads``/``strides``/``dilations``/``auto_pad``."""
    spatial = len(x_shape) - 2
    kernel = _attr_ints(node, "kernel_shape") or list(w_shape[2:])
    strides = _attr_ints(node, "strides") or [1] * spatial
    dilations = _attr_ints(node, "dilations") or [1] * spatial
    pads = _attr_ints(node, "pads") or [0] * (2 * spatial)
    auto_pad = _attr_str(node, "auto_pad", "NOTSET")
    out = []
    for i in range(spatial):
        size, k, s, d = x_shape[2 + i], kernel[i], strides[i], dilations[i]
        if auto_pad in ("SAME_UPPER", "SAME_LOWER"):
            out.append(-(-size // s))
        else:
            padded = size if auto_pad == "VALID" else size + pads[i] + pads[i + spatial]
            out.append((padded - d * (k - 1) - 1) // s + 1)
    return out


# -- matmul family ----------------------------------------------------------------------
@register_op_cost("MatMul")
def _matmul(node: ir.Node) -> OpWork:
    macs = matmul_macs(_shape(node, 0), _shape(node, 1))
    return OpWork(macs=macs, dtype=_dtype_of(node.inputs[:1]), op_class="matmul")


@register_op_cost("FusedMatMul", domain="com.microsoft")
def _fused_matmul(node: ir.Node) -> OpWork:
    macs = matmul_macs(
        _shape(node, 0), _shape(node, 1),
        trans_a=bool(_attr_int(node, "transA", 0)), trans_b=bool(_attr_int(node, "transB", 0)),
    )
    flops = _out_numel(node) if _attr_float(node, "alpha", 1.0) != 1.0 else 0
    return OpWork(macs=macs, flops=flops, dtype=_dtype_of(node.inputs[:1]), op_class="matmul")


def _gemm_mkn(node: ir.Node, a_index: int, b_index: int) -> tuple[int, int, int]:
    a, b = _shape(node, a_index), _shape(node, b_index)
    m, k = (a[1], a[0]) if _attr_int(node, "transA", 0) else (a[0], a[1])
    n = b[0] if _attr_int(node, "transB", 0) else b[1]
    return m, k, n


@register_op_cost("Gemm")
@register_op_cost("FusedGemm", domain="com.microsoft")
def _gemm(node: ir.Node) -> OpWork:
    m, k, n = _gemm_mkn(node, 0, 1)
    flops = 0
    if _present(node, 2) and _attr_float(node, "beta", 1.0) != 0.0:
        flops += m * n  # + C
    if _attr_float(node, "alpha", 1.0) != 1.0:
        flops += m * n
    if node.op_type == "FusedGemm":
        flops += m * n  # the fused activation
    return OpWork(macs=m * k * n, flops=flops, dtype=_dtype_of(node.inputs[:1]), op_class="matmul")


@register_op_cost("MatMulInteger")
def _matmul_integer(node: ir.Node) -> OpWork:
    return OpWork(macs=matmul_macs(_shape(node, 0), _shape(node, 1)), dtype="int8", op_class="matmul")


@register_op_cost("QLinearMatMul")
def _qlinear_matmul(node: ir.Node) -> OpWork:
    # Requantising each int32 accumulator: scale and add the zero point.
    macs = matmul_macs(_shape(node, 0), _shape(node, 3))
    return OpWork(macs=macs, flops=2 * _out_numel(node), dtype="int8", op_class="matmul")


@register_op_cost("MatMulIntegerToFloat", domain="com.microsoft")
def _matmul_integer_to_float(node: ir.Node) -> OpWork:
    macs = matmul_macs(_shape(node, 0), _shape(node, 1))
    flops = _out_numel(node) * (2 if _present(node, 6) else 1)
    return OpWork(macs=macs, flops=flops, dtype="int8", op_class="matmul")


@register_op_cost("DynamicQuantizeMatMul", domain="com.microsoft")
def _dynamic_quantize_matmul(node: ir.Node) -> OpWork:
    a = _shape(node, 0)
    # Quantising A (min/max + scale/round) runs in float; the product in int8.
    flops = 5 * _numel(a) + _out_numel(node) * (2 if _present(node, 4) else 1)
    return OpWork(macs=matmul_macs(a, _shape(node, 1)), flops=flops, dtype="int8", op_class="matmul")


@register_op_cost("QGemm", domain="com.microsoft")
def _qgemm(node: ir.Node) -> OpWork:
    m, k, n = _gemm_mkn(node, 0, 3)
    flops = 2 * m * n + (m * n if _present(node, 6) else 0)
    return OpWork(macs=m * k * n, flops=flops, dtype="int8", op_class="matmul")


@register_op_cost("MatMulNBits", domain="com.microsoft")
def _matmul_nbits(node: ir.Node) -> OpWork:
    """Weight-only block-quantized MatMul: A [..., K] · W [K, N] with W stored in ``bits``
    per value (the packed bytes are read as B's size). Every weight is dequantized once per
    call (K·N FLOPs); the product runs in A's float type, or in int8 at ``accuracy_level``
    4, where A is first quantized per block (2 FLOPs per element)."""
    a = _shape(node, 0)
    n = _attr_int(node, "N", 0)
    k = _attr_int(node, "K", a[-1] if a else 0)
    if n <= 0:
        raise ShapeUnknown("MatMulNBits has no N attribute")
    rows = _numel(a) // max(a[-1], 1)
    flops = k * n + (rows * n if _present(node, 5) else 0)  # dequantize W (+ bias)
    if _attr_int(node, "accuracy_level", 0) == 4:
        return OpWork(macs=rows * k * n, flops=flops + 2 * _numel(a), dtype="int8", op_class="matmul")
    return OpWork(macs=rows * k * n, flops=flops, dtype=_dtype_of(node.inputs[:1]), op_class="matmul")


@register_op_cost("GatherBlockQuantized", domain="com.microsoft")
def _gather_block_quantized(node: ir.Node) -> OpWork:
    # Dequantizing each gathered value: subtract the zero point, multiply by the scale.
    return OpWork(flops=2 * _out_numel(node), dtype=_dtype_of(node.outputs[:1]), op_class="data-movement",
                  partial_reads=(0,))


@register_op_cost("Einsum")
def _einsum(node: ir.Node) -> OpWork:
    equation = _attr_str(node, "equation", "").replace(" ", "")
    lhs, _, rhs = equation.partition("->")
    terms = lhs.split(",")
    sizes: dict[str, int] = {}
    for i, term in enumerate(terms):
        shape = _shape(node, i)
        letters = term.replace("...", "")
        explicit = shape[len(shape) - len(letters):] if "..." in term else shape
        if len(letters) > len(shape) or ("..." not in term and len(letters) != len(shape)):
            raise ShapeUnknown(f"Einsum term '{term}' does not match input {i} rank")
        for letter, size in zip(letters, explicit, strict=True):
            sizes[letter] = max(sizes.get(letter, 1), size)
    if not rhs and "->" not in equation:
        counts = {c: lhs.count(c) for c in sizes}
        rhs = "".join(sorted(c for c, n in counts.items() if n == 1))
    contracted = math.prod(size for letter, size in sizes.items() if letter not in rhs)
    out = _out_numel(node)
    if len(terms) == 1:
        return OpWork(flops=out * contracted if contracted > 1 else 0, dtype=_node_dtype(node),
                      op_class="reduction" if contracted > 1 else "data-movement")
    if contracted == 1:
        return OpWork(flops=out * (len(terms) - 1), dtype=_node_dtype(node), op_class="elementwise")
    return OpWork(macs=out * contracted * (len(terms) - 1), dtype=_node_dtype(node), op_class="matmul")


# -- convolution family -------------------------------------------------------------------
def _conv_macs(node: ir.Node, x_index: int, w_index: int) -> tuple[int, int]:
    """(MACs, output elements) of a Conv-like node: N·C_out·prod(out)·(C_in/groups)·prod(k)."""
    w = _shape(node, w_index)
    y = static_shape(node.outputs[0]) if node.outputs else None
    if y is None:
        x = _shape(node, x_index)
        y = (x[0], w[0], *conv_output_spatial(node, x, w))
    return _numel(y) * _numel(w[1:]), _numel(y)


@register_op_cost("Conv")
@register_op_cost("FusedConv", domain="com.microsoft")
def _conv(node: ir.Node) -> OpWork:
    macs, out = _conv_macs(node, 0, 1)
    flops = out if _present(node, 2) else 0  # bias
    if node.op_type == "FusedConv":
        flops += out * (2 if _present(node, 3) else 1)  # activation (and the fused Add)
    return OpWork(macs=macs, flops=flops, dtype=_dtype_of(node.inputs[:1]), op_class="conv")


@register_op_cost("ConvInteger")
def _conv_integer(node: ir.Node) -> OpWork:
    macs, _ = _conv_macs(node, 0, 1)
    return OpWork(macs=macs, dtype="int8", op_class="conv")


@register_op_cost("QLinearConv")
def _qlinear_conv(node: ir.Node) -> OpWork:
    macs, out = _conv_macs(node, 0, 3)
    flops = out * (3 if _present(node, 8) else 2)  # bias, scale, zero point
    return OpWork(macs=macs, flops=flops, dtype="int8", op_class="conv")


@register_op_cost("ConvTranspose")
def _conv_transpose(node: ir.Node) -> OpWork:
    # Every input element scatters into C_out/groups · prod(kernel) outputs.
    x, w = _shape(node, 0), _shape(node, 1)
    macs = _numel(x) * _numel(w[1:])
    flops = 0
    if _present(node, 2):
        y = static_shape(node.outputs[0])
        flops = _numel(y) if y is not None else 0
    return OpWork(macs=macs, flops=flops, dtype=_dtype_of(node.inputs[:1]), op_class="conv")


# -- elementwise ----------------------------------------------------------------------
_ELEMENTWISE_FLOPS: dict[str, int] = {
    **dict.fromkeys(
        ["Add", "Sub", "Mul", "Div", "Neg", "Abs", "Relu", "Where", "Equal", "Greater",
         "Less", "GreaterOrEqual", "LessOrEqual", "IsNaN", "IsInf", "And", "Or", "Xor", "Not",
         "Sign", "Floor", "Ceil", "Round", "Mod", "BitShift", "BitwiseAnd", "BitwiseOr",
         "BitwiseXor", "BitwiseNot", "Reciprocal", "PRelu", "ThresholdedRelu", "Shrink"],
        1,
    ),
    **dict.fromkeys(["Clip", "LeakyRelu", "Celu"], 2),
    "HardSigmoid": 3,
    "HardSwish": 4,
    **dict.fromkeys(
        ["Exp", "Log", "Sqrt", "Erf", "Tanh", "Sigmoid", "Pow", "Sin", "Cos", "Tan", "Asin",
         "Acos", "Atan", "Sinh", "Cosh", "Asinh", "Acosh", "Atanh", "Softsign"],
        TRANSCENDENTAL_FLOPS,
    ),
    **dict.fromkeys(["Elu", "Selu"], 2 + TRANSCENDENTAL_FLOPS),
    "Softplus": 2 * TRANSCENDENTAL_FLOPS,
    "Mish": 3 * TRANSCENDENTAL_FLOPS,
    "Gelu": GELU_FLOPS,
}
_VARIADIC = {"Max", "Min", "Sum", "Mean"}


@register_op_cost(*_ELEMENTWISE_FLOPS, *_VARIADIC)
def _elementwise(node: ir.Node) -> OpWork:
    if node.op_type in _VARIADIC:
        inputs = sum(1 for v in node.inputs if v is not None)
        per_element = max(inputs - 1, 1) + (1 if node.op_type == "Mean" else 0)
    else:
        per_element = _ELEMENTWISE_FLOPS[node.op_type]
    return OpWork(flops=per_element * _out_numel(node), dtype=_node_dtype(node), op_class="elementwise")


@register_op_cost("Gelu", "FastGelu", "BiasGelu", "QuickGelu", "BiasAdd", domain="com.microsoft")
def _contrib_activation(node: ir.Node) -> OpWork:
    per_element = {
        "Gelu": GELU_FLOPS,
        "FastGelu": GELU_FLOPS + (1 if _present(node, 1) else 0),
        "BiasGelu": GELU_FLOPS + 1,
        "QuickGelu": 2 + TRANSCENDENTAL_FLOPS,  # x·sigmoid(αx)
        "BiasAdd": 2,  # x + bias + skip
    }[node.op_type]
    return OpWork(flops=per_element * _out_numel(node), dtype=_node_dtype(node), op_class="elementwise")


# -- normalization and softmax --------------------------------------------------------------
@register_op_cost("BatchNormalization")
def _batch_norm(node: ir.Node) -> OpWork:
    # Inference BN folds into one scale and one shift per channel.
    return OpWork(flops=2 * _out_numel(node), dtype=_node_dtype(node), op_class="normalization")


@register_op_cost("LayerNormalization", "InstanceNormalization", "GroupNormalization",
                  "MeanVarianceNormalization")
def _layer_norm(node: ir.Node) -> OpWork:
    return OpWork(flops=LAYERNORM_FLOPS * _numel(_shape(node, 0)), dtype=_node_dtype(node),
                  op_class="normalization")


@register_op_cost("LpNormalization")
def _lp_norm(node: ir.Node) -> OpWork:
    return OpWork(flops=3 * _numel(_shape(node, 0)), dtype=_node_dtype(node), op_class="normalization")


@register_op_cost("SimplifiedLayerNormalization", "RMSNormalization")
@register_op_cost("SimplifiedLayerNormalization", domain="com.microsoft")
def _rms_norm(node: ir.Node) -> OpWork:
    return OpWork(flops=RMSNORM_FLOPS * _numel(_shape(node, 0)), dtype=_node_dtype(node),
                  op_class="normalization")


@register_op_cost("SkipLayerNormalization", "SkipSimplifiedLayerNormalization", domain="com.microsoft")
def _skip_layer_norm(node: ir.Node) -> OpWork:
    norm = LAYERNORM_FLOPS if node.op_type == "SkipLayerNormalization" else RMSNORM_FLOPS
    bias_index = 4 if node.op_type == "SkipLayerNormalization" else 3
    per_element = norm + 1 + (1 if _present(node, bias_index) else 0)  # + skip (+ bias)
    return OpWork(flops=per_element * _numel(_shape(node, 0)), dtype=_node_dtype(node),
                  op_class="normalization")


@register_op_cost("EmbedLayerNormalization", domain="com.microsoft")
def _embed_layer_norm(node: ir.Node) -> OpWork:
    # Three table lookups summed (2 adds), then LayerNorm. Like Gather, each lookup reads
    # the rows it picks, at most as many bytes as the output holds, not the whole table
    # (all-MiniLM-L6-v2's word table is 47 MB; the rows of 128 tokens are 196 KB).
    out = _out_numel(node)
    return OpWork(flops=(2 + LAYERNORM_FLOPS) * out, dtype=_dtype_of(node.inputs[2:3]),
                  op_class="normalization", partial_reads=(2, 3, 4))


@register_op_cost("Softmax", "LogSoftmax")
def _softmax(node: ir.Node) -> OpWork:
    return OpWork(flops=SOFTMAX_FLOPS * _out_numel(node), dtype=_node_dtype(node), op_class="softmax")


@register_op_cost("BiasSoftmax", domain="com.microsoft")
def _bias_softmax(node: ir.Node) -> OpWork:
    return OpWork(flops=(SOFTMAX_FLOPS + 1) * _out_numel(node), dtype=_node_dtype(node),
                  op_class="softmax")


@register_op_cost("Hardmax")
def _hardmax(node: ir.Node) -> OpWork:
    return OpWork(flops=_out_numel(node), dtype=_node_dtype(node), op_class="softmax")


# -- reductions and pooling -----------------------------------------------------------------
_REDUCTION_FLOPS = {
    "ReduceSum": 1, "ReduceMax": 1, "ReduceMin": 1, "ReduceProd": 1, "ReduceMean": 1,
    "ReduceL1": 2, "ReduceL2": 2, "ReduceSumSquare": 2, "ReduceLogSum": 1,
    "ReduceLogSumExp": 1 + TRANSCENDENTAL_FLOPS, "ArgMax": 1, "ArgMin": 1, "CumSum": 1,
}


@register_op_cost(*_REDUCTION_FLOPS)
def _reduction(node: ir.Node) -> OpWork:
    flops = _REDUCTION_FLOPS[node.op_type] * _numel(_shape(node, 0))
    if node.op_type in ("ReduceMean", "ReduceL2", "ReduceLogSum", "ReduceLogSumExp"):
        out = static_shape(node.outputs[0])
        flops += _numel(out) if out is not None else 0  # the final divide / sqrt / log
    return OpWork(flops=flops, dtype=_dtype_of(node.inputs[:1]), op_class="reduction")


@register_op_cost("MaxPool", "AveragePool", "LpPool")
def _pool(node: ir.Node) -> OpWork:
    kernel = _attr_ints(node, "kernel_shape")
    if kernel is None:
        raise ShapeUnknown(f"{node.op_type} has no kernel_shape")
    per_output = _numel(kernel) * (2 if node.op_type == "LpPool" else 1)
    return OpWork(flops=_out_numel(node) * per_output, dtype=_dtype_of(node.inputs[:1]),
                  op_class="reduction")


@register_op_cost("GlobalAveragePool", "GlobalMaxPool", "GlobalLpPool")
def _global_pool(node: ir.Node) -> OpWork:
    return OpWork(flops=_numel(_shape(node, 0)), dtype=_dtype_of(node.inputs[:1]), op_class="reduction")


# -- data movement ----------------------------------------------------------------------
_MOVES = [
    "Transpose", "Gather", "GatherElements", "GatherND", "Concat", "Slice", "Split", "Expand",
    "Cast", "CastLike", "Tile", "Pad", "ScatterND", "ScatterElements", "Scatter", "Range",
    "ConstantOfShape", "OneHot", "Trilu", "DepthToSpace", "SpaceToDepth", "ReverseSequence",
    "Compress", "NonZero", "EyeLike", "CenterCropPad", "SplitToSequence",
]
_VIEWS = ["Reshape", "Squeeze", "Unsqueeze", "Flatten", "Dropout"]
_FREE = ["Shape", "Size", "Constant", "Identity"]


# Ops that read only the selected part of their data input.
_SELECTS = {"Gather", "GatherElements", "GatherND", "Slice", "Compress"}


@register_op_cost(*_MOVES)
def _data_movement(node: ir.Node) -> OpWork:
    partial = (0,) if node.op_type in _SELECTS else ()
    return OpWork(dtype=_node_dtype(node), op_class="data-movement", partial_reads=partial)


@register_op_cost(*_VIEWS)
def _view(node: ir.Node) -> OpWork:
    return OpWork(dtype=_node_dtype(node), op_class="data-movement", execution="view")


@register_op_cost(*_FREE)
def _free(node: ir.Node) -> OpWork:
    return OpWork(dtype=_node_dtype(node), op_class="data-movement", execution="free")


@register_op_cost("Resize", "Upsample")
def _resize(node: ir.Node) -> OpWork:
    mode = _attr_str(node, "mode", "nearest")
    # Linear interpolation blends 2 neighbours per spatial axis; cubic 4.
    per_output = {"nearest": 0, "linear": 4, "cubic": 16}.get(mode, 4)
    flops = per_output * _out_numel(node) if per_output else 0
    return OpWork(flops=flops, dtype=_dtype_of(node.inputs[:1]), op_class="data-movement")


# -- quantization -----------------------------------------------------------------------
@register_op_cost("QuantizeLinear")
@register_op_cost("QuantizeLinear", domain="com.microsoft")
def _quantize(node: ir.Node) -> OpWork:
    # Divide by scale, round, add zero point (saturation is free in the same instruction).
    return OpWork(flops=3 * _numel(_shape(node, 0)), dtype=_dtype_of(node.inputs[:1]),
                  op_class="quantization")


@register_op_cost("DequantizeLinear")
@register_op_cost("DequantizeLinear", domain="com.microsoft")
def _dequantize(node: ir.Node) -> OpWork:
    return OpWork(flops=2 * _out_numel(node), dtype=_dtype_of(node.outputs[:1]), op_class="quantization")


@register_op_cost("DynamicQuantizeLinear")
def _dynamic_quantize(node: ir.Node) -> OpWork:
    # min and max over the tensor (2), then quantize (3).
    return OpWork(flops=5 * _numel(_shape(node, 0)), dtype=_dtype_of(node.inputs[:1]),
                  op_class="quantization")


@register_op_cost("QLinearAdd", "QLinearMul", domain="com.microsoft")
def _qlinear_binary(node: ir.Node) -> OpWork:
    # Dequantize both operands, combine, requantize.
    return OpWork(flops=7 * _out_numel(node), dtype="int8", op_class="elementwise")


# -- attention --------------------------------------------------------------------------
@register_op_cost("Attention", domain="com.microsoft")
def _ms_attention(node: ir.Node) -> OpWork:
    macs, flops, _ = _packed_attention(node)
    return OpWork(macs=macs, flops=flops, dtype=_dtype_of(node.inputs[:1]), op_class="matmul")


@register_op_cost("QAttention", domain="com.microsoft")
def _q_attention(node: ir.Node) -> OpWork:
    # The QKV projection runs in int8; scores and the weighted sum run in float.
    macs, flops, core = _packed_attention(node, past_index=8)
    projection = macs - core
    return OpWork(macs=projection, flops=flops, dtype="int8", op_class="matmul",
                  other_macs={"float32": core})


def _packed_attention(node: ir.Node, past_index: int = 4) -> tuple[int, int, int]:
    """(total MACs, FLOPs, attention-core MACs) of ORT's Attention / QAttention.

    input [B, S, H_in] · weights [H_in, q+k+v] + bias, then per head
    softmax(QKᵀ/√d + mask)·V over L = past + S positions.
    """
    b, s, hidden_in = _shape(node, 0)
    weights = _shape(node, 1)
    total = weights[-1]
    sizes = _attr_ints(node, "qkv_hidden_sizes") or [total // 3] * 3
    q_hidden, _, v_hidden = sizes
    heads = max(_attr_int(node, "num_heads", 1), 1)
    past = _maybe_shape(node, past_index) if _present(node, past_index) else None
    length = s + (past[3] if past is not None and len(past) == 5 else 0)
    projection = b * s * hidden_in * total
    core = b * s * length * q_hidden + b * s * length * v_hidden
    flops = b * s * total + ATTENTION_SCORE_FLOPS * b * heads * s * length
    return projection + core, flops, core


@register_op_cost("MultiHeadAttention", domain="com.microsoft")
def _multi_head_attention(node: ir.Node) -> OpWork:
    heads = max(_attr_int(node, "num_heads", 1), 1)
    q = _shape(node, 0)
    key = _maybe_shape(node, 1) if _present(node, 1) else None
    value = _maybe_shape(node, 2) if _present(node, 2) else None
    if len(q) == 5:  # packed QKV [B, S, N, 3, H]
        b, s, n, _, h = q
        q_hidden = v_hidden = n * h
        length = s
    else:
        b, s, q_hidden = q
        if key is None:
            raise ShapeUnknown("MultiHeadAttention key has no static shape")
        if len(key) == 5:  # packed KV [B, L, N, 2, H]
            length, v_hidden = key[1], key[2] * key[4]
        elif len(key) == 4:  # [B, N, L, H]
            length = key[2]
            v_hidden = value[1] * value[3] if value is not None and len(value) == 4 else q_hidden
        else:  # [B, L, D]
            length = key[1]
            v_hidden = value[-1] if value is not None else q_hidden
    past = _maybe_shape(node, 6) if _present(node, 6) else None
    if past is not None and len(past) == 4:
        length += past[2]
    macs = b * s * length * (q_hidden + v_hidden)
    flops = ATTENTION_SCORE_FLOPS * b * heads * s * length
    if _present(node, 3):
        flops += b * s * q_hidden + 2 * b * length * v_hidden  # bias on Q, K and V
    return OpWork(macs=macs, flops=flops, dtype=_dtype_of(node.inputs[:1]), op_class="matmul")


@register_op_cost("Attention")
def _onnx_attention(node: ir.Node) -> OpWork:
    """ONNX opset-23 Attention: Q, K, V as [B, N, S, H] or [B, S, N·H]."""
    q, k, v = _shape(node, 0), _shape(node, 1), _shape(node, 2)
    if len(q) == 4:
        b, heads, s, h_qk = q
        length, h_v = k[2], v[3]
        q_hidden, v_hidden = heads * h_qk, v[1] * h_v
    else:
        b, s, q_hidden = q
        heads = max(_attr_int(node, "q_num_heads", 1), 1)
        length, v_hidden = k[1], v[2] * heads // max(_attr_int(node, "kv_num_heads", heads), 1)
    past = _maybe_shape(node, 4) if _present(node, 4) else None
    if past is not None and len(past) == 4:
        length += past[2]
    macs = b * s * length * (q_hidden + v_hidden)
    flops = ATTENTION_SCORE_FLOPS * b * heads * s * length
    return OpWork(macs=macs, flops=flops, dtype=_dtype_of(node.inputs[:1]), op_class="matmul")


@register_op_cost("GroupQueryAttention", domain="com.microsoft")
def _group_query_attention(node: ir.Node) -> OpWork:
    """ORT's GroupQueryAttention: ``num_heads`` query heads share ``kv_num_heads`` K/V
    heads; query [B, S, N·H] (or Q, K and V packed [B, S, (N + 2·N_kv)·H] when key is
    absent); past key/value [B, N_kv, P, H] — the KV cache, read in full by the generic
    byte count — so every query attends over T = P + S positions: QKᵀ and AV are
    B·S·T·N·H MACs each. ``do_rotary`` adds the rotation of Q and the new K (3 FLOPs per
    element)."""
    heads = max(_attr_int(node, "num_heads", 1), 1)
    kv_heads = max(_attr_int(node, "kv_num_heads", heads), 1)
    b, s, width = _shape(node, 0)
    packed = not _present(node, 1)
    head_size = width // (heads + 2 * kv_heads) if packed else width // heads
    past = _maybe_shape(node, 3) if _present(node, 3) else None
    total = s + (past[2] if past is not None and len(past) == 4 else 0)
    macs = 2 * b * s * total * heads * head_size
    flops = ATTENTION_SCORE_FLOPS * b * heads * s * total
    if _attr_int(node, "do_rotary", 0):
        flops += 3 * b * s * (heads + kv_heads) * head_size
    return OpWork(macs=macs, flops=flops, dtype=_dtype_of(node.inputs[:1]), op_class="matmul")


@register_op_cost("RotaryEmbedding")
@register_op_cost("RotaryEmbedding", domain="com.microsoft")
def _rotary(node: ir.Node) -> OpWork:
    # x·cos + rotate(x)·sin per element.
    return OpWork(flops=3 * _numel(_shape(node, 0)), dtype=_node_dtype(node), op_class="elementwise")
