"""The samples label-free scores are computed on: the run's calibration data when given
(through ``greencc.data.as_calibration`` when that API is installed, else the list of feed
dicts the ``PassContext`` holds), otherwise seeded random feeds — which the stats say.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from greencc.data import as_calibration
from greencc.model import Model
from greencc.pipeline.context import PassContext
from greencc.verify.feeds import random_feeds

# Random feeds drawn when no calibration data is given (enough to rank heads on tiny models).
RANDOM_SAMPLES = 4


def scoring_samples(model: Model, ctx: PassContext, limit: int) -> tuple[list[dict[str, np.ndarray]], str]:
    """Up to ``limit`` feed dicts for ``model`` and where they came from
    (``"calibration"`` or ``"random"``)."""
    calibration = ctx.calibration
    if calibration is not None:
        source = as_calibration(calibration, model)
        samples = []
        for feeds in source:
            samples.append(model.check_feeds(feeds))
            if len(samples) >= limit:
                break
        if samples:
            return samples, "calibration"
    count = min(limit, RANDOM_SAMPLES)
    return [random_feeds(model, seed=ctx.seed + i, dims=ctx.dims) for i in range(count)], "random"


def budget_reference(
    ctx: PassContext, samples: list[dict[str, np.ndarray]], run_original: Callable[[dict[str, np.ndarray]], list[np.ndarray]]
) -> tuple[list[dict[str, np.ndarray]], list[list[np.ndarray]]]:
    """The samples and reference outputs a budget is checked against.

    Inside a verified pipeline these are the run's verification reference
    (``ctx.reference``): the outputs of the pipeline's *input* model, so that a budgeted
    pass after other lossy passes keeps the whole pipeline within the budget and is never
    rolled back for exceeding it. Otherwise the scoring samples and the current model's
    outputs (``run_original``).
    """
    reference = ctx.reference
    if ctx.verify and reference.ready:
        return list(reference.samples), [list(r) for r in reference.outputs]
    return samples, [run_original(feeds) for feeds in samples]
