"""The lowering's acceptance on the real models the test suite leaves out (they cost more than
its budget): all-MiniLM-L6-v2 (real weights) and the trained digits CNN at -O0, -O2, -O3 and in
both forced int8 forms, each lowered to torch and compared with ONNX Runtime running the same
graph (all graph optimizations, as ort-cpu runs it) on fresh inputs: end to end (float graphs
within 1e-4) and, for graphs with integer ops, node by node on ONNX Runtime's own inputs
(``greencc.lowering.verify``: integer outputs equal, float outputs within 1e-4), since end to
end a one-ulp float difference flips a rounding boundary somewhere in a large int8 model.
Exits 1 on any error above 1e-4 where it is required.

    HF_HUB_OFFLINE=1 .venv/bin/python scripts/check_lowering.py [--models minilm,digits]
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Callable

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np

import greencc as gc
from greencc.calibration import held_out
from greencc.lowering import lower_to_torch
from greencc.lowering.verify import node_errors
from greencc.target import resolve_target

TOLERANCE = 1e-4
LEVELS = {
    "-O0": "-O0", "-O2": "-O2", "-O3": "-O3",
    "int8-dynamic": "cleanup,fuse,dce,quantize-int8",
    "int8-static": "cleanup,fuse,dce,quantize-int8{mode=static}",
}


def _minilm_feeds(seed: int) -> dict[str, np.ndarray]:
    input_ids, attention_mask = held_out.minilm_inputs(seed=seed)
    return {"input_ids": input_ids.numpy(), "attention_mask": attention_mask.numpy()}


def _digits_feeds(seed: int) -> dict[str, np.ndarray]:
    images = held_out.digits_data().test_x
    start = (seed * 16) % (len(images) - 16)
    return {"image": images[start:start + 16]}


def _minilm() -> gc.Model:
    return gc.from_torch(held_out.minilm_module(), held_out.minilm_inputs())


MODELS: dict[str, tuple[Callable[[], gc.Model], Callable[[int], dict[str, np.ndarray]]]] = {
    "minilm": (_minilm, _minilm_feeds),
    "digits": (held_out.digits_cnn_model, _digits_feeds),
}


def ort_outputs(model: gc.Model, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """ONNX Runtime's outputs by name, as the ort-cpu target runs the graph."""
    return resolve_target("ort-cpu").lower(model)(feeds)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="minilm,digits")
    args = parser.parse_args()
    failures = 0
    print(f"{'model':8s} {'level':13s} {'nodes':>5s} {'params':>6s} {'lower s':>7s} {'end-to-end':>10s} "
          f"{'worst node':>10s}  integer ops")
    for name in args.models.split(","):
        build, feeds_of = MODELS[name]
        original = build()
        for level, pipeline in LEVELS.items():
            calibration = [feeds_of(seed) for seed in (1, 2)]
            model = gc.optimize(original, pipeline, calibration=calibration, verify=False)[0]
            started = time.perf_counter()
            lowered = lower_to_torch(model)
            lower_s = time.perf_counter() - started
            error = 0.0
            for seed in (10, 11):
                feeds = feeds_of(seed)
                got, want = lowered.run(feeds), ort_outputs(model, feeds)
                error = max(error, *(float(np.abs(got[k] - want[k]).max()) for k in want))
            integer_ops = sorted({n.op_type for n in model.graph if "Quant" in n.op_type or "Integer" in n.op_type
                                  or n.op_type.startswith("Q")})
            worst = max((e.error for e in node_errors(model, feeds_of(12))), default=0.0) if integer_ops else None
            failed = (worst if worst is not None else error) > TOLERANCE
            failures += failed
            print(f"{name:8s} {level:13s} {len(model.graph):5d} {len(lowered.parameter_names()):6d} "
                  f"{lower_s:7.2f} {error:10.2e} {'-' if worst is None else f'{worst:.2e}':>10s}  "
                  f"{','.join(integer_ops) or '-'}{'  FAIL' if failed else ''}", flush=True)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
