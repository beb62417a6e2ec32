"""Search benchmarks (issue 16).

    HF_HUB_OFFLINE=1 python -m benchmarks.search overhead
        Ray start-up (s) and a 1-worker search against a plain loop over the same candidates
        (tiny BERT, grid, no screen): the search's overhead in %.
    HF_HUB_OFFLINE=1 python -m benchmarks.search startup [--repeats 3]
        Ray start-up (s) as the search starts it, and with each part it can do without.
    HF_HUB_OFFLINE=1 python -m benchmarks.search minilm --time 1200 [--strategy tpe|grid|both]
            [--workers N] [--lock /tmp/bench.lock]
        MiniLM (seq 128) on ort-cpu, --objective energy --budget cos=0.99: multi-objective TPE
        and a grid over the same default space, each given --time s; front sizes, whether a
        front point dominates -O3 (measured latency and estimated energy at equal or better
        fidelity), candidates per minute and what the screen discarded. Each arm writes
        minilm-STRATEGY-wN.json beside its search directory; --lock is waited for and held
        while each arm runs (released between arms).
    HF_HUB_OFFLINE=1 python -m benchmarks.search summary [--minutes 10]
        The arms found under --work side by side, with the candidates each finished in its
        first --minutes (the same stretch of the same grid, for 1 against 2 workers).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import onnx_ir as ir

from benchmarks.common import holding
from greencc.search import SearchResult, SearchSpace, search
from greencc.search.space import default_space
from greencc.search.store import SCREENED, CandidateStore
from greencc.search.worker import compile_candidate, measure_candidate

OVERHEAD_SPACE = SearchSpace(presets=("-O1", "-O2", "-O3"), template="cleanup,prune-heads,fuse,dce,quantize-int8",
                             options={"prune-heads": {"ratio": (0.0, 0.5)}, "quantize-int8": {"enabled": (False, True)}})


def _export(name: str, directory: Path) -> str:
    path = directory / f"{name}.onnx"
    if not path.exists():
        from tests.models import minilm_model, tiny_bert_model

        model = tiny_bert_model() if name == "tiny_bert" else minilm_model()
        ir.save(model.ir, str(path))
    return str(path)


def overhead(work: Path) -> None:
    """Ray start-up and a 1-worker search against a plain loop (same configs, same order)."""
    import ray

    model = _export("tiny_bert", work)
    dims = {"batch": 2, "seq": 16}
    start = time.perf_counter()
    ray.init(num_cpus=2, resources={"measure_slot": 1}, include_dashboard=False, log_to_driver=False)
    startup = time.perf_counter() - start
    directory = Path(tempfile.mkdtemp(dir=work))
    result = search(model, space=OVERHEAD_SPACE, strategy="grid", directory=directory, dims=dims, workers=1,
                    screen=False, energy_window_s=0.2)
    ray.shutdown()
    configs = [c.config for c in sorted(result.candidates, key=lambda c: c.seq)]
    loop_dir = Path(tempfile.mkdtemp(dir=work))
    start = time.perf_counter()
    for i, config in enumerate(configs):
        out = compile_candidate(config, str(loop_dir / str(i)))
        if out["status"] == "compiled":
            measure_candidate(out["artifact"], window_s=0.2)
    plain = time.perf_counter() - start
    searched = result.stats["elapsed_s"]
    print(f"Ray start-up (local, 2 CPUs): {startup:.1f} s")
    print(f"{len(configs)} candidates: plain loop {plain:.1f} s, 1-worker search {searched:.1f} s "
          f"({100 * (searched / plain - 1):+.1f}%; the search also asks, dedups and writes its store and report)")


def startup(repeats: int) -> None:
    """Ray start-up as the search starts it (2 CPUs, a measurement slot, no dashboard), and
    without the parts a local search does not need, alternating so load drifts alike."""
    start = time.perf_counter()
    import ray

    print(f"import ray: {time.perf_counter() - start:.2f} s")
    variants: dict[str, tuple[dict[str, Any], dict[str, str]]] = {
        "search's ray.init": ({}, {}),
        "no metrics agent wait (enable_metrics_collection=false)": (
            {"_system_config": {"enable_metrics_collection": False}}, {}),
        "no usage stats": ({}, {"RAY_USAGE_STATS_ENABLED": "0"}),
    }
    times: dict[str, list[float]] = {name: [] for name in variants}
    for _ in range(repeats):
        for name, (extra, env) in variants.items():
            saved = {key: os.environ.get(key) for key in env}
            os.environ.update(env)
            load = os.getloadavg()[0]
            start = time.perf_counter()
            ray.init(num_cpus=2, resources={"measure_slot": 1}, include_dashboard=False, log_to_driver=False,
                     configure_logging=False, **extra)
            times[name].append(time.perf_counter() - start)
            ray.shutdown()
            for key, value in saved.items():
                if value is None:
                    os.environ.pop(key, None)
                else:
                    os.environ[key] = value
            print(f"{name}: {times[name][-1]:.2f} s (load {load:.1f})", flush=True)
    for name, values in times.items():
        print(f"{name}: median {statistics.median(values):.2f} s over {repeats}")


def minilm(work: Path, time_s: float, strategies: tuple[str, ...], workers: int | None, lock: str,
           full_space: bool) -> None:
    """The acceptance run: each strategy over MiniLM's default space for ``time_s`` (with
    ``full_space``, the space offered with calibration data, though none is given: the one
    the first runs searched, static int8 and recover included)."""
    model = _export("minilm", work)
    space = default_space(decoder=False, threads=(2,), calibrated=full_space)
    for strategy in strategies:
        tag = f"minilm-{strategy}-w{workers or 'all'}" + ("-full" if full_space else "")
        directory = work / tag
        shutil.rmtree(directory, ignore_errors=True)
        with holding(lock):
            load_before = os.getloadavg()
            result = search(model, space=space, strategy=strategy, directory=directory, time_s=time_s,
                            workers=workers, budget="cos=0.99", objective="energy",
                            progress=lambda line: print(f"  {line}", flush=True))
            load_after = os.getloadavg()
        summary = {"strategy": strategy, "time_s": time_s, "stats": result.stats, "load_before": load_before,
                   "load_after": load_after, "front": len(result.pareto), "dominates_o3": _dominates_o3(result),
                   "report": str(result.report), "table": result.table(), "directory": str(directory)}
        (work / f"{tag}.json").write_text(json.dumps(summary, indent=1, default=str))
        _print_arm(tag, summary)


def summary(work: Path, minutes: float) -> None:
    """Every arm under ``work`` side by side."""
    for path in sorted(work.glob("minilm-*.json")):
        arm = json.loads(path.read_text())
        _print_arm(path.stem, arm)
        with CandidateStore(arm["directory"]) as store:
            candidates = store.candidates()
        first = min((c.finished - (c.compile_s or 0.0) for c in candidates), default=0.0)
        early = [c for c in candidates if c.finished - first <= minutes * 60]
        print(f"in its first {minutes:g} min: {len(early)} candidates finished "
              f"({sum(c.status != SCREENED for c in early)} compiled or stopped, "
              f"{sum(c.status == SCREENED for c in early)} screened)")
        loads = [(c.load_before, c.load_after) for c in candidates if c.load_before is not None]
        if loads:
            print(f"load average around its {len(loads)} measurements: "
                  f"{min(min(pair) for pair in loads):.1f}-{max(max(pair) for pair in loads):.1f}")


def _print_arm(tag: str, arm: dict[str, Any]) -> None:
    stats = arm["stats"]
    minutes = stats["elapsed_s"] / 60
    known_broken = stats.get("known_broken", 0)
    finished = stats["compile_tasks"] - stats["cancelled"] + stats["screened"] + known_broken
    screen_s = f" (screen: {stats['screen_s']:.0f} s of the driver's time)" if "screen_s" in stats else ""
    print(f"\n## {tag}: {arm['front']} front points; {stats['compile_tasks']} compiles sent "
          f"({stats['cancelled']} cancelled at the deadline), {stats['screened']} screened out{screen_s}, "
          f"{known_broken} not compiled (begin like one that broke the budget), "
          f"{stats['duplicates']} duplicate asks, {stats['broke_budget']} broke the budget, {stats['failed']} failed, "
          f"{stats['measured']} measured; {finished / minutes:.2f} candidates/min "
          f"({(stats['compile_tasks'] - stats['cancelled']) / minutes:.2f} compiles/min) on {stats['workers']} "
          f"worker(s) in {stats['elapsed_s']:.0f} s; load average {arm['load_before'][0]:.1f} -> "
          f"{arm['load_after'][0]:.1f}")
    print(arm["table"])
    print(f"dominates -O3: {arm['dominates_o3']}; report {arm['report']}")


def _dominates_o3(result: SearchResult) -> str:
    o3 = next((c for c in result.candidates if c.pipeline == "-O3" and c.fidelity is not None), None)
    if o3 is None or o3.measured_latency_ms is None:
        return "-O3 was not measured"
    better = [c for c in result.pareto if c is not o3 and c.measured_latency_ms is not None
              and c.measured_latency_ms < o3.measured_latency_ms and (c.est_energy_mj or 0) < (o3.est_energy_mj or 0)
              and (c.fidelity or 0) >= (o3.fidelity or 0)]
    if better:
        return f"yes: `{better[0].pipeline}`"
    return "no (no front point is faster and cheaper at equal or better fidelity)"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("what", choices=("overhead", "startup", "minilm", "summary"))
    parser.add_argument("--time", type=float, default=1200.0, help="seconds per strategy (minilm)")
    parser.add_argument("--strategy", choices=("tpe", "grid", "both"), default="both", help="minilm's arms")
    parser.add_argument("--workers", type=int)
    parser.add_argument("--lock", default="", help="a lock file to wait for and hold while each arm runs")
    parser.add_argument("--full-space", action="store_true",
                        help="minilm: search the space offered with calibration data (static int8, recover)")
    parser.add_argument("--repeats", type=int, default=3, help="Ray starts per variant (startup)")
    parser.add_argument("--minutes", type=float, default=10.0, help="the stretch compared (summary)")
    parser.add_argument("--work", default=os.path.join(tempfile.gettempdir(), "greencc-search-bench"))
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    if args.what == "overhead":
        overhead(work)
    elif args.what == "startup":
        startup(args.repeats)
    elif args.what == "summary":
        summary(work, args.minutes)
    else:
        strategies = ("tpe", "grid") if args.strategy == "both" else (args.strategy,)
        minilm(work, args.time, strategies, args.workers, args.lock, args.full_space)


if __name__ == "__main__":
    main()
