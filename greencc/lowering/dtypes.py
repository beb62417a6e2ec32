"""ONNX element types as torch dtypes, and int arguments read from tensors or Python values."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

# ONNX TensorProto element type -> torch dtype (the types greencc's graphs carry).
ONNX_TO_TORCH: dict[int, torch.dtype] = {
    1: torch.float32, 2: torch.uint8, 3: torch.int8, 4: torch.uint16, 5: torch.int16,
    6: torch.int32, 7: torch.int64, 9: torch.bool, 10: torch.float16, 11: torch.float64,
    12: torch.uint32, 13: torch.uint64, 16: torch.bfloat16,
}

INTEGER_DTYPES = frozenset({torch.uint8, torch.int8, torch.int16, torch.int32, torch.int64,
                            torch.uint16, torch.uint32, torch.uint64})


def torch_dtype(onnx_type: int) -> torch.dtype:
    """The torch dtype of an ONNX element type (``TensorProto.FLOAT`` -> ``torch.float32``)."""
    try:
        return ONNX_TO_TORCH[int(onnx_type)]
    except KeyError:
        raise NotImplementedError(f"ONNX element type {onnx_type} has no torch dtype here") from None


def numpy_to_torch(array: np.ndarray) -> torch.Tensor:
    """A torch tensor holding a copy of ``array`` (any dtype torch has)."""
    return torch.from_numpy(np.ascontiguousarray(array).copy())


def ints(value: Any) -> Any:
    """An int argument (an index, a shape, axes) as a Python int or list of ints.

    ``value`` is already one (a constant or shape arithmetic), or a tensor read at run time.
    """
    if isinstance(value, torch.Tensor):
        return value.tolist()
    if isinstance(value, tuple):
        return list(value)
    return value


def as_list(value: Any) -> list[Any]:
    """``value`` (an int or a list of ints) as a list."""
    value = ints(value)
    return list(value) if isinstance(value, (list, tuple)) else [value]
