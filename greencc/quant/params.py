"""Quantization parameters (scale, zero point) from an observed range, and numpy versions of
ONNX ``QuantizeLinear`` / ``DequantizeLinear`` for tests and sensitivity analysis.

Semantics follow the ONNX operators: ``q = saturate(round_half_even(x / scale) + zero_point)``
and ``x' = (q - zero_point) * scale``, computed in float32 as ONNX Runtime does.
"""

from __future__ import annotations

from typing import Literal

import numpy as np

from greencc.errors import UsageError
from greencc.quant.observers import TensorRange

QuantDtype = Literal["int8", "uint8"]

# Symmetric int8 uses [-127, 127] so that +-range map to +-127 exactly (as ONNX Runtime's
# quantizer and TensorRT do); asymmetric uses the dtype's full range.
_FULL_RANGE = {"int8": (-128, 127), "uint8": (0, 255)}
_SYMMETRIC_ZERO = {"int8": 0, "uint8": 128}


def quantized_range(dtype: QuantDtype, symmetric: bool) -> tuple[int, int]:
    """(qmin, qmax) the quantized values use: int8 symmetric is [-127, 127], uint8
    symmetric [1, 255] around zero point 128, asymmetric the dtype's full range."""
    _check_dtype(dtype)
    if symmetric:
        zero = _SYMMETRIC_ZERO[dtype]
        return zero - 127, zero + 127
    return _FULL_RANGE[dtype]


def quant_params(
    r: TensorRange, dtype: QuantDtype = "int8", symmetric: bool = True
) -> tuple[np.ndarray, np.ndarray]:
    """(scale, zero_point) for quantizing values in range ``r`` to ``dtype``.

    ``scale`` is float32 and ``zero_point`` of ``dtype``, both 0-d for a per-tensor range
    and 1-d along ``r.axis`` for a per-channel one (as ONNX QuantizeLinear wants them).
    The range is widened to include 0 so that zero is exactly representable (padding,
    ReLU outputs). Symmetric: ``scale = max(|lo|, |hi|) / 127`` and zero point 0 (int8) or
    128 (uint8). Asymmetric: ``scale = (hi - lo) / (qmax - qmin)`` and the zero point that
    maps 0 exactly. A degenerate range (all zeros, or below float32's smallest normal)
    gets scale 1 so that nothing divides by zero.
    """
    _check_dtype(dtype)
    lo = np.minimum(np.asarray(r.lo, dtype=np.float64), 0.0)
    hi = np.maximum(np.asarray(r.hi, dtype=np.float64), 0.0)
    if not (np.isfinite(lo).all() and np.isfinite(hi).all()):
        raise UsageError(
            f"cannot quantize a non-finite range [{r.lo}, {r.hi}] ({r.method})",
            hint="observers exclude inf and mask fillers by default; check the observer's options",
        )
    qmin, qmax = quantized_range(dtype, symmetric)
    if symmetric:
        scale = np.maximum(-lo, hi) / 127.0
        zero_point = np.full(scale.shape, _SYMMETRIC_ZERO[dtype], dtype=np.float64)
    else:
        scale = (hi - lo) / float(qmax - qmin)
        with np.errstate(divide="ignore", invalid="ignore"):
            zero_point = np.clip(np.rint(qmin - lo / scale), qmin, qmax)
    scale32 = scale.astype(np.float32)
    degenerate = ~(scale32 >= np.finfo(np.float32).tiny)
    if degenerate.any():
        scale32 = np.where(degenerate, np.float32(1.0), scale32).astype(np.float32)
        zero_point = np.where(degenerate, _SYMMETRIC_ZERO[dtype] if symmetric else max(qmin, 0), zero_point)
    return np.asarray(scale32, dtype=np.float32), np.asarray(zero_point).astype(np.dtype(dtype))


def quantize(
    x: np.ndarray, scale: np.ndarray, zero_point: np.ndarray, axis: int | None = None
) -> np.ndarray:
    """ONNX ``QuantizeLinear`` in numpy: ``saturate(round_half_even(x / scale) + zero_point)``
    in the zero point's dtype; ``axis`` is the channel axis of a 1-d ``scale``."""
    x = np.asarray(x, dtype=np.float32)
    zero_point = np.asarray(zero_point)
    if zero_point.dtype.name not in _FULL_RANGE:
        raise UsageError(f"zero point dtype {zero_point.dtype.name} is not int8 or uint8")
    qmin, qmax = _FULL_RANGE[zero_point.dtype.name]
    s, z = _broadcast(x, np.asarray(scale, dtype=np.float32), zero_point, axis)
    q = np.rint(x / s) + z.astype(np.float32)
    return np.clip(q, qmin, qmax).astype(zero_point.dtype)


def dequantize(
    q: np.ndarray, scale: np.ndarray, zero_point: np.ndarray, axis: int | None = None
) -> np.ndarray:
    """ONNX ``DequantizeLinear`` in numpy: ``(q - zero_point) * scale`` in float32."""
    q = np.asarray(q)
    s, z = _broadcast(q, np.asarray(scale, dtype=np.float32), np.asarray(zero_point), axis)
    return ((q.astype(np.int32) - z.astype(np.int32)).astype(np.float32) * s).astype(np.float32)


def fake_quantize(
    x: np.ndarray, scale: np.ndarray, zero_point: np.ndarray, axis: int | None = None
) -> np.ndarray:
    """``dequantize(quantize(x))``: ``x`` as a QuantizeLinear -> DequantizeLinear pair
    computes it (float32, same shape); ``x`` is not modified."""
    return dequantize(quantize(x, scale, zero_point, axis), scale, zero_point, axis)


def _broadcast(
    x: np.ndarray, scale: np.ndarray, zero_point: np.ndarray, axis: int | None
) -> tuple[np.ndarray, np.ndarray]:
    if scale.ndim == 0:
        return scale, zero_point
    if axis is None:
        raise UsageError("a per-channel (1-d) scale needs the channel axis", hint="pass axis=")
    axis = axis % x.ndim
    if scale.shape != (x.shape[axis],) or zero_point.shape != scale.shape:
        raise UsageError(
            f"per-channel scale {scale.shape} / zero point {zero_point.shape} do not match "
            f"axis {axis} of a tensor of shape {x.shape}"
        )
    shape = [1] * x.ndim
    shape[axis] = -1
    return scale.reshape(shape), zero_point.reshape(shape)


def _check_dtype(dtype: str) -> None:
    if dtype not in _FULL_RANGE:
        raise UsageError(f"quantized dtype '{dtype}' is not supported", hint="use 'int8' or 'uint8'")
