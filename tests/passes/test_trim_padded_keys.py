"""trim-padded-keys: fused attention with a key mask runs over the keys up to the last one any
row keeps, with the original's outputs (padded query rows included) on every mask layout."""

from __future__ import annotations

import functools

import numpy as np
import pytest

import greencc as gc
from greencc.cost.estimate import estimate_cost
from greencc.lowering import lower_to_torch
from greencc.passes.fusion.padded_keys import kept_length
from tests.helpers import run_ort
from tests.passes.test_fuse_support import assert_close, ops, reasons, run_fusion

SEQ = 16


def _feeds(mask: np.ndarray, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {"input_ids": rng.integers(0, 100, mask.shape).astype(np.int64), "attention_mask": mask.astype(np.int64)}


def _right_padded(lengths: list[int], seq: int = SEQ) -> np.ndarray:
    return (np.arange(seq)[None, :] < np.array(lengths)[:, None]).astype(np.int64)


# Masks the rewritten graph must treat exactly as the original: padding at the end, at the
# start, inside, a row that keeps nothing, no padding, and a batch of one.
MASKS = {
    "right": _right_padded([5, 3]),
    "left": _right_padded([5, 3])[:, ::-1].copy(),
    "inside": np.array([[1, 1, 0, 1] + [0] * 12, [1] * 6 + [0] * 10]),
    "empty row": _right_padded([4, 0]),
    "full": np.ones((2, SEQ), np.int64),
    "one row": _right_padded([7])[:1],
    "short": _right_padded([2, 3], seq=5),
}
PADDED_CALIBRATION = [_feeds(_right_padded([4, 6]), seed) for seed in (1, 2)]


@functools.cache
def _fused(level: str) -> gc.Model:
    """The tiny BERT at ``-O2`` (fp32 Attention) or int8 (QAttention), trim not applied."""
    from tests.models import tiny_bert_model

    pipeline = {"fp32": "cleanup,fuse,dce", "int8": "cleanup,fuse,dce,quantize-int8"}[level]
    return gc.optimize(tiny_bert_model(dynamic=True), pipeline, calibration=PADDED_CALIBRATION, verify=False)[0]


def _trimmed(level: str, **options: object) -> tuple[gc.Model, object, object]:
    model = _fused(level).clone()
    result, ctx = run_fusion(model, "trim-padded-keys", **options) if options else _run_with_calibration(model)
    return model, result, ctx


def _run_with_calibration(model: gc.Model):
    from greencc.pipeline.base import get_pass_class
    from greencc.pipeline.context import PassContext

    ctx = PassContext(target="ort-cpu", calibration=PADDED_CALIBRATION)
    with ctx:
        return get_pass_class("trim-padded-keys")().call(model, ctx), ctx


def _product(value):
    """The MatMul / MatMulIntegerToFloat behind a projection (through its bias Add)."""
    node = value.producer()
    return node.inputs[0].producer() if node.op_type == "Add" else node


def test_kept_length_is_one_past_the_last_key_any_row_keeps():
    assert kept_length(_right_padded([5, 3]) != 0) == 5
    assert kept_length(MASKS["inside"] != 0) == 6
    assert kept_length(MASKS["left"] != 0) == SEQ
    assert kept_length(MASKS["empty row"] != 0) == SEQ  # that row attends evenly over all keys
    assert kept_length(np.zeros((1, 4), bool)) == 4


@pytest.mark.parametrize("level", ["fp32", "int8"])
def test_attention_becomes_multihead_attention_over_the_kept_keys(level):
    model, result, _ = _trimmed(level)
    assert result.modified and result.stats["fused"] == 2
    assert result.stats["calibration_kept_keys"] == pytest.approx(6 / SEQ)
    kinds = ops(model)
    assert kinds.count("ms::MultiHeadAttention") == 2
    assert "ms::Attention" not in kinds and "ms::QAttention" not in kinds
    if level == "int8":
        assert kinds.count("ms::MatMulIntegerToFloat") == 4  # Q over all rows, K|V over the kept rows
    # K and V are projected from the first L rows only; the mask is cut to the same L.
    for attention in (n for n in model.graph if n.op_type == "MultiHeadAttention"):
        q_product = _product(attention.inputs[0])
        kv_product = _product(attention.inputs[1].producer().inputs[0])  # Split <- the K|V product
        rows = kv_product.inputs[0].producer()
        assert rows.op_type == "Slice" and rows.inputs[0] is q_product.inputs[0]
        assert attention.inputs[4].producer().op_type == "Slice"
        assert rows.inputs[2] is attention.inputs[4].producer().inputs[2]  # the same L


@pytest.mark.parametrize("level", ["fp32", "int8"])
@pytest.mark.parametrize("mask", sorted(MASKS))
def test_outputs_match_onnx_runtime_of_the_fused_model(level, mask):
    model, _, _ = _trimmed(level)
    feeds = _feeds(MASKS[mask], seed=3)
    assert_close(run_ort(_fused(level), feeds), run_ort(model, feeds))


def test_outputs_match_the_original_export_within_float_tolerance():
    from tests.models import tiny_bert_model

    model, _, _ = _trimmed("fp32")
    original = tiny_bert_model(dynamic=True)
    for mask in ("right", "empty row", "one row"):
        feeds = _feeds(MASKS[mask], seed=4)
        assert_close(run_ort(original, feeds), run_ort(model, feeds))


def test_the_lowered_torch_module_matches_onnx_runtime():
    model, _, _ = _trimmed("int8")
    lowered = lower_to_torch(model)
    for mask in ("right", "empty row"):
        feeds = _feeds(MASKS[mask], seed=5)
        got = lowered.run(feeds)
        want = run_ort(model, feeds)
        assert max(float(np.abs(got[k] - w).max()) for k, w in zip(got, want, strict=True)) <= 1e-4


def test_declines_without_calibration_or_padding_and_when_always_applies_anyway():
    model = _fused("fp32").clone()
    result, ctx = run_fusion(model, "trim-padded-keys")
    assert not result.modified
    assert any("no calibration data" in r for r in reasons(ctx, "trim-padded-keys"))

    from greencc.pipeline.base import get_pass_class
    from greencc.pipeline.context import PassContext

    full = [_feeds(np.ones((2, SEQ), np.int64))]
    ctx = PassContext(target="ort-cpu", calibration=full)
    with ctx:
        result = get_pass_class("trim-padded-keys")().call(model, ctx)
    assert not result.modified
    assert any("keep 100% of the keys" in r for r in reasons(ctx, "trim-padded-keys"))

    result, _ = run_fusion(model, "trim-padded-keys", when="always")
    assert result.modified and result.stats["fused"] == 2


def test_declines_causal_attention():
    from tests.models import gpt2_model

    model = gc.optimize(gpt2_model(), "cleanup,fuse,dce", verify=False)[0]
    assert "ms::Attention" in ops(model)
    result, ctx = run_fusion(model, "trim-padded-keys", when="always")
    assert not result.modified
    assert any("causal" in r for r in reasons(ctx, "trim-padded-keys"))


def test_the_cost_model_prices_the_trimmed_keys_at_their_upper_bound():
    dims = {"batch": 2, "seq": SEQ}
    before = estimate_cost(_fused("fp32"), "x86-avx512", dims=dims)
    model, _, _ = _trimmed("fp32")
    after = estimate_cost(model, "x86-avx512", dims=dims)
    assert not any("shapes unknown" in note for note in after.notes)
    assert any("upper bound" in note for note in after.notes)
    # Every MAC of the fused model is still counted (the extra nodes add only elementwise work).
    assert sum(after.macs_by_dtype.values()) == sum(before.macs_by_dtype.values())


def test_o3_applies_it_on_padded_calibration_and_verifies():
    from tests.models import tiny_bert_model

    model, report = gc.optimize(tiny_bert_model(dynamic=True), "-O3", calibration=PADDED_CALIBRATION,
                                dims={"batch": 2, "seq": SEQ})
    row = next(r for r in report.rows if r.name == "trim-padded-keys")
    assert row.modified and row.stats["calibration_kept_keys"] == pytest.approx(6 / SEQ)
    assert "ms::MultiHeadAttention" in ops(model)
