"""The high-level driver: ``optimize`` (pipeline + verification + ledger), ``compile``
(one :class:`~greencc.config.CompileConfig`: optimize, legalize and lower to a target),
``replay`` (a reproducer) and ``inspect`` (size, work and cost).
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import os
import warnings
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np
import onnx

from greencc.config import CompileConfig, file_sha256
from greencc.cost.estimate import estimate_cost
from greencc.data import CalibrationData, as_calibration, load_npz_labels
from greencc.errors import GreenccError, TargetUnavailableError, UnsupportedOpError, UsageError
from greencc.execution import Executor
from greencc.execution.calibrate import machine_profile
from greencc.frontend.hf import from_pretrained, is_model_directory
from greencc.frontend.onnx_file import load
from greencc.instruments.ledger import LedgerInstrument, MeasureModel, new_report
from greencc.instruments.verify import VerifyInstrument
from greencc.ir.shapes import symbolic_dims
from greencc.measure.carbon import CarbonFactors
from greencc.measure.energy import best_meter, measure_energy
from greencc.model import DecoderSpec, Model
from greencc.pipeline.context import PassContext
from greencc.pipeline.instruments import Instrument, ProgressInstrument
from greencc.pipeline.manager import PassManager
from greencc.pipeline.plugins import load_plugins
from greencc.pipeline.progress import ProgressCallback, ProgressReporter
from greencc.pipeline.repro import read_reproducer
from greencc.pipeline.text import Pipeline
from greencc.report.ledger import Report
from greencc.target import UNSUPPORTED, CompiledModel, Target, resolve_target
from greencc.verify.feeds import DECODER_DEFAULT_DIMS, random_feeds
from greencc.verify.fidelity import is_language_model

ModelLike = Model | str | os.PathLike | bytes | onnx.ModelProto


def as_model(model: ModelLike) -> Model:
    """A greencc ``Model`` from a Model, a path (an ONNX file, or a Hugging Face directory,
    optionally written ``hf:DIR``), bytes or a ModelProto."""
    if isinstance(model, Model):
        return model
    if isinstance(model, (str, os.PathLike)) and is_model_directory(os.fspath(model).removeprefix("hf:")):
        return from_pretrained(os.fspath(model).removeprefix("hf:"))
    return load(model)


def resolve_dims(
    model: Model, dims: Mapping[str, int] | None, calibration: CalibrationData | None = None
) -> dict[str, int]:
    """Bind every symbolic input dim, each from the first source that has it: ``dims``,
    the array shapes of the first ``calibration`` batch (not for a decoder, whose prompts
    say nothing of its decode shapes), the example inputs ``from_torch`` exported the model
    with. A decoder's ``batch``, ``seq`` and ``past_seq`` default to
    ``DECODER_DEFAULT_DIMS`` and ``total_seq`` is always ``seq + past_seq``. Any other
    dim is bound to 1 with a warning that names it."""
    decoder = DecoderSpec.of(model) is not None
    sources = [
        {k: int(v) for k, v in (dims or {}).items()},
        {} if calibration is None or decoder else calibration_dims(model, calibration),
        dict(model.provenance.options.get("example_dims") or {}),
        DECODER_DEFAULT_DIMS if decoder else {},
    ]
    resolved: dict[str, int] = {}
    defaulted: list[str] = []
    for name in symbolic_dims(model.ir):
        size = next((source[name] for source in sources if name in source), None)
        if size is None and not (decoder and name == "total_seq"):
            defaulted.append(name)
        resolved[name] = 1 if size is None else size
    resolved.update(sources[0])
    if decoder:
        resolved = {**DECODER_DEFAULT_DIMS, **resolved}
    if "total_seq" in resolved and "seq" in resolved and "past_seq" in resolved:
        resolved["total_seq"] = resolved["seq"] + resolved["past_seq"]
    if defaulted:
        names = ", ".join(f"'{name}'" for name in defaulted)
        example = " ".join(f"--dim {name}=N" for name in defaulted)
        warnings.warn(
            f"symbolic dim(s) {names} of {model.provenance.source} not given: priced and run at 1 "
            f"(give them with {example}, dims={{...}}, or calibration data of the shape you deploy)",
            stacklevel=4,
        )
    return resolved


def calibration_dims(model: Model, calibration: CalibrationData) -> dict[str, int]:
    """The symbolic input dims of ``model`` as the first batch of ``calibration`` binds them
    (``{"batch": 1, "seq": 128}`` for arrays of shape (1, 128)). An empty axis binds
    nothing: a model is priced and verified at sizes of at least 1."""
    feeds = next(iter(calibration), None) or {}
    bound: dict[str, int] = {}
    for value in model.graph.inputs:
        array = feeds.get(value.name)
        if value.shape is None or not isinstance(array, np.ndarray) or array.ndim != len(value.shape):
            continue
        for dim, size in zip(value.shape, array.shape, strict=True):
            if not isinstance(dim, int) and dim.value and size > 0:
                bound.setdefault(dim.value, int(size))
    return bound


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
    config: CompileConfig | None = None,
    labels: Any = None,
    progress: ProgressCallback | None = None,
) -> tuple[Model, Report]:
    """Run ``pipeline`` over ``model`` with verification and the ledger; the input is not
    modified. Returns the rewritten model and its :class:`Report` (estimates for the
    target's hardware profile at ``dims``). ``measure_model`` ``(model, dims) -> dict``
    measures the input and the model after every pass that changed it, into each row's
    ``measured`` (``compile(measure=True)`` passes one that lowers to the target).
    ``config`` is the :class:`CompileConfig` recorded in the report and in reproducers.
    ``labels`` (one integer class id per calibration sample, in order; default: the
    ``labels`` array of a calibration ``.npz``) let verification score task accuracy (the
    argmax of the first output), which a budget's ``acc=`` term needs. ``progress`` receives a
    :class:`~greencc.pipeline.progress.ProgressEvent` as each pass starts and ends and as
    long passes advance (see :func:`compile`)."""
    model = as_model(model)
    optimized, report, _ = _optimize(
        model, pipeline, target=target, profile=profile,
        calibration=_checked_calibration(calibration, model), budget=budget, dims=dims,
        verify=verify, seed=seed, instruments=instruments, reproducer_dir=reproducer_dir,
        measure_model=measure_model, config=config, labels=_labels_of(labels, calibration, model),
        progress=ProgressReporter(progress),
    )
    return optimized, report


def _optimize(
    model: Model,
    pipeline: str | Pipeline,
    *,
    target: Target | str | None,
    profile: Any,
    calibration: CalibrationData | None,
    budget: Any,
    dims: Mapping[str, int] | None,
    verify: bool,
    seed: int,
    instruments: Sequence[Instrument],
    reproducer_dir: str | os.PathLike | None,
    measure_model: MeasureModel | None,
    config: CompileConfig | None,
    labels: Any = None,
    progress: ProgressReporter | None = None,
) -> tuple[Model, Report, PassContext]:
    """``optimize`` on checked calibration data; also returns the run's context, which
    ``compile`` lowers with."""
    if target is not None and profile is None:
        target = _resolve_target(target)
    batches = _label_batches(labels, calibration)
    ctx = PassContext(
        target=target,
        profile=profile,
        calibration=calibration,
        budget=budget,
        seed=seed,
        dims=resolve_dims(model, dims, calibration),
        verify=verify,
        reproducer_dir=reproducer_dir,
        config=config,
        executor=Executor.for_compile(target),  # one per compile: every model the run executes
        progress=progress,
        labels=batches,
    )
    manager = PassManager(pipeline)
    report = new_report(model, ctx, str(manager.pipeline))
    if verify and ctx.budget is not None:
        missing = ctx.budget.uncheckable(labels=batches is not None, language_model=is_language_model(model))
        if missing:
            raise UsageError(
                f"the fidelity budget '{ctx.budget}' cannot be checked on this model: {'; '.join(missing)}",
                hint="add a 'labels' array (one integer per sample) to the --calib .npz, or give labels=... "
                "with calibration=... in Python; or drop those terms from --budget",
            )
    verified = max(1, ctx.verification_samples)
    ctx.instruments = [
        *([VerifyInstrument(batches[:verified] if batches is not None else None)] if verify else []),
        LedgerInstrument(report, measure=measure_model),
        ProgressInstrument(len(manager.passes)),
        *instruments,
    ]
    with ctx:
        optimized = manager.run(model, ctx)
    return optimized, report, ctx


def _labels_of(labels: Any, calibration: Any, model: Model) -> Any:
    """``labels`` when given, else the ``labels`` array of a calibration ``.npz`` (None
    when it has none)."""
    if labels is None and isinstance(calibration, (str, os.PathLike)):
        return load_npz_labels(calibration, model)
    return labels


def _label_batches(labels: Any, calibration: CalibrationData | None) -> list[np.ndarray] | None:
    """``labels`` (one per calibration sample, or one row per batch of equal batches) split
    like the calibration batches, or None without labels. Raises ``UsageError`` without
    calibration data or on a count mismatch."""
    if labels is None:
        return None
    if calibration is None:
        raise UsageError("labels were given without the calibration samples they label",
                         hint="pass calibration=... with one label per sample, in the same order")
    array = np.asarray(labels)
    sizes = [len(next(iter(feeds.values()))) for feeds in calibration]
    if array.ndim >= 2 and len(array) == len(sizes) != sum(sizes) and set(sizes) == {array.shape[1]}:
        array = array.reshape(sum(sizes), *array.shape[2:])  # one row of labels per stacked batch
    if array.ndim == 0 or len(array) != sum(sizes):
        raise UsageError(f"{array.size if array.ndim == 0 else len(array)} labels for {sum(sizes)} calibration samples",
                         hint="give one label per calibration sample, in the same order")
    return np.split(array, np.cumsum(sizes)[:-1])


def compile(  # noqa: A001 - the public verb of a compiler
    model: ModelLike | None = None,
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
    plugins: Sequence[str | os.PathLike] = (),
    config: CompileConfig | None = None,
    labels: Any = None,
    progress: ProgressCallback | None = None,
) -> CompiledModel:
    """Optimize ``model`` with ``pipeline``, legalize and lower it for ``target``.

    Returns a :class:`CompiledModel` whose ``.report`` is the per-pass ledger and whose
    ``.config`` is the :class:`CompileConfig` of this compile (also in report.json and the
    artifact's greencc.json). ``config=`` runs a config (e.g. ``CompileConfig.from_toml``)
    instead of the keyword arguments that describe a compile, which must then stay unset;
    ``model`` (default: the config's model file, checked against its SHA-256) and
    ``calibration`` (default: the config's .npz, checked likewise) may still be given.

    With ``measure=True`` the input model and the model after every pass that changed it are
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
    ``plugins`` (``.py`` files or module names) are loaded first: their passes and targets
    can be named in ``pipeline`` and ``target``. ``labels`` (one integer class id per
    calibration sample, in order; default: the ``labels`` array of a calibration ``.npz``)
    let verification score task accuracy (the argmax of the first output), which a budget's
    ``acc=`` term needs; a budget term that cannot be checked on the model (``acc=`` without
    labels, ``ppl=``/``agree=`` on a model without ``input_ids`` and ``logits``) is refused
    (``UsageError``).

    ``progress`` is called with a :class:`~greencc.pipeline.progress.ProgressEvent` as each
    pass starts (pass i of N, seconds elapsed) and ends, as long passes advance (int8
    sensitivity, pruning scores, GPTQ, TVM tuning) and as lowering and measuring begin;
    ``with gc.TerminalProgress() as show: gc.compile(..., progress=show)`` draws it on a
    terminal (and nothing when stderr is not one). Without it a compile is silent.

    A target given by name (``"ort-cpu"``, ``"tvm-llvm"``) without a ``profile`` option
    prices on this machine: a profile calibrated here for the same thread count (by
    ``greencc cost calibrate``, or by a quick calibration (at most 25 s) that ort-cpu runs on
    first use), else the profile detected from the CPU; ``$GREENCC_HOST_PROFILE=detect``
    skips the quick calibration, ``=off`` keeps the shipped socket profile.
    """
    described = {
        "target": target, "pipeline": pipeline, "budget": budget, "dims": dims, "verify": verify,
        "threads": threads, "target_options": target_options, "seed": seed, "measure": measure,
        "grid_intensity": grid_intensity, "pue": pue, "energy_window_s": energy_window_s,
        "plugins": plugins,
    }
    if config is None:
        if model is None:
            raise UsageError("compile() needs a model", hint="pass a model, a path, or config=CompileConfig(...)")
        config = _config_of(described)
    else:
        _check_only_config(described)
    load_plugins(config.plugins)
    factors = CarbonFactors.of(config.grid_intensity, config.pue)
    reporter = ProgressReporter(progress)
    reporter.stage("load model")
    model = as_model(model) if model is not None else _config_model(config)
    source = calibration if calibration is not None else _config_calibration(config)
    data = _checked_calibration(source, model)
    labels = _labels_of(labels, source, model)
    config = _recorded(config, model, calibration, data)
    resolved = _target_of(config, target)
    availability = resolved.available()
    if not availability.ok:
        raise TargetUnavailableError(
            f"target '{resolved.name}' is not available: {availability.reason}",
            hint="run `greencc targets` to see what runs here",
        )
    full = Pipeline.of(config.pipeline)
    legal = resolved.legalize()
    if legal:
        full = Pipeline.of([str(full), *legal] if str(full) else legal)
    _check_supported(resolved, model)
    meter = None
    measure_model: MeasureModel | None = None
    window_s = config.energy_window_s
    if config.measure:
        meter = energy_meter if energy_meter is not None else _default_meter(resolved)
        measure_model = functools.partial(
            _measure_lowered, target=resolved, seed=config.seed, meter=meter, window_s=window_s
        )
    optimized, report, ctx = _optimize(
        model, full, target=resolved, profile=None, calibration=data, budget=config.budget,
        dims=config.dims, verify=config.verify, seed=config.seed, instruments=instruments,
        reproducer_dir=reproducer_dir, measure_model=measure_model, config=config, labels=labels,
        progress=reporter,
    )
    reporter.stage(f"lower {resolved.name}")
    compiled = resolved.lower(optimized, ctx)
    compiled.report = report
    compiled.config = config
    compiled.dims = _runnable_dims(ctx.dims, compiled)
    _warn_specialized(model, compiled)
    report.carbon_factors = factors.to_dict()
    if config.measure:
        reporter.stage("measure")
        final = _figures(report.rows[-1].measured)
        if "latency" not in final:  # the last pass's model could not be measured: the compiled one
            latency, energy = _measure(compiled, optimized, report.dims, config.seed, meter, window_s)
            final = {"latency": latency, "energy": energy}
        report.measured, report.measured_energy = final["latency"], final["energy"]
        if legal:  # the input row is not the original as the target runs it
            report.baseline_measured = _measure_original(
                model, resolved, report.dims, config.seed, meter, window_s
            )
        else:
            report.baseline_measured = _figures(report.rows[0].measured)
    if output_dir is not None:
        compiled.save(output_dir)
    return compiled


def _runnable_dims(dims: Mapping[str, int], compiled: CompiledModel) -> dict[str, int]:
    """The compile's ``dims`` with each dim the artifact takes only some sizes of (see
    ``CompiledModel.accepted_sizes``) moved to its first accepted size when the compile's
    is not one: what ``benchmark()`` and ``greencc bench`` run by default."""
    runnable = dict(dims)
    for name, sizes in compiled.accepted_sizes.items():
        if sizes and runnable.get(name) not in sizes:
            runnable[name] = sizes[0]
    return runnable


def _warn_specialized(model: Model, compiled: CompiledModel) -> None:
    """Warn when the target fixed symbolic dims of ``model``: the artifact then accepts
    only the shapes it was compiled at (for a dim compiled at several sizes, those)."""
    fixed = [name for name in symbolic_dims(model.ir) if name not in compiled.dynamic_dims]
    if fixed:
        choices = compiled.accepted_sizes
        bound = ", ".join(f"{name} in {{{', '.join(map(str, choices[name]))}}}" if name in choices
                          else f"{name}={compiled.dims[name]}" for name in fixed if name in compiled.dims)
        again = " ".join("--target-option batches=...,N" if name in choices else f"--dim {name}=N" for name in fixed)
        warnings.warn(
            f"target '{compiled.target}' compiles static shapes: the artifact accepts only "
            f"{', '.join(str(spec) for spec in compiled.model.inputs)} ({bound}); "
            f"compile again with {again} for other sizes",
            stacklevel=3,
        )


def replay(directory: str | os.PathLike) -> Model:
    """Re-run a reproducer directory (``greencc repro DIR``) as the failing run ran: its
    plugins, target with its options, calibration copy, budget, dims, seed and
    verification. Returns the output model, or raises the pass failure again."""
    reproducer = read_reproducer(directory)
    config = reproducer.config
    load_plugins(config.plugins)
    model = _config_model(config)
    target = None
    if reproducer.has_target:
        target = _target_of(config, config.target)
    optimized, _ = optimize(
        model, config.pipeline, target=target, profile=reproducer.profile,
        calibration=_config_calibration(config), budget=config.budget, dims=config.dims,
        verify=config.verify, seed=config.seed, config=config,
    )
    return optimized


_UNSET = (None, (), {}, [])
_DEFAULTS = {
    "target": "ort-cpu", "pipeline": "-O1", "budget": None, "dims": None, "verify": True,
    "threads": None, "target_options": None, "seed": 0, "measure": False,
    "grid_intensity": None, "pue": None, "energy_window_s": 1.0, "plugins": (),
}


def _config_of(described: Mapping[str, Any]) -> CompileConfig:
    """The :class:`CompileConfig` that ``compile``'s keyword arguments describe (model and
    calibration references are filled in by :func:`_recorded`)."""
    target = described["target"]
    target_options = dict(described["target_options"] or {})
    if isinstance(target, Target):
        target_options = {**_json_safe(target.options), **target_options}
        target = target.name
    pipeline = described["pipeline"]
    measure, window = described["measure"], described["energy_window_s"]
    # The window matters only when measuring; otherwise any value records as the default.
    if measure and not (isinstance(window, (int, float)) and window > 0):
        raise UsageError(f"energy_window_s={window!r} must be a positive number of seconds")
    return CompileConfig(
        target=target,
        target_options=target_options,
        pipeline=pipeline if isinstance(pipeline, str) else str(Pipeline.of(pipeline)),
        dims=dict(described["dims"] or {}),
        budget=None if described["budget"] is None else str(described["budget"]),
        threads=described["threads"],
        seed=described["seed"],
        verify=described["verify"],
        measure=measure,
        energy_window_s=window if measure else 1.0,
        grid_intensity=described["grid_intensity"],
        pue=described["pue"],
        plugins=tuple(os.fspath(p) for p in described["plugins"]),
    )


def _check_only_config(described: Mapping[str, Any]) -> None:
    """``compile(config=...)`` takes the compile's description from the config alone."""
    given = [
        name for name, value in described.items()
        if not (value == _DEFAULTS[name] or (value in _UNSET and _DEFAULTS[name] in _UNSET))
    ]
    if given:
        raise UsageError(
            f"compile() got config= and also {', '.join(given)}",
            hint="change the config instead: dataclasses.replace(config, seed=1, ...)",
        )


def _config_model(config: CompileConfig) -> Model:
    """The config's model file, checked against its recorded SHA-256."""
    if config.model is None:
        raise UsageError("the compile config names no model", hint="set 'model' to an .onnx path")
    path = _source_file(config.model)
    if path is None:  # a directory loads as one; a missing file fails as a model that cannot be loaded
        return as_model(config.model.removeprefix("onnx:"))
    _check_sha256(path, config.model_sha256, "model")
    return load(path)


def _config_calibration(config: CompileConfig) -> str | None:
    """The config's calibration .npz path, checked against its recorded SHA-256."""
    if config.calibration is None:
        return None
    if not os.path.isfile(config.calibration):
        raise UsageError(
            f"the compile config's calibration data {config.calibration} is not a file",
            hint="pass the data itself: compile(..., calibration=data, config=config)",
        )
    _check_sha256(config.calibration, config.calibration_sha256, "calibration data")
    return config.calibration


def _check_sha256(path: str, expected: str | None, what: str) -> None:
    if expected is not None and file_sha256(path) != expected:
        raise UsageError(
            f"{what} {path} has changed since the compile config was written (SHA-256 differs)",
            hint="restore the file, or remove its SHA-256 from the config to accept the new one",
        )


def _recorded(
    config: CompileConfig, model: Model, calibration: Any, data: CalibrationData | None
) -> CompileConfig:
    """``config`` with the model and calibration actually used: file paths with their
    SHA-256, or for in-memory ones a description (and the arrays' SHA-256)."""
    source = model.provenance.source
    path = _source_file(source)
    changes: dict[str, Any] = {
        "model": path or source,
        "model_sha256": file_sha256(path) if path else None,
    }
    if calibration is None:
        if config.calibration is not None and config.calibration_sha256 is None:
            changes["calibration_sha256"] = file_sha256(config.calibration)
    elif isinstance(calibration, (str, os.PathLike)):
        changes["calibration"] = os.path.abspath(calibration)
        changes["calibration_sha256"] = file_sha256(calibration)
    elif data is not None:
        changes["calibration"] = f"<in-memory: {len(data)} samples in {data.num_batches} batches>"
        changes["calibration_sha256"] = _arrays_sha256(data)
    return dataclasses.replace(config, **changes)


def _source_file(source: str) -> str | None:
    """The absolute path of a model source that is a file (``onnx:PATH`` or ``PATH``)."""
    path = source.removeprefix("onnx:")
    return os.path.abspath(path) if os.path.isfile(path) else None


def _arrays_sha256(data: CalibrationData) -> str:
    """SHA-256 over every batch's arrays: names, dtypes, shapes and bytes, in order."""
    digest = hashlib.sha256()
    for feeds in data:
        for name in sorted(feeds):
            value = feeds[name]
            # A sequence input's feed is a list of arrays, an empty optional's None.
            for part in value if isinstance(value, list) else [] if value is None else [value]:
                array = np.ascontiguousarray(part)
                if array.dtype.kind == "O":  # text: hash the characters, not the object pointers
                    array = array.astype(str)
                digest.update(f"{name}:{array.dtype.str}:{array.shape};".encode())
                digest.update(array.tobytes())
    return digest.hexdigest()


def _target_of(config: CompileConfig, target: Target | str) -> Target:
    """The one target instance of a compile: ``target`` when it is an instance the config
    adds nothing to, else the config's target built with its options (and ``threads``)."""
    options = dict(config.target_options)
    if config.threads is not None:
        options["threads"] = config.threads
    if isinstance(target, Target):
        return resolve_target(target, **{k: v for k, v in options.items() if target.options.get(k) != v})
    return _resolve_target(config.target, **options)


def _json_safe(options: Mapping[str, Any]) -> dict[str, Any]:
    return json.loads(json.dumps(dict(options), default=str))


def _checked_calibration(calibration: Any, model: Model) -> CalibrationData | None:
    """``calibration`` (a CalibrationData, feed dicts, arrays or an .npz path) checked
    against the model's inputs before any work, so bad data fails with nothing written."""
    return None if calibration is None else as_calibration(calibration, model).check(model)


def _resolve_target(target: Target | str, **options: Any) -> Target:
    """``resolve_target``, priced on this machine for a target given by name.

    Only a plain target name (``"ort-cpu"``) without a ``profile`` option gets this
    machine's profile (:func:`~greencc.execution.calibrate.machine_profile`: a saved
    calibration, else a quick one on first use, else the CPU's detected profile): a tag or
    a ``profile=`` names its profile on purpose, and an instance carries its own.
    """
    resolved = resolve_target(target, **options)
    if isinstance(target, str) and target.strip() == resolved.name and "profile" not in options:
        profile = machine_profile(resolved)
        if profile is not None:
            resolved = resolve_target(resolved, profile=profile)
    return resolved


def _default_meter(target: Target) -> Any:
    """The best energy meter for where ``target`` runs (a CPU target never reads a GPU's)."""
    device = getattr(target, "device", None) or ("cpu" if "cpu" in target.name else "any")
    return best_meter(device).meter


def _measure(
    compiled: CompiledModel, model: Model, dims: Mapping[str, int], seed: int, meter: Any,
    window_s: float,
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Latency statistics (ms) and energy per inference of ``compiled`` on random feeds."""
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
