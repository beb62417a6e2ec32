"""Decoder op costs: MatMulNBits against the analytic packed byte count and MAC count (float
and accuracy_level 4), GroupQueryAttention reading its KV cache, and decode priced by the
bytes read per token against prefill priced by its MACs."""

from __future__ import annotations

import numpy as np
import pytest

from greencc.cost import estimate_cost
from greencc.quant.blockwise import pack_matmul_nbits, quantize_rtn
from tests.helpers import model_from_text
from tests.passes.test_fuse_support import run_fusion
from tests.passes.test_quantize_weights import toy_decoder

HEADER = '<ir_version: 10, opset_import: ["": 20, "com.microsoft": 1]>'


def _bytes_literal(array: np.ndarray) -> str:
    return ", ".join(str(int(v)) for v in array.ravel())


def _nbits_model(rows: int, accuracy_level: int = 0, bits: int = 4):
    k, n, block = 128, 64, 32
    weight = quantize_rtn(np.random.default_rng(0).standard_normal((k, n)).astype(np.float32), bits, block)
    b, scales, _ = pack_matmul_nbits(weight)
    level = f", accuracy_level = {accuracy_level}" if accuracy_level else ""
    text = f"""{HEADER}
g (float[{rows}, {k}] a) => (float[{rows}, {n}] y)
<uint8[{n}, {k // block}, {b.shape[-1]}] B = {{{_bytes_literal(b)}}}, float[{n}, {k // block}] S = {{{", ".join(f"{v:.6g}" for v in scales.ravel())}}}>
{{
  y = com.microsoft.MatMulNBits(a, B, S) <K = {k}, N = {n}, bits = {bits}, block_size = {block}{level}>
}}"""
    return model_from_text(text), k, n, block


@pytest.mark.parametrize("bits", [4, 8])
def test_matmul_nbits_reads_the_packed_weight(bits):
    model, k, n, block = _nbits_model(rows=3, bits=bits)
    node = next(c for c in estimate_cost(model, "x86-avx512").nodes if c.op_type == "MatMulNBits")
    packed = n * (k // block) * block * bits // 8
    scales = n * (k // block) * 4
    assert node.bytes_read == 3 * k * 4 + packed + scales
    assert node.bytes_written == 3 * n * 4
    assert node.macs == 3 * k * n and node.dtype == "float32"
    assert node.flops == k * n  # every weight dequantized once per call


def test_matmul_nbits_accuracy_level_4_runs_in_int8():
    model, k, n, _ = _nbits_model(rows=3, accuracy_level=4)
    estimate = estimate_cost(model, "x86-avx512")
    node = next(c for c in estimate.nodes if c.op_type == "MatMulNBits")
    assert estimate.macs_by_dtype == {"int8": 3 * k * n}
    assert node.flops == k * n + 2 * 3 * k  # + quantizing A


def test_group_query_attention_reads_the_kv_cache():
    text = f"""{HEADER}
g (float[1, 1, 128] q, float[1, 1, 32] k, float[1, 1, 32] v, float[1, 2, 63, 16] pk, float[1, 2, 63, 16] pv,
   int32[1, 1] lens, int32[1] total) => (float[1, 1, 128] y, float[1, 2, 64, 16] ok, float[1, 2, 64, 16] ov)
{{
  y, ok, ov = com.microsoft.GroupQueryAttention(q, k, v, pk, pv, lens, total) <num_heads = 8, kv_num_heads = 2>
}}"""
    node = next(c for c in estimate_cost(model_from_text(text), "x86-avx512").nodes
                if c.op_type == "GroupQueryAttention")
    heads, head, total = 8, 16, 64
    assert node.macs == 2 * total * heads * head  # QKᵀ and AV over 63 past + 1 new positions
    cache = 2 * 2 * 63 * 16 * 4
    assert node.bytes_read == (128 + 32 + 32) * 4 + cache + 4 + 4


def test_decode_is_priced_by_bytes_and_prefill_by_macs():
    model = toy_decoder(hidden=256, ffn=1024)
    decode = {"batch": 1, "seq": 1, "past_seq": 127, "total_seq": 128}
    # The estimator binds dims to positive sizes (its tests hold it to that), so a prefill is
    # priced with one cached position, a 1/128 overcount of attention.
    prefill = {"batch": 1, "seq": 128, "past_seq": 1, "total_seq": 129}
    quantized = model.clone()
    run_fusion(quantized, "quantize-weights")
    for dims, bound in ((decode, "memory"), (prefill, "compute")):
        before = estimate_cost(model, "x86-avx512", dims=dims)
        after = estimate_cost(quantized, "x86-avx512", dims=dims)
        matmuls = [c for c in before.nodes if c.op_type == "MatMul" and c.macs >= 256 * 256 * dims["seq"]]
        assert matmuls and all(c.bound == bound for c in matmuls)
        assert after.total_macs == before.total_macs  # the same products, other operands
    decode_before = estimate_cost(model, "x86-avx512", dims=decode)
    decode_after = estimate_cost(quantized, "x86-avx512", dims=decode)
    assert decode_after.bytes_read < 0.3 * decode_before.bytes_read  # 4-bit weights plus scales
