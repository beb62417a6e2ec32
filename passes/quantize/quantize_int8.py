"""``quantize-int8``: post-training int8 quantization placed where the target has integer
kernels, dynamic or static (QDQ), with an optional sensitivity-driven float fallback.

    quantize-int8  MatMul/Gemm/Conv(x, W) -> integer kernels on DynamicQuantizeLinear(x), int8 W
                   Attention(x, W, b, mask) -> com.microsoft QAttention   (mode=dynamic)
                   op(x, W) -> op(DQ(Q(x)), DQ(Wq))                        (mode=static)
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar, Literal

import numpy as np

from greencc.cost.estimate import estimate_cost
from greencc.data import as_calibration
from greencc.errors import UsageError
from greencc.model import Model
from greencc.pipeline.base import Pass, PassResult, register_pass
from greencc.pipeline.context import PassContext
from greencc.quant import collect_abs_max, collect_ranges, quant_params
from greencc.quant.sensitivity import LayerSensitivity, SensitivityReport, choose_float_layers
from greencc.verify.feeds import random_feeds
from greencc.verify.fidelity import Fidelity, FidelityBudget, measure_fidelity

from .emit import Emitter, QuantizedWeight, quantize_weight
from .placement import QuantSite, ensure_types, find_sites, parse_ops, target_int8_kernels

# The fidelity budget -O3's fallback keeps when the run gives none (min cosine).
DEFAULT_BUDGET = FidelityBudget(min_cosine=0.99)
# Samples the sensitivity analysis scores each candidate on when no calibration data is given.
RANDOM_SAMPLES = 4
# At most this many input channels of one layer run in float as outliers.
MAX_OUTLIERS = 8


@register_pass("quantize-int8")
class QuantizeInt8(Pass):
    """MatMul/Gemm/Conv/Attention -> int8 kernels (dynamic, or static QDQ) where the target has them.

    Rewrites (mode=dynamic, activations quantized per tensor at run time):
      MatMul(x, W)             -> Mul(Cast(MatMulInteger(DynamicQuantizeLinear(x), Wq)), sx·sw)
                                  [+ MatMul(Gather(x, c), W[c]) with x's outlier channels c masked]
      Gemm(x, W, b)            -> the same, + b
      Conv(x, W, b)            -> Mul(Cast(ConvInteger(DynamicQuantizeLinear(x), Wq)), sx·sw) + b
      Attention(x, W, b, mask) -> com.microsoft QAttention(DynamicQuantizeLinear(x), Wq, b, ...)
    Rewrites (mode=static, activation ranges calibrated with ``method``):
      op(x, W)                 -> op(DequantizeLinear(QuantizeLinear(x)), DequantizeLinear(Wq))
      (Conv also quantizes its output, after a following Relu, so the target forms QLinearConv)

    Weights are int8, per output channel (``per_channel``) or per tensor, symmetric unless
    ``symmetric=false``; activations uint8 asymmetric. Only nodes whose op is in ``ops``,
    whose weight is a constant and for which the target lists the integer kernels are
    quantized; masks, softmax and LayerNorm statistics stay float. ``keep_float`` names
    nodes to leave alone. ``outlier_ratio=R`` (dynamic MatMul/Gemm) runs the input
    channels whose calibrated max |x| exceeds R × the median channel's in float beside the
    int8 product (LLM.int8()'s decomposition; at most 8 per layer), so they no longer
    stretch the activation's int8 range; with ``outliers=as-needed`` (and a fallback) a
    split is kept only where the budget needs it — each costs a masking Mul, a Gather, a
    small float MatMul and an Add per call. ``fallback=sensitivity`` keeps the layers that
    cost the most fidelity per energy saved in float until the run's fidelity budget
    (default cos=0.99, scored on unpadded positions) holds on the calibration data.
    Stats: sites quantized per kind, weight bytes saved, estimated energy saved, layers
    whose int8 form costs more than it saves, outlier splits, and with fallback the
    sensitivity ranking and decisions.
    """

    lossy: ClassVar[bool] = True

    mode: Literal["dynamic", "static"] = "dynamic"
    method: Literal["minmax", "percentile", "entropy", "mse"] = "minmax"
    per_channel: bool = True
    symmetric: bool = True
    ops: str = "MatMul,Gemm,Conv,Attention"
    fallback: Literal["none", "sensitivity"] = "none"
    keep_float: str = ""
    outlier_ratio: float = 0.0
    outliers: Literal["always", "as-needed"] = "always"

    def call(self, model: Model, ctx: PassContext) -> PassResult:
        """Find the sites, optionally choose float fallbacks, rewrite the rest."""
        if self.outliers == "as-needed" and self.fallback != "sensitivity":
            raise UsageError("quantize-int8: outliers=as-needed decides by the sensitivity fallback's budget",
                             hint="add fallback=sensitivity, or use outliers=always")
        ops = parse_ops(self.ops)
        kernels = target_int8_kernels(ctx.target)
        ensure_types(model.ir)
        sites, declines = find_sites(model.graph, ops, kernels, mode=self.mode)
        for decline in declines:
            self.decline(ctx, decline.node, decline.reason)
        keep = {name.strip() for name in self.keep_float.split(",") if name.strip()}
        unknown = keep - {s.name for s in sites} - {d.node.name for d in declines}
        if unknown:
            raise UsageError(
                f"quantize-int8: keep_float names no node called {', '.join(sorted(unknown))}",
                hint="name MatMul/Gemm/Conv/Attention nodes as `greencc inspect` lists them",
            )
        for site in sites:
            if site.name in keep:
                self.decline(ctx, site.node, "listed in keep_float")
        sites = [s for s in sites if s.name not in keep]
        if not sites:
            return PassResult(model, False, {"quantized": 0})
        plan = QuantPlan(self, model, sites, ctx)
        stats: dict[str, int | float] = {}
        float_layers: frozenset[str] = frozenset()
        if self.fallback == "sensitivity":
            report = plan.sensitivity()
            float_layers = frozenset(report.kept_float)
            for site in sites:
                if site.name in float_layers:
                    layer = next(x for x in report.layers if x.name == site.name)
                    self.decline(ctx, site.node, f"sensitivity: {layer.why} (cos loss {layer.loss:.5f})")
            stats.update(report.stats())
        replaced = [v for s in sites for v in s.node.inputs[1:3] if v is not None]
        applied = plan.apply(model, float_layers)
        _drop_unused(model, replaced)
        stats.update(plan.stats(applied, float_layers))
        return PassResult(model, bool(applied), stats)


class QuantPlan:
    """Everything quantizing one model needs, computed once: int8 weights, activation
    ranges (static mode), reference outputs and per-layer energy (for the fallback)."""

    def __init__(self, options: QuantizeInt8, model: Model, sites: Sequence[QuantSite], ctx: PassContext) -> None:
        self.options = options
        self.ctx = ctx
        self.original = model.clone()
        self.site_names = [s.name for s in sites]
        self.kinds = {s.name: s.kind for s in sites}
        self._samples: list[dict[str, np.ndarray]] | None = None
        self._reference: list[list[np.ndarray]] | None = None
        self._energy: dict[str, float] | None = None
        self.inserted_nodes = 0
        self.outliers: dict[str, np.ndarray] = {}
        if options.outlier_ratio > 0 and options.mode == "dynamic":
            self._find_outliers(sites)
        self.weights: dict[str, QuantizedWeight] = {}
        self.unsplit_weights: dict[str, QuantizedWeight] = {}  # outlier sites run without the split
        self.unsplit: frozenset[str] = frozenset()  # outlier sites the plan runs unsplit
        for site in sites:
            axis = site.channel_axis if options.per_channel else None
            w = site.weight_array
            if site.name in self.outliers:  # those rows run in float beside the int8 product
                self.unsplit_weights[site.name] = quantize_weight(w, axis, options.symmetric)
                w = w.copy()
                if site.kind == "Gemm" and site.channel_axis == 0:
                    w[:, self.outliers[site.name]] = 0.0
                else:
                    w[self.outliers[site.name], :] = 0.0
            self.weights[site.name] = quantize_weight(w, axis, options.symmetric)
        self.activation_params: dict[str, tuple[np.ndarray, np.ndarray]] = {}
        self.output_params: dict[str, tuple[np.ndarray, np.ndarray]] = {}
        if options.mode == "static":
            self._calibrate(sites)

    # -- outlier channels ----------------------------------------------------------------
    def _find_outliers(self, sites: Sequence[QuantSite]) -> None:
        """Input channels of MatMul/Gemm sites whose max |x| over the calibration data
        exceeds ``outlier_ratio`` × the median channel's (at most MAX_OUTLIERS per site)."""

        candidates = [s for s in sites if s.kind in ("MatMul", "Gemm")]
        if not candidates:
            return
        stats = collect_abs_max(self.original, self.samples(), sorted({s.activation.name for s in candidates}), axis=-1,
                                executor=self.ctx.executor)
        for site in candidates:
            a = np.asarray(stats[site.activation.name], np.float64)
            median = float(np.median(a))
            if median <= 0:
                continue
            order = np.argsort(a)[::-1][:MAX_OUTLIERS]
            picked = np.sort(order[a[order] > self.options.outlier_ratio * median])
            if picked.size:
                self.outliers[site.name] = picked.astype(np.int64)

    # -- static ranges -------------------------------------------------------------------
    def _calibrate(self, sites: Sequence[QuantSite]) -> None:
        if self.ctx.calibration is None:
            raise UsageError(
                "quantize-int8{mode=static} needs calibration data to choose activation ranges",
                hint="give --calib data.npz (or calibration= in Python), or use mode=dynamic",
            )
        data = as_calibration(self.ctx.calibration, self.original)
        names = sorted({s.activation.name for s in sites} | {o.name for s in sites if (o := _conv_output(s))})
        ranges = collect_ranges(self.original, data, names, (self.options.method,), executor=self.ctx.executor)
        for site in sites:
            r = ranges[site.activation.name][self.options.method]
            self.activation_params[site.activation.name] = quant_params(r, "uint8", symmetric=False)
            out = _conv_output(site)
            if out is not None:
                self.output_params[out.name] = quant_params(ranges[out.name][self.options.method], "uint8", symmetric=False)

    # -- building ------------------------------------------------------------------------
    def apply(self, model: Model, keep_float: frozenset[str], unsplit: frozenset[str] | None = None) -> list[str]:
        """Quantize every planned site of ``model`` (in place) except ``keep_float``, the
        outlier sites in ``unsplit`` (default: the plan's) without their float split;
        returns the names quantized."""
        unsplit = self.unsplit if unsplit is None else unsplit
        by_name = {s.name: s for s in find_sites(model.graph, (*self.kinds.values(),),
                                                 target_int8_kernels(self.ctx.target), mode=self.options.mode)[0]}
        emitter = Emitter(model.ir, model.graph)
        done = []
        for name in self.site_names:
            site = by_name.get(name)
            if site is None or name in keep_float:
                continue
            if self.options.mode == "dynamic" and name in unsplit:
                emitter.dynamic(site, self.unsplit_weights[name], None)
            elif self.options.mode == "dynamic":
                emitter.dynamic(site, self.weights[name], self.outliers.get(name))
            else:
                scale, zero_point = self.activation_params[site.activation.name]
                calibrated = _conv_output(site)  # named as in the calibrated (input) model
                emitter.static(site, self.weights[name], scale, zero_point)
                out = _conv_output(site)  # a FusedConv was split: now its Relu's output
                if calibrated is not None and out is not None and calibrated.name in self.output_params:
                    producer = out.producer()
                    assert producer is not None
                    emitter.static_output(out, *self.output_params[calibrated.name], producer)
            done.append(name)
        self.inserted_nodes = emitter.inserted_nodes
        return done

    def build(self, keep_float: frozenset[str], unsplit: frozenset[str] | None = None) -> Model:
        """A quantized clone of the input model with ``keep_float`` left in float (and the
        outlier sites in ``unsplit`` without their split; default: the plan's)."""
        clone = self.original.clone()
        self.apply(clone, keep_float, unsplit)
        return clone

    # -- fidelity ------------------------------------------------------------------------
    def samples(self) -> list[dict[str, np.ndarray]]:
        """The feeds sensitivity is scored on: the calibration data, else seeded random feeds."""
        if self._samples is None:
            if self.ctx.calibration is not None:

                self._samples = list(as_calibration(self.ctx.calibration, self.original).batches())
            else:

                self._samples = [random_feeds(self.original, seed=self.ctx.seed + i, dims=self.ctx.dims)
                                 for i in range(RANDOM_SAMPLES)]
        return self._samples

    def score(self, keep_float: frozenset[str], unsplit: frozenset[str] | None = None) -> Fidelity:
        """Fidelity of the model quantized except ``keep_float`` against the float model,
        on :meth:`samples`, run on ``ctx.executor`` as the compiled model will run
        (purpose ``"deployment"``: all optimizations, the compile's threads).

        Padding-aware: outputs at positions an ``attention_mask`` input marks as padding
        are left out (see :func:`_valid_positions`). After earlier lossy passes of a
        verified pipeline (pruning), the comparison is the run's verification reference
        instead — its samples, against the pipeline's *input* model — so the fallback
        keeps the whole pipeline within the budget rather than being rolled back by it."""
        earlier = _earlier_lossy_reference(self.ctx)
        if earlier is not None:
            samples, reference = earlier
            return measure_fidelity(reference, _run(self.build(keep_float, unsplit), samples, self.ctx))
        if self._reference is None:
            self._reference = _valid_positions(_run(self.original, self.samples(), self.ctx), self.samples())
        candidate = _valid_positions(_run(self.build(keep_float, unsplit), self.samples(), self.ctx), self.samples())
        return measure_fidelity(self._reference, candidate)

    def sensitivity(self) -> SensitivityReport:
        """Rank the sites and keep the worst offenders in float within the budget."""
        energy = self.energy_saved()
        layers = [LayerSensitivity(name, self.kinds[name], energy.get(name, 0.0)) for name in self.site_names]
        budget = self.ctx.budget if self.ctx.budget is not None and self.ctx.budget.min_cosine is not None else DEFAULT_BUDGET
        report = choose_float_layers(
            layers, self.score, budget,
            progress=lambda done, total: self.ctx.progress.step("int8 sensitivity", done, total),
        )
        if self.options.outliers == "as-needed" and not report.kept_float:
            self.unsplit = self._drop_splits(budget, frozenset(report.kept_float))
        return report

    def _drop_splits(self, budget: FidelityBudget, keep_float: frozenset[str]) -> frozenset[str]:
        """The outlier splits the budget does not need: dropped one at a time, the layer
        with the fewest outlier channels first, while the budget still holds."""
        unsplit: frozenset[str] = frozenset()
        for name in sorted(self.outliers, key=lambda n: (len(self.outliers[n]), self.site_names.index(n))):
            if name in keep_float:
                continue
            trial = unsplit | {name}
            if budget.check(self.score(keep_float, trial)) is None:
                unsplit = trial
        return unsplit

    # -- energy --------------------------------------------------------------------------
    def energy_saved(self) -> dict[str, float]:
        """Estimated energy (mJ per inference) each site's int8 form saves over its float
        node: the float node's cost minus the cost of the nodes that replace it (integer
        product, quantization of its input, casts and scale multiplies), on the context's
        hardware profile. Empty without a profile."""
        if self._energy is None:
            self._energy = {}
            if self.ctx.profile is not None:

                before = estimate_cost(self.original, self.ctx.profile, dims=self.ctx.dims)
                after = estimate_cost(self.build(frozenset()), self.ctx.profile, dims=self.ctx.dims)
                float_cost = {n.name: n.energy_mj for n in before.nodes}
                for name in self.site_names:
                    replaced = sum(n.energy_mj for n in after.nodes if n.name.startswith(name + "_"))
                    self._energy[name] = float_cost.get(name, 0.0) - replaced
        return self._energy

    def stats(self, applied: Sequence[str], keep_float: frozenset[str]) -> dict[str, int | float]:
        """Ledger counters of the rewrite that was applied."""
        stats: dict[str, int | float] = {"quantized": len(applied), "float_fallback": len(keep_float)}
        split = [n for n in applied if n in self.outliers and n not in self.unsplit]
        if self.unsplit:
            stats["outlier_splits_dropped"] = len(self.unsplit)
        if split:
            stats["outlier_split_layers"] = len(split)
            stats["outlier_channels_in_float"] = int(sum(len(self.outliers[n]) for n in split))
        for name in applied:
            key = f"quantized.{self.kinds[name]}"
            stats[key] = stats.get(key, 0) + 1
        saved = sum(self.weights[n].q.size * 3 for n in applied)  # float32 -> int8: 3 bytes per weight
        stats["weight_bytes_saved"] = saved
        stats["quantization_nodes_added"] = self.inserted_nodes
        if self._samples is not None and self.ctx.calibration is None:
            # no calibration data: outliers and sensitivity were judged on random inputs
            stats["scored_on_random_inputs"] = len(self._samples)
        energy = self.energy_saved()
        if energy:
            stats["est_energy_saved_mJ"] = round(sum(energy.get(n, 0.0) for n in applied), 6)
            for name in applied:
                if energy.get(name, 0.0) <= 0:
                    stats[f"costs_more_than_saves {name} mJ"] = round(energy[name], 6)
        return stats


def _drop_unused(model: Model, values: Sequence[Any]) -> None:
    """Remove the float weights and biases the int8 forms replaced (unless still read)."""
    graph = model.graph
    for value in values:
        if value.name in graph.initializers and graph.initializers[value.name] is value and not value.uses() \
                and not value.is_graph_input() and not value.is_graph_output():
            del graph.initializers[value.name]


def _conv_output(site: QuantSite) -> Any:
    """The value a static Conv site's output quantization goes on: after its only reader
    when that is a Relu, else its own output (``None`` for other kinds)."""
    if site.kind != "Conv":
        return None
    out = site.node.outputs[0]
    uses = list(out.uses())
    if len(uses) == 1 and uses[0][0].op_type == "Relu" and not out.is_graph_output():
        return uses[0][0].outputs[0]
    return out


def _valid_positions(outputs: list[list[np.ndarray]], samples: Sequence[dict[str, np.ndarray]]) -> list[list[np.ndarray]]:
    """Each output restricted to the unpadded positions, when the model takes a 2-D
    ``attention_mask`` (Hugging Face's convention: 0 = padding) and the output's leading
    dims are [batch, sequence]: a transformer's outputs at padded positions are undefined
    (no consumer that honours the mask reads them) and would otherwise dominate the score.
    Other outputs, and models without such a mask, are compared whole."""
    restricted = []
    for outs, feeds in zip(outputs, samples, strict=True):
        mask = feeds.get("attention_mask")
        if mask is None or np.ndim(mask) != 2:
            restricted.append(outs)
            continue
        keep = np.asarray(mask) != 0
        restricted.append([o[keep] if o.ndim >= 2 and o.shape[:2] == keep.shape else o for o in outs])
    return restricted


def _earlier_lossy_reference(ctx: PassContext) -> tuple[list[dict[str, np.ndarray]], list[list[np.ndarray]]] | None:
    """The run's verification samples and the pipeline input's outputs on them
    (``ctx.reference``), when this pass runs in a verified, budgeted pipeline after a lossy
    pass changed the model."""
    reference = ctx.reference
    if not ctx.verify or ctx.budget is None or not reference.ready or not reference.after_lossy:
        return None
    return list(reference.samples), [list(r) for r in reference.outputs]


def _run(model: Model, samples: Sequence[dict[str, np.ndarray]], ctx: PassContext) -> list[list[np.ndarray]]:
    """``model``'s outputs on every sample, run as the compiled model will run."""
    runner = ctx.executor.runner(model, purpose="deployment")
    return [runner.values(feeds) for feeds in samples]
