"""``VerificationReference``: the samples numerical verification runs on, the pipeline
input's outputs on them — computed once per pipeline run and shared — and the outputs after
the last accepted lossy pass. The verification instrument fills and updates it; passes
that keep a fidelity budget for the whole pipeline read it from ``ctx.reference``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from greencc.execution.executor import Executor
from greencc.model import Model

Outputs = list[list[np.ndarray]]  # per sample, the graph outputs in graph order


class VerificationReference:
    """Reference outputs for one pipeline run, produced with ``executor``'s
    ``"reference"`` purpose (one thread, no graph optimization).

    ``samples``: the feed dicts; ``outputs``: the input model's outputs on each;
    ``current``: what exact passes must preserve (``outputs`` until a lossy pass is
    accepted); ``original``: a copy of the input model (for bisection). Empty until
    :meth:`start`.
    """

    def __init__(self, executor: Executor) -> None:
        self.executor = executor
        self.samples: list[dict[str, np.ndarray]] = []
        self.outputs: Outputs = []
        self.current: Outputs = []
        self.original: Model | None = None

    @property
    def ready(self) -> bool:
        """Whether :meth:`start` has run (with at least one sample)."""
        return bool(self.samples)

    @property
    def after_lossy(self) -> bool:
        """Whether an accepted lossy pass has changed the outputs since :meth:`start`."""
        return self.current is not self.outputs

    def start(self, model: Model, samples: Sequence[Mapping[str, np.ndarray]]) -> None:
        """Take ``model`` (the pipeline's input) and ``samples``, and run it once on them."""
        self.original = model.clone()
        self.samples = [dict(feeds) for feeds in samples]
        self.outputs = self.run(model)
        self.current = self.outputs

    def run(self, model: Model) -> Outputs:
        """``model``'s outputs (graph order) on every sample, run for reference."""
        runner = self.executor.runner(model, purpose="reference")
        return [runner.values(feeds) for feeds in self.samples]

    def accept_lossy(self, outputs: Outputs) -> None:
        """Record the outputs of an accepted lossy pass: what later exact passes must keep."""
        self.current = outputs
