"""-O2 fuses MiniLM whichever exporter and attention implementation produced it: the
combinations test_fuse_models.py does not cover (legacy TorchScript with SDPA attention,
dynamo with eager attention), each equal to PyTorch within 1e-4."""

from __future__ import annotations

import numpy as np
import pytest

import greencc as gc
from tests import models
from tests.passes.test_fuse_models import BERT_FUSED, O2


@pytest.mark.slow
@pytest.mark.parametrize("exporter,attention", [("legacy", "sdpa"), ("dynamo", "eager")])
def test_minilm_o2_fuses_every_block_for_each_export(exporter, attention):
    import torch

    module = models.minilm_module(attention)
    inputs = models.minilm_inputs()
    model = gc.from_torch(module, inputs, exporter=exporter)
    assert model.provenance.exporter.startswith(exporter)
    compiled = gc.compile(model, "ort-cpu", O2, threads=2, calibration=[models.feeds_of(inputs)])
    counts = compiled.model.op_counts()
    assert {op: counts.get(op, 0) for op in BERT_FUSED} == BERT_FUSED
    assert {"Softmax", "LayerNormalization", "Erf"}.isdisjoint(counts)
    ids, mask = models.minilm_inputs(seed=3)
    with torch.no_grad():
        expected = module(ids, mask).numpy()
    got = compiled(models.feeds_of((ids, mask)))[compiled.model.outputs[0].name]
    assert np.abs(got - expected).max() <= 1e-4
