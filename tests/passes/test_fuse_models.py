"""Fusion on exported models: MiniLM from both exporters fully fused by -O2 and equal to
PyTorch; a BERT with dynamic batch and sequence axes fused and exact at other sizes; and
``greencc compile --explain`` listing what was declined."""

from __future__ import annotations

import numpy as np
import pytest

import greencc as gc
from greencc.verify.feeds import random_feeds
from tests import models
from tests.helpers import run_ort
from tests.passes.test_fuse_support import RTOL, model_from_text

O2 = "cleanup,fuse,dce"
BERT_FUSED = {
    "com.microsoft::Attention": 6,
    "com.microsoft::SkipLayerNormalization": 12,
    "com.microsoft::BiasGelu": 6,
    "com.microsoft::EmbedLayerNormalization": 1,
}


def _fused_counts(model: gc.Model) -> dict[str, int]:
    counts = model.op_counts()
    return {op: counts.get(op, 0) for op in BERT_FUSED}


@pytest.mark.slow
@pytest.mark.parametrize("exporter", ["dynamo", "legacy"])
def test_minilm_o2_fuses_every_block_and_matches_pytorch(exporter):
    import torch

    model = models.minilm_model(exporter)
    inputs = models.minilm_inputs()
    compiled = gc.compile(model, "ort-cpu", O2, threads=2, calibration=[models.feeds_of(inputs)])
    assert _fused_counts(compiled.model) == BERT_FUSED
    assert len(compiled.model.graph) <= 48  # 18 MatMul, 31 fused ops, the id and mask casts
    assert {"Softmax", "LayerNormalization", "Gelu", "Erf"}.isdisjoint(compiled.model.op_counts())
    module = models.minilm_module("sdpa" if exporter == "dynamo" else "eager")
    for seed in (0, 1):
        ids, mask = models.minilm_inputs(seed=seed)
        with torch.no_grad():
            expected = module(ids, mask).numpy()
        got = compiled(models.feeds_of((ids, mask)))[compiled.model.outputs[0].name]
        assert np.abs(got - expected).max() <= 1e-4
    fuse = next(r for r in compiled.report.rows if r.name == "fuse")
    assert fuse.stats["fuse-attention.fused"] == 6
    assert fuse.stats["fuse-attention.activation_bytes_removed"] > 0


@pytest.mark.slow
@pytest.mark.parametrize("exporter", ["dynamo", "legacy"])
def test_dynamic_bert_fuses_and_stays_exact_at_other_sizes(exporter):
    model = models.tiny_bert_model(exporter, dynamic=True)
    fused, _ = gc.optimize(model, O2, dims=models.TINY_BERT_DIMS)
    counts = fused.op_counts()
    assert counts["com.microsoft::Attention"] == 2
    assert counts["com.microsoft::SkipLayerNormalization"] == 4
    assert counts["com.microsoft::EmbedLayerNormalization"] == 1
    assert "Softmax" not in counts
    for dims in ({"batch": 3, "seq": 7}, {"batch": 1, "seq": 12}):
        feeds = random_feeds(model, seed=4, dims=dims)
        expected = run_ort(model, feeds)[0]
        np.testing.assert_allclose(run_ort(fused, feeds)[0], expected, rtol=RTOL, atol=1e-5)


def test_compile_explain_lists_each_declined_site(tmp_path, capsys):
    from greencc.cli import main

    model = model_from_text(
        """
        <ir_version: 10, opset_import: ["" : 17]>
        g (float[N, 4] a) => (float[N, 3] y, float[N, 3] pre)
        <float[4, 3] w = {1.0, 0.0, 0.5, -1.0, 2.0, 0.0, 0.0, 1.0, 0.5, 0.25, 0.0, 1.0}>
        {
          pre = Gemm(a, w)
          y = Relu(pre)
        }
        """
    )
    path = model.save(tmp_path / "m.onnx")
    code = main(["compile", str(path), "--pipeline", O2, "-o", str(tmp_path / "out"),
                 "--dim", "N=2", "--explain", "fuse-activation"])
    assert code == 0
    text = capsys.readouterr().out
    assert "--explain fuse-activation: 1 site(s) declined" in text
    assert "<unnamed Relu -> y>: cannot fuse into <unnamed Gemm -> pre>: 'pre' is a graph output" in text


# (module, inputs, exported model) builders from tests/models.py, small default sizes.
GPT2_AND_VIT = {
    "gpt2-causal": (models.gpt2_module, models.gpt2_inputs, models.gpt2_model),
    "vit": (models.vit_module, models.vit_inputs, models.vit_model),
}


@pytest.mark.slow
@pytest.mark.parametrize("exporter", ["dynamo", "legacy"])
@pytest.mark.parametrize("family", list(GPT2_AND_VIT))
def test_gpt2_and_vit_attention_fuses_and_matches_pytorch(family, exporter):
    import torch

    module_of, inputs_of, model_of = GPT2_AND_VIT[family]
    module, inputs = module_of(), inputs_of()
    model = model_of(exporter)
    fused, report = gc.optimize(model, O2)
    counts = fused.op_counts()
    assert counts["com.microsoft::Attention"] == 2 and "Softmax" not in counts
    assert counts["com.microsoft::SkipLayerNormalization"] == 4
    attention = next(n for n in fused.graph if n.op_type == "Attention")
    causal = attention.attributes.get("unidirectional")
    assert (causal is not None and causal.as_int() == 1) == (family == "gpt2-causal")
    with torch.no_grad():
        expected = module(*inputs).numpy()
    feeds = dict(zip([s.name for s in model.inputs], [t.numpy() for t in inputs], strict=True))
    np.testing.assert_allclose(run_ort(fused, feeds)[0], expected, rtol=1e-4, atol=1e-4)
    assert not [m for m in report.near_misses if m["pass"] == "fuse-attention"]
