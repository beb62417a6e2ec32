"""Generation requests for decoder variants, streamed token by token: the same prompt
handling, KV-cache session and sampling as :meth:`CompiledModel.generate`, yielding each
token as soon as it is chosen.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from greencc.errors import UsageError
from greencc.serve.payload import Limits, PayloadError
from greencc.target.artifact import CompiledModel
from greencc.target.generation import Sampling, decoder_spec_or_raise, prompt_arrays

# The most new tokens one request may ask for.
MAX_NEW_TOKENS = 4096


@dataclass(frozen=True)
class GenerationRequest:
    """One prompt (token ids), how many tokens at most, the sampling and whether to stream."""

    input_ids: list[int]
    max_new_tokens: int
    sampling: Sampling
    stream: bool = False

    @classmethod
    def from_payload(cls, data: Mapping[str, Any], limits: Limits) -> GenerationRequest:
        """``{"input_ids": [..], "max_new_tokens": N, "temperature"?, "top_k"?, "top_p"?,
        "seed"?, "stream"?}``; 422/413 :class:`PayloadError` naming the bad field."""
        ids = data.get("input_ids")
        if not isinstance(ids, list) or not ids or not all(isinstance(t, int) and not isinstance(t, bool)
                                                           for t in ids):
            raise PayloadError(422, "'input_ids' must be a non-empty list of integer token ids",
                               hint='send {"input_ids": [1, 15, 27], "max_new_tokens": 16}')
        if len(ids) > limits.max_elements:
            raise PayloadError(413, f"the prompt has {len(ids)} tokens, more than {limits.max_elements}")
        new = data.get("max_new_tokens", 16)
        if isinstance(new, bool) or not isinstance(new, int) or not 1 <= new <= MAX_NEW_TOKENS:
            raise PayloadError(422, f"'max_new_tokens' must be an integer in [1, {MAX_NEW_TOKENS}], got {new!r}")
        sampling = Sampling(temperature=float(data.get("temperature", 0.0)), top_k=data.get("top_k"),
                            top_p=data.get("top_p"), seed=data.get("seed"))
        try:
            sampling.check()
        except UsageError as exc:
            raise PayloadError(422, exc.message, hint=exc.hint) from None
        return cls(list(ids), new, sampling, bool(data.get("stream", False)))


def stream_tokens(compiled: CompiledModel, request: GenerationRequest) -> Iterator[int]:
    """Yield the new tokens of one prompt, stopping after an EOS token or ``max_new_tokens``."""
    spec = decoder_spec_or_raise(compiled)
    ids, mask = prompt_arrays([request.input_ids], None, 0)
    if int(ids.max()) >= spec.vocab_size or int(ids.min()) < 0:
        raise PayloadError(422, f"token ids must lie in [0, {spec.vocab_size})")
    stops = set(spec.eos_token_ids)
    rng = np.random.default_rng(request.sampling.seed)
    session = compiled.decode_session(1, ids.shape[1] + request.max_new_tokens)
    positions = np.arange(ids.shape[1], dtype=np.int64)[None, :]
    logits = session.step(ids, mask, positions)
    for step in range(request.max_new_tokens):
        token = int(request.sampling.choose(logits, rng)[0])
        yield token
        if token in stops or step + 1 == request.max_new_tokens:
            return
        mask = np.concatenate([mask, np.ones((1, 1), dtype=np.int64)], axis=1)
        logits = session.step(np.array([[token]], dtype=np.int64), mask, positions[:, -1:] + step + 1)


__all__ = ["GenerationRequest", "MAX_NEW_TOKENS", "stream_tokens"]
