"""fuse-rotary: x·cos + rotate_half(x)·sin, with cos/sin of position_ids · inv_freq, becomes
com.microsoft::RotaryEmbedding with cos/sin caches of the model's max_positions rows (full
rotary, and partial rotary as Phi writes it)."""

from __future__ import annotations

import numpy as np
import pytest

import greencc as gc
from greencc.passes.fusion.rotary import rotary_caches
from tests import models
from tests.helpers import model_from_text, run_ort
from tests.passes.strategies import fingerprint
from tests.passes.test_fuse_support import assert_close, ops, reasons, run_fusion

MAX_POSITIONS = 32
INV_FREQ = 10000.0 ** (-np.arange(0, 8, 2) / 8)  # head size 8: four frequencies


def _rope_text(rotary_width: int = 8, head: int = 8, halves: tuple[int, int] = (4, 4)) -> str:
    """RoPE on x [B, 2, S, head] as the dynamo export writes it; the first ``rotary_width``
    features rotate (the rest are concatenated back when it is less than ``head``)."""
    frequencies = ", ".join(f"{v:.9g}" for v in INV_FREQ[: rotary_width // 2])
    low, high = halves
    partial = rotary_width < head
    rotated_input = "xr" if partial else "x"
    lines = [
        "  p3 = Unsqueeze(position_ids, minus_one)",
        "  pf = Cast<to = 1>(p3)",
        "  freqs = Mul(pf, inv_freq)",
        "  emb = Concat<axis = -1>(freqs, freqs)",
        "  c = Cos(emb)",
        "  s = Sin(emb)",
        "  c4 = Unsqueeze(c, one)",
        "  s4 = Unsqueeze(s, one)",
    ]
    if partial:
        lines += ["  xr = Slice(x, zero, width, minus_one)", "  xp = Slice(x, width, big, minus_one)"]
    lines += [
        f"  xc = Mul({rotated_input}, c4)",
        f"  lo = Slice({rotated_input}, zero, half_lo, minus_one)",
        f"  hi = Slice({rotated_input}, half_hi, big, minus_one)",
        "  neg = Neg(hi)",
        "  rot = Concat<axis = -1>(neg, lo)",
        "  rs = Mul(rot, s4)",
        ("  rope = Add(xc, rs)\n  y = Concat<axis = -1>(rope, xp)" if partial else "  y = Add(xc, rs)"),
    ]
    body = "\n".join(lines)
    return f"""
<ir_version: 10, opset_import: ["" : 18]>
g (float[B, 2, S, {head}] x, int64[B, S] position_ids) => (float[B, 2, S, {head}] y)
<float[{rotary_width // 2}] inv_freq = {{{frequencies}}}, int64[1] minus_one = {{-1}}, int64[1] one = {{1}},
 int64[1] zero = {{0}}, int64[1] half_lo = {{{low}}}, int64[1] half_hi = {{{high}}},
 int64[1] width = {{{rotary_width}}}, int64[1] big = {{9223372036854775807}}>
{{
{body}
}}
"""


def _decoder(text: str, max_positions: int | None = MAX_POSITIONS) -> gc.Model:
    model = model_from_text(text)
    gc.DecoderSpec("llama", 1, 2, 2, 8, 16, 100, max_positions=max_positions).attach(model)
    return model


def _feeds(seed: int, batch: int = 2, seq: int = 3) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {"x": rng.standard_normal((batch, 2, seq, 8)).astype(np.float32),
            "position_ids": rng.integers(0, MAX_POSITIONS, (batch, seq)).astype(np.int64)}


def test_golden_full_rotary_becomes_rotary_embedding():
    model = _decoder(_rope_text())
    result, ctx = run_fusion(model, "fuse-rotary", dims={"B": 1, "S": 4})
    assert result.stats["fused"] == 1 and result.stats["activation_bytes_removed"] > 0
    assert ops(model)[-1] == "ms::RotaryEmbedding"
    fused = list(model.graph)[-1]
    assert [v.name for v in fused.inputs[:2]] == ["x", "position_ids"] and fused.outputs[0].name == "y"
    assert fused.attributes["interleaved"].as_int() == 0
    cos, sin = (value.const_value.numpy() for value in fused.inputs[2:])
    want_cos, want_sin = rotary_caches(INV_FREQ.astype(np.float32), 1.0, MAX_POSITIONS)
    np.testing.assert_array_equal(cos, want_cos)
    np.testing.assert_array_equal(sin, want_sin)
    assert cos.shape == (MAX_POSITIONS, 4)
    assert ctx.near_misses == []


@pytest.mark.parametrize("rotary_width", [8, 4])
def test_matches_ort_and_is_idempotent(rotary_width):
    model = _decoder(_rope_text(rotary_width, halves=(rotary_width // 2, rotary_width // 2)))
    feeds = _feeds(seed=rotary_width)
    expected = run_ort(model, feeds)
    result, _ = run_fusion(model, "fuse-rotary")
    assert result.stats["fused"] == 1
    assert "Neg" not in ops(model) and "Slice" not in ops(model)  # partial rotary: the kept part too
    fused = next(n for n in model.graph if n.op_type == "RotaryEmbedding")
    if rotary_width < 8:
        assert fused.attributes["rotary_embedding_dim"].as_int() == rotary_width
    assert_close(expected, run_ort(model, feeds))
    before = fingerprint(model)
    again, _ = run_fusion(model, "fuse-rotary")
    assert again.modified is False and fingerprint(model) == before


def test_declines_with_reasons():
    cases = {
        _rope_text(halves=(3, 3)): "are not x[..., :4] and x[..., 4:] (interleaved rotary is not fused)",
        _rope_text().replace("c = Cos(emb)", "c = Sin(emb)"): "the cos factor 'c4' is not Unsqueeze(Cos(Concat(f, f)))",
        _rope_text().replace("c4 = Unsqueeze(c, one)", "c4 = Unsqueeze(c, zero)"):
            "does not insert the head axis (1)",
    }
    for text, reason in cases.items():
        model = _decoder(text)
        before = fingerprint(model)
        result, ctx = run_fusion(model, "fuse-rotary")
        assert result.modified is False and fingerprint(model) == before
        (found,) = reasons(ctx, "fuse-rotary")
        assert reason in found, found


def test_declines_without_the_models_maximum_position():
    model = _decoder(_rope_text(), max_positions=None)
    result, ctx = run_fusion(model, "fuse-rotary")
    assert result.modified is False
    assert reasons(ctx, "fuse-rotary") == [
        "the model's maximum position is unknown (no greencc.decoder metadata), so no cos/sin cache can be built"
    ]


def test_every_layer_shares_one_cos_and_one_sin_cache():
    model = models.decoder_model("llama")
    fused, _ = gc.optimize(model, "cleanup,fuse-rotary")
    rotaries = [n for n in fused.graph if n.op_type == "RotaryEmbedding"]
    assert len(rotaries) == 4
    assert len({n.inputs[2].name for n in rotaries}) == 1 and len({n.inputs[3].name for n in rotaries}) == 1
