"""Fidelity metrics of a rewritten model against the reference: cosine similarity, max
absolute and relative error, task accuracy with labels, and for language models perplexity
on the samples' next tokens and greedy (argmax) agreement with the reference; the budget
lossy passes must keep; and the tolerance exact passes must meet (by dtype).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from greencc.errors import UsageError
from greencc.model import Model

# Exact passes may only reorder float arithmetic: |got - ref| <= atol + rtol * max|ref|.
EXACT_TOLERANCE: dict[str, tuple[float, float]] = {
    "float64": (1e-9, 1e-7),
    "float32": (1e-5, 1e-4),
    "float16": (1e-3, 1e-2),
    "bfloat16": (1e-2, 2e-2),
}


@dataclass
class Fidelity:
    """How close outputs are to the reference over ``samples`` feed dicts.

    ``cosine_mean``/``cosine_min``: cosine similarity of each sample's flattened float
    outputs; ``max_abs_error``; ``max_rel_error`` (relative to the largest |reference|);
    ``accuracy``/``reference_accuracy`` when labels are given (fraction 0..1). For a
    language model (see :class:`TokenTargets`): ``perplexity`` / ``reference_perplexity``
    (exp of the mean negative log-likelihood of the next tokens, per token of the model's
    vocabulary) and ``agreement`` (fraction 0..1 of unpadded positions where the argmax of
    the logits equals the reference's).
    """

    cosine_mean: float
    cosine_min: float
    max_abs_error: float
    max_rel_error: float
    samples: int
    accuracy: float | None = None
    reference_accuracy: float | None = None
    perplexity: float | None = None
    reference_perplexity: float | None = None
    agreement: float | None = None

    @property
    def perplexity_ratio(self) -> float | None:
        """``perplexity / reference_perplexity`` (1.02 = 2% worse), ``None`` when not measured."""
        if self.perplexity is None or not self.reference_perplexity:
            return None
        return self.perplexity / self.reference_perplexity

    def to_dict(self) -> dict:
        """JSON-safe dict."""
        return asdict(self)


_BUDGET_RANGES: dict[str, tuple[str, float, bool, float]] = {
    # field: (budget key, low bound, low bound excluded, high bound included)
    "min_cosine": ("cos", 0.0, True, 1.0),
    "max_abs_error": ("abs", 0.0, False, math.inf),
    "max_accuracy_drop": ("acc", 0.0, False, 1.0),
    "max_perplexity_ratio": ("ppl", 1.0, False, math.inf),
    "min_agreement": ("agree", 0.0, True, 1.0),
}


def _describe_range(low: float, low_open: bool, high: float) -> str:
    return f"{'(' if low_open else '['}{low:g}, {'inf)' if math.isinf(high) else f'{high:g}]'}"


@dataclass(frozen=True)
class FidelityBudget:
    """What a lossy pipeline may lose: ``cos=0.99`` (min cosine), ``abs=1e-3`` (max abs
    error), ``acc=0.01`` (max accuracy drop, absolute fraction), and for language models
    ``ppl=1.02`` (max perplexity ratio to the reference: +2%) and ``agree=0.95`` (min
    greedy agreement, fraction). A term a model cannot be checked against (``acc`` without
    labels, a language-model term on another model) is refused: see :meth:`uncheckable`."""

    min_cosine: float | None = None
    max_abs_error: float | None = None
    max_accuracy_drop: float | None = None
    max_perplexity_ratio: float | None = None
    min_agreement: float | None = None

    def __post_init__(self) -> None:
        # A NaN bound compares false against every score and so would silently disable the guard.
        for name, (key, low, low_open, high) in _BUDGET_RANGES.items():
            value = getattr(self, name)
            if value is None:
                continue
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise UsageError(f"fidelity budget {key}={value!r} is not a number")
            if not math.isfinite(value) or value < low or (low_open and value == low) or value > high:
                raise UsageError(f"fidelity budget {key}={value} is out of range",
                                 hint=f"{key} takes a finite value in {_describe_range(low, low_open, high)}")

    @classmethod
    def parse(cls, text: str) -> FidelityBudget:
        """Parse ``"cos=0.99,abs=1e-3,acc=0.01,ppl=1.02,agree=0.95"`` (any subset);
        ``UsageError`` if bad."""
        fields = {"cos": "min_cosine", "abs": "max_abs_error", "acc": "max_accuracy_drop",
                  "ppl": "max_perplexity_ratio", "agree": "min_agreement"}
        values: dict[str, float] = {}
        for part in filter(None, (p.strip() for p in text.split(","))):
            key, _, raw = part.partition("=")
            if key.strip() not in fields or not raw:
                raise UsageError(
                    f"bad fidelity budget '{text}'",
                    hint="write it as cos=0.99,abs=1e-3,acc=0.01 (language models: ppl=1.02,agree=0.95)",
                )
            try:
                values[fields[key.strip()]] = float(raw)
            except ValueError:
                raise UsageError(f"bad number '{raw}' in fidelity budget '{text}'") from None
        return cls(**values)

    def uncheckable(self, *, labels: bool, language_model: bool) -> list[str]:
        """The terms of this budget that cannot be checked (each with what it lacks):
        ``acc`` without ``labels``, ``ppl`` and ``agree`` on a model that is not a
        ``language_model`` (an ``input_ids`` input and a ``logits`` output)."""
        missing = []
        if self.max_accuracy_drop is not None and not labels:
            missing.append(f"acc={self.max_accuracy_drop} needs labels (one per calibration sample)")
        for key, value in (("ppl", self.max_perplexity_ratio), ("agree", self.min_agreement)):
            if value is not None and not language_model:
                missing.append(f"{key}={value} needs a language model (an 'input_ids' input and a 'logits' output)")
        return missing

    def check(self, fidelity: Fidelity) -> str | None:
        """``None`` when ``fidelity`` is within budget, else the reason it is not."""
        if self.min_cosine is not None and fidelity.cosine_min < self.min_cosine:
            return f"min cosine {fidelity.cosine_min:.5f} < budget {self.min_cosine}"
        if self.max_abs_error is not None and fidelity.max_abs_error > self.max_abs_error:
            return f"max abs error {fidelity.max_abs_error:.3g} > budget {self.max_abs_error}"
        if (
            self.max_accuracy_drop is not None
            and fidelity.accuracy is not None
            and fidelity.reference_accuracy is not None
            and fidelity.reference_accuracy - fidelity.accuracy > self.max_accuracy_drop
        ):
            return (
                f"accuracy {fidelity.accuracy:.4f} dropped more than {self.max_accuracy_drop} "
                f"from {fidelity.reference_accuracy:.4f}"
            )
        ratio = fidelity.perplexity_ratio
        if self.max_perplexity_ratio is not None and ratio is not None and ratio > self.max_perplexity_ratio:
            return (f"perplexity {fidelity.perplexity:.4f} is {ratio:.4f}x the reference's "
                    f"{fidelity.reference_perplexity:.4f} > budget {self.max_perplexity_ratio}")
        if self.min_agreement is not None and fidelity.agreement is not None and fidelity.agreement < self.min_agreement:
            return f"greedy agreement {fidelity.agreement:.4f} < budget {self.min_agreement}"
        return None

    def primary_metric(self) -> Callable[[Fidelity], float]:
        """The score (higher is better) that ranks how much fidelity a change costs under
        this budget: minus the perplexity ratio, else the agreement, else the min cosine
        (for a model where the budget's metric is not measured, the min cosine)."""
        if self.max_perplexity_ratio is not None:
            return lambda f: -f.perplexity_ratio if f.perplexity_ratio is not None else f.cosine_min
        if self.min_agreement is not None:
            return lambda f: f.agreement if f.agreement is not None else f.cosine_min
        return lambda f: f.cosine_min

    def __str__(self) -> str:
        parts = []
        if self.min_cosine is not None:
            parts.append(f"cos={self.min_cosine}")
        if self.max_abs_error is not None:
            parts.append(f"abs={self.max_abs_error}")
        if self.max_accuracy_drop is not None:
            parts.append(f"acc={self.max_accuracy_drop}")
        if self.max_perplexity_ratio is not None:
            parts.append(f"ppl={self.max_perplexity_ratio}")
        if self.min_agreement is not None:
            parts.append(f"agree={self.min_agreement}")
        return ",".join(parts)


@dataclass(frozen=True)
class TokenTargets:
    """What a language model's logits are scored against, per sample: ``logits_index``
    (the position of the ``logits`` output among the graph outputs), ``targets`` (int64
    ``[batch, seq]``: the next token each position must predict, -1 where there is none)
    and ``valid`` (bool ``[batch, seq]``: unpadded positions, where agreement is counted).
    """

    logits_index: int
    targets: tuple[np.ndarray, ...]
    valid: tuple[np.ndarray, ...]

    @classmethod
    def of(cls, model: Model, samples: Sequence[Mapping[str, np.ndarray]]) -> TokenTargets | None:
        """The targets of ``samples`` for ``model``, or ``None`` when it is not a language
        model (no ``input_ids`` input or no ``logits`` output).

        Teacher forcing: position *t* of a sample predicts its token *t + 1* where both are
        unpadded (the last ``seq`` columns of a 2-D ``attention_mask``, 0 = padding); the
        last position of each sample, and a decode step (``seq`` = 1), have no target but
        count for agreement."""
        if not is_language_model(model):
            return None
        names = [spec.name for spec in model.outputs]
        targets, valid = [], []
        for feeds in samples:
            ids = np.asarray(feeds["input_ids"])
            mask = feeds.get("attention_mask")
            keep = np.ones(ids.shape, bool) if mask is None or np.ndim(mask) != 2 \
                else np.asarray(mask)[:, -ids.shape[1]:] != 0
            target = np.full(ids.shape, -1, np.int64)
            both = keep[:, :-1] & keep[:, 1:]
            target[:, :-1] = np.where(both, ids[:, 1:], -1)
            targets.append(target)
            valid.append(keep)
        return cls(names.index("logits"), tuple(targets), tuple(valid))


def language_model_scores(
    reference: Sequence[Sequence[np.ndarray]], candidate: Sequence[Sequence[np.ndarray]], tokens: TokenTargets
) -> tuple[float | None, float | None, float | None]:
    """``(perplexity, reference perplexity, agreement)`` of the candidate's logits (see
    :class:`Fidelity`); a perplexity is ``None`` when no sample has a target, the agreement
    when no position is unpadded."""
    nll = ref_nll = 0.0
    count = agree = positions = 0
    for ref_outputs, got_outputs, target, valid in zip(reference, candidate, tokens.targets, tokens.valid,
                                                        strict=True):
        ref = np.asarray(ref_outputs[tokens.logits_index], np.float64)
        got = np.asarray(got_outputs[tokens.logits_index], np.float64)
        agree += int((ref.argmax(-1) == got.argmax(-1))[valid].sum())
        positions += int(valid.sum())
        scored = target >= 0
        if scored.any():
            picked = target[scored]
            nll += float(-_log_softmax(got[scored])[np.arange(picked.size), picked].sum())
            ref_nll += float(-_log_softmax(ref[scored])[np.arange(picked.size), picked].sum())
            count += picked.size
    perplexity = float(np.exp(nll / count)) if count else None
    reference_perplexity = float(np.exp(ref_nll / count)) if count else None
    return perplexity, reference_perplexity, agree / positions if positions else None


def _log_softmax(logits: np.ndarray) -> np.ndarray:
    shifted = logits - logits.max(axis=-1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))


def is_language_model(model: Model) -> bool:
    """Whether ``model`` predicts tokens: an ``input_ids`` input and a ``logits`` output."""
    return "logits" in {spec.name for spec in model.outputs} and "input_ids" in {spec.name for spec in model.inputs}


def measure_fidelity(
    reference: Sequence[Sequence[np.ndarray]],
    candidate: Sequence[Sequence[np.ndarray]],
    labels: Sequence[np.ndarray] | None = None,
    *,
    tokens: TokenTargets | None = None,
) -> Fidelity:
    """Compare per-sample output lists of a candidate against the reference; with
    ``tokens`` (a language model), also perplexity and greedy agreement."""
    cosines: list[float] = []
    max_abs = 0.0
    max_rel = 0.0
    for ref_outputs, got_outputs in zip(reference, candidate, strict=True):
        ref_outputs, got_outputs = _tensors(ref_outputs), _tensors(got_outputs)
        if len(ref_outputs) != len(got_outputs):
            return Fidelity(-1.0, -1.0, float("inf"), float("inf"), len(reference))
        ref_flat, got_flat = [], []
        for ref, got in zip(ref_outputs, got_outputs, strict=True):
            ref = np.asarray(ref)
            got = np.asarray(got)
            if ref.shape != got.shape:
                return Fidelity(-1.0, -1.0, float("inf"), float("inf"), len(reference))
            if ref.dtype.kind not in "fc":
                if not np.array_equal(ref, got):
                    max_abs = float("inf")
                continue
            diff = np.abs(got.astype(np.float64) - ref.astype(np.float64))
            if diff.size:
                worst = float(np.nanmax(diff)) if not np.isnan(diff).all() else float("inf")
                if np.isnan(diff).any() and not np.array_equal(np.isnan(ref), np.isnan(got)):
                    worst = float("inf")
                scale = float(np.nanmax(np.abs(ref))) if ref.size else 0.0
                max_abs = max(max_abs, worst)
                max_rel = max(max_rel, worst / scale if scale > 0 else worst)
            ref_flat.append(np.nan_to_num(ref.astype(np.float64)).ravel())
            got_flat.append(np.nan_to_num(got.astype(np.float64)).ravel())
        if ref_flat:
            cosines.append(_cosine(np.concatenate(ref_flat), np.concatenate(got_flat)))
    accuracy = reference_accuracy = None
    if labels is not None:
        accuracy = _accuracy([outs[0] for outs in candidate], labels)
        reference_accuracy = _accuracy([outs[0] for outs in reference], labels)
    perplexity = reference_perplexity = agreement = None
    if tokens is not None:
        perplexity, reference_perplexity, agreement = language_model_scores(reference, candidate, tokens)
    return Fidelity(
        cosine_mean=float(np.mean(cosines)) if cosines else 1.0,
        cosine_min=float(np.min(cosines)) if cosines else 1.0,
        max_abs_error=max_abs,
        max_rel_error=max_rel,
        samples=len(reference),
        accuracy=accuracy,
        reference_accuracy=reference_accuracy,
        perplexity=perplexity,
        reference_perplexity=reference_perplexity,
        agreement=agreement,
    )


def _cosine(a: np.ndarray, b: np.ndarray) -> float:
    na, nb = np.linalg.norm(a), np.linalg.norm(b)
    if na == 0 and nb == 0:
        return 1.0
    if na == 0 or nb == 0:
        return 0.0
    return float(np.dot(a, b) / (na * nb))


def _accuracy(logits: Sequence[np.ndarray], labels: Sequence[np.ndarray]) -> float:
    correct = total = 0
    for out, lab in zip(logits, labels, strict=True):
        pred = np.asarray(out).argmax(axis=-1).ravel()
        lab = np.asarray(lab).ravel()
        correct += int((pred == lab).sum())
        total += lab.size
    return correct / total if total else 0.0


def _tensors(outputs: Sequence[Any]) -> list[Any]:
    """One sample's outputs with sequence outputs (lists of arrays) spread into their
    tensors and empty optionals (None) left out, so each is compared as a tensor."""
    flat: list[Any] = []
    for output in outputs:
        if isinstance(output, (list, tuple)):
            flat.extend(output)
        elif output is not None:
            flat.append(output)
    return flat


def exact_violation(
    reference: Sequence[Sequence[np.ndarray]], candidate: Sequence[Sequence[np.ndarray]]
) -> str | None:
    """``None`` when every output matches within its dtype's exact tolerance, else why."""
    for sample, (ref_outputs, got_outputs) in enumerate(zip(reference, candidate, strict=True)):
        ref_outputs, got_outputs = _tensors(ref_outputs), _tensors(got_outputs)
        if len(ref_outputs) != len(got_outputs):
            return f"a sequence or optional output changed length on sample {sample}"
        for index, (ref, got) in enumerate(zip(ref_outputs, got_outputs, strict=True)):
            ref, got = np.asarray(ref), np.asarray(got)
            if ref.shape != got.shape or ref.dtype != got.dtype:
                return (
                    f"output {index} changed from {ref.dtype}{list(ref.shape)} "
                    f"to {got.dtype}{list(got.shape)}"
                )
            tolerance = EXACT_TOLERANCE.get(ref.dtype.name)
            if tolerance is None:
                if not np.array_equal(ref, got):
                    return f"output {index} ({ref.dtype}) differs on sample {sample}"
                continue
            atol, rtol = tolerance
            if not np.array_equal(np.isnan(ref), np.isnan(got)):
                return f"output {index} has NaNs where the reference has none (sample {sample})"
            diff = np.nan_to_num(np.abs(got.astype(np.float64) - ref.astype(np.float64)))
            scale = float(np.nanmax(np.abs(ref))) if ref.size else 0.0
            allowed = atol + rtol * scale
            if diff.size and float(diff.max()) > allowed:
                return (
                    f"output {index} differs by {float(diff.max()):.3g} (allowed {allowed:.3g} "
                    f"for {ref.dtype}) on sample {sample}"
                )
    return None
