"""Shared machinery of ``prune-ffn`` and ``prune-channels``: activation statistics on the
calibration data, label-free unit scores, a masked copy for budget searches, and the
structural rewrite with the removed units' mean folded into the consumer's bias.

Scores (higher = more important), for unit ``j`` with activation ``a_j`` entering the
consumer and consumer weight slice ``W2[j]``:

- ``activation``: ``std(a_j)·‖W2[j]‖`` when the mean is folded into the bias (the part
  of unit j's contribution the bias cannot absorb), else ``√E[a_j²]·‖W2[j]‖`` — Wanda's
  ``|W|·‖X‖`` aggregated per unit (Sun et al. 2023);
- ``magnitude``: ``‖W1[:, j]‖·‖W2[j]‖`` (no data; a gated MLP multiplies in its up
  projection's ``‖Wu[:, j]‖``); ``random``: a seeded draw.

With ``reconstruct`` (dense consumers), the kept units' W2 rows are re-fitted by ridge
least squares so that the pruned layer reproduces the original layer's output on the
calibration tokens (a per-layer reconstruction in the spirit of Kwon et al. 2022, on the
W2 rows rather than only the mask scales; see :func:`least_squares_update`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import ClassVar, Literal

import numpy as np
import onnx_ir as ir

from greencc.errors import UsageError
from greencc.execution import Executor
from greencc.ir import get_meta, set_meta
from greencc.model import Model
from greencc.passes.lib.graph_edits import NameScope, constant_array, new_initializer
from greencc.pipeline.base import Pass, PassResult, get_pass_class
from greencc.pipeline.context import PassContext
from greencc.verify.fidelity import measure_fidelity

from .calibration import budget_reference, scoring_samples
from .prune_heads import refresh_shapes
from .selection import search_budget
from .units import UnitGroup, consumer_bias, find_unit_groups, slice_group

ORIGINAL_WIDTH_KEY = "prune.original_width"


# Ridge of the reconstruction, relative to the kept activations' mean variance: it pulls
# the update towards 0 where the few calibration tokens do not determine it. 1.0 was best
# of 1e-3..3 on MiniLM's FFNs (25% pruned, 32 calibration sentences, held-out sentences).
RECONSTRUCTION_RIDGE = 1.0


@dataclass
class UnitStats:
    """Per-unit mean and mean square of one group's activation over the samples, and the
    second-moment matrix ``E[a·aᵀ]`` ([width, width]) when it was asked for."""

    mean: np.ndarray
    mean_square: np.ndarray
    second: np.ndarray | None = None


class UnitMaskedModel:
    """A copy computing ``consumer(a·mask + fill)`` per group, run with the activations as
    extra outputs; one session, from ``executor`` (a pass gives ``ctx.executor``; by
    default a fresh ``Executor``) for scoring, serves statistics and budget searches."""

    def __init__(self, model: Model, kind: str, executor: Executor | None = None) -> None:
        self.model = model.clone()
        self.groups, _ = find_unit_groups(self.model.ir, kind)
        self.outputs = len(model.outputs)
        names = NameScope(self.model.ir)
        graph = self.model.graph
        # Masks broadcast along the unit axis: [F] for tokens [.., F], [C, 1, 1] for [N, C, H, W].
        self.shapes: list[list[int]] = []
        for i, group in enumerate(self.groups):
            rank = len(group.activation.shape) if group.activation.shape is not None else 2
            shape = [group.width] + ([1] * (rank - 2) if group.unit_axis == 1 else [])
            self.shapes.append(shape)
            mask = ir.Value(name=f"greencc.unit_mask.{i}", type=ir.TensorType(ir.DataType.FLOAT), shape=ir.Shape(shape))
            fill = ir.Value(name=f"greencc.unit_fill.{i}", type=ir.TensorType(ir.DataType.FLOAT), shape=ir.Shape(shape))
            graph.inputs.extend([mask, fill])
            mul = ir.node("Mul", [group.activation, mask], name=names.fresh(f"unit_mask_{i}"))
            mul.outputs[0].name = names.fresh(f"unit_masked_{i}")
            add = ir.node("Add", [mul.outputs[0], fill], name=names.fresh(f"unit_fill_{i}"))
            add.outputs[0].name = names.fresh(f"unit_filled_{i}")
            graph.insert_before(group.consumer, [mul, add])
            group.consumer.replace_input_with(list(group.consumer.inputs).index(group.activation), add.outputs[0])
        names = [v.name for v in graph.outputs] + [group.activation.name for group in self.groups]
        self._runner = (executor or Executor()).runner(self.model, outputs=names, purpose="scoring")
        self._names = names

    def run(self, feeds: Mapping[str, np.ndarray], masks: Sequence[np.ndarray] | None = None,
            fills: Sequence[np.ndarray] | None = None) -> tuple[list[np.ndarray], list[np.ndarray]]:
        """(model outputs, group activations) with per-group unit ``masks`` and ``fills``."""
        full = dict(feeds)
        for i, group in enumerate(self.groups):
            mask = masks[i] if masks is not None else np.ones(group.width)
            fill = fills[i] if fills is not None else np.zeros(group.width)
            full[f"greencc.unit_mask.{i}"] = np.asarray(mask, np.float32).reshape(self.shapes[i])
            full[f"greencc.unit_fill.{i}"] = np.asarray(fill, np.float32).reshape(self.shapes[i])
        result = self._runner(full)
        values = [result[name] for name in self._names]
        return values[: self.outputs], values[self.outputs :]


def token_mask_input(model: Model) -> str | None:
    """The model's ``[batch, seq]`` integer/bool input named like an attention mask, if any."""
    for spec in model.inputs:
        if "mask" in spec.name.lower() and spec.shape is not None and len(spec.shape) == 2 and (
            spec.dtype.startswith(("int", "uint")) or spec.dtype == "bool"
        ):
            return spec.name
    return None


def unit_stats(masked: UnitMaskedModel, samples: Sequence[Mapping[str, np.ndarray]],
               second_moments: bool = False) -> list[UnitStats]:
    """Mean and mean square of every unit's activation over all samples and positions;
    for token activations ``[batch, seq, F]``, over the tokens the model's attention mask
    keeps (padding positions compute values no output uses). ``second_moments`` also
    accumulates ``E[a·aᵀ]`` for the groups with a dense consumer (for reconstruction)."""
    mask_name = token_mask_input(masked.model)
    sums = [np.zeros(g.width) for g in masked.groups]
    squares = [np.zeros(g.width) for g in masked.groups]
    seconds = [np.zeros((g.width, g.width)) if second_moments and exact_fill(g) else None for g in masked.groups]
    counts = [0.0] * len(masked.groups)
    for feeds in samples:
        _, activations = masked.run(feeds)
        token_mask = np.asarray(feeds[mask_name]) != 0 if mask_name is not None else None
        for i, (group, a) in enumerate(zip(masked.groups, activations, strict=True)):
            a = np.asarray(a, np.float64)
            weights = None
            if token_mask is not None and group.unit_axis == -1 and (
                a.shape[:-1] == token_mask.shape or (a.ndim == 2 and a.shape[0] == token_mask.size)
            ):  # [b, s, F], or [b·s, F] flattened for a rank-2 Gemm
                weights = token_mask.reshape(-1).astype(np.float64)
            units = np.moveaxis(a, group.unit_axis, -1).reshape(-1, group.width)
            if weights is None:
                weights = np.ones(units.shape[0])
            sums[i] += weights @ units
            squares[i] += weights @ (units ** 2)
            if seconds[i] is not None:
                seconds[i] += (units * weights[:, None]).T @ units
            counts[i] += float(weights.sum())
    return [
        UnitStats(s / max(1.0, c), q / max(1.0, c), None if m is None else m / max(1.0, c))
        for s, q, m, c in zip(sums, squares, seconds, counts, strict=True)
    ]


def least_squares_update(rows: np.ndarray, stat: UnitStats, mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The change of the kept units' consumer rows that best makes up for the removed ones.

    With centred activations ``c`` (covariance ``Σ``), consumer rows ``W`` (``rows``,
    [width, out]) and kept / removed units ``K`` / ``R`` (``mask`` 1 / 0), minimises
    ``E‖c_Kᵀ·(W_K + Δ) − cᵀ·W‖² + λ‖Δ‖²`` over ``Δ``: ``Δ = (Σ_KK + λI)⁻¹·Σ_KR·W_R``, the
    removed units' contribution regressed on the kept units'. Returns ``Δ`` ([len(K), out])
    and the bias shift ``μ_R·W_R − μ_K·Δ`` that keeps the output's mean unchanged.
    """
    assert stat.second is not None, "reconstruction needs unit_stats(second_moments=True)"
    keep, removed = np.flatnonzero(mask), np.flatnonzero(mask == 0)
    covariance = stat.second - np.outer(stat.mean, stat.mean)
    kept_cov = covariance[np.ix_(keep, keep)]
    ridge = RECONSTRUCTION_RIDGE * max(float(np.mean(np.diag(kept_cov))), 1e-30)
    kept_cov[np.diag_indices_from(kept_cov)] += ridge
    delta = np.linalg.solve(kept_cov, covariance[np.ix_(keep, removed)] @ rows[removed])
    shift = stat.mean[removed] @ rows[removed] - stat.mean[keep] @ delta
    return delta, shift


def exact_fill(group: UnitGroup) -> bool:
    """Whether a removed unit's mean folds exactly into the consumer's bias (a dense
    consumer: MatMul/Gemm; a Conv's zero padding would make it approximate)."""
    return group.consumer.op_type in ("MatMul", "Gemm")


def unit_scores(groups: Sequence[UnitGroup], stats: Sequence[UnitStats], method: str, seed: int,
                centred: bool) -> list[np.ndarray]:
    """One score per unit of every group (see the module doc)."""
    rng = np.random.default_rng(seed)
    scores = []
    for group, stat in zip(groups, stats, strict=True):
        if method == "random":
            scores.append(rng.random(group.width))
            continue
        out_norm = np.linalg.norm(group.consumer_rows(), axis=1)
        if method == "magnitude":
            scores.append(_input_norms(group) * out_norm)
            continue
        spread = stat.mean_square - (stat.mean ** 2 if centred and exact_fill(group) else 0.0)
        scores.append(np.sqrt(np.maximum(spread, 0.0)) * out_norm)
    return scores


def _input_norms(group: UnitGroup) -> np.ndarray:
    """Per unit, the product of its weight norms in every producer (a gated MLP's gate and
    up columns multiply: ``silu(x·Wg[:, j])·(x·Wu[:, j])``)."""
    norms = np.ones(group.width)
    producers = [group.producer, *group.co_producers]
    for node, index, axis in group.slices:
        if index == 1 and any(node is p for p in producers):
            weight = np.asarray(constant_array(node.inputs[index]), np.float64)
            norms *= np.linalg.norm(np.moveaxis(weight, int(axis), 0).reshape(group.width, -1), axis=1)
    return norms


def proportional_order(scores: Sequence[np.ndarray], scope: str) -> list[tuple[int, int]]:
    """Every unit ``(group, index)`` in pruning order. ``global``: lowest score first;
    ``layer``: by rank within its group relative to the group's width, so any prefix
    removes about the same fraction of every group."""
    items = []
    for g, row in enumerate(scores):
        ranks = np.argsort(np.argsort(row, kind="stable"), kind="stable")
        for j, value in enumerate(row):
            key = float(value) if scope == "global" else (ranks[j] + 1) / len(row)
            items.append((key, g, j))
    items.sort()
    return [(g, j) for _, g, j in items]


def masks_from_order(order: Sequence[tuple[int, int]], count: int, widths: Sequence[int],
                     scores: Sequence[np.ndarray]) -> list[np.ndarray]:
    """Per-group 0/1 masks removing the first ``count`` units of ``order``; every group keeps
    at least its best-scoring unit (an empty layer would be a different rewrite)."""
    masks = [np.ones(w) for w in widths]
    for g, j in order[:count]:
        masks[g][j] = 0.0
    for g, mask in enumerate(masks):
        if not mask.any():
            mask[int(np.argmax(scores[g]))] = 1.0
    return masks


class UnitPruning(Pass):
    """Base of the structured unit-pruning passes (``prune-ffn``, ``prune-channels``)."""

    lossy = True
    kind: ClassVar[str] = ""
    ratio: float = 0.0
    budget: float = 0.0
    score: Literal["activation", "magnitude", "random"] = "activation"
    scope: Literal["global", "layer"] = "global"
    correct: bool = True
    reconstruct: bool = True
    samples: int = 8
    share: float = 1.0

    def __init__(self, **options: object) -> None:
        super().__init__(**options)
        if not 0.0 <= self.ratio < 1.0:
            raise UsageError(f"{self.name}: ratio={self.ratio} must be in [0, 1)", hint="e.g. ratio=0.25")
        if not 0.0 < self.share <= 1.0:
            raise UsageError(f"{self.name or 'prune'}: share={self.share} must be in (0, 1]", hint="e.g. share=0.5")
        if not 0.0 <= self.budget <= 1.0:
            raise UsageError(f"{self.name}: budget={self.budget} is not a cosine", hint="e.g. budget=0.98")
        if self.ratio and self.budget:
            raise UsageError(f"{self.name}: give ratio or budget, not both")
        if self.samples < 1:
            raise UsageError(f"{self.name}: samples must be >= 1")
        self.curve: dict[int, tuple[float, float]] = {}

    def call(self, model: Model, ctx: PassContext) -> PassResult:
        """Score, choose and remove units; stats: units before/after and the budget curve."""
        min_cosine = self.budget or (
            1.0 - self.share * (1.0 - ctx.budget.min_cosine)
            if ctx.budget is not None and ctx.budget.min_cosine is not None and not self.ratio else 0.0
        )
        if not (self.ratio or min_cosine):
            self.decline(ctx, "<model>", "no ratio or budget given (and no --budget cos=)")
            return PassResult(model, False)
        groups, declined = find_unit_groups(model.ir, self.kind)
        for name, why in declined.items():
            self.decline(ctx, name, why)
        if not groups:
            self.decline(ctx, "<model>", f"no prunable {'FFN' if self.kind == 'ffn' else 'channel'} group")
            return PassResult(model, False)
        total = sum(g.width for g in groups)
        originals = [int(get_meta(g.producer, ORIGINAL_WIDTH_KEY, g.width)) for g in groups]
        result_stats: dict[str, int | float] = {"units_before": total}
        if not min_cosine and not self._left_to_prune(groups, originals):
            return PassResult(model, False, result_stats)  # pruned to this ratio already
        masked = UnitMaskedModel(model, self.kind, ctx.executor)
        samples, _ = scoring_samples(model, ctx, self.samples)
        reconstruct = self.reconstruct and self.correct
        stats = unit_stats(masked, samples, second_moments=reconstruct)
        scores = unit_scores(masked.groups, stats, self.score, ctx.seed, self.correct)
        order = proportional_order(scores, self.scope)
        fills = [s.mean if (self.correct and exact_fill(g)) else np.zeros(g.width)
                 for g, s in zip(masked.groups, stats, strict=True)]

        def masks_of(count: int) -> list[np.ndarray]:
            return masks_from_order(order, count, [g.width for g in groups], scores)

        def updates(masks: list[np.ndarray]) -> list[tuple[np.ndarray, np.ndarray] | None]:
            """Each group's reconstruction (row update, bias shift), where it is done."""
            return [least_squares_update(g.consumer_rows(), st, m) if reconstruct and st.second is not None and not m.all()
                    else None for g, st, m in zip(masked.groups, stats, masks, strict=True)]

        if min_cosine:
            checked, reference = budget_reference(ctx, samples, lambda feeds: masked.run(feeds)[0])

            def outputs(count: int, feeds: Mapping[str, np.ndarray]) -> list[np.ndarray]:
                masks = masks_of(count)
                return masked.run(feeds, masks, [f * (1 - m) for f, m in zip(fills, masks, strict=True)])[0]

            def fidelity(count: int) -> tuple[float, float]:
                if reconstruct:  # the update is not a mask: run the pruned model itself
                    masks = masks_of(count)
                    pruned = model.clone()
                    self.prune_to(pruned, masks, fills, originals, updates(masks))
                    runner = ctx.executor.runner(pruned, purpose="scoring")
                    got = [runner.values(feeds) for feeds in checked]
                else:
                    got = [outputs(count, feeds) for feeds in checked]
                found = measure_fidelity(reference, got)
                return found.cosine_mean, found.cosine_min

            search = search_budget(fidelity, total - len(groups), min_cosine)
            self.curve = search.curve
            for k, (mean, worst) in sorted(search.curve.items()):
                result_stats[f"curve.{k}.cos_mean"] = mean
                result_stats[f"curve.{k}.cos_min"] = worst
            masks = masks_of(search.count)
        else:
            # The ratio is of the original widths, so running twice changes nothing more.
            if self.scope == "global":
                wanted = int(round(self.ratio * sum(originals))) - (sum(originals) - total)
                masks = masks_of(max(0, wanted))
            else:
                masks = [np.ones(g.width) for g in groups]
                for g, group in enumerate(groups):
                    target = max(1, originals[g] - int(round(self.ratio * originals[g])))
                    ranked = [j for gg, j in order if gg == g]
                    for j in ranked[: max(0, group.width - target)]:
                        masks[g][j] = 0.0
        chosen_updates = updates(masks)
        pruned = self.prune_to(model, masks, fills, originals, chosen_updates)
        result_stats.update(units_pruned=pruned, units_after=total - pruned)
        if reconstruct:
            result_stats["reconstructed_layers"] = sum(1 for u in chosen_updates if u is not None)
        return PassResult(model, pruned > 0, result_stats)

    def _left_to_prune(self, groups: Sequence[UnitGroup], originals: Sequence[int]) -> bool:
        """Whether ``ratio`` of the original widths asks for more than is already gone."""
        widths = [g.width for g in groups]
        if self.scope == "global":
            return int(round(self.ratio * sum(originals))) > sum(originals) - sum(widths)
        return any(w > max(1, o - int(round(self.ratio * o))) for w, o in zip(widths, originals, strict=True))

    def prune_to(self, model: Model, masks: list[np.ndarray], fills: list[np.ndarray], originals: list[int],
                 updates: Sequence[tuple[np.ndarray, np.ndarray] | None] | None = None) -> int:
        """Remove the units whose mask is 0 from ``model`` in place, folding ``fills`` (the
        removed units' means, or zeros) into the consumers' biases; returns units removed.

        ``updates`` (per group, from :func:`least_squares_update`, or ``None``) adds its
        ``Δ`` to the kept units' consumer rows and its shift (instead of the fill's) to
        the bias.
        """
        groups, _ = find_unit_groups(model.ir, self.kind)
        names = NameScope(model.ir)
        pruned = 0
        for i, (group, mask, fill, original) in enumerate(zip(groups, masks, fills, originals, strict=True)):
            keep = np.flatnonzero(mask)
            if len(keep) == group.width:
                continue
            removed = np.flatnonzero(mask == 0)
            update = updates[i] if updates is not None else None
            shift = None
            if update is not None:
                shift = update[1]
                _update_consumer_rows(model.graph, group, keep, update[0], names)
            elif fill.any():
                shift = fill[removed] @ group.consumer_rows()[removed]
            if shift is not None and consumer_bias(group) is None and not _add_bias(model.graph, group, names):
                shift = None  # nowhere to fold the mean: the units are removed without it
            slice_group(model.graph, group, keep, names, shift)
            set_meta(group.producer, ORIGINAL_WIDTH_KEY, original)
            pruned += len(removed)
        if pruned:
            get_pass_class("dce")().call(model, PassContext())
            refresh_shapes(model)
        return pruned


def _update_consumer_rows(graph: ir.Graph, group: UnitGroup, keep: np.ndarray, delta: np.ndarray,
                          names: NameScope) -> None:
    """Add ``delta`` ([len(keep), rest]) to the kept units' slices of the consumer weight
    (a new initializer, which ``slice_group`` then slices)."""
    index, axis = group.consumer_weight
    old = group.consumer.inputs[index]
    weight = np.asarray(constant_array(old))
    moved = np.moveaxis(weight, axis, 0).astype(np.float64)
    flat = moved.reshape(group.width, -1)
    flat[keep] += delta
    updated = np.moveaxis(flat.reshape(moved.shape), 0, axis).astype(weight.dtype)
    group.consumer.replace_input_with(index, new_initializer(graph, names.fresh(f"{old.name or 'w'}.reconstructed"), updated))


def _add_bias(graph: ir.Graph, group: UnitGroup, names: NameScope) -> bool:
    """Give a bias-less dense consumer a zero bias to fold the removed units' mean into (a
    Gemm's C input, or an ``Add`` after a MatMul); ``False`` where it cannot."""
    node = group.consumer
    out = node.outputs[0]
    if node.op_type not in ("MatMul", "Gemm") or out.is_graph_output():
        return False
    width = group.consumer_rows().shape[1]
    zeros = new_initializer(graph, names.fresh(f"{node.name or 'consumer'}.bias"),
                            np.zeros(width, dtype=np.asarray(constant_array(node.inputs[1])).dtype))
    if node.op_type == "Gemm":
        node.resize_inputs(3)
        node.replace_input_with(2, zeros)
        return True
    users = list(out.uses())
    add = ir.node("Add", [out, zeros], name=names.fresh(f"{node.name or 'consumer'}.bias_add"))
    add.outputs[0].name = names.fresh(f"{out.name or 'consumer'}.biased")
    graph.insert_after(node, add)
    for user, index in users:
        user.replace_input_with(index, add.outputs[0])
    return True
