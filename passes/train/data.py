"""The distillation data of ``recover``: the run's calibration feeds or an ``.npz``, cut
into rows (one sample each), split into a training and a held-out part with the compile's
seed, and grouped into batches in a seeded order. Everything here is numpy: the order
depends only on the seed and the data, never on torch.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from greencc.data import as_calibration, load_npz_samples
from greencc.errors import UsageError
from greencc.model import Model

Feeds = dict[str, np.ndarray]


@dataclass(frozen=True)
class DistillData:
    """Rows to train on and rows held out for early stopping, and whether rows may be
    stacked along axis 0 into one batch (every input's first dim is symbolic)."""

    train: list[Feeds]
    held_out: list[Feeds]
    stackable: bool


def load_rows(model: Model, source: str, calibration: object) -> list[Feeds]:
    """The rows of ``source``: ``"calib"`` reads ``calibration`` (the run's calibration
    data), anything else is the path of an ``.npz`` named after ``model``'s inputs. A feed
    whose inputs share a leading size above one is cut into rows along axis 0. Raises
    ``UsageError`` when there is no data."""
    if source == "calib":
        if calibration is None:
            raise UsageError("recover: data=calib but the run has no calibration data",
                             hint="give calibration data (--calib FILE.npz) or data=PATH.npz")
        feeds: Iterable[Mapping[str, np.ndarray]] = as_calibration(calibration, model)
    else:
        feeds = load_npz_samples(source, model)
    rows = [row for feed in feeds for row in split_rows(model.check_feeds(feed))]
    if not rows:
        raise UsageError(f"recover: no distillation samples in {source}")
    return rows


def split_rows(feeds: Mapping[str, np.ndarray]) -> list[Feeds]:
    """``feeds`` cut into one-sample rows along axis 0 when every input has that axis with
    the same size; otherwise ``feeds`` itself as the only row."""
    sizes = {array.shape[0] if np.ndim(array) else -1 for array in feeds.values()}
    size = sizes.pop() if len(sizes) == 1 else -1
    if size <= 1:
        return [dict(feeds)]
    return [{name: array[i : i + 1] for name, array in feeds.items()} for i in range(size)]


def split(model: Model, rows: Sequence[Feeds], held_out: float, seed: int) -> DistillData:
    """A seeded permutation of ``rows``: the last ``held_out`` fraction (at least one row,
    and at least one row left to train on) is held out. Raises ``UsageError`` for fewer
    than two rows."""
    if len(rows) < 2:
        raise UsageError(f"recover: {len(rows)} distillation sample(s); early stopping needs at least two",
                         hint="give more calibration samples, or data=PATH.npz")
    order = np.random.default_rng(seed).permutation(len(rows))
    count = min(len(rows) - 1, max(1, int(round(held_out * len(rows)))))
    cut = len(rows) - count
    stackable = all(spec.shape is not None and spec.shape and not isinstance(spec.shape[0], int)
                    for spec in model.inputs)
    return DistillData([rows[i] for i in order[:cut]], [rows[i] for i in order[cut:]], stackable)


def batches(rows: Sequence[Feeds], size: int, stackable: bool) -> list[list[Feeds]]:
    """``rows`` in groups of ``size``; each group is one feed (stacked along axis 0) where
    ``stackable`` and the rows' trailing shapes agree, else its rows run one by one and
    their gradients accumulate."""
    groups = [list(rows[i : i + size]) for i in range(0, len(rows), size)]
    return [[stacked] if stackable and (stacked := stack(group)) is not None else group for group in groups]


def stack(rows: Sequence[Feeds]) -> Feeds | None:
    """``rows`` concatenated along axis 0, or ``None`` when their trailing shapes differ."""
    if len(rows) == 1:
        return rows[0]
    names = list(rows[0])
    merged: Feeds = {}
    for name in names:
        parts = [row[name] for row in rows]
        if any(p.ndim == 0 or p.shape[1:] != parts[0].shape[1:] or p.dtype != parts[0].dtype for p in parts):
            return None
        merged[name] = np.concatenate(parts, axis=0)
    return merged


def epoch_order(count: int, seed: int, epoch: int) -> np.ndarray:
    """The order rows are visited in during ``epoch``: a permutation seeded by both."""
    return np.random.default_rng([seed, epoch]).permutation(count)
