"""Search benchmarks (issue 16).

    HF_HUB_OFFLINE=1 python -m benchmarks.search overhead
        Ray start-up (s) and a 1-worker search against a plain loop over the same candidates
        (tiny BERT, grid, no screen): the search's overhead in %.
    HF_HUB_OFFLINE=1 python -m benchmarks.search minilm --time 20m [--workers 2]
        MiniLM (seq 128) on ort-cpu, --objective energy --budget cos=0.99: multi-objective TPE
        and a grid over the same default space, each given --time; front sizes, whether a
        front point dominates -O3 (measured latency and estimated energy at equal or better
        fidelity), candidates per minute and what the screen discarded.
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time
from pathlib import Path

import onnx_ir as ir

from greencc.search import SearchResult, SearchSpace, search
from greencc.search.space import default_space
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


def minilm(work: Path, time_s: float, workers: int | None) -> None:
    """The acceptance run: TPE and grid over MiniLM's default space, each for ``time_s``."""
    model = _export("minilm", work)
    space = default_space(decoder=False, threads=(2,))
    results: dict[str, SearchResult] = {}
    for strategy in ("tpe", "grid"):
        directory = work / f"minilm-{strategy}"
        shutil.rmtree(directory, ignore_errors=True)
        results[strategy] = search(model, space=space, strategy=strategy, directory=directory, time_s=time_s,
                                   workers=workers, budget="cos=0.99", objective="energy",
                                   progress=lambda line: print(f"  {line}", flush=True))
    for strategy, result in results.items():
        stats = result.stats
        minutes = stats["elapsed_s"] / 60
        print(f"\n## {strategy}: {len(result.pareto)} front points; {stats['compile_tasks']} compiled, "
              f"{stats['screened']} screened out, {stats['duplicates']} duplicates, {stats['broke_budget']} broke "
              f"the budget, {stats['measured']} measured; {len(result.candidates) / minutes:.2f} candidates/min "
              f"({stats['compile_tasks'] / minutes:.2f} compiles/min) on {stats['workers']} worker(s)")
        print(result.table())
        print(f"dominates -O3: {_dominates_o3(result)}; report {result.report}")


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
    parser.add_argument("what", choices=("overhead", "minilm"))
    parser.add_argument("--time", type=float, default=1200.0, help="seconds per strategy (minilm)")
    parser.add_argument("--workers", type=int)
    parser.add_argument("--work", default=os.path.join(tempfile.gettempdir(), "greencc-search-bench"))
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    if args.what == "overhead":
        overhead(work)
    else:
        minilm(work, args.time, args.workers)


if __name__ == "__main__":
    main()
