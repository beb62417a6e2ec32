"""Output shapes of the ONNX Runtime contrib ops that ONNX Runtime's own symbolic shape
inference does not know (QAttention, QGemm, DynamicQuantizeMatMul, MatMulIntegerToFloat,
FusedMatMul, FusedGemm, FusedConv, BiasSoftmax). Without them the tool guesses a rank with
fresh dims and the input's dtype, and every node after them loses its shape.

Each rule maps a node to its output types: ``(elem_type, dims)`` per output, dims as ints
or symbol strings, or ``None`` where the inputs do not say enough.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import onnx

Dims = list[int | str]
OutputType = tuple[int, Dims]


class NodeTypes:
    """What a rule may read about a node: its attributes, and its inputs' shapes and element
    types as symbolic inference knows them (``None`` for an absent or unknown input)."""

    def __init__(
        self,
        node: onnx.NodeProto,
        shape_of: Callable[[int], Dims | None],
        elem_type_of: Callable[[int], int],
    ) -> None:
        self.node = node
        self.shape = shape_of
        self.elem_type = elem_type_of

    def present(self, index: int) -> bool:
        """Whether optional input ``index`` is given."""
        return index < len(self.node.input) and bool(self.node.input[index])

    def attr_int(self, name: str, default: int) -> int:
        """An int attribute of the node."""
        for attr in self.node.attribute:
            if attr.name == name:
                return int(attr.i)
        return default

    def attr_ints(self, name: str) -> list[int] | None:
        """An ints attribute of the node, or None."""
        for attr in self.node.attribute:
            if attr.name == name:
                return [int(v) for v in attr.ints]
        return None


Rule = Callable[[NodeTypes], list[OutputType] | None]

CONTRIB_SHAPE_RULES: dict[str, Rule] = {}


def _rule(*op_types: str) -> Callable[[Rule], Rule]:
    def register(func: Rule) -> Rule:
        for op_type in op_types:
            CONTRIB_SHAPE_RULES[op_type] = func
        return func
    return register


def _matmul_dims(a: Sequence[int | str], b: Sequence[int | str]) -> Dims | None:
    """numpy matmul's output dims; broadcast batch dims keep the non-1 side."""
    if not a or not b:
        return None
    if len(a) == 1 and len(b) == 1:
        return []
    if len(a) == 1:
        return [*b[:-2], b[-1]]
    if len(b) == 1:
        return list(a[:-1])
    batch_a, batch_b = list(a[:-2]), list(b[:-2])
    rank = max(len(batch_a), len(batch_b))
    batch_a = [1] * (rank - len(batch_a)) + batch_a
    batch_b = [1] * (rank - len(batch_b)) + batch_b
    batch = [y if x == 1 else x for x, y in zip(batch_a, batch_b, strict=True)]
    return [*batch, a[-2], b[-1]]


def _transposed(dims: Dims | None, transpose: bool) -> Dims | None:
    if dims is None or not transpose or len(dims) < 2:
        return dims
    return [*dims[:-2], dims[-1], dims[-2]]


@_rule("QAttention")
def _q_attention(node: NodeTypes) -> list[OutputType] | None:
    """input [B, S, H_in] -> output [B, S, v_hidden] in the float type of ``input_scale``;
    present [2, B, heads, past + S, head_size] when asked for."""
    data, weights = node.shape(0), node.shape(1)
    if data is None or len(data) != 3 or weights is None:
        return None
    sizes = node.attr_ints("qkv_hidden_sizes")
    total = weights[-1]
    if sizes is None and not isinstance(total, int):
        return None
    v_hidden = sizes[2] if sizes else total // 3  # type: ignore[operator]
    float_type = node.elem_type(3)
    outputs: list[OutputType] = [(float_type, [data[0], data[1], v_hidden])]
    if len(node.node.output) > 1 and node.node.output[1]:
        heads = max(node.attr_int("num_heads", 1), 1)
        past = node.shape(8) if node.present(8) else None
        length: int | str = data[1]
        if past is not None and len(past) == 5:
            length = _add(past[3], data[1])
        outputs.append((float_type, [2, data[0], heads, length, v_hidden // heads]))
    return outputs


def _add(a: int | str, b: int | str) -> int | str:
    return a + b if isinstance(a, int) and isinstance(b, int) else f"{a}+{b}"


@_rule("DynamicQuantizeMatMul", "MatMulIntegerToFloat")
def _matmul_to_float(node: NodeTypes) -> list[OutputType] | None:
    """A [.., K] x B [K, N] -> float [.., N]; the float type is A's (DynamicQuantizeMatMul)
    or ``a_scale``'s (MatMulIntegerToFloat)."""
    a, b = node.shape(0), node.shape(1)
    dims = _matmul_dims(a, b) if a is not None and b is not None else None
    if dims is None:
        return None
    scale_index = 0 if node.node.op_type == "DynamicQuantizeMatMul" else 2
    return [(node.elem_type(scale_index), dims)]


@_rule("FusedMatMul")
def _fused_matmul(node: NodeTypes) -> list[OutputType] | None:
    """MatMul with optional transposes of A and B (batch transposes are not modelled)."""
    if node.attr_int("transBatchA", 0) or node.attr_int("transBatchB", 0):
        return None
    a = _transposed(node.shape(0), bool(node.attr_int("transA", 0)))
    b = _transposed(node.shape(1), bool(node.attr_int("transB", 0)))
    dims = _matmul_dims(a, b) if a is not None and b is not None else None
    return None if dims is None else [(node.elem_type(0), dims)]


@_rule("FusedGemm", "QGemm")
def _gemm(node: NodeTypes) -> list[OutputType] | None:
    """[M, K] x [K, N] -> [M, N]. QGemm's B is input 3 and its output is float unless
    ``y_scale`` (input 7) asks for a quantized one, in ``y_zero_point``'s type."""
    b_index = 3 if node.node.op_type == "QGemm" else 1
    a, b = node.shape(0), node.shape(b_index)
    if a is None or b is None or len(a) != 2 or len(b) != 2:
        return None
    m = a[1] if node.attr_int("transA", 0) else a[0]
    n = b[0] if node.attr_int("transB", 0) else b[1]
    elem_type = node.elem_type(0)
    if node.node.op_type == "QGemm":
        if not node.present(7):
            elem_type = node.elem_type(1)
        elif node.present(8):
            elem_type = node.elem_type(8)
    return [(elem_type, [m, n])]


@_rule("BiasSoftmax")
def _same_as_input(node: NodeTypes) -> list[OutputType] | None:
    dims = node.shape(0)
    return None if dims is None else [(node.elem_type(0), dims)]


@_rule("FusedConv")
def _fused_conv(node: NodeTypes) -> list[OutputType] | None:
    """Conv's output dims from ``pads``, ``strides``, ``dilations`` and ``auto_pad`` (static
    spatial dims only)."""
    x, w = node.shape(0), node.shape(1)
    if x is None or w is None or len(x) < 3 or len(w) != len(x):
        return None
    spatial = len(x) - 2
    kernel = node.attr_ints("kernel_shape") or list(w[2:])
    strides = node.attr_ints("strides") or [1] * spatial
    dilations = node.attr_ints("dilations") or [1] * spatial
    pads = node.attr_ints("pads") or [0] * (2 * spatial)
    auto_pad = next((a.s.decode() for a in node.node.attribute if a.name == "auto_pad"), "NOTSET")
    out: Dims = [x[0], w[0]]
    for i in range(spatial):
        size, k = x[2 + i], kernel[i]
        if not isinstance(size, int) or not isinstance(k, int):
            return None
        if auto_pad in ("SAME_UPPER", "SAME_LOWER"):
            out.append(-(-size // strides[i]))
        else:
            padded = size if auto_pad == "VALID" else size + pads[i] + pads[i + spatial]
            out.append((padded - dilations[i] * (k - 1) - 1) // strides[i] + 1)
    return [(node.elem_type(0), out)]
