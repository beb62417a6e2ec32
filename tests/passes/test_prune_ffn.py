"""prune-ffn: FFN neurons removed structurally (W1 columns, biases, W2 rows) in unfused and
fused graphs, equal to masking them in the original, with the mean folded into W2's bias;
label-free scores, budgets, declines and idempotence."""

from __future__ import annotations

import numpy as np
import onnx_ir as ir
import pytest

import greencc as gc
from greencc.passes.lib.graph_edits import new_initializer
from greencc.passes.prune.prune_ffn import PruneFFN
from greencc.passes.prune.unit_pruning import (
    UnitMaskedModel,
    UnitStats,
    least_squares_update,
    unit_stats,
)
from greencc.passes.prune.units import consumer_bias, find_unit_groups
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
@pytest.mark.parametrize(("correct", "reconstruct"), [(False, False), (True, False), (True, True)])
def test_pruned_equals_masked_reference(fused, correct, reconstruct):
    model = tiny_bert_model()
    if fused:
        model = gc.optimize(model, "cleanup,fuse,dce", verify=False)[0]
    masked = UnitMaskedModel(model, "ffn")
    calibration = _calibration()
    with PassContext(calibration=calibration) as ctx:
        result = PruneFFN(ratio=0.5, correct=correct, reconstruct=reconstruct, scope="layer").call(model.clone(), ctx)
    pruned = result.model
    assert result.stats.get("reconstructed_layers", 0) == (2 if reconstruct else 0)
    # Rebuild the masks the pass chose from the kept W1 columns.
    stats = unit_stats(masked, calibration, second_moments=reconstruct)
    masks, fills = [], []
    for before, after, stat in zip(masked.groups, find_unit_groups(pruned.ir, "ffn")[0], stats, strict=True):
        w1 = before.producer.inputs[1].const_value.numpy()
        kept = after.producer.inputs[1].const_value.numpy()
        mask = np.array([any(np.array_equal(w1[:, j], kept[:, k]) for k in range(kept.shape[1])) for j in range(w1.shape[1])], float)
        masks.append(mask)
        fills.append(stat.mean * (1 - mask) if correct else np.zeros_like(mask))
    assert [int(m.sum()) for m in masks] == [32, 32]
    if reconstruct:
        # The masked copy cannot express a row update: write it into W2 (removed rows
        # zeroed) and the bias of a copy of the original, and mask nothing.
        reference = model.clone()
        for group, stat, mask in zip(find_unit_groups(reference.ir, "ffn")[0], stats, masks, strict=True):
            delta, shift = least_squares_update(group.consumer_rows(), stat, mask)
            assert np.abs(delta).max() > 1e-3  # the rows really change
            w2 = group.consumer.inputs[1].const_value.numpy().astype(np.float64)
            w2[mask == 1] += delta
            w2[mask == 0] = 0.0
            name = group.consumer.name
            group.consumer.replace_input_with(1, new_initializer(reference.graph, f"w2_{name}", w2.astype(np.float32)))
            found = consumer_bias(group)
            if found is not None:  # the bias may be shared: a new initializer
                bias_node, bias_index = found
                bias = bias_node.inputs[bias_index].const_value.numpy() + shift
                bias_node.replace_input_with(bias_index, new_initializer(reference.graph, f"b2_{name}", bias.astype(np.float32)))
            else:  # fused: the bias went into SkipLayerNormalization; add the shift after W2
                out = group.consumer.outputs[0]
                users = list(out.uses())
                add = ir.node("Add", [out, new_initializer(reference.graph, f"shift_{name}", shift.astype(np.float32))])
                reference.graph.insert_after(group.consumer, add)
                for user, index in users:
                    user.replace_input_with(index, add.outputs[0])
    for seq, seed in ((16, 7), (5, 8)):  # dynamic sequence length
        feeds = _feeds(seq=seq, seed=seed)
        expected = ort_outputs(reference, feeds)[0] if reconstruct else masked.run(feeds, masks, fills)[0][0]
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
        pruned = PruneFFN(ratio=0.25, scope="layer", reconstruct=False).call(model.clone(), ctx).model
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


def test_least_squares_update_recovers_a_redundant_unit(monkeypatch):
    # Unit 1 is twice unit 0: removing it, unit 0's row must take on 2 x unit 1's row, and
    # the bias the mean of what is lost (with the ridge made negligible).
    import greencc.passes.prune.unit_pruning as unit_pruning

    monkeypatch.setattr(unit_pruning, "RECONSTRUCTION_RIDGE", 1e-9)
    rng = np.random.default_rng(0)
    a0, a2 = rng.normal(1.0, 1.0, size=500), rng.normal(size=500)
    acts = np.stack([a0, 2 * a0, a2], axis=1)
    rows = rng.normal(size=(3, 4))
    stat = UnitStats(acts.mean(0), (acts ** 2).mean(0), acts.T @ acts / len(acts))
    delta, shift = least_squares_update(rows, stat, np.array([1.0, 0.0, 1.0]))
    np.testing.assert_allclose(delta, [2 * rows[1], np.zeros(4)], atol=1e-6)
    np.testing.assert_allclose(shift, stat.mean[1] * rows[1] - stat.mean[0] * 2 * rows[1], atol=1e-6)
    # The pruned layer now reproduces the original's output on these activations exactly.
    kept = acts[:, [0, 2]] @ (rows[[0, 2]] + delta) + shift
    np.testing.assert_allclose(kept, acts @ rows, atol=1e-6)


def test_reconstruction_improves_held_out_fidelity():
    model = tiny_bert_model()
    calibration = [_feeds(seed=s) for s in range(8)]
    held_out = [_feeds(seed=100 + s) for s in range(4)]
    reference = [ort_outputs(model, f) for f in held_out]
    cosines = {}
    for reconstruct in (False, True):
        with PassContext(calibration=calibration) as ctx:
            pruned = PruneFFN(ratio=0.5, reconstruct=reconstruct, scope="layer").call(model.clone(), ctx).model
        cosines[reconstruct] = measure_fidelity(reference, [ort_outputs(pruned, f) for f in held_out]).cosine_mean
    assert 1 - cosines[True] < 1 - cosines[False], cosines


def _decoder_calibration(model: gc.Model, count: int = 3, seed: int = 0) -> list[dict[str, np.ndarray]]:
    from greencc.verify.feeds import random_feeds

    return [random_feeds(model, seed=seed + s) for s in range(count)]


def test_llama_swiglu_is_one_group_of_gate_up_down_triples():
    from tests.models import decoder_model

    model = decoder_model("llama")
    groups, declined = find_unit_groups(model.ir, "ffn")
    assert [g.width for g in groups] == [64, 64] and not declined
    for group in groups:
        (up,) = group.co_producers
        assert group.producer.op_type == up.op_type == group.consumer.op_type == "MatMul"
        assert group.producer.inputs[0] is up.inputs[0]  # gate and up read the same x
        assert [(n, i, a) for n, i, a in group.slices if n.op_type == "MatMul"] == [
            (group.producer, 1, 1), (up, 1, 1), (group.consumer, 1, 0)
        ]


@pytest.mark.parametrize("fused", [False, True])
def test_llama_swiglu_pruned_equals_masked_reference(fused):
    from greencc.verify.feeds import random_feeds
    from tests.models import decoder_model

    model = decoder_model("llama")
    if fused:
        model = gc.optimize(model, "cleanup,fuse,dce", verify=False)[0]
    groups, _ = find_unit_groups(model.ir, "ffn")
    calibration = _decoder_calibration(model)
    masked = UnitMaskedModel(model, "ffn")
    stats = unit_stats(masked, calibration)
    with PassContext(calibration=calibration) as ctx:
        result = PruneFFN(ratio=0.25, scope="layer", reconstruct=False).call(model.clone(), ctx)
    pruned = result.model
    assert result.stats["units_pruned"] == 32
    after = find_unit_groups(pruned.ir, "ffn")[0]
    assert [g.width for g in after] == [48, 48]
    masks = []
    for before, kept in zip(groups, after, strict=True):
        # A neuron goes as a triple: its gate column, its up column and its down row.
        gate, up, down = (np.asarray(n.inputs[1].const_value.numpy()) for n in (before.producer, before.co_producers[0], before.consumer))
        kept_gate = kept.producer.inputs[1].const_value.numpy()
        keep = [next(j for j in range(gate.shape[1]) if np.array_equal(gate[:, j], kept_gate[:, k])) for k in range(kept_gate.shape[1])]
        np.testing.assert_array_equal(kept.co_producers[0].inputs[1].const_value.numpy(), up[:, keep])
        np.testing.assert_array_equal(kept.consumer.inputs[1].const_value.numpy(), down[keep])
        mask = np.zeros(before.width)
        mask[keep] = 1.0
        masks.append(mask)
    fills = [s.mean * (1 - m) for s, m in zip(stats, masks, strict=True)]
    feeds = random_feeds(model, seed=11)
    expected = masked.run(feeds, masks, fills)[0]
    for got, want in zip(ort_outputs(pruned, feeds), expected, strict=True):
        np.testing.assert_allclose(got, want, atol=1e-4, rtol=0)


def test_gated_mlp_declines_a_gate_with_a_scalar_bias():
    from tests.helpers import model_from_text

    weights = ", ".join(["0.5"] * 48)
    model = model_from_text(
        f"""
        <ir_version: 10, opset_import: ["" : 17]>
        g (float[N, 8] x) => (float[N, 8] y)
        <float[8, 6] wg = {{{weights}}}, float[8, 6] wu = {{{weights}}}, float[6, 8] wd = {{{weights}}}, float[1] c = {{1.0}}>
        {{
          gate = MatMul(x, wg)
          s = Sigmoid(gate)
          silu = Mul(gate, s)
          up = Gemm(x, wu, c)
          h = Mul(silu, up)
          y = MatMul(h, wd)
        }}
        """
    )
    groups, declined = find_unit_groups(model.ir, "ffn")
    assert groups == []
    assert declined["<unnamed MatMul -> gate>"] == "<unnamed Gemm -> up> has a bias that is not one value per unit"


SILU_FORMS = {
    "sigmoid": ('"" : 24', "s = Sigmoid(gate)\n          silu = Mul(gate, s)"),
    "swish": ('"" : 24', "silu = Swish(gate)"),
    "quickgelu": ('"" : 24, "com.microsoft" : 1', "silu = com.microsoft.QuickGelu<alpha = 1.0>(gate)"),
}


@pytest.mark.parametrize("form", sorted(SILU_FORMS))
def test_swiglu_silu_forms_prune_as_triples(form):
    from tests.helpers import model_from_text

    rng = np.random.default_rng(0)
    opsets, silu = SILU_FORMS[form]

    def weights(rows: int, cols: int) -> str:
        return ", ".join(f"{v:.4f}" for v in rng.normal(size=rows * cols))

    model = model_from_text(
        f"""
        <ir_version: 10, opset_import: [{opsets}]>
        g (float[N, 8] x) => (float[N, 8] y)
        <float[8, 6] wg = {{{weights(8, 6)}}}, float[8, 6] wu = {{{weights(8, 6)}}}, float[6, 8] wd = {{{weights(6, 8)}}},
         float[8] bd = {{{weights(1, 8)}}}>
        {{
          gate = MatMul(x, wg)
          {silu}
          up = MatMul(x, wu)
          h = Mul(silu, up)
          down = MatMul(h, wd)
          y = Add(down, bd)
        }}
        """
    )
    (group,), declined = find_unit_groups(model.ir, "ffn")
    assert group.width == 6 and len(group.co_producers) == 1 and not declined
    calibration = [{"x": rng.normal(size=(4, 8)).astype(np.float32)} for _ in range(3)]
    masked = UnitMaskedModel(model, "ffn")
    (stat,) = unit_stats(masked, calibration)
    with PassContext(calibration=calibration) as ctx:
        pruned = PruneFFN(ratio=0.5, score="magnitude", reconstruct=False).call(model.clone(), ctx).model
    (after,) = find_unit_groups(pruned.ir, "ffn")[0]
    wd = group.consumer.inputs[1].const_value.numpy()
    kept_rows = after.consumer.inputs[1].const_value.numpy()
    mask = np.array([any(np.array_equal(row, k) for k in kept_rows) for row in wd], float)
    assert mask.sum() == 3
    feeds = {"x": rng.normal(size=(5, 8)).astype(np.float32)}
    expected = masked.run(feeds, [mask], [stat.mean * (1 - mask)])[0][0]
    np.testing.assert_allclose(ort_outputs(pruned, feeds)[0], expected, atol=1e-5, rtol=0)
