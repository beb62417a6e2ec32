"""recover: label-free distillation of a pruned or sparsified tiny BERT back towards the
pipeline's input, through the PyTorch lowering — fidelity against ONNX Runtime's run of the
original improves, early stopping keeps the best step, zeros stay zero, the same seed gives
the same weights, the graph keeps its structure, and bad options or a missing teacher are
refused or declined with the reason."""

from __future__ import annotations

import functools
import json

import numpy as np
import onnx_ir as ir
import pytest

import greencc as gc
from greencc.config import CompileConfig
from greencc.passes.train.data import batches, load_rows, split
from greencc.passes.train.recover import Recover
from greencc.passes.train.sites import following_int8, int8_weight_axes, shared_hidden_states
from greencc.pipeline.context import PassContext
from greencc.pipeline.text import Pipeline
from tests.models import TINY_BERT_DIMS, feeds_of, ort_outputs, tiny_bert_inputs, tiny_bert_model

pytest.importorskip("torch")

PRUNE = "prune-heads{ratio=0.5},prune-ffn{ratio=0.5}"
# A lossy pass without head scoring, where any lossy pass will do.
CHEAP_PRUNE = "prune-ffn{ratio=0.5}"
# Enough steps at a learning rate a 2-layer, hidden-32 model recovers with in about a second.
RECOVER = "recover{lr=0.003,max_steps=60,batch=4,eval_every=5,patience=20,threads=1}"


def _calibration(count: int = 12, seed: int = 0) -> list[dict[str, np.ndarray]]:
    return [feeds_of(tiny_bert_inputs(seed=seed + s)) for s in range(count)]


def _bert() -> gc.Model:
    """The tiny BERT with its MatMul weights scaled by 8: at BERT's initial scale (std 0.02)
    attention and FFN barely move the output (pruning half of them costs 3e-5 of cosine),
    so there would be nothing to recover."""
    model = tiny_bert_model()
    for node in model.graph:
        if node.op_type == "MatMul" and node.inputs[1].is_initializer():
            weight = node.inputs[1]
            weight.const_value = ir.Tensor(weight.const_value.numpy() * 8, name=weight.name)
    return model


def _optimize(pipeline: str, **options):
    options.setdefault("calibration", _calibration())
    return gc.optimize(_bert(), pipeline, dims=TINY_BERT_DIMS, **options)


@functools.cache
def _shared(pipeline: str, seed: int = 0):
    """``_optimize(pipeline)``, run once per test process for the tests that only read it."""
    return _optimize(pipeline, seed=seed)


def _run(pipeline: str, seed: int = 0):
    model, report = _shared(pipeline, seed)
    return model.clone(), report


def _recover_directly(options: str, seed: int = 0):
    """``recover{options}`` on the shared pruned model outside a pipeline (no pruning or
    ledger to repeat), the original as the teacher, as a verified run holds it; returns
    the model and the pass's stats."""
    pruned, _ = _run(PRUNE)
    ctx = PassContext(seed=seed, calibration=_calibration())
    ctx.reference.start(_bert(), _calibration()[:2])
    ctx.reference.accept_lossy(ctx.reference.run(pruned))
    result = Pipeline.parse(f"recover{{{options}}}").items[0].instantiate().call(pruned, ctx)
    return result.model, result.stats


def _cosine(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a.ravel().astype(np.float64), b.ravel().astype(np.float64)
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


def _fresh_fidelity(model: gc.Model) -> float:
    """Mean cosine to ONNX Runtime's run of the original on inputs never trained on."""
    original = _bert()
    feeds = _calibration(4, seed=100)
    return float(np.mean([_cosine(ort_outputs(original, f)[0], ort_outputs(model, f)[0]) for f in feeds]))


def _row(report, name: str):
    return next(row for row in report.rows if row.name.startswith(name))


def _weights(model: gc.Model) -> dict[str, np.ndarray]:
    return {name: value.const_value.numpy().copy() for name, value in model.graph.initializers.items()
            if value.const_value is not None}


def test_recover_improves_a_pruned_models_fidelity():
    pruned, _ = _run(PRUNE)
    recovered, report = _run(f"{PRUNE},{RECOVER}")
    row = _row(report, "recover")
    assert row.modified and row.stats["loss_best"] < 0.5 * row.stats["loss_before"]
    assert row.stats["rows_train"] + row.stats["rows_held_out"] == 24
    assert row.stats["padding_masked"] == 1
    before, after = _fresh_fidelity(pruned), _fresh_fidelity(recovered)
    assert after > before + 0.25 * (1 - before), (before, after)
    # The verification that follows scores the recovered model: better than after pruning.
    assert row.fidelity["cosine_mean"] > _row(report, "prune-ffn").fidelity["cosine_mean"]


def test_structure_is_kept_and_weights_carry_provenance():
    pruned, _ = _run(PRUNE)
    recovered, report = _run(f"{PRUNE},{RECOVER}")
    assert [(n.op_type, n.name) for n in recovered.graph] == [(n.op_type, n.name) for n in pruned.graph]
    before, after = _weights(pruned), _weights(recovered)
    assert {k: v.shape for k, v in before.items()} == {k: v.shape for k, v in after.items()}
    changed = [k for k in before if not np.array_equal(before[k], after[k])]
    assert len(changed) == _row(report, "recover").stats["weights_written"] > 0
    assert {json.loads(recovered.graph.initializers[k].metadata_props["greencc.provenance"]) for k in changed} == {
        RECOVER}


def test_early_stopping_restores_the_best_step():
    # A learning rate too high to settle: the held-out loss falls at first, then rises.
    recovered, stats = _recover_directly("lr=0.02,max_steps=200,batch=4,eval_every=2,patience=3,threads=1")
    assert stats["stopped_early"] == 1 and stats["steps_run"] < 200
    assert 0 < stats["best_step"] < stats["steps_run"]
    last = stats[f"curve.{int(stats['steps_run'])}"]
    assert last > stats["loss_best"]
    # The written model's held-out loss is the best step's, not the last step's.
    teacher = _bert()
    data = split(teacher, load_rows(teacher, "calib", _calibration()), 0.2, seed=0)
    losses = []
    for (feeds,) in batches(data.held_out, 4, data.stackable):
        t, s = ort_outputs(teacher, feeds)[0], ort_outputs(recovered, feeds)[0]
        kept = (feeds["attention_mask"] != 0)[..., None]  # padded positions are not in the loss
        losses.append((((s - t) ** 2) * kept).sum() / ((t**2) * kept).sum())
    assert np.mean(losses) == pytest.approx(stats["loss_best"], rel=1e-3)


def test_sparsity_zeros_stay_zero():
    sparse = "sparsify{pattern=2:4,min_size=1024}"
    sparsified, _ = _optimize(sparse)
    recovered, report = _optimize(f"{sparse},{RECOVER}")
    assert _row(report, "recover").stats["masked_weights"] >= 4
    before, after = _weights(sparsified), _weights(recovered)
    zeros = {k: v == 0 for k, v in before.items() if v.ndim >= 2 and (v == 0).any()}
    assert zeros and all(not after[k][mask].any() for k, mask in zeros.items())
    assert any(not np.array_equal(before[k][~mask], after[k][~mask]) for k, mask in zeros.items())


def test_same_seed_same_weights_other_seed_other_weights():
    first, _ = _run(f"{PRUNE},{RECOVER}")
    options = RECOVER.removeprefix("recover{").removesuffix("}")
    again, _ = _recover_directly(options)
    other, _ = _recover_directly(options, seed=4)
    a, b, c = _weights(first), _weights(again), _weights(other)
    assert all(np.array_equal(a[k], b[k]) for k in a)
    assert any(a[k].shape != c[k].shape or not np.array_equal(a[k], c[k]) for k in a)


def test_hidden_states_are_matched_by_name_and_shape():
    pruned, _ = _run(PRUNE)
    names = shared_hidden_states(pruned, _bert())
    # The embeddings' LayerNorm and two per layer; the last one is the graph output.
    assert len(names) == 4
    _, stats = _recover_directly("loss=hidden,lr=0.003,max_steps=20,batch=4,threads=1")
    assert stats["hidden_states"] == 4 and stats["loss_best"] < stats["loss_before"]


def test_qat_fake_quantizes_the_weights_int8_will_quantize():
    model = tiny_bert_model()
    axes = int8_weight_axes(model, per_channel=True)
    matmuls = [n for n in model.graph if n.op_type == "MatMul" and n.inputs[1].is_initializer()]
    assert len(axes) == len(matmuls) == 12 and set(axes.values()) == {1}
    _, stats = _recover_directly("qat=on,lr=0.003,max_steps=5,batch=4,threads=1")
    assert stats["fake_quantized"] == 12
    with_int8 = PassContext(config=CompileConfig(pipeline=f"{PRUNE},{RECOVER},fuse,quantize-int8"))
    without = PassContext(config=CompileConfig(pipeline=f"{PRUNE},{RECOVER},fuse"))
    assert following_int8(with_int8) is not None and following_int8(without) is None
    assert following_int8(PassContext()) is None


def test_declines_without_a_teacher_or_without_a_lossy_pass_before_it():
    _, report = _optimize(f"{CHEAP_PRUNE},{RECOVER}", verify=False)
    reasons = {m["pass"]: m["reason"] for m in report.near_misses}
    assert "no teacher" in reasons["recover"]
    _, report = _optimize(RECOVER)
    assert not report.rows[-1].modified
    assert "nothing to recover" in {m["pass"]: m["reason"] for m in report.near_misses}["recover"]


def test_padded_positions_are_left_out_of_the_loss():
    torch = pytest.importorskip("torch")
    from greencc.passes.train.distill import relative_loss

    teacher = np.random.default_rng(0).normal(size=(2, 5, 3)).astype(np.float32)
    student = teacher.copy()
    student[1, 3:] += 10.0  # wrong only where the mask says padding
    padding = np.array([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]])
    got = {"out": torch.from_numpy(student)}
    assert float(relative_loss(got, {"out": teacher}, ["out"], padding)) == 0.0
    assert float(relative_loss(got, {"out": teacher}, ["out"])) > 1.0
    # A mask whose shape is not the target's leading dims weighs nothing.
    assert float(relative_loss(got, {"out": teacher}, ["out"], padding[:, :4])) > 1.0


def test_cosine_match_weighs_every_position_alike_and_ignores_scale():
    torch = pytest.importorskip("torch")
    from greencc.passes.train.distill import cosine_loss, relative_loss

    teacher = np.random.default_rng(1).normal(size=(1, 4, 8)).astype(np.float32)
    teacher[0, 0] *= 100.0  # one position with a far larger norm, as BERT's outlier tokens have
    scaled = {"out": torch.from_numpy(teacher * 3.0)}
    assert float(cosine_loss(scaled, {"out": teacher}, ["out"])) == pytest.approx(0.0, abs=1e-6)
    turned = teacher.copy()
    turned[0, 1] = -turned[0, 1]  # a small position pointing the other way
    got = {"out": torch.from_numpy(turned)}
    # Relative MSE barely sees it beside the large position; cosine counts it as a quarter of the positions.
    assert float(relative_loss(got, {"out": teacher}, ["out"])) < 0.01
    assert float(cosine_loss(got, {"out": teacher}, ["out"])) == pytest.approx(0.5, abs=1e-5)
    padding = np.array([[1, 0, 1, 1]])
    assert float(cosine_loss(got, {"out": teacher}, ["out"], padding)) == pytest.approx(0.0, abs=1e-6)


def test_cosine_match_recovers_a_pruned_model():
    pruned, _ = _run(PRUNE)
    recovered, stats = _recover_directly("lr=0.003,max_steps=60,batch=4,eval_every=5,patience=20,threads=1,"
                                         "loss=hidden,match=cosine")
    assert stats["loss_best"] < 0.5 * stats["loss_before"]
    before, after = _fresh_fidelity(pruned), _fresh_fidelity(recovered)
    assert after > before + 0.25 * (1 - before), (before, after)


@pytest.mark.parametrize("options", [
    {"match": "l1"}, {"lr": 0}, {"lr": "nan"}, {"max_steps": 0}, {"batch": 0}, {"patience": 0}, {"eval_every": -1},
    {"held_out": 1.0}, {"held_out": 0}, {"data": "samples.txt"}, {"optimizer": "sgd"}, {"loss": "logits"},
    {"qat": "maybe"}, {"padding": "maybe"}, {"threads": -1},
])
def test_bad_options_are_usage_errors(options):
    with pytest.raises(gc.UsageError):
        Recover(**options)


def test_missing_data_declines_or_is_a_greencc_error():
    _, report = _optimize(f"{CHEAP_PRUNE},{RECOVER}", calibration=None)
    assert "no data to distill on" in {m["pass"]: m["reason"] for m in report.near_misses}["recover"]
    with pytest.raises(gc.GreenccError, match="does not exist"):
        _optimize(f"{CHEAP_PRUNE},recover{{data=/nonexistent/rows.npz}}")


def test_green_recovers_after_pruning_and_before_fusion_and_int8():
    names = [item.name for item in Pipeline.parse("green").items]
    assert names.index("prune-ffn") < names.index("recover") < names.index("fuse") < names.index("quantize-int8")
