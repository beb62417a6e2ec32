"""One pass over calibration data: run the model once per batch in ONNX Runtime with the
requested intermediate tensors exposed as outputs, and feed every observer from that run.

The session is the verification reference's (``ort-cpu`` with graph optimizations
disabled), so intermediate tensor names survive exactly as the graph has them.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import numpy as np
import onnx_ir as ir

from greencc.data import CalibrationData, as_calibration, track
from greencc.errors import UsageError
from greencc.ir.shapes import infer_shapes
from greencc.model import Model
from greencc.quant.observers import MinMaxObserver, Observer, TensorRange, make_observer

Methods = Sequence[str] | Mapping[str, Mapping[str, Any]]


def iter_intermediates(
    model: Model, data: CalibrationData | Any, tensors: Sequence[str], *, threads: int | None = None,
    progress: bool = False,
) -> Iterator[dict[str, np.ndarray]]:
    """For each calibration batch, the values of ``tensors`` (graph inputs, initializers or
    any node output of the main graph) as ``{name: array}``.

    ``data`` is anything :func:`greencc.data.as_calibration` accepts and is checked against
    the model first. The model runs on ONNX Runtime's CPU provider with graph
    optimizations off and ``threads`` intra-op threads (default 1); ``model`` is not
    modified. Raises ``UsageError`` naming an unknown tensor.
    """
    data = as_calibration(data, model)
    data.check(model)
    names = list(dict.fromkeys(tensors))
    graph = model.graph
    inputs = {spec.name for spec in model.inputs}
    constants = {
        name: np.asarray(value.const_value.numpy())
        for name in names
        if (value := graph.initializers.get(name)) is not None and value.const_value is not None
    }
    computed = [name for name in names if name not in inputs and name not in constants]
    run = _runner(model, computed, threads) if computed else None
    batches = data.batches()
    for feeds in track(batches, total=len(batches), description="calibrating", enabled=progress or data.progress):
        values: dict[str, np.ndarray] = {}
        if run is not None:
            values.update(run(feeds))
        for name in names:
            if name in inputs:
                values[name] = feeds[name]
            elif name in constants:
                values[name] = constants[name]
        yield {name: values[name] for name in names}


def run_observers(
    model: Model,
    data: CalibrationData | Any,
    observers: Mapping[str, Sequence[Observer]],
    *,
    threads: int | None = None,
    progress: bool = False,
) -> None:
    """Feed each tensor's observers (``{tensor name: [observer, ...]}``) from one run of
    the model per calibration batch (see :func:`iter_intermediates`); the observers are
    updated in place."""
    for values in iter_intermediates(model, data, list(observers), threads=threads, progress=progress):
        for name, array in values.items():
            for observer in observers[name]:
                observer.update(array)


def collect_ranges(
    model: Model,
    data: CalibrationData | Any,
    tensors: Sequence[str],
    methods: Methods = ("minmax",),
    *,
    threads: int | None = None,
    progress: bool = False,
) -> dict[str, dict[str, TensorRange]]:
    """The range of every tensor in ``tensors`` by every method, from one pass over ``data``.

    ``methods`` is a list of method names (``("minmax", "entropy")``) or a mapping of
    label to observer options (``{"p99": {"method": "percentile", "percentile": 99.0},
    "mse": {"symmetric": True}}``; without ``"method"`` the label is the method).
    Returns ``{tensor: {label: TensorRange}}``. Raises ``UsageError`` for an unknown
    tensor, method or option, and for calibration data that does not fit the model.
    """
    specs = _method_specs(methods)
    for options in specs.values():  # fail on a bad method before running anything
        make_observer(**options)
    observers = {name: {label: make_observer(**options) for label, options in specs.items()}
                 for name in dict.fromkeys(tensors)}
    run_observers(model, data, {name: list(per.values()) for name, per in observers.items()},
                  threads=threads, progress=progress)
    return {name: {label: observer.range() for label, observer in per.items()}
            for name, per in observers.items()}


def collect_abs_max(
    model: Model, data: CalibrationData | Any, tensors: Sequence[str], axis: int = -1, *,
    threads: int | None = None, progress: bool = False,
) -> dict[str, np.ndarray]:
    """Per-channel ``max |x|`` along ``axis`` of each tensor over all calibration batches
    (1-d float64 arrays, one entry per index of ``axis``): SmoothQuant's activation
    statistics. Mask fillers and infinities are excluded, as by the observers."""
    observers = {name: [MinMaxObserver(axis=axis)] for name in dict.fromkeys(tensors)}
    run_observers(model, data, observers, threads=threads, progress=progress)
    return {name: per[0].range().abs_max for name, per in observers.items()}


def _method_specs(methods: Methods) -> dict[str, dict[str, Any]]:
    if isinstance(methods, str):
        methods = (methods,)
    if isinstance(methods, Mapping):
        specs = {}
        for label, options in methods.items():
            options = dict(options or {})
            options.setdefault("method", label)
            specs[str(label)] = options
    else:
        specs = {str(method): {"method": str(method)} for method in methods}
    if not specs:
        raise UsageError("no calibration methods given", hint="e.g. methods=('minmax',)")
    return specs


def _runner(model: Model, names: Sequence[str], threads: int | None) -> Any:
    """A function mapping feeds to ``{name: value}`` for intermediate ``names``."""
    from greencc.target import resolve_target

    clone = model.ir.clone()
    infer_shapes(clone)
    produced = {value.name: value for node in clone.graph for value in node.outputs if value.name}
    unknown = [name for name in names if name not in produced]
    if unknown:
        close = difflib.get_close_matches(unknown[0], list(produced), n=3)
        raise UsageError(
            f"tensor '{unknown[0]}' is not an input, initializer or node output of the main graph"
            + (f" ({len(unknown) - 1} more unknown)" if len(unknown) > 1 else ""),
            hint=f"did you mean {', '.join(close)}?" if close else "list names with greencc inspect or model.graph",
        )
    existing = {value.name for value in clone.graph.outputs}
    for name in names:
        value = produced[name]
        if name in existing:
            continue
        if value.dtype is None:
            raise UsageError(
                f"tensor '{name}' has no known dtype, so it cannot be made a graph output",
                hint="run shape inference or give the model value_info for it",
            )
        if value.type is None:
            value.type = ir.TensorType(value.dtype)
        clone.graph.outputs.append(value)
        existing.add(name)
    session = resolve_target("ort-cpu", threads=threads or 1, optimization="disabled").lower(Model(clone))

    def run(feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        outputs = session(feeds)
        return {name: outputs[name] for name in names}

    return run
