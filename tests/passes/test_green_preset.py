"""The ``green`` preset: pruning spends part of the run's budget, int8 the rest; without
a budget the pruning passes decline with the reason and only the -O3 passes act."""

from __future__ import annotations

import numpy as np

import greencc as gc
from greencc.pipeline.text import PRESETS, Pipeline
from tests import models


def _cosine_min(a: np.ndarray, b: np.ndarray) -> float:
    a = a.reshape(a.shape[0], -1)
    b = b.reshape(b.shape[0], -1)
    return float(np.min((a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))))


def test_green_parses_to_its_definition():
    assert str(Pipeline.parse("green")) == str(Pipeline.parse(PRESETS["green"]))


def test_green_prunes_within_the_budget_and_reports_its_choices():
    model = models.tiny_bert_model()
    feeds = [models.feeds_of(models.tiny_bert_inputs(seed=s)) for s in range(4)]
    out, report = gc.optimize(model, "green", budget="cos=0.98", dims=models.TINY_BERT_DIMS, calibration=feeds)
    stats = {row.name.split("{")[0]: row.stats for row in report.rows}
    assert stats["prune-heads"]["heads_pruned"] > 0
    assert "quantized" in stats["quantize-int8"] and "float_fallback" in stats["quantize-int8"]
    for feed in feeds:
        expected = models.ort_outputs(model, feed)[0]
        got = models.ort_outputs(out, feed)[0]
        assert _cosine_min(expected, got) >= 0.98


def test_green_without_a_budget_declines_pruning_with_the_reason():
    _, report = gc.optimize(models.tiny_bert_model(), "green", dims=models.TINY_BERT_DIMS)
    reasons = {m["pass"]: m["reason"] for m in report.near_misses}
    assert "no ratio, count or budget given" in reasons["prune-heads"]


def test_int8_fallback_counts_the_loss_of_pruning_before_it():
    # After a lossy pass in a verified, budgeted pipeline, int8's sensitivity fallback
    # judges against the pipeline's input (as verification will), not its own input: the
    # all-int8 fidelity it reports includes the pruning's loss.
    model = models.digits_cnn_model()
    data = models.digits_data()
    feeds = [{"image": data.train_x[i : i + 32]} for i in range(0, 128, 32)]
    _, report = gc.optimize(model, "prune-channels{ratio=0.5},quantize-int8{fallback=sensitivity}", budget="cos=0.5",
                            calibration=feeds)
    prune, int8 = report.rows[1], report.rows[2]
    assert prune.modified and prune.fidelity["cosine_min"] < 0.999
    assert int8.rolled_back is None
    # Judged against its own input, all-int8 scores 0.9999 here; judged against
    # the pipeline's input it carries the pruning's loss. int8's rounding can move it a
    # little either way (up by 3e-4 on an AMD EPYC), so the bound is a tenth of that loss.
    pruning_loss = 1.0 - prune.fidelity["cosine_min"]
    assert abs(int8.stats["sensitivity.min_cosine_all_int8"] - prune.fidelity["cosine_min"]) <= 0.1 * pruning_loss
