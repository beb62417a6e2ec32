"""``CompiledModel.generate``: greedy equals transformers' greedy ``generate``, sampling is
reproducible under its seed, a padded batch equals its prompts run one at a time, stop
tokens end rows, ort-cpu's IO-bound session equals the generic one, bad input is refused."""

from __future__ import annotations

import functools
import os

import numpy as np
import pytest

import greencc as gc
from greencc.target.generation import FeedDecodeSession, Sampling
from greencc.targets.ort.cpu import IoBoundDecodeSession
from tests import models

os.environ.setdefault("HF_HUB_OFFLINE", "1")
torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

GREEDY_FAMILIES = ("llama", "gpt2", "phi")
PROMPTS = [[5, 17, 40, 33, 9, 71], [12, 90, 4]]


@functools.cache
def _compiled(family: str, level: str = "-O1") -> gc.CompiledModel:
    return gc.compile(models.decoder_model(family), target="ort-cpu", pipeline=level)


def _left_padded(prompts):
    width = max(len(p) for p in prompts)
    ids = np.zeros((len(prompts), width), np.int64)
    mask = np.zeros_like(ids)
    for row, prompt in enumerate(prompts):
        ids[row, width - len(prompt):] = prompt
        mask[row, width - len(prompt):] = 1
    return ids, mask


@pytest.mark.parametrize("family", GREEDY_FAMILIES)
def test_greedy_equals_transformers_greedy_generate(family) -> None:
    ids, mask = _left_padded(PROMPTS)
    with torch.no_grad():
        expected = models.decoder_module(family).generate(
            input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask), max_new_tokens=12,
            do_sample=False, eos_token_id=None, pad_token_id=0,
        ).numpy()
    result = _compiled(family).generate(PROMPTS, 12, stop_tokens=())
    np.testing.assert_array_equal(result.sequences, expected)
    assert result.new_tokens.shape == (2, 12)
    assert result.prefill_ms > 0 and result.decode_tokens_per_s > 0 and result.decode_steps == 11


def test_greedy_with_eos_stops_and_pads_as_transformers_does() -> None:
    compiled = _compiled("llama")
    free = compiled.generate(PROMPTS, 8, stop_tokens=())
    stop = int(free.new_tokens[0, 2])  # row 0 stops at its third token
    ids, mask = _left_padded(PROMPTS)
    with torch.no_grad():
        expected = models.decoder_module("llama").generate(
            input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask), max_new_tokens=8,
            do_sample=False, eos_token_id=stop, pad_token_id=0,
        ).numpy()
    result = compiled.generate(PROMPTS, 8, eos=[stop], pad_token_id=0)
    np.testing.assert_array_equal(result.sequences, expected)
    assert result.stopped[0]
    assert (result.new_tokens[0, 3:] == 0).all()


def test_a_padded_batch_equals_its_prompts_one_at_a_time() -> None:
    compiled = _compiled("qwen2")
    batch = compiled.generate(PROMPTS, 10, stop_tokens=())
    for row, prompt in enumerate(PROMPTS):
        alone = compiled.generate([prompt], 10, stop_tokens=())
        np.testing.assert_array_equal(batch.new_tokens[row], alone.new_tokens[0])


def test_an_array_with_its_mask_equals_a_list_of_prompts() -> None:
    compiled = _compiled("llama")
    ids, mask = _left_padded(PROMPTS)
    from_array = compiled.generate(ids, 5, attention_mask=mask, stop_tokens=())
    from_lists = compiled.generate(PROMPTS, 5, stop_tokens=())
    np.testing.assert_array_equal(from_array.sequences, from_lists.sequences)


def test_sampling_is_reproducible_under_its_seed() -> None:
    compiled = _compiled("llama")
    runs = [compiled.generate(PROMPTS, 16, temperature=1.5, seed=seed, stop_tokens=()).new_tokens
            for seed in (7, 7, 8)]
    np.testing.assert_array_equal(runs[0], runs[1])
    assert not np.array_equal(runs[0], runs[2])
    greedy = compiled.generate(PROMPTS, 16, stop_tokens=()).new_tokens
    assert not np.array_equal(runs[0], greedy)
    top1 = compiled.generate(PROMPTS, 16, temperature=1.5, top_k=1, seed=3, stop_tokens=()).new_tokens
    np.testing.assert_array_equal(top1, greedy)


def test_top_k_and_top_p_keep_only_the_likeliest_tokens() -> None:
    logits = np.log(np.array([[0.5, 0.3, 0.15, 0.05]] * 4000, dtype=np.float32))
    rng = np.random.default_rng(0)
    assert set(Sampling(temperature=1.0, top_k=2).choose(logits, rng)) == {0, 1}
    assert set(Sampling(temperature=1.0, top_p=0.8).choose(logits, rng)) == {0, 1}
    assert set(Sampling(temperature=1.0, top_p=0.81).choose(logits, rng)) == {0, 1, 2}
    draws = Sampling(temperature=1.0).choose(logits, rng)
    np.testing.assert_allclose(np.bincount(draws, minlength=4) / len(draws), [0.5, 0.3, 0.15, 0.05], atol=0.03)


def test_ort_cpu_decodes_through_io_binding_as_the_generic_session_does() -> None:
    compiled = _compiled("mistral")
    spec = gc.DecoderSpec.of(compiled.model)
    assert isinstance(compiled.decode_session(2, 16), IoBoundDecodeSession)
    ids, mask = _left_padded(PROMPTS)
    positions = np.where(mask == 1, np.cumsum(mask, axis=1) - 1, 1)
    bound, generic = IoBoundDecodeSession(compiled.session, spec, 2, 16), FeedDecodeSession(compiled, spec, 2)
    for step in range(5):
        np.testing.assert_array_equal(bound.step(ids, mask, positions), generic.step(ids, mask, positions))
        ids = np.full((2, 1), 10 + step, np.int64)
        mask = np.concatenate([mask, np.ones((2, 1), np.int64)], axis=1)
        positions = positions[:, -1:] + 1


def test_group_query_attention_appends_in_place_to_one_shared_cache_buffer() -> None:
    """-O2 Llama at head size 16 (rotary inside GroupQueryAttention, packed QKV): the
    IO-bound session binds one buffer per past/present pair, and a left-padded batch decodes
    to the same logits as the generic session (which copies the cache every step) and the
    same greedy tokens as transformers."""
    module = models.decoder_module("llama", hidden=64)
    compiled = gc.compile(gc.from_torch(module), target="ort-cpu", pipeline="-O2")
    spec = gc.DecoderSpec.of(compiled.model)
    bound = compiled.decode_session(2, 16)
    assert isinstance(bound, IoBoundDecodeSession) and bound._shared
    generic = FeedDecodeSession(compiled, spec, 2)
    ids, mask = _left_padded(PROMPTS)
    positions = np.where(mask == 1, np.cumsum(mask, axis=1) - 1, 1)
    for step in range(5):
        np.testing.assert_allclose(bound.step(ids, mask, positions), generic.step(ids, mask, positions), atol=1e-5)
        ids = np.full((2, 1), 10 + step, np.int64)
        mask = np.concatenate([mask, np.ones((2, 1), np.int64)], axis=1)
        positions = positions[:, -1:] + 1
    ids, mask = _left_padded(PROMPTS)
    with torch.no_grad():
        expected = module.generate(input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask), max_new_tokens=12,
                                   do_sample=False, eos_token_id=None, pad_token_id=0).numpy()
    np.testing.assert_array_equal(compiled.generate(PROMPTS, 12, stop_tokens=()).sequences, expected)


def test_io_binding_refuses_to_outgrow_its_buffers() -> None:
    compiled = _compiled("llama")
    session = compiled.decode_session(1, 4)
    ids = np.array([[5, 6, 7, 8, 9]], np.int64)
    with pytest.raises(gc.UsageError, match="holds 4 tokens"):
        session.step(ids, np.ones_like(ids), np.arange(5)[None])


def test_generation_benchmark_reports_speed_and_memory() -> None:
    figures = _compiled("gpt2").benchmark_generation(batch=2, prompt_tokens=8, new_tokens=6, runs=2)
    assert figures.batch == 2 and figures.prompt_tokens == 8 and figures.runs == 2
    assert figures.prefill_ms > 0 and figures.decode_tokens_per_s > 0 and figures.peak_rss_mb > 10


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda c: c.generate([[1, 2]], 0), "max_new_tokens=0"),
        (lambda c: c.generate([[1, 2]], -3), "max_new_tokens=-3"),
        (lambda c: c.generate([[1, 2]], 2.5), "max_new_tokens=2.5"),
        (lambda c: c.generate([[1, 999]], 2), r"token ids must lie in \[0, 128\)"),
        (lambda c: c.generate([[]], 2), "at least one token"),
        (lambda c: c.generate([[1, 2], []], 2), "at least one token"),
        (lambda c: c.generate(np.array([[1, 2]]), 2, attention_mask=np.array([[1, 0]])), "left-padded"),
        (lambda c: c.generate([[1, 2]], 2, temperature=-1), "temperature=-1.0"),
        (lambda c: c.generate([[1, 2]], 2, temperature=1, top_p=1.5), "top_p=1.5"),
        (lambda c: c.generate([[1, 2]], 2, stop_tokens=[2], eos=[2]), "not both"),
    ],
)
def test_bad_generation_arguments_are_usage_errors(call, message) -> None:
    with pytest.raises(gc.UsageError, match=message):
        call(_compiled("llama"))


def test_a_model_that_is_not_a_decoder_cannot_generate() -> None:
    compiled = gc.compile(models.small_cnn_model(), target="ort-cpu", pipeline="-O0")
    with pytest.raises(gc.UsageError, match="not a decoder"):
        compiled.generate([[1, 2]], 4)
