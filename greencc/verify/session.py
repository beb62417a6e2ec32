"""What verification and calibration need from whatever runs models: a ``Runner`` for one
model version and an executor (``RunsModels``) that makes them. They are protocols so that
these lower layers never import the execution layer that implements them
(``greencc.execution.Executor``, the one ``PassContext.executor`` holds).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Literal, Protocol

import numpy as np

from greencc.model import Model

# Why a model is run, which fixes the session options (greencc.execution.PURPOSE_OPTIONS):
# "reference" computes exactly what the graph says (verification, bisection, calibration);
# "scoring" is a pruning scorer's fast path; "deployment" runs as the compiled model will.
Purpose = Literal["reference", "scoring", "deployment"]


class Runner(Protocol):
    """Runs one model version: ``runner(feeds)`` returns ``{name: array}`` for ``outputs``."""

    outputs: tuple[str, ...]

    def __call__(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """The values of ``outputs`` on ``feeds``."""
        ...

    def values(self, feeds: Mapping[str, np.ndarray]) -> list[np.ndarray]:
        """The values of ``outputs`` on ``feeds``, in the order of ``outputs``."""
        ...


class RunsModels(Protocol):
    """Makes runners: ``runner(model, outputs=..., purpose=..., threads=...)``."""

    def runner(
        self,
        model: Model,
        *,
        outputs: Sequence[str] | None = None,
        purpose: Purpose = "reference",
        threads: int | None = None,
    ) -> Runner:
        """A runner of ``model`` returning ``outputs`` (value names; default: the graph's)."""
        ...
