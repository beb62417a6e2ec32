"""Bisection: name the first node whose output diverges between two versions of a model.

Both models are run with every shared intermediate value exposed as an output; values are
compared in the rewritten model's topological order, so the first mismatch is the earliest
node the rewrite got wrong.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import onnx_ir as ir

from greencc.ir.shapes import infer_shapes
from greencc.ir.traversal import node_label
from greencc.model import Model
from greencc.verify.fidelity import exact_violation
from greencc.verify.session import reference_runner


def first_divergent_node(
    original: Model, rewritten: Model, feeds: Mapping[str, np.ndarray]
) -> str | None:
    """Label of the first node of ``rewritten`` whose output differs from ``original``'s
    value of the same name beyond exact tolerance, or ``None`` if none is found."""
    reference_values = _all_values(original.ir, feeds)
    candidate_values = _all_values(rewritten.ir, feeds)
    for node in rewritten.graph:
        for value in node.outputs:
            ref = reference_values.get(value.name)
            got = candidate_values.get(value.name)
            if ref is None or got is None:
                continue
            if exact_violation([[ref]], [[got]]) is not None:
                return node_label(node)
    return None


def _all_values(model: ir.Model, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    clone = model.clone()
    infer_shapes(clone)
    existing = {v.name for v in clone.graph.outputs}
    for node in clone.graph:
        for value in node.outputs:
            if value.name and value.name not in existing and value.dtype is not None:
                if value.type is None:
                    value.type = ir.TensorType(value.dtype)
                clone.graph.outputs.append(value)
                existing.add(value.name)
    names = [value.name for value in clone.graph.outputs]
    return dict(zip(names, reference_runner(Model(clone))(feeds), strict=True))
