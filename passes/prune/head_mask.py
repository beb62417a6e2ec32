"""A copy of a model with one mask input per attention block, ``greencc.head_mask.<i>``
(float32 ``[num_heads]``), multiplying each head's slice of the merged context before the
output projection. All ones computes the original; a zero removes that head's
contribution exactly as structural pruning does. One ONNX Runtime session then serves
every ablation and finite difference the importance scores need (run by the executor
for scoring).

    context[.., h·d] -> Mul(context, MatMul(mask[h], E[h, h·d]))   (E spreads a head's mask
                                                                   over its d columns)
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import onnx_ir as ir

from greencc.execution import Executor
from greencc.model import Model
from greencc.passes.lib.graph_edits import NameScope, new_initializer

from .head_blocks import HeadBlocks, find_head_blocks

MASK_INPUT = "greencc.head_mask.{}"


class HeadMaskedModel:
    """A masked copy of a model and one session over it, from ``executor`` (a pass gives
    ``ctx.executor``; by default a fresh ``Executor``) for scoring.

    ``run(feeds, masks)`` returns the outputs for per-block masks (a list of float arrays,
    one per block, ``None`` meaning all ones). The input model is not modified.
    """

    def __init__(self, model: Model, executor: Executor | None = None) -> None:
        self.model = model.clone()
        self.found: HeadBlocks = find_head_blocks(self.model)
        self.heads = [block.num_heads for block in self.found.blocks]
        names = NameScope(self.model.ir)
        graph = self.model.graph
        for block in self.found.blocks:
            _insert_mask(graph, block.context, block.o_node, block.num_heads, block.head_size,
                         MASK_INPUT.format(block.index), names)
        self._runner = (executor or Executor()).runner(self.model, purpose="scoring")

    def ones(self) -> list[np.ndarray]:
        """The all-ones mask of every block (the original model)."""
        return [np.ones(h, dtype=np.float32) for h in self.heads]

    def run(self, feeds: Mapping[str, np.ndarray], masks: Sequence[np.ndarray | None] | None = None) -> list[np.ndarray]:
        """Outputs (in graph order) on ``feeds`` with ``masks`` applied."""
        full = dict(feeds)
        masks = list(masks) if masks is not None else [None] * len(self.heads)
        for i, heads in enumerate(self.heads):
            mask = masks[i] if i < len(masks) else None
            full[MASK_INPUT.format(i)] = (
                np.ones(heads, dtype=np.float32) if mask is None else np.asarray(mask, dtype=np.float32)
            )
        return self._runner.values(full)


def _insert_mask(graph: ir.Graph, context: ir.Value, o_node: ir.Node, heads: int, head_size: int,
                 name: str, names: NameScope) -> None:
    mask = ir.Value(name=name, type=ir.TensorType(ir.DataType.FLOAT), shape=ir.Shape([heads]))
    graph.inputs.append(mask)
    spread = np.kron(np.eye(heads, dtype=np.float32), np.ones((1, head_size), dtype=np.float32))
    spread_value = new_initializer(graph, names.fresh(f"{name}.spread"), spread)
    columns = ir.node("MatMul", [mask, spread_value], name=names.fresh(f"{name}.columns"))
    columns.outputs[0].name = names.fresh(f"{name}.columns")
    masked = ir.node("Mul", [context, columns.outputs[0]], name=names.fresh(f"{name}.apply"))
    masked.outputs[0].name = names.fresh(f"{name}.context")
    graph.insert_before(o_node, [columns, masked])
    o_node.replace_input_with(0, masked.outputs[0])
