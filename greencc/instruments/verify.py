"""The verification instrument: before the first pass, fill the run's verification
reference (``ctx.reference``: samples and the input model's outputs, computed once); after
every modifying pass, run the model on the samples and compare.

Exact passes must match within dtype tolerance (else ``VerificationError`` naming the
first divergent node); lossy passes get a fidelity score and are rolled back with a
warning when they break the budget.
"""

from __future__ import annotations

import logging
import warnings
from typing import TYPE_CHECKING

import numpy as np

from greencc.errors import VerificationError
from greencc.pipeline.instruments import Instrument, PassRecord
from greencc.verify.bisect import first_divergent_node
from greencc.verify.feeds import random_feeds
from greencc.verify.fidelity import exact_violation, measure_fidelity

if TYPE_CHECKING:
    from greencc.model import Model
    from greencc.pipeline.base import Pass
    from greencc.pipeline.context import PassContext

log = logging.getLogger(__name__)


class VerifyInstrument(Instrument):
    """Verifies numerics after each modifying pass against the reference run of the input.

    Samples come from ``ctx.calibration`` (a list of feed dicts) when given, else
    ``ctx.verification_samples`` random feed dicts drawn with ``ctx.seed`` and ``ctx.dims``.
    Models run on ``ctx.executor`` for reference (one thread, no graph optimization).
    """

    def __init__(self, labels: list[np.ndarray] | None = None) -> None:
        self.labels = labels
        self.last_fidelity = None

    def enter_pipeline(self, model: Model, ctx: PassContext) -> None:
        ctx.reference.start(model, self._samples(model, ctx))

    def _samples(self, model: Model, ctx: PassContext) -> list[dict[str, np.ndarray]]:
        calibration = ctx.calibration
        if calibration is not None:
            samples = [model.check_feeds(feeds) for feeds in list(calibration)[: max(1, ctx.verification_samples)]]
            if samples:
                return samples
        return [
            random_feeds(model, seed=ctx.seed + i, dims=ctx.dims)
            for i in range(max(1, ctx.verification_samples))
        ]

    def after_pass(self, pass_: Pass, model: Model, ctx: PassContext, record: PassRecord) -> None:
        if not ctx.verify or not record.modified:
            record.fidelity = self.last_fidelity
            return
        reference = ctx.reference
        outputs = reference.run(model)
        fidelity = measure_fidelity(reference.outputs, outputs, self.labels)
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
