"""The high-level driver: ``optimize`` (pipeline + verification + ledger), ``compile``
(optimize, legalize and lower to a target) and ``inspect`` (size, work and cost).
"""

from __future__ import annotations

import functools
import os
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import onnx

from greencc.data import CalibrationData, as_calibration
from greencc.errors import GreenccError, TargetUnavailableError, UnsupportedOpError, UsageError
from greencc.frontend.onnx_file import load
from greencc.instruments.ledger import LedgerInstrument, MeasureModel, new_report
from greencc.instruments.verify import VerifyInstrument
from greencc.ir.shapes import symbolic_dims
from greencc.model import Model
from greencc.pipeline.context import PassContext
from greencc.pipeline.instruments import Instrument
from greencc.pipeline.manager import PassManager
from greencc.pipeline.text import Pipeline
from greencc.report.ledger import Report
from greencc.target import UNSUPPORTED, CompiledModel, Target, resolve_target

ModelLike = Model | str | os.PathLike | bytes | onnx.ModelProto


def as_model(model: ModelLike) -> Model:
    """A greencc ``Model`` from a Model, a path, bytes or a ModelProto."""
    return model if isinstance(model, Model) else load(model)


def resolve_dims(model: Model, dims: Mapping[str, int] | None) -> dict[str, int]:
    """Bind every symbolic input dim: given values first, 1 for the rest."""
    resolved = {name: 1 for name in symbolic_dims(model.ir)}
    resolved.update({k: int(v) for k, v in (dims or {}).items()})
    return resolved


def optimize(
    model: ModelLike,
    pipeline: str | Pipeline = "-O1",
    *,
    target: Target | str | None = "ort-cpu",
    profile: Any = None,
    calibration: CalibrationData | Iterable[Mapping[str, Any]] | str | os.PathLike | None = None,
    budget: Any = None,
    dims: Mapping[str, int] | None = None,
    verify: bool = True,
    seed: int = 0,
    instruments: Sequence[Instrument] = (),
    reproducer_dir: str | os.PathLike | None = None,
    measure_model: MeasureModel | None = None,
) -> tuple[Model, Report]:
    """Run ``pipeline`` over ``model`` with verification and the ledger; the input is not
    modified. Returns the rewritten model and its :class:`Report` (estimates for the
    target's hardware profile at ``dims``). ``measure_model`` ``(model, dims) -> dict``
    measures the input and the model after every pass that changed it, into each row's
    ``measured`` (``compile(measure=True)`` passes one that lowers to the target)."""
    model = as_model(model)
    if target is not None and profile is None:
        target = _resolve_target(target)
    ctx = PassContext(
        target=target,
        profile=profile,
        calibration=_checked_calibration(calibration, model),
        budget=budget,
        seed=seed,
        dims=resolve_dims(model, dims),
        verify=verify,
        reproducer_dir=reproducer_dir,
    )
    manager = PassManager(pipeline)
    report = new_report(model, ctx, str(manager.pipeline))
    ctx.instruments = [
        *([VerifyInstrument()] if verify else []),
        LedgerInstrument(report, measure=measure_model),
        *instruments,
    ]
    with ctx:
        optimized = manager.run(model, ctx)
    return optimized, report


def compile(  # noqa: A001 - the public verb of a compiler
    model: ModelLike,
    target: Target | str = "ort-cpu",
    pipeline: str | Pipeline = "-O1",
    *,
    calibration: CalibrationData | Iterable[Mapping[str, Any]] | str | os.PathLike | None = None,
    budget: Any = None,
    dims: Mapping[str, int] | None = None,
    verify: bool = True,
    threads: int | None = None,
    target_options: Mapping[str, Any] | None = None,
    seed: int = 0,
    measure: bool = False,
    instruments: Sequence[Instrument] = (),
    reproducer_dir: str | os.PathLike | None = None,
    output_dir: str | os.PathLike | None = None,
    grid_intensity: float | str | None = None,
    pue: float | None = None,
    energy_meter: Any = None,
    energy_window_s: float = 1.0,
) -> CompiledModel:
    """Optimize ``model`` with ``pipeline``, legalize and lower it for ``target``.

    Returns a :class:`CompiledModel` whose ``.report`` is the per-pass ledger. With
    ``measure=True`` the input model and the model after every pass that changed it are
    lowered to the target and measured: latency (ms, median and spread) and energy per
    inference over a window of at least ``energy_window_s`` seconds (``energy_meter``,
    default the best meter here: NVML or RAPL, else the labelled CPU-time estimate), in
    each row's ``measured``; the report's ``measured`` / ``measured_energy`` are the last
    row's (the compiled model's graph) and ``baseline_measured`` the original model's,
    lowered to the target without passes. ``grid_intensity`` (gCO2e/kWh, or a location
    code such as ``"FRA"``, ``"USA:california"`` looked up in CodeCarbon's tables; default
    475, the IEA 2019 world average) and ``pue`` (default 1.0) turn every energy figure into
    gCO2e. ``output_dir`` saves the artifact (and ``report.json``) atomically.

    ``target_options`` go to the target's constructor (``greencc targets`` lists each
    target's options, e.g. tvm-llvm's ``tune_budget_s``); ``threads`` is one of them.

    For ``target="ort-cpu"`` given by name, a profile calibrated on this machine by
    ``greencc cost calibrate`` for the same thread count replaces the default one.
    """
    from greencc.measure.carbon import CarbonFactors

    factors = CarbonFactors.of(grid_intensity, pue)
    if measure and not (isinstance(energy_window_s, (int, float)) and energy_window_s > 0):
        raise UsageError(f"energy_window_s={energy_window_s!r} must be a positive number of seconds")
    options = {**(target_options or {}), **({"threads": threads} if threads is not None else {})}
    resolved = _resolve_target(target, **options)
    availability = resolved.available()
    if not availability.ok:
        raise TargetUnavailableError(
            f"target '{resolved.name}' is not available: {availability.reason}",
            hint="run `greencc targets` to see what runs here",
        )
    full = Pipeline.of(pipeline)
    legal = resolved.legalize()
    if legal:
        full = Pipeline.of([str(full), *legal] if str(full) else legal)
    model = as_model(model)
    _check_supported(resolved, model)
    meter = None
    measure_model: MeasureModel | None = None
    if measure:
        meter = energy_meter if energy_meter is not None else _default_meter(resolved)
        measure_model = functools.partial(
            _measure_lowered, target=resolved, seed=seed, meter=meter, window_s=energy_window_s
        )
    optimized, report = optimize(
        model, full, target=resolved, calibration=calibration, budget=budget, dims=dims,
        verify=verify, seed=seed, instruments=instruments, reproducer_dir=reproducer_dir,
        measure_model=measure_model,
    )
    ctx = PassContext(target=resolved, dims=report.dims, seed=seed)
    compiled = resolved.lower(optimized, ctx)
    compiled.report = report
    report.carbon_factors = factors.to_dict()
    if measure:
        final = _figures(report.rows[-1].measured)
        if "latency" not in final:  # the last pass's model could not be measured: the compiled one
            latency, energy = _measure(compiled, optimized, report.dims, seed, meter, energy_window_s)
            final = {"latency": latency, "energy": energy}
        report.measured, report.measured_energy = final["latency"], final["energy"]
        if legal:  # the input row is not the original as the target runs it
            report.baseline_measured = _measure_original(
                model, resolved, report.dims, seed, meter, energy_window_s
            )
        else:
            report.baseline_measured = _figures(report.rows[0].measured)
    if output_dir is not None:
        compiled.save(output_dir)
    return compiled


def _checked_calibration(calibration: Any, model: Model) -> CalibrationData | None:
    """``calibration`` (a CalibrationData, feed dicts, arrays or an .npz path) checked
    against the model's inputs before any work, so bad data fails with nothing written."""
    return None if calibration is None else as_calibration(calibration, model).check(model)


def _resolve_target(target: Target | str, **options: Any) -> Target:
    """``resolve_target``, plus this machine's calibrated profile for a target given by name.

    Only a plain target name (``"ort-cpu"``) picks up a calibrated profile: a tag names its
    profile on purpose, and an instance carries its own.
    """
    resolved = resolve_target(target, **options)
    if isinstance(target, str) and target.strip() == resolved.name:
        from greencc.cost.kernel_model import find_calibrated_profile

        calibrated = find_calibrated_profile(resolved.name, resolved.options.get("threads"))
        if calibrated is not None:
            resolved = resolve_target(resolved, profile=calibrated)
    return resolved


def _default_meter(target: Target) -> Any:
    """The best energy meter for where ``target`` runs (a CPU target never reads a GPU's)."""
    from greencc.measure.energy import best_meter

    device = getattr(target, "device", None) or ("cpu" if "cpu" in target.name else "any")
    return best_meter(device).meter


def _measure(
    compiled: CompiledModel, model: Model, dims: Mapping[str, int], seed: int, meter: Any,
    window_s: float,
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Latency statistics (ms) and energy per inference of ``compiled`` on random feeds."""
    from greencc.measure.energy import measure_energy
    from greencc.verify.feeds import random_feeds

    feeds = compiled.check_feeds(random_feeds(model, seed=seed, dims=dims))
    stats = compiled.benchmark(feeds)
    energy = measure_energy(lambda: compiled._run(feeds), meter=meter, min_window_s=window_s)
    return stats.to_dict(), energy.to_dict()


def _measure_lowered(
    model: Model, dims: Mapping[str, int], *, target: Target, seed: int, meter: Any, window_s: float
) -> dict[str, Any]:
    """``model`` lowered to ``target`` and measured: ``{"latency": ms stats, "energy": mJ
    per inference}``, or ``{"error": why}`` when it cannot be lowered or run."""
    try:
        lowered = target.lower(model, PassContext(target=target, dims=dims, seed=seed))
        latency, energy = _measure(lowered, model, dims, seed, meter, window_s)
    except GreenccError as exc:
        return {"error": f"could not be measured: {exc}"}
    return {"latency": latency, "energy": energy}


def _figures(measured: Mapping[str, Any] | None) -> dict[str, Any]:
    """A row's measurement without its bookkeeping (which row it was reused from)."""
    return {k: v for k, v in (measured or {}).items() if k in ("latency", "energy", "error")}


def _measure_original(
    model: Model, target: Target, dims: Mapping[str, int], seed: int, meter: Any, window_s: float
) -> dict[str, Any]:
    """The original model lowered to ``target`` with no passes (legalization only), measured."""
    original = model
    legal = target.legalize()
    if legal:
        try:
            original, _ = optimize(model, legal, target=target, dims=dims, verify=False, seed=seed)
        except GreenccError as exc:
            return {"error": f"the original model could not be legalized: {exc}"}
    figures = _measure_lowered(original, dims, target=target, seed=seed, meter=meter, window_s=window_s)
    if "error" in figures:
        figures["error"] = f"the original model {figures['error']}"
    return figures


def _check_supported(target: Target, model: Model) -> None:
    """Fail before any work when the target cannot run some node (and nothing falls back)."""
    unsupported = [p for p in target.capability(model) if p.target == UNSUPPORTED]
    if unsupported:
        raise UnsupportedOpError(
            f"target '{target.name}' cannot run this model: unsupported {unsupported[0].reason}",
            hint="rewrite or remove the op with a pass, or choose a target that implements it",
        )


def inspect(
    model: ModelLike,
    target: Target | str | None = "ort-cpu",
    *,
    profile: Any = None,
    dims: Mapping[str, int] | None = None,
    top: int = 10,
) -> dict[str, Any]:
    """Size, work and estimated cost of ``model``: ops, parameters, bytes, MACs by dtype,
    estimated latency (ms) and energy (mJ/inference) on the target's profile, the costliest
    nodes, and which nodes the target claims."""
    from greencc.cost.estimate import estimate_cost

    model = as_model(model)
    resolved = None
    if target is not None:
        resolved = _resolve_target(target) if profile is None else resolve_target(target)
    ctx = PassContext(target=resolved, profile=profile, dims=resolve_dims(model, dims))
    info: dict[str, Any] = {
        "source": model.provenance.source,
        "inputs": [str(s) for s in model.inputs],
        "outputs": [str(s) for s in model.outputs],
        "nodes": len(model.graph),
        "ops": dict(model.op_counts().most_common()),
        "parameters": model.parameter_count(),
        "weight_bytes": model.weights_nbytes(),
        "dims": ctx.dims,
    }
    if ctx.profile is not None:
        cost = estimate_cost(model, ctx.profile, dims=ctx.dims)
        info["cost"] = cost.to_dict()
        info["top_nodes"] = [
            {"name": n.name, "op_type": n.op_type, "macs": n.macs, "energy_mj": n.energy_mj,
             "latency_ms": n.latency_ms, "module": n.module}
            for n in sorted(cost.nodes, key=lambda n: n.energy_mj, reverse=True)[:top]
        ]
    if resolved is not None:
        info["target"] = resolved.name
        info["partitions"] = [
            {"target": p.target, "nodes": len(p.nodes), "reason": p.reason}
            for p in resolved.capability(model)
        ]
    return info
