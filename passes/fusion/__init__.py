"""Fusion passes: CNN folds (BatchNorm, bias, scale, pad into Conv; MatMul+Add -> Gemm;
Conv/Gemm + activation) and transformer fusions (LayerNorm, GELU, bias+GELU, skip+LayerNorm,
embedding+LayerNorm, attention), each target-aware and saying why when it declines.

Importing this package registers every fusion pass and the ``fuse`` group (the
``attention-heads`` analysis lives in ``passes/lib``).
"""

from . import (  # noqa: F401
    activation,
    attention,
    conv_folding,
    decoder_attention,
    gelu,
    gemm,
    group,
    layernorm,
    padded_keys,
    past_shape,
    rmsnorm,
    rotary,
)
