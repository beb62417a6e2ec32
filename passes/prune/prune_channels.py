"""``prune-channels``: remove the least important output channels of convolutions, scored
label-free on the calibration data (see :mod:`unit_pruning`).

    Conv(x, W1[C, ...], b1[C]) -> BN[C] -> Relu -> pool -> Conv(·, W2[:, C, ...]) | Flatten -> Gemm
        -> the same with C output channels reduced to K (BatchNormalization's scale, bias,
           mean and variance sliced with them)
"""

from __future__ import annotations

from typing import ClassVar

from greencc.pipeline.base import register_pass

from .unit_pruning import UnitPruning


@register_pass("prune-channels")
class PruneChannels(UnitPruning):
    """Remove Conv output channels and the matching input channels downstream.

    Rewrites ``Conv(W1[C, ...]) -> BatchNormalization / activation / pooling -> Conv(W2[:, C])``
    (or ``-> GlobalAveragePool -> Flatten -> Gemm``) to ``K`` channels, slicing the Conv
    bias, BatchNormalization's four parameters and per-channel constants. ``ratio``,
    ``budget``, ``score``, ``scope`` as in ``prune-ffn``; the removed channels' mean is
    folded into a dense consumer's bias (exact there; not into a Conv, whose zero padding
    would make it approximate).
    """

    kind: ClassVar[str] = "channels"
