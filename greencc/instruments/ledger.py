"""The ledger instrument: a report row for the input model and after every pass (cost
estimate, fidelity, stats, and measurements when the driver measures), written into a
:class:`~greencc.report.ledger.Report`.
"""

from __future__ import annotations

import datetime as _dt
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

from greencc import __version__
from greencc.cost.estimate import estimate_cost
from greencc.cost.kernel_model import (
    ENERGY_UNCALIBRATED_MARK,
    Calibration,
    KernelModel,
    find_calibration,
    find_validation,
    node_features,
)
from greencc.model import DecoderSpec
from greencc.pipeline.instruments import Instrument, PassRecord
from greencc.report.ledger import PassRow, Report

if TYPE_CHECKING:
    from greencc.cost.estimate import CostEstimate
    from greencc.model import Model
    from greencc.pipeline.base import Pass
    from greencc.pipeline.context import PassContext


MeasureModel = Callable[["Model", Mapping[str, int]], dict[str, Any]]

# The past a decoder's per-token figures are priced after: a decode step's cost grows with
# the KV cache it reads, so the figure states the context it holds for.
DECODE_CONTEXT_TOKENS = 128
# The report lists this many of the final model's costliest nodes.
COSTLIEST_NODES = 10


class LedgerInstrument(Instrument):
    """Writes a :class:`PassRow` for the input model and after every pass into ``report``.

    The cost estimate is recomputed only when a pass modified the model. With ``measure``
    (a callable ``(model, dims) -> {"latency", "energy"} | {"error"}``, see
    ``greencc.driver``), the input model and the model after every pass that modified it
    are measured too; a row whose pass changed nothing (or was rolled back) reuses the
    previous figure and names the row it comes from. The input model is measured twice
    (the second latency in ``report.baseline_repeats``) so that the report can warn when repeated
    measurements disagree beyond their spread.

    Where the target was calibrated on this machine, the calibrated kernel model prices
    the input and the final model too (``report.kernel_estimate``, with the share of each
    model's predicted time on kernels no calibration benchmark timed); the report also gets
    this machine's validation of the profile and the final model's costliest nodes.
    """

    def __init__(self, report: Report, measure: MeasureModel | None = None) -> None:
        self.report = report
        self._last_cost: CostEstimate | None = None
        self._last_step: dict[str, Any] | None = None
        self._measure = measure
        self._last_measured: tuple[int, dict[str, Any]] | None = None
        self._calibration: Calibration | None = None

    def enter_pipeline(self, model: Model, ctx: PassContext) -> None:
        self._last_cost = self._estimate(model, ctx)
        if self._last_cost is not None:
            self.report.unpriced_nodes["input"] = self._last_cost.unpriced_nodes()
        self._last_step = self._decode_step(model, ctx)
        row = self._row("(input)", model, PassRecord("(input)", False), ctx)
        self._add_measurement(row, model, ctx, changed=True)
        if row.measured is not None and "latency" in row.measured:
            repeat = self._measure(model, ctx.dims)  # type: ignore[misc]
            if "latency" in repeat:
                self.report.baseline_repeats.append(repeat["latency"])
        self.report.rows.append(row)
        self._calibration = _calibration_for(ctx)
        if ctx.profile is not None:
            self.report.validation = find_validation(ctx.profile.name)
        kernel = self._kernel_figure(model, ctx)
        if kernel is not None and self._calibration is not None:
            self.report.kernel_estimate = {
                "label": (f"estimate: model:kernels({self._calibration.profile.name}, latency calibrated on this "
                          "machine, priced over greencc's graph; energy = dynamic energy from the profile's "
                          "pJ/MAC and pJ/byte + static power × kernel-model latency)"),
                "profile": self._calibration.profile.name,
                "original_ms": kernel[0], "original_mj": kernel[1], "final_ms": None, "final_mj": None,
                "extrapolated": {"original": kernel[2]},
            }

    def after_pass(self, pass_: Pass, model: Model, ctx: PassContext, record: PassRecord) -> None:
        previous = self._last_cost
        changed = record.modified and not record.rolled_back
        if changed:
            self._last_cost = self._estimate(model, ctx)
            self._last_step = self._decode_step(model, ctx)
        row = self._row(record.name, model, record, ctx)
        if previous is not None and self._last_cost is not None:
            row.delta_latency_ms = self._last_cost.latency_ms - previous.latency_ms
            row.delta_energy_mj = self._last_cost.energy_mj - previous.energy_mj
        self._add_measurement(row, model, ctx, changed=changed)
        self.report.rows.append(row)

    def _add_measurement(self, row: PassRow, model: Model, ctx: PassContext, *, changed: bool) -> None:
        """Measure the model of ``row`` when it changed; otherwise reuse the last figure."""
        if self._measure is None:
            return
        if changed or self._last_measured is None:
            row.measured = self._measure(model, ctx.dims)
            self._last_measured = (len(self.report.rows), row.measured)
            return
        index, figure = self._last_measured
        row.measured = {**figure, "same_as": self.report.rows[index].name, "same_as_row": index}

    def exit_pipeline(self, model: Model, ctx: PassContext) -> None:
        self.report.near_misses = [
            {"pass": m.pass_name, "node": m.node, "reason": m.reason} for m in ctx.near_misses
        ]
        kernel = self._kernel_figure(model, ctx)
        if kernel is not None and self.report.kernel_estimate is not None:
            self.report.kernel_estimate.update(final_ms=kernel[0], final_mj=kernel[1])
            self.report.kernel_estimate["extrapolated"]["final"] = kernel[2]
        if self._last_cost is not None:
            self.report.costliest_nodes = _costliest(self._last_cost)
            self.report.unpriced_nodes["final"] = self._last_cost.unpriced_nodes()

    def _kernel_figure(self, model: Model, ctx: PassContext) -> tuple[float, float, dict[str, float]] | None:
        """(ms, mJ) per inference of ``model`` by the calibrated kernel model, and the
        share (0..1) of its latency on each kernel no calibration benchmark timed; or None."""
        calibration, cost = self._calibration, self._last_cost
        if calibration is None or cost is None:
            return None
        kernel_model = KernelModel.from_dict(calibration.fit["kernel_model"])
        prediction = kernel_model.predict(node_features(model, calibration.profile, ctx.dims))
        latency_ms = prediction.seconds * 1e3
        return (latency_ms, cost.dynamic_energy_mj + calibration.profile.static_power_w * latency_ms,
                prediction.extrapolated_shares())

    def _estimate(self, model: Model, ctx: PassContext) -> CostEstimate | None:
        if ctx.profile is None:
            return None

        return estimate_cost(model, ctx.profile, dims=ctx.dims)

    def _decode_step(self, model: Model, ctx: PassContext) -> dict[str, Any] | None:
        """A decoder's estimated decode step (seq 1 after DECODE_CONTEXT_TOKENS of past)."""
        if ctx.profile is None or DecoderSpec.of(model) is None:
            return None

        batch = int(ctx.dims.get("batch", 1))
        dims = {"batch": batch, "seq": 1, "past_seq": DECODE_CONTEXT_TOKENS, "total_seq": DECODE_CONTEXT_TOKENS + 1}
        step = estimate_cost(model, ctx.profile, dims=dims)
        return {"context": DECODE_CONTEXT_TOKENS, "batch": batch, "est_latency_ms": step.latency_ms,
                "est_energy_mj": step.energy_mj}

    def _row(self, name: str, model: Model, record: PassRecord, ctx: PassContext) -> PassRow:
        cost = self._last_cost
        fidelity = record.fidelity.to_dict() if record.fidelity is not None else None
        return PassRow(
            name=name,
            modified=record.modified,
            wall_ms=round(record.wall_ms, 3),
            nodes=len(model.graph),
            parameters=model.parameter_count(),
            model_bytes=model.weights_nbytes(),
            macs_by_dtype=dict(cost.macs_by_dtype) if cost else {},
            est_latency_ms=cost.latency_ms if cost else None,
            est_energy_mj=cost.energy_mj if cost else None,
            fidelity=fidelity,
            stats=dict(record.stats),
            rolled_back=record.rolled_back,
            energy_method=self.report.energy_method if cost else None,
            per_token=dict(self._last_step) if self._last_step is not None else None,
        )


def _calibration_for(ctx: PassContext) -> Calibration | None:
    """This machine's calibration of the context's target, when the context prices with
    its calibrated profile (as the driver picks it for a target given by name)."""
    if ctx.target is None or ctx.profile is None or not getattr(ctx.profile, "calibrated", False):
        return None
    calibration = find_calibration(ctx.target.name, ctx.target.options.get("threads"))
    if calibration is None or calibration.profile.name != ctx.profile.name:
        return None
    if "kernel_model" not in calibration.fit:
        return None
    return calibration


def _costliest(cost: CostEstimate) -> list[dict[str, Any]]:
    """The ``COSTLIEST_NODES`` nodes of ``cost`` with the most estimated energy."""
    total = cost.energy_mj or 1.0
    nodes = sorted(cost.nodes, key=lambda n: n.energy_mj, reverse=True)[:COSTLIEST_NODES]
    return [{"name": n.name, "op_type": n.op_type, "module": n.module, "macs": n.macs,
             "latency_ms": n.latency_ms, "energy_mj": n.energy_mj, "share": n.energy_mj / total,
             "bound": n.bound} for n in nodes]


def new_report(model: Model, ctx: PassContext, pipeline: str) -> Report:
    """An empty report describing ``model``, the context's target/profile and config, and
    ``pipeline``."""
    profile = ctx.profile
    profile_info = None
    method = "none (no hardware profile)"
    if profile is not None:
        profile_info = {
            "name": profile.name,
            "calibrated": bool(getattr(profile, "calibrated", False)),
            "note": getattr(profile, "calibration_note", ""),
        }
        state = "uncalibrated roofline"
        if profile_info["calibrated"]:
            state = "calibrated roofline"
            if ENERGY_UNCALIBRATED_MARK in profile_info["note"]:
                state = "latency calibrated on this machine, energy terms uncalibrated"
        method = f"estimate: model:cost({profile.name}, {state})"
    return Report(
        model={
            "source": model.provenance.source,
            "exporter": model.provenance.exporter,
            "inputs": [str(s) for s in model.inputs],
            "outputs": [str(s) for s in model.outputs],
        },
        target=ctx.target.name if ctx.target is not None else None,
        profile=profile_info,
        dims=dict(ctx.dims),
        pipeline=pipeline,
        energy_method=method,
        config=ctx.config.to_dict() if ctx.config is not None else None,
        greencc_version=__version__,
        created=_dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    )
