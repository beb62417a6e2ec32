"""Random but valid inputs for a model: floats from a normal distribution, integer inputs
bounded by what they index (token ids stay below the embedding table's size), integer
inputs read as shapes, axes, splits or counts given neutral values that are valid for the
operator they reach, nonzero integer divisors, words for string inputs, and two-element
lists for sequence inputs; decoders get token ids, a left-padded attention mask, matching
position ids and a random KV past.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
import onnx_ir as ir

from greencc.errors import UsageError
from greencc.ir.shapes import infer_shapes
from greencc.model import DecoderSpec, Model, TensorSpec

# Words a string input draws from.
_WORDS = np.array(["alpha", "beta", "gamma", "delta", "epsilon", "zeta"], dtype=object)
# Elements of a generated sequence input.
_SEQUENCE_LENGTH = 2
# The most bytes of random data made for one input; a larger declared shape is refused
# before anything is allocated (a model may declare any dim up to 2**63).
MAX_FEED_BYTES = 4 << 30
# Ops that pass an integer value through unchanged in meaning (input 0 only), followed to
# find where an input's values are read as a shape, an axis or a divisor.
_PASS_THROUGH = frozenset({"Identity", "Cast", "Squeeze", "Unsqueeze", "Reshape", "Flatten", "Abs"})
# A value for an integer input of ``shape`` that one operator input reads: an array, or
# None when no value is known to be valid.
ValueRule = Callable[["_Use", tuple[int, ...], np.dtype], "np.ndarray | None"]
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
    feeds: dict[str, Any] = {}
    bounds = _index_bounds(model.graph)
    values = _input_values(model, bounds)
    for spec in model.inputs:
        value = values[spec.name]
        shape_spec = spec.shape
        if spec.container != "tensor" and value.shape is not None:
            shape_spec = tuple(d if isinstance(d, int) else d.value for d in value.shape)
        if shape_spec is None:
            raise UsageError(f"input '{spec.name}' has no known shape", hint="give feeds explicitly")
        shape = []
        for axis, dim in enumerate(shape_spec):
            if isinstance(dim, int):
                shape.append(dim)
            elif axis == 0 and batch is not None:
                shape.append(batch)
            else:
                shape.append(int(dims.get(dim, 1)) if dim else 1)
        itemsize = np.dtype(spec.dtype).itemsize if spec.dtype not in ("unknown", "object") else 8
        if math.prod(shape) * itemsize > MAX_FEED_BYTES:
            raise UsageError(f"input '{spec.name}' of shape {shape} would need {math.prod(shape) * itemsize >> 20} MiB "
                             f"of random data, over the {MAX_FEED_BYTES >> 30} GiB limit",
                             hint="bind its symbolic dims to smaller sizes (--dim NAME=SIZE) or give calibration data")
        if spec.container in ("sequence", "optional-sequence"):
            feeds[spec.name] = [_tensor(spec, value, tuple(shape), rng, bounds) for _ in range(_SEQUENCE_LENGTH)]
        else:
            feeds[spec.name] = _tensor(spec, value, tuple(shape), rng, bounds)
    return feeds


def _input_values(model: Model, bounds: Mapping[str, int]) -> dict[str, ir.Value]:
    """The graph inputs by name; when an integer input is read as a shape, axes or sizes,
    those of a shape-inferred copy, so that the rules can size their values."""
    values = {value.name: value for value in model.graph.inputs}
    for spec in model.inputs:
        if spec.dtype in ("unknown", "object", "bool") or np.dtype(spec.dtype).kind not in "iu" \
                or spec.name in bounds:
            continue
        if any((use.node.op_type, use.index) in _VALUE_RULES for use in _uses(values[spec.name])):
            inferred = infer_shapes(model.ir.clone())
            return {value.name: value for value in inferred.graph.inputs}
    return values


def _tensor(spec: TensorSpec, value: ir.Value, shape: tuple[int, ...], rng: np.random.Generator,
            bounds: Mapping[str, int]) -> np.ndarray:
    """One random tensor of ``shape`` for the input ``spec`` (graph input ``value``)."""
    dtype = np.dtype(spec.dtype) if spec.dtype != "unknown" else np.dtype("float32")
    if dtype.kind == "f":
        return rng.standard_normal(shape).astype(dtype)
    if dtype.kind == "b":
        return rng.random(shape) < 0.5
    if dtype.kind == "O":
        return rng.choice(_WORDS, shape)
    if dtype.kind not in "iu":
        raise UsageError(
            f"cannot make random data for input '{spec.name}' of dtype {spec.dtype}",
            hint="pass feeds or calibration data explicitly",
        )
    high = bounds.get(spec.name)
    if high is not None:
        return rng.integers(0, max(1, high), shape).astype(dtype)
    for use in _uses(value):
        rule = _VALUE_RULES.get((use.node.op_type, use.index))
        chosen = rule(use, shape, dtype) if rule is not None else None
        if chosen is not None and chosen.size == int(np.prod(shape)):
            return chosen.reshape(shape).astype(dtype)
    array = np.ones(shape, dtype=dtype)
    if array.ndim >= 1 and array.shape[-1] > 2:
        array[..., -max(1, array.shape[-1] // 8) :] = 0  # a padded tail, as masks have
    return array


class _Use:
    """Where an input's values are read: ``node``'s input ``index``."""

    def __init__(self, node: ir.Node, index: int) -> None:
        self.node = node
        self.index = index

    def static_shape(self, index: int) -> tuple[int, ...] | None:
        """The static shape of the node's input ``index`` (None when not static)."""
        if index >= len(self.node.inputs) or self.node.inputs[index] is None:
            return None
        shape = self.node.inputs[index].shape
        if shape is None or not all(isinstance(d, int) for d in shape):
            return None
        return tuple(int(d) for d in shape)

    def static_output_shape(self) -> tuple[int, ...] | None:
        """The static shape of the node's first output (None when not static)."""
        shape = self.node.outputs[0].shape
        if shape is None or not all(isinstance(d, int) for d in shape):
            return None
        return tuple(int(d) for d in shape)

    def int_attribute(self, name: str, default: int) -> int:
        """An integer attribute of the node, or ``default``."""
        attr = self.node.attributes.get(name)
        return attr.as_int() if attr is not None else default


def _uses(value: ir.Value) -> list[_Use]:
    """Where the values of ``value`` are read, following ops that pass them through."""
    uses, stack, seen = [], [value], {value}
    while stack:
        current = stack.pop()
        for node, index in current.uses():
            if node.op_type in _PASS_THROUGH and index == 0 and node.domain in ("", "ai.onnx"):
                for output in node.outputs[:1]:
                    if output not in seen:
                        seen.add(output)
                        stack.append(output)
            else:
                uses.append(_Use(node, index))
    return uses


def _count(shape: tuple[int, ...]) -> int:
    return int(np.prod(shape))


def _ones(use: _Use, shape: tuple[int, ...], dtype: np.dtype) -> np.ndarray:
    return np.ones(_count(shape), dtype=np.int64)


def _zeros(use: _Use, shape: tuple[int, ...], dtype: np.dtype) -> np.ndarray:
    return np.zeros(_count(shape), dtype=np.int64)


def _leading_axes(use: _Use, shape: tuple[int, ...], dtype: np.dtype) -> np.ndarray:
    """Distinct axes 0, 1, ... (valid wherever the data has that many axes)."""
    return np.arange(_count(shape), dtype=np.int64)


def _slice_ends(use: _Use, shape: tuple[int, ...], dtype: np.dtype) -> np.ndarray:
    return np.full(_count(shape), np.iinfo(dtype).max, dtype=np.int64)


def _divisor(use: _Use, shape: tuple[int, ...], dtype: np.dtype) -> np.ndarray:
    """Nonzero divisors 1..5, so integer division and Mod are defined."""
    return np.arange(_count(shape), dtype=np.int64) % 5 + 1


def _reshape_target(use: _Use, shape: tuple[int, ...], dtype: np.dtype) -> np.ndarray | None:
    """The reshape's output shape where shape inference knows it, else the data's own."""
    target = use.static_output_shape() or use.static_shape(0)
    return None if target is None else np.array(target, dtype=np.int64)


def _squeeze_axes(use: _Use, shape: tuple[int, ...], dtype: np.dtype) -> np.ndarray | None:
    """The data's axes of size one."""
    data = use.static_shape(0)
    if data is None:
        return None
    return np.array([axis for axis, size in enumerate(data) if size == 1], dtype=np.int64)


def _split_sizes(use: _Use, shape: tuple[int, ...], dtype: np.dtype) -> np.ndarray | None:
    """Sizes that add up to the split axis' length, as even as possible."""
    data, parts = use.static_shape(0), _count(shape)
    if data is None or not parts:
        return None
    length = data[use.int_attribute("axis", 0) % len(data)] if data else 0
    sizes = np.full(parts, length // parts, dtype=np.int64)
    sizes[: length % parts] += 1
    return sizes


def _range_operand(use: _Use, shape: tuple[int, ...], dtype: np.dtype) -> np.ndarray:
    """Range(0, 4, 1): start, limit, delta."""
    return np.array([(0, 4, 1)[use.index]], dtype=np.int64)


def _resize_sizes(use: _Use, shape: tuple[int, ...], dtype: np.dtype) -> np.ndarray | None:
    data = use.static_shape(0)
    return None if data is None else np.array(data, dtype=np.int64)


def _depth(use: _Use, shape: tuple[int, ...], dtype: np.dtype) -> np.ndarray:
    return np.full(_count(shape), 4, dtype=np.int64)


_REDUCTIONS = ("ReduceSum", "ReduceMean", "ReduceMax", "ReduceMin", "ReduceProd", "ReduceL1", "ReduceL2",
               "ReduceLogSum", "ReduceLogSumExp", "ReduceSumSquare")
# Which value an integer input gets, by the (op, input index) that reads it.
_VALUE_RULES: dict[tuple[str, int], ValueRule] = {
    ("Reshape", 1): _reshape_target,
    ("Expand", 1): _ones,
    ("Tile", 1): _ones,
    ("ConstantOfShape", 0): _ones,
    ("Slice", 1): _zeros,
    ("Slice", 2): _slice_ends,
    ("Slice", 3): _leading_axes,
    ("Slice", 4): _ones,
    ("Unsqueeze", 1): _leading_axes,
    ("Squeeze", 1): _squeeze_axes,
    ("Split", 1): _split_sizes,
    ("Pad", 1): _zeros,
    ("Pad", 3): _leading_axes,
    ("TopK", 1): _ones,
    ("CumSum", 1): _zeros,
    ("Trilu", 1): _zeros,
    ("Range", 0): _range_operand,
    ("Range", 1): _range_operand,
    ("Range", 2): _range_operand,
    ("Resize", 3): _resize_sizes,
    ("OneHot", 1): _depth,
    ("Div", 1): _divisor,
    ("Mod", 1): _divisor,
    **{(op, 1): _leading_axes for op in _REDUCTIONS},
}


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
