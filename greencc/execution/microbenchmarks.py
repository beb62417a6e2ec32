"""The calibration suites: small ONNX models, one per op class the cost model prices
(MatMul/Gemm across shapes, batched MatMul, Conv, elementwise, reductions, Softmax,
LayerNorm, int8 MatMulInteger/ConvInteger, and the contrib kernels ONNX Runtime fuses to),
at sizes from overhead-bound to DRAM-sized; and the quick subset a first use runs.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import onnx
import onnx.helper as oh
from onnx import TensorProto

_OPSET = 18


# --------------------------------------------------------------------------------------
# Micro-benchmarks
# --------------------------------------------------------------------------------------
@dataclass(frozen=True)
class MicroBenchmark:
    """One calibration workload: a small ONNX model exercising ``op_class`` in ``dtype``."""

    name: str
    op_class: str
    dtype: str
    build: Callable[[], onnx.ModelProto]


def _tensor(name: str, dtype: int, shape: Sequence[int | str]) -> onnx.ValueInfoProto:
    return oh.make_tensor_value_info(name, dtype, list(shape))


def _const(name: str, array: np.ndarray) -> onnx.TensorProto:
    return onnx.numpy_helper.from_array(array, name)


def _model(nodes: list[onnx.NodeProto], inputs: list[onnx.ValueInfoProto],
           outputs: list[onnx.ValueInfoProto], inits: Sequence[onnx.TensorProto] = (),
           contrib: bool = False, opset: int = _OPSET) -> onnx.ModelProto:
    graph = oh.make_graph(nodes, "bench", inputs, outputs, list(inits))
    opsets = [oh.make_opsetid("", opset)]
    if contrib:
        opsets.append(oh.make_opsetid("com.microsoft", 1))
    return oh.make_model(graph, opset_imports=opsets, ir_version=9)


def _rand(shape: Sequence[int], dtype: Any = np.float32, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    if np.dtype(dtype).kind in "iu":
        info = np.iinfo(dtype)
        return rng.integers(info.min, info.max, size=shape, endpoint=True).astype(dtype)
    return (rng.standard_normal(shape) * 0.1).astype(dtype)


F = TensorProto.FLOAT


def _rows(elements: int, width: int = 1024) -> list[int]:
    """A 2-D shape of ``elements`` (rows of ``width``): ONNX's shape inference with data
    propagation, which the cost model runs, takes seconds on a 1-D tensor of millions of
    elements (it treats any 1-D tensor as a possible shape) and none on the same 2-D one."""
    return [elements // width, width] if elements >= width else [elements]


def _matmul(m: int, k: int, n: int, batch: Sequence[int] = ()) -> Callable[[], onnx.ModelProto]:
    def build() -> onnx.ModelProto:
        if batch:  # activations on both sides, as attention's QKᵀ and ·V
            return _model([oh.make_node("MatMul", ["a", "b"], ["y"])],
                          [_tensor("a", F, [*batch, m, k]), _tensor("b", F, [*batch, k, n])],
                          [_tensor("y", F, [*batch, m, n])])
        return _model([oh.make_node("MatMul", ["a", "w"], ["y"])], [_tensor("a", F, [m, k])],
                      [_tensor("y", F, [m, n])], [_const("w", _rand([k, n]))])
    return build


def _gemm(m: int, k: int, n: int) -> Callable[[], onnx.ModelProto]:
    def build() -> onnx.ModelProto:
        return _model([oh.make_node("Gemm", ["a", "w", "b"], ["y"], transB=1)], [_tensor("a", F, [m, k])],
                      [_tensor("y", F, [m, n])], [_const("w", _rand([n, k])), _const("b", _rand([n]))])
    return build


def _conv(n: int, c_in: int, c_out: int, size: int, kernel: int = 3) -> Callable[[], onnx.ModelProto]:
    def build() -> onnx.ModelProto:
        pad = kernel // 2
        return _model(
            [oh.make_node("Conv", ["x", "w", "b"], ["y"], pads=[pad] * 4, kernel_shape=[kernel, kernel])],
            [_tensor("x", F, [n, c_in, size, size])], [_tensor("y", F, [n, c_out, size, size])],
            [_const("w", _rand([c_out, c_in, kernel, kernel])), _const("b", _rand([c_out]))])
    return build


def _unary(op: str, shape: Sequence[int], chain: int = 1, domain: str = "",
           out_type: int = TensorProto.FLOAT) -> Callable[[], onnx.ModelProto]:
    def build() -> onnx.ModelProto:
        nodes = []
        previous = "x"
        for i in range(chain):
            out = "y" if i == chain - 1 else f"t{i}"
            nodes.append(oh.make_node(op, [previous], [out], domain=domain))
            previous = out
        return _model(nodes, [_tensor("x", F, shape)], [_tensor("y", out_type, shape)], contrib=bool(domain))
    return build


def _binary(op: str, shape: Sequence[int]) -> Callable[[], onnx.ModelProto]:
    def build() -> onnx.ModelProto:
        return _model([oh.make_node(op, ["a", "b"], ["y"])], [_tensor("a", F, shape), _tensor("b", F, shape)],
                      [_tensor("y", F, shape)])
    return build


def _reduce(op: str, shape: Sequence[int]) -> Callable[[], onnx.ModelProto]:
    def build() -> onnx.ModelProto:
        out_shape = [*shape[:-1], 1]
        return _model([oh.make_node(op, ["x", "axes"], ["y"], keepdims=1)], [_tensor("x", F, shape)],
                      [_tensor("y", F, out_shape)], [_const("axes", np.array([-1], np.int64))])
    return build


def _softmax(shape: Sequence[int]) -> Callable[[], onnx.ModelProto]:
    def build() -> onnx.ModelProto:
        return _model([oh.make_node("Softmax", ["x"], ["y"], axis=-1)], [_tensor("x", F, shape)],
                      [_tensor("y", F, shape)])
    return build


def _layernorm(rows: int, hidden: int) -> Callable[[], onnx.ModelProto]:
    def build() -> onnx.ModelProto:
        return _model([oh.make_node("LayerNormalization", ["x", "g", "b"], ["y"], axis=-1)],
                      [_tensor("x", F, [rows, hidden])], [_tensor("y", F, [rows, hidden])],
                      [_const("g", _rand([hidden], seed=1) + 1), _const("b", _rand([hidden], seed=2))])
    return build


def _skip_layernorm(rows: int, hidden: int) -> Callable[[], onnx.ModelProto]:
    def build() -> onnx.ModelProto:
        shape = [rows // 128, 128, hidden] if rows % 128 == 0 else [1, rows, hidden]
        return _model(
            [oh.make_node("SkipLayerNormalization", ["x", "s", "g", "b"], ["y"], domain="com.microsoft")],
            [_tensor("x", F, shape), _tensor("s", F, shape)],
            [_tensor("y", F, shape)],
            [_const("g", _rand([hidden], seed=1) + 1), _const("b", _rand([hidden], seed=2))], contrib=True)
    return build


def _bias_gelu(rows: int, hidden: int) -> Callable[[], onnx.ModelProto]:
    def build() -> onnx.ModelProto:
        return _model([oh.make_node("BiasGelu", ["x", "b"], ["y"], domain="com.microsoft")],
                      [_tensor("x", F, [rows, hidden])], [_tensor("y", F, [rows, hidden])],
                      [_const("b", _rand([hidden]))], contrib=True)
    return build


def _attention(batch: int, seq: int, hidden: int, heads: int) -> Callable[[], onnx.ModelProto]:
    def build() -> onnx.ModelProto:
        return _model(
            [oh.make_node("Attention", ["x", "w", "b", "mask"], ["y"], domain="com.microsoft", num_heads=heads)],
            [_tensor("x", F, [batch, seq, hidden]), _tensor("mask", TensorProto.INT32, [batch, seq])],
            [_tensor("y", F, [batch, seq, hidden])],
            [_const("w", _rand([hidden, 3 * hidden])), _const("b", _rand([3 * hidden]))], contrib=True)
    return build


def _q_attention(batch: int, seq: int, hidden: int, heads: int) -> Callable[[], onnx.ModelProto]:
    def build() -> onnx.ModelProto:  # as int8 pipelines emit it: uint8 input, int8 per-column weights
        return _model(
            [oh.make_node("QAttention", ["x", "w", "b", "xs", "ws", "mask", "xz", "wz"], ["y"],
                          domain="com.microsoft", num_heads=heads)],
            [_tensor("x", TensorProto.UINT8, [batch, seq, hidden]), _tensor("mask", TensorProto.INT32, [batch])],
            [_tensor("y", F, [batch, seq, hidden])],
            [_const("w", _rand([hidden, 3 * hidden], np.int8)), _const("b", _rand([3 * hidden])),
             _const("xs", np.array(0.02, np.float32)), _const("ws", np.full(3 * hidden, 0.01, np.float32)),
             _const("xz", np.array(128, np.uint8)), _const("wz", np.zeros(3 * hidden, np.int8))], contrib=True)
    return build


def _transpose(shape: Sequence[int], perm: Sequence[int]) -> Callable[[], onnx.ModelProto]:
    def build() -> onnx.ModelProto:
        return _model([oh.make_node("Transpose", ["x"], ["y"], perm=list(perm))], [_tensor("x", F, shape)],
                      [_tensor("y", F, [shape[p] for p in perm])])
    return build


def _gather(vocab: int, hidden: int, tokens: int) -> Callable[[], onnx.ModelProto]:
    def build() -> onnx.ModelProto:
        return _model([oh.make_node("Gather", ["table", "ids"], ["y"], axis=0)],
                      [_tensor("ids", TensorProto.INT64, [1, tokens])], [_tensor("y", F, [1, tokens, hidden])],
                      [_const("table", _rand([vocab, hidden]))])
    return build


def _matmul_integer(m: int, k: int, n: int) -> Callable[[], onnx.ModelProto]:
    def build() -> onnx.ModelProto:
        return _model(
            [oh.make_node("MatMulInteger", ["a", "w", "az", "wz"], ["y"])],
            [_tensor("a", TensorProto.UINT8, [m, k])], [_tensor("y", TensorProto.INT32, [m, n])],
            [_const("w", _rand([k, n], np.int8)), _const("az", np.array(128, np.uint8)),
             _const("wz", np.array(0, np.int8))])
    return build


def _conv_integer(n: int, c_in: int, c_out: int, size: int) -> Callable[[], onnx.ModelProto]:
    def build() -> onnx.ModelProto:
        return _model(
            [oh.make_node("ConvInteger", ["x", "w", "xz"], ["y"], pads=[1] * 4, kernel_shape=[3, 3])],
            [_tensor("x", TensorProto.UINT8, [n, c_in, size, size])],
            [_tensor("y", TensorProto.INT32, [n, c_out, size, size])],
            [_const("w", _rand([c_out, c_in, 3, 3], np.int8)), _const("xz", np.array(128, np.uint8))])
    return build


def _dynamic_quantize(rows: int, hidden: int) -> Callable[[], onnx.ModelProto]:
    def build() -> onnx.ModelProto:
        return _model([oh.make_node("DynamicQuantizeLinear", ["x"], ["y", "s", "z"])],
                      [_tensor("x", F, [rows, hidden])],
                      [_tensor("y", TensorProto.UINT8, [rows, hidden]), _tensor("s", F, []),
                       _tensor("z", TensorProto.UINT8, [])])
    return build


def _where(heads: int, seq: int, batch: int = 1) -> Callable[[], onnx.ModelProto]:
    def build() -> onnx.ModelProto:  # the attention-mask select of torch's SDPA export
        return _model(
            [oh.make_node("Where", ["mask", "x", "fill"], ["y"])],
            [_tensor("mask", TensorProto.BOOL, [batch, 1, 1, seq]), _tensor("x", F, [batch, heads, seq, seq])],
            [_tensor("y", F, [batch, heads, seq, seq])], [_const("fill", np.array(-1e4, np.float32))])
    return build


def _cast(shape: Sequence[int]) -> Callable[[], onnx.ModelProto]:
    def build() -> onnx.ModelProto:
        return _model([oh.make_node("Cast", ["x"], ["y"], to=TensorProto.FLOAT)],
                      [_tensor("x", TensorProto.INT64, shape)], [_tensor("y", F, shape)])
    return build


def _add_chain(shape: Sequence[int], chain: int) -> Callable[[], onnx.ModelProto]:
    def build() -> onnx.ModelProto:
        nodes = []
        previous = "x"
        for i in range(chain):
            out = "y" if i == chain - 1 else f"t{i}"
            nodes.append(oh.make_node("Add", [previous, "c"], [out]))
            previous = out
        return _model(nodes, [_tensor("x", F, shape)], [_tensor("y", F, shape)],
                      [_const("c", _rand([shape[-1]]))])
    return build


def _shape_ops(seq: int, hidden: int, repeats: int) -> Callable[[], onnx.ModelProto]:
    def build() -> onnx.ModelProto:  # Shape -> Gather -> Unsqueeze -> Concat -> Reshape, as exports do;
        # a symbolic batch keeps ONNX Runtime from folding them away, as in a real export
        nodes = []
        previous = "x"
        for i in range(repeats):
            out = "y" if i == repeats - 1 else f"r{i}"
            nodes += [
                oh.make_node("Shape", [previous], [f"s{i}"]),
                oh.make_node("Gather", [f"s{i}", "zero"], [f"b{i}"], axis=0),
                oh.make_node("Unsqueeze", [f"b{i}", "axis0"], [f"u{i}"]),
                oh.make_node("Concat", [f"u{i}", "rest"], [f"c{i}"], axis=0),
                oh.make_node("Reshape", [previous, f"c{i}"], [out]),
            ]
            previous = out
        return _model(nodes, [_tensor("x", F, ["batch", seq, hidden])], [_tensor("y", F, ["batch", seq, hidden])],
                      [_const("zero", np.array(0, np.int64)), _const("axis0", np.array([0], np.int64)),
                       _const("rest", np.array([seq, hidden], np.int64))])
    return build


def _gelu(rows: int, hidden: int, domain: str = "") -> Callable[[], onnx.ModelProto]:
    def build() -> onnx.ModelProto:  # ONNX Gelu (opset 20) or com.microsoft's
        return _model([oh.make_node("Gelu", ["x"], ["y"], domain=domain)],
                      [_tensor("x", F, [rows, hidden])], [_tensor("y", F, [rows, hidden])],
                      contrib=bool(domain), opset=20)
    return build


def _embed_layernorm(batch: int, seq: int, hidden: int, vocab: int) -> Callable[[], onnx.ModelProto]:
    def build() -> onnx.ModelProto:
        return _model(
            [oh.make_node("EmbedLayerNormalization", ["ids", "", "words", "positions", "", "g", "b"], ["y", "mask_index"],
                          domain="com.microsoft", epsilon=1e-12)],
            [_tensor("ids", TensorProto.INT32, [batch, seq])],
            [_tensor("y", F, [batch, seq, hidden]), _tensor("mask_index", TensorProto.INT32, [batch])],
            [_const("words", _rand([vocab, hidden])), _const("positions", _rand([seq, hidden], seed=1)),
             _const("g", _rand([hidden], seed=2) + 1), _const("b", _rand([hidden], seed=3))], contrib=True)
    return build


def _fused_matmul(batch: int, heads: int, seq: int, head_size: int) -> Callable[[], onnx.ModelProto]:
    def build() -> onnx.ModelProto:  # attention scores as ORT fuses them: alpha·Q·Kᵀ
        shape = [batch, heads, seq, head_size]
        return _model([oh.make_node("FusedMatMul", ["q", "k"], ["y"], domain="com.microsoft",
                                    alpha=head_size ** -0.5, transB=1)],
                      [_tensor("q", F, shape), _tensor("k", F, shape)],
                      [_tensor("y", F, [batch, heads, seq, seq])], contrib=True)
    return build


def _chained(build: Callable[[], onnx.ModelProto], length: int, data_input: int = 0) -> Callable[[], onnx.ModelProto]:
    """``build``'s single node repeated ``length`` times, each feeding the next through its
    ``data_input``: inside a graph, intermediate tensors come from the runtime's arena and
    only the last one is a graph output, as in a real model."""
    def chained() -> onnx.ModelProto:
        model = build()
        (node,) = model.graph.node
        weights = {init.name: init for init in model.graph.initializer}
        previous = node.input[data_input]
        nodes = []
        for i in range(length):
            copy = onnx.NodeProto()
            copy.CopyFrom(node)
            copy.input[data_input] = previous
            copy.output[0] = node.output[0] if i == length - 1 else f"chain{i}"
            for j, name in enumerate(copy.input):
                if i and name in weights:  # own weights per node, as in a model (no shared prepacking)
                    clone = onnx.TensorProto()
                    clone.CopyFrom(weights[name])
                    clone.name = f"{name}_{i}"
                    model.graph.initializer.append(clone)
                    copy.input[j] = clone.name
            previous = copy.output[0]
            nodes.append(copy)
        del model.graph.node[:]
        model.graph.node.extend(nodes)
        return model
    return chained


def default_benchmarks() -> list[MicroBenchmark]:
    """The calibration suite: every op class the cost model prices, at several sizes.

    Shapes span overhead-bound (a single element), cache-resident and DRAM-sized tensors,
    and the transformer and CNN shapes greencc's models use (hidden 32/384/1536, seq 16/128,
    12 heads; 8x8 digits, 56x56 feature maps). None of the validation models is run here.
    """
    b = MicroBenchmark
    return [
        # Dispatch: chains of single-element ops isolate per-op and per-inference overhead.
        b("neg[1]x1", "elementwise", "float32", _unary("Neg", [1], 1)),
        b("neg[1]x16", "elementwise", "float32", _unary("Neg", [1], 16)),
        b("neg[1]x64", "elementwise", "float32", _unary("Neg", [1], 64)),
        b("add [16,32]x1", "elementwise", "float32", _add_chain([16, 32], 1)),
        b("add [16,32]x16", "elementwise", "float32", _add_chain([16, 32], 16)),
        b("add [128,384]x8", "elementwise", "float32", _add_chain([128, 384], 8)),
        b("shape ops x4", "data-movement", "float32", _shape_ops(16, 32, 4)),
        b("shape ops x16", "data-movement", "float32", _shape_ops(16, 32, 16)),
        # Chains: the same kernel back to back, as inside a model (arena-allocated
        # intermediates, one graph output), against the single-node benchmarks below.
        b("matmul 32x32x32 x8", "matmul", "float32", _chained(_matmul(32, 32, 32), 8)),
        b("matmul 128x384x384 x4", "matmul", "float32", _chained(_matmul(128, 384, 384), 4)),
        b("softmax 2x16x16 x8", "softmax", "float32", _chained(_softmax([2, 16, 16]), 8)),
        b("softmax 12x128x128 x4", "softmax", "float32", _chained(_softmax([12, 128, 128]), 4)),
        b("layernorm 16x32 x8", "normalization", "float32", _chained(_layernorm(16, 32), 8)),
        b("skiplayernorm 16x32 x8", "normalization", "float32", _chained(_skip_layernorm(16, 32), 8)),
        b("gelu 16x64 x8", "elementwise", "float32", _chained(_gelu(16, 64), 8)),
        b("biasgelu 32x64 x8", "elementwise", "float32", _chained(_bias_gelu(32, 64), 8)),
        b("where 1x2x16x16 x8", "elementwise", "float32", _chained(_where(2, 16, 1), 8, data_input=1)),
        b("transpose 2x16x2x16 x8", "data-movement", "float32",
          _chained(_transpose([2, 16, 2, 16], [0, 2, 1, 3]), 8)),
        b("relu 64K x8", "elementwise", "float32", _chained(_unary("Relu", _rows(65536)), 8)),
        b("attention 1x16x32 h2 x4", "matmul", "float32", _chained(_attention(1, 16, 32, 2), 4)),
        # MatMul / Gemm across shapes (weights as initializers, as in a model).
        b("matmul 1x384x384", "matmul", "float32", _matmul(1, 384, 384)),
        b("matmul 16x32x32", "matmul", "float32", _matmul(16, 32, 32)),
        b("matmul 128x384x384", "matmul", "float32", _matmul(128, 384, 384)),
        b("matmul 128x384x1536", "matmul", "float32", _matmul(128, 384, 1536)),
        b("matmul 128x1536x384", "matmul", "float32", _matmul(128, 1536, 384)),
        b("matmul 512x512x512", "matmul", "float32", _matmul(512, 512, 512)),
        b("matmul 1024x384x1536", "matmul", "float32", _matmul(1024, 384, 1536)),
        b("gemm 8x16x10", "matmul", "float32", _gemm(8, 16, 10)),
        b("gemm 128x384x384", "matmul", "float32", _gemm(128, 384, 384)),
        b("gemm 1024x1536x384", "matmul", "float32", _gemm(1024, 1536, 384)),
        # Batched MatMul, attention-shaped.
        b("bmm 2x16x16x16", "matmul", "float32", _matmul(16, 16, 16, batch=[2])),
        b("bmm 12x128x32x128", "matmul", "float32", _matmul(128, 32, 128, batch=[12])),
        b("bmm 12x128x128x32", "matmul", "float32", _matmul(128, 128, 32, batch=[12])),
        b("bmm 96x128x32x128", "matmul", "float32", _matmul(128, 32, 128, batch=[96])),
        # Conv.
        b("conv 1x1->8 8x8", "conv", "float32", _conv(1, 1, 8, 8)),
        b("conv 8x8->16 4x4", "conv", "float32", _conv(8, 8, 16, 4)),
        b("conv 1x32->64 56x56", "conv", "float32", _conv(1, 32, 64, 56)),
        b("conv 8x16->32 28x28", "conv", "float32", _conv(8, 16, 32, 28)),
        # Elementwise: cache-resident to DRAM-sized, cheap and transcendental.
        b("add 4K", "elementwise", "float32", _binary("Add", _rows(4096))),
        b("add 256K", "elementwise", "float32", _binary("Add", _rows(262144))),
        b("add 4M", "elementwise", "float32", _binary("Add", _rows(4 << 20))),
        b("add 32M", "elementwise", "float32", _binary("Add", _rows(32 << 20))),
        b("mul 1M", "elementwise", "float32", _binary("Mul", _rows(1 << 20))),
        b("relu 64K", "elementwise", "float32", _unary("Relu", _rows(65536))),
        b("relu 16M", "elementwise", "float32", _unary("Relu", _rows(16 << 20))),
        b("relu 96M", "elementwise", "float32", _unary("Relu", _rows(96 << 20))),
        b("where 1x12x128x128", "elementwise", "float32", _where(12, 128)),
        b("where 8x2x16x16", "elementwise", "float32", _where(2, 16, 8)),
        b("where 1x2x16x16", "elementwise", "float32", _where(2, 16, 1)),
        b("cast [1,16]", "elementwise", "float32", _cast([1, 16])),
        b("isnan 2x16x16", "elementwise", "float32", _unary("IsNaN", [2, 16, 16], out_type=TensorProto.BOOL)),
        b("cast 128x384", "elementwise", "float32", _cast([128, 384])),
        b("gelu 128x1536", "elementwise", "float32", _gelu(128, 1536)),
        b("gelu 16x64", "elementwise", "float32", _gelu(16, 64)),
        b("ms gelu 128x1536", "elementwise", "float32", _gelu(128, 1536, "com.microsoft")),
        b("isnan 12x128x128", "elementwise", "float32", _unary("IsNaN", [12, 128, 128], out_type=TensorProto.BOOL)),
        b("exp 256K", "elementwise", "float32", _unary("Exp", _rows(262144))),
        b("erf 1M", "elementwise", "float32", _unary("Erf", _rows(1 << 20))),
        b("biasgelu 128x1536", "elementwise", "float32", _bias_gelu(128, 1536)),
        b("biasgelu 1024x1536", "elementwise", "float32", _bias_gelu(1024, 1536)),
        # Reductions, softmax, normalization.
        b("reducemean 128x384", "reduction", "float32", _reduce("ReduceMean", [128, 384])),
        b("reducesum 1024x1536", "reduction", "float32", _reduce("ReduceSum", [1024, 1536])),
        b("softmax 2x16x16", "softmax", "float32", _softmax([2, 16, 16])),
        b("softmax 12x128x128", "softmax", "float32", _softmax([12, 128, 128])),
        b("softmax 96x128x128", "softmax", "float32", _softmax([96, 128, 128])),
        b("layernorm 16x32", "normalization", "float32", _layernorm(16, 32)),
        b("layernorm 128x384", "normalization", "float32", _layernorm(128, 384)),
        b("layernorm 1024x384", "normalization", "float32", _layernorm(1024, 384)),
        b("skiplayernorm 128x384", "normalization", "float32", _skip_layernorm(128, 384)),
        # Fused attention as ORT runs it (QKV projection + scores + softmax + context).
        b("attention 1x128x384 h12", "matmul", "float32", _attention(1, 128, 384, 12)),
        b("attention 2x16x32 h2", "matmul", "float32", _attention(2, 16, 32, 2)),
        b("attention 8x16x32 h2", "matmul", "float32", _attention(8, 16, 32, 2)),
        b("attention 8x128x384 h12", "matmul", "float32", _attention(8, 128, 384, 12)),
        b("fusedmatmul 1x12x128x32", "matmul", "float32", _fused_matmul(1, 12, 128, 32)),
        b("fusedmatmul 8x2x16x16", "matmul", "float32", _fused_matmul(8, 2, 16, 16)),
        b("embedlayernorm 1x16x32", "normalization", "float32", _embed_layernorm(1, 16, 32, 100)),
        b("embedlayernorm 8x128x384", "normalization", "float32", _embed_layernorm(8, 128, 384, 30522)),
        # The same kernel cheap to build (the quick suite's): it reads only the rows it picks.
        b("embedlayernorm 1x128x384", "normalization", "float32", _embed_layernorm(1, 128, 384, 1024)),
        b("skiplayernorm 128x32", "normalization", "float32", _skip_layernorm(128, 32)),
        b("skiplayernorm 1024x384", "normalization", "float32", _skip_layernorm(1024, 384)),
        b("skiplayernorm 16x32", "normalization", "float32", _skip_layernorm(16, 32)),
        b("biasgelu 32x64", "elementwise", "float32", _bias_gelu(32, 64)),
        b("transpose 2x16x2x16", "data-movement", "float32", _transpose([2, 16, 2, 16], [0, 2, 1, 3])),
        b("gather 100x32 [32]", "data-movement", "float32", _gather(100, 32, 32)),
        b("matmul 32x32x64", "matmul", "float32", _matmul(32, 32, 64)),
        # Data movement.
        b("transpose 12x128x32", "data-movement", "float32", _transpose([1, 128, 12, 32], [0, 2, 1, 3])),
        b("transpose 8x128x12x32", "data-movement", "float32", _transpose([8, 128, 12, 32], [0, 2, 1, 3])),
        b("gather 30522x384 [128]", "data-movement", "float32", _gather(30522, 384, 128)),
        # int8.
        b("matmulinteger 1x384x384", "matmul", "int8", _matmul_integer(1, 384, 384)),
        b("matmulinteger 128x384x384", "matmul", "int8", _matmul_integer(128, 384, 384)),
        b("matmulinteger 128x384x1536", "matmul", "int8", _matmul_integer(128, 384, 1536)),
        b("matmulinteger 1024x384x1536", "matmul", "int8", _matmul_integer(1024, 384, 1536)),
        b("convinteger 1x32->64 56x56", "conv", "int8", _conv_integer(1, 32, 64, 56)),
        b("dynamicquantize 128x384", "quantization", "float32", _dynamic_quantize(128, 384)),
        b("qattention 1x128x384 h12", "matmul", "int8", _q_attention(1, 128, 384, 12)),
        b("qattention 8x16x32 h2", "matmul", "int8", _q_attention(8, 16, 32, 2)),
    ]



# The quick suite, in the order a first use runs it (a time budget may stop it early): first
# what the -O3 int8 decision weighs per layer — float and int8 MatMul at a transformer's
# shapes, quantizing activations, casts and scale multiplies, dispatch overhead —, then the
# bandwidth of each cache level, then the fused kernels -O2/-O3 leave in a transformer (a
# kernel model prices a kernel no benchmark timed only by its op class's means, which put
# MiniLM's EmbedLayerNormalization at 143 ms), then the other terms a profile carries. No
# DRAM-sized tensors: on a machine with a large L3 they would not reach DRAM anyway, and
# building them costs seconds.
QUICK_DECISIVE = (
    "neg[1]x1", "neg[1]x64", "matmul 128x384x384", "matmulinteger 128x384x384",
    "matmul 128x384x1536", "matmulinteger 128x384x1536", "matmul 1x384x384", "matmulinteger 1x384x384",
    "dynamicquantize 128x384", "cast 128x384", "mul 1M", "add 4K", "add 256K", "add 4M",
)
QUICK_BENCHMARKS = (
    *QUICK_DECISIVE,
    "embedlayernorm 1x128x384", "qattention 1x128x384 h12", "skiplayernorm 128x384", "biasgelu 128x1536",
    "attention 1x128x384 h12", "neg[1]x16", "shape ops x4", "add [16,32]x16", "matmul 16x32x32", "matmul 512x512x512",
    "matmul 128x384x384 x4", "gemm 128x384x384", "bmm 12x128x32x128", "matmulinteger 1024x384x1536",
    "relu 64K", "gelu 128x1536", "softmax 12x128x128", "layernorm 128x384", "transpose 12x128x32",
    "gather 30522x384 [128]",
)


def quick_benchmarks() -> list[MicroBenchmark]:
    """The subset of :func:`default_benchmarks` a first-use calibration runs (a third of
    the suite), in :data:`QUICK_BENCHMARKS` order: the profile's global terms, not every
    kernel's efficiency; the first :data:`QUICK_DECISIVE` ones are what -O3 decides on."""
    by_name = {bench.name: bench for bench in default_benchmarks()}
    return [by_name[name] for name in QUICK_BENCHMARKS]
