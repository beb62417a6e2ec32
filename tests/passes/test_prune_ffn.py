"""prune-ffn: FFN neurons removed structurally (W1 columns, biases, W2 rows) in unfused and
fused graphs, equal to masking them in the original, with the mean folded into W2's bias;
label-free scores, budgets, declines and idempotence."""

from __future__ import annotations

import numpy as np
import pytest

import greencc as gc
from greencc.passes.prune.prune_ffn import PruneFFN
from greencc.passes.prune.unit_pruning import UnitMaskedModel, unit_stats
from greencc.passes.prune.units import find_unit_groups
from greencc.pipeline.context import PassContext
from greencc.pipeline.manager import PassManager
from greencc.verify.fidelity import measure_fidelity
from tests.models import feeds_of, ort_outputs, small_cnn_model, tiny_bert_inputs, tiny_bert_model


def _feeds(seq: int = 16, seed: int = 0) -> dict[str, np.ndarray]:
    return feeds_of(tiny_bert_inputs(seq=seq, seed=seed))


def _calibration() -> list[dict[str, np.ndarray]]:
    return [_feeds(seed=s) for s in range(4)]


def _widths(model: gc.Model) -> list[int]:
    return [g.width for g in find_unit_groups(model.ir, "ffn")[0]]


def test_golden_structure():
    model = tiny_bert_model()
    groups, declined = find_unit_groups(model.ir, "ffn")
    assert [g.width for g in groups] == [64, 64] and not declined
    assert [(n.op_type, i, a) for n, i, a in groups[0].slices] == [("MatMul", 1, 1), ("Add", 1, 0), ("MatMul", 1, 0)]
    with PassContext(calibration=_calibration()) as ctx:
        result = PruneFFN(ratio=0.25, score="magnitude", correct=False, scope="layer").call(model.clone(), ctx)
    pruned = result.model
    assert _widths(pruned) == [48, 48]
    assert result.stats == {"units_before": 128, "units_pruned": 32, "units_after": 96}
    # The kept neurons are the 48 largest ‖W1[:, j]‖·‖W2[j]‖, their weights unchanged.
    group = groups[0]
    w1 = group.producer.inputs[1].const_value.numpy()
    w2 = group.consumer.inputs[1].const_value.numpy()
    keep = np.sort(np.argsort(np.linalg.norm(w1, axis=0) * np.linalg.norm(w2, axis=1), kind="stable")[16:])
    after = find_unit_groups(pruned.ir, "ffn")[0][0]
    np.testing.assert_array_equal(after.producer.inputs[1].const_value.numpy(), w1[:, keep])
    np.testing.assert_array_equal(after.consumer.inputs[1].const_value.numpy(), w2[keep])
    assert pruned.op_counts() == model.op_counts()


@pytest.mark.parametrize("fused", [False, True])
@pytest.mark.parametrize("correct", [False, True])
def test_pruned_equals_masked_reference(fused, correct):
    model = tiny_bert_model()
    if fused:
        model = gc.optimize(model, "cleanup,fuse,dce", verify=False)[0]
    masked = UnitMaskedModel(model, "ffn")
    calibration = _calibration()
    with PassContext(calibration=calibration) as ctx:
        result = PruneFFN(ratio=0.5, correct=correct, scope="layer").call(model.clone(), ctx)
    pruned = result.model
    # Rebuild the masks the pass chose from the kept W1 columns.
    stats = unit_stats(masked, calibration)
    masks, fills = [], []
    for before, after, stat in zip(masked.groups, find_unit_groups(pruned.ir, "ffn")[0], stats, strict=True):
        w1 = before.producer.inputs[1].const_value.numpy()
        kept = after.producer.inputs[1].const_value.numpy()
        mask = np.array([any(np.array_equal(w1[:, j], kept[:, k]) for k in range(kept.shape[1])) for j in range(w1.shape[1])], float)
        masks.append(mask)
        fills.append(stat.mean * (1 - mask) if correct else np.zeros_like(mask))
    assert [int(m.sum()) for m in masks] == [32, 32]
    for seq, seed in ((16, 7), (5, 8)):  # dynamic sequence length
        feeds = _feeds(seq=seq, seed=seed)
        expected = masked.run(feeds, masks, fills)[0][0]
        np.testing.assert_allclose(ort_outputs(pruned, feeds)[0], expected, atol=1e-4, rtol=0)


def test_fidelity_and_score_beats_random():
    model = tiny_bert_model()
    fresh = [_feeds(seed=20 + s) for s in range(3)]
    reference = [ort_outputs(model, f) for f in fresh]
    losses = {}
    for score in ("activation", "random"):
        with PassContext(calibration=_calibration()) as ctx:
            pruned = PruneFFN(ratio=0.5, score=score).call(model.clone(), ctx).model
        losses[score] = 1 - measure_fidelity(reference, [ort_outputs(pruned, f) for f in fresh]).cosine_mean
    assert losses["activation"] < losses["random"]
    assert losses["activation"] < 1e-3


def test_budget_search_and_rollback():
    model = tiny_bert_model()
    pruned, report = gc.optimize(model, "prune-ffn{budget=0.9999}", calibration=_calibration(), budget="cos=0.9999")
    row = report.rows[-1]
    assert not row.rolled_back and row.stats["units_pruned"] > 0
    assert any(k.startswith("curve.") for k in row.stats)
    with pytest.warns(UserWarning, match="rolled back lossy pass 'prune-ffn"):
        _, report = gc.optimize(model, "prune-ffn{ratio=0.97,score=random}", budget="cos=0.99999")
    assert report.rows[-1].rolled_back


def test_declines_with_reasons():
    with PassContext() as ctx:
        assert not PruneFFN().call(tiny_bert_model(), ctx).modified
    assert "no ratio or budget" in ctx.near_misses[0].reason
    with PassContext() as ctx:
        assert not PruneFFN(ratio=0.5).call(small_cnn_model(), ctx).modified
    assert ctx.near_misses[-1].reason == "no prunable FFN group"
    with pytest.raises(gc.UsageError):
        PruneFFN(ratio=1.0)


def test_idempotent():
    model = tiny_bert_model()
    manager = PassManager("prune-ffn{ratio=0.25,scope=layer}")
    with PassContext(verify=False, calibration=_calibration()) as ctx:
        once = manager.run(model, ctx)
        twice = manager.run(once, ctx)
    assert manager.records[-1].modified is False
    assert _widths(twice) == _widths(once) == [48, 48]


def test_global_scope_prunes_the_ratio_of_all_neurons():
    model = tiny_bert_model()
    manager = PassManager("prune-ffn{ratio=0.25}")  # scope=global is the default
    with PassContext(verify=False, calibration=_calibration()) as ctx:
        once = manager.run(model, ctx)
        twice = manager.run(once, ctx)
    assert sum(_widths(once)) == 96 and _widths(twice) == _widths(once)
    assert manager.records[-1].modified is False


@pytest.mark.parametrize("fused", [False, True])
def test_gpt2_ffn_through_rank2_reshapes(fused):
    # GPT-2's MLP: Gemm on [b·s, in], Reshape to [b, s, F], GELU, Reshape back, Gemm.
    from tests.models import gpt2_inputs, gpt2_model

    model = gpt2_model()
    if fused:
        model = gc.optimize(model, "cleanup,fuse,dce", verify=False)[0]
    groups, _ = find_unit_groups(model.ir, "ffn")
    assert [g.width for g in groups] == [128, 128]
    assert sum(1 for n, _, axis in groups[0].slices if n.op_type == "Reshape") == 2
    calibration = [feeds_of(gpt2_inputs(seed=s)) for s in range(3)]
    masked = UnitMaskedModel(model, "ffn")
    stats = unit_stats(masked, calibration)
    with PassContext(calibration=calibration) as ctx:
        pruned = PruneFFN(ratio=0.25, scope="layer").call(model.clone(), ctx).model
    after = find_unit_groups(pruned.ir, "ffn")[0]
    assert [g.width for g in after] == [96, 96]
    masks = []
    for before, kept in zip(groups, after, strict=True):
        rows = before.consumer_rows()
        kept_rows = kept.consumer_rows()
        masks.append(np.array([any(np.array_equal(r, k) for k in kept_rows) for r in rows], float))
    fills = [s.mean * (1 - m) for s, m in zip(stats, masks, strict=True)]
    feeds = feeds_of(gpt2_inputs(seed=7))
    np.testing.assert_allclose(ort_outputs(pruned, feeds)[0], masked.run(feeds, masks, fills)[0][0], atol=1e-4, rtol=0)
