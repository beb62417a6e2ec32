"""``prune-heads``: remove the least important attention heads, chosen label-free on the
calibration data, structurally (see :mod:`head_surgery`), in unfused and fused graphs.

    Attention{H heads} -> Attention{K heads} (Q/K/V columns, biases, O rows, head counts)
    block with every head pruned -> residual + O bias
"""

from __future__ import annotations

from typing import Literal

import numpy as np

from greencc.errors import UsageError
from greencc.ir import infer_shapes, symbolic_dims
from greencc.model import Model
from greencc.passes.lib.graph_edits import NameScope
from greencc.pipeline.base import Pass, PassResult, get_pass_class, register_pass
from greencc.pipeline.context import PassContext
from greencc.verify.fidelity import measure_fidelity

from .calibration import budget_reference, scoring_samples
from .head_blocks import find_head_blocks
from .head_importance import HeadImportance, head_importance
from .head_mask import HeadMaskedModel
from .head_surgery import prune_block
from .selection import masks_for, ranking, search_budget

# Model metadata: how many prunable heads the model had before the first prune-heads.
ORIGINAL_HEADS_KEY = "greencc.prune_heads.original_heads"


@register_pass("prune-heads")
class PruneHeads(Pass):
    """Remove the least important attention heads (label-free scores) from every block.

    Rewrites, per attention block (fused ``com.microsoft::Attention`` or unfused):
      Q/K/V [in, H·d] -> [in, K·d], biases, O [H·d, out] -> [K·d, out], head-count
      constants in Reshapes, ``num_heads``; a block left with no head -> residual + O bias.

    Exactly one of ``ratio`` (fraction of all heads), ``count`` or ``budget`` (the minimum
    cosine to keep, searched for the most heads) chooses how many; without any, the run's
    ``--budget cos=`` is used. ``score``: ``ablation`` (output change when the head alone
    is masked), ``fisher`` (empirical Fisher by finite differences on head masks),
    ``magnitude`` or ``random``. ``rounds`` > 1 re-scores after each of that many steps
    (iterative pruning). ``samples``: calibration samples scored. ``share``: the fraction of
    the run's budgeted loss (1 − cos) this pass may spend, leaving the rest to later lossy
    passes (``share=0.5`` under ``cos=0.98`` prunes down to cos 0.99 of the pipeline input).
    """

    lossy = True
    analyses = ("attention-heads",)
    ratio: float = 0.0
    count: int = 0
    budget: float = 0.0
    score: Literal["ablation", "fisher", "magnitude", "random"] = "ablation"
    rounds: int = 1
    samples: int = 8
    share: float = 1.0

    def __init__(self, **options: object) -> None:
        super().__init__(**options)
        if not 0.0 <= self.ratio <= 1.0:
            raise UsageError(f"prune-heads: ratio={self.ratio} is not a fraction", hint="e.g. ratio=0.25")
        if self.count < 0 or self.rounds < 1 or self.samples < 1:
            raise UsageError("prune-heads: count must be >= 0, rounds and samples >= 1")
        if not 0.0 < self.share <= 1.0:
            raise UsageError(f"{self.name or 'prune'}: share={self.share} must be in (0, 1]", hint="e.g. share=0.5")
        if not 0.0 <= self.budget <= 1.0:
            raise UsageError(f"prune-heads: budget={self.budget} is not a cosine", hint="e.g. budget=0.98")
        if sum(1 for v in (self.ratio, self.count, self.budget) if v) > 1:
            raise UsageError("prune-heads: give one of ratio, count and budget", hint="e.g. prune-heads{ratio=0.25}")
        self.importance: HeadImportance | None = None
        self.curve: dict[int, tuple[float, float]] = {}

    def call(self, model: Model, ctx: PassContext) -> PassResult:
        """Score, choose and remove heads; stats carry the per-head scores and the curve."""
        min_cosine = self.budget or (
            1.0 - self.share * (1.0 - ctx.budget.min_cosine)
            if ctx.budget is not None and ctx.budget.min_cosine is not None and not (self.ratio or self.count) else 0.0
        )
        if not (self.ratio or self.count or min_cosine):
            self.decline(ctx, "<model>", "no ratio, count or budget given (and no --budget cos=)")
            return PassResult(model, False)
        found = find_head_blocks(model)
        for name, why in found.declined.items():
            self.decline(ctx, name, why)
        if not found.blocks:
            self.decline(ctx, "<model>", "no prunable attention block")
            return PassResult(model, False)
        total = found.total_heads
        stats: dict[str, int | float] = {"heads_total": total}
        count = 0
        if not min_cosine:
            # ratio and count refer to the heads the model had before any pruning, so a
            # second run with the same options has nothing left to do (idempotence).
            original = int(model.ir.metadata_props.get(ORIGINAL_HEADS_KEY, total))
            wanted = self.count if self.count else int(round(self.ratio * original))
            count = max(0, min(wanted - (original - total), total))
            stats["heads_original"] = original
            if count == 0:
                return PassResult(model, False, stats)
        self.importance = None
        masked = HeadMaskedModel(model, ctx.executor)
        samples, source = scoring_samples(model, ctx, self.samples)
        ones = masked.ones()

        def scores(masks: list[np.ndarray]) -> list[np.ndarray]:
            result = head_importance(
                masked, samples, self.score, source=source, base_masks=masks, seed=ctx.seed,
                progress=lambda done, total: ctx.progress.step(f"{self.score} head scores", done, total),
            )
            if self.importance is None:
                self.importance = result
            return result.by_block()

        order = ranking(scores, ones, self.rounds)
        if min_cosine:
            checked, reference = budget_reference(ctx, samples, masked.run)

            def fidelity(count: int) -> tuple[float, float]:
                masks = masks_for(order, count, ones)
                got = [masked.run(feeds, masks) for feeds in checked]
                result = measure_fidelity(reference, got)
                return result.cosine_mean, result.cosine_min

            search = search_budget(fidelity, total, min_cosine)
            self.curve = search.curve
            count = search.count
            for k, (mean, worst) in sorted(search.curve.items()):
                stats[f"curve.{k}.cos_mean"] = mean
                stats[f"curve.{k}.cos_min"] = worst
        keep = masks_for(order, count, ones)
        assert self.importance is not None
        for s in self.importance.scores:
            stats[f"score.{s.block}.{s.head}"] = s.score
        if count == 0:
            return PassResult(model, False, stats)
        model.ir.metadata_props.setdefault(ORIGINAL_HEADS_KEY, str(total))
        pruned, removed_blocks = self.prune_to(model, ctx, keep)
        stats.update(heads_pruned=pruned, blocks_removed=removed_blocks)
        return PassResult(model, pruned > 0, stats)

    def prune_to(self, model: Model, ctx: PassContext, keep: list[np.ndarray]) -> tuple[int, int]:
        """Prune ``model`` in place to the masks ``keep``; returns (heads, whole blocks) removed."""
        found = find_head_blocks(model)
        names = NameScope(model.ir)
        pruned = removed = 0
        for block, mask in zip(found.blocks, keep, strict=True):
            drop = int((mask == 0).sum())
            if drop == 0:
                continue
            why = prune_block(model.graph, block, mask != 0, names)
            if why:
                self.decline(ctx, block.name, why)
                continue
            pruned += drop
            removed += int(drop == block.num_heads)
        if pruned:
            get_pass_class("dce")().call(model, ctx)
            refresh_shapes(model)
        return pruned, removed


def refresh_shapes(model: Model) -> None:
    """Forget the (now stale) shapes of intermediate values and infer them again."""
    for node in model.graph:
        for value in node.outputs:
            if not value.is_graph_output():
                value.shape = None
    infer_shapes(model.ir, symbolic=bool(symbolic_dims(model.ir)))
