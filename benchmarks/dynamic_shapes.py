"""The first-hour check of issue 14 on the real all-MiniLM-L6-v2: a dynamic-axis ONNX export
(symbolic ``batch`` and ``seq``, saved to a file as a user would) compiled with
``greencc compile -O3 --calib`` (16 x 128 arrays) must price within 1% of the static export,
and ``greencc bench`` of its artifact must run at seq 128 and say so.

    HF_HUB_OFFLINE=1 python -m benchmarks.dynamic_shapes [--workdir DIR] [--threads 2]

Exits 1 when either check fails.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np

import greencc as gc
from greencc.cli import main as greencc_main
from tests import models

SAMPLES, SEQ = 16, 128
DYNAMIC_AXES = {"input_ids": {0: "batch", 1: "seq"}, "attention_mask": {0: "batch", 1: "seq"}}


def _cli(*argv: str) -> str:
    """Run ``greencc ARGV`` in this process; its stdout."""
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = greencc_main(list(argv))
    if code != 0:
        raise SystemExit(f"greencc {' '.join(argv)} exited {code}:\n{out.getvalue()}")
    return out.getvalue()


def _gmac(artifact: Path) -> tuple[float, float]:
    """(input, final) GMAC of the compile's ledger in ``artifact``."""
    report = json.loads((artifact / "report.json").read_text())
    macs = report["summary"]["macs"]
    return macs[0] / 1e9, macs[1] / 1e9


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", default=None, help="keep the exports and artifacts here")
    parser.add_argument("--threads", default="2")
    args = parser.parse_args()
    work = Path(args.workdir or tempfile.mkdtemp(prefix="greencc-dynamic-"))
    work.mkdir(parents=True, exist_ok=True)

    module = models.minilm_module("eager")
    rng = np.random.default_rng(0)
    ids = rng.integers(1000, 30000, (SAMPLES, SEQ), dtype=np.int64)
    mask = np.ones((SAMPLES, SEQ), np.int64)
    mask[:, SEQ - SEQ // 4:] = 0
    np.savez(work / "calib.npz", input_ids=ids, attention_mask=mask)
    example = models.minilm_inputs()
    gc.from_torch(module, example, exporter="legacy", dynamic_shapes=DYNAMIC_AXES).save(work / "dynamic.onnx")
    gc.from_torch(module, example, exporter="legacy").save(work / "static.onnx")

    gmac = {}
    for kind in ("dynamic", "static"):
        start = time.perf_counter()
        _cli("compile", str(work / f"{kind}.onnx"), "-O3", "--calib", str(work / "calib.npz"),
             "--threads", args.threads, "-o", str(work / f"{kind}-O3"), "--quiet")
        gmac[kind] = _gmac(work / f"{kind}-O3")
        print(f"{kind:<8} -O3 --calib {SAMPLES}x{SEQ}: {gmac[kind][0]:.4f} -> {gmac[kind][1]:.4f} GMAC "
              f"({time.perf_counter() - start:.0f} s)")
    ratio = gmac["dynamic"][1] / gmac["static"][1]
    priced = abs(ratio - 1) <= 0.01
    print(f"dynamic / static final GMAC: {ratio:.4f} ({'within' if priced else 'NOT within'} 1%)")

    bench = _cli("bench", str(work / "dynamic-O3"), "--repeats", "20").strip()
    print(bench)
    at_seq = f"input_ids[1, {SEQ}]" in bench
    print(f"bench runs at seq {SEQ}: {'yes' if at_seq else 'NO'}")
    return 0 if priced and at_seq else 1


if __name__ == "__main__":
    sys.exit(main())
