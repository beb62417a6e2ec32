"""Shared test helpers: build small models from ONNX text, run them in ONNX Runtime, and a
fake energy meter."""

from __future__ import annotations

import time

import numpy as np
import onnx
import onnx.parser
import onnx_ir as ir
import onnxruntime as ort

import greencc as gc
from greencc.ir import to_self_contained_proto
from greencc.measure import MeterAvailability

# A four-node model every pass of -O1 changes: the CLI and report tests' input.
GOOD = """<ir_version: 10, opset_import: ["" : 17]>
g (float[1, 8] x) => (float[1, 8] y) <float[8] w = {1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0}, float one = {1.0}> {
  i = Identity(x)
  m = Mul(i, one)
  a = Add(m, w)
  y = Relu(a)
}"""


class ConstantPowerRapl:
    """Stands in for a readable RAPL counter drawing a constant 10 W."""

    method = "rapl"

    def available(self) -> MeterAvailability:
        return MeterAvailability(True)

    def read_j(self) -> float:
        return 10.0 * time.perf_counter()

    def describe(self) -> str:
        return "RAPL package-0 (fake, 10 W)"


def model_from_text(text: str) -> gc.Model:
    """A greencc Model from ONNX textual syntax (``<ir_version: 10, opset_import: [...]>``)."""
    proto = onnx.parser.parse_model(text)
    return gc.load(proto)


def run_ort(model: gc.Model | ir.Model | onnx.ModelProto, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    """Run a model in ONNX Runtime with graph optimizations off (a faithful reference)."""
    if isinstance(model, gc.Model):
        model = model.ir
    proto = to_self_contained_proto(model) if isinstance(model, ir.Model) else model
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    options.intra_op_num_threads = 1
    session = ort.InferenceSession(proto.SerializeToString(), options, providers=["CPUExecutionProvider"])
    return session.run(None, feeds)


def random_feeds(model: gc.Model, seed: int = 0, dims: dict[str, int] | None = None) -> dict[str, np.ndarray]:
    """Random float inputs (normal) and small non-negative integer inputs for ``model``."""
    rng = np.random.default_rng(seed)
    dims = dims or {}
    feeds = {}
    for spec in model.inputs:
        shape = [d if isinstance(d, int) else dims.get(d, 2) for d in spec.shape]
        if spec.dtype.startswith("float"):
            feeds[spec.name] = rng.standard_normal(shape).astype(spec.dtype)
        elif spec.dtype == "bool":
            feeds[spec.name] = rng.integers(0, 2, shape).astype(bool)
        else:
            feeds[spec.name] = rng.integers(0, 3, shape).astype(spec.dtype)
    return feeds


def op_types(model: gc.Model) -> list[str]:
    """The op types of the main graph in order."""
    return [node.op_type for node in model.graph]
