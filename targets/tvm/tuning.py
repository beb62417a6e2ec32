"""MetaSchedule tuning for ``tvm-llvm``: a time budget, progress, and a record cache.

Kernels (MetaSchedule "tasks") are tuned one at a time, costliest first (FLOPs x how often
the model calls them), until the time budget is spent; each tuned kernel's best records go
to a JSON database in the cache, one directory per LLVM target (CPU, cores, triple) and TVM
version. A later compile finds a kernel's workload there and reuses its schedule without
tuning again; kernels left untuned get greencc's default schedules.
"""

from __future__ import annotations

import hashlib
import inspect
import json
import linecache
import logging
import os
import sys
import tempfile
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from greencc.cache import cache_dir
from greencc.errors import TargetUnavailableError
from greencc.targets.tvm.env import tuning_availability
from greencc.targets.tvm.schedules import default_schedule_rules

log = logging.getLogger(__name__)

# MetaSchedule measures candidates in batches of this many (fewer when the trial cap is lower).
TRIALS_PER_ROUND = 16
# A candidate's build may include a worker's first TVM imports (seconds on a busy machine).
BUILD_TIMEOUT_S = 120.0
Progress = Callable[[int, int, str], None]


@dataclass
class TuningSummary:
    """What a tuning run did: kernels tuned now, reused from the cache, left untuned (over
    budget), trials run, wall time (s), and where the records live."""

    database_dir: str
    tuned: list[str] = field(default_factory=list)
    cached: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    trials: int = 0
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form (it is saved with the artifact)."""
        return asdict(self)


def default_cache_dir() -> Path:
    """``$GREENCC_CACHE_DIR/tvm`` (default ``~/.cache/greencc/tvm``)."""

    return cache_dir() / "tvm"


def target_key(spec: Mapping[str, Any]) -> str:
    """A directory name for tuning records of one LLVM target and TVM version."""
    import tvm

    described = json.dumps({"target": dict(spec), "tvm": tvm.__version__}, sort_keys=True)
    digest = hashlib.sha256(described.encode()).hexdigest()[:12]
    cpu = str(spec.get("mcpu", "generic")).replace("/", "_")
    return f"{spec.get('kind', 'llvm')}-{cpu}-{spec.get('num-cores', 1)}c-{digest}"


def tune(
    fused_mod: Any,
    target: Any,
    spec: Mapping[str, Any],
    *,
    budget_s: float,
    trials_per_task: int = 64,
    cache_dir: str | os.PathLike | None = None,
    progress: Progress | None = None,
) -> tuple[Any, TuningSummary]:
    """Tune the kernels of ``fused_mod`` (a fused Relax module) within ``budget_s`` seconds.

    Returns the MetaSchedule database (cached and new records) and a :class:`TuningSummary`.
    A kernel is never interrupted: the budget is checked before each one starts, so a run
    may pass the budget by up to one kernel's tuning time. ``progress(done, total, message)``
    is called after each kernel. Raises ``TargetUnavailableError`` when MetaSchedule cannot
    run here (e.g. apache-tvm-ffi 0.1.15, which crashes it).
    """
    from tvm.s_tir import meta_schedule as ms


    availability = tuning_availability()
    if not availability:
        raise TargetUnavailableError(
            f"TVM tuning is not available here: {availability.reason}",
            hint="compile without tune_budget_s (default schedules), or fix the installation",
        )
    import_tensor_intrinsics()
    # MetaSchedule logs every round to stdout at the level of its logger (DEBUG when unset);
    # greencc reports per kernel instead. A level the user set is left alone.
    ms_logger = logging.getLogger("tvm.s_tir.meta_schedule")
    if ms_logger.level == logging.NOTSET:
        ms_logger.setLevel(logging.WARNING)
    directory = Path(cache_dir) if cache_dir else default_cache_dir()
    directory = directory / target_key(spec)
    directory.mkdir(parents=True, exist_ok=True)
    database = ms.database.JSONDatabase(work_dir=str(directory), module_equality="structural")
    summary = TuningSummary(database_dir=str(directory))
    tasks = _ranked_tasks(ms.relax_integration.extract_tasks(fused_mod, target))
    started = time.perf_counter()
    for index, task in enumerate(tasks, start=1):
        name = task.task_name
        workload = task.dispatched[0]
        if _has_symbolic_shape(workload):
            summary.skipped.append(name)
            message = f"{name}: skipped (symbolic shapes, which MetaSchedule cannot measure), default schedule"
        elif _has_valid_record(database, workload):
            summary.cached.append(name)
            message = f"{name}: reused cached records"
        elif time.perf_counter() - started >= budget_s:
            summary.skipped.append(name)
            message = f"{name}: skipped (budget of {budget_s:g} s spent), default schedule"
        else:
            began = time.perf_counter()
            summary.trials += _tune_one(task, target, database, trials_per_task)
            summary.tuned.append(name)
            message = f"{name}: tuned in {time.perf_counter() - began:.1f} s"
        log.info("tvm tuning [%d/%d] %s", index, len(tasks), message)
        if progress is not None:
            progress(index, len(tasks), message)
    summary.seconds = time.perf_counter() - started
    return database, summary


def _has_symbolic_shape(workload: Any) -> bool:
    """True when a kernel's buffers have a symbolic dim (a decoder's sequence lengths): its
    candidates cannot be run on inputs of one size, so it keeps the default schedule."""
    from tvm import tirx

    func = next((f for f in workload.functions.values() if isinstance(f, tirx.PrimFunc)), None)
    if func is None:
        return False
    shapes = [param.ty.shape for param in func.params if hasattr(param.ty, "shape")]
    return any(not isinstance(dim, tirx.IntImm) for shape in shapes for dim in shape)


def _has_valid_record(database: Any, workload: Any) -> bool:
    """True when ``database`` holds a measured (successful) record for ``workload``."""
    if not database.has_workload(workload):
        return False
    return bool(database.get_top_k(database.commit_workload(workload), 1))


def _ranked_tasks(tasks: list[Any]) -> list[Any]:
    """Tasks, costliest (FLOPs x calls) first."""
    def cost(task: Any) -> float:
        try:
            from tvm.s_tir.analysis import estimate_tir_flops

            return float(estimate_tir_flops(task.dispatched[0])) * float(task.weight)
        except Exception:  # kernels TVM cannot count still get tuned, last
            return 0.0

    return sorted(tasks, key=cost, reverse=True)


def _frames_without_module_scan(context: int = 1) -> list[inspect.FrameInfo]:
    """``inspect.stack()`` with source lines read by ``linecache`` only.

    The stdlib version resolves each frame's module by scanning ``sys.modules`` whenever a
    frame has no file on disk (``<ast>``, frozen importlib), once per frame per call.
    """
    frame = sys._getframe(1)
    frames = []
    while frame is not None:
        filename, lineno = frame.f_code.co_filename, frame.f_lineno
        line = linecache.getline(filename, lineno)
        frames.append(inspect.FrameInfo(
            frame, filename, lineno, frame.f_code.co_name, [line] if line else None,
            0 if line else None,
        ))
        frame = frame.f_back
    return frames


def import_tensor_intrinsics() -> None:
    """Import TVM's tensor-intrinsic library (MetaSchedule needs it) in seconds, not minutes.

    Each of its hundreds of TVMScript functions calls ``inspect.stack()``, which costs
    ~40 s in all on 2 cores (measured with apache-tvm 0.27); the frames TVM reads (for
    ``code_context``) are the same with the cheaper walk, used only during this import.
    """
    if "tvm.s_tir.tensor_intrin" in sys.modules:
        return
    stack = inspect.stack
    inspect.stack = _frames_without_module_scan
    try:
        import tvm.s_tir.tensor_intrin  # noqa: F401
    finally:
        inspect.stack = stack


def _search_strategy(trials: int) -> Any:
    """Evolutionary search sized to the trial count.

    MetaSchedule's defaults (a population of 512 evolved 4 times) cost minutes per kernel on
    2 cores however few trials are measured; a population a few times the trial count keeps
    the search proportional to what it measures.
    """
    from tvm.s_tir import meta_schedule as ms

    return ms.search_strategy.EvolutionarySearch(
        population_size=max(64, 4 * trials),
        init_min_unmeasured=16,
        genetic_num_iters=2,
        genetic_max_fail_count=4,
    )


def _tune_one(task: Any, target: Any, database: Any, trials: int) -> int:
    """Tune one task with ``trials`` measured candidates; records go to ``database``.

    greencc's default schedule of the kernel is measured by the same runner and committed
    as a record too, so the database's best is never a schedule slower than the untuned
    build's (short searches often do not beat it).
    """
    from tvm.s_tir import meta_schedule as ms

    cores = int(target.attrs.get("num-cores", 1))
    builder = ms.builder.LocalBuilder(
        max_workers=cores, timeout_sec=BUILD_TIMEOUT_S, initializer=import_tensor_intrinsics
    )
    runner = ms.runner.LocalRunner()
    _commit_default_schedule(task, target, database, builder, runner)
    with tempfile.TemporaryDirectory(prefix="greencc-ms-") as logs:
        contexts, weights = ms.relax_integration.extracted_tasks_to_tune_contexts(
            [task], work_dir=logs, strategy=_search_strategy(trials), num_threads=cores,
        )
        if not contexts:
            return 0
        ms.tune.tune_tasks(
            tasks=contexts,
            builder=builder,
            runner=runner,
            task_weights=weights,
            work_dir=logs,
            max_trials_global=trials,
            max_trials_per_task=trials,
            num_trials_per_iter=min(trials, TRIALS_PER_ROUND),
            database=database,
        )
    return trials


def _commit_default_schedule(task: Any, target: Any, database: Any, builder: Any, runner: Any) -> bool:
    """Measure greencc's default schedule of ``task`` and commit it as a tuning record.

    Returns False (committing nothing) when no default rule takes the kernel or it fails
    to build or run; tuning then proceeds on MetaSchedule's candidates alone.
    """
    from tvm.s_tir import meta_schedule as ms


    workload_mod = task.dispatched[0]
    func = workload_mod["main"]
    schedule = None
    for rule in default_schedule_rules():
        schedule = rule.apply(func, target, False)
        if schedule is not None:
            break
    if schedule is None:
        return False
    schedule = schedule[0] if isinstance(schedule, list) else schedule
    (built,) = builder.build([ms.builder.BuilderInput(schedule.mod, target)])
    if built.error_msg is not None:
        log.debug("default schedule of %s failed to build: %s", task.task_name, built.error_msg)
        return False
    args_info = ms.arg_info.ArgInfo.from_prim_func(func)
    (future,) = runner.run([ms.runner.RunnerInput(built.artifact_path, "cpu", args_info)])
    result = future.result()
    if result.error_msg is not None or not result.run_secs:
        log.debug("default schedule of %s failed to run: %s", task.task_name, result.error_msg)
        return False
    database.commit_tuning_record(ms.database.TuningRecord(
        schedule.trace, database.commit_workload(workload_mod), result.run_secs, target, args_info,
    ))
    return True


__all__ = ["TuningSummary", "default_cache_dir", "target_key", "tune"]
