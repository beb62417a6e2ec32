"""A speed-only paired check of LLM contenders already built by ``benchmarks.llm`` (the large
random-init model; no fidelity part, nothing written to BENCHMARKS.md): the same
``measure_speed`` turns, for checking one change quickly.

    HF_HUB_OFFLINE=1 python -m benchmarks.llm_speed --workdir ~/.cache/greencc/llm/bench --turns 6 --lock /tmp/bench.lock
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from benchmarks import llm
from benchmarks.common import holding

CONTENDERS = ("onnxruntime-genai int4", "greencc int4 weight-only (RTN)", "onnxruntime-genai fp32", "greencc -O2 fp32")
DIRECTORIES = ("genai-int4", "greencc_int4_weight-only_RTN", "genai-fp32", "greencc_-O2_fp32")
WARM_TURNS = 2  # the first turns pay page-ins and the other contenders' first runs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", required=True)
    parser.add_argument("--turns", type=int, default=6)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--lock", default="")
    args = parser.parse_args()
    large = llm.ensure_large_random()
    work = llm._model_workdir(Path(args.workdir).expanduser(), large)
    built = {name: llm._reused(work / directory) for name, directory in zip(CONTENDERS, DIRECTORIES, strict=True)}
    contenders = {name: llm.open_contender(name, item, args.threads) for name, item in built.items() if item}
    vocab = json.loads((large / "config.json").read_text())["vocab_size"]
    with holding(args.lock):
        figures = llm.measure_speed(contenders, turns=args.turns, new_tokens=32, vocab=vocab, log=print)
    for name, figure in figures.items():
        b1, b4 = (np.asarray(figure.decode_ms[b][WARM_TURNS:]) for b in (1, 4))
        print(f"{name}: decode b1 {1000 / np.median(b1):.1f} tok/s (p10-p90 {1000 / np.percentile(b1, 90):.1f}-"
              f"{1000 / np.percentile(b1, 10):.1f}), b4 {4000 / np.median(b4):.1f} tok/s, prefill "
              f"{np.median(figure.prefill_ms[WARM_TURNS:]):.1f} ms, over turns {WARM_TURNS + 1}-{args.turns}")


if __name__ == "__main__":
    main()
