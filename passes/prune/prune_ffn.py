"""``prune-ffn``: remove the least important intermediate neurons of feed-forward blocks,
scored label-free on the calibration data (see :mod:`unit_pruning`).

    MatMul(x, W1[in, F]) (+ b1) -> act -> MatMul(·, W2[F, out]) (+ b2)
        -> MatMul(x, W1[:, K]) (+ b1[K]) -> act -> MatMul(·, W2[K, :]) (+ b2 + Σ_removed μ_j·W2[j])
"""

from __future__ import annotations

from typing import ClassVar

from greencc.pipeline.base import register_pass

from .unit_pruning import UnitPruning


@register_pass("prune-ffn")
class PruneFFN(UnitPruning):
    """Remove FFN neurons (W1 columns, b1, W2 rows), folding their mean into the W2 bias.

    Rewrites ``MatMul(x, W1[in, F]) -> per-neuron ops -> MatMul(·, W2[F, out])`` to width
    ``K``; every per-neuron constant between them (biases, BiasGelu's bias) is sliced too.
    ``ratio``: fraction of each FFN's original width removed (``scope=layer``) or of all
    neurons (``scope=global``); ``budget``: the minimum cosine to keep, searched for the
    most neurons. ``score``: ``activation`` (Wanda-style ``std(a_j)·‖W2[j]‖``),
    ``magnitude`` or ``random``; ``correct`` folds removed neurons' mean output into the
    bias of W2; ``reconstruct`` also re-fits the kept W2 rows by ridge least squares on
    the calibration tokens (:func:`unit_pruning.least_squares_update`). ``share``: the fraction of the run's budgeted loss this pass may spend.
    """

    kind: ClassVar[str] = "ffn"
