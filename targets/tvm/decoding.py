"""Generation on a TVM-compiled decoder: the KV cache stays in TVM tensors between steps.

The decoder is built once with symbolic ``batch``, ``seq`` and ``past_seq`` (see
``targets/tvm/symbolic.py``), so prefill and every decode step call the same Relax
function; each step's ``present.*`` tensors are passed back as the next ``past_key_values.*``
without a copy into NumPy, and only the last position's logits leave TVM.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from greencc.errors import GreenccError
from greencc.model import DecoderSpec
from greencc.targets.tvm import env as tvm_env


class TvmDecodeSession:
    """Runs the Relax ``main`` of a decoder step by step for ``batch`` rows (see
    :class:`greencc.target.generation.DecodeSession`).

    ``main`` is the VM function, ``input_names`` / ``output_names`` its parameter and
    result order (the graph's), ``spec`` the decoder's KV layout.
    """

    def __init__(
        self,
        main: Callable[..., Any],
        input_names: Sequence[str],
        output_names: Sequence[str],
        spec: DecoderSpec,
        batch: int,
    ) -> None:
        import tvm

        self._main = main
        self._input_names = list(input_names)
        self._logits_index = list(output_names).index("logits")
        presents = {name: index for index, name in enumerate(output_names)}
        self._present_index = {past: presents[present] for past, present in
                               zip(spec.past_names(), spec.present_names(), strict=True)}
        empty = np.zeros((batch, spec.num_kv_heads, 0, spec.head_dim), dtype=np.float32)
        self._past = {name: tvm.runtime.tensor(empty) for name in spec.past_names()}

    def step(self, input_ids: np.ndarray, attention_mask: np.ndarray, position_ids: np.ndarray) -> np.ndarray:
        """Run ``seq`` new tokens after the cached past; returns the last position's logits
        [batch, vocab] (float32)."""
        import tvm

        fed = {"input_ids": input_ids, "attention_mask": attention_mask, "position_ids": position_ids}
        args = [
            self._past[name] if name in self._past
            else tvm.runtime.tensor(np.ascontiguousarray(fed[name], dtype=np.int64))
            for name in self._input_names
        ]
        try:
            outputs = list(self._main(*args))
        except Exception as exc:
            raise GreenccError(
                f"the TVM-compiled decoder failed during generation: {tvm_env.last_line(exc)}",
                hint="please report it with the model; compile for ort-cpu meanwhile",
            ) from None
        self._past = {past: outputs[index] for past, index in self._present_index.items()}
        logits = outputs[self._logits_index].numpy()
        return np.ascontiguousarray(logits[:, -1, :], dtype=np.float32)


__all__ = ["TvmDecodeSession"]
