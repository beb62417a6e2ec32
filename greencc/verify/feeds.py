"""Random but valid inputs for a model: floats from a normal distribution, integer inputs
bounded by what they index (token ids stay below the embedding table's size); decoders get
token ids, a left-padded attention mask, matching position ids and a random KV past.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import onnx_ir as ir

from greencc.errors import UsageError
from greencc.model import DecoderSpec, Model

# Integer inputs that feed nothing we can bound (masks, flags) draw from {0, 1}.
_DEFAULT_INT_HIGH = 2
# A decoder's seq and past_seq when dims leave them out: attention then spans both new
# tokens and a past, so a pass that breaks either shows.
DECODER_DEFAULT_DIMS = {"batch": 1, "seq": 4, "past_seq": 4}


def decoder_feeds(
    model: Model | DecoderSpec, batch: int = 1, seq: int = 4, past_seq: int = 4, *, seed: int = 0
) -> dict[str, np.ndarray]:
    """Valid random feeds for a decoder graph: ``batch`` rows of ``seq`` new tokens after a
    past of ``past_seq`` positions.

    Token ids are below the vocabulary size; rows after the first are left-padded by up to
    half the past (padding stays in the past, so every new token attends to something);
    ``position_ids`` count the attended positions, as generation numbers them; the past
    tensors are standard normal. Raises :class:`UsageError` for a model that is not a decoder.
    """
    spec = model if isinstance(model, DecoderSpec) else DecoderSpec.of(model)
    if spec is None:
        raise UsageError("decoder_feeds needs a decoder", hint="export it with gc.from_pretrained or gc.from_torch")
    if batch < 1 or seq < 1 or past_seq < 0:
        raise UsageError(f"bad decoder dims batch={batch}, seq={seq}, past_seq={past_seq}",
                         hint="batch and seq are at least 1, past_seq at least 0")
    rng = np.random.default_rng(seed)
    total = past_seq + seq
    attention_mask = np.ones((batch, total), dtype=np.int64)
    for row in range(1, batch):
        attention_mask[row, : int(rng.integers(0, past_seq // 2 + 1))] = 0
    positions = np.maximum(np.cumsum(attention_mask, axis=1) - 1, 0)
    feeds = {
        "input_ids": rng.integers(0, spec.vocab_size, (batch, seq)).astype(np.int64),
        "attention_mask": attention_mask,
        "position_ids": positions[:, past_seq:].astype(np.int64),
    }
    kv_shape = (batch, spec.num_kv_heads, past_seq, spec.head_dim)
    for name in spec.past_names():
        feeds[name] = rng.standard_normal(kv_shape).astype(np.float32)
    return feeds


def random_feeds(
    model: Model, *, seed: int = 0, dims: Mapping[str, int] | None = None, batch: int | None = None
) -> dict[str, np.ndarray]:
    """One random feed dict for ``model``; symbolic dims come from ``dims`` (default 1).

    ``batch`` overrides the first axis when it is symbolic. Integer inputs used as
    Gather indices are drawn below the gathered axis' size, so embeddings stay in range;
    mask-like integer inputs get ones (attend everywhere) with a few zeros. A decoder gets
    :func:`decoder_feeds` at ``dims`` ``batch``, ``seq`` and ``past_seq`` (defaults in
    ``DECODER_DEFAULT_DIMS``).
    """
    dims = dict(dims or {})
    spec = DecoderSpec.of(model)
    if spec is not None:
        sizes = {**DECODER_DEFAULT_DIMS, **{k: int(v) for k, v in dims.items()}}
        return decoder_feeds(
            spec, batch if batch is not None else sizes["batch"], sizes["seq"], sizes["past_seq"], seed=seed
        )
    rng = np.random.default_rng(seed)
    feeds: dict[str, np.ndarray] = {}
    bounds = _index_bounds(model.graph)
    for spec in model.inputs:
        if spec.shape is None:
            raise UsageError(f"input '{spec.name}' has no known shape", hint="give feeds explicitly")
        shape = []
        for axis, dim in enumerate(spec.shape):
            if isinstance(dim, int):
                shape.append(dim)
            elif axis == 0 and batch is not None:
                shape.append(batch)
            else:
                shape.append(int(dims.get(dim, 1)) if dim else 1)
        dtype = np.dtype(spec.dtype) if spec.dtype != "unknown" else np.dtype("float32")
        if dtype.kind == "f":
            feeds[spec.name] = rng.standard_normal(shape).astype(dtype)
        elif dtype.kind == "b":
            feeds[spec.name] = rng.random(shape) < 0.5
        elif dtype.kind in "iu":
            high = bounds.get(spec.name)
            if high is None:
                array = np.ones(shape, dtype=dtype)
                if array.ndim >= 1 and array.shape[-1] > 2:
                    array[..., -max(1, array.shape[-1] // 8) :] = 0  # a padded tail, as masks have
                feeds[spec.name] = array
            else:
                feeds[spec.name] = rng.integers(0, max(1, high), shape).astype(dtype)
        else:
            raise UsageError(
                f"cannot make random data for input '{spec.name}' of dtype {spec.dtype}",
                hint="pass feeds or calibration data explicitly",
            )
    return feeds


def _index_bounds(graph: ir.Graph) -> dict[str, int]:
    """For graph inputs used as Gather indices into a constant table: the table's axis size."""
    bounds: dict[str, int] = {}
    for value in graph.inputs:
        for user, index in value.uses():
            if user.op_type != "Gather" or index != 1:
                continue
            table = user.inputs[0]
            if table is None or table.shape is None:
                continue
            axis_attr = user.attributes.get("axis")
            axis = axis_attr.as_int() if axis_attr is not None else 0
            size = table.shape[axis]
            if isinstance(size, int):
                bounds[value.name] = min(bounds.get(value.name, size), size)
    return bounds
