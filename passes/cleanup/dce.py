"""Dead-code elimination: drop what no graph output depends on.

One backward sweep per graph in reverse topological order, so a 20k-deep dead chain
goes in one pass without recursion; unused functions and opset imports are left to
onnx_ir's own passes, which do exactly that.
"""

from __future__ import annotations

import onnx
import onnx_ir as ir
from onnx_ir.passes.common import RemoveUnusedFunctionsPass, RemoveUnusedOpsetsPass

from greencc.ir import subgraphs
from greencc.model import Model
from greencc.passes.lib.graph_edits import remove_node
from greencc.pipeline.base import Pass, PassResult, register_pass
from greencc.pipeline.context import PassContext

# Domains whose ops are known to be free of side effects: an unused result is dead code.
PURE_DOMAINS = frozenset({"", "ai.onnx", "ai.onnx.ml", "ai.onnx.preview.training", "com.microsoft"})
# Ops whose number of outputs selects their behaviour (BatchNormalization before opset 14
# trains when asked for its running statistics), so unused outputs are never trimmed.
_ARITY_SELECTS_MODE = frozenset({"BatchNormalization"})


@register_pass("dce")
class DeadCodeElimination(Pass):
    """Remove nodes, initializers, functions and opset imports that no output needs.

    Rewrites:
      node whose outputs are unused and not graph outputs -> (removed)
        (in the main graph, its subgraphs and the bodies of model-local functions)
      initializer no node reads (and not a graph input/output) -> (removed)
      Op(x) -> y, unused_optional (trailing unused optional outputs) -> Op(x) -> y
      model-local function no node calls -> (removed)
      opset import no node uses -> (removed)

    Graph inputs and outputs are never touched: they are the model's signature. Unused
    nodes of unknown (custom) domains may have side effects and are kept unless
    ``remove_custom_ops`` is set; each one kept is reported as a near miss.
    """

    lossy = False
    remove_custom_ops: bool = False

    def call(self, model: Model, ctx: PassContext) -> PassResult:
        pure_domains = set(PURE_DOMAINS) | {op_id[0] for op_id in model.ir.functions}
        default_opset = model.ir.graph.opset_imports.get("")
        removed_nodes, trimmed_outputs = self._sweep_nested(
            model.graph, ctx, pure_domains, default_opset
        )
        removed_functions = 0
        if model.ir.functions:
            before = len(model.ir.functions)
            RemoveUnusedFunctionsPass()(model.ir)
            removed_functions = before - len(model.ir.functions)
        for function in model.ir.functions.values():
            removed, trimmed = self._sweep_nested(
                function.graph, ctx, pure_domains, function.opset_imports.get("", default_opset)
            )
            removed_nodes += removed
            trimmed_outputs += trimmed
        removed_initializers = self._remove_unused_initializers(model.ir)
        opsets_before = _opset_import_count(model.ir)
        RemoveUnusedOpsetsPass()(model.ir)
        removed_opsets = opsets_before - _opset_import_count(model.ir)
        stats = {
            "removed_nodes": removed_nodes,
            "removed_initializers": removed_initializers,
            "removed_functions": removed_functions,
            "removed_opsets": removed_opsets,
            "trimmed_outputs": trimmed_outputs,
        }
        return PassResult(model, modified=any(stats.values()), stats=stats)

    def _sweep_nested(
        self, root: ir.Graph, ctx: PassContext, pure_domains: set[str], opset: int | None
    ) -> tuple[int, int]:
        """Sweep ``root`` and its subgraphs; return (nodes removed, outputs trimmed)."""
        removed_nodes = trimmed_outputs = 0
        # A kept node's subgraphs are swept after its graph; when an inner removal frees a
        # value of an enclosing graph, everything is swept once more from the root.
        pending: list[ir.Graph] = [root]
        while pending:
            graph = pending.pop()
            removed, trimmed, kept_subgraphs, freed_outer = self._sweep(
                graph, ctx, pure_domains, opset
            )
            removed_nodes += removed
            trimmed_outputs += trimmed
            pending.extend(kept_subgraphs)
            if freed_outer and graph is not root:
                pending = [root]
        return removed_nodes, trimmed_outputs

    def _sweep(
        self, graph: ir.Graph, ctx: PassContext, pure_domains: set[str], opset: int | None
    ) -> tuple[int, int, list[ir.Graph], bool]:
        """One reverse sweep of ``graph``: (removed, trimmed, kept subgraphs, freed outer)."""
        removed = trimmed = 0
        kept_subgraphs: list[ir.Graph] = []
        freed_outer = False
        for node in reversed(list(graph)):
            if any(out.uses() or out.is_graph_output() for out in node.outputs):
                if opset is not None:
                    trimmed += _trim_unused_optional_outputs(node, opset)
                kept_subgraphs.extend(subgraphs(node))
                continue
            if node.domain not in pure_domains and not self.remove_custom_ops:
                self.decline(
                    ctx,
                    node,
                    f"unused, but op domain '{node.domain}' is not known to be side-effect "
                    "free (set remove_custom_ops=true to drop it)",
                )
                kept_subgraphs.extend(subgraphs(node))
                continue
            outer_inputs = [v for v in node.inputs if v is not None and v.graph is not graph]
            remove_node(node)
            removed += 1
            freed_outer |= any(not v.uses() and not v.is_graph_output() for v in outer_inputs)
        return removed, trimmed, kept_subgraphs, freed_outer

    @staticmethod
    def _remove_unused_initializers(model: ir.Model) -> int:
        count = 0
        for graph in model.graphs():
            for name, value in list(graph.initializers.items()):
                if value.uses() or value.is_graph_input() or value.is_graph_output():
                    continue
                del graph.initializers[name]
                count += 1
        return count


def _opset_import_count(model: ir.Model) -> int:
    return len(model.graph.opset_imports) + sum(
        len(f.opset_imports) for f in model.functions.values()
    )


def _trim_unused_optional_outputs(node: ir.Node, opset: int) -> int:
    """Drop ``node``'s trailing outputs that are optional and unused; return how many."""
    if node.domain not in ("", "ai.onnx") or node.op_type in _ARITY_SELECTS_MODE:
        return 0
    outputs = node.outputs
    last = len(outputs)
    while last > 0 and not outputs[last - 1].uses() and not outputs[last - 1].is_graph_output():
        last -= 1
    if last == len(outputs):
        return 0
    try:
        schema = onnx.defs.get_schema(node.op_type, opset, domain="")
    except onnx.defs.SchemaError:
        return 0
    formal = schema.outputs
    optional = onnx.defs.OpSchema.FormalParameterOption.Optional
    keep = len(outputs)
    for index in range(len(outputs) - 1, last - 1, -1):
        if index >= len(formal) or formal[index].option != optional:
            break
        keep = index
    # An op keeps at least its first output, and the schema's minimum.
    keep = max(keep, 1, schema.min_output)
    if keep >= len(outputs):
        return 0
    count = len(outputs) - keep
    node.resize_outputs(keep)
    return count
