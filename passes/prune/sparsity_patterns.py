"""Sparsity patterns on weight matrices, as masks chosen from scores and checked exactly.

Weights are viewed as ``[K, N]``: ``K`` the reduction axis (MatMul ``[in, out]`` rows; a
Gemm with ``transB`` or a Conv ``[O, I, kh, kw]`` is transposed/flattened to it). Patterns:

- ``unstructured``: in every output column, the ``ratio`` lowest-scoring entries are zero;
- ``2:4``: in every group of 4 consecutive entries along ``K`` of a column, at least 2 are
  zero (NVIDIA's sparse tensor cores, Ampere and later);
- ``block:RxC``: ``ratio`` of the ``R×C`` blocks (``R`` along K) are entirely zero, the
  blocks with the lowest summed score.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np

from greencc.errors import UsageError

_BLOCK = re.compile(r"^block:(\d+)x(\d+)$")


@dataclass(frozen=True)
class Pattern:
    """A parsed pattern: ``kind`` (unstructured, 2:4, block) and the block size."""

    kind: str
    rows: int = 1
    cols: int = 1

    @classmethod
    def parse(cls, text: str) -> Pattern:
        """``unstructured``, ``2:4`` or ``block:RxC``; ``UsageError`` otherwise."""
        if text in ("unstructured", "2:4"):
            return cls(text)
        match = _BLOCK.match(text)
        if match and int(match.group(1)) > 0 and int(match.group(2)) > 0:
            return cls("block", int(match.group(1)), int(match.group(2)))
        raise UsageError(f"unknown sparsity pattern '{text}'", hint="use unstructured, 2:4 or block:RxC (e.g. block:4x4)")

    def __str__(self) -> str:
        return f"block:{self.rows}x{self.cols}" if self.kind == "block" else self.kind

    def fits(self, k: int, n: int) -> str:
        """Why a ``[k, n]`` matrix cannot take this pattern ("" when it can)."""
        if self.kind == "2:4" and k % 4:
            return f"the reduction axis ({k}) is not a multiple of 4"
        if self.kind == "block" and (k % self.rows or n % self.cols):
            return f"[{k}, {n}] is not a whole number of {self.rows}x{self.cols} blocks"
        return ""


def keep_mask(scores: np.ndarray, pattern: Pattern, ratio: float) -> np.ndarray:
    """A boolean ``[K, N]`` mask of the entries kept; ``scores`` is ``[K, N]``, higher kept."""
    k, n = scores.shape
    if pattern.kind == "2:4":
        groups = scores.reshape(k // 4, 4, n)
        order = np.argsort(groups, axis=1, kind="stable")
        mask = np.ones_like(groups, dtype=bool)
        np.put_along_axis(mask, order[:, :2, :], False, axis=1)
        return mask.reshape(k, n)
    if pattern.kind == "unstructured":
        drop = int(round(ratio * k))
        mask = np.ones((k, n), dtype=bool)
        if drop:
            order = np.argsort(scores, axis=0, kind="stable")
            np.put_along_axis(mask, order[:drop, :], False, axis=0)
        return mask
    r, c = pattern.rows, pattern.cols
    blocks = scores.reshape(k // r, r, n // c, c).sum(axis=(1, 3))
    drop = int(round(ratio * blocks.size))
    keep_blocks = np.ones(blocks.size, dtype=bool)
    keep_blocks[np.argsort(blocks.ravel(), kind="stable")[:drop]] = False
    keep_blocks = keep_blocks.reshape(blocks.shape)
    return np.repeat(np.repeat(keep_blocks, r, axis=0), c, axis=1)


def satisfies(weight: np.ndarray, pattern: Pattern, ratio: float) -> bool:
    """Whether a ``[K, N]`` weight holds ``pattern`` exactly (zeros where it demands)."""
    k, n = weight.shape
    zero = weight == 0
    if pattern.kind == "2:4":
        return bool((zero.reshape(k // 4, 4, n).sum(axis=1) >= 2).all())
    if pattern.kind == "unstructured":
        return bool((zero.sum(axis=0) >= int(round(ratio * k))).all())
    r, c = pattern.rows, pattern.cols
    whole = zero.reshape(k // r, r, n // c, c).all(axis=(1, 3))
    return int(whole.sum()) >= int(round(ratio * whole.size))


def density(weight: np.ndarray) -> float:
    """Fraction of non-zero entries."""
    return float(np.count_nonzero(weight)) / max(1, weight.size)
