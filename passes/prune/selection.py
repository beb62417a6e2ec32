"""Choosing which units to prune from importance scores: a fixed count (lowest scores
first, re-scored between rounds when iterative) or the largest count whose fidelity on the
scoring samples holds a minimum cosine (binary search over the ranking), with the curve of
every count tried.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np


@dataclass
class BudgetSearch:
    """The result of a budgeted search: ``count`` pruned, and ``curve`` as
    ``{count: (cosine_mean, cosine_min)}`` for every count evaluated."""

    count: int
    curve: dict[int, tuple[float, float]] = field(default_factory=dict)


def lowest(scores: list[np.ndarray], masks: list[np.ndarray], count: int) -> list[np.ndarray]:
    """``masks`` with the ``count`` lowest-scoring still-kept units set to 0 (ties: first)."""
    flat = [(float(scores[b][h]), b, h) for b in range(len(scores)) for h in range(len(scores[b]))
            if masks[b][h] != 0]
    flat.sort(key=lambda item: (item[0], item[1], item[2]))
    result = [m.copy() for m in masks]
    for _, b, h in flat[:count]:
        result[b][h] = 0.0
    return result


def ranking(score_fn: Callable[[list[np.ndarray]], list[np.ndarray]], masks: list[np.ndarray],
            rounds: int) -> list[tuple[int, int]]:
    """Every kept unit ``(block, index)`` in pruning order, least important first.

    With ``rounds > 1`` the order is built in that many chunks, re-scoring with the earlier
    chunks masked (iterative pruning).
    """
    total = int(sum(int((m != 0).sum()) for m in masks))
    order: list[tuple[int, int]] = []
    current = [m.copy() for m in masks]
    rounds = max(1, rounds)
    for r in range(rounds):
        take = (total * (r + 1)) // rounds - len(order)
        if take <= 0:
            continue
        scores = score_fn(current)
        nxt = lowest(scores, current, take if r < rounds - 1 else total - len(order))
        chosen = [(b, h) for b in range(len(current)) for h in range(len(current[b]))
                  if current[b][h] != 0 and nxt[b][h] == 0]
        chosen.sort(key=lambda bh: (float(scores[bh[0]][bh[1]]), bh))
        order.extend(chosen)
        current = nxt
    return order


def masks_for(order: list[tuple[int, int]], count: int, masks: list[np.ndarray]) -> list[np.ndarray]:
    """``masks`` with the first ``count`` units of ``order`` set to 0."""
    result = [m.copy() for m in masks]
    for b, h in order[:count]:
        result[b][h] = 0.0
    return result


def search_budget(fidelity_fn: Callable[[int], tuple[float, float]], total: int, min_cosine: float) -> BudgetSearch:
    """The largest count in ``[0, total]`` whose ``fidelity_fn(count)`` cosine minimum holds
    ``min_cosine``, by binary search (fidelity assumed to fall as the count grows)."""
    result = BudgetSearch(0)
    low, high = 0, total
    while low < high:
        mid = (low + high + 1) // 2
        mean, worst = fidelity_fn(mid)
        result.curve[mid] = (mean, worst)
        if worst >= min_cosine:
            low = mid
        else:
            high = mid - 1
    result.count = low
    return result
