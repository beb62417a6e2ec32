"""Integer and quantization ops with ONNX Runtime's CPU arithmetic, so an int8 graph lowered
to torch computes what ONNX Runtime computes on the same graph:

- quantize: ``saturate(round_half_even(x / scale) + zero_point)`` (a division, as MLAS does);
- dynamic quantization (uint8): range widened to include 0, ``scale = (max - min) / 255``
  (1 when max == min), ``zero_point = round_half_even(clamp(0 - min / scale, 0, 255))``;
- integer products are exact: accumulated in float64, exact for any int8 GEMM below 2^53;
- int32 -> float outputs scale as ``float(acc) * (a_scale * b_scale) + bias``;
- requantized outputs (QLinear*) round ``acc * (a_scale * b_scale / y_scale)`` half to even.

Integer tensors are buffers, never trained.
"""

from __future__ import annotations

from typing import Any

import torch

from greencc.lowering.contrib_ops import attention_from_qkv
from greencc.lowering.registry import CONTRIB, converts
from greencc.lowering.standard_ops import conv, torch_dtype

_RANGES = {torch.uint8: (0, 255), torch.int8: (-128, 127), torch.int16: (-32768, 32767),
           torch.uint16: (0, 65535), torch.int32: (-(2**31), 2**31 - 1)}


def _along(param: torch.Tensor, axis: int, rank: int) -> torch.Tensor:
    """A per-tensor (0-d or 1-element) or per-axis (1-d) parameter shaped to broadcast on
    a rank-``rank`` tensor along ``axis``."""
    if param.dim() == 0 or param.numel() == 1:
        return param.reshape(())
    shape = [1] * rank
    shape[axis % rank] = param.shape[0]
    return param.reshape(shape)


def quantize(x: torch.Tensor, scale: torch.Tensor, zero_point: torch.Tensor | None, dtype: torch.dtype,
             axis: int = 1) -> torch.Tensor:
    """``x`` (float) quantized to ``dtype`` with ONNX Runtime's rounding and saturation."""
    low, high = _RANGES[dtype]
    scaled = torch.round(x.float() / _along(scale.float(), axis, x.dim()))
    if zero_point is not None:
        scaled = scaled + _along(zero_point.float(), axis, x.dim())
    return torch.clamp(scaled, low, high).to(dtype)


def dequantize(q: torch.Tensor, scale: torch.Tensor, zero_point: torch.Tensor | None, axis: int = 1) -> torch.Tensor:
    """``(q - zero_point) * scale`` in float32."""
    shifted = q.float() if zero_point is None else q.float() - _along(zero_point.float(), axis, q.dim())
    return shifted * _along(scale.float(), axis, q.dim())


@converts("QuantizeLinear")
@converts("QuantizeLinear", domain=CONTRIB)
def quantize_linear(x: torch.Tensor, scale: torch.Tensor, zero_point: torch.Tensor | None = None, *,
                    axis: int = 1, saturate: int = 1, block_size: int = 0, output_dtype: int = 0,
                    precision: int = 0) -> torch.Tensor:
    if block_size:
        raise NotImplementedError("blocked QuantizeLinear")
    dtype = zero_point.dtype if zero_point is not None else (torch_dtype(output_dtype) if output_dtype else torch.uint8)
    return quantize(x, scale, zero_point, dtype, axis)


@converts("DequantizeLinear")
@converts("DequantizeLinear", domain=CONTRIB)
def dequantize_linear(q: torch.Tensor, scale: torch.Tensor, zero_point: torch.Tensor | None = None, *,
                      axis: int = 1, block_size: int = 0, output_dtype: int = 0) -> torch.Tensor:
    if block_size:
        raise NotImplementedError("blocked DequantizeLinear")
    return dequantize(q, scale, zero_point, axis)


def dynamic_parameters(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """ONNX Runtime's uint8 (scale, zero_point) of ``x``: 0-d float32 and uint8 tensors."""
    low = torch.clamp(x.min(), max=0.0)
    high = torch.clamp(x.max(), min=0.0)
    scale = torch.where(high == low, torch.ones_like(high), (high - low) / 255.0)
    zero_point = torch.round(torch.clamp(0.0 - low / scale, 0.0, 255.0))
    return scale, zero_point.to(torch.uint8)


@converts("DynamicQuantizeLinear")
def dynamic_quantize_linear(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    scale, zero_point = dynamic_parameters(x)
    return quantize(x, scale, zero_point, torch.uint8), scale, zero_point


def integer_matmul(a: torch.Tensor, b: torch.Tensor, a_zero_point: torch.Tensor | None,
                   b_zero_point: torch.Tensor | None) -> torch.Tensor:
    """``(a - a_zp) @ (b - b_zp)`` exactly, as float64 (a_zp per row of a or per tensor,
    b_zp per column of b or per tensor)."""
    left = a.double()
    if a_zero_point is not None:
        zp = a_zero_point.double()
        left = left - (zp.reshape(-1, 1) if zp.numel() > 1 else zp.reshape(()))
    right = b.double()
    if b_zero_point is not None:
        zp = b_zero_point.double()
        right = right - (zp.reshape(*zp.shape[:-1], 1, zp.shape[-1]) if zp.numel() > 1 else zp.reshape(()))
    return torch.matmul(left, right)


@converts("MatMulInteger")
def matmul_integer(a: torch.Tensor, b: torch.Tensor, a_zero_point: torch.Tensor | None = None,
                   b_zero_point: torch.Tensor | None = None) -> torch.Tensor:
    return integer_matmul(a, b, a_zero_point, b_zero_point).to(torch.int32)


def integer_conv(x: torch.Tensor, w: torch.Tensor, x_zero_point: torch.Tensor | None,
                 w_zero_point: torch.Tensor | None, attributes: dict[str, Any]) -> torch.Tensor:
    """The convolution of ``x - x_zp`` by ``w - w_zp`` (w_zp per output channel or per
    tensor), exact in float64."""
    left = x.double() if x_zero_point is None else x.double() - x_zero_point.double().reshape(())
    right = w.double()
    if w_zero_point is not None:
        right = right - _along(w_zero_point.double(), 0, w.dim())
    # Zero padding must pad the shifted input, which is what conv() pads.
    return conv(left, right, None, **attributes)


@converts("ConvInteger")
def conv_integer(x: torch.Tensor, w: torch.Tensor, x_zero_point: torch.Tensor | None = None,
                 w_zero_point: torch.Tensor | None = None, **attributes: Any) -> torch.Tensor:
    return integer_conv(x, w, x_zero_point, w_zero_point, attributes).to(torch.int32)


def _scaled(acc: torch.Tensor, a_scale: torch.Tensor, b_scale: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """``float(acc) * (a_scale * b_scale) + bias`` (b_scale per column or per tensor)."""
    scale = a_scale.float().reshape(()) * b_scale.float().reshape(-1)
    y = acc.float() * (scale if scale.numel() > 1 else scale.reshape(()))
    return y if bias is None else y + bias


@converts("MatMulIntegerToFloat", domain=CONTRIB)
def matmul_integer_to_float(a: torch.Tensor, b: torch.Tensor, a_scale: torch.Tensor, b_scale: torch.Tensor,
                            a_zero_point: torch.Tensor | None = None, b_zero_point: torch.Tensor | None = None,
                            bias: torch.Tensor | None = None) -> torch.Tensor:
    return _scaled(integer_matmul(a, b, a_zero_point, b_zero_point), a_scale, b_scale, bias)


@converts("DynamicQuantizeMatMul", domain=CONTRIB)
def dynamic_quantize_matmul(a: torch.Tensor, b: torch.Tensor, b_scale: torch.Tensor,
                            b_zero_point: torch.Tensor | None = None, bias: torch.Tensor | None = None) -> torch.Tensor:
    a_scale, a_zero_point = dynamic_parameters(a)
    a_q = quantize(a, a_scale, a_zero_point, torch.uint8)
    return _scaled(integer_matmul(a_q, b, a_zero_point, b_zero_point), a_scale, b_scale, bias)


@converts("QAttention", domain=CONTRIB)
def q_attention(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, input_scale: torch.Tensor,
                weight_scale: torch.Tensor, mask_index: torch.Tensor | None = None,
                input_zero_point: torch.Tensor | None = None, weight_zero_point: torch.Tensor | None = None,
                past: torch.Tensor | None = None, *, num_heads: int, unidirectional: int = 0,
                do_rotary: int = 0, past_present_share_buffer: int = 0, mask_filter_value: float = -10000.0,
                scale: float = 0.0, outputs: int = 1) -> Any:
    if do_rotary:
        raise NotImplementedError("QAttention with do_rotary")
    qkv = _scaled(integer_matmul(x, weight, input_zero_point, weight_zero_point), input_scale, weight_scale, bias)
    return attention_from_qkv(qkv, mask_index, past, None, num_heads=num_heads, unidirectional=unidirectional,
                              qkv_hidden_sizes=None, mask_filter_value=mask_filter_value, scale=scale,
                              outputs=outputs)


def requantize(acc: torch.Tensor, multiplier: torch.Tensor, zero_point: torch.Tensor | None,
               dtype: torch.dtype) -> torch.Tensor:
    """``saturate(round_half_even(acc * multiplier) + zero_point)`` as ``dtype``."""
    low, high = _RANGES[dtype]
    y = torch.round(acc.float() * multiplier)
    if zero_point is not None:
        y = y + zero_point.float().reshape(())
    return torch.clamp(y, low, high).to(dtype)


@converts("QLinearMatMul")
def qlinear_matmul(a: torch.Tensor, a_scale: torch.Tensor, a_zero_point: torch.Tensor, b: torch.Tensor,
                   b_scale: torch.Tensor, b_zero_point: torch.Tensor, y_scale: torch.Tensor,
                   y_zero_point: torch.Tensor) -> torch.Tensor:
    acc = integer_matmul(a, b, a_zero_point, b_zero_point)
    multiplier = a_scale.float().reshape(()) * b_scale.float().reshape(-1) / y_scale.float().reshape(())
    return requantize(acc, multiplier if multiplier.numel() > 1 else multiplier.reshape(()), y_zero_point,
                      y_zero_point.dtype)


@converts("QLinearConv")
def qlinear_conv(x: torch.Tensor, x_scale: torch.Tensor, x_zero_point: torch.Tensor, w: torch.Tensor,
                 w_scale: torch.Tensor, w_zero_point: torch.Tensor, y_scale: torch.Tensor,
                 y_zero_point: torch.Tensor, bias: torch.Tensor | None = None, **attributes: Any) -> torch.Tensor:
    acc = integer_conv(x, w, x_zero_point, w_zero_point, attributes)
    if bias is not None:
        acc = acc + bias.double().reshape(1, -1, *([1] * (acc.dim() - 2)))
    multiplier = _along(x_scale.float().reshape(()) * w_scale.float().reshape(-1) / y_scale.float().reshape(()),
                        1, acc.dim())
    return requantize(acc, multiplier, y_zero_point, y_zero_point.dtype)


@converts("QGemm", domain=CONTRIB)
def q_gemm(a: torch.Tensor, a_scale: torch.Tensor, a_zero_point: torch.Tensor, b: torch.Tensor,
           b_scale: torch.Tensor, b_zero_point: torch.Tensor, c: torch.Tensor | None = None,
           y_scale: torch.Tensor | None = None, y_zero_point: torch.Tensor | None = None, *,
           alpha: float = 1.0, transA: int = 0, transB: int = 0) -> torch.Tensor:
    if transA:
        a = a.t()
    if transB:
        b = b.t()
        b_zero_point = b_zero_point.reshape(-1) if b_zero_point is not None else None
    acc = integer_matmul(a, b, a_zero_point, b_zero_point)
    if c is not None:
        acc = acc + c.double()
    scale = a_scale.float().reshape(()) * b_scale.float().reshape(-1) * alpha
    scale = scale if scale.numel() > 1 else scale.reshape(())
    if y_scale is None:
        return acc.float() * scale
    assert y_zero_point is not None
    return requantize(acc, scale / y_scale.float().reshape(()), y_zero_point, y_zero_point.dtype)


def _qlinear_binary(fn: Any) -> Any:
    def convert(a: torch.Tensor, a_scale: torch.Tensor, a_zero_point: torch.Tensor | None, b: torch.Tensor,
                b_scale: torch.Tensor, b_zero_point: torch.Tensor | None, c_scale: torch.Tensor,
                c_zero_point: torch.Tensor | None = None) -> torch.Tensor:
        y = fn(dequantize(a, a_scale, a_zero_point), dequantize(b, b_scale, b_zero_point))
        return quantize(y, c_scale, c_zero_point, a.dtype)

    convert.__name__ = f"qlinear_{fn.__name__}"
    return convert


converts("QLinearAdd", domain=CONTRIB)(_qlinear_binary(torch.add))
converts("QLinearMul", domain=CONTRIB)(_qlinear_binary(torch.mul))
