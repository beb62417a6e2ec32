"""MatMul + Add -> Gemm, where Gemm's rank-2 contract makes it legal (exact).

    fuse-matmul-add  Add(MatMul(A, B), C) -> Gemm(A, B, C)   (A, B rank 2; C broadcasts to [M, N])
"""

from __future__ import annotations

import onnx_ir as ir

from greencc.passes.lib.matching import FusionRun, label, other_readers
from greencc.passes.lib.rules import Match, Op, Rule, Var
from greencc.pipeline.base import register_pass

# Element types Gemm (opset 13) accepts.
GEMM_DTYPES = frozenset(
    {
        ir.DataType.FLOAT, ir.DataType.FLOAT16, ir.DataType.DOUBLE, ir.DataType.BFLOAT16,
        ir.DataType.INT32, ir.DataType.INT64, ir.DataType.UINT32, ir.DataType.UINT64,
    }
)


@register_pass("fuse-matmul-add")
class FuseMatMulAdd(Rule):
    """Add(MatMul(A, B), C) -> Gemm(A, B, C) where A and B have rank 2.

    C must broadcast one way to the [M, N] product (a bias row, column, scalar or matrix).

    Transformer projections (rank-3 activations) are left to the transformer fusions.
    """

    pattern = Op("Add", Op("MatMul", Var("a"), Var("b"), name="matmul"), Var("c"), commute=True)

    def check(self, m: Match, run: FusionRun) -> str:
        why = other_readers(m["matmul"], [m.root])
        if why:
            return f"cannot fuse {label(m.node('matmul'))}: {why}"
        for role, operand in (("A", m["a"]), ("B", m["b"])):
            rank = run.rank(operand)
            if rank is None:
                return f"the rank of MatMul operand {role} '{operand.name}' is unknown"
            if rank != 2:
                return f"MatMul operand {role} '{operand.name}' has rank {rank}; Gemm needs rank 2"
        dtype = run.dtype(m["a"])
        if dtype not in GEMM_DTYPES:
            return f"Gemm does not take {dtype} operands"
        bias = m["c"]
        product, bias_shape = run.shape(m["matmul"]), run.shape(bias)
        if product is None or bias_shape is None:
            return f"the shape of the bias '{bias.name}' or of the product is unknown"
        if len(bias_shape) > 2:
            return f"the bias '{bias.name}' has rank {len(bias_shape)} and would raise the rank"
        for have, want in zip(reversed(list(bias_shape)), reversed(list(product)), strict=False):
            if have != 1 and have != want:
                return (f"the bias '{bias.name}' of shape {list(bias_shape)} does not broadcast "
                        f"one way to the product's {list(product)}")
        return ""

    def rewrite(self, m: Match, run: FusionRun) -> None:
        matmul = m.node("matmul")
        run.fused_away([m["matmul"]])
        gemm = run.new_node("Gemm", [m["a"], m["b"], m["c"]], anchor=matmul)
        run.replace(m.output, gemm, gemm.outputs[0], [matmul, m.root], before=m.root)
