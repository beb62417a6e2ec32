"""Label-free head importance: how much each attention head matters to the model's output
on unlabelled calibration data, computed on a head-masked copy run by the executor.

Scores (higher = more important), per head ``h`` with mask ``ξ`` (``ξ = 1`` is the model):

- ``ablation``: ``E_x ‖y(ξ−e_h) − y(1)‖² / ‖y(1)‖²`` — the relative squared output change
  when the head alone is removed (one forward run per head and sample).
- ``fisher``: ``E_x ‖∂y/∂ξ_h‖² / ‖y(1)‖²`` by central differences ``(y(1+εe_h) −
  y(1−εe_h)) / 2ε`` — the diagonal of the Gauss–Newton matrix, i.e. the empirical Fisher
  information of ``ξ_h`` under a unit-variance Gaussian output model ``N(y(ξ), I)`` with
  labels sampled from the model itself. The plain gradient of a label-free loss
  (``KL(original ‖ masked)``, or ``‖y(ξ) − y(1)‖²``) is exactly zero at ``ξ = 1``
  (Michel et al. 2019 need labels); the Fisher diagonal is the second-order Taylor term
  ``ΔL ≈ ½·F_hh`` of removing the head.
- ``magnitude``: ``‖W_q[:,h]‖² + ‖W_k[:,h]‖² + ‖W_v[:,h]‖² + ‖W_o[h,:]‖²`` (no data).
- ``random``: a seeded uniform draw (the baseline pruning has to beat).

``rescore`` computes scores with some heads already masked (iterative pruning).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field

import numpy as np

from greencc.passes.lib.graph_edits import constant_array

from .head_blocks import HeadBlocks
from .head_mask import HeadMaskedModel

SCORES = ("ablation", "fisher", "magnitude", "random")
# Step of the central difference on a head mask: small against 1, large against float32
# rounding of outputs (~1e-7 relative).
FISHER_EPSILON = 1e-2


@dataclass
class HeadScore:
    """One head's importance (``score``, unitless, higher = more important)."""

    block: int
    block_name: str
    head: int
    score: float


@dataclass
class HeadImportance:
    """Per-head scores of one model by ``method`` over ``samples`` inputs from ``source``."""

    method: str
    samples: int
    source: str
    scores: list[HeadScore] = field(default_factory=list)

    def by_block(self) -> list[np.ndarray]:
        """Scores as one array per block (blocks in graph order)."""
        blocks: dict[int, list[HeadScore]] = {}
        for s in self.scores:
            blocks.setdefault(s.block, []).append(s)
        return [np.array([s.score for s in sorted(blocks[b], key=lambda s: s.head)]) for b in sorted(blocks)]

    def to_dict(self) -> dict:
        """JSON-safe dict (the per-head score report)."""
        return {"method": self.method, "samples": self.samples, "source": self.source,
                "scores": [asdict(s) for s in self.scores]}

    def to_text(self) -> str:
        """A printable table: one row per block, one column per head."""
        lines = [f"head importance ({self.method}, {self.samples} {self.source} samples)"]
        names = {s.block: s.block_name for s in self.scores}
        for b, row in enumerate(self.by_block()):
            cells = " ".join(f"{v:9.3g}" for v in row)
            lines.append(f"  block {b} {names.get(b, '')}: {cells}")
        return "\n".join(lines)


def head_importance(
    masked: HeadMaskedModel,
    samples: Sequence[Mapping[str, np.ndarray]],
    method: str,
    *,
    source: str = "calibration",
    base_masks: Sequence[np.ndarray] | None = None,
    seed: int = 0,
    progress: Callable[[int, int], None] | None = None,
) -> HeadImportance:
    """Score every head of ``masked``'s blocks with ``method`` (one of :data:`SCORES`).

    ``base_masks`` (per block, 0/1) marks heads already removed: they score ``-inf`` and
    the others are measured with them masked. Units: unitless ratios (see module doc).
    ``progress(done, total)`` is called as each sample's blocks are scored.
    """
    if method not in SCORES:
        raise ValueError(f"unknown head score '{method}'")
    base = [np.asarray(m, dtype=np.float32).copy() for m in (base_masks or masked.ones())]
    found = masked.found
    if method == "magnitude":
        values = _magnitude(masked, found)
    elif method == "random":
        rng = np.random.default_rng(seed)
        values = [rng.random(h) for h in masked.heads]
    else:
        values = _measured(masked, samples, method, base, progress)
    result = HeadImportance(method, len(samples) if method in ("ablation", "fisher") else 0, source)
    for block, row in zip(found.blocks, values, strict=True):
        for h, value in enumerate(row):
            score = float(value) if base[block.index][h] != 0 else float("-inf")
            result.scores.append(HeadScore(block.index, block.name, h, score))
    return result


def _measured(masked: HeadMaskedModel, samples: Sequence[Mapping[str, np.ndarray]], method: str,
              base: list[np.ndarray], progress: Callable[[int, int], None] | None) -> list[np.ndarray]:
    values = [np.zeros(h) for h in masked.heads]
    total = len(samples) * len(masked.heads)
    for index, feeds in enumerate(samples):
        reference = _flat(masked.run(feeds, base))
        norm = float(np.dot(reference, reference)) or 1.0
        for b, heads in enumerate(masked.heads):
            for h in range(heads):
                if base[b][h] == 0:
                    continue
                if method == "ablation":
                    masks = _with(base, b, h, 0.0)
                    change = _flat(masked.run(feeds, masks)) - reference
                else:
                    up = _flat(masked.run(feeds, _with(base, b, h, 1.0 + FISHER_EPSILON)))
                    down = _flat(masked.run(feeds, _with(base, b, h, 1.0 - FISHER_EPSILON)))
                    change = (up - down) / (2 * FISHER_EPSILON)
                values[b][h] += float(np.dot(change, change)) / norm
            if progress is not None:
                progress(index * len(masked.heads) + b + 1, total)
    return [v / max(1, len(samples)) for v in values]


def _with(base: list[np.ndarray], block: int, head: int, value: float) -> list[np.ndarray]:
    masks = [m.copy() for m in base]
    masks[block][head] = value
    return masks


def _flat(outputs: Sequence[np.ndarray]) -> np.ndarray:
    parts = [np.asarray(o, dtype=np.float64).ravel() for o in outputs if np.asarray(o).dtype.kind == "f"]
    return np.concatenate(parts) if parts else np.zeros(0)


def _magnitude(masked: HeadMaskedModel, found: HeadBlocks) -> list[np.ndarray]:
    graph = masked.model.graph
    values = []
    for block in found.blocks:
        heads, d = block.num_heads, block.head_size
        row = np.zeros(heads)
        info = block.heads
        for name, columns in ((info.q_weight, info.q_columns), (info.k_weight, info.k_columns),
                              (info.v_weight, info.v_columns)):
            weight = constant_array(graph.initializers.get(name)) if name in graph.initializers else None
            if weight is None:
                continue
            weight = weight.T if info.transposed else weight
            part = np.asarray(weight[:, columns[0]:columns[1]], dtype=np.float64)
            row += (part.reshape(part.shape[0], heads, d) ** 2).sum(axis=(0, 2))
        o_weight = constant_array(block.o_node.inputs[1])
        if o_weight is not None:
            o = np.asarray(o_weight.T if block.o_transposed else o_weight, dtype=np.float64)
            row += (o.reshape(heads, d, -1) ** 2).sum(axis=(1, 2))
        values.append(row)
    return values
