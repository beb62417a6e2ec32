"""The ``fuse`` pass group: every exact fusion, in an order where each can see what the
ones before it produced. ``-O2`` is ``cleanup,fuse,dce``."""

from __future__ import annotations

from greencc.pipeline.base import register_pass
from greencc.pipeline.group import PassGroup


@register_pass("fuse")
class Fuse(PassGroup):
    """Every exact fusion for the target: CNN folds, then transformer patterns -> fused ops.

    Rewrites: those of its members, in this order:
      fold-batchnorm, fold-conv-scale, fold-conv-bias, fold-pad   per-channel affine maps and pads -> Conv
      fuse-layernorm, fuse-gelu          primitive forms -> LayerNormalization / Gelu
      fuse-rmsnorm, fuse-rotary          RMSNorm -> SimplifiedLayerNormalization; RoPE -> RotaryEmbedding
      fuse-decoder-attention             attention with a KV cache -> GroupQueryAttention / MultiHeadAttention
      past-shape-from-mask               a decoder's past shapes from its mask (only attention reads the past)
      fuse-attention                     self-attention blocks -> Attention
      fuse-embed-layernorm, fuse-skip-layernorm, fuse-skip-rmsnorm   sums around the norms -> contrib ops
      fuse-bias-gelu                     Add + Gelu -> BiasGelu / FastGelu
      fuse-matmul-add, fuse-activation   MatMul+Add -> Gemm; Conv/Gemm+activation -> FusedConv/FusedGemm

    LayerNorm, RMSNorm, GELU and RotaryEmbedding are formed before the ops built from them
    (skip/embed norms, bias-GELU, decoder attention, which re-applies the rotary); attention takes its Q/K/V Adds before the skip-LayerNorm and Gemm fusions
    could claim them; Gemm is formed before the activation fusion so it can use FusedGemm.
    Contrib ops appear only where the target runs them; run dce afterwards to drop the
    weights the folds replaced.
    """

    lossy = False
    members = (
        "fold-batchnorm,fold-conv-scale,fold-conv-bias,fold-pad,"
        "fuse-layernorm,fuse-gelu,fuse-rmsnorm,fuse-rotary,fuse-decoder-attention,past-shape-from-mask,fuse-attention,"
        "fuse-embed-layernorm,fuse-skip-layernorm,fuse-skip-rmsnorm,"
        "fuse-bias-gelu,fuse-matmul-add,fuse-activation"
    )
