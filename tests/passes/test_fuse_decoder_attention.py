"""fuse-decoder-attention: causal self-attention reading past keys/values and returning the
present ones becomes GroupQueryAttention (fewer KV heads than query heads) or
MultiHeadAttention with past and present, keeping the graph's signature."""

from __future__ import annotations

import os
from collections import Counter

import numpy as np
import pytest

import greencc as gc
from greencc.verify.feeds import decoder_feeds
from tests import models
from tests.helpers import run_ort
from tests.passes.strategies import fingerprint
from tests.passes.test_fuse_support import assert_close, reasons, run_fusion

os.environ.setdefault("HF_HUB_OFFLINE", "1")
pytest.importorskip("torch")
pytest.importorskip("transformers")

PREPARE = "cleanup,fuse-rotary"


def _prepared(family: str) -> gc.Model:
    prepared, _ = gc.optimize(models.decoder_model(family), PREPARE, verify=False)
    return prepared


def test_golden_llama_block_becomes_group_query_attention():
    model = _prepared("llama")
    result, ctx = run_fusion(model, "fuse-decoder-attention")
    assert result.stats["fused"] == 2
    gqa = [n for n in model.graph if n.op_type == "GroupQueryAttention"]
    assert len(gqa) == 2 and all(n.domain == "com.microsoft" for n in gqa)
    first = gqa[0]
    assert {k: first.attributes[k].value for k in ("num_heads", "kv_num_heads", "causal")} == {
        "num_heads": 4, "kv_num_heads": 2, "causal": 1}
    assert first.attributes["scale"].as_float() == pytest.approx(1 / np.sqrt(8), rel=1e-6)
    names = [v.name if v is not None else "" for v in first.inputs]
    assert names[3:5] == ["past_key_values.0.key", "past_key_values.0.value"]
    assert [o.name for o in first.outputs[1:]] == ["present.0.key", "present.0.value"]
    # rotary re-applied to the 3-D projections; the sequence lengths computed once for both layers
    assert first.inputs[0].producer().op_type == "RotaryEmbedding"
    assert first.inputs[0].producer().attributes["num_heads"].as_int() == 4
    assert first.inputs[1].producer().attributes["num_heads"].as_int() == 2
    assert first.inputs[10].producer() is not None  # attention_bias: the model's own mask
    assert [first.inputs[i] for i in (5, 6, 16)] == [gqa[1].inputs[i] for i in (5, 6, 16)]
    ops = Counter(n.op_type for n in model.graph)
    assert ops["Softmax"] == 0 and ops["Transpose"] == 0
    assert ctx.near_misses == []


def test_golden_gpt2_block_becomes_multi_head_attention_with_past():
    model = _prepared("gpt2")
    result, _ = run_fusion(model, "fuse-decoder-attention")
    assert result.stats["fused"] == 2
    (first, _second) = [n for n in model.graph if n.op_type == "MultiHeadAttention"]
    assert first.attributes["num_heads"].as_int() == 4 and first.attributes["unidirectional"].as_int() == 0
    names = [v.name if v is not None else "" for v in first.inputs]
    assert names[6:8] == ["past_key_values.0.key", "past_key_values.0.value"] and names[3:5] == ["", ""]
    assert [o.name for o in first.outputs[1:]] == ["present.0.key", "present.0.value"]
    # GPT-2's Conv1D reads the context as [batch·seq, hidden]
    assert [u.op_type for u, _ in first.outputs[0].uses()] == ["Reshape"]


@pytest.mark.parametrize("family", ["llama", "gpt2", "phi"])
@pytest.mark.parametrize(("batch", "seq", "past"), [(2, 3, 5), (1, 4, 0), (3, 1, 6)])
def test_matches_ort_on_prefill_and_decode_shapes(family, batch, seq, past):
    model = _prepared(family)
    feeds = decoder_feeds(model, batch=batch, seq=seq, past_seq=past, seed=batch + seq + past)
    expected = run_ort(model, feeds)
    run_fusion(model, "fuse-decoder-attention")
    assert_close(expected, run_ort(model, feeds))


def test_is_idempotent():
    model = _prepared("qwen2")
    run_fusion(model, "fuse-decoder-attention")
    before = fingerprint(model)
    again, _ = run_fusion(model, "fuse-decoder-attention")
    assert again.modified is False and fingerprint(model) == before


def test_declines_without_a_kv_cache():
    model = models.gpt2_model()
    before = fingerprint(model)
    result, ctx = run_fusion(model, "fuse-decoder-attention")
    assert result.modified is False and fingerprint(model) == before
    found = reasons(ctx, "fuse-decoder-attention")
    assert found and all("is not Concat(past, new): the block has no KV cache" in r for r in found)


def test_declines_unrotated_queries_with_rotated_keys():
    model, _ = gc.optimize(models.decoder_model("llama"), "cleanup", verify=False)
    run_fusion(model, "fuse-rotary")
    for node in list(model.graph):  # undo the rotary of the first layer's queries only
        if node.op_type == "RotaryEmbedding":
            node.outputs[0].replace_all_uses_with(node.inputs[0])
            break
    result, ctx = run_fusion(model, "fuse-decoder-attention")
    assert result.stats["fused"] == 1
    assert reasons(ctx, "fuse-decoder-attention") == ["only one of queries and keys is rotated"]


def test_declines_on_a_target_without_the_op():
    model = _prepared("llama")
    result, ctx = run_fusion(model, "fuse-decoder-attention", target=None)
    assert result.modified is False
    assert set(reasons(ctx, "fuse-decoder-attention")) == {
        "no target is set, so com.microsoft::GroupQueryAttention is not known to run anywhere (give -t TARGET)"
    }
