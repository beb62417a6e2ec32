"""Bisection: name the first node whose output diverges between two versions of a model.

Both models are run with every shared intermediate value exposed as an output; values are
compared in the rewritten model's topological order, so the first mismatch is the earliest
node the rewrite got wrong.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from greencc.ir.shapes import infer_shapes
from greencc.ir.traversal import node_label
from greencc.model import Model
from greencc.verify.fidelity import exact_violation
from greencc.verify.session import RunsModels


def first_divergent_node(
    original: Model, rewritten: Model, feeds: Mapping[str, np.ndarray], executor: RunsModels
) -> str | None:
    """Label of the first node of ``rewritten`` whose output differs from ``original``'s
    value of the same name beyond exact tolerance, or ``None`` if none is found. Both
    models run on ``executor`` for reference (every typed intermediate exposed)."""
    reference_values = _all_values(original, feeds, executor)
    candidate_values = _all_values(rewritten, feeds, executor)
    for node in rewritten.graph:
        for value in node.outputs:
            ref = reference_values.get(value.name)
            got = candidate_values.get(value.name)
            if ref is None or got is None:
                continue
            if exact_violation([[ref]], [[got]]) is not None:
                return node_label(node)
    return None


def _all_values(model: Model, feeds: Mapping[str, np.ndarray], executor: RunsModels) -> dict[str, np.ndarray]:
    """Every node output whose dtype shape inference knows, by name."""
    typed = Model(infer_shapes(model.ir.clone()), model.provenance)
    names = [value.name for node in typed.graph for value in node.outputs if value.name and value.dtype is not None]
    return executor.runner(typed, outputs=names, purpose="reference")(feeds)
