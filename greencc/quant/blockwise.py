"""Block-wise weight quantization to 4 or 8 bits in ONNX Runtime's layouts: round to
nearest (RTN), dequantization, and the packing of ``com.microsoft`` ``MatMulNBits`` (B,
scales, zero points) and ``GatherBlockQuantized`` (data, scales).

A weight ``W[K, N]`` of ``y = x @ W`` is cut along K into blocks of ``block`` rows per
output column ``n``; each block has one scale and, when asymmetric, one zero point.
Stored values are unsigned: ``w ≈ (q - zero_point) · scale`` with the default zero point
``2^(bits-1)`` when symmetric (what ONNX Runtime assumes when none is given).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from greencc.errors import UsageError

BITS = (4, 8)


@dataclass(frozen=True)
class BlockQuantized:
    """A ``[K, N]`` weight quantized in blocks along K.

    ``q``: uint8 ``[N, K // block, block]`` stored values (0 .. 2^bits - 1);
    ``scales``: float32 ``[N, K // block]``; ``zero_points``: uint8 ``[N, K // block]``
    (``None`` when symmetric: 2^(bits-1) implied); ``bits`` and ``block``.
    """

    q: np.ndarray
    scales: np.ndarray
    zero_points: np.ndarray | None
    bits: int
    block: int

    @property
    def k(self) -> int:
        """Rows of the weight (the reduction dim K)."""
        return int(self.q.shape[1] * self.q.shape[2])

    @property
    def n(self) -> int:
        """Columns of the weight (the output dim N)."""
        return int(self.q.shape[0])

    def dequantize(self) -> np.ndarray:
        """The float32 ``[K, N]`` weight ONNX Runtime computes with."""
        zero = self.zero_points if self.zero_points is not None else np.full(self.scales.shape, 1 << (self.bits - 1))
        values = (self.q.astype(np.float32) - zero[..., None].astype(np.float32)) * self.scales[..., None]
        return values.reshape(self.n, self.k).T.copy()

    def packed_bytes(self) -> int:
        """Bytes of the packed weight, scales and zero points as MatMulNBits stores them."""
        b, scales, zero = pack_matmul_nbits(self)
        return b.nbytes + scales.nbytes + (zero.nbytes if zero is not None else 0)


def check_layout(k: int, bits: int, block: int) -> str | None:
    """``None`` when a weight with ``k`` rows can be quantized in blocks of ``block`` at
    ``bits``, else the reason (MatMulNBits wants a power-of-two block of at least 16)."""
    if bits not in BITS:
        return f"bits={bits}: MatMulNBits here takes {' or '.join(map(str, BITS))}"
    if block < 16 or block & (block - 1):
        return f"block={block} is not a power of two >= 16"
    if k % block:
        return f"K={k} is not divisible by block={block}"
    return None


def quantize_rtn(w: np.ndarray, bits: int = 4, block: int = 32, symmetric: bool = True) -> BlockQuantized:
    """Round-to-nearest block quantization of ``w`` ``[K, N]`` (float).

    Symmetric: the value of largest magnitude in a block maps to ``-2^(bits-1)`` exactly
    (scale = that value / -2^(bits-1)), as ONNX Runtime's own quantizer does, so the full
    signed range is used. Asymmetric: ``[min(w, 0), max(w, 0)]`` spans ``0 .. 2^bits - 1``.
    Raises ``UsageError`` when :func:`check_layout` refuses the shape.
    """
    w = np.asarray(w, dtype=np.float32)
    if w.ndim != 2:
        raise UsageError(f"block quantization takes a 2-D weight, got shape {list(w.shape)}")
    reason = check_layout(w.shape[0], bits, block)
    if reason is not None:
        raise UsageError(f"cannot block-quantize a {list(w.shape)} weight: {reason}")
    blocks = w.T.reshape(w.shape[1], w.shape[0] // block, block)
    scales, zero_points = block_params(blocks, bits, symmetric)
    return BlockQuantized(quantize_blocks(blocks, scales, zero_points, bits), scales, zero_points, bits, block)


def block_params(blocks: np.ndarray, bits: int, symmetric: bool) -> tuple[np.ndarray, np.ndarray | None]:
    """Scales (float32) and zero points (uint8, ``None`` when symmetric) of ``blocks``
    ``[..., block]``, one per block (see :func:`quantize_rtn`)."""
    levels = 1 << bits
    if symmetric:
        index = np.abs(blocks).argmax(axis=-1)[..., None]
        extreme = np.take_along_axis(blocks, index, axis=-1)[..., 0]
        return (extreme / -(levels >> 1)).astype(np.float32), None
    low = np.minimum(blocks.min(axis=-1), 0.0)
    high = np.maximum(blocks.max(axis=-1), 0.0)
    scales = ((high - low) / (levels - 1)).astype(np.float32)
    safe = np.where(scales == 0, 1.0, scales)
    zero = np.where(scales == 0, levels >> 1, np.round(-low / safe))
    return scales, np.clip(zero, 0, levels - 1).astype(np.uint8)


def quantize_blocks(values: np.ndarray, scales: np.ndarray, zero_points: np.ndarray | None, bits: int) -> np.ndarray:
    """``values`` ``[..., block]`` rounded to stored uint8 levels with one scale and zero
    point per block (``scales`` and ``zero_points`` shaped ``values.shape[:-1]``)."""
    levels = 1 << bits
    zero = (zero_points if zero_points is not None else np.full(scales.shape, levels >> 1)).astype(np.float32)
    safe = np.where(scales == 0, 1.0, scales)[..., None]
    q = np.round(values / safe) + zero[..., None]
    q = np.where(scales[..., None] == 0, zero[..., None], q)
    return np.clip(q, 0, levels - 1).astype(np.uint8)


def _pack_nibbles(values: np.ndarray) -> np.ndarray:
    """Pairs of 4-bit values along the last axis into bytes, the first in the low nibble
    (an odd count is padded with 0)."""
    if values.shape[-1] % 2:
        values = np.concatenate([values, np.zeros((*values.shape[:-1], 1), np.uint8)], axis=-1)
    return (values[..., 0::2] | (values[..., 1::2] << 4)).astype(np.uint8)


def pack_matmul_nbits(weight: BlockQuantized) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """``(B, scales, zero_points)`` as MatMulNBits takes them: B uint8
    ``[N, K/block, block·bits/8]`` (4-bit values two per byte, low nibble first), scales
    ``[N, K/block]`` float32, zero points uint8 ``[N, ceil(K/block·bits/8)]`` or ``None``."""
    if weight.bits == 4:
        b = _pack_nibbles(weight.q)
        zero = _pack_nibbles(weight.zero_points) if weight.zero_points is not None else None
    else:
        b = weight.q.copy()
        zero = weight.zero_points.copy() if weight.zero_points is not None else None
    return b, weight.scales.copy(), zero


def quantize_embedding(table: np.ndarray, bits: int = 4, block: int = 32,
                       symmetric: bool = True) -> tuple[np.ndarray, np.ndarray, np.ndarray | None, np.ndarray]:
    """An embedding table ``[V, H]`` quantized along H for GatherBlockQuantized:
    ``(data uint8 [V, H·bits/8], scales float32 [V, H/block], zero points uint8 (packed as
    data) or None, dequantized float32 [V, H])``. Raises ``UsageError`` when H is not a
    multiple of ``block``."""
    table = np.asarray(table, dtype=np.float32)
    reason = check_layout(table.shape[-1], bits, block) if table.ndim == 2 else "the table is not 2-D"
    if reason is not None:
        raise UsageError(f"cannot block-quantize an embedding of shape {list(table.shape)}: {reason}")
    vocab, hidden = table.shape
    blocks = table.reshape(vocab, hidden // block, block)
    scales, zero_points = block_params(blocks, bits, symmetric)
    q = quantize_blocks(blocks, scales, zero_points, bits)
    weight = BlockQuantized(q, scales, zero_points, bits, block)
    dequantized = weight.dequantize().T.reshape(vocab, hidden)
    flat = q.reshape(vocab, hidden)
    if bits == 4:
        return _pack_nibbles(flat), scales, _pack_nibbles(zero_points) if zero_points is not None else None, dequantized
    return flat, scales, zero_points, dequantized
