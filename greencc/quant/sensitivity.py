"""Per-layer int8 sensitivity and float fallback: how much fidelity each quantized layer
costs, how much energy it saves, and which layers to keep in float so that the model
stays within a fidelity budget.

The measurement is leave-one-out: with every other layer quantized, the fidelity gained
by leaving layer *i* in float is its ``loss``. Layers are ranked by estimated energy saved
per unit of fidelity lost (mJ per point of cosine); the lowest-ranked are returned to
float one at a time, re-measuring, until the budget holds.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from greencc.verify.fidelity import Fidelity, FidelityBudget

# Fidelity losses below this count as this much, so rankings never divide by zero (cosine).
MIN_LOSS = 1e-6


@dataclass
class LayerSensitivity:
    """One quantizable layer: ``energy_saved_mj`` (estimated per inference; negative when
    its quantization steps cost more than its int8 product saves), ``cosine_without``
    (min cosine with all other layers quantized and this one in float), ``loss`` (how much
    min cosine this layer's quantization costs: ``cosine_without`` minus the all-int8
    figure; in the units of the ranking metric), ``decision`` (the quantized form, "int8"
    by default, or "float") and ``why``."""

    name: str
    kind: str
    energy_saved_mj: float
    cosine_without: float = 1.0
    loss: float = 0.0
    decision: str = "int8"
    why: str = ""

    @property
    def mj_per_cosine(self) -> float:
        """Energy saved per unit of min cosine lost (mJ per 1.0 of cosine)."""
        return self.energy_saved_mj / max(self.loss, MIN_LOSS)


@dataclass
class SensitivityReport:
    """The ranking (best value first: most energy per fidelity lost), the fidelity of the
    all-int8 model and of the final choice, and the layers kept in float (in the order
    they were returned to float). ``measured`` is False when the budget held without the
    leave-one-out losses (they were not measured; the ranking is by energy alone)."""

    layers: list[LayerSensitivity]
    all_int8: Fidelity
    final: Fidelity
    kept_float: list[str] = field(default_factory=list)
    budget: str = ""
    measured: bool = True

    def stats(self) -> dict[str, int | float]:
        """Ledger counters: the ranking and the decisions, one entry per layer
        (``rank03 node_MatMul_120 cos_loss``), plus the fidelity before and after."""
        stats: dict[str, int | float] = {
            "sensitivity.min_cosine_all_int8": round(self.all_int8.cosine_min, 6),
            "sensitivity.min_cosine_final": round(self.final.cosine_min, 6),
            "sensitivity.kept_float": len(self.kept_float),
            "sensitivity.leave_one_out": int(self.measured),
        }
        for rank, layer in enumerate(self.layers, start=1):
            prefix = f"rank{rank:02d} {layer.name}"
            stats[f"{prefix} mJ_saved"] = round(layer.energy_saved_mj, 6)
            if self.measured:
                stats[f"{prefix} cos_loss"] = round(layer.loss, 6)
            stats[f"{prefix} float"] = int(layer.decision == "float")
        return stats

    def table(self) -> str:
        """A plain-text ranking table (for reports and notes)."""
        lines = [f"{'rank':>4}  {'layer':40s} {'kind':9s} {'mJ saved':>9} {'cos loss':>9}  decision"]
        for rank, layer in enumerate(self.layers, start=1):
            loss = f"{layer.loss:9.5f}" if self.measured else f"{'-':>9}"
            lines.append(
                f"{rank:>4}  {layer.name[:40]:40s} {layer.kind:9s} {layer.energy_saved_mj:9.4f} "
                f"{loss}  {layer.decision}{' (' + layer.why + ')' if layer.why else ''}"
            )
        return "\n".join(lines)


def choose_float_layers(
    layers: Sequence[LayerSensitivity],
    score: Callable[[frozenset[str]], Fidelity],
    budget: FidelityBudget,
    *,
    max_float: int | None = None,
    metric: Callable[[Fidelity], float] | None = None,
    costly_first: bool = True,
    progress: Callable[[int, int], None] | None = None,
) -> SensitivityReport:
    """Rank ``layers`` and keep the worst offenders in float until ``budget`` holds.

    ``score(keep_float)`` builds the model with the named layers left in float (all
    others int8) and returns its fidelity against the reference. Each layer's ``loss`` is
    measured leave-one-out; layers whose quantization costs energy
    (``energy_saved_mj <= 0``) go back to float first, then the lowest mJ per cosine.
    ``max_float`` caps how many layers may return to float (default: all). ``metric``
    (higher is better; default the min cosine) measures the loss, e.g.
    ``budget.primary_metric()`` ranks by perplexity under a ``ppl=`` budget; ``loss`` is
    then in the metric's units. ``costly_first=False`` ranks layers that save no energy
    last instead of returning them to float unasked (when the quantized form is wanted for
    its size). ``progress(done, total)`` is called as each leave-one-out score is done.
    ``layers`` are updated in place and returned ranked best first. The leave-one-out
    losses are measured only when the budget fails with every energy-saving layer quantized
    (``SensitivityReport.measured``); otherwise ``score`` runs once or twice.
    """
    metric = metric or (lambda fidelity: fidelity.cosine_min)
    layers = list(layers)
    all_int8 = score(frozenset())
    kept: list[str] = []
    for layer in layers:
        if costly_first and layer.energy_saved_mj <= 0:
            layer.decision, layer.why = "float", f"{layer.decision} costs more energy than it saves"
            kept.append(layer.name)
    final = score(frozenset(kept)) if kept else all_int8
    limit = len(layers) if max_float is None else max_float
    # Leave-one-out costs one build and run per layer (151 on a 30-layer decoder: the most of
    # a compile); it only orders the layers to return to float, so it runs only when some must.
    measured = budget.check(final) is not None and len(kept) < limit
    if measured:
        for done, layer in enumerate(layers, start=1):
            without = score(frozenset({layer.name}))
            layer.cosine_without = without.cosine_min
            layer.loss = max(0.0, metric(without) - metric(all_int8))
            if progress is not None:
                progress(done, len(layers))
    # Best value first: energy-positive layers by mJ per cosine descending (by energy alone
    # when unmeasured), then the layers that save nothing, the least lossy first (so the
    # lossiest go back to float first).
    layers.sort(key=lambda layer: (layer.energy_saved_mj > 0,
                                   layer.mj_per_cosine if layer.energy_saved_mj > 0 else -layer.loss), reverse=True)
    for layer in reversed(layers):
        if budget.check(final) is None or len(kept) >= limit:
            break
        if layer.decision == "float":
            continue
        kept.append(layer.name)
        layer.decision, layer.why = "float", f"kept in float for the budget ({budget})"
        final = score(frozenset(kept))
    return SensitivityReport(layers, all_int8, final, kept, str(budget), measured=measured)
