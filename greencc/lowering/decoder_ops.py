"""ONNX Runtime's decoder ops that greencc's decoder fusions and weight-only quantization emit:
RotaryEmbedding, GroupQueryAttention (concatenating KV cache, causal, grouped heads, optional
rotary inside), MatMulNBits and GatherBlockQuantized (blockwise 4/8-bit weights, dequantized
to float as ONNX Runtime's accuracy_level 0 does).
"""

from __future__ import annotations

import math
from typing import Any

import torch

from greencc.lowering.contrib_ops import multi_head_attention
from greencc.lowering.registry import CONTRIB, converts


def _rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, rotary_dim: int, interleaved: int) -> torch.Tensor:
    """Rotate the first ``rotary_dim`` features of ``x`` (..., seq, head_size); ``cos`` and
    ``sin`` are (..., seq, rotary_dim / 2)."""
    rotated, rest = x[..., :rotary_dim], x[..., rotary_dim:]
    if interleaved:
        x1, x2 = rotated[..., 0::2], rotated[..., 1::2]
        out = torch.stack([x1 * cos - x2 * sin, x2 * cos + x1 * sin], -1).flatten(-2)
    else:
        half = rotary_dim // 2
        x1, x2 = rotated[..., :half], rotated[..., half:]
        out = torch.cat([x1 * cos - x2 * sin, x2 * cos + x1 * sin], -1)
    return torch.cat([out, rest], -1) if rest.shape[-1] else out


def _positions(position_ids: torch.Tensor, batch: int, seq: int) -> torch.Tensor:
    """(batch, seq) positions: ``position_ids`` itself, or a one-element start offset."""
    if position_ids.numel() == 1 and position_ids.dim() <= 1:
        return (position_ids.reshape(1, 1) + torch.arange(seq, device=position_ids.device).reshape(1, seq)).expand(batch, seq)
    return position_ids.long().expand(batch, seq)


@converts("RotaryEmbedding", domain=CONTRIB)
def rotary_embedding(x: torch.Tensor, position_ids: torch.Tensor, cos_cache: torch.Tensor, sin_cache: torch.Tensor, *,
                     interleaved: int = 0, is_packed_batching: int = 0, num_heads: int = 0,
                     rotary_embedding_dim: int = 0, scale: float = 1.0) -> torch.Tensor:
    if x.dim() == 4:  # (batch, heads, seq, head_size)
        batch, seq = x.shape[0], x.shape[2]
        heads_first = x
    else:  # (batch, seq, hidden)
        batch, seq = x.shape[0], x.shape[1]
        head_size = x.shape[-1] // num_heads if num_heads else cos_cache.shape[-1] * 2
        heads_first = x.reshape(batch, seq, -1, head_size).transpose(1, 2)
    rotary_dim = rotary_embedding_dim or cos_cache.shape[-1] * 2
    positions = _positions(position_ids, batch, seq)
    cos = cos_cache[positions].unsqueeze(1)
    sin = sin_cache[positions].unsqueeze(1)
    out = _rotate(heads_first, cos, sin, rotary_dim, interleaved)
    if x.dim() == 4:
        return out
    return out.transpose(1, 2).reshape(x.shape)


@converts("GroupQueryAttention", domain=CONTRIB)
def group_query_attention(query: torch.Tensor, key: torch.Tensor | None, value: torch.Tensor | None,
                          past_key: torch.Tensor | None, past_value: torch.Tensor | None, seqlens_k: torch.Tensor,
                          total_sequence_length: Any, cos_cache: torch.Tensor | None = None,
                          sin_cache: torch.Tensor | None = None, position_ids: torch.Tensor | None = None,
                          attention_bias: torch.Tensor | None = None, head_sink: torch.Tensor | None = None,
                          *extra: Any, num_heads: int, kv_num_heads: int, scale: float = 0.0, causal: int = 1,
                          do_rotary: int = 0, rotary_interleaved: int = 0, local_window_size: int = -1,
                          softcap: float = 0.0, smooth_softmax: int = -1, outputs: int = 3, **_: Any) -> Any:
    if local_window_size != -1 or softcap or head_sink is not None or smooth_softmax == 1:
        raise NotImplementedError("GroupQueryAttention with a local window, softcap, head sinks or smooth softmax")
    batch, seq = query.shape[0], query.shape[1]
    if key is None or value is None:  # packed QKV
        head_size = query.shape[-1] // (num_heads + 2 * kv_num_heads)
        query, key, value = torch.split(query, [num_heads * head_size, kv_num_heads * head_size,
                                                kv_num_heads * head_size], -1)
    head_size = query.shape[-1] // num_heads
    q = query.reshape(batch, seq, num_heads, head_size).transpose(1, 2)
    k = key.reshape(batch, seq, kv_num_heads, head_size).transpose(1, 2)
    v = value.reshape(batch, seq, kv_num_heads, head_size).transpose(1, 2)
    past = past_key.shape[2] if past_key is not None else 0
    if do_rotary:
        assert cos_cache is not None and sin_cache is not None
        if position_ids is None:
            position_ids = torch.tensor([past], device=query.device)
        positions = _positions(position_ids, batch, seq)
        cos, sin = cos_cache[positions].unsqueeze(1), sin_cache[positions].unsqueeze(1)
        rotary_dim = cos_cache.shape[-1] * 2
        q = _rotate(q, cos, sin, rotary_dim, rotary_interleaved)
        k = _rotate(k, cos, sin, rotary_dim, rotary_interleaved)
    if past_key is not None and past_value is not None:
        k, v = torch.cat([past_key, k], 2), torch.cat([past_value, v], 2)
    present_key, present_value = k, v
    total = k.shape[2]
    bias = None
    if causal:
        rows = torch.arange(seq, device=query.device).reshape(seq, 1) + past
        cols = torch.arange(total, device=query.device).reshape(1, total)
        bias = torch.where(cols <= rows, 0.0, -math.inf).to(query.dtype).reshape(1, 1, seq, total)
    if attention_bias is not None:
        bias = attention_bias if bias is None else bias + attention_bias
    group = num_heads // kv_num_heads
    if group > 1:
        k, v = k.repeat_interleave(group, 1), v.repeat_interleave(group, 1)
    y = multi_head_attention(q, k, v, bias, scale if scale else 1.0 / math.sqrt(head_size))
    y = y.transpose(1, 2).reshape(batch, seq, num_heads * head_size)
    return (y, present_key, present_value)[:outputs]


def _unpack(packed: torch.Tensor, bits: int) -> torch.Tensor:
    """uint8 bytes holding ``bits``-bit values, low bits first, as one int per value (last axis)."""
    if bits == 8:
        return packed.to(torch.int32)
    per_byte = 8 // bits
    shifts = torch.arange(per_byte, device=packed.device, dtype=torch.int32) * bits
    values = (packed.to(torch.int32).unsqueeze(-1) >> shifts) & ((1 << bits) - 1)
    return values.flatten(-2)


@converts("MatMulNBits", domain=CONTRIB)
def matmul_nbits(a: torch.Tensor, b: torch.Tensor, scales: torch.Tensor, zero_points: torch.Tensor | None = None,
                 g_idx: torch.Tensor | None = None, bias: torch.Tensor | None = None, *, K: int, N: int, bits: int = 4,
                 block_size: int, accuracy_level: int = 0, weight_prepacked: int = 0) -> torch.Tensor:
    if g_idx is not None or weight_prepacked:
        raise NotImplementedError("MatMulNBits with g_idx or prepacked weights")
    blocks = -(-K // block_size)
    q = _unpack(b.reshape(N, blocks, -1), bits).reshape(N, blocks, block_size).to(a.dtype)
    scale = scales.reshape(N, blocks, 1).to(a.dtype)
    if zero_points is None:
        zero = torch.tensor(float(1 << (bits - 1)), dtype=a.dtype)
    elif zero_points.is_floating_point():
        zero = zero_points.reshape(N, blocks, 1).to(a.dtype)
    else:
        zero = _unpack(zero_points.reshape(N, -1), bits)[:, :blocks].reshape(N, blocks, 1).to(a.dtype)
    weight = ((q - zero) * scale).reshape(N, blocks * block_size)[:, :K]
    y = torch.matmul(a, weight.t())
    return y if bias is None else y + bias


@converts("GatherBlockQuantized", domain=CONTRIB)
def gather_block_quantized(data: torch.Tensor, indices: torch.Tensor, scales: torch.Tensor,
                           zero_points: torch.Tensor | None = None, *, bits: int = 4, block_size: int = 128,
                           gather_axis: int = 0, quantize_axis: int = 1) -> torch.Tensor:
    if gather_axis != 0 or quantize_axis != data.dim() - 1:
        raise NotImplementedError("GatherBlockQuantized other than rows of a table quantized along its last axis")
    packed = data.dtype == torch.uint8 and bits < 8
    rows = data[indices.long()]
    q = _unpack(rows, bits) if packed else rows.to(torch.int32)
    width = q.shape[-1]
    scale = scales[indices.long()].repeat_interleave(block_size, -1)[..., :width]
    if zero_points is None:
        zero: Any = float(1 << (bits - 1)) if data.dtype == torch.uint8 else 0.0
    else:
        zero_rows = zero_points[indices.long()]
        zero = (_unpack(zero_rows, bits) if packed else zero_rows.to(torch.int32))
        zero = zero.repeat_interleave(block_size, -1)[..., :width].to(scale.dtype)
    return (q.to(scale.dtype) - zero) * scale
