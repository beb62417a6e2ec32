"""``sparsify``: write zeros into MatMul / Gemm / Conv weights in a given pattern, chosen
one-shot by magnitude or by Wanda's ``|W_ij|·‖X_i‖`` (Sun et al. 2023, "A Simple and
Effective Pruning Approach for Large Language Models"), verify the pattern exactly and
record it on the node, where the cost model reads it:

    MatMul(x, W) -> MatMul(x, W ⊙ M)   node metadata greencc.sparsity =
                                       {"input": 1, "pattern": "2:4", "density": 0.5}

The graph keeps dense weights (ONNX has no sparse-weight MatMul that ONNX Runtime's CPU
kernels accelerate), so the saving is only real on targets that exploit the pattern; the
cost model counts effective MACs and compressed weight bytes only there.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Literal

import numpy as np
import onnx_ir as ir

from greencc.errors import PassError, UsageError
from greencc.ir import get_meta, set_meta
from greencc.model import Model
from greencc.passes.lib.graph_edits import NameScope, constant_array, new_initializer
from greencc.passes.lib.matching import int_attr, label
from greencc.pipeline.base import Pass, PassResult, get_pass_class, register_pass
from greencc.pipeline.context import PassContext

from .calibration import scoring_samples
from .sparsity_patterns import Pattern, density, keep_mask, satisfies

SPARSITY_KEY = "sparsity"


def weight_view(node: ir.Node, weight: np.ndarray) -> np.ndarray:
    """The node's weight as ``[K, N]`` (reduction axis first)."""
    if node.op_type == "Conv":
        return weight.reshape(weight.shape[0], -1).T
    if node.op_type == "Gemm" and int_attr(node, "transB", 0):
        return weight.T
    return weight


def from_view(node: ir.Node, view: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """Inverse of :func:`weight_view`."""
    if node.op_type == "Conv":
        return view.T.reshape(shape)
    if node.op_type == "Gemm" and int_attr(node, "transB", 0):
        return view.T
    return view


def sparsifiable(node: ir.Node) -> bool:
    """MatMul/Gemm with a constant rank-2 weight, or Conv with a constant weight."""
    if node.domain not in ("", "ai.onnx") or node.op_type not in ("MatMul", "Gemm", "Conv"):
        return False
    if node.op_type == "Gemm" and int_attr(node, "transA", 0):
        return False
    weight = constant_array(node.inputs[1]) if len(node.inputs) > 1 else None
    if weight is None or weight.dtype.kind != "f":
        return False
    return weight.ndim == 2 or node.op_type == "Conv"


@register_pass("sparsify")
class Sparsify(Pass):
    """Zero weights in a pattern (unstructured, 2:4, block:RxC) by magnitude or Wanda score.

    Rewrites ``Op(x, W) -> Op(x, W ⊙ M)`` for MatMul/Gemm/Conv with constant weights of at
    least ``min_size`` elements and records ``greencc.sparsity`` on the node. ``ratio`` is
    the fraction zeroed per output (unstructured) or of blocks (block); ``2:4`` always
    zeroes 2 of every 4 along the reduction axis. ``score=wanda`` weighs ``|W_ij|`` by the
    input feature's norm ``‖X_i‖`` on the calibration data.
    """

    lossy = True
    pattern: str = "2:4"
    ratio: float = 0.5
    score: Literal["magnitude", "wanda"] = "magnitude"
    min_size: int = 1024
    samples: int = 8

    def __init__(self, **options: object) -> None:
        super().__init__(**options)
        self.parsed = Pattern.parse(self.pattern)
        if not 0.0 < self.ratio < 1.0:
            raise UsageError(f"sparsify: ratio={self.ratio} must be in (0, 1)", hint="e.g. ratio=0.5")

    def call(self, model: Model, ctx: PassContext) -> PassResult:
        """Zero the lowest-scoring weights of every eligible node; stats count them."""
        graph = model.graph
        nodes = []
        for node in graph:
            if not sparsifiable(node):
                continue
            weight = np.asarray(constant_array(node.inputs[1]))
            if weight.size < self.min_size:
                continue
            k, n = weight_view(node, weight).shape
            why = self.parsed.fits(k, n)
            if why:
                self.decline(ctx, node, why)
                continue
            nodes.append(node)
        if not nodes:
            self.decline(ctx, "<model>", f"no MatMul/Gemm/Conv weight of at least {self.min_size} elements fits {self.parsed}")
            return PassResult(model, False)
        norms = _input_norms(model, ctx, nodes, self.samples) if self.score == "wanda" else {}
        names = NameScope(model.ir)
        zeroed = total = changed = 0
        for node in nodes:
            weight = np.asarray(constant_array(node.inputs[1]))
            view = weight_view(node, weight)
            scores = np.abs(view.astype(np.float64))
            if node in norms:
                scores = scores * norms[node][:, None]
            mask = keep_mask(scores, self.parsed, self.ratio)
            sparse = np.where(mask, view, np.zeros((), view.dtype)).astype(weight.dtype)
            if not satisfies(sparse, self.parsed, self.ratio):
                raise PassError(f"sparsify wrote weights of {label(node)} that break {self.parsed}", node=label(node))
            zeroed += int((sparse == 0).sum())
            total += sparse.size
            rewritten = not np.array_equal(sparse, view)
            if rewritten:
                value = new_initializer(graph, names.fresh(f"{node.inputs[1].name or 'w'}.sparse"),
                                        np.ascontiguousarray(from_view(node, sparse, weight.shape)))
                node.replace_input_with(1, value)
            record = {"input": 1, "pattern": str(self.parsed), "density": round(density(sparse), 6)}
            recorded = get_meta(node, SPARSITY_KEY) == record
            if not recorded:
                set_meta(node, SPARSITY_KEY, record)
            changed += int(rewritten or not recorded)
        stats = {"weights": len(nodes), "zeros": zeroed, "weight_elements": total,
                 "density": 1 - zeroed / max(1, total)}
        if changed:
            get_pass_class("dce")().call(model, PassContext())
        return PassResult(model, changed > 0, stats)


def _input_norms(model: Model, ctx: PassContext, nodes: Sequence[ir.Node], limit: int) -> dict[ir.Node, np.ndarray]:
    """‖X_i‖ per reduction row of every node's weight over the calibration samples."""
    runner = ctx.executor.runner(model, outputs=[node.inputs[0].name for node in nodes], purpose="scoring")
    samples, _ = scoring_samples(model, ctx, limit)
    squares: dict[int, np.ndarray] = {}
    for feeds in samples:
        outputs = runner(feeds)
        for i, node in enumerate(nodes):
            x = np.asarray(outputs[node.inputs[0].name], np.float64)
            squares[i] = squares.get(i, 0) + _row_squares(node, x)
    return {node: np.sqrt(squares[i]) for i, node in enumerate(nodes)}


def _row_squares(node: ir.Node, x: np.ndarray) -> np.ndarray:
    """Σ x² per reduction row: features (last axis) for MatMul/Gemm; for Conv, per input
    channel repeated over the kernel positions (Wanda on im2col, per channel)."""
    if node.op_type == "Conv":
        weight = np.asarray(constant_array(node.inputs[1]))
        per_channel = (np.moveaxis(x, 1, -1).reshape(-1, x.shape[1]) ** 2).sum(axis=0)
        return np.repeat(per_channel, int(np.prod(weight.shape[2:])))
    return (x.reshape(-1, x.shape[-1]) ** 2).sum(axis=0)


def sparse_nodes(model: Model) -> Mapping[str, dict]:
    """The sparsity records of a model's nodes, by node name."""
    return {n.name or "": get_meta(n, SPARSITY_KEY) for n in model.graph if get_meta(n, SPARSITY_KEY)}
