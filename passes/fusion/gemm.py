"""MatMul + Add -> Gemm, where Gemm's rank-2 contract makes it legal (exact).

    fuse-matmul-add  Add(MatMul(A, B), C) -> Gemm(A, B, C)   (A, B rank 2; C broadcasts to [M, N])
"""

from __future__ import annotations

from dataclasses import dataclass

import onnx_ir as ir

from greencc.pipeline.base import register_pass

from greencc.passes.lib.matching import FusionPass, FusionRun, label, other_readers, producer

# Element types Gemm (opset 13) accepts.
GEMM_DTYPES = frozenset(
    {
        ir.DataType.FLOAT, ir.DataType.FLOAT16, ir.DataType.DOUBLE, ir.DataType.BFLOAT16,
        ir.DataType.INT32, ir.DataType.INT64, ir.DataType.UINT32, ir.DataType.UINT64,
    }
)


@dataclass
class MatMulAddSite:
    matmul: ir.Node
    add: ir.Node
    bias: ir.Value


@register_pass("fuse-matmul-add")
class FuseMatMulAdd(FusionPass):
    """Add(MatMul(A, B), C) -> Gemm(A, B, C) where A and B have rank 2.

    C must broadcast one way to the [M, N] product (a bias row, column, scalar or matrix).

    Transformer projections (rank-3 activations) are left to the transformer fusions.
    """

    def match(self, node: ir.Node, run: FusionRun) -> MatMulAddSite | None:
        if node.op_type != "Add" or node.domain not in ("", "ai.onnx") or len(node.inputs) != 2:
            return None
        found = [(i, producer(v, "MatMul")) for i, v in enumerate(node.inputs)]
        found = [(i, m) for i, m in found if m is not None]
        if not found:
            return None
        index, matmul = found[0]
        bias = node.inputs[1 - index]
        why = other_readers(matmul.outputs[0], [node])
        if why:
            run.decline(node, f"cannot fuse {label(matmul)}: {why}")
            return None
        a, b = matmul.inputs[0], matmul.inputs[1]
        for role, operand in (("A", a), ("B", b)):
            rank = run.rank(operand)
            if rank is None:
                run.decline(node, f"the rank of MatMul operand {role} '{operand.name}' is unknown")
                return None
            if rank != 2:
                run.decline(node, f"MatMul operand {role} '{operand.name}' has rank {rank}; Gemm needs rank 2")
                return None
        dtype = run.dtype(a)
        if dtype not in GEMM_DTYPES:
            run.decline(node, f"Gemm does not take {dtype} operands")
            return None
        product = run.shape(matmul.outputs[0])
        bias_shape = run.shape(bias)
        if product is None or bias_shape is None:
            run.decline(node, f"the shape of the bias '{bias.name}' or of the product is unknown")
            return None
        if len(bias_shape) > 2:
            run.decline(node, f"the bias '{bias.name}' has rank {len(bias_shape)} and would raise the rank")
            return None
        for have, want in zip(reversed(list(bias_shape)), reversed(list(product)), strict=False):
            if have == 1 or have == want:
                continue
            run.decline(
                node, f"the bias '{bias.name}' of shape {list(bias_shape)} does not broadcast "
                f"one way to the product's {list(product)}",
            )
            return None
        return MatMulAddSite(matmul, node, bias)

    def rewrite(self, site: MatMulAddSite, run: FusionRun) -> None:
        matmul, add = site.matmul, site.add
        run.fused_away([matmul.outputs[0]])
        gemm = run.new_node("Gemm", [matmul.inputs[0], matmul.inputs[1], site.bias], anchor=matmul)
        run.replace(add.outputs[0], gemm, gemm.outputs[0], [matmul, add], before=add)
