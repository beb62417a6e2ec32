"""Random but valid inputs for a model: floats from a normal distribution, integer inputs
bounded by what they index (token ids stay below the embedding table's size).
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import onnx_ir as ir

from greencc.errors import UsageError
from greencc.model import Model

# Integer inputs that feed nothing we can bound (masks, flags) draw from {0, 1}.
_DEFAULT_INT_HIGH = 2


def random_feeds(
    model: Model, *, seed: int = 0, dims: Mapping[str, int] | None = None, batch: int | None = None
) -> dict[str, np.ndarray]:
    """One random feed dict for ``model``; symbolic dims come from ``dims`` (default 1).

    ``batch`` overrides the first axis when it is symbolic. Integer inputs used as
    Gather indices are drawn below the gathered axis' size, so embeddings stay in range;
    mask-like integer inputs get ones (attend everywhere) with a few zeros.
    """
    rng = np.random.default_rng(seed)
    dims = dict(dims or {})
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
