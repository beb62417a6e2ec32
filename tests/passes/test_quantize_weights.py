"""quantize-weights: the MatMulNBits / GatherBlockQuantized forms, the reasons it declines,
numerics against ONNX Runtime (the numpy dequantization is what ORT computes), GPTQ against
RTN on a small decoder with structured activations, the perplexity-budget fallback and the
presets that pick it for decoders."""

from __future__ import annotations

import dataclasses
import warnings

import numpy as np
import onnx_ir as ir
import pytest
from onnx import TensorProto, helper, numpy_helper

import greencc as gc
from greencc.cost.profile import HardwareProfile
from greencc.data import CalibrationData
from greencc.errors import UsageError
from greencc.instruments.verify import VerifyInstrument
from greencc.ir import to_self_contained_proto
from greencc.passes.quantize.quantize_weights import WeightPlan, lm_head_node
from greencc.pipeline.base import get_pass_class
from greencc.pipeline.context import PassContext
from greencc.pipeline.manager import PassManager
from greencc.pipeline.text import Pipeline
from greencc.quant.blockwise import pack_matmul_nbits, quantize_rtn
from greencc.verify.feeds import random_feeds
from greencc.verify.fidelity import TokenTargets, measure_fidelity
from tests.helpers import model_from_text, run_ort
from tests.models import decoder_model
from tests.passes.strategies import fingerprint
from tests.passes.test_fuse_support import ops, reasons, run_fusion

VOCAB = 48
HIDDEN = 64
HEADS = 2
HEAD_DIM = HIDDEN // HEADS
FFN = 128


def toy_decoder(seed: int = 0, rank: int = 6, hidden: int = HIDDEN, ffn: int = FFN) -> gc.Model:
    """A one-layer decoder with the decoder signature (input_ids, attention_mask,
    position_ids, past_key_values.0.key/value -> logits, present.0.key/value) whose
    embeddings span a ``rank``-dimensional subspace plus small noise, with two outlier
    channels: the structured activations real LLMs have and GPTQ exploits. ``hidden`` and
    ``ffn`` size its weights (two heads)."""
    head_dim = hidden // HEADS
    rng = np.random.default_rng(seed)
    basis = rng.standard_normal((rank, hidden))
    embed = rng.standard_normal((VOCAB, rank)) @ basis + 0.05 * rng.standard_normal((VOCAB, hidden))
    embed[:, :2] *= 6.0
    scale = np.sqrt(hidden)
    weights = {
        "E": embed, "P": 0.1 * rng.standard_normal((32, hidden)),
        "Wk": rng.standard_normal((hidden, hidden)) / scale, "Wv": rng.standard_normal((hidden, hidden)) / scale,
        "W1": rng.standard_normal((hidden, ffn)) / scale, "W2": rng.standard_normal((ffn, hidden)) / np.sqrt(ffn) / 1.4,
        "Wout": rng.standard_normal((hidden, VOCAB)) / scale,
        "kv_shape": np.array([0, 0, HEADS, head_dim], np.int64), "flat": np.array([0, 1, hidden], np.int64),
        "axis2": np.array([2], np.int64),
    }
    n = helper.make_node
    nodes = [
        n("Gather", ["E", "input_ids"], ["tok"], name="embed"),
        n("Gather", ["P", "position_ids"], ["pos"], name="embed_pos"),
        n("Add", ["tok", "pos"], ["h"], name="add_pos"),
        n("MatMul", ["h", "Wk"], ["k"], name="k_proj"),
        n("Reshape", ["k", "kv_shape"], ["k4"], name="k_heads"),
        n("Transpose", ["k4"], ["kt"], perm=[0, 2, 1, 3], name="k_t"),
        n("Concat", ["past_key_values.0.key", "kt"], ["present.0.key"], axis=2, name="k_cat"),
        n("MatMul", ["h", "Wv"], ["v"], name="v_proj"),
        n("Reshape", ["v", "kv_shape"], ["v4"], name="v_heads"),
        n("Transpose", ["v4"], ["vt"], perm=[0, 2, 1, 3], name="v_t"),
        n("Concat", ["past_key_values.0.value", "vt"], ["present.0.value"], axis=2, name="v_cat"),
        n("ReduceMean", ["present.0.value", "axis2"], ["ctx4"], keepdims=1, name="pool"),
        n("Transpose", ["ctx4"], ["ctx_t"], perm=[0, 2, 1, 3], name="ctx_t"),
        n("Reshape", ["ctx_t", "flat"], ["ctx"], name="ctx_flat"),
        n("Add", ["h", "ctx"], ["x"], name="add_ctx"),
        n("MatMul", ["x", "W1"], ["up"], name="up_proj"),
        n("Relu", ["up"], ["act"], name="act"),
        n("MatMul", ["act", "W2"], ["down"], name="down_proj"),
        n("Add", ["x", "down"], ["res"], name="residual"),
        n("MatMul", ["res", "Wout"], ["logits"], name="lm_head"),
    ]
    kv = ["batch", HEADS, "past_seq", head_dim]
    total = ["batch", HEADS, "total_seq", head_dim]
    graph = helper.make_graph(
        nodes, "toy_decoder",
        [helper.make_tensor_value_info("input_ids", TensorProto.INT64, ["batch", "seq"]),
         helper.make_tensor_value_info("attention_mask", TensorProto.INT64, ["batch", "total_seq"]),
         helper.make_tensor_value_info("position_ids", TensorProto.INT64, ["batch", "seq"]),
         helper.make_tensor_value_info("past_key_values.0.key", TensorProto.FLOAT, kv),
         helper.make_tensor_value_info("past_key_values.0.value", TensorProto.FLOAT, kv)],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", "seq", VOCAB]),
         helper.make_tensor_value_info("present.0.key", TensorProto.FLOAT, total),
         helper.make_tensor_value_info("present.0.value", TensorProto.FLOAT, total)],
        [numpy_helper.from_array(np.asarray(v, np.float32 if v.dtype.kind == "f" else v.dtype), k)
         for k, v in weights.items()],
    )
    return gc.load(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], ir_version=10))


def toy_tokens(count: int = 8, length: int = 16, seed: int = 1) -> list[np.ndarray]:
    """Token sequences with a pattern to learn from (a noisy cycle through the vocabulary)."""
    rng = np.random.default_rng(seed)
    rows = []
    for _ in range(count):
        start = rng.integers(0, VOCAB)
        row = (start + np.arange(length) * 3 + (rng.random(length) < 0.2) * rng.integers(0, VOCAB, length)) % VOCAB
        rows.append(row.astype(np.int64))
    return rows


def toy_calibration(model: gc.Model, count: int = 8, batch: int = 2, seed: int = 1) -> CalibrationData:
    """Prefill feeds of ``toy_tokens`` (rows of different lengths, so some are left-padded)."""
    rows = [row[: 16 - (i % 3)] for i, row in enumerate(toy_tokens(count, seed=seed))]
    return CalibrationData.from_token_ids(rows, model, batch_size=batch)


def _literal(seed: int, count: int) -> str:
    return ", ".join(f"{v:.4f}" for v in np.random.default_rng(seed).standard_normal(count) * 0.2)


MATMUL = f"""
<ir_version: 10, opset_import: ["" : 17]>
g (float[N, 64] x, float[64, 16] w_in) => (float[N, 16] y, float[N, 16] z)
<float[64, 16] w = {{{_literal(0, 64 * 16)}}}, float[48, 16] odd = {{{_literal(1, 48 * 16)}}}>
{{
  y = MatMul(x, w)
  z = MatMul(x, w_in)
}}
"""


def _feeds(n: int = 5, seed: int = 3) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {"x": rng.standard_normal((n, 64)).astype(np.float32), "w_in": rng.standard_normal((64, 16)).astype(np.float32)}


def _replace_weight(model: gc.Model, name: str, array: np.ndarray) -> gc.Model:
    """A copy of ``model`` whose initializer ``name`` holds ``array``."""
    proto = to_self_contained_proto(model.ir)
    for init in proto.graph.initializer:
        if init.name == name:
            init.CopyFrom(numpy_helper.from_array(array.astype(np.float32), name))
    return gc.load(proto)


def _lm_fidelity(reference_model: gc.Model, model: gc.Model, data: CalibrationData):
    samples = data.batches()
    return measure_fidelity([run_ort(reference_model, f) for f in samples], [run_ort(model, f) for f in samples],
                            tokens=TokenTargets.of(reference_model, samples))


# -- golden structure --------------------------------------------------------------------
def test_golden_matmul_nbits_layout():
    model = model_from_text(MATMUL)
    result, ctx = run_fusion(model, "quantize-weights")
    assert ops(model) == ["ms::MatMulNBits", "MatMul"]
    node = next(n for n in model.graph if n.op_type == "MatMulNBits")
    attrs = {k: v.value for k, v in node.attributes.items()}
    assert attrs == {"K": 64, "N": 16, "bits": 4, "block_size": 32}
    b, scales = node.inputs[1].const_value, node.inputs[2].const_value
    assert list(b.shape) == [16, 2, 16] and b.dtype == ir.DataType.UINT8  # [N, K/block, block·4/8]
    assert list(scales.shape) == [16, 2] and len(node.inputs) == 3  # symmetric: no zero points
    assert "w" not in model.graph.initializers
    assert model.ir.opset_imports["com.microsoft"] == 1
    assert result.stats["quantized"] == 1 and result.stats["quantized.matmul"] == 1
    assert result.stats["weight_bytes_saved"] == 64 * 16 * 4 - (16 * 2 * 16 + 16 * 2 * 4)


def test_golden_asymmetric_8bit_accuracy_level_and_zero_points():
    model = model_from_text(MATMUL)
    run_fusion(model, "quantize-weights", bits=8, symmetric=False, accuracy_level=4, block=16)
    node = next(n for n in model.graph if n.op_type == "MatMulNBits")
    assert node.attributes["bits"].value == 8 and node.attributes["accuracy_level"].value == 4
    assert list(node.inputs[1].const_value.shape) == [16, 4, 16]  # 8 bits: one value per byte
    assert list(node.inputs[3].const_value.shape) == [16, 4]  # zero points [N, K/block]


def test_golden_decoder_lm_head_and_embeddings():
    model = toy_decoder()
    result, _ = run_fusion(model, "quantize-weights", embeddings="quantize", lm_head="int8")
    names = {n.name: n for n in model.graph}
    assert sum(n.op_type == "MatMulNBits" for n in model.graph) == 5
    head = next(n for n in model.graph if n.op_type == "MatMulNBits" and n.outputs[0].name == "logits")
    assert head.attributes["bits"].value == 8
    gathers = [n.op_type for n in model.graph if "Gather" in n.op_type]
    assert gathers == ["GatherBlockQuantized", "GatherBlockQuantized"]  # token and position tables
    assert result.stats["quantized.lm_head"] == 1 and result.stats["quantized.embedding"] == 2
    assert [v.name for v in model.graph.outputs] == ["logits", "present.0.key", "present.0.value"]
    assert "embed" not in names


def test_tied_lm_head_read_through_transpose_is_quantized():
    # GPT-2 ties its lm_head to the token embeddings. The exporter folds the transpose of a
    # small table into a copy, but reads a real one (50k x 768) through a Transpose node,
    # and that lm_head is the largest weight a decode step reads: build that form here.
    model, _ = gc.optimize(decoder_model("gpt2"), "cleanup,fuse,dce", verify=False)
    head = lm_head_node(model.graph)
    gather = next(n for n in model.graph if n.op_type == "Gather" and n.inputs[0].const_value is not None
                  and n.inputs[0].shape[0] == head.inputs[1].shape[1])
    table = gather.inputs[0]
    np.testing.assert_array_equal(head.inputs[1].const_value.numpy(), table.const_value.numpy().T)
    transpose = ir.node("Transpose", [table], {"perm": [1, 0]}, name="tied_lm_head_transpose")
    model.graph.insert_before(head, transpose)
    head.replace_input_with(1, transpose.outputs[0])
    reference = model.clone()

    result, _ = run_fusion(model, "quantize-weights", bits=8)
    assert result.stats["quantized.lm_head"] == 1
    assert "Transpose" not in ops(model)
    assert table.name in model.graph.initializers  # the embedding Gather still reads it
    feeds = random_feeds(reference, seed=0, dims={"batch": 2, "seq": 3, "past_seq": 2, "total_seq": 5})
    got, want = run_ort(model, feeds)[0], run_ort(reference, feeds)[0]
    cosine = float((got * want).sum() / np.linalg.norm(got) / np.linalg.norm(want))
    assert cosine > 0.999


def _tied_gpt2() -> gc.Model:
    """Tiny GPT-2 whose lm_head reads the token embedding table through a Transpose (tied)."""
    model, _ = gc.optimize(decoder_model("gpt2"), "cleanup,fuse,dce", verify=False)
    head = lm_head_node(model.graph)
    gather = next(n for n in model.graph if n.op_type == "Gather" and n.inputs[0].const_value is not None
                  and n.inputs[0].shape[0] == head.inputs[1].shape[1])
    transpose = ir.node("Transpose", [gather.inputs[0]], {"perm": [1, 0]}, name="tied_lm_head_transpose")
    model.graph.insert_before(head, transpose)
    head.replace_input_with(1, transpose.outputs[0])
    return model


def test_a_tied_int4_embedding_shares_the_lm_head_blocks(monkeypatch):
    model = _tied_gpt2()
    feeds = random_feeds(model, seed=0, dims={"batch": 2, "seq": 3, "past_seq": 2, "total_seq": 5})
    shared = model.clone()
    run_fusion(shared, "quantize-weights", bits=4, embeddings="quantize")
    gathers = [n for n in shared.graph if n.op_type == "GatherBlockQuantized"]
    token = [n for n in gathers if n.inputs[0].producer() is not None]
    assert len(token) == 1  # the token table; the position table has no twin
    vocab = gc.DecoderSpec.of(shared).vocab_size
    (nbits,) = [n for n in shared.graph if n.op_type == "MatMulNBits" and n.attributes["N"].as_int() == vocab]
    assert token[0].inputs[0].producer().op_type == "Reshape"
    assert token[0].inputs[0].producer().inputs[0] is nbits.inputs[1]
    assert token[0].inputs[2].producer().inputs[0] is nbits.inputs[2]
    monkeypatch.setattr(WeightPlan, "_share_tied_table", lambda *args: None)
    separate = model.clone()
    run_fusion(separate, "quantize-weights", bits=4, embeddings="quantize")
    assert sum(v.const_value.nbytes for v in shared.graph.initializers.values()) < sum(
        v.const_value.nbytes for v in separate.graph.initializers.values())
    for got, want in zip(run_ort(shared, feeds), run_ort(separate, feeds), strict=True):
        np.testing.assert_array_equal(got, want)


# -- declines ----------------------------------------------------------------------------
def test_declines_non_constant_weight_and_indivisible_k():
    model = model_from_text(MATMUL.replace("float[48, 16] odd", "float[48, 16] unused"))
    _, ctx = run_fusion(model, "quantize-weights", block=128)
    why = reasons(ctx, "quantize-weights")
    assert any("'w_in' is not a constant" in r for r in why)
    assert any("K=64 is not divisible by block=128" in r for r in why)
    assert ops(model) == ["MatMul", "MatMul"]


def test_declines_on_a_target_without_matmul_nbits():
    class NoNBits(gc.Target):
        name = "no-nbits-test"

        def supported_fused_ops(self) -> set[str]:
            return {"com.microsoft::Attention"}

    model = model_from_text(MATMUL)
    ctx = PassContext(target="ort-cpu")
    ctx.target = NoNBits.__new__(NoNBits)
    with ctx:
        result = get_pass_class("quantize-weights")().call(model, ctx)
    assert not result.modified
    assert reasons(ctx, "quantize-weights") == ["target 'no-nbits-test' does not run com.microsoft::MatMulNBits"] * 2


def test_declines_keep_float_lm_head_float_and_non_decoders():
    model = toy_decoder()
    _, ctx = run_fusion(model, "quantize-weights", lm_head="float", keep_float="k_proj")
    assert {"the lm_head stays float (lm_head=float)", "listed in keep_float"} <= set(reasons(ctx, "quantize-weights"))
    assert sum(n.op_type == "MatMulNBits" for n in model.graph) == 3
    encoder = model_from_text(MATMUL)
    result, ctx = run_fusion(encoder, "quantize-weights", models="decoders")
    assert not result.modified and "not a decoder" in reasons(ctx, "quantize-weights")[0]
    with pytest.raises(UsageError, match="keep_float names no node called nope"):
        run_fusion(model_from_text(MATMUL), "quantize-weights", keep_float="nope")
    with pytest.raises(UsageError, match="not a power of two"):
        run_fusion(model_from_text(MATMUL), "quantize-weights", block=24)


# -- numerics ----------------------------------------------------------------------------
@pytest.mark.parametrize("bits,symmetric,block", [(4, True, 32), (4, False, 16), (8, True, 32), (8, False, 64)])
def test_rtn_numerics_match_onnx_runtime(bits, symmetric, block):
    """ORT's MatMulNBits computes x @ dequantize(W) exactly (float32 rounding only)."""
    model = model_from_text(MATMUL)
    weight = model.graph.initializers["w"].const_value.numpy()
    dequantized = quantize_rtn(weight, bits, block, symmetric).dequantize()
    expected = _replace_weight(model, "w", dequantized)
    run_fusion(model, "quantize-weights", bits=bits, symmetric=symmetric, block=block)
    for seed in range(3):
        feeds = _feeds(seed=seed)
        got, want = run_ort(model, feeds), run_ort(expected, feeds)
        np.testing.assert_allclose(got[0], want[0], rtol=1e-5, atol=1e-5)
        np.testing.assert_array_equal(got[1], want[1])
    error = np.abs(dequantized - weight).max()
    assert 0 < error <= np.abs(weight).max() / (2 ** (bits - 1) - 1)  # within one step of the largest scale


def test_rtn_packing_round_trips():
    weight = np.random.default_rng(5).standard_normal((64, 8)).astype(np.float32)
    quantized = quantize_rtn(weight, 4, 32, symmetric=False)
    b, scales, zero = pack_matmul_nbits(quantized)
    low, high = b & 0x0F, b >> 4
    assert np.array_equal(np.stack([low, high], -1).reshape(8, 2, 32), quantized.q)
    assert zero is not None and zero.shape == (8, 1)  # two 4-bit zero points in one byte
    assert np.array_equal(zero[:, 0] & 0x0F, quantized.zero_points[:, 0])


def test_embeddings_match_dequantized_table():
    model = toy_decoder()
    reference = toy_decoder()
    run_fusion(model, "quantize-weights", embeddings="quantize", lm_head="float", keep_float="k_proj,v_proj,up_proj,down_proj")
    from greencc.quant.blockwise import quantize_embedding

    table = reference.graph.initializers["E"].const_value.numpy()
    expected = _replace_weight(reference, "E", quantize_embedding(table, 4, 32)[3])
    expected = _replace_weight(expected, "P", quantize_embedding(reference.graph.initializers["P"].const_value.numpy())[3])
    feeds = toy_calibration(reference).batches()[0]
    for got, want in zip(run_ort(model, feeds), run_ort(expected, feeds), strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def test_gptq_loses_less_than_rtn_on_structured_activations():
    reference = toy_decoder()
    calibration = toy_calibration(reference, count=16)
    held_out = toy_calibration(reference, count=8, seed=7)
    losses = {}
    for method in ("rtn", "gptq"):
        model = reference.clone()
        ctx = PassContext(target="ort-cpu", calibration=calibration)
        with ctx:
            result = get_pass_class("quantize-weights")(method=method).call(model, ctx)
        assert result.stats[f"method.{method}"] == 1 and "calibrated_on_random_inputs" not in result.stats
        fidelity = _lm_fidelity(reference, model, held_out)
        losses[method] = (fidelity.perplexity_ratio - 1.0, 1.0 - fidelity.cosine_min)
    assert losses["rtn"][0] > 0.001  # int4 RTN visibly hurts this model
    assert losses["gptq"][0] < 0.5 * losses["rtn"][0]
    assert losses["gptq"][1] < losses["rtn"][1]


def test_idempotent():
    model = toy_decoder()
    run_fusion(model, "quantize-weights")
    before = fingerprint(model)
    result, _ = run_fusion(model, "quantize-weights")
    assert not result.modified and fingerprint(model) == before


# -- budget and fallback -----------------------------------------------------------------
def _pipeline(model: gc.Model, text: str, budget: str, calibration: CalibrationData):
    ctx = PassContext(target="ort-cpu", calibration=calibration, budget=budget)
    ctx.instruments.append(VerifyInstrument())
    manager = PassManager(text)
    with ctx, warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        out = manager.run(model, ctx)
    return out, manager.records, [str(w.message) for w in caught]


def test_perplexity_budget_rolls_back_a_pass_that_breaks_it():
    model = toy_decoder()
    out, records, messages = _pipeline(model, "quantize-weights{bits=4}", "ppl=1.0001", toy_calibration(model))
    assert records[0].rolled_back and "perplexity" in records[0].rolled_back
    assert any("rolled back lossy pass 'quantize-weights" in m for m in messages)
    assert "MatMulNBits" not in {n.op_type for n in out.graph}


def test_sensitivity_fallback_keeps_layers_in_float_to_meet_the_perplexity_budget():
    model = toy_decoder()
    calibration = toy_calibration(model)
    budget = "ppl=1.003"
    plain, _, _ = _pipeline(model, "quantize-weights{bits=4}", "ppl=100", calibration)
    ratio_all = _lm_fidelity(model, plain, calibration).perplexity_ratio
    assert ratio_all > 1.003  # all int4 breaks the budget
    out, records, _ = _pipeline(model, "quantize-weights{bits=4,fallback=sensitivity}", budget, calibration)
    record = records[0]
    assert not record.rolled_back and record.modified
    assert 0 < record.stats["float_fallback"] < 5 and record.stats["quantized"] >= 1
    assert record.fidelity.perplexity_ratio <= 1.003
    assert _lm_fidelity(model, out, calibration).perplexity_ratio <= 1.003


def test_o3_and_green_pick_int4_for_decoders_only():
    assert "quantize-weights{bits=4,accuracy_level=4,models=decoders,when=saves-energy}" in str(Pipeline.parse("-O3"))
    assert "quantize-weights" in str(Pipeline.parse("green"))
    decode = {"batch": 1, "seq": 1, "past_seq": 64, "total_seq": 65}
    socket = HardwareProfile.named("x86-avx512")
    # Its 100 MB of L2 would hold a test-sized model; with the cache cut to 1 MB the 5 MB of
    # float weights stream from DRAM on every token, as a real LLM's do.
    small_cache = dataclasses.replace(socket, name="x86-1mb-cache",
                                      memory_levels=[dataclasses.replace(socket.memory_levels[0], capacity_bytes=1 << 20),
                                                     socket.memory_levels[-1]])
    large = toy_decoder(hidden=256, ffn=1024)
    ctx = PassContext(target="ort-cpu", profile=small_cache, dims=decode)
    with ctx:
        result = get_pass_class("quantize-weights")(models="decoders", when="saves-energy").call(large, ctx)
    assert result.stats["quantized"] == 5 and result.stats["est_energy_saved_mJ"] > 0
    small = toy_decoder()  # 100 kB, cache-resident: dequantizing costs more than the bytes save
    ctx = PassContext(target="ort-cpu", dims=decode)
    with ctx:
        result = get_pass_class("quantize-weights")(models="decoders", when="saves-energy").call(small, ctx)
    assert not result.modified
    assert all("saves no energy" in r for r in reasons(ctx, "quantize-weights"))
    encoder = model_from_text(MATMUL)
    out = PassManager(str(Pipeline.parse("-O3"))).run(encoder, PassContext(target="ort-cpu", verify=False))
    assert "MatMulNBits" not in {n.op_type for n in out.graph}
