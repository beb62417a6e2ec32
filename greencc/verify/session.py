"""Reference runs: a model on the ``ort-cpu`` target with graph optimizations off and one
thread, so the reference computes exactly what the graph says.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import numpy as np

from greencc.model import Model

Runner = Callable[[Mapping[str, np.ndarray]], list[np.ndarray]]


def reference_runner(model: Model) -> Runner:
    """A function running ``model`` on feeds and returning its outputs in graph order."""
    from greencc.target import resolve_target

    compiled = resolve_target("ort-cpu", threads=1, optimization="disabled").lower(model)
    names = [spec.name for spec in model.outputs]

    def run(feeds: Mapping[str, np.ndarray]) -> list[np.ndarray]:
        outputs = compiled(feeds)
        return [outputs[name] for name in names]

    return run
