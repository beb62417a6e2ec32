"""One pass over calibration data: run the model once per batch with the requested
intermediate tensors exposed as outputs, and feed every observer from that run.

The model runs on the executor given (``ctx.executor`` in a pass) for reference: graph
optimizations disabled, so intermediate tensor names survive exactly as the graph has them.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import numpy as np

from greencc.data import CalibrationData, as_calibration, track
from greencc.errors import UsageError
from greencc.model import Model
from greencc.quant.observers import MinMaxObserver, Observer, TensorRange, make_observer
from greencc.verify.session import RunsModels

Methods = Sequence[str] | Mapping[str, Mapping[str, Any]]


def iter_intermediates(
    model: Model, data: CalibrationData | Any, tensors: Sequence[str], *, executor: RunsModels,
    threads: int | None = None, progress: bool = False,
) -> Iterator[dict[str, np.ndarray]]:
    """For each calibration batch, the values of ``tensors`` (graph inputs, initializers or
    any node output of the main graph) as ``{name: array}``.

    ``data`` is anything :func:`greencc.data.as_calibration` accepts and is checked against
    the model first. The model runs on ``executor`` (``greencc.execution.Executor``) for
    reference, graph optimizations off, with ``threads`` intra-op threads (default 1);
    ``model`` is not modified. Raises ``UsageError`` naming an unknown tensor.
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
    run = executor.runner(model, outputs=computed, purpose="reference", threads=threads or 1) if computed else None
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
    executor: RunsModels,
    threads: int | None = None,
    progress: bool = False,
) -> None:
    """Feed each tensor's observers (``{tensor name: [observer, ...]}``) from one run of
    the model per calibration batch on ``executor`` (see :func:`iter_intermediates`); the
    observers are updated in place."""
    for values in iter_intermediates(model, data, list(observers), executor=executor, threads=threads,
                                     progress=progress):
        for name, array in values.items():
            for observer in observers[name]:
                observer.update(array)


def collect_ranges(
    model: Model,
    data: CalibrationData | Any,
    tensors: Sequence[str],
    methods: Methods = ("minmax",),
    *,
    executor: RunsModels,
    threads: int | None = None,
    progress: bool = False,
) -> dict[str, dict[str, TensorRange]]:
    """The range of every tensor in ``tensors`` by every method, from one pass over ``data``
    with the model run on ``executor`` (see :func:`iter_intermediates`).

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
                  executor=executor, threads=threads, progress=progress)
    return {name: {label: observer.range() for label, observer in per.items()}
            for name, per in observers.items()}


def collect_abs_max(
    model: Model, data: CalibrationData | Any, tensors: Sequence[str], axis: int = -1, *,
    executor: RunsModels, threads: int | None = None, progress: bool = False,
) -> dict[str, np.ndarray]:
    """Per-channel ``max |x|`` along ``axis`` of each tensor over all calibration batches
    (1-d float64 arrays, one entry per index of ``axis``): SmoothQuant's activation
    statistics, the model run on ``executor``. Mask fillers and infinities are excluded,
    as by the observers."""
    observers = {name: [MinMaxObserver(axis=axis)] for name in dict.fromkeys(tensors)}
    run_observers(model, data, observers, executor=executor, threads=threads, progress=progress)
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
