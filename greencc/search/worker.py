"""What a search worker does with one candidate: compile and verify it (stopping early when
a lossy pass breaks the fidelity budget), and measure a compiled candidate's latency and
energy, recording when, where and under what load. Plain functions: the runner sends them
to Ray workers, a plain loop calls them directly.
"""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Mapping
from typing import Any

from greencc.config import CompileConfig
from greencc.driver import compile as compile_model
from greencc.errors import GreenccError, PassFailedError
from greencc.measure.energy import best_meter, measure_energy
from greencc.model import Model
from greencc.pipeline.base import Pass
from greencc.pipeline.context import PassContext
from greencc.pipeline.instruments import Instrument, PassRecord
from greencc.pipeline.text import Pipeline
from greencc.target import CompiledModel
from greencc.verify.feeds import random_feeds


class BudgetBroken(GreenccError):
    """A lossy pass broke the fidelity budget: the candidate is not worth finishing.
    ``pass_text`` is that pass as pipeline text, ``cosine`` the minimum cosine it reached."""

    def __init__(self, message: str, pass_text: str, cosine: float | None) -> None:
        super().__init__(message)
        self.pass_text, self.cosine = pass_text, cosine


class StopOnRollback(Instrument):
    """Ends a candidate's compile at the first lossy pass the verifier rolled back: the
    candidate asked for more loss than the budget allows, so its configuration is not the
    one that would be built (the rest of its compile would be wasted work)."""

    def after_pass(self, pass_: Pass, model: Model, ctx: PassContext, record: PassRecord) -> None:
        if record.rolled_back:
            cosine = None if record.fidelity is None else float(record.fidelity.cosine_min)
            raise BudgetBroken(f"'{pass_}' broke the fidelity budget: {record.rolled_back}", str(pass_), cosine)


def compile_candidate(config: Mapping[str, Any], artifact_dir: str) -> dict[str, Any]:
    """Compile and verify one candidate (``config``: a CompileConfig dict) into
    ``artifact_dir``. Returns ``status`` (``compiled``, ``broke-budget`` or ``failed``),
    ``reason``, the final row's ``est_energy_mj`` / ``est_latency_ms`` (per inference),
    ``fidelity`` (minimum cosine to the original's outputs; for ``broke-budget``, the one
    the breaking pass reached), ``model_bytes``, ``compile_start`` (Unix s), ``compile_s``
    (s), ``node``, ``artifact`` and, for ``broke-budget``, ``broken_prefix``: the pipeline
    up to the breaking pass (any candidate starting with it breaks the budget there too)."""
    start = time.perf_counter()
    result: dict[str, Any] = {"node": node_id(), "artifact": None, "compile_start": time.time()}
    try:
        compiled = compile_model(config=CompileConfig.from_dict(config), output_dir=artifact_dir,
                                 instruments=[StopOnRollback()])
    except PassFailedError as exc:
        cause = exc.__cause__
        if isinstance(cause, BudgetBroken):
            return {**result, "status": "broke-budget", "reason": cause.message, "fidelity": cause.cosine,
                    "broken_prefix": pipeline_prefix(str(config.get("pipeline", "")), cause.pass_text),
                    "compile_s": time.perf_counter() - start}
        return {**result, "status": "failed", "reason": exc.message, "compile_s": time.perf_counter() - start}
    except GreenccError as exc:
        return {**result, "status": "failed", "reason": exc.message, "compile_s": time.perf_counter() - start}
    report = compiled.report
    final = report.rows[-1]
    fidelities = [row.fidelity.get("cosine_min") for row in report.rows if row.fidelity]
    known = [value for value in fidelities if value is not None]
    return {
        **result,
        "status": "compiled",
        "reason": None,
        "est_energy_mj": final.est_energy_mj,
        "est_latency_ms": final.est_latency_ms,
        "fidelity": min(1.0, known[-1]) if known else 1.0,
        "model_bytes": final.model_bytes,
        "artifact": artifact_dir,
        "compile_s": time.perf_counter() - start,
    }


def measure_candidate(artifact_dir: str, *, seed: int = 0, window_s: float = 1.0, repeats: int = 50) -> dict[str, Any]:
    """Measure a saved candidate: median latency (ms) over ``repeats`` calls and energy
    per inference (mJ) over a window of at least ``window_s`` s (RAPL/NVML where readable,
    else the labelled CPU-time estimate). Returns those with ``energy_label``, the ``node``,
    ``measure_start`` / ``measure_end`` (Unix s) and the node's 1-minute load average at
    both ends (``load_before`` / ``load_after``)."""
    load_before = os.getloadavg()[0]
    start = time.time()
    compiled = CompiledModel.load(artifact_dir)
    feeds = compiled.check_feeds(random_feeds(compiled.model, seed=seed, dims=compiled.dims))
    stats = compiled.benchmark(feeds, repeats=repeats)
    meter = best_meter("cpu" if "cpu" in compiled.target else "any").meter
    energy = measure_energy(lambda: compiled._run(feeds), meter=meter, min_window_s=window_s)
    figures = energy.to_dict()
    return {
        "measured_latency_ms": stats.median_ms,
        "measured_energy_mj": figures["mj_per_inference"],
        "energy_label": figures.get("label") or figures.get("method"),
        "node": node_id(),
        "measure_start": start,
        "measure_end": time.time(),
        "load_before": load_before,
        "load_after": os.getloadavg()[0],
    }


def pipeline_prefix(pipeline: str, pass_text: str) -> str | None:
    """``pipeline`` (presets expanded) up to and including its first pass written as
    ``pass_text``; None when no pass of it reads so."""
    items = Pipeline.parse(pipeline).items
    wanted = str(Pipeline.parse(pass_text))
    for end, item in enumerate(items, start=1):
        if str(Pipeline((item,))) == wanted:
            return str(Pipeline(items[:end]))
    return None


def starts_with(pipeline: str, prefix: str) -> bool:
    """Whether ``pipeline``'s passes (presets expanded) begin with ``prefix``'s."""
    head = Pipeline.parse(prefix).items
    return Pipeline.parse(pipeline).items[:len(head)] == head


def node_id() -> str:
    """The Ray node this runs on (its id), or this host's name outside Ray."""
    try:
        import ray  # lazily: greencc.search imports without Ray

        if ray.is_initialized():
            return str(ray.get_runtime_context().get_node_id())
    except ImportError:
        pass
    return socket.gethostname()
