"""Autoregressive generation on any compiled decoder graph: prefill, then one token per
step with the KV cache carried between steps; greedy or seeded sampling (temperature,
top-k, top-p), stop tokens, batches of left-padded prompts.

A target runs the steps through a :class:`DecodeSession`; the generic one here feeds
each step's ``present.*`` back as the next ``past_key_values.*``; ort-cpu supplies one
with IO binding and preallocated KV buffers.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from greencc.errors import UsageError
from greencc.measure.memory import peak_rss_mb
from greencc.model import DecoderSpec

if TYPE_CHECKING:
    from greencc.target.artifact import CompiledModel


class DecodeSession(Protocol):
    """Runs a decoder graph step after step, keeping the KV cache between steps."""

    def step(self, input_ids: np.ndarray, attention_mask: np.ndarray, position_ids: np.ndarray) -> np.ndarray:
        """Run ``seq`` new tokens after the cached past; returns the last position's logits
        [batch, vocab] (float32). ``attention_mask`` covers past and new tokens."""
        ...


class FeedDecodeSession:
    """The generic session: each step's ``present.*`` outputs become the next ``past_key_values.*``."""

    def __init__(self, compiled: CompiledModel, spec: DecoderSpec, batch: int) -> None:
        self._compiled = compiled
        self._spec = spec
        empty = np.zeros((batch, spec.num_kv_heads, 0, spec.head_dim), dtype=np.float32)
        self._past = dict.fromkeys(spec.past_names(), empty)

    def step(self, input_ids: np.ndarray, attention_mask: np.ndarray, position_ids: np.ndarray) -> np.ndarray:
        """See :meth:`DecodeSession.step`."""
        feeds = {"input_ids": input_ids, "attention_mask": attention_mask, "position_ids": position_ids, **self._past}
        outputs = self._compiled._run(feeds)
        self._past = {
            past: outputs[present]
            for past, present in zip(self._spec.past_names(), self._spec.present_names(), strict=True)
        }
        return np.ascontiguousarray(outputs["logits"][:, -1, :])


@dataclass
class GenerationResult:
    """What :func:`generate` produced.

    ``sequences``: int64 [batch, prompt + new], the prompts (left padding kept) followed by
    the generated tokens, rows that stopped early filled with the pad token (as transformers'
    ``generate`` returns them); ``new_tokens``: the generated part alone; ``prefill_ms``: the
    prompt's forward (ms); ``decode_ms``: the steps after it (ms); ``decode_steps``: how
    many steps ran after the prefill.
    """

    sequences: np.ndarray
    new_tokens: np.ndarray
    prefill_ms: float
    decode_ms: float
    decode_steps: int
    stopped: np.ndarray = field(repr=False)

    @property
    def decode_tokens_per_s(self) -> float:
        """Tokens generated per second after the prefill, over the whole batch."""
        if self.decode_steps == 0 or self.decode_ms <= 0:
            return 0.0
        return self.decode_steps * self.sequences.shape[0] / (self.decode_ms / 1000.0)


@dataclass(frozen=True)
class Sampling:
    """How the next token is chosen: ``temperature`` 0 is greedy (argmax); otherwise
    softmax(logits / temperature) restricted to the ``top_k`` most likely tokens and to the
    smallest set whose probability reaches ``top_p``, drawn with a generator seeded by ``seed``."""

    temperature: float = 0.0
    top_k: int | None = None
    top_p: float | None = None
    seed: int | None = None

    def check(self) -> None:
        """Raise :class:`UsageError` for values outside their ranges."""
        if not np.isfinite(self.temperature) or self.temperature < 0:
            raise UsageError(f"temperature={self.temperature} must be >= 0", hint="0 is greedy decoding")
        if self.top_k is not None and self.top_k < 1:
            raise UsageError(f"top_k={self.top_k} must be at least 1", hint="leave it out to keep every token")
        if self.top_p is not None and not 0 < self.top_p <= 1:
            raise UsageError(f"top_p={self.top_p} must be in (0, 1]", hint="e.g. top_p=0.9")

    def choose(self, logits: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """The next token id of each row of ``logits`` [batch, vocab]."""
        if self.temperature == 0:
            return logits.argmax(axis=-1).astype(np.int64)
        scores = logits.astype(np.float64) / self.temperature
        if self.top_k is not None and self.top_k < scores.shape[-1]:
            kth = np.partition(scores, -self.top_k, axis=-1)[:, -self.top_k][:, None]
            scores = np.where(scores < kth, -np.inf, scores)
        probs = np.exp(scores - scores.max(axis=-1, keepdims=True))
        probs /= probs.sum(axis=-1, keepdims=True)
        if self.top_p is not None and self.top_p < 1:
            order = np.argsort(-probs, axis=-1, kind="stable")
            sorted_probs = np.take_along_axis(probs, order, axis=-1)
            # Keep a token while the mass before it is below top_p: the first always stays.
            drop_sorted = np.cumsum(sorted_probs, axis=-1) - sorted_probs >= self.top_p
            drop = np.zeros_like(drop_sorted)
            np.put_along_axis(drop, order, drop_sorted, axis=-1)
            probs = np.where(drop, 0.0, probs)
            probs /= probs.sum(axis=-1, keepdims=True)
        draws = rng.random((probs.shape[0], 1))
        chosen = (np.cumsum(probs, axis=-1) < draws).sum(axis=-1)
        return np.minimum(chosen, probs.shape[-1] - 1).astype(np.int64)


def decoder_spec_or_raise(compiled: CompiledModel) -> DecoderSpec:
    """The compiled model's decoder spec; :class:`UsageError` when it is not a decoder."""
    spec = DecoderSpec.of(compiled.model)
    if spec is None:
        raise UsageError(
            "this model is not a decoder: it has no KV-cache signature to generate with",
            hint="export a causal LM with gc.from_pretrained(dir) or gc.from_torch(causal_lm)",
        )
    return spec


def prompt_arrays(
    input_ids: Any, attention_mask: Any | None, pad_token_id: int
) -> tuple[np.ndarray, np.ndarray]:
    """``input_ids`` (a list of ids, a list of lists of any lengths, or an array [batch, seq])
    as int64 ids [batch, seq] and their attention mask; lists of lists are left-padded
    here. Raises :class:`UsageError` for empty prompts, a mask of another shape or a right pad."""
    rows = input_ids if isinstance(input_ids, Sequence) else None
    if rows and all(isinstance(row, (Sequence, np.ndarray)) for row in rows):
        rows = [np.asarray(row, dtype=np.int64).reshape(-1) for row in rows]
        if any(len(row) == 0 for row in rows):
            raise UsageError("every prompt needs at least one token", hint="drop the empty prompt")
        width = max(len(row) for row in rows)
        ids = np.full((len(rows), width), pad_token_id, dtype=np.int64)
        padded_mask = np.zeros((len(rows), width), dtype=np.int64)
        for index, row in enumerate(rows):
            ids[index, width - len(row):] = row
            padded_mask[index, width - len(row):] = 1
        if attention_mask is None:
            attention_mask = padded_mask
    else:
        ids = np.asarray(input_ids)
        ids = ids[None, :] if ids.ndim == 1 else ids
    if ids.ndim != 2 or 0 in ids.shape or ids.dtype.kind not in "iu":
        raise UsageError(
            f"input_ids must be integer token ids [batch, seq] with at least one token, got shape "
            f"{list(ids.shape)} of {ids.dtype}",
            hint="pass a list of ids, a list of such lists, or an int64 array",
        )
    mask = np.ones_like(ids, dtype=np.int64) if attention_mask is None else np.asarray(attention_mask)
    if mask.shape != ids.shape:
        raise UsageError(
            f"attention_mask has shape {list(mask.shape)}, input_ids {list(ids.shape)}",
            hint="give one mask entry (1 attend, 0 padding) per token",
        )
    if not mask[:, -1].all():
        raise UsageError(
            "the prompts must be left-padded: each row's last token must be attended (mask 1)",
            hint="put the padding at the start of each row",
        )
    return ids.astype(np.int64), mask.astype(np.int64)


def generate(
    compiled: CompiledModel,
    input_ids: Any,
    max_new_tokens: int,
    *,
    attention_mask: Any | None = None,
    sampling: Sampling = Sampling(),
    stop_tokens: Sequence[int] | None = None,
    pad_token_id: int | None = None,
) -> GenerationResult:
    """Generate up to ``max_new_tokens`` tokens after each prompt; see
    :meth:`CompiledModel.generate` for the arguments."""
    spec = decoder_spec_or_raise(compiled)
    if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, (int, np.integer)) or max_new_tokens < 1:
        raise UsageError(f"max_new_tokens={max_new_tokens!r} must be a positive integer", hint="e.g. 32")
    sampling.check()
    stops = np.asarray(list(spec.eos_token_ids) if stop_tokens is None else list(stop_tokens), dtype=np.int64)
    if pad_token_id is None:
        pad_token_id = next((t for t in (spec.pad_token_id, *spec.eos_token_ids) if t is not None), 0)
    ids, mask = prompt_arrays(input_ids, attention_mask, pad_token_id)
    if int(ids.max()) >= spec.vocab_size or int(ids.min()) < 0:
        raise UsageError(
            f"token ids must lie in [0, {spec.vocab_size}), got {int(ids.min())}..{int(ids.max())}",
            hint="encode the prompt with the model's own tokenizer",
        )
    batch, prompt_len = ids.shape
    rng = np.random.default_rng(sampling.seed)
    session = compiled.decode_session(batch, prompt_len + int(max_new_tokens))
    # Padded prompt positions get position 1, as transformers numbers them.
    positions = np.where(mask == 1, np.cumsum(mask, axis=1) - 1, 1).astype(np.int64)

    start = time.perf_counter()
    logits = session.step(ids, mask, positions)
    prefill_ms = (time.perf_counter() - start) * 1000.0
    stopped = np.zeros(batch, dtype=bool)
    generated: list[np.ndarray] = []
    next_position = positions[:, -1:] + 1
    start = time.perf_counter()
    steps = 0
    while True:
        token = np.where(stopped, pad_token_id, sampling.choose(logits, rng))
        generated.append(token)
        stopped |= np.isin(token, stops)
        if len(generated) == max_new_tokens or stopped.all():
            break
        mask = np.concatenate([mask, np.ones((batch, 1), dtype=np.int64)], axis=1)
        logits = session.step(token[:, None], mask, next_position)
        next_position = next_position + 1
        steps += 1
    decode_ms = (time.perf_counter() - start) * 1000.0
    new_tokens = np.stack(generated, axis=1)
    return GenerationResult(
        sequences=np.concatenate([ids, new_tokens], axis=1),
        new_tokens=new_tokens,
        prefill_ms=prefill_ms,
        decode_ms=decode_ms,
        decode_steps=steps,
        stopped=stopped,
    )


@dataclass(frozen=True)
class GenerationBenchmark:
    """Generation speed: prefill latency (ms, median over runs) at ``prompt_tokens``, decode
    throughput (tokens/s over the batch, median) at ``batch``, and peak resident memory of
    this process (MB) after the runs (``None`` where the platform does not report it)."""

    batch: int
    prompt_tokens: int
    new_tokens: int
    prefill_ms: float
    prefill_ms_spread: float
    decode_tokens_per_s: float
    decode_tokens_per_s_spread: float
    peak_rss_mb: float | None
    runs: int

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict of the figures."""
        return dict(vars(self))


def benchmark_generation(
    compiled: CompiledModel,
    *,
    batch: int = 1,
    prompt_tokens: int = 32,
    new_tokens: int = 32,
    runs: int = 5,
    warmup: int = 1,
    seed: int = 0,
) -> GenerationBenchmark:
    """Time greedy generation on random prompts: ``runs`` timed runs after ``warmup``.

    Stop tokens are off so every run decodes ``new_tokens`` tokens; spreads are the
    interquartile ranges.
    """
    spec = decoder_spec_or_raise(compiled)
    if min(batch, prompt_tokens, new_tokens, runs) < 1:
        raise UsageError("batch, prompt tokens, new tokens and runs must each be at least 1")
    prompt = np.random.default_rng(seed).integers(0, spec.vocab_size, (batch, prompt_tokens)).astype(np.int64)
    prefill, decode = [], []
    for index in range(warmup + runs):
        result = generate(compiled, prompt, new_tokens, stop_tokens=())
        if index >= warmup:
            prefill.append(result.prefill_ms)
            decode.append(result.decode_tokens_per_s)
    return GenerationBenchmark(
        batch=batch,
        prompt_tokens=prompt_tokens,
        new_tokens=new_tokens,
        prefill_ms=float(np.median(prefill)),
        prefill_ms_spread=_iqr(prefill),
        decode_tokens_per_s=float(np.median(decode)),
        decode_tokens_per_s_spread=_iqr(decode),
        peak_rss_mb=peak_rss_mb(),
        runs=runs,
    )


def _iqr(values: list[float]) -> float:
    low, high = np.percentile(values, [25, 75])
    return float(high - low)
