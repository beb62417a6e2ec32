"""What the lowering tests share: ONNX Runtime as the reference (graph optimizations on, as
ort-cpu runs a model, so int8 chains run as ONNX Runtime's fused integer kernels) and the
tiny models with feeds."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import onnxruntime as ort

import greencc as gc
from tests import models

TOLERANCE = 1e-4


def ort_run(model: gc.Model, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """ONNX Runtime's outputs by name (CPU, all graph optimizations, one thread)."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.log_severity_level = 3
    proto = gc.ir.to_self_contained_proto(model.ir).SerializeToString()
    session = ort.InferenceSession(proto, options, providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    return dict(zip(names, session.run(None, feeds), strict=True))


def max_error(got: dict[str, np.ndarray], want: dict[str, np.ndarray]) -> float:
    """The largest absolute difference over every output."""
    assert set(got) == set(want)
    return max(float(np.abs(got[k].astype(np.float64) - want[k].astype(np.float64)).max()) for k in want)


def _text_feeds(batch: int, seq: int, vocab: tuple[int, int], seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    mask = np.ones((batch, seq), np.int64)
    mask[0, seq - seq // 4:] = 0
    return {"input_ids": rng.integers(*vocab, (batch, seq)).astype(np.int64), "attention_mask": mask}


def tiny_feeds(name: str, seed: int) -> dict[str, np.ndarray]:
    """Random feeds (``seed``) for one of the tiny models of :data:`TINY` (or the digits CNN)."""
    rng = np.random.default_rng(seed)
    if name == "bert":
        return _text_feeds(2, 16, (0, 100), seed)
    if name == "gpt2":
        return _text_feeds(2, 12, (0, 100), seed)
    if name == "vit":
        return {"pixel_values": rng.standard_normal((2, 3, 16, 16)).astype(np.float32)}
    if name == "cnn":
        return {"x": rng.random((4, 1, 8, 8)).astype(np.float32)}
    return {"image": rng.random((4, 1, 8, 8)).astype(np.float32)}


def minilm_feeds(seed: int) -> dict[str, np.ndarray]:
    """One MiniLM sentence of 128 tokens, the last quarter padding."""
    return _text_feeds(1, 128, (1000, 30000), seed)


TINY: dict[str, Callable[[], gc.Model]] = {
    "bert": models.tiny_bert_model,
    "gpt2": models.gpt2_model,
    "vit": models.vit_model,
    # The digits CNN's architecture with BatchNormalization kept, untrained: training the
    # digits CNN costs the suite more than the lowering tests themselves (scripts/check_lowering.py
    # runs the trained one, and MiniLM).
    "cnn": models.small_cnn_model,
}
# The presets and the two int8 forms forced everywhere (no sensitivity fallback): dynamic
# (DynamicQuantizeLinear, MatMulInteger, ConvInteger, QAttention) and static QDQ, which ONNX
# Runtime runs as its fused integer kernels.
LEVELS: dict[str, str] = {
    "-O0": "-O0", "-O2": "-O2", "-O3": "-O3",
    "int8-dynamic": "cleanup,fuse,dce,quantize-int8",
    "int8-static": "cleanup,fuse,dce,quantize-int8{mode=static}",
}
