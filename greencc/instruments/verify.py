"""The verification instrument: before the first pass, fill the run's verification
reference (``ctx.reference``: samples and the input model's outputs, computed once); after
every modifying pass, run the model on the samples and compare. A decoder's samples are its
prefill feeds followed by greedy decode steps, so exact passes are checked on both.

Exact passes must match within dtype tolerance (else ``VerificationError`` naming the
first divergent node); lossy passes get a fidelity score and are rolled back with a
warning when they break the budget. When the input model itself cannot run on the samples,
verification says so (``UnverifiableError``) rather than blaming a pass or the runtime; at
the end, the output model is run once as the target will load it.
"""

from __future__ import annotations

import logging
import warnings
from typing import TYPE_CHECKING

import numpy as np

from greencc.errors import GreenccError, UsageError, VerificationError
from greencc.pipeline.instruments import Instrument, PassRecord
from greencc.verify.bisect import first_divergent_node
from greencc.verify.feeds import random_feeds
from greencc.verify.fidelity import TokenTargets, exact_violation, measure_fidelity

if TYPE_CHECKING:
    from greencc.model import Model
    from greencc.pipeline.base import Pass
    from greencc.pipeline.context import PassContext

log = logging.getLogger(__name__)

# Greedy decode steps appended to the verification samples after each prefill of a decoder.
DECODE_STEPS = 3
PAST_PREFIX = "past_key_values."
PRESENT_PREFIX = "present."


class UnverifiableError(UsageError):
    """The input model itself cannot run on the verification samples, so no pass can be
    checked: the samples (generated, or the caller's calibration data) are at fault, not a
    pass nor the runtime."""

    unverifiable = True


class VerifyInstrument(Instrument):
    """Verifies numerics after each modifying pass against the reference run of the input.

    Samples come from ``ctx.calibration`` (a list of feed dicts) when given, else
    ``ctx.verification_samples`` random feed dicts drawn with ``ctx.seed`` and ``ctx.dims``;
    for a decoder each is followed by :data:`DECODE_STEPS` decode-step feeds (see
    :func:`decode_samples`). Models run on ``ctx.executor`` for reference (one thread, no
    graph optimization). A language model's fidelity includes perplexity on the samples'
    next tokens and greedy agreement with the reference.
    """

    def __init__(self, labels: list[np.ndarray] | None = None) -> None:
        self.labels = labels
        self.last_fidelity = None
        self.modified = False

    def enter_pipeline(self, model: Model, ctx: PassContext) -> None:
        self.modified = False
        samples, generated = self._samples(model, ctx)
        ctx.executor.runner(model, purpose="reference")  # a model ONNX Runtime rejects fails here, as itself
        try:
            ctx.reference.start(model, [*samples, *decode_samples(model, samples, ctx)])
        except GreenccError as exc:
            raise _unrunnable(exc, generated) from None

    def _samples(self, model: Model, ctx: PassContext) -> tuple[list[dict[str, np.ndarray]], bool]:
        """The samples, and whether greencc generated them (no calibration data given)."""
        calibration = ctx.calibration
        if calibration is not None:
            samples = [model.check_feeds(feeds) for feeds in list(calibration)[: max(1, ctx.verification_samples)]]
            if samples:
                return samples, False
        samples = [
            random_feeds(model, seed=ctx.seed + i, dims=ctx.dims)
            for i in range(max(1, ctx.verification_samples))
        ]
        return samples, True

    def exit_pipeline(self, model: Model, ctx: PassContext) -> None:
        """Run the output model once as an ONNX Runtime target loads it (its own graph
        optimizations on), when the executor's backend is the compile's target: a graph
        that only runs unoptimized fails here, naming the pipeline, not at lowering."""
        reference = ctx.reference
        if not ctx.verify or not self.modified or not reference.ready or ctx.target is None \
                or ctx.target.name != ctx.executor.backend.name:
            return
        try:
            ctx.executor.runner(model, purpose="deployment").values(reference.samples[0])
        except GreenccError as exc:
            if reference.original is not None and not _deploys(reference.original, reference.samples[0], ctx):
                return  # the input fails the same way: the runtime's limit, not the pipeline's doing
            raise VerificationError(
                f"the optimized model fails when loaded as target '{ctx.target.name}' loads it "
                f"(the input model does not): {exc.message}",
                hint="a pass left a graph that only runs unoptimized; this is a bug in the pipeline, "
                "bisect it with --pipeline",
            ) from None

    def after_pass(self, pass_: Pass, model: Model, ctx: PassContext, record: PassRecord) -> None:
        if not ctx.verify or not record.modified:
            record.fidelity = self.last_fidelity
            return
        self.modified = True
        reference = ctx.reference
        outputs = reference.run(model)
        fidelity = measure_fidelity(reference.outputs, outputs, self.labels,
                                    tokens=TokenTargets.of(model, reference.samples))
        record.fidelity = fidelity
        if not pass_.lossy:
            violation = exact_violation(reference.current, outputs)
            if violation is not None:
                node = None
                if reference.original is not None:
                    try:
                        node = first_divergent_node(reference.original, model, reference.samples[0], ctx.executor)
                    except Exception as exc:  # bisection is best effort; the error still stands
                        log.info("bisection failed: %s", exc)
                error = VerificationError(
                    f"exact pass '{pass_}' changed the model's outputs: {violation}",
                    hint="this is a bug in the pass; the reproducer replays it",
                )
                error.node = node  # type: ignore[attr-defined]
                raise error
        elif ctx.budget is not None:
            reason = ctx.budget.check(fidelity)
            if reason is not None:
                record.rolled_back = reason
                warnings.warn(
                    f"greencc: rolled back lossy pass '{pass_}': {reason} (budget {ctx.budget})",
                    stacklevel=2,
                )
                return
        if pass_.lossy:
            reference.accept_lossy(outputs)
        self.last_fidelity = fidelity


def _deploys(model: Model, feeds: dict[str, np.ndarray], ctx: PassContext) -> bool:
    """Whether ``model`` runs on ``feeds`` as the target loads it."""
    try:
        ctx.executor.runner(model, purpose="deployment").values(feeds)
    except GreenccError:
        return False
    return True


def _unrunnable(exc: GreenccError, generated: bool) -> UnverifiableError:
    """The error for an input model that cannot run on its verification samples."""
    if generated:
        return UnverifiableError(
            f"verification cannot run the input model on greencc's generated inputs, so it cannot "
            f"check any pass: {exc.message}",
            hint="the model needs input values greencc cannot guess; pass representative inputs "
            "with --calib FILE.npz (calibration=...), or compile without verification (--no-verify)",
        )
    return UnverifiableError(
        f"the input model itself cannot run on the calibration data: {exc.message}",
        hint="check the calibration data against the model's inputs, including values used as "
        "shapes or indices",
    )


def decode_samples(model: Model, prefills: list[dict[str, np.ndarray]], ctx: PassContext,
                   steps: int = DECODE_STEPS) -> list[dict[str, np.ndarray]]:
    """Greedy decode-step feeds that follow each prefill feed of a decoder (empty for any
    other model): each step feeds the argmax of the last logits as ``input_ids`` [batch, 1],
    the attention mask grown by one attended column, ``position_ids`` one past the last,
    and the previous run's ``present.{i}.key/value`` as ``past_key_values.{i}.key/value``
    — the reference run of ``model`` on ``ctx.executor``."""
    inputs = {spec.name for spec in model.inputs}
    outputs = [spec.name for spec in model.outputs]
    past = [name for name in inputs if name.startswith(PAST_PREFIX)]
    present = {name: PRESENT_PREFIX + name[len(PAST_PREFIX):] for name in past}
    if not past or "input_ids" not in inputs or "logits" not in outputs \
            or not set(present.values()) <= set(outputs):
        return []
    runner = ctx.executor.runner(model, purpose="reference")
    steps_out: list[dict[str, np.ndarray]] = []
    for feeds in prefills:
        current = dict(feeds)
        for _ in range(steps):
            values = dict(zip(outputs, runner.values(current), strict=True))
            ids = current["input_ids"]
            step = {"input_ids": values["logits"][:, -1].argmax(-1)[:, None].astype(ids.dtype)}
            if "attention_mask" in inputs:
                mask = current["attention_mask"]
                step["attention_mask"] = np.concatenate([mask, np.ones((mask.shape[0], 1), mask.dtype)], axis=1)
            if "position_ids" in inputs:
                step["position_ids"] = current["position_ids"][:, -1:] + 1
            step.update((name, values[present[name]]) for name in past)
            steps_out.append(step)
            current = step
    return steps_out
