"""``search``: the driver loop of an energy-objective search on Ray. It asks the strategy
for a point, skips points the store already holds (by CompileConfig digest, presets
expanded) and points whose passes up to one that broke the budget are those of a
candidate that broke it there, screens the rest with the cost model, sends
compile-and-verify tasks to every CPU of the cluster and measurement tasks to the nodes'
one measurement slot each (the ``measure_slot`` resource: two measurements never share a
node), and records every finished candidate in the store.
A measurement runs on the node that compiled its candidate and takes every CPU there, and
no compile is sent while one is in flight (so compiles cannot keep taking the CPUs it waits
for): on the shared 2-core machine, with compiles beside it, the same MiniLM -O2 measured
181 ms in one run and 275 ms in the next; alone, 63 ms.
Ray is imported only here, when a search runs; a local Ray is started unless given an
address.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from greencc.config import CompileConfig, file_sha256, usable_cores
from greencc.driver import as_model
from greencc.errors import UsageError
from greencc.model import DecoderSpec
from greencc.search.result import (
    OBJECTIVES,
    SearchResult,
    front_objectives,
    objective_value,
    pareto_front,
)
from greencc.search.screen import Screen, can_discard
from greencc.search.space import SearchSpace, default_space, store_key
from greencc.search.store import (
    BROKE_BUDGET,
    COMPILED,
    FAILED,
    MEASURED,
    SCREENED,
    Candidate,
    CandidateStore,
)
from greencc.search.strategy import make_strategy
from greencc.search.worker import compile_candidate, measure_candidate, starts_with

# The custom resource each node offers once: a measurement task holds it while it runs.
MEASURE_SLOT = "measure_slot"
# A task whose worker process dies is retried this many times (on any node).
TASK_RETRIES = 3
CANDIDATES_DIR = "candidates"
# A sampler that proposes only points already done this many times in a row has exhausted
# the space (a grid says so itself).
EXHAUSTED_AFTER = 200


@dataclass
class _Flight:
    """A candidate with a task in flight."""

    token: Any
    params: dict[str, Any]
    config: CompileConfig
    candidate: Candidate | None = None


@dataclass
class _Counts:
    values: dict[str, int] = field(default_factory=lambda: dict.fromkeys(
        ("asked", "duplicates", "screened", "compile_tasks", "compiled", "broke_budget", "failed", "measured",
         "measure_skipped", "cancelled", "known_broken"), 0))

    def add(self, name: str) -> None:
        self.values[name] += 1


def search(
    model: str | os.PathLike,
    target: str = "ort-cpu",
    *,
    objective: str = "energy",
    budget: str | None = "cos=0.99",
    time_s: float | None = None,
    max_candidates: int | None = None,
    space: SearchSpace | str | os.PathLike | None = None,
    directory: str | os.PathLike = "greencc-search",
    strategy: str = "tpe",
    workers: int | None = None,
    ray_address: str | None = None,
    num_cpus: int | None = None,
    dims: Mapping[str, int] | None = None,
    calibration: str | os.PathLike | None = None,
    seed: int = 0,
    measure: bool = True,
    energy_window_s: float = 1.0,
    screen: bool = True,
    plugins: tuple[str, ...] = (),
    progress: Callable[[str], None] | None = None,
) -> SearchResult:
    """Search compiles of ``model`` (an ONNX file or a Hugging Face directory) for the
    Pareto front of estimated energy (mJ/inference), latency (ms, measured) and fidelity
    within ``budget``, on Ray, until ``time_s`` seconds pass, ``max_candidates`` candidates
    finished (stored ones included) or the space is exhausted.

    ``space`` is a :class:`SearchSpace`, a space file (TOML) or None for the model kind's
    default (:func:`~greencc.search.space.default_space`) on ``target``. ``strategy``:
    ``tpe`` (default), ``nsga2``, ``random`` or ``grid``. Every finished candidate lands in
    ``directory``/search.db keyed by its CompileConfig digest (presets expanded): a rerun
    over the same directory compiles nothing done before. ``workers`` caps parallel
    compiles (default: the cluster's CPUs); ``ray_address`` joins a cluster whose nodes each offer the
    ``measure_slot`` resource once (``ray start --resources '{"measure_slot": 1}'``) and
    share ``directory``; without it a local Ray of ``num_cpus`` CPUs (default: this
    machine's usable cores) is started and stopped. ``screen`` runs the cost-model screen
    before compiling; ``plugins`` (``.py`` files or modules) are loaded by every compile.
    ``measure`` measures latency and energy (window ``energy_window_s`` s)
    of every candidate not dominated on its estimates. Ctrl-C stops the search: the store
    stays consistent, the returned result's ``stats["interrupted"]`` is true and its report
    covers what finished. ``progress`` receives one line per finished candidate.
    """
    if objective not in OBJECTIVES:
        raise UsageError(f"unknown objective '{objective}'", hint=f"choose one of: {', '.join(OBJECTIVES)}")
    started = time.perf_counter()
    directory = Path(directory).absolute()
    model_path = os.path.abspath(os.fspath(model))
    if not os.path.exists(model_path):
        raise UsageError(f"model {model} does not exist", hint="give an ONNX file or a Hugging Face directory")
    loaded = as_model(model_path)
    space = _space_of(space, loaded, target, calibrated=calibration is not None)
    base = CompileConfig(
        model=model_path, model_sha256=file_sha256(model_path) if os.path.isfile(model_path) else None,
        target=target, budget=budget, dims=dict(dims or {}), seed=seed,
        calibration=os.path.abspath(calibration) if calibration else None,
        calibration_sha256=file_sha256(calibration) if calibration else None,
        plugins=tuple(os.path.abspath(p) if p.endswith(".py") else p for p in map(os.fspath, plugins)),
    )
    say = progress or (lambda line: None)
    counts = _Counts()
    ray, started_ray = _connect(ray_address, num_cpus, measure)
    store = CandidateStore(directory)
    interrupted = False
    try:
        store.set_meta({"model": model_path, "objective": objective, "budget": budget, "space": space.to_dict(),
                        "strategy": strategy})
        chooser = make_strategy(strategy, space, seed)
        stored = store.candidates()
        built = [c for c in stored if c.status in (COMPILED, MEASURED)]
        for done in stored:
            chooser.restore(done.params, _values(done, objective, built),
                            "pruned" if done.status == SCREENED else "fail")
        loop = _Loop(ray, store, space, base, chooser, counts, say, objective=objective,
                     screen=Screen(loaded) if screen else None, measure=measure, window_s=energy_window_s,
                     workers=workers or max(1, int(ray.cluster_resources().get("CPU", 1))))
        deadline = None if time_s is None else started + time_s
        try:
            loop.run(deadline, max_candidates)
        except KeyboardInterrupt:
            interrupted = True
            loop.cancel_all()
        result = SearchResult(directory, objective, budget, store.candidates())
    finally:
        store.close()
        if started_ray:
            ray.shutdown()
    result.stats = {**counts.values, "elapsed_s": time.perf_counter() - started, "interrupted": interrupted,
                    "workers": loop.workers, "strategy": strategy, "screen_s": loop.screen_s}
    result.write_report()
    return result


def load_result(directory: str | os.PathLike) -> SearchResult:
    """The result of the search stored in ``directory`` (``greencc search --resume DIR
    --report``), with its report.html written again."""
    directory = Path(directory).absolute()
    if not (directory / "search.db").is_file():
        raise UsageError(f"{directory} holds no search", hint="give the directory a search wrote (its search.db)")
    with CandidateStore(directory) as store:
        meta = store.meta()
        result = SearchResult(directory, meta.get("objective", "energy"), meta.get("budget"), store.candidates())
    result.write_report()
    return result


class _Loop:
    """The ask → screen → compile → measure loop over Ray tasks."""

    def __init__(self, ray: Any, store: CandidateStore, space: SearchSpace, base: CompileConfig, chooser: Any,
                 counts: _Counts, say: Callable[[str], None], *, objective: str, screen: Screen | None,
                 measure: bool, window_s: float, workers: int) -> None:
        self.ray, self.store, self.space, self.base, self.chooser = ray, store, space, base, chooser
        self.counts, self.say, self.objective, self.screen = counts, say, objective, screen
        self.measure, self.window_s, self.workers = measure, window_s, workers
        self.compiles: dict[Any, _Flight] = {}
        self.measures: dict[Any, _Flight] = {}
        self.built = [c for c in store.candidates() if c.status in (COMPILED, MEASURED)]
        self.broken = [c for c in store.candidates() if c.status == BROKE_BUDGET and c.broken_prefix]
        self.finished = len(store)
        self.repeats = 0  # consecutive asks that proposed a point already done or in flight
        self.screen_s = 0.0  # the driver's time pricing candidates before compiling them (s)
        options = {"max_retries": TASK_RETRIES, "retry_exceptions": False}
        self._compile = ray.remote(num_cpus=1, **options)(compile_candidate)
        self._measure = ray.remote(num_cpus=1, resources={MEASURE_SLOT: 1}, **options)(measure_candidate)

    def run(self, deadline: float | None, max_candidates: int | None) -> None:
        asking = True
        while True:
            # no compile is sent while a measurement waits for or holds its node's CPUs
            while asking and len(self.compiles) < self.workers and not self.measures:
                full = max_candidates is not None and self.finished + len(self.compiles) + len(self.measures) >= max_candidates
                if full or (deadline is not None and time.perf_counter() >= deadline):
                    asking = False
                elif not self._submit_next() or self.repeats >= EXHAUSTED_AFTER:
                    asking = False
            if not self.compiles and not self.measures:
                return
            timeout = None if deadline is None else max(0.0, deadline - time.perf_counter())
            ready, _ = self.ray.wait([*self.compiles, *self.measures], num_returns=1, timeout=timeout)
            if not ready and deadline is not None and time.perf_counter() >= deadline:
                self._cancel_compiles()  # time is up: measurements in flight still finish
                asking = False
            for ref in ready:
                if ref in self.compiles:
                    self._compiled(ref, self.compiles.pop(ref))
                else:
                    self._measured(ref, self.measures.pop(ref))

    def cancel_all(self) -> None:
        """Cancel every task in flight (Ctrl-C): their candidates are not stored, so a
        rerun compiles them."""
        for ref in [*self.compiles, *self.measures]:
            self.ray.cancel(ref, force=True)
            self.counts.add("cancelled")
        self.compiles.clear()
        self.measures.clear()

    def _cancel_compiles(self) -> None:
        for ref in self.compiles:
            self.ray.cancel(ref, force=True)
            self.counts.add("cancelled")
        self.compiles.clear()

    def _submit_next(self) -> bool:
        """Ask for a point and send it on, or settle it at once; False when none is left."""
        asked = self.chooser.ask()
        if asked is None:
            return False
        token, params = asked
        self.counts.add("asked")
        config = self.space.config(params, self.base)
        digest = store_key(config)
        stored = self.store.get(digest)
        in_flight = any(store_key(f.config) == digest for f in [*self.compiles.values(), *self.measures.values()])
        if stored is not None or in_flight:
            self.counts.add("duplicates")
            self.repeats += 1
            values = _values(stored, self.objective, self.built) if stored is not None else None
            self.chooser.tell(token, values, "pruned")
            return True
        self.repeats = 0
        broken = self._broken_like(config)
        if broken is not None:
            candidate = Candidate(digest, params, config.to_dict(), BROKE_BUDGET,
                                  f"not compiled: its passes up to '{broken.broken_prefix}' are those of "
                                  f"#{broken.seq}, which broke the fidelity budget there",
                                  fidelity=broken.fidelity, broken_prefix=broken.broken_prefix)
            self._finish(candidate)
            self.counts.add("known_broken")
            self.chooser.tell(token, _values(candidate, self.objective, self.built), "fail")
            return True
        if self.screen is not None and can_discard(self.built):
            began = time.perf_counter()
            estimate = self.screen.estimate(config)
            self.screen_s += time.perf_counter() - began
            reason = None if estimate is None else self.screen.verdict(estimate, self.built)
            if reason is not None:
                self._finish(Candidate(digest, params, config.to_dict(), SCREENED, reason,
                                       est_energy_mj=estimate.energy_mj, est_latency_ms=estimate.latency_ms))
                self.counts.add("screened")
                self.chooser.tell(token, None, "pruned")
                return True
        artifact = str(self.store.directory / CANDIDATES_DIR / digest[:16])
        ref = self._compile.remote(config.to_dict(), artifact)
        self.counts.add("compile_tasks")
        self.compiles[ref] = _Flight(token, params, config)
        return True

    def _compiled(self, ref: Any, flight: _Flight) -> None:
        digest = store_key(flight.config)
        try:
            out = self.ray.get(ref)
        except self.ray.exceptions.RayError as exc:  # retries spent: the worker kept dying
            out = {"status": FAILED, "reason": f"worker lost: {type(exc).__name__}: {exc}"[:2000]}
        status = out.pop("status")
        node = out.pop("node", None)
        candidate = Candidate(digest, flight.params, flight.config.to_dict(), status, compile_node=node, **out)
        if status != COMPILED:
            self.counts.add("broke_budget" if status == BROKE_BUDGET else "failed")
            self._finish(candidate)
            if candidate.broken_prefix:
                self.broken.append(candidate)
            self.chooser.tell(flight.token, _values(candidate, self.objective, self.built), "fail")
            return
        self.counts.add("compiled")
        on_estimates = {**front_objectives(self.objective), "latency": lambda c: c.est_latency_ms}
        front = pareto_front([*self.built, candidate], on_estimates)
        self.built.append(candidate)
        if self.measure and any(c is candidate for c in front):
            candidate.reason = "measurement pending"
            self.store.put(candidate)  # kept even if the search stops before measuring
            flight.candidate = candidate
            ref = self._measure.options(**_alone_on(self.ray, node)).remote(
                candidate.artifact, seed=self.base.seed, window_s=self.window_s)
            self.measures[ref] = flight
            return
        if self.measure:
            self.counts.add("measure_skipped")
            candidate.reason = "not measured: dominated on estimates"
        self._finish(candidate)
        self.chooser.tell(flight.token, _values(candidate, self.objective, self.built))

    def _measured(self, ref: Any, flight: _Flight) -> None:
        candidate = flight.candidate
        assert candidate is not None
        try:
            out = self.ray.get(ref)
        except self.ray.exceptions.RayError as exc:
            candidate.reason = f"measurement failed: {type(exc).__name__}"
        else:
            out["measure_node"] = out.pop("node")
            for name, value in out.items():
                setattr(candidate, name, value)
            candidate.status, candidate.reason = MEASURED, None
            self.counts.add("measured")
        self._finish(candidate)
        self.chooser.tell(flight.token, _values(candidate, self.objective, self.built))

    def _broken_like(self, config: CompileConfig) -> Candidate | None:
        """A candidate that broke the budget in a pass ``config`` also runs, after the same
        passes, on the same target and threads: compiles are deterministic, so ``config``
        would break there too."""
        return next((c for c in self.broken if c.config.get("target") == config.target
                     and c.config.get("threads") == config.threads
                     and starts_with(config.pipeline, str(c.broken_prefix))), None)

    def _finish(self, candidate: Candidate) -> None:
        new = candidate.seq == 0
        self.store.put(candidate)
        self.finished += int(new)
        figures = (f"{_num(candidate.est_energy_mj)} mJ, {_num(candidate.latency_ms)} ms, "
                   f"cos {_num(candidate.fidelity, '.6f')}" if candidate.status in (COMPILED, MEASURED) else
                   candidate.reason or "")
        self.say(f"#{candidate.seq} {candidate.status}: {candidate.pipeline or '(no passes)'} — {figures}")


def _values(candidate: Candidate, objective: str, built: list[Candidate]) -> tuple[float, float] | None:
    """A finished candidate's objectives for the strategy, or None when it has none. One
    that broke the budget counts as costly as the costliest candidate ``built``, at the
    fidelity it reached: told as a failure, TPE leaves it out of its model and keeps
    proposing its region (on MiniLM, 21 of 28 candidates pruned heads past cos=0.99)."""
    if candidate.status == BROKE_BUDGET:
        worst = max((v for c in built if (v := objective_value(c, objective)) is not None), default=None)
        return None if worst is None else (worst, 1.0 - (candidate.fidelity or 0.0))
    value = objective_value(candidate, objective)
    if candidate.status not in (COMPILED, MEASURED) or value is None or candidate.fidelity is None:
        return None
    return value, 1.0 - candidate.fidelity


def _space_of(space: SearchSpace | str | os.PathLike | None, model: Any, target: str, *,
              calibrated: bool) -> SearchSpace:
    if isinstance(space, SearchSpace):
        return space
    if space is not None:
        return SearchSpace.from_toml(space)
    return default_space(DecoderSpec.of(model) is not None, targets=(target,), calibrated=calibrated)


def _connect(address: str | None, num_cpus: int | None, measure: bool) -> tuple[Any, bool]:
    """Ray, connected: to ``address``, to the Ray this process already joined, or to a
    local Ray started here (True when started here)."""
    try:
        import ray
    except ImportError:
        raise UsageError("greencc search needs Ray and Optuna", hint="pip install 'greencc[search]'") from None
    started = False
    if not ray.is_initialized():
        if address:
            ray.init(address=address, log_to_driver=False)
        else:
            ray.init(num_cpus=num_cpus or usable_cores(), resources={MEASURE_SLOT: 1}, include_dashboard=False,
                     log_to_driver=False, configure_logging=False)
            started = True
    if measure and not ray.cluster_resources().get(MEASURE_SLOT):
        if started:
            ray.shutdown()
        raise UsageError("no node of the Ray cluster offers a measurement slot",
                         hint="start each node with: ray start --resources '{\"measure_slot\": 1}'")
    return ray, started


def _alone_on(ray: Any, node: str | None) -> dict[str, Any]:
    """Ray task options that run a measurement on ``node`` holding all its CPUs; when that
    node is gone, on any node offering a measurement slot, holding as many CPUs as the
    smallest of them has (a request no node can meet would wait forever)."""
    cpus = {n["NodeID"]: max(1, int(n["Resources"].get("CPU", 1))) for n in ray.nodes()
            if n.get("Alive") and n["Resources"].get(MEASURE_SLOT)}
    if node in cpus:
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        return {"num_cpus": cpus[node], "scheduling_strategy": NodeAffinitySchedulingStrategy(node, soft=False)}
    return {"num_cpus": min(cpus.values(), default=1)}


def _num(value: float | None, fmt: str = ".4g") -> str:
    return "-" if value is None else format(value, fmt)
