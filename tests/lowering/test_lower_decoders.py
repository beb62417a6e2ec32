"""Tiny decoders with a KV cache (past_key_values in, present out) lower to torch and match
ONNX Runtime: unfused, fused (GroupQueryAttention with rotary inside, MultiHeadAttention,
RotaryEmbedding, SimplifiedLayerNormalization), and with int4/int8 block weights
(MatMulNBits, GatherBlockQuantized)."""

from __future__ import annotations

import pytest

pytest.importorskip("torch")

import greencc as gc  # noqa: E402
from greencc.lowering import lower_to_torch  # noqa: E402
from greencc.verify.feeds import random_feeds  # noqa: E402
from tests import models  # noqa: E402
from tests.lowering.helpers import TOLERANCE, max_error, ort_run  # noqa: E402

BLOCKWISE = "cleanup,fuse,dce,quantize-weights{bits=4,embeddings=quantize}"


@pytest.mark.parametrize(("family", "pipeline"), [
    ("llama", "-O0"), ("llama", "-O2"), ("llama", BLOCKWISE), ("gpt2", "-O2"), ("phi", "-O2"),
    ("qwen2", "cleanup,fuse,dce,quantize-weights{bits=8}"),
])
def test_decoder_matches_onnx_runtime(family: str, pipeline: str) -> None:
    model = gc.optimize(models.decoder_model(family), pipeline, verify=False)[0]
    lowered = lower_to_torch(model)
    for seed, dims in ((1, {"batch": 2, "seq": 5, "past_seq": 0}), (2, {"batch": 2, "seq": 1, "past_seq": 6})):
        feeds = random_feeds(model, seed=seed, dims=dims)
        assert max_error(lowered.run(feeds), ort_run(model, feeds)) <= TOLERANCE


def test_the_fused_decoders_hold_the_ops_they_are_meant_to_cover() -> None:
    llama = {n.op_type for n in gc.optimize(models.decoder_model("llama"), BLOCKWISE, verify=False)[0].graph}
    assert {"GroupQueryAttention", "MatMulNBits", "GatherBlockQuantized"} <= llama
    assert "MultiHeadAttention" in {n.op_type for n in gc.optimize(models.decoder_model("gpt2"), "-O2",
                                                                     verify=False)[0].graph}
