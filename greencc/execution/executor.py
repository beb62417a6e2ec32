"""``Executor``: the one place where greencc runs models for its own work — verification,
bisection, calibration collection and the scoring of lossy passes.

It is backed by a target (``ort-cpu`` unless told otherwise; any target whose ``lower``
gives a ``CompiledModel`` that runs can serve) and is the only code that chooses thread
counts and session options, by *purpose* (:data:`PURPOSE_OPTIONS`). Runners are cached
per model version (:func:`greencc.execution.version.model_version`), so a model changed in
place never gets a stale session.
"""

from __future__ import annotations

import difflib
from collections import OrderedDict
from collections.abc import Hashable, Mapping, Sequence
from typing import Any

import numpy as np
import onnx_ir as ir

from greencc.errors import UsageError
from greencc.execution.version import ModelVersion, model_version
from greencc.ir.shapes import infer_shapes
from greencc.model import Model
from greencc.target.artifact import CompiledModel
from greencc.target.base import Target
from greencc.target.registry import resolve_target
from greencc.verify.session import Purpose

DEFAULT_BACKEND = "ort-cpu"
# Session options per purpose, given to the backend where it has the option. "reference":
# one thread and no graph optimization, so the session computes exactly what the graph
# says and every intermediate keeps its name. "scoring": the pruning scorers' basic
# optimizations on the backend's threads. "deployment": the compile's thread count and the
# backend's own optimization, as the compiled model will run.
PURPOSE_OPTIONS: dict[str, dict[str, Any]] = {
    "reference": {"threads": 1, "optimization": "disabled"},
    "scoring": {"optimization": "basic"},
    "deployment": {},
}
# Sessions kept per executor (each holds a lowered copy of a model's weights).
DEFAULT_CACHE_SIZE = 4


class SessionRunner:
    """A lowered model version: ``runner(feeds)`` returns ``{name: array}`` for ``outputs``.

    ``compiled`` is the backend's ``CompiledModel`` (graph outputs plus the requested
    intermediates); ``options`` the target options it was lowered with.
    """

    def __init__(self, compiled: CompiledModel, outputs: Sequence[str], options: Mapping[str, Any]) -> None:
        self.compiled = compiled
        self.outputs: tuple[str, ...] = tuple(outputs)
        self.options = dict(options)

    def __call__(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """The values of ``outputs`` on ``feeds`` (checked against the model's inputs)."""
        result = self.compiled(feeds)
        return {name: result[name] for name in self.outputs}

    def values(self, feeds: Mapping[str, np.ndarray]) -> list[np.ndarray]:
        """The values of ``outputs`` on ``feeds``, in the order of ``outputs``."""
        result = self.compiled(feeds)
        return [result[name] for name in self.outputs]


class Executor:
    """Runs models for passes, verification and calibration on a ``backend`` target.

    ``threads`` is the intra-op thread count of ``"deployment"`` runs (the compile's; see
    :meth:`for_compile`). ``cache_size`` bounds the sessions kept, least recently used
    dropped first. Resolving the backend is deferred to the first run, so creating an
    executor costs nothing.
    """

    def __init__(self, backend: Target | str = DEFAULT_BACKEND, *, threads: int = 1,
                 cache_size: int = DEFAULT_CACHE_SIZE) -> None:
        if isinstance(threads, bool) or not isinstance(threads, int) or threads < 1:
            raise UsageError(f"executor threads={threads!r} must be a positive integer")
        self._backend_spec = backend
        self._backend: Target | None = None
        self._targets: dict[tuple[tuple[str, Any], ...], Target] = {}
        self.threads = threads
        self.cache_size = max(0, int(cache_size))
        self._sessions: OrderedDict[Hashable, tuple[ModelVersion, SessionRunner]] = OrderedDict()

    @classmethod
    def for_compile(cls, target: Target | str | None, backend: Target | str = DEFAULT_BACKEND) -> Executor:
        """The executor of a compile for ``target``: deployment runs use the target's
        ``threads`` when the target is the backend itself, else one thread."""
        if isinstance(target, str):
            target = resolve_target(target)
        backend_name = backend.name if isinstance(backend, Target) else backend
        threads = 1
        if target is not None and target.name == backend_name:
            threads = int(target.options.get("threads") or 1)
        return cls(backend, threads=threads)

    @property
    def backend(self) -> Target:
        """The target that lowers and runs the models (resolved on first use)."""
        if self._backend is None:
            self._backend = resolve_target(self._backend_spec)
        return self._backend

    def options(self, purpose: Purpose, threads: int | None = None) -> dict[str, Any]:
        """The backend options a run for ``purpose`` uses (``threads`` overrides the
        purpose's thread count); options the backend does not have are left out."""
        if purpose not in PURPOSE_OPTIONS:
            raise UsageError(f"unknown execution purpose '{purpose}'", hint=f"one of {', '.join(PURPOSE_OPTIONS)}")
        wanted = dict(PURPOSE_OPTIONS[purpose])
        if purpose == "deployment":
            wanted["threads"] = self.threads
        if threads is not None:
            wanted["threads"] = threads
        accepted = type(self.backend).default_options
        return {key: value for key, value in wanted.items() if key in accepted}

    def runner(self, model: Model, *, outputs: Sequence[str] | None = None, purpose: Purpose = "reference",
               threads: int | None = None) -> SessionRunner:
        """A runner of ``model`` returning ``outputs`` — value names of graph inputs,
        graph outputs or any node output of the main graph (default: the graph outputs).

        The same model version with the same outputs and options gets the cached runner.
        Raises ``UsageError`` naming an unknown tensor, or one whose dtype is unknown even
        after shape inference; ``model`` is not modified.
        """
        options = self.options(purpose, threads)
        names = tuple(dict.fromkeys(outputs)) if outputs is not None else None
        version = model_version(model)
        key = (version, names, tuple(sorted(options.items())))
        cached = self._sessions.get(key)
        if cached is not None:
            self._sessions.move_to_end(key)
            return cached[1]
        lowered = model if names is None else exposing(model, names)
        target = self._target(options)
        runner = SessionRunner(target.lower(lowered), names or [v.name for v in model.graph.outputs], target.options)
        if self.cache_size:
            self._sessions[key] = (version, runner)
            while len(self._sessions) > self.cache_size:
                self._sessions.popitem(last=False)
        return runner

    def run(self, model: Model, feeds: Mapping[str, np.ndarray], outputs: Sequence[str] | None = None, *,
            purpose: Purpose = "reference", threads: int | None = None) -> dict[str, np.ndarray]:
        """``{name: array}`` of ``outputs`` (default: the graph outputs) for one run of
        ``model`` on ``feeds``; see :meth:`runner`."""
        return self.runner(model, outputs=outputs, purpose=purpose, threads=threads)(feeds)

    def clear(self) -> None:
        """Drop every cached session."""
        self._sessions.clear()

    def _target(self, options: dict[str, Any]) -> Target:
        key = tuple(sorted(options.items()))
        if key not in self._targets:
            self._targets[key] = resolve_target(self.backend, **options) if options else self.backend
        return self._targets[key]


def exposing(model: Model, names: Sequence[str]) -> Model:
    """A copy of ``model`` whose graph outputs also include the values ``names`` (graph
    inputs or node outputs of the main graph), shape-inferred only when one of them has no
    known dtype. Raises ``UsageError`` for an unknown name or an unknown dtype."""
    clone = model.ir.clone()
    produced = _named_values(clone)
    unknown = [name for name in names if name not in produced]
    if unknown:
        close = difflib.get_close_matches(unknown[0], list(produced), n=3)
        raise UsageError(
            f"tensor '{unknown[0]}' is not an input or node output of the main graph"
            + (f" ({len(unknown) - 1} more unknown)" if len(unknown) > 1 else ""),
            hint=f"did you mean {', '.join(close)}?" if close else "list names with greencc inspect or model.graph",
        )
    if any(produced[name].dtype is None for name in names):
        infer_shapes(clone)
        produced = _named_values(clone)
    existing = {value.name for value in clone.graph.outputs}
    for name in names:
        if name in existing:
            continue
        value = produced[name]
        if value.dtype is None:
            raise UsageError(
                f"tensor '{name}' has no known dtype, so it cannot be made a graph output",
                hint="run shape inference or give the model value_info for it",
            )
        if value.type is None:
            value.type = ir.TensorType(value.dtype)
        clone.graph.outputs.append(value)
        existing.add(name)
    return Model(clone, model.provenance)


def _named_values(model: ir.Model) -> dict[str, ir.Value]:
    values = {value.name: value for value in model.graph.inputs if value.name}
    values.update((value.name, value) for node in model.graph for value in node.outputs if value.name)
    return values
