"""ONNX Runtime's float com.microsoft ops that greencc's fusions emit, as torch functions with
ONNX Runtime's CPU semantics (mask formats and filter values, skip/bias sums, GELU forms).
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F

from greencc.lowering.registry import CONTRIB, converts
from greencc.lowering.standard_ops import conv, gemm

# -- normalization -----------------------------------------------------------------------------

@converts("SkipLayerNormalization", domain=CONTRIB)
def skip_layer_norm(x: torch.Tensor, skip: torch.Tensor, gamma: torch.Tensor, beta: torch.Tensor | None = None,
                    bias: torch.Tensor | None = None, *, epsilon: float = 1e-12, outputs: int = 1) -> Any:
    total = x + skip if bias is None else x + skip + bias
    y = F.layer_norm(total, (total.shape[-1],), gamma, beta, epsilon)
    return _with_sum(y, total, outputs)


def _with_sum(y: torch.Tensor, total: torch.Tensor, outputs: int) -> Any:
    """(output, mean, inv_std_var, input_skip_bias_sum)[:outputs]; greencc graphs never read
    the statistics, which ONNX Runtime's CPU kernels leave unwritten."""
    if outputs == 1:
        return y
    empty = torch.zeros(0, dtype=y.dtype)
    return (y, empty, empty, total)[:outputs]


def _rms(x: torch.Tensor, gamma: torch.Tensor, epsilon: float, axis: int = -1) -> torch.Tensor:
    dims = tuple(range(axis % x.dim(), x.dim()))
    return x * torch.rsqrt(x.pow(2).mean(dims, keepdim=True) + epsilon) * gamma


@converts("SimplifiedLayerNormalization", domain=CONTRIB)
@converts("SimplifiedLayerNormalization")
def simplified_layer_norm(x: torch.Tensor, gamma: torch.Tensor, *, axis: int = -1, epsilon: float = 1e-5,
                          stash_type: int = 1, outputs: int = 1) -> Any:
    y = _rms(x, gamma, epsilon, axis)
    return y if outputs == 1 else (y, torch.zeros(0, dtype=y.dtype))


@converts("SkipSimplifiedLayerNormalization", domain=CONTRIB)
def skip_simplified_layer_norm(x: torch.Tensor, skip: torch.Tensor, gamma: torch.Tensor,
                               bias: torch.Tensor | None = None, *, epsilon: float = 1e-12,
                               outputs: int = 1) -> Any:
    total = x + skip if bias is None else x + skip + bias
    return _with_sum(_rms(total, gamma, epsilon), total, outputs)


@converts("EmbedLayerNormalization", domain=CONTRIB)
def embed_layer_norm(input_ids: torch.Tensor, segment_ids: torch.Tensor | None, word_embedding: torch.Tensor,
                     position_embedding: torch.Tensor, segment_embedding: torch.Tensor | None,
                     gamma: torch.Tensor, beta: torch.Tensor, mask: torch.Tensor | None = None,
                     position_ids: torch.Tensor | None = None, *, epsilon: float = 1e-12,
                     mask_index_type: int = 1, outputs: int = 1) -> Any:
    seq = input_ids.shape[1]
    if position_ids is None:
        positions = torch.arange(seq, device=input_ids.device).unsqueeze(0)
    else:
        positions = position_ids.long()
    total = word_embedding[input_ids.long()] + position_embedding[positions]
    if segment_embedding is not None and segment_ids is not None:
        total = total + segment_embedding[segment_ids.long()]
    y = F.layer_norm(total, (total.shape[-1],), gamma, beta, epsilon)
    if outputs == 1:
        return y
    if mask is not None:
        mask_index = mask.to(torch.int32).sum(1, dtype=torch.int32)
    else:
        mask_index = torch.zeros(input_ids.shape[0], dtype=torch.int32, device=input_ids.device)
    return (y, mask_index, total)[:outputs]


# -- activations -----------------------------------------------------------------------------

@converts("Gelu", domain=CONTRIB)
def ms_gelu(x: torch.Tensor) -> torch.Tensor:
    return F.gelu(x)


@converts("BiasGelu", domain=CONTRIB)
def bias_gelu(x: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    return F.gelu(x + bias)


@converts("FastGelu", domain=CONTRIB)
def fast_gelu(x: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    return F.gelu(x if bias is None else x + bias, approximate="tanh")


@converts("QuickGelu", domain=CONTRIB)
def quick_gelu(x: torch.Tensor, *, alpha: float = 1.702) -> torch.Tensor:
    return x * torch.sigmoid(alpha * x)


@converts("BiasAdd", domain=CONTRIB)
def bias_add(x: torch.Tensor, bias: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
    return x + bias + skip


@converts("BiasSoftmax", domain=CONTRIB)
def bias_softmax(x: torch.Tensor, bias: torch.Tensor, *, axis: int = 1, is_inner_broadcast: int = 0) -> torch.Tensor:
    return torch.softmax(x + bias, axis)


def apply_activation(x: torch.Tensor, name: str, params: list[float] | None) -> torch.Tensor:
    """The ``activation`` attribute of FusedConv / FusedGemm / FusedMatMul applied to ``x``."""
    params = list(params or [])
    if name == "Relu":
        return torch.relu(x)
    if name == "Sigmoid":
        return torch.sigmoid(x)
    if name == "Tanh":
        return torch.tanh(x)
    if name == "LeakyRelu":
        return F.leaky_relu(x, params[0] if params else 0.01)
    if name == "Clip":
        low, high = (params + [-math.inf, math.inf])[:2] if params else (-math.inf, math.inf)
        return torch.clamp(x, low, high)
    if name == "HardSigmoid":
        alpha, beta = params if params else (0.2, 0.5)
        return torch.clamp(alpha * x + beta, 0.0, 1.0)
    if name in ("", "Identity"):
        return x
    raise NotImplementedError(f"fused activation {name!r}")


@converts("FusedConv", domain=CONTRIB)
def fused_conv(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None = None, z: torch.Tensor | None = None, *,
               activation: str = "", activation_params: list[float] | None = None, **conv_attributes: Any) -> torch.Tensor:
    y = conv(x, w, b, **conv_attributes)
    if z is not None:
        y = y + z
    return apply_activation(y, activation, activation_params)


@converts("FusedGemm", domain=CONTRIB)
def fused_gemm(a: torch.Tensor, b: torch.Tensor, c: torch.Tensor | None = None, *, activation: str = "",
               activation_params: list[float] | None = None, activation_alpha: float | None = None,
               activation_beta: float | None = None, activation_gamma: float | None = None,
               **gemm_attributes: Any) -> torch.Tensor:
    params = [p for p in (activation_alpha, activation_beta) if p is not None] or activation_params
    return apply_activation(gemm(a, b, c, **gemm_attributes), activation, params)


@converts("FusedMatMul", domain=CONTRIB)
def fused_matmul(a: torch.Tensor, b: torch.Tensor, *, alpha: float = 1.0, transA: int = 0, transB: int = 0,
                 transBatchA: int = 0, transBatchB: int = 0) -> torch.Tensor:
    if transBatchA or transBatchB:
        raise NotImplementedError("FusedMatMul with transBatchA/transBatchB")
    if transA:
        a = a.transpose(-1, -2)
    if transB:
        b = b.transpose(-1, -2)
    y = torch.matmul(a, b)
    return y * alpha if alpha != 1.0 else y


# -- attention ---------------------------------------------------------------------------------

def attention_bias_from_mask(mask_index: torch.Tensor | None, batch: int, seq: int, total: int, past: int,
                             causal: bool, filter_value: float, dtype: torch.dtype) -> torch.Tensor | None:
    """The additive bias (batch or 1, 1, seq, total) ONNX Runtime's Attention builds from
    ``mask_index`` in any of its formats, plus the causal mask: 0 where a query attends,
    ``filter_value`` where it does not (added once per reason, as ONNX Runtime does)."""
    keep: torch.Tensor | None = None
    if mask_index is not None:
        if mask_index.dim() == 1:
            keys = torch.arange(total, device=mask_index.device)
            ends = mask_index[:batch].reshape(batch, 1)
            keep = keys.unsqueeze(0) < ends
            if mask_index.shape[0] == 2 * batch:
                keep = keep & (keys.unsqueeze(0) >= mask_index[batch:].reshape(batch, 1))
            keep = keep.reshape(batch, 1, 1, total)
        elif mask_index.dim() == 2:
            if mask_index.shape[1] == 1 and total != 1:
                keep = None
            else:
                keep = (mask_index > 0).reshape(mask_index.shape[0], 1, 1, total)
        elif mask_index.dim() == 3:
            keep = (mask_index > 0).unsqueeze(1)
        else:
            keep = mask_index[:, :, past:past + seq, :total] > 0
    bias: torch.Tensor | None = None
    if keep is not None:
        bias = torch.where(keep, 0.0, filter_value).to(dtype)
    if causal:
        rows = torch.arange(seq).reshape(seq, 1) + past
        cols = torch.arange(total).reshape(1, total)
        causal_bias = torch.where(cols <= rows, 0.0, filter_value).to(dtype).reshape(1, 1, seq, total)
        bias = causal_bias if bias is None else bias + causal_bias
    return bias


def multi_head_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, bias: torch.Tensor | None,
                         scale: float) -> torch.Tensor:
    """softmax(scale·QKᵀ + bias)·V on (batch, heads, seq, head_size) tensors."""
    scores = torch.matmul(q, k.transpose(-1, -2)) * scale
    if bias is not None:
        scores = scores + bias
    return torch.matmul(torch.softmax(scores, -1), v)


def _heads(x: torch.Tensor, heads: int) -> torch.Tensor:
    batch, seq, hidden = x.shape
    return x.reshape(batch, seq, heads, hidden // heads).transpose(1, 2)


def _merge_heads(x: torch.Tensor) -> torch.Tensor:
    batch, heads, seq, size = x.shape
    return x.transpose(1, 2).reshape(batch, seq, heads * size)


def attention_from_qkv(qkv: torch.Tensor, mask_index: torch.Tensor | None, past: torch.Tensor | None,
                       attention_bias: torch.Tensor | None, *, num_heads: int, unidirectional: int,
                       qkv_hidden_sizes: list[int] | None, mask_filter_value: float, scale: float | None,
                       outputs: int) -> Any:
    """Attention / QAttention after their input projection: ``qkv`` is (batch, seq, q+k+v)."""
    hidden = qkv.shape[-1] // 3
    sizes = list(qkv_hidden_sizes) if qkv_hidden_sizes else [hidden, hidden, hidden]
    q, k, v = torch.split(qkv, sizes, -1)
    q, k, v = _heads(q, num_heads), _heads(k, num_heads), _heads(v, num_heads)
    past_len = 0
    if past is not None:
        past_len = past.shape[3]
        k = torch.cat([past[0], k], 2)
        v = torch.cat([past[1], v], 2)
    batch, seq = qkv.shape[0], qkv.shape[1]
    total = k.shape[2]
    bias = attention_bias_from_mask(mask_index, batch, seq, total, past_len, bool(unidirectional),
                                    mask_filter_value, qkv.dtype)
    if attention_bias is not None:
        bias = attention_bias if bias is None else bias + attention_bias
    head_size = sizes[0] // num_heads
    y = _merge_heads(multi_head_attention(q, k, v, bias, scale if scale else 1.0 / math.sqrt(head_size)))
    if outputs == 1:
        return y
    return y, torch.stack([k, v])


@converts("Attention", domain=CONTRIB)
def attention(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None,
              mask_index: torch.Tensor | None = None, past: torch.Tensor | None = None,
              attention_bias: torch.Tensor | None = None, past_sequence_length: Any = None, *,
              num_heads: int, unidirectional: int = 0, qkv_hidden_sizes: list[int] | None = None,
              mask_filter_value: float = -10000.0, scale: float = 0.0, do_rotary: int = 0,
              past_present_share_buffer: int = 0, rotary_embedding_dim: int = 0, outputs: int = 1) -> Any:
    if do_rotary:
        raise NotImplementedError("Attention with do_rotary")
    qkv = torch.matmul(x, weight)
    if bias is not None:
        qkv = qkv + bias
    return attention_from_qkv(qkv, mask_index, past, attention_bias, num_heads=num_heads,
                              unidirectional=unidirectional, qkv_hidden_sizes=qkv_hidden_sizes,
                              mask_filter_value=mask_filter_value, scale=scale, outputs=outputs)


@converts("MultiHeadAttention", domain=CONTRIB)
def ms_multi_head_attention(query: torch.Tensor, key: torch.Tensor | None = None, value: torch.Tensor | None = None,
                            bias: torch.Tensor | None = None, key_padding_mask: torch.Tensor | None = None,
                            attention_bias: torch.Tensor | None = None, past_key: torch.Tensor | None = None,
                            past_value: torch.Tensor | None = None, *, num_heads: int, unidirectional: int = 0,
                            mask_filter_value: float = -10000.0, scale: float = 0.0, outputs: int = 1) -> Any:
    if key is None or value is None or key.dim() != 3:
        raise NotImplementedError("MultiHeadAttention with packed QKV or key/value already split in heads")
    if bias is not None:
        hidden = query.shape[-1]
        query = query + bias[:hidden]
        key = key + bias[hidden:2 * hidden]
        value = value + bias[2 * hidden:]
    q, k, v = _heads(query, num_heads), _heads(key, num_heads), _heads(value, num_heads)
    past_len = 0
    if past_key is not None and past_value is not None:
        past_len = past_key.shape[2]
        k, v = torch.cat([past_key, k], 2), torch.cat([past_value, v], 2)
    bias_ = attention_bias_from_mask(key_padding_mask, query.shape[0], query.shape[1], k.shape[2], past_len,
                                     bool(unidirectional), mask_filter_value, query.dtype)
    if attention_bias is not None:
        bias_ = attention_bias if bias_ is None else bias_ + attention_bias
    size = q.shape[-1]
    y = _merge_heads(multi_head_attention(q, k, v, bias_, scale if scale else 1.0 / math.sqrt(size)))
    return y if outputs == 1 else (y, k, v)[:outputs]

