"""``smooth-quant``: SmoothQuant (Xiao et al., ICML 2023) — migrate activation outliers
into the weights with a per-channel scale, exactly in float, so that int8 activations
lose less.

    smooth-quant  op(x, W) -> op(x / s, diag(s) · W)   with s_j = max|x_j|^α / max|W_j|^(1-α)

``1 / s`` is folded into what produces ``x`` when that is exact: a LayerNormalization
(γ, β), a SkipLayerNormalization whose normalized output only the smoothed nodes read, an
Attention (its V projection columns: attention is linear in V) or a MatMul with a constant
weight (its columns). Elsewhere (e.g. a LayerNorm output that is also the residual stream)
the pass declines, or with ``unfoldable=mul`` inserts ``Mul(x, 1/s)``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import ClassVar, Literal

import numpy as np
import onnx_ir as ir

from greencc.errors import UsageError
from greencc.ir import inherit_provenance, node_label
from greencc.model import Model
from greencc.passes.lib.graph_edits import NameScope, constant_tensor, new_initializer
from greencc.pipeline.base import Pass, PassResult, register_pass
from greencc.pipeline.context import PassContext
from greencc.quant import collect_abs_max
from greencc.verify.feeds import random_feeds

from .placement import CONTRIB, QuantSite, ensure_types, find_sites, parse_ops

# Scales are clamped to [1/MAX_SCALE, MAX_SCALE] so that no channel is blown up or
# flushed (a dead channel has max |x| = 0).
MAX_SCALE = 1e4
RANDOM_SAMPLES = 4
# Scales this close to 1 change nothing worth a rewrite (a smoothed model re-smoothed gets
# s = 1 up to float rounding, which keeps the pass idempotent).
BALANCED = 1e-3
_ALL_KERNELS = frozenset({"MatMulInteger", "DynamicQuantizeLinear", f"{CONTRIB}::QAttention"})


@register_pass("smooth-quant")
class SmoothQuant(Pass):
    """op(x, W) -> op(x / s, diag(s)·W) for MatMul/Attention, 1/s folded into x's producer (exact).

    s_j = max|x_j|^alpha / max|W_j|^(1-alpha) per input channel j, from the calibration
    data's activations (seeded random feeds when none are given). Folds into
    LayerNormalization γ/β, SkipLayerNormalization γ/β (when only the smoothed nodes read
    its output), Attention's V projection, or a constant-weight MatMul's columns; declines
    elsewhere, or inserts Mul(x, 1/s) with ``unfoldable=mul``. ``only`` restricts it to
    the named nodes. Stats: smoothed (sites), folded_into.<op>, mul_inserted.
    """

    lossy: ClassVar[bool] = False

    alpha: float = 0.5
    ops: str = "MatMul,Attention"
    unfoldable: Literal["skip", "mul"] = "skip"
    only: str = ""

    def call(self, model: Model, ctx: PassContext) -> PassResult:
        """Smooth every eligible activation of the main graph."""
        if not 0.0 <= self.alpha <= 1.0:

            raise UsageError(f"smooth-quant: alpha={self.alpha} must lie in [0, 1]", hint="SmoothQuant uses 0.5")
        ops = tuple(op for op in parse_ops(self.ops) if op in ("MatMul", "Attention"))
        ensure_types(model.ir)
        sites, _ = find_sites(model.graph, ops, _ALL_KERNELS)
        wanted = {n.strip() for n in self.only.split(",") if n.strip()}
        if wanted:
            sites = [s for s in sites if s.name in wanted]
        groups = self._groups(sites, ctx)
        if not groups:
            return PassResult(model, False, {"smoothed": 0})
        stats_of = _abs_max(model, [x for x, _ in groups], ctx)
        names = NameScope(model.ir)
        stats: dict[str, int | float] = {"smoothed": 0}
        for x, readers in groups:
            act = stats_of[x.name]
            w_max = np.max([_weight_row_abs_max(s) for s in readers], axis=0)
            scale = _scales(act, w_max, self.alpha)
            if np.all(np.abs(scale - 1.0) < BALANCED):
                for site in readers:
                    self.decline(ctx, site.node, f"'{x.name}' is already balanced (every |s - 1| < {BALANCED})")
                continue
            where = _fold(x, 1.0 / scale, readers, model, names)
            for site in readers:
                _scale_weight_rows(site, scale, model.graph, names)
            stats["smoothed"] += len(readers)
            stats[f"folded_into.{where}"] = stats.get(f"folded_into.{where}", 0) + 1
        return PassResult(model, stats["smoothed"] > 0, stats)

    def _groups(self, sites: Sequence[QuantSite], ctx: PassContext) -> list[tuple[ir.Value, list[QuantSite]]]:
        """Activations to smooth with the sites reading them; declines the rest."""
        by_value: dict[int, tuple[ir.Value, list[QuantSite]]] = {}
        for site in sites:
            by_value.setdefault(id(site.activation), (site.activation, []))[1].append(site)
        groups = []
        for x, readers in by_value.values():
            reason = _fold_problem(x, readers)
            if reason and self.unfoldable != "mul":
                for site in readers:
                    self.decline(ctx, site.node, f"cannot fold 1/s exactly: {reason} (unfoldable=mul inserts a Mul)")
                continue
            if x.shape is None or not x.shape or not isinstance(x.shape[-1], int):
                for site in readers:
                    self.decline(ctx, site.node, f"the channel count of '{x.name}' is unknown")
                continue
            groups.append((x, readers))
        return groups


def _scales(act_max: np.ndarray, w_max: np.ndarray, alpha: float) -> np.ndarray:
    """SmoothQuant's s_j = max|x_j|^α / max|W_j|^(1-α), clamped; 1 where a side is 0."""
    act_max = np.asarray(act_max, np.float64)
    w_max = np.asarray(w_max, np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        s = np.power(act_max, alpha) / np.power(w_max, 1.0 - alpha)
    s = np.where(np.isfinite(s) & (s > 0) & (act_max > 0) & (w_max > 0), s, 1.0)
    return np.clip(s, 1.0 / MAX_SCALE, MAX_SCALE).astype(np.float32)


def _weight_row_abs_max(site: QuantSite) -> np.ndarray:
    """max |W_j| over output channels, per input channel j (W is [K, N])."""
    return np.abs(site.weight_array).max(axis=1)


def _readers_all_sites(x: ir.Value, readers: Sequence[QuantSite]) -> str:
    nodes = {s.node for s in readers}
    if x.is_graph_output():
        return f"'{x.name}' is a graph output"
    for user, _ in x.uses():
        if user not in nodes:
            return f"'{x.name}' is also read by {node_label(user)}"
    return ""


def _fold_problem(x: ir.Value, readers: Sequence[QuantSite]) -> str:
    """Why ``1/s`` cannot be folded into ``x``'s producer, or ``""``."""
    producer = x.producer()
    if producer is None:
        return f"'{x.name}' is a graph input"
    why = _readers_all_sites(x, readers)
    if why:
        return why
    op = producer.op_type
    if op == "LayerNormalization" and producer.domain in ("", "ai.onnx"):
        return "" if _const_inputs(producer, (1, 2), optional=(2,)) else "LayerNormalization γ/β are not constants"
    if op == "SkipLayerNormalization" and producer.domain == CONTRIB:
        if x is not producer.outputs[0]:
            return "the value is not SkipLayerNormalization's normalized output"
        return "" if _const_inputs(producer, (2, 3), optional=(3,)) else "SkipLayerNormalization γ/β are not constants"
    if op == "Attention" and producer.domain == CONTRIB:
        if "qkv_hidden_sizes" in producer.attributes:
            return "Attention with qkv_hidden_sizes"
        return "" if _const_inputs(producer, (1, 2), optional=()) else "Attention weights/bias are not constants"
    if op == "MatMul" and producer.domain in ("", "ai.onnx"):
        w = constant_tensor(producer.inputs[1])
        return "" if w is not None and len(w.shape) == 2 else "the producing MatMul has no constant 2-D weight"
    return f"'{x.name}' comes from {producer.op_type}, which 1/s does not fold into"


def _const_inputs(node: ir.Node, indices: Sequence[int], optional: Sequence[int]) -> bool:
    for i in indices:
        value = node.inputs[i] if i < len(node.inputs) else None
        if value is None:
            if i in optional:
                continue
            return False
        if constant_tensor(value) is None:
            return False
    return True


def _replace_const(node: ir.Node, index: int, array: np.ndarray, graph: ir.Graph, names: NameScope) -> None:
    """Point input ``index`` of ``node`` at a new initializer (tensors may be shared with
    other model clones, so they are never edited in place)."""
    old = node.inputs[index]
    base = old.name if old is not None and old.name else f"{node.name}_input{index}"
    node.replace_input_with(index, new_initializer(graph, names.fresh(f"{base}_smoothed"), array.astype(np.float32)))


def _fold(x: ir.Value, inv: np.ndarray, readers: Sequence[QuantSite], model: Model, names: NameScope) -> str:
    """Make the ``readers`` of ``x`` see ``x / s`` (``inv`` = 1/s): folded into ``x``'s
    producer when that is exact, else through an inserted Mul. Returns where it went."""
    graph = model.graph
    producer = x.producer()
    if producer is not None and not _fold_problem(x, readers):
        op = producer.op_type
        if op in ("LayerNormalization", "SkipLayerNormalization"):
            gi, bi = (1, 2) if op == "LayerNormalization" else (2, 3)
            gamma = np.asarray(constant_tensor(producer.inputs[gi]).numpy(), np.float32)
            _replace_const(producer, gi, gamma * inv, graph, names)
            if bi < len(producer.inputs) and producer.inputs[bi] is not None:
                beta = np.asarray(constant_tensor(producer.inputs[bi]).numpy(), np.float32)
                _replace_const(producer, bi, beta * inv, graph, names)
            return op
        if op == "Attention":
            w = np.array(constant_tensor(producer.inputs[1]).numpy(), np.float32)
            b = np.array(constant_tensor(producer.inputs[2]).numpy(), np.float32)
            hidden = w.shape[1] // 3
            w[:, 2 * hidden:] *= inv[None, :]
            b[2 * hidden:] *= inv
            _replace_const(producer, 1, w, graph, names)
            _replace_const(producer, 2, b, graph, names)
            return "Attention"
        w = np.asarray(constant_tensor(producer.inputs[1]).numpy(), np.float32)
        _replace_const(producer, 1, w * inv[None, :], graph, names)
        return "MatMul"
    first = readers[0].node
    factor = new_initializer(graph, names.fresh(f"{x.name}_smooth_inverse"), inv.astype(np.float32))
    out = ir.Value(name=names.fresh(f"{x.name}_smoothed"), type=x.type, shape=x.shape)
    mul = ir.node("Mul", [x, factor], outputs=[out], name=names.fresh(f"{first.name}_SmoothMul"))
    graph.insert_before(first, mul)
    inherit_provenance(mul, [first])
    for site in readers:
        site.node.replace_input_with(0, out)
    return "Mul"


def _scale_weight_rows(site: QuantSite, scale: np.ndarray, graph: ir.Graph, names: NameScope) -> None:
    """W <- diag(s) · W for the site's [K, N] weight."""
    w = site.weight_array.astype(np.float32)
    _replace_const(site.node, 1, w * scale[:, None], graph, names)


def _abs_max(model: Model, values: Sequence[ir.Value], ctx: PassContext) -> dict[str, np.ndarray]:
    """Per-channel max |x| over the calibration data (random feeds when none)."""

    data = ctx.calibration
    if data is None:

        data = [random_feeds(model, seed=ctx.seed + i, dims=ctx.dims) for i in range(RANDOM_SAMPLES)]
    return collect_abs_max(model, data, [v.name for v in values], axis=-1, executor=ctx.executor)
