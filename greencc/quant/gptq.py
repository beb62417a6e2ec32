"""GPTQ: block-wise weight quantization that compensates each rounding error on the
weights not yet quantized, using the Hessian ``X^T X`` of the layer's calibration inputs
(Frantar et al., "GPTQ: Accurate Post-Training Quantization for Generative Pre-trained
Transformers", ICLR 2023, Algorithm 1), and the one pass over calibration data that
collects those Hessians.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from greencc.data import as_calibration
from greencc.errors import UsageError
from greencc.model import Model
from greencc.quant.blockwise import BlockQuantized, block_params, check_layout, quantize_blocks
from greencc.quant.collect import iter_intermediates
from greencc.verify.session import RunsModels

# Dampening added to the Hessian's diagonal, as a fraction of its mean (the paper's 1%).
DAMP = 0.01
# Times the dampening is multiplied by 10 when the dampened Hessian is still not positive definite.
DAMP_RETRIES = 4


def quantize_gptq(w: np.ndarray, hessian: np.ndarray, bits: int = 4, block: int = 32, symmetric: bool = True, *,
                  act_order: bool = True, damp: float = DAMP) -> BlockQuantized:
    """``w`` ``[K, N]`` (of ``y = x @ w``) quantized in blocks of ``block`` rows with GPTQ.

    ``hessian`` is ``X^T X`` ``[K, K]`` of the layer's inputs (any positive scale). Rows are
    quantized one at a time and the error of each, divided by the inverse Hessian's
    diagonal, is spread over the rows still to come, weighted by the upper Cholesky factor
    of ``H^-1``. ``act_order`` quantizes the rows of largest ``H_kk`` (the inputs with the
    most energy) first; block scales are then fixed from the unmodified weight beforehand
    ("static groups"), so every block keeps one scale whatever the order. Without it, each
    block's scale is chosen from its error-compensated rows when the block begins. Inputs
    that never fire (``H_kk = 0``) get zero weight rows.
    """
    w = np.asarray(w, dtype=np.float64)
    k, n = w.shape
    reason = check_layout(k, bits, block)
    if reason is not None:
        raise UsageError(f"cannot GPTQ-quantize a {[k, n]} weight: {reason}")
    if hessian.shape != (k, k):
        raise UsageError(f"the Hessian is {list(hessian.shape)}, the weight has K={k}")
    weights = w.T.copy()  # [N, K]: one row per output, as the paper writes it
    h = np.asarray(hessian, dtype=np.float64).copy()
    dead = np.diag(h) == 0
    h[dead, dead] = 1.0
    weights[:, dead] = 0.0
    blocks = k // block
    scales = np.zeros((n, blocks), np.float32)
    zeros: np.ndarray | None = None if symmetric else np.zeros((n, blocks), np.uint8)
    if act_order:
        scales, zeros = block_params(weights.reshape(n, blocks, block), bits, symmetric)
        order = np.argsort(-np.diag(h), kind="stable")
    else:
        order = np.arange(k)
    weights = weights[:, order]
    h = h[np.ix_(order, order)]
    upper = _inverse_cholesky(h, damp)
    q = np.zeros((n, k), np.uint8)
    for i, column in enumerate(order):
        group = column // block
        if not act_order and column % block == 0:
            s, z = block_params(weights[:, i:i + block].astype(np.float32), bits, symmetric)
            scales[:, group] = s
            if zeros is not None and z is not None:
                zeros[:, group] = z
        s = scales[:, group]
        z = zeros[:, group] if zeros is not None else None
        stored = quantize_blocks(weights[:, i:i + 1].astype(np.float32), s, z, bits)[:, 0]
        zero = z.astype(np.float64) if z is not None else float(1 << (bits - 1))
        value = (stored.astype(np.float64) - zero) * s
        error = (weights[:, i] - value) / upper[i, i]
        weights[:, i + 1:] -= np.outer(error, upper[i, i + 1:])
        q[:, column] = stored
    return BlockQuantized(q.reshape(n, blocks, block), scales.astype(np.float32), zeros, bits, block)


def _inverse_cholesky(h: np.ndarray, damp: float) -> np.ndarray:
    """The upper Cholesky factor ``U`` of ``(H + λI)^-1`` (``U^T U = (H + λI)^-1``), ``λ``
    = ``damp`` × mean diagonal, raised tenfold until the matrix is positive definite."""
    mean = float(np.mean(np.diag(h)))
    for attempt in range(DAMP_RETRIES + 1):
        damped = h + np.eye(len(h)) * damp * (10 ** attempt) * mean
        try:
            inverse = np.linalg.inv(np.linalg.cholesky(damped))  # L^-1
            return np.linalg.cholesky(inverse.T @ inverse).T
        except np.linalg.LinAlgError:
            continue
    raise UsageError("the calibration Hessian is not positive definite even after dampening",
                     hint="give more (and more varied) calibration samples")


def collect_hessians(model: Model, data: Any, tensors: Sequence[str], *, executor: RunsModels,
                     mask_input: str = "attention_mask") -> dict[str, np.ndarray]:
    """``X^T X`` (float64 ``[K, K]``) of each tensor in ``tensors``, its rows every position
    (all axes but the last) over every calibration batch, run on ``executor``.

    Positions that ``mask_input`` (a 2-D ``[batch, total]`` mask, 0 = padding) marks as
    padding are left out, matched on the last ``seq`` columns when a tensor's leading dims
    are ``[batch, seq]``. ``data`` is anything :func:`greencc.data.as_calibration` takes."""
    hessians: dict[str, np.ndarray] = {}
    names = list(dict.fromkeys(tensors))
    batches = as_calibration(data, model).batches()
    for feeds, values in zip(batches, iter_intermediates(model, batches, names, executor=executor), strict=True):
        mask = feeds.get(mask_input)
        for name in names:
            rows = _valid_rows(np.asarray(values[name]), mask)
            product = rows.T @ rows
            hessians[name] = hessians[name] + product if name in hessians else product
    return hessians


def _valid_rows(x: np.ndarray, mask: np.ndarray | None) -> np.ndarray:
    """``x`` as float64 rows ``[positions, K]``, padded positions left out."""
    x = x.astype(np.float64)
    if mask is not None and np.ndim(mask) == 2 and x.ndim >= 3 and x.shape[0] == mask.shape[0] \
            and x.shape[1] <= mask.shape[1]:
        keep = np.asarray(mask)[:, -x.shape[1]:] != 0
        return x[keep].reshape(-1, x.shape[-1])
    return x.reshape(-1, x.shape[-1])

