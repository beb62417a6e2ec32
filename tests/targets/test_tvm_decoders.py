"""tvm-llvm runs decoders: one build with symbolic batch, sequence and past lengths serves
prefill and every decode step (tiny random-init Llama and GPT-2 at -O2), matching ONNX
Runtime on the original graph within 1e-4; greedy ``generate`` equals ort-cpu's; save/load;
the mask-length check; the symbolic-shape helpers.

Skipped as a whole only when apache-tvm cannot be imported (the ``tvm`` extra is missing).
"""

from __future__ import annotations

import numpy as np
import pytest

import greencc as gc
from greencc.errors import InputMismatchError
from greencc.model import DecoderSpec
from tests import models

pytest.importorskip("tvm", reason="apache-tvm is not installed (pip install 'greencc[tvm]')")

from greencc.targets.tvm.symbolic import solve_hole  # noqa: E402
from greencc.targets.tvm.tuning import _has_symbolic_shape  # noqa: E402

TOLERANCE = 1e-4
FAMILIES = ("llama", "gpt2")
PROMPTS = [[5, 17, 42, 9, 33], [7, 61, 3]]  # left-padded into one batch of two


@pytest.fixture(scope="module", params=FAMILIES)
def decoder(request):
    """(family, original model, tvm-llvm build at -O2, ort-cpu build at -O2): one TVM build
    per family for the whole module."""
    model = models.decoder_model(request.param)
    tvm_compiled = gc.compile(model, target="tvm-llvm", pipeline="-O2", threads=2, verify=False)
    ort_compiled = gc.compile(model, target="ort-cpu", pipeline="-O2", threads=2, verify=False)
    return request.param, model, tvm_compiled, ort_compiled


def _step_feeds(ids, mask, positions, past):
    return {"input_ids": ids, "attention_mask": mask, "position_ids": positions, **past}


def test_one_build_keeps_the_decoder_dims_symbolic_and_no_contrib_ops(decoder):
    _, _, compiled, _ = decoder
    assert {"batch", "seq", "past_seq", "total_seq"} <= set(compiled.dynamic_dims)
    # tvm-llvm runs no com.microsoft op, so -O2's decoder fusions decline for it.
    assert not [node for node in compiled.model.graph if node.domain == "com.microsoft"]


def test_prefill_and_four_decode_steps_match_ort(decoder):
    _, model, compiled, _ = decoder
    spec = DecoderSpec.of(model)
    names = [output.name for output in model.outputs]
    ids, mask = np.array([[0, 0, 5, 17, 42], [7, 61, 3, 9, 33]]), np.array([[0, 0, 1, 1, 1], [1] * 5])
    positions = np.where(mask == 1, np.cumsum(mask, axis=1) - 1, 1)
    empty = np.zeros((2, spec.num_kv_heads, 0, spec.head_dim), dtype=np.float32)
    past_tvm = past_ort = dict.fromkeys(spec.past_names(), empty)
    for step in range(5):
        feeds = _step_feeds(ids, mask, positions, past_tvm)
        got = compiled(feeds)
        want = dict(zip(names, models.ort_outputs(model, _step_feeds(ids, mask, positions, past_ort)), strict=True))
        for name in names:
            assert got[name].shape == want[name].shape, (step, name)
            np.testing.assert_allclose(got[name], want[name], atol=TOLERANCE, rtol=0, err_msg=f"step {step} {name}")
        past_tvm = dict(zip(spec.past_names(), (got[n] for n in spec.present_names()), strict=True))
        past_ort = dict(zip(spec.past_names(), (want[n] for n in spec.present_names()), strict=True))
        ids = got["logits"][:, -1].argmax(-1)[:, None].astype(np.int64)
        mask = np.concatenate([mask, np.ones((2, 1), dtype=np.int64)], axis=1)
        positions = positions[:, -1:] + 1


def test_greedy_generate_equals_ort_cpu(decoder):
    _, _, compiled, reference = decoder
    got = compiled.generate(PROMPTS, 8, stop_tokens=())
    want = reference.generate(PROMPTS, 8, stop_tokens=())
    np.testing.assert_array_equal(got.sequences, want.sequences)
    assert got.decode_steps == 7
    single = compiled.generate(PROMPTS[0], 6, stop_tokens=())
    np.testing.assert_array_equal(single.new_tokens, reference.generate(PROMPTS[0], 6, stop_tokens=()).new_tokens)


def test_save_and_load_generate_the_same_tokens(decoder, tmp_path):
    _, _, compiled, _ = decoder
    compiled.save(tmp_path / "artifact")
    loaded = gc.CompiledModel.load(tmp_path / "artifact")
    assert loaded.target == "tvm-llvm"
    assert {"seq", "past_seq"} <= set(loaded.dynamic_dims)
    expected = compiled.generate(PROMPTS, 5, stop_tokens=()).sequences
    np.testing.assert_array_equal(loaded.generate(PROMPTS, 5, stop_tokens=()).sequences, expected)


def test_a_mask_that_does_not_span_past_and_new_tokens_is_refused(decoder):
    _, model, compiled, _ = decoder
    spec = DecoderSpec.of(model)
    past = np.zeros((1, spec.num_kv_heads, 3, spec.head_dim), dtype=np.float32)
    feeds = _step_feeds(np.ones((1, 2), np.int64), np.ones((1, 4), np.int64), np.ones((1, 2), np.int64),
                        dict.fromkeys(spec.past_names(), past))
    with pytest.raises(InputMismatchError, match="past_seq \\+ seq"):
        compiled(feeds)


def test_solve_hole_cancels_equal_dims():
    from tvm import tirx

    batch, total = tirx.Var("batch", "int64"), tirx.Var("past_seq", "int64") + tirx.Var("seq", "int64")
    solved = solve_hole([batch, 4, total, 8], [-1, total, 8], allowzero=False)
    assert str(solved[0]) == str(batch * 4)
    assert str(solve_hole([batch, total], [0, -1], allowzero=False)[1]) == str(total)
    assert solve_hole([batch, total], [batch, total], allowzero=False) is None


def test_tuning_leaves_symbolic_kernels_to_default_schedules():
    import tvm
    from tvm import te, tirx

    n = tirx.Var("n", "int64")
    x = te.placeholder((n, 4), name="x")
    symbolic = tvm.IRModule({"main": te.create_prim_func([x, te.compute((n, 4), lambda i, j: x[i, j] * 2)])})
    y = te.placeholder((3, 4), name="y")
    static = tvm.IRModule({"main": te.create_prim_func([y, te.compute((3, 4), lambda i, j: y[i, j] * 2)])})
    assert _has_symbolic_shape(symbolic) and not _has_symbolic_shape(static)
