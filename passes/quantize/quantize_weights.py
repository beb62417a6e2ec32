"""``quantize-weights``: weight-only block quantization to 4 or 8 bits for ONNX Runtime's
``MatMulNBits`` (and ``GatherBlockQuantized`` for embeddings), by round-to-nearest or GPTQ,
with an optional sensitivity fallback under the run's fidelity budget.

    quantize-weights  MatMul(x, W)     -> com.microsoft MatMulNBits(x, Bq, scales[, zero_points])
                      Gather(E, ids)   -> com.microsoft GatherBlockQuantized(Eq, ids, scales[, zero_points])
                                          (embeddings=quantize)
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar, Literal

import numpy as np
import onnx_ir as ir

from greencc.cost.estimate import estimate_cost
from greencc.data import as_calibration, is_decoder
from greencc.errors import UsageError
from greencc.ir import inherit_provenance
from greencc.model import Model
from greencc.passes.lib.graph_edits import (
    NameScope,
    constant_tensor,
    new_initializer,
    redirect,
    remove_node,
)
from greencc.pipeline.base import Pass, PassResult, register_pass
from greencc.pipeline.context import PassContext
from greencc.quant.blockwise import (
    BlockQuantized,
    check_layout,
    pack_matmul_nbits,
    quantize_embedding,
    quantize_rtn,
)
from greencc.quant.gptq import collect_hessians, quantize_gptq
from greencc.quant.sensitivity import LayerSensitivity, SensitivityReport, choose_float_layers
from greencc.verify.feeds import random_feeds
from greencc.verify.fidelity import Fidelity, FidelityBudget, TokenTargets, measure_fidelity

CONTRIB = "com.microsoft"
MATMUL_NBITS = f"{CONTRIB}::MatMulNBits"
GATHER_BLOCK = f"{CONTRIB}::GatherBlockQuantized"
# The budget the fallback keeps when the run gives none: at most +2% perplexity on a
# language model, else a min cosine of 0.99 (as quantize-int8's).
DEFAULT_LM_BUDGET = FidelityBudget(max_perplexity_ratio=1.02)
DEFAULT_BUDGET = FidelityBudget(min_cosine=0.99)
# Feeds GPTQ and the fallback use when there is neither calibration data nor a verification reference.
RANDOM_SAMPLES = 4
# Ops the walk from the logits output back to the lm_head MatMul passes through.
_LOGITS_CARRIERS = frozenset({"Identity", "Reshape", "Cast", "Squeeze", "Unsqueeze"})


@dataclass
class WeightSite:
    """One quantizable node: a MatMul with a constant ``[K, N]`` weight (``kind``
    ``"matmul"``, or ``"lm_head"`` for the product that makes the logits) or a Gather from
    a constant ``[V, H]`` table (``"embedding"``)."""

    node: ir.Node
    kind: str
    weight: np.ndarray
    index: int

    @property
    def name(self) -> str:
        """The node's name (what ``keep_float`` and the ledger use), ``Op#index`` when it
        has none."""
        return self.node.name or f"{self.node.op_type}#{self.index}"


@register_pass("quantize-weights")
class QuantizeWeights(Pass):
    """MatMul(x, W) -> com.microsoft MatMulNBits with W in blocks of 4- or 8-bit integers.

    Rewrites:
      MatMul(x, W[K, N]) -> MatMulNBits(x, Bq[N, K/block, block·bits/8], scales[N, K/block]
                            [, zero_points]) <K, N, bits, block_size[, accuracy_level]>
      Gather(E[V, H], ids) -> GatherBlockQuantized(Eq, ids, scales[V, H/block][, zero_points])
                              (``embeddings=quantize``)

    ``method=rtn`` rounds every block to nearest; ``method=gptq`` compensates each
    rounding error on the rows still to quantize with the Hessian X^T X of the layer's
    calibration inputs (collected through the executor; ``act_order`` quantizes the
    highest-energy input rows first). ``symmetric`` blocks store no zero points.
    ``lm_head`` (the MatMul that makes the ``logits`` output): ``quantize`` at ``bits``,
    ``int8``, or ``float``. ``embeddings``: ``float`` (default: a Gather reads one row
    per token, so its bytes are small at decode) or ``quantize`` (GatherBlockQuantized, where
    the target runs it; else kept float with the reason). ``accuracy_level=4`` lets ONNX
    Runtime compute with int8 activations (faster; activations rounded per block).
    ``fallback=sensitivity`` keeps in float the layers that cost the most fidelity per
    energy saved until the run's budget holds (default: ppl=1.02 for a language model,
    else cos=0.99). ``when=saves-energy`` keeps in float every layer whose quantized form
    the cost model prices above its float one (on the context's profile, at ``ctx.dims``:
    decode is priced by the weight bytes read per token, prefill by its MACs).
    ``models=decoders`` leaves models without a KV cache alone (what ``-O3`` does, so
    encoders keep their int8). Declines: the weight is not a constant 2-D float32, K is
    not a multiple of ``block``, the target does not run MatMulNBits, the model is not a
    decoder (``models=decoders``), the layer saves no energy (``when=saves-energy``), or
    ``keep_float`` names the node.
    """

    lossy: ClassVar[bool] = True

    bits: Literal[4, 8] = 4
    block: int = 32
    symmetric: bool = True
    method: Literal["rtn", "gptq"] = "rtn"
    act_order: bool = True
    lm_head: Literal["quantize", "int8", "float"] = "quantize"
    embeddings: Literal["float", "quantize"] = "float"
    accuracy_level: Literal[0, 1, 2, 3, 4] = 0
    fallback: Literal["none", "sensitivity"] = "none"
    keep_float: str = ""
    models: Literal["all", "decoders"] = "all"
    when: Literal["always", "saves-energy"] = "always"

    def call(self, model: Model, ctx: PassContext) -> PassResult:
        """Find the sites, quantize their weights, optionally choose float fallbacks, rewrite."""
        reason = check_layout(self.block, self.bits, self.block)
        if reason is not None:
            raise UsageError(f"quantize-weights: {reason}", hint="use block=32, 64 or 128")
        supported = ctx.target.supported_fused_ops() if ctx.target is not None else set()
        if MATMUL_NBITS not in supported:
            why = (f"target '{ctx.target.name}' does not run {MATMUL_NBITS}" if ctx.target is not None
                   else "no target: cannot tell whether MatMulNBits runs")
            for node in model.graph:
                if node.op_type == "MatMul" and node.domain in ("", "ai.onnx"):
                    self.decline(ctx, node, why)
            return PassResult(model, False, {"quantized": 0})
        if self.models == "decoders" and not is_decoder(model):
            self.decline(ctx, model.graph.name or "graph", "not a decoder (no past_key_values inputs): models=decoders")
            return PassResult(model, False, {"quantized": 0})
        sites = self._sites(model, ctx, supported)
        if not sites:
            return PassResult(model, False, {"quantized": 0})
        plan = WeightPlan(self, model, sites, ctx)
        stats: dict[str, int | float] = {}
        float_layers: frozenset[str] = frozenset()
        if self.when == "saves-energy":
            energy = plan.energy_saved()
            float_layers = frozenset(s.name for s in sites if energy.get(s.name, 0.0) <= 0)
            for site in sites:
                if site.name in float_layers:
                    self.decline(ctx, site.node, f"its quantized form saves no energy at dims {ctx.dims or 'all 1'} "
                                                 f"({energy.get(site.name, 0.0):.3g} mJ)")
        if self.fallback == "sensitivity":
            report = plan.sensitivity(float_layers)
            float_layers = float_layers | frozenset(report.kept_float)
            for site in sites:
                if site.name in float_layers:
                    self.decline(ctx, site.node, f"sensitivity: kept in float for the budget ({report.budget})")
            stats.update(report.stats())
        applied = plan.apply(model, float_layers)
        remove_dead_transposes(model.graph)
        stats.update(plan.stats(applied))
        return PassResult(model, bool(applied), stats)

    def _sites(self, model: Model, ctx: PassContext, supported: set[str]) -> list[WeightSite]:
        """The quantizable nodes in graph order; every node left out is declined with why."""
        keep = {name.strip() for name in self.keep_float.split(",") if name.strip()}
        head = lm_head_node(model.graph)
        sites: list[WeightSite] = []
        for index, node in enumerate(model.graph):
            if node.domain not in ("", "ai.onnx"):
                continue
            if node.op_type == "MatMul":
                site, why = self._matmul_site(node, index, node is head)
            elif node.op_type == "Gather" and self.embeddings == "quantize":
                site, why = self._embedding_site(node, index, supported)
            else:
                continue
            if site is not None and site.name in keep:
                site, why = None, "listed in keep_float"
            if site is None:
                self.decline(ctx, node, why)
            else:
                sites.append(site)
        unknown = keep - {node.name for node in model.graph} - {site.name for site in sites}
        if unknown:
            raise UsageError(f"quantize-weights: keep_float names no node called {', '.join(sorted(unknown))}",
                             hint="name MatMul nodes as `greencc inspect` lists them")
        return sites

    def _matmul_site(self, node: ir.Node, index: int, is_head: bool) -> tuple[WeightSite | None, str]:
        if is_head and self.lm_head == "float":
            return None, "the lm_head stays float (lm_head=float)"
        weight_value = node.inputs[1] if len(node.inputs) > 1 else None
        tensor, transposed = constant_tensor(weight_value), False
        if tensor is None:
            tensor, transposed = transposed_constant(weight_value), True
        if tensor is None:
            return None, f"the weight '{weight_value.name if weight_value else '?'}' is not a constant"
        if tensor.dtype != ir.DataType.FLOAT:
            return None, f"the weight is {tensor.dtype.name}, not float32"
        if len(tensor.shape) != 2:
            return None, f"the weight has rank {len(tensor.shape)}; MatMulNBits takes a 2-D [K, N] weight"
        weight = np.asarray(tensor.numpy(), np.float32)
        # A tied lm_head reads the embedding table through Transpose: quantize its transpose.
        weight = np.ascontiguousarray(weight.T) if transposed else weight
        activation = node.inputs[0]
        if activation is None or activation.dtype not in (None, ir.DataType.FLOAT):
            return None, "the activation is not float32"
        bits = 8 if is_head and self.lm_head == "int8" else self.bits
        reason = check_layout(int(weight.shape[0]), bits, self.block)
        if reason is not None:
            return None, reason
        return WeightSite(node, "lm_head" if is_head else "matmul", weight, index), ""

    def _embedding_site(self, node: ir.Node, index: int, supported: set[str]) -> tuple[WeightSite | None, str]:
        tensor = constant_tensor(node.inputs[0])
        if tensor is None or tensor.dtype != ir.DataType.FLOAT or len(tensor.shape) != 2:
            return None, "not an embedding: the table is not a constant 2-D float32"
        axis = node.attributes.get("axis")
        if axis is not None and axis.as_int() != 0:
            return None, "not an embedding: gathers along axis 1"
        if GATHER_BLOCK not in supported:
            return None, f"the target does not run {GATHER_BLOCK}: the embedding stays float"
        reason = check_layout(int(tensor.shape[1]), self.bits, self.block)
        if reason is not None:
            return None, f"embedding width: {reason}"
        return WeightSite(node, "embedding", np.asarray(tensor.numpy(), np.float32), index), ""

    def site_bits(self, site: WeightSite) -> int:
        """The bits ``site`` is quantized to (the lm_head may take 8 with ``lm_head=int8``)."""
        return 8 if site.kind == "lm_head" and self.lm_head == "int8" else self.bits


def transposed_constant(value: ir.Value | None) -> ir.TensorProtocol | None:
    """The constant 2-D tensor that ``value`` is the plain transpose of (``Transpose`` with
    no perm or perm [1, 0]), or ``None``."""
    producer = value.producer() if value is not None else None
    if producer is None or producer.op_type != "Transpose" or producer.domain not in ("", "ai.onnx"):
        return None
    perm = producer.attributes.get("perm")
    if perm is not None and list(perm.as_ints()) != [1, 0]:
        return None
    tensor = constant_tensor(producer.inputs[0])
    return tensor if tensor is not None and len(tensor.shape) == 2 else None


def remove_dead_transposes(graph: ir.Graph) -> None:
    """Remove the Transpose nodes of constants that a rewrite left without readers, and the
    initializers only they read."""
    for node in list(graph):
        if node.op_type != "Transpose" or transposed_constant(node.outputs[0]) is None:
            continue
        output = node.outputs[0]
        if output.uses() or output.is_graph_output():
            continue
        source = node.inputs[0]
        remove_node(node)
        if source.is_initializer() and not source.uses() and not source.is_graph_output() and not source.is_graph_input():
            del graph.initializers[source.name]


def lm_head_node(graph: ir.Graph) -> ir.Node | None:
    """The MatMul that produces the ``logits`` graph output, through views and casts."""
    value = next((v for v in graph.outputs if v.name == "logits"), None)
    while value is not None:
        producer = value.producer()
        if producer is None:
            return None
        if producer.op_type == "MatMul":
            return producer
        if producer.op_type not in _LOGITS_CARRIERS or not producer.inputs:
            return None
        value = producer.inputs[0]
    return None


class WeightPlan:
    """The quantized form of every site, computed once, and the models built from it."""

    def __init__(self, options: QuantizeWeights, model: Model, sites: Sequence[WeightSite], ctx: PassContext) -> None:
        self.options = options
        self.ctx = ctx
        self.original = model.clone()
        self.sites = list(sites)
        self._samples: list[dict[str, np.ndarray]] | None = None
        self._random_samples = False
        self._reference: list[list[np.ndarray]] | None = None
        self._energy: dict[str, float] | None = None
        hessians = self._hessians() if options.method == "gptq" else {}
        self.weights: dict[str, BlockQuantized] = {}
        self.embeddings: dict[str, tuple[np.ndarray, np.ndarray, np.ndarray | None]] = {}
        for done, site in enumerate(self.sites, start=1):
            bits = options.site_bits(site)
            if site.kind == "embedding":
                data, scales, zero, _ = quantize_embedding(site.weight, bits, options.block, options.symmetric)
                self.embeddings[site.name] = (data, scales, zero)
            elif site.name in hessians:
                self.weights[site.name] = quantize_gptq(site.weight, hessians[site.name], bits, options.block,
                                                        options.symmetric, act_order=options.act_order)
            else:
                self.weights[site.name] = quantize_rtn(site.weight, bits, options.block, options.symmetric)
            ctx.progress.step(f"{options.method} weights", done, len(self.sites))

    # -- calibration -----------------------------------------------------------------------
    def samples(self) -> list[dict[str, np.ndarray]]:
        """Feeds for GPTQ and the fallback: the calibration data, else the run's verification
        samples, else seeded random feeds."""
        if self._samples is None:
            if self.ctx.calibration is not None:

                self._samples = as_calibration(self.ctx.calibration, self.original).batches()
            elif self.ctx.reference.ready:
                self._samples = [dict(feeds) for feeds in self.ctx.reference.samples]
            else:
                self._random_samples = True
                self._samples = [random_feeds(self.original, seed=self.ctx.seed + i, dims=self.ctx.dims)
                                 for i in range(RANDOM_SAMPLES)]
        return self._samples

    def _hessians(self) -> dict[str, np.ndarray]:
        """X^T X of each MatMul site's activation, by site name."""
        matmuls = [s for s in self.sites if s.kind != "embedding"]
        names = [s.node.inputs[0].name for s in matmuls]
        by_value = collect_hessians(self.original, self.samples(), names, executor=self.ctx.executor)
        return {s.name: by_value[s.node.inputs[0].name] for s in matmuls}

    # -- building --------------------------------------------------------------------------
    def apply(self, model: Model, keep_float: frozenset[str]) -> list[str]:
        """Rewrite the planned sites of ``model`` (in place) except ``keep_float``; returns
        the names rewritten."""
        graph = model.graph
        names = NameScope(model.ir)
        nodes = list(graph)  # the plan's sites are positions in the input model's node order
        done: list[str] = []
        made: dict[str, ir.Node] = {}
        for site in self.sites:
            node = nodes[site.index]
            if site.name in keep_float or node.op_type != site.node.op_type:
                continue
            if site.kind == "embedding":
                new = self._gather_block(graph, names, node, *self.embeddings[site.name])
            else:
                new = self._matmul_nbits(graph, names, node, self.weights[site.name])
            inherit_provenance(new, [node])
            graph.insert_before(node, new)
            made[site.name] = new
            redirect(graph, node.outputs[0], new.outputs[0], before=node, replaced=[node])
            replaced = [v for v in node.inputs if v is not None and v.is_initializer()]
            remove_node(node)
            for value in replaced:
                if not value.uses() and not value.is_graph_output() and not value.is_graph_input():
                    del graph.initializers[value.name]
            done.append(site.name)
        self._share_tied_table(graph, names, made)
        if done:
            model.ir.opset_imports.setdefault(CONTRIB, 1)
        return done

    def _share_tied_table(self, graph: ir.Graph, names: NameScope, made: dict[str, ir.Node]) -> None:
        """A quantized embedding whose blocks are byte for byte the quantized lm_head's (tied
        weights, both rounded to nearest at the same bits and block) reads the lm_head's
        initializers through a Reshape instead of keeping its own copy."""
        heads = [s for s in self.sites if s.kind == "lm_head" and s.name in made]
        for site in (s for s in self.sites if s.kind == "embedding" and s.name in made):
            data, scales, zero = self.embeddings[site.name]
            for head in heads:
                weight = self.weights[head.name]
                b, head_scales, head_zero = pack_matmul_nbits(weight)
                if (zero is not None or head_zero is not None or b.size != data.size
                        or not np.array_equal(b.reshape(data.shape), data)
                        or not np.array_equal(head_scales.reshape(scales.shape), scales)):
                    continue
                gather, nbits = made[site.name], made[head.name]
                own = [gather.inputs[0], gather.inputs[2]]
                shared = []
                for index, shape in ((1, data.shape), (2, scales.shape)):
                    source = nbits.inputs[index]
                    assert source is not None
                    view = ir.node("Reshape", [source, new_initializer(graph, names.fresh(f"{source.name}_shape"),
                                                                        np.array(shape, dtype=np.int64))],
                                   outputs=[ir.Value(name=names.fresh(f"{source.name}_as_table"))])
                    inherit_provenance(view, [gather])
                    graph.insert_before(gather, view)
                    shared.append(view.outputs[0])
                gather.replace_input_with(0, shared[0])
                gather.replace_input_with(2, shared[1])
                for value in own:
                    if value is not None and not value.uses():
                        del graph.initializers[value.name]
                break

    def _matmul_nbits(self, graph: ir.Graph, names: NameScope, node: ir.Node, weight: BlockQuantized) -> ir.Node:
        base = node.inputs[1].name or node.name
        b, scales, zero = pack_matmul_nbits(weight)
        inputs = [node.inputs[0], new_initializer(graph, names.fresh(f"{base}_Q{weight.bits}"), b),
                  new_initializer(graph, names.fresh(f"{base}_scales"), scales)]
        if zero is not None:
            inputs.append(new_initializer(graph, names.fresh(f"{base}_zero_points"), zero))
        attributes = {"K": weight.k, "N": weight.n, "bits": weight.bits, "block_size": weight.block}
        if self.options.accuracy_level:
            attributes["accuracy_level"] = self.options.accuracy_level
        output = ir.Value(name=names.fresh(f"{base}_nbits"), type=node.outputs[0].type,
                          shape=node.outputs[0].shape)
        return ir.node("MatMulNBits", inputs, attributes, domain=CONTRIB, outputs=[output],
                       name=f"{node.name or base}_MatMulNBits")

    def _gather_block(self, graph: ir.Graph, names: NameScope, node: ir.Node, data: np.ndarray, scales: np.ndarray,
                      zero: np.ndarray | None) -> ir.Node:
        base = node.inputs[0].name or node.name
        inputs = [new_initializer(graph, names.fresh(f"{base}_Q{self.options.bits}"), data), node.inputs[1],
                  new_initializer(graph, names.fresh(f"{base}_scales"), scales)]
        if zero is not None:
            inputs.append(new_initializer(graph, names.fresh(f"{base}_zero_points"), zero))
        attributes = {"bits": self.options.bits, "block_size": self.options.block, "gather_axis": 0,
                      "quantize_axis": 1}
        output = ir.Value(name=names.fresh(f"{base}_blockq"), type=node.outputs[0].type,
                          shape=node.outputs[0].shape)
        return ir.node("GatherBlockQuantized", inputs, attributes, domain=CONTRIB, outputs=[output],
                       name=f"{node.name or base}_GatherBlockQuantized")

    def build(self, keep_float: frozenset[str]) -> Model:
        """A quantized clone of the input model with ``keep_float`` left in float."""
        clone = self.original.clone()
        self.apply(clone, keep_float)
        return clone

    # -- fallback --------------------------------------------------------------------------
    def budget(self) -> FidelityBudget:
        """The run's budget, else ppl=1.02 for a language model, else cos=0.99."""
        if self.ctx.budget is not None:
            return self.ctx.budget
        return DEFAULT_LM_BUDGET if TokenTargets.of(self.original, self.samples()) is not None else DEFAULT_BUDGET

    def score(self, keep_float: frozenset[str]) -> Fidelity:
        """Fidelity of the model quantized except ``keep_float`` against the float model on
        :meth:`samples`, run as the compiled model will run (perplexity and agreement too
        for a language model)."""
        samples = self.samples()
        runner = self.ctx.executor.runner(self.original, purpose="deployment")
        if self._reference is None:
            self._reference = [runner.values(feeds) for feeds in samples]
        candidate = self.ctx.executor.runner(self.build(keep_float), purpose="deployment")
        outputs = [candidate.values(feeds) for feeds in samples]
        return measure_fidelity(self._reference, outputs, tokens=TokenTargets.of(self.original, samples))

    def sensitivity(self, kept: frozenset[str] = frozenset()) -> SensitivityReport:
        """Rank the sites (but those already ``kept`` in float) and keep the worst
        offenders in float within the budget."""
        energy = self.energy_saved()
        label = f"int{self.options.bits}"
        layers = [LayerSensitivity(s.name, s.kind, energy.get(s.name, 0.0), decision=label)
                  for s in self.sites if s.name not in kept]
        budget = self.budget()
        # Layers that save no energy are still wanted small (when=saves-energy drops them
        # before this): they rank last, and go back to float only for the budget.
        return choose_float_layers(
            layers, lambda names: self.score(names | kept), budget, metric=budget.primary_metric(),
            costly_first=False,
            progress=lambda done, total: self.ctx.progress.step(f"{label} sensitivity", done, total),
        )

    def energy_saved(self) -> dict[str, float]:
        """Estimated energy (mJ per inference at ``ctx.dims``) each site's quantized form
        saves over its float node, on the context's profile; empty without one."""
        if self._energy is None:
            self._energy = {}
            if self.ctx.profile is not None:
                before = estimate_cost(self.original, self.ctx.profile, dims=self.ctx.dims)
                after = estimate_cost(self.build(frozenset()), self.ctx.profile, dims=self.ctx.dims)
                # Each site is replaced by one node at its own position in the node order.
                for site in self.sites:
                    old, new = before.nodes[site.index], after.nodes[site.index]
                    if new.op_type in ("MatMulNBits", "GatherBlockQuantized"):
                        self._energy[site.name] = old.energy_mj - new.energy_mj
        return self._energy

    def stats(self, applied: Sequence[str]) -> dict[str, int | float]:
        """Ledger counters of the rewrite that was applied."""
        done = set(applied)
        stats: dict[str, int | float] = {"quantized": len(applied), "float_fallback": 0}
        saved = 0
        for site in self.sites:
            if site.name not in done:
                stats["float_fallback"] += 1
                continue
            key = f"quantized.{site.kind}"
            stats[key] = stats.get(key, 0) + 1
            if site.kind == "embedding":
                data, scales, zero = self.embeddings[site.name]
                packed = data.nbytes + scales.nbytes + (zero.nbytes if zero is not None else 0)
            else:
                packed = self.weights[site.name].packed_bytes()
            saved += site.weight.nbytes - packed
        stats["weight_bytes_saved"] = saved
        stats[f"method.{self.options.method}"] = 1
        if self._random_samples:
            stats["calibrated_on_random_inputs"] = RANDOM_SAMPLES
        energy = self.energy_saved()
        if energy:
            stats["est_energy_saved_mJ"] = round(sum(energy.get(n, 0.0) for n in applied), 6)
        return stats
