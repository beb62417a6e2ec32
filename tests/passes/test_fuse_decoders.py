"""Decoders with a KV cache at -O2: every attention block becomes GroupQueryAttention (grouped
KV heads) or MultiHeadAttention, every RMSNorm a (Skip)SimplifiedLayerNormalization, every
rotary embedding a RotaryEmbedding; prefill plus four decode steps match PyTorch within 1e-4."""

from __future__ import annotations

import copy
import os
from collections import Counter

import numpy as np
import pytest

import greencc as gc
from tests import models

os.environ.setdefault("HF_HUB_OFFLINE", "1")
torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

TOLERANCE = 1e-4
DECODE_STEPS = 4
LAYERS = 2
# family -> (fused attention op, RMSNorms, rotary embeddings: one on Q and one on K per layer)
EXPECTED = {
    "gpt2": ("MultiHeadAttention", 0, 0),
    "opt": ("MultiHeadAttention", 0, 0),
    "llama": ("GroupQueryAttention", 2 * LAYERS + 1, 2 * LAYERS),
    "mistral": ("GroupQueryAttention", 2 * LAYERS + 1, 2 * LAYERS),
    "qwen2": ("GroupQueryAttention", 2 * LAYERS + 1, 2 * LAYERS),
    "phi": ("MultiHeadAttention", 0, 2 * LAYERS),
}
RMSNORM_OPS = ("SimplifiedLayerNormalization", "SkipSimplifiedLayerNormalization")


def _perturbed_norms(family: str, hidden: int = 32):
    """The tiny ``family`` decoder with seeded random norm weights (random init leaves them
    at one, which the exporter folds away), so the fused norms carry a real γ."""
    module = copy.deepcopy(models.decoder_module(family, hidden=hidden))
    generator = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for name, parameter in module.named_parameters():
            if "norm" in name or ".ln_" in name or "layer_norm" in name:
                parameter.add_(0.2 * torch.randn(parameter.shape, generator=generator))
    return module


def _torch_steps(module, prompt, mask, tokens):
    from transformers.cache_utils import DynamicCache

    cache = DynamicCache()
    positions = np.where(mask == 1, np.cumsum(mask, axis=1) - 1, 1)
    results = []
    with torch.no_grad():
        for step in range(len(tokens) + 1):
            ids = prompt if step == 0 else tokens[step - 1][:, None]
            out = module(input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask),
                         position_ids=torch.tensor(positions), cache=cache, use_cache=True)
            results.append(out.logits.numpy())
            mask = np.concatenate([mask, np.ones((mask.shape[0], 1), np.int64)], axis=1)
            positions = positions[:, -1:] + 1
    return results


def _greencc_steps(compiled, spec, prompt, mask, tokens):
    positions = np.where(mask == 1, np.cumsum(mask, axis=1) - 1, 1)
    past = dict.fromkeys(spec.past_names(), np.zeros((prompt.shape[0], spec.num_kv_heads, 0, spec.head_dim),
                                                      np.float32))
    results = []
    for step in range(len(tokens) + 1):
        ids = prompt if step == 0 else tokens[step - 1][:, None]
        outputs = compiled({"input_ids": ids, "attention_mask": mask, "position_ids": positions, **past})
        results.append(outputs["logits"])
        past = {name: outputs[present] for name, present in zip(spec.past_names(), spec.present_names(), strict=True)}
        mask = np.concatenate([mask, np.ones((mask.shape[0], 1), np.int64)], axis=1)
        positions = positions[:, -1:] + 1
    return results


def _prompts(spec):
    rng = np.random.default_rng(1)
    prompt = rng.integers(3, spec.vocab_size, (2, 6)).astype(np.int64)
    mask = np.ones_like(prompt)
    mask[1, :2] = 0  # the second prompt is two tokens shorter, left-padded
    tokens = [rng.integers(3, spec.vocab_size, 2).astype(np.int64) for _ in range(DECODE_STEPS)]
    return prompt, mask, tokens


def _assert_steps_match(module, compiled, spec) -> None:
    prompt, mask, tokens = _prompts(spec)
    expected = _torch_steps(module, prompt, mask, tokens)
    got = _greencc_steps(compiled, spec, prompt, mask, tokens)
    attended = mask.astype(bool)  # left-padding rows attend to nothing; their logits are discarded
    np.testing.assert_allclose(got[0][attended], expected[0][attended], atol=TOLERANCE, rtol=0)
    for step in range(1, DECODE_STEPS + 1):
        np.testing.assert_allclose(got[step], expected[step], atol=TOLERANCE, rtol=0, err_msg=f"step {step}")


@pytest.mark.parametrize("family", models.DECODER_FAMILIES)
def test_o2_fuses_every_block_and_matches_pytorch_over_four_decode_steps(family) -> None:
    module = _perturbed_norms(family)
    model = gc.from_torch(module)
    spec = gc.DecoderSpec.of(model)
    before = Counter(node.op_type for node in model.graph)
    compiled = gc.compile(model, target="ort-cpu", pipeline="-O2")
    ops = Counter(node.op_type for node in compiled.model.graph)
    attention, rmsnorms, rotaries = EXPECTED[family]
    assert ops[attention] == spec.num_layers == LAYERS
    assert ops["Softmax"] == 0 and ops["ReduceMean"] == 0 and ops["Neg"] == 0
    assert sum(ops[op] for op in RMSNORM_OPS) == rmsnorms
    assert ops["RotaryEmbedding"] == rotaries
    for node in compiled.model.graph:  # the perturbed γ went into the fused norms
        if node.op_type in RMSNORM_OPS:
            gamma = node.inputs[1 if node.op_type == "SimplifiedLayerNormalization" else 2].const_value.numpy()
            assert not np.allclose(gamma, 1.0)
    assert before["Softmax"] == LAYERS  # the export had one unfused block per layer
    assert [v.name for v in compiled.model.graph.inputs] == [v.name for v in model.graph.inputs]
    assert [v.name for v in compiled.model.graph.outputs] == [v.name for v in model.graph.outputs]
    _assert_steps_match(module, compiled, spec)


@pytest.mark.parametrize("family", ["llama", "qwen2"])
def test_o2_rotates_inside_packed_group_query_attention_at_head_size_16(family) -> None:
    """Head size 16 (hidden 64, 4 heads): the rotary moves into GroupQueryAttention with
    the model's position_ids and Q/K/V pack into one MatMul (Qwen2's biases too); left
    padding and four decode steps still match PyTorch."""
    module = _perturbed_norms(family, hidden=64)
    model = gc.from_torch(module)
    spec = gc.DecoderSpec.of(model)
    compiled = gc.compile(model, target="ort-cpu", pipeline="-O2")
    ops = Counter(node.op_type for node in compiled.model.graph)
    assert ops["RotaryEmbedding"] == 0 and ops["GroupQueryAttention"] == LAYERS
    for node in compiled.model.graph:
        if node.op_type != "GroupQueryAttention":
            continue
        assert node.attributes["do_rotary"].as_int() == 1
        assert node.inputs[1] is None and node.inputs[2] is None  # packed QKV
        assert node.inputs[9].name == "position_ids"
        assert node.inputs[7].const_value.numpy().shape == (64, 8)  # max positions x head_size / 2
        packed = node.inputs[0].producer()
        while packed.op_type == "Add":
            packed = packed.inputs[0].producer()
        assert packed.op_type == "MatMul" and packed.inputs[1].const_value.numpy().shape == (64, 64 + 2 * 2 * 16)
    _assert_steps_match(module, compiled, spec)


def test_o2_keeps_rotary_outside_where_the_kernel_cannot_rotate() -> None:
    """Head size 8 is below onnxruntime's multiple of 16: RotaryEmbedding stays on the 3-D
    projections and Q, K, V stay separate."""
    compiled = gc.compile(models.decoder_model("llama"), target="ort-cpu", pipeline="-O2")
    for node in compiled.model.graph:
        if node.op_type == "GroupQueryAttention":
            assert "do_rotary" not in node.attributes
            assert node.inputs[0].producer().op_type == "RotaryEmbedding" and node.inputs[2] is not None


def test_the_fuse_row_counts_each_fusion() -> None:
    compiled = gc.compile(models.decoder_model("llama"), target="ort-cpu", pipeline="-O2")
    fuse = next(row for row in compiled.report.rows if row.name == "fuse")
    assert fuse.stats["fuse-decoder-attention.fused"] == LAYERS
    assert fuse.stats["fuse-rotary.fused"] == 2 * LAYERS
    assert fuse.stats["fuse-rmsnorm.fused"] == 2 * LAYERS + 1
    assert fuse.stats["fuse-skip-rmsnorm.fused"] == 2 * LAYERS
    assert fuse.stats["fuse-decoder-attention.activation_bytes_removed"] > 0


def test_a_target_without_the_ops_keeps_the_decoder_unfused() -> None:
    model = models.decoder_model("llama")
    fused, report = gc.optimize(model, "fuse", target=None)
    ops = Counter(node.op_type for node in fused.graph)
    assert ops["GroupQueryAttention"] == 0 and ops["SimplifiedLayerNormalization"] == 0
    reasons = {m["pass"]: m["reason"] for m in report.near_misses}
    assert "no target is set" in reasons["fuse-rmsnorm"]
    assert "no target is set" in reasons["fuse-rotary"]


@pytest.mark.parametrize("family", ["llama", "qwen2"])
def test_past_shape_from_mask_leaves_the_past_to_attention_and_matches_ort(family) -> None:
    """After fuse-decoder-attention, past-shape-from-mask keeps every output bit for bit
    (prefill, decode, left padding) and leaves GroupQueryAttention the only reader of the past."""
    from greencc.verify.feeds import decoder_feeds
    from tests.helpers import run_ort

    model = models.decoder_model(family)
    spec = gc.DecoderSpec.of(model)
    fused, _ = gc.optimize(model, "cleanup,fuse-rmsnorm,fuse-rotary,fuse-decoder-attention", target="ort-cpu",
                           verify=False)
    rewritten, report = gc.optimize(fused, "past-shape-from-mask", target="ort-cpu", verify=False)
    assert next(row for row in report.rows if row.name == "past-shape-from-mask").stats["rewritten"] > 0
    for batch, seq, past in ((2, 3, 5), (1, 4, 0), (3, 1, 6)):
        feeds = decoder_feeds(model, batch=batch, seq=seq, past_seq=past, seed=past)
        for expected, got in zip(run_ort(fused, feeds), run_ort(rewritten, feeds), strict=True):
            np.testing.assert_array_equal(got, expected)
    inputs = {value.name: value for value in rewritten.graph.inputs}
    assert {user.op_type for name in spec.past_names() for user, _ in inputs[name].uses()} == {"GroupQueryAttention"}


def test_past_shape_from_mask_leaves_multi_head_attention_decoders_alone() -> None:
    """GPT-2's MultiHeadAttention cannot append in place: its shape reads stay."""
    fused, report = gc.optimize(models.decoder_model("gpt2"), "-O2", target="ort-cpu", verify=False)
    spec = gc.DecoderSpec.of(fused)
    inputs = {value.name: value for value in fused.graph.inputs}
    assert "Shape" in {user.op_type for name in spec.past_names() for user, _ in inputs[name].uses()}
