"""``greencc cost calibrate``: fit a target's cost model to this machine.

Micro-benchmarks (MatMul/Gemm across shapes, batched MatMul, Conv, elementwise, reductions,
Softmax, LayerNorm, int8 MatMulInteger/ConvInteger, and the contrib kernels ONNX Runtime
fuses to) run through the real target with its thread count. Their work — MAC-equivalents
per dtype class, bytes per memory level — is read back from
:func:`~greencc.cost.estimate.estimate_cost` itself (through probe profiles), so the fit
and the estimate count the same things. A log-space least-squares fit gives a
:class:`KernelModel`: effective throughput per dtype class, bandwidth per memory level,
per-kernel efficiency, size exponent and dispatch overhead, and the per-inference
overhead. Its global terms become a calibrated :class:`HardwareProfile` (JSON) that
``-t ort-cpu`` uses; the per-kernel terms, which the profile has no fields for, live in the
``.calibration.json`` record beside it with the machine, date, thread count and fit error.
Predictions are per *fused kernel*: :func:`target_graph` asks ONNX Runtime which graph it
actually runs, and :func:`predict_latency` prices that graph.
"""

from __future__ import annotations

import datetime as _dt
import json
import logging
import math
import os
import platform
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnx.helper as oh
from onnx import TensorProto

from greencc.cost.profile import HardwareProfile, MemoryLevel
from greencc.errors import UsageError
from greencc.ir.shapes import with_static_inputs

log = logging.getLogger(__name__)

CALIBRATION_SCHEMA = "greencc.calibration/1"
# Written into a calibrated profile's calibration_note: the energy terms (pJ/MAC, pJ/byte,
# static power) were not fitted, since no energy meter was read. The report says so.
ENERGY_UNCALIBRATED_MARK = "energy terms not calibrated"
CACHE_ENV = "GREENCC_CACHE_DIR"
FITTED_DTYPES = ("float32", "int8")
# The host profile's core count (x86-avx512 models a 96-core EPYC 9654, arm-cortex-a76 a
# 4-core cluster): static power is scaled to the cores a calibrated profile uses.
HOST_PROFILE_CORES = {"x86-avx512": 96, "arm-cortex-a76": 4}
_OPSET = 18
_BIG = 1e30  # a probe profile's "infinitely fast" throughput or bandwidth


# --------------------------------------------------------------------------------------
# Where calibrated profiles live
# --------------------------------------------------------------------------------------
def cache_dir() -> Path:
    """greencc's user cache: ``$GREENCC_CACHE_DIR``, else ``$XDG_CACHE_HOME/greencc``, else
    ``~/.cache/greencc``."""
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "greencc"


def profiles_dir() -> Path:
    """Where calibrated profiles are saved: ``<cache_dir>/profiles``."""
    return cache_dir() / "profiles"


def calibrated_profile_name(target: str, threads: int) -> str:
    """``ort-cpu-2threads``: one calibrated profile per target and thread count."""
    return f"{target}-{int(threads)}threads"


def calibration_path(name: str) -> Path:
    """The fit record saved beside profile ``name``: ``<name>.calibration.json``."""
    return profiles_dir() / f"{name}.calibration.json"


def machine_info() -> dict[str, Any]:
    """What identifies this machine for a calibration: CPU model, logical cores, arch, OS."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "cpu": cpu,
        "cores": os.cpu_count() or 1,
        "arch": platform.machine(),
        "system": platform.system(),
        "hostname": platform.node(),
    }


def _same_machine(recorded: Mapping[str, Any], here: Mapping[str, Any]) -> bool:
    # The hostname is recorded but not compared: VMs and containers get new ones.
    return all(recorded.get(key) == here.get(key) for key in ("cpu", "cores", "arch"))


@dataclass
class Calibration:
    """A calibrated profile and its fit record.

    ``run_overhead_s`` is the fixed cost per inference (session call, feeding inputs) in
    seconds, which :class:`HardwareProfile` has no field for yet; :func:`predict_latency_ms`
    adds it. ``fit`` holds the parameters, per-benchmark measured and predicted ms and the
    fit error (``median_abs_pct``, ``p90_abs_pct``, ``rms_log_error``).
    """

    profile: HardwareProfile
    target: str
    threads: int
    machine: dict[str, Any]
    created: str
    run_overhead_s: float
    fit: dict[str, Any]
    greencc_version: str = ""

    def record(self) -> dict[str, Any]:
        """The JSON fit record (everything but the profile, which is saved on its own)."""
        return {
            "schema": CALIBRATION_SCHEMA,
            "profile": self.profile.name,
            "target": self.target,
            "threads": self.threads,
            "machine": self.machine,
            "created": self.created,
            "greencc_version": self.greencc_version,
            "run_overhead_s": self.run_overhead_s,
            "fit": self.fit,
        }

    def save(self, directory: str | os.PathLike | None = None) -> Path:
        """Write ``<name>.json`` (the profile) and ``<name>.calibration.json``; returns the profile path."""
        directory = Path(directory) if directory is not None else profiles_dir()
        path = self.profile.to_json(directory / f"{self.profile.name}.json")
        _write_json_atomic(directory / f"{self.profile.name}.calibration.json", self.record())
        return path

    @classmethod
    def load(cls, name: str, directory: str | os.PathLike | None = None) -> Calibration:
        """Read the calibrated profile ``name`` and its fit record (``UsageError`` if bad)."""
        directory = Path(directory) if directory is not None else profiles_dir()
        profile = HardwareProfile.from_json(directory / f"{name}.json")
        record_path = directory / f"{name}.calibration.json"
        try:
            record = json.loads(record_path.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as exc:
            raise UsageError(
                f"cannot read the calibration record {record_path}: {exc}",
                hint="run `greencc cost calibrate` again",
            ) from None
        if not isinstance(record, dict) or record.get("schema") != CALIBRATION_SCHEMA:
            raise UsageError(f"{record_path} is not a greencc calibration record",
                             hint="run `greencc cost calibrate` again")
        return cls(
            profile=profile,
            target=str(record.get("target", "")),
            threads=int(record.get("threads", 0)),
            machine=dict(record.get("machine", {})),
            created=str(record.get("created", "")),
            run_overhead_s=float(record.get("run_overhead_s", 0.0)),
            fit=dict(record.get("fit", {})),
            greencc_version=str(record.get("greencc_version", "")),
        )


def find_calibration(target: str, threads: int | None) -> Calibration | None:
    """The calibration of ``target`` at ``threads`` made on this machine, or ``None``.

    A record from another machine (CPU model, core count or architecture differ) or an
    unreadable one is ignored, with a log message saying why.
    """
    if threads is None:
        return None
    name = calibrated_profile_name(target, threads)
    if not (profiles_dir() / f"{name}.json").is_file():
        return None
    try:
        calibration = Calibration.load(name)
    except UsageError as exc:
        log.warning("ignoring calibrated profile %s: %s", name, exc.message)
        return None
    if not _same_machine(calibration.machine, machine_info()):
        log.info("ignoring calibrated profile %s: it was made on another machine (%s)",
                 name, calibration.machine.get("cpu"))
        return None
    return calibration


def find_calibrated_profile(target: str, threads: int | None) -> HardwareProfile | None:
    """The profile :func:`find_calibration` finds, or ``None``."""
    calibration = find_calibration(target, threads)
    return calibration.profile if calibration is not None else None


# --------------------------------------------------------------------------------------
# Micro-benchmarks
# --------------------------------------------------------------------------------------
@dataclass(frozen=True)
class MicroBenchmark:
    """One calibration workload: a small ONNX model exercising ``op_class`` in ``dtype``."""

    name: str
    op_class: str
    dtype: str
    build: Callable[[], onnx.ModelProto]


def _tensor(name: str, dtype: int, shape: Sequence[int | str]) -> onnx.ValueInfoProto:
    return oh.make_tensor_value_info(name, dtype, list(shape))


def _const(name: str, array: np.ndarray) -> onnx.TensorProto:
    return onnx.numpy_helper.from_array(array, name)


def _model(nodes: list[onnx.NodeProto], inputs: list[onnx.ValueInfoProto],
           outputs: list[onnx.ValueInfoProto], inits: Sequence[onnx.TensorProto] = (),
           contrib: bool = False, opset: int = _OPSET) -> onnx.ModelProto:
    graph = oh.make_graph(nodes, "bench", inputs, outputs, list(inits))
    opsets = [oh.make_opsetid("", opset)]
    if contrib:
        opsets.append(oh.make_opsetid("com.microsoft", 1))
    return oh.make_model(graph, opset_imports=opsets, ir_version=9)


def _rand(shape: Sequence[int], dtype: Any = np.float32, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    if np.dtype(dtype).kind in "iu":
        info = np.iinfo(dtype)
        return rng.integers(info.min, info.max, size=shape, endpoint=True).astype(dtype)
    return (rng.standard_normal(shape) * 0.1).astype(dtype)


F = TensorProto.FLOAT


def _matmul(m: int, k: int, n: int, batch: Sequence[int] = ()) -> Callable[[], onnx.ModelProto]:
    def build() -> onnx.ModelProto:
        if batch:  # activations on both sides, as attention's QKᵀ and ·V
            return _model([oh.make_node("MatMul", ["a", "b"], ["y"])],
                          [_tensor("a", F, [*batch, m, k]), _tensor("b", F, [*batch, k, n])],
                          [_tensor("y", F, [*batch, m, n])])
        return _model([oh.make_node("MatMul", ["a", "w"], ["y"])], [_tensor("a", F, [m, k])],
                      [_tensor("y", F, [m, n])], [_const("w", _rand([k, n]))])
    return build


def _gemm(m: int, k: int, n: int) -> Callable[[], onnx.ModelProto]:
    def build() -> onnx.ModelProto:
        return _model([oh.make_node("Gemm", ["a", "w", "b"], ["y"], transB=1)], [_tensor("a", F, [m, k])],
                      [_tensor("y", F, [m, n])], [_const("w", _rand([n, k])), _const("b", _rand([n]))])
    return build


def _conv(n: int, c_in: int, c_out: int, size: int, kernel: int = 3) -> Callable[[], onnx.ModelProto]:
    def build() -> onnx.ModelProto:
        pad = kernel // 2
        return _model(
            [oh.make_node("Conv", ["x", "w", "b"], ["y"], pads=[pad] * 4, kernel_shape=[kernel, kernel])],
            [_tensor("x", F, [n, c_in, size, size])], [_tensor("y", F, [n, c_out, size, size])],
            [_const("w", _rand([c_out, c_in, kernel, kernel])), _const("b", _rand([c_out]))])
    return build


def _unary(op: str, shape: Sequence[int], chain: int = 1, domain: str = "",
           out_type: int = TensorProto.FLOAT) -> Callable[[], onnx.ModelProto]:
    def build() -> onnx.ModelProto:
        nodes = []
        previous = "x"
        for i in range(chain):
            out = "y" if i == chain - 1 else f"t{i}"
            nodes.append(oh.make_node(op, [previous], [out], domain=domain))
            previous = out
        return _model(nodes, [_tensor("x", F, shape)], [_tensor("y", out_type, shape)], contrib=bool(domain))
    return build


def _binary(op: str, shape: Sequence[int]) -> Callable[[], onnx.ModelProto]:
    def build() -> onnx.ModelProto:
        return _model([oh.make_node(op, ["a", "b"], ["y"])], [_tensor("a", F, shape), _tensor("b", F, shape)],
                      [_tensor("y", F, shape)])
    return build


def _reduce(op: str, shape: Sequence[int]) -> Callable[[], onnx.ModelProto]:
    def build() -> onnx.ModelProto:
        out_shape = [*shape[:-1], 1]
        return _model([oh.make_node(op, ["x", "axes"], ["y"], keepdims=1)], [_tensor("x", F, shape)],
                      [_tensor("y", F, out_shape)], [_const("axes", np.array([-1], np.int64))])
    return build


def _softmax(shape: Sequence[int]) -> Callable[[], onnx.ModelProto]:
    def build() -> onnx.ModelProto:
        return _model([oh.make_node("Softmax", ["x"], ["y"], axis=-1)], [_tensor("x", F, shape)],
                      [_tensor("y", F, shape)])
    return build


def _layernorm(rows: int, hidden: int) -> Callable[[], onnx.ModelProto]:
    def build() -> onnx.ModelProto:
        return _model([oh.make_node("LayerNormalization", ["x", "g", "b"], ["y"], axis=-1)],
                      [_tensor("x", F, [rows, hidden])], [_tensor("y", F, [rows, hidden])],
                      [_const("g", _rand([hidden], seed=1) + 1), _const("b", _rand([hidden], seed=2))])
    return build


def _skip_layernorm(rows: int, hidden: int) -> Callable[[], onnx.ModelProto]:
    def build() -> onnx.ModelProto:
        shape = [rows // 128, 128, hidden] if rows % 128 == 0 else [1, rows, hidden]
        return _model(
            [oh.make_node("SkipLayerNormalization", ["x", "s", "g", "b"], ["y"], domain="com.microsoft")],
            [_tensor("x", F, shape), _tensor("s", F, shape)],
            [_tensor("y", F, shape)],
            [_const("g", _rand([hidden], seed=1) + 1), _const("b", _rand([hidden], seed=2))], contrib=True)
    return build


def _bias_gelu(rows: int, hidden: int) -> Callable[[], onnx.ModelProto]:
    def build() -> onnx.ModelProto:
        return _model([oh.make_node("BiasGelu", ["x", "b"], ["y"], domain="com.microsoft")],
                      [_tensor("x", F, [rows, hidden])], [_tensor("y", F, [rows, hidden])],
                      [_const("b", _rand([hidden]))], contrib=True)
    return build


def _attention(batch: int, seq: int, hidden: int, heads: int) -> Callable[[], onnx.ModelProto]:
    def build() -> onnx.ModelProto:
        return _model(
            [oh.make_node("Attention", ["x", "w", "b", "mask"], ["y"], domain="com.microsoft", num_heads=heads)],
            [_tensor("x", F, [batch, seq, hidden]), _tensor("mask", TensorProto.INT32, [batch, seq])],
            [_tensor("y", F, [batch, seq, hidden])],
            [_const("w", _rand([hidden, 3 * hidden])), _const("b", _rand([3 * hidden]))], contrib=True)
    return build


def _transpose(shape: Sequence[int], perm: Sequence[int]) -> Callable[[], onnx.ModelProto]:
    def build() -> onnx.ModelProto:
        return _model([oh.make_node("Transpose", ["x"], ["y"], perm=list(perm))], [_tensor("x", F, shape)],
                      [_tensor("y", F, [shape[p] for p in perm])])
    return build


def _gather(vocab: int, hidden: int, tokens: int) -> Callable[[], onnx.ModelProto]:
    def build() -> onnx.ModelProto:
        return _model([oh.make_node("Gather", ["table", "ids"], ["y"], axis=0)],
                      [_tensor("ids", TensorProto.INT64, [1, tokens])], [_tensor("y", F, [1, tokens, hidden])],
                      [_const("table", _rand([vocab, hidden]))])
    return build


def _matmul_integer(m: int, k: int, n: int) -> Callable[[], onnx.ModelProto]:
    def build() -> onnx.ModelProto:
        return _model(
            [oh.make_node("MatMulInteger", ["a", "w", "az", "wz"], ["y"])],
            [_tensor("a", TensorProto.UINT8, [m, k])], [_tensor("y", TensorProto.INT32, [m, n])],
            [_const("w", _rand([k, n], np.int8)), _const("az", np.array(128, np.uint8)),
             _const("wz", np.array(0, np.int8))])
    return build


def _conv_integer(n: int, c_in: int, c_out: int, size: int) -> Callable[[], onnx.ModelProto]:
    def build() -> onnx.ModelProto:
        return _model(
            [oh.make_node("ConvInteger", ["x", "w", "xz"], ["y"], pads=[1] * 4, kernel_shape=[3, 3])],
            [_tensor("x", TensorProto.UINT8, [n, c_in, size, size])],
            [_tensor("y", TensorProto.INT32, [n, c_out, size, size])],
            [_const("w", _rand([c_out, c_in, 3, 3], np.int8)), _const("xz", np.array(128, np.uint8))])
    return build


def _dynamic_quantize(rows: int, hidden: int) -> Callable[[], onnx.ModelProto]:
    def build() -> onnx.ModelProto:
        return _model([oh.make_node("DynamicQuantizeLinear", ["x"], ["y", "s", "z"])],
                      [_tensor("x", F, [rows, hidden])],
                      [_tensor("y", TensorProto.UINT8, [rows, hidden]), _tensor("s", F, []),
                       _tensor("z", TensorProto.UINT8, [])])
    return build


def _where(heads: int, seq: int, batch: int = 1) -> Callable[[], onnx.ModelProto]:
    def build() -> onnx.ModelProto:  # the attention-mask select of torch's SDPA export
        return _model(
            [oh.make_node("Where", ["mask", "x", "fill"], ["y"])],
            [_tensor("mask", TensorProto.BOOL, [batch, 1, 1, seq]), _tensor("x", F, [batch, heads, seq, seq])],
            [_tensor("y", F, [batch, heads, seq, seq])], [_const("fill", np.array(-1e4, np.float32))])
    return build


def _cast(shape: Sequence[int]) -> Callable[[], onnx.ModelProto]:
    def build() -> onnx.ModelProto:
        return _model([oh.make_node("Cast", ["x"], ["y"], to=TensorProto.FLOAT)],
                      [_tensor("x", TensorProto.INT64, shape)], [_tensor("y", F, shape)])
    return build


def _add_chain(shape: Sequence[int], chain: int) -> Callable[[], onnx.ModelProto]:
    def build() -> onnx.ModelProto:
        nodes = []
        previous = "x"
        for i in range(chain):
            out = "y" if i == chain - 1 else f"t{i}"
            nodes.append(oh.make_node("Add", [previous, "c"], [out]))
            previous = out
        return _model(nodes, [_tensor("x", F, shape)], [_tensor("y", F, shape)],
                      [_const("c", _rand([shape[-1]]))])
    return build


def _shape_ops(seq: int, hidden: int, repeats: int) -> Callable[[], onnx.ModelProto]:
    def build() -> onnx.ModelProto:  # Shape -> Gather -> Unsqueeze -> Concat -> Reshape, as exports do;
        # a symbolic batch keeps ONNX Runtime from folding them away, as in a real export
        nodes = []
        previous = "x"
        for i in range(repeats):
            out = "y" if i == repeats - 1 else f"r{i}"
            nodes += [
                oh.make_node("Shape", [previous], [f"s{i}"]),
                oh.make_node("Gather", [f"s{i}", "zero"], [f"b{i}"], axis=0),
                oh.make_node("Unsqueeze", [f"b{i}", "axis0"], [f"u{i}"]),
                oh.make_node("Concat", [f"u{i}", "rest"], [f"c{i}"], axis=0),
                oh.make_node("Reshape", [previous, f"c{i}"], [out]),
            ]
            previous = out
        return _model(nodes, [_tensor("x", F, ["batch", seq, hidden])], [_tensor("y", F, ["batch", seq, hidden])],
                      [_const("zero", np.array(0, np.int64)), _const("axis0", np.array([0], np.int64)),
                       _const("rest", np.array([seq, hidden], np.int64))])
    return build


def _gelu(rows: int, hidden: int, domain: str = "") -> Callable[[], onnx.ModelProto]:
    def build() -> onnx.ModelProto:  # ONNX Gelu (opset 20) or com.microsoft's
        return _model([oh.make_node("Gelu", ["x"], ["y"], domain=domain)],
                      [_tensor("x", F, [rows, hidden])], [_tensor("y", F, [rows, hidden])],
                      contrib=bool(domain), opset=20)
    return build


def _embed_layernorm(batch: int, seq: int, hidden: int, vocab: int) -> Callable[[], onnx.ModelProto]:
    def build() -> onnx.ModelProto:
        return _model(
            [oh.make_node("EmbedLayerNormalization", ["ids", "", "words", "positions", "", "g", "b"], ["y", "mask_index"],
                          domain="com.microsoft", epsilon=1e-12)],
            [_tensor("ids", TensorProto.INT32, [batch, seq])],
            [_tensor("y", F, [batch, seq, hidden]), _tensor("mask_index", TensorProto.INT32, [batch])],
            [_const("words", _rand([vocab, hidden])), _const("positions", _rand([seq, hidden], seed=1)),
             _const("g", _rand([hidden], seed=2) + 1), _const("b", _rand([hidden], seed=3))], contrib=True)
    return build


def _fused_matmul(batch: int, heads: int, seq: int, head_size: int) -> Callable[[], onnx.ModelProto]:
    def build() -> onnx.ModelProto:  # attention scores as ORT fuses them: alpha·Q·Kᵀ
        shape = [batch, heads, seq, head_size]
        return _model([oh.make_node("FusedMatMul", ["q", "k"], ["y"], domain="com.microsoft",
                                    alpha=head_size ** -0.5, transB=1)],
                      [_tensor("q", F, shape), _tensor("k", F, shape)],
                      [_tensor("y", F, [batch, heads, seq, seq])], contrib=True)
    return build


def _chained(build: Callable[[], onnx.ModelProto], length: int, data_input: int = 0) -> Callable[[], onnx.ModelProto]:
    """``build``'s single node repeated ``length`` times, each feeding the next through its
    ``data_input``: inside a graph, intermediate tensors come from the runtime's arena and
    only the last one is a graph output, as in a real model."""
    def chained() -> onnx.ModelProto:
        model = build()
        (node,) = model.graph.node
        weights = {init.name: init for init in model.graph.initializer}
        previous = node.input[data_input]
        nodes = []
        for i in range(length):
            copy = onnx.NodeProto()
            copy.CopyFrom(node)
            copy.input[data_input] = previous
            copy.output[0] = node.output[0] if i == length - 1 else f"chain{i}"
            for j, name in enumerate(copy.input):
                if i and name in weights:  # own weights per node, as in a model (no shared prepacking)
                    clone = onnx.TensorProto()
                    clone.CopyFrom(weights[name])
                    clone.name = f"{name}_{i}"
                    model.graph.initializer.append(clone)
                    copy.input[j] = clone.name
            previous = copy.output[0]
            nodes.append(copy)
        del model.graph.node[:]
        model.graph.node.extend(nodes)
        return model
    return chained


def default_benchmarks() -> list[MicroBenchmark]:
    """The calibration suite: every op class the cost model prices, at several sizes.

    Shapes span overhead-bound (a single element), cache-resident and DRAM-sized tensors,
    and the transformer and CNN shapes greencc's models use (hidden 32/384/1536, seq 16/128,
    12 heads; 8x8 digits, 56x56 feature maps). None of the validation models is run here.
    """
    b = MicroBenchmark
    return [
        # Dispatch: chains of single-element ops isolate per-op and per-inference overhead.
        b("neg[1]x1", "elementwise", "float32", _unary("Neg", [1], 1)),
        b("neg[1]x16", "elementwise", "float32", _unary("Neg", [1], 16)),
        b("neg[1]x64", "elementwise", "float32", _unary("Neg", [1], 64)),
        b("add [16,32]x1", "elementwise", "float32", _add_chain([16, 32], 1)),
        b("add [16,32]x16", "elementwise", "float32", _add_chain([16, 32], 16)),
        b("add [128,384]x8", "elementwise", "float32", _add_chain([128, 384], 8)),
        b("shape ops x4", "data-movement", "float32", _shape_ops(16, 32, 4)),
        b("shape ops x16", "data-movement", "float32", _shape_ops(16, 32, 16)),
        # Chains: the same kernel back to back, as inside a model (arena-allocated
        # intermediates, one graph output), against the single-node benchmarks below.
        b("matmul 32x32x32 x8", "matmul", "float32", _chained(_matmul(32, 32, 32), 8)),
        b("matmul 128x384x384 x4", "matmul", "float32", _chained(_matmul(128, 384, 384), 4)),
        b("softmax 2x16x16 x8", "softmax", "float32", _chained(_softmax([2, 16, 16]), 8)),
        b("softmax 12x128x128 x4", "softmax", "float32", _chained(_softmax([12, 128, 128]), 4)),
        b("layernorm 16x32 x8", "normalization", "float32", _chained(_layernorm(16, 32), 8)),
        b("skiplayernorm 16x32 x8", "normalization", "float32", _chained(_skip_layernorm(16, 32), 8)),
        b("gelu 16x64 x8", "elementwise", "float32", _chained(_gelu(16, 64), 8)),
        b("biasgelu 32x64 x8", "elementwise", "float32", _chained(_bias_gelu(32, 64), 8)),
        b("where 1x2x16x16 x8", "elementwise", "float32", _chained(_where(2, 16, 1), 8, data_input=1)),
        b("transpose 2x16x2x16 x8", "data-movement", "float32",
          _chained(_transpose([2, 16, 2, 16], [0, 2, 1, 3]), 8)),
        b("relu 64K x8", "elementwise", "float32", _chained(_unary("Relu", [65536]), 8)),
        b("attention 1x16x32 h2 x4", "matmul", "float32", _chained(_attention(1, 16, 32, 2), 4)),
        # MatMul / Gemm across shapes (weights as initializers, as in a model).
        b("matmul 1x384x384", "matmul", "float32", _matmul(1, 384, 384)),
        b("matmul 16x32x32", "matmul", "float32", _matmul(16, 32, 32)),
        b("matmul 128x384x384", "matmul", "float32", _matmul(128, 384, 384)),
        b("matmul 128x384x1536", "matmul", "float32", _matmul(128, 384, 1536)),
        b("matmul 128x1536x384", "matmul", "float32", _matmul(128, 1536, 384)),
        b("matmul 512x512x512", "matmul", "float32", _matmul(512, 512, 512)),
        b("matmul 1024x384x1536", "matmul", "float32", _matmul(1024, 384, 1536)),
        b("gemm 8x16x10", "matmul", "float32", _gemm(8, 16, 10)),
        b("gemm 128x384x384", "matmul", "float32", _gemm(128, 384, 384)),
        b("gemm 1024x1536x384", "matmul", "float32", _gemm(1024, 1536, 384)),
        # Batched MatMul, attention-shaped.
        b("bmm 2x16x16x16", "matmul", "float32", _matmul(16, 16, 16, batch=[2])),
        b("bmm 12x128x32x128", "matmul", "float32", _matmul(128, 32, 128, batch=[12])),
        b("bmm 12x128x128x32", "matmul", "float32", _matmul(128, 128, 32, batch=[12])),
        b("bmm 96x128x32x128", "matmul", "float32", _matmul(128, 32, 128, batch=[96])),
        # Conv.
        b("conv 1x1->8 8x8", "conv", "float32", _conv(1, 1, 8, 8)),
        b("conv 8x8->16 4x4", "conv", "float32", _conv(8, 8, 16, 4)),
        b("conv 1x32->64 56x56", "conv", "float32", _conv(1, 32, 64, 56)),
        b("conv 8x16->32 28x28", "conv", "float32", _conv(8, 16, 32, 28)),
        # Elementwise: cache-resident to DRAM-sized, cheap and transcendental.
        b("add 4K", "elementwise", "float32", _binary("Add", [4096])),
        b("add 256K", "elementwise", "float32", _binary("Add", [262144])),
        b("add 4M", "elementwise", "float32", _binary("Add", [4 << 20])),
        b("add 32M", "elementwise", "float32", _binary("Add", [32 << 20])),
        b("mul 1M", "elementwise", "float32", _binary("Mul", [1 << 20])),
        b("relu 64K", "elementwise", "float32", _unary("Relu", [65536])),
        b("relu 16M", "elementwise", "float32", _unary("Relu", [16 << 20])),
        b("relu 96M", "elementwise", "float32", _unary("Relu", [96 << 20])),
        b("where 1x12x128x128", "elementwise", "float32", _where(12, 128)),
        b("where 8x2x16x16", "elementwise", "float32", _where(2, 16, 8)),
        b("where 1x2x16x16", "elementwise", "float32", _where(2, 16, 1)),
        b("cast [1,16]", "elementwise", "float32", _cast([1, 16])),
        b("isnan 2x16x16", "elementwise", "float32", _unary("IsNaN", [2, 16, 16], out_type=TensorProto.BOOL)),
        b("cast 128x384", "elementwise", "float32", _cast([128, 384])),
        b("gelu 128x1536", "elementwise", "float32", _gelu(128, 1536)),
        b("gelu 16x64", "elementwise", "float32", _gelu(16, 64)),
        b("ms gelu 128x1536", "elementwise", "float32", _gelu(128, 1536, "com.microsoft")),
        b("isnan 12x128x128", "elementwise", "float32", _unary("IsNaN", [12, 128, 128], out_type=TensorProto.BOOL)),
        b("exp 256K", "elementwise", "float32", _unary("Exp", [262144])),
        b("erf 1M", "elementwise", "float32", _unary("Erf", [1 << 20])),
        b("biasgelu 128x1536", "elementwise", "float32", _bias_gelu(128, 1536)),
        b("biasgelu 1024x1536", "elementwise", "float32", _bias_gelu(1024, 1536)),
        # Reductions, softmax, normalization.
        b("reducemean 128x384", "reduction", "float32", _reduce("ReduceMean", [128, 384])),
        b("reducesum 1024x1536", "reduction", "float32", _reduce("ReduceSum", [1024, 1536])),
        b("softmax 2x16x16", "softmax", "float32", _softmax([2, 16, 16])),
        b("softmax 12x128x128", "softmax", "float32", _softmax([12, 128, 128])),
        b("softmax 96x128x128", "softmax", "float32", _softmax([96, 128, 128])),
        b("layernorm 16x32", "normalization", "float32", _layernorm(16, 32)),
        b("layernorm 128x384", "normalization", "float32", _layernorm(128, 384)),
        b("layernorm 1024x384", "normalization", "float32", _layernorm(1024, 384)),
        b("skiplayernorm 128x384", "normalization", "float32", _skip_layernorm(128, 384)),
        # Fused attention as ORT runs it (QKV projection + scores + softmax + context).
        b("attention 1x128x384 h12", "matmul", "float32", _attention(1, 128, 384, 12)),
        b("attention 2x16x32 h2", "matmul", "float32", _attention(2, 16, 32, 2)),
        b("attention 8x16x32 h2", "matmul", "float32", _attention(8, 16, 32, 2)),
        b("attention 8x128x384 h12", "matmul", "float32", _attention(8, 128, 384, 12)),
        b("fusedmatmul 1x12x128x32", "matmul", "float32", _fused_matmul(1, 12, 128, 32)),
        b("fusedmatmul 8x2x16x16", "matmul", "float32", _fused_matmul(8, 2, 16, 16)),
        b("embedlayernorm 1x16x32", "normalization", "float32", _embed_layernorm(1, 16, 32, 100)),
        b("embedlayernorm 8x128x384", "normalization", "float32", _embed_layernorm(8, 128, 384, 30522)),
        b("skiplayernorm 128x32", "normalization", "float32", _skip_layernorm(128, 32)),
        b("skiplayernorm 1024x384", "normalization", "float32", _skip_layernorm(1024, 384)),
        b("skiplayernorm 16x32", "normalization", "float32", _skip_layernorm(16, 32)),
        b("biasgelu 32x64", "elementwise", "float32", _bias_gelu(32, 64)),
        b("transpose 2x16x2x16", "data-movement", "float32", _transpose([2, 16, 2, 16], [0, 2, 1, 3])),
        b("gather 100x32 [32]", "data-movement", "float32", _gather(100, 32, 32)),
        b("matmul 32x32x64", "matmul", "float32", _matmul(32, 32, 64)),
        # Data movement.
        b("transpose 12x128x32", "data-movement", "float32", _transpose([1, 128, 12, 32], [0, 2, 1, 3])),
        b("transpose 8x128x12x32", "data-movement", "float32", _transpose([8, 128, 12, 32], [0, 2, 1, 3])),
        b("gather 30522x384 [128]", "data-movement", "float32", _gather(30522, 384, 128)),
        # int8.
        b("matmulinteger 1x384x384", "matmul", "int8", _matmul_integer(1, 384, 384)),
        b("matmulinteger 128x384x384", "matmul", "int8", _matmul_integer(128, 384, 384)),
        b("matmulinteger 128x384x1536", "matmul", "int8", _matmul_integer(128, 384, 1536)),
        b("matmulinteger 1024x384x1536", "matmul", "int8", _matmul_integer(1024, 384, 1536)),
        b("convinteger 1x32->64 56x56", "conv", "int8", _conv_integer(1, 32, 64, 56)),
        b("dynamicquantize 128x384", "quantization", "float32", _dynamic_quantize(128, 384)),
    ]


# --------------------------------------------------------------------------------------
# Features: what the estimate counts per node, read back through probe profiles
# --------------------------------------------------------------------------------------
@dataclass
class NodeFeatures:
    """What each node of a graph costs in the estimate's own terms.

    ``work`` (nodes × fitted dtype classes): MAC-equivalents (MACs + FLOPs/2);
    ``bytes`` (nodes × memory levels): bytes moved at each level; ``kernel``: the node's
    kernel group (``domain::op_type``); ``op_class``: its cost-model op class;
    ``dispatched``: 1 for a node the runtime dispatches (all but ``Constant``);
    ``units``: independent sub-problems a fused kernel loops over (batch × heads for
    attention, 0 elsewhere), each with its own small GEMMs; ``outputs`` and
    ``output_bytes``: the graph's outputs, which the runtime allocates and hands back on
    every call (large ones are fresh pages, zeroed by the kernel on first touch).
    """

    kernel: list[str]
    op_class: list[str]
    work: np.ndarray
    bytes: np.ndarray
    dispatched: np.ndarray
    units: np.ndarray = field(default_factory=lambda: np.zeros(0))
    output_bytes: float = 0.0
    outputs: int = 0

    def __post_init__(self) -> None:
        if len(self.units) != len(self.kernel):
            self.units = np.zeros(len(self.kernel))

    @property
    def light(self) -> np.ndarray:
        """Dispatched nodes too small to be split across threads: no arithmetic to speak of
        and at most ``LIGHT_BYTES`` moved (views, shape arithmetic on a few int64s)."""
        return ((self.dispatched > 0) & (self.work.sum(axis=1) <= LIGHT_WORK)
                & (self.bytes.sum(axis=1) <= LIGHT_BYTES))

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe form (lists)."""
        return {"kernel": self.kernel, "op_class": self.op_class, "work": self.work.tolist(),
                "bytes": self.bytes.tolist(), "dispatched": self.dispatched.tolist(),
                "units": self.units.tolist(), "output_bytes": self.output_bytes, "outputs": self.outputs}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> NodeFeatures:
        """Inverse of :meth:`to_dict`."""
        levels = len(data["bytes"][0]) if data["bytes"] else 0
        return cls(list(data["kernel"]), list(data["op_class"]),
                   np.asarray(data["work"], dtype=np.float64).reshape(-1, len(FITTED_DTYPES)),
                   np.asarray(data["bytes"], dtype=np.float64).reshape(-1, levels),
                   np.asarray(data["dispatched"], dtype=np.float64),
                   np.asarray(data.get("units", []), dtype=np.float64),
                   float(data.get("output_bytes", 0.0)), int(data.get("outputs", 0)))


# A node at or below these is "light": a single-threaded call, no thread-pool dispatch.
LIGHT_WORK = 64.0
LIGHT_BYTES = 1024.0
# Fused attention kernels loop over batch × heads small GEMMs.
_ATTENTION_OPS = {"Attention", "MultiHeadAttention", "QAttention"}


def _units(node: Any) -> float:
    if node.op_type not in _ATTENTION_OPS or not node.inputs or node.inputs[0] is None:
        return 0.0
    shape = node.inputs[0].shape
    heads = node.attributes.get("num_heads")
    if shape is None or heads is None or not isinstance(shape[0], int):
        return 0.0
    return float(shape[0] * heads.value)


def _probe_profile(template: HardwareProfile, *, dtype: str | None = None,
                   level: int | None = None) -> HardwareProfile:
    levels = [
        MemoryLevel(lv.name, lv.capacity_bytes, 1.0 if i == level else _BIG, 1.0)
        for i, lv in enumerate(template.memory_levels)
    ]
    peaks = {d: (1.0 if d == dtype else _BIG) for d in FITTED_DTYPES}
    return HardwareProfile(
        name="probe", description="feature probe", peak_macs_per_s=peaks, memory_levels=levels,
        energy_pj_per_mac={d: 1.0 for d in peaks}, static_power_w=0.0, op_overhead_s=0.0,
        supports=dict(template.supports),
    )


def node_features(model: Any, template: HardwareProfile, dims: Mapping[str, int] | None = None) -> NodeFeatures:
    """Read the estimate's per-node work through probe profiles with ``template``'s memory
    levels: one probe per dtype class (peak 1 MAC/s) and one per level (1 B/s), so every
    count is exactly what :func:`~greencc.cost.estimate.estimate_cost` uses."""
    from greencc.cost.estimate import estimate_cost

    def run(probe: HardwareProfile) -> Any:
        return estimate_cost(model, probe, dims=dims)

    columns = []
    first = None
    for dtype in FITTED_DTYPES:
        cost = run(_probe_profile(template, dtype=dtype))
        first = first or cost
        columns.append([node.latency_ms * 1e-3 for node in cost.nodes])
    work = np.asarray(columns, dtype=np.float64).T
    nbytes = np.asarray(
        [[node.latency_ms * 1e-3 for node in run(_probe_profile(template, level=i)).nodes]
         for i in range(len(template.memory_levels))], dtype=np.float64).T
    assert first is not None
    kernel = [f"{n.domain}::{n.op_type}" if n.domain not in ("", "ai.onnx") else n.op_type for n in first.nodes]
    dispatched = np.asarray([0.0 if n.op_type == "Constant" and not n.domain else 1.0 for n in first.nodes])
    # A probe's "infinitely fast" terms leave ~1e-30 s behind; round them away.
    work[work < 1e-6] = 0.0
    nbytes[nbytes < 1e-6] = 0.0
    graph = model.graph if hasattr(model, "graph") else model.ir.graph
    nodes = list(graph)
    units = np.asarray([_units(n) for n in nodes] if len(nodes) == len(kernel) else np.zeros(len(kernel)))
    try:
        outputs = with_static_inputs(_ir_of(model), resolve_dims_of(model, dims)).graph.outputs
    except UsageError:  # an unnamed dynamic dim: the outputs' size is unknown
        outputs = _ir_of(model).graph.outputs
    return NodeFeatures(kernel, [n.op_class for n in first.nodes], work, nbytes, dispatched, units,
                        float(sum(_value_bytes(v) for v in outputs)), len(outputs))


def _ir_of(model: Any) -> Any:
    return model.ir if hasattr(model, "ir") else model


def resolve_dims_of(model: Any, dims: Mapping[str, int] | None) -> dict[str, int]:
    """Every symbolic input dim of ``model`` bound: ``dims`` first, 1 for the rest."""
    from greencc.ir.shapes import symbolic_dims

    resolved = {name: 1 for name in symbolic_dims(_ir_of(model))}
    resolved.update({k: int(v) for k, v in (dims or {}).items() if k in resolved})
    return resolved


def _value_bytes(value: Any) -> int:
    shape = value.shape
    if shape is None or value.dtype is None or not all(isinstance(d, int) for d in shape):
        return 0
    try:
        return math.ceil(math.prod(shape) * value.dtype.bitwidth / 8)
    except TypeError:
        return 0


# --------------------------------------------------------------------------------------
# The kernel model and its fit
# --------------------------------------------------------------------------------------
@dataclass
class KernelModel:
    """The fitted latency model of one target on this machine, per fused kernel:

        τ = smax(Σ_dtype work / peak[dtype], Σ_level bytes / bandwidth[level])
        t = call_overhead + Σ_nodes τ₀·(τ/τ₀)^exponent[k] / efficiency[k]
                                    + base_overhead · overhead_ratio[k] + units · unit_cost[k]

    ``τ`` is the roofline time and ``smax(a, b) = (a⁴ + b⁴)^¼`` a smooth maximum (at most
    19% above the hard one, where both terms are equal), which also lets the fit see both
    terms. ``peak_macs_per_s`` (MAC/s per dtype class) is the effective throughput of the
    reference kernels (MatMul, MatMulInteger); ``bandwidth_bytes_per_s`` (B/s) per memory
    level. Per kernel group ``k`` (``domain::op_type``): ``efficiency``, the fraction of
    the roofline it reaches at ``τ₀`` = 1 µs of roofline time; ``exponent`` (≤ 1), how
    its time grows with size (below 1: small instances are relatively slow);
    ``overhead_ratio``, its dispatch cost relative to the base, which is
    ``light_overhead_s`` for a light node (tiny tensors: one single-threaded call) and
    ``op_overhead_s`` otherwise; ``unit_cost_s``, the cost per independent sub-problem of
    a fused attention (batch × heads). Groups without a benchmark take their op class's
    geometric means (``class_*``), else 1. Once per call: ``run_overhead_s``, plus
    ``output_overhead_s`` per graph output and its bytes over
    ``output_bandwidth_bytes_per_s`` (fresh output buffers are page-faulted in).
    """

    peak_macs_per_s: dict[str, float]
    bandwidth_bytes_per_s: list[float]
    efficiency: dict[str, float]
    exponent: dict[str, float]
    overhead_ratio: dict[str, float]
    op_overhead_s: float
    light_overhead_s: float
    run_overhead_s: float
    unit_cost_s: dict[str, float] = field(default_factory=dict)
    output_overhead_s: float = 0.0
    output_bandwidth_bytes_per_s: float = 1e30
    class_efficiency: dict[str, float] = field(default_factory=dict)
    class_exponent: dict[str, float] = field(default_factory=dict)

    def node_seconds(self, features: NodeFeatures) -> np.ndarray:
        """Predicted seconds per node."""
        inverse_peak = np.array([1 / self.peak_macs_per_s[d] for d in FITTED_DTYPES])
        pairs = list(zip(features.kernel, features.op_class, strict=True))
        efficiency = np.array([self.efficiency.get(k, self.class_efficiency.get(c, 1.0)) for k, c in pairs])
        exponent = np.array([self.exponent.get(k, self.class_exponent.get(c, 1.0)) for k, c in pairs])
        ratio = np.array([self.overhead_ratio.get(k, 1.0) for k in features.kernel])
        unit_cost = np.array([self.unit_cost_s.get(k, 0.0) for k in features.kernel])
        base = np.where(features.light, self.light_overhead_s, self.op_overhead_s)
        compute = features.work @ inverse_peak
        memory = features.bytes @ (1 / np.asarray(self.bandwidth_bytes_per_s))
        scaled = _scale(smooth_max(compute, memory), exponent)
        per_node = scaled / efficiency + base * ratio + features.units * unit_cost
        return per_node * features.dispatched

    def call_overhead_s(self, features: NodeFeatures) -> float:
        """The fixed cost of one call: the run, and allocating and returning its outputs."""
        return (self.run_overhead_s + self.output_overhead_s * features.outputs
                + features.output_bytes / self.output_bandwidth_bytes_per_s)

    def predict_s(self, features: NodeFeatures) -> float:
        """Predicted seconds per inference."""
        return float(self.node_seconds(features).sum() + self.call_overhead_s(features))

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe dict."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> KernelModel:
        """Inverse of :meth:`to_dict`."""
        return cls(**{k: data[k] for k in cls.__dataclass_fields__ if k in data})


SMOOTH_MAX_POWER = 4.0
# The kernels that define each fitted dtype class's peak (efficiency 1, exponent 1).
REFERENCE_KERNELS = ("MatMul", "MatMulInteger")
# The roofline time at which a kernel's efficiency is quoted (s).
TAU0_S = 1e-6


def smooth_max(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """``(a⁴ + b⁴)^¼``: the roofline's max, smoothed (see :class:`KernelModel`)."""
    p = SMOOTH_MAX_POWER
    top = np.maximum(np.maximum(a, b), 1e-300)
    return top * ((a / top) ** p + (b / top) ** p) ** (1 / p)


def _scale(tau: np.ndarray, exponent: np.ndarray) -> np.ndarray:
    return TAU0_S * np.power(np.maximum(tau, 0.0) / TAU0_S, exponent)


def fit_kernel_model(
    features: Sequence[NodeFeatures],
    measured_s: Sequence[float],
    levels: int,
    *,
    iterations: int = 200,
    huber: float = 0.2,
    prior: float = 0.1,
) -> tuple[KernelModel, np.ndarray]:
    """Least-squares fit of :class:`KernelModel` to measured seconds, in log space.

    Minimises Σ ρ(log predicted − log measured) over the log of every parameter
    (positivity for free; relative error, so a 5 µs op weighs as much as a 5 ms one) by
    Levenberg–Marquardt with a Huber ρ (``huber`` in log units: one odd benchmark cannot
    drag the rest), then a per-parameter grid search over the kernel groups (a kernel deep
    in one regime has no gradient for the others) and a second descent. The reference
    kernels (MatMul, MatMulInteger) have efficiency and exponent 1 by definition; every
    other group's log-efficiency, log-overhead ratio and log-exponent carry a weak ridge
    ``prior`` towards the shared values, so what the data cannot separate stays shared.
    Returns the model and the log residuals.
    """
    table = _FeatureTable(features)
    groups = table.groups
    n_d, n_l, n_g = len(FITTED_DTYPES), levels, len(groups)
    # Start: 50 GMAC/s, 20 GB/s, full efficiency, linear, shared overheads 1 µs / 0.5 µs / 5 µs.
    theta = np.concatenate([
        np.log(np.full(n_d, 1 / 5e10)), np.log(np.full(n_l, 1 / 2e10)),
        np.zeros(n_g), np.zeros(n_g), np.zeros(n_g), np.log(np.full(n_g, 1e-6)), np.log([5e-7, 1 / 1e10]),
        np.log([1e-6, 5e-7, 5e-6]),
    ])
    start = n_d + n_l
    slices = {
        "peak": slice(0, n_d), "bw": slice(n_d, start),
        "ineff": slice(start, start + n_g), "oh": slice(start + n_g, start + 2 * n_g),
        "exp": slice(start + 2 * n_g, start + 3 * n_g), "unit": slice(start + 3 * n_g, start + 4 * n_g),
        "out": slice(start + 4 * n_g, start + 4 * n_g + 2),
    }
    # Bounds keep a term no benchmark exercises finite (a peak nothing needs would drift to
    # infinity): 1 MMAC/s-10 PMAC/s, 1 MB/s-100 TB/s, efficiency 1e-4-20, exponent 0.2-1
    # (an exponent above 1 would blow up when a model's kernel is larger than any benchmark).
    low = np.concatenate([np.log(np.full(n_d, 1e-16)), np.log(np.full(n_l, 1e-14)), np.full(n_g, -3.0),
                          np.full(n_g, -6.0), np.full(n_g, math.log(0.2)), np.log(np.full(n_g, 1e-12)),
                          np.log([1e-10, 1e-14]), np.log([1e-9, 1e-10, 1e-9])])
    high = np.concatenate([np.log(np.full(n_d, 1e-6)), np.log(np.full(n_l, 1e-6)), np.full(n_g, 9.0),
                           np.full(n_g, 6.0), np.full(n_g, 0.0), np.log(np.full(n_g, 1e-3)),
                           np.log([1e-3, 1e-8]), np.log([1e-2, 1e-2, 1e-1])])
    # The reference kernel of each dtype class defines its peak: efficiency and exponent 1.
    pinned = [slices[name].start + groups.index(g) for g in REFERENCE_KERNELS if g in groups
              for name in ("ineff", "exp")]
    # Groups that never loop over sub-problems have no unit cost to fit: hold it at the floor.
    unitless = [slices["unit"].start + i for i in range(n_g) if not table.group_units[i]]
    theta[unitless] = low[unitless]
    target = np.log(np.asarray(measured_s, dtype=np.float64))
    n_data, n_params = len(features), len(theta)
    regularised = np.r_[slices["ineff"].start:slices["exp"].stop]

    def residuals(t: np.ndarray) -> np.ndarray:
        t = np.clip(t, low, high)
        t[pinned] = 0.0
        t[unitless] = low[unitless]
        predicted = table.predict_log(t, slices)
        return np.concatenate([predicted - target, prior * t[regularised]])

    def weighted_cost(r: np.ndarray) -> float:
        data = np.abs(r[:n_data])
        rho = np.where(data <= huber, data**2, 2 * huber * data - huber**2)
        return float(rho.sum() + np.sum(r[n_data:] ** 2))

    def levenberg_marquardt(theta: np.ndarray) -> np.ndarray:
        damping = 1e-2
        r = residuals(theta)
        for _ in range(iterations):
            data = r[:n_data]
            weights = np.concatenate([
                np.where(np.abs(data) <= huber, 1.0, huber / np.maximum(np.abs(data), 1e-12)),
                np.ones(len(r) - n_data),
            ])
            cost = weighted_cost(r)
            jac = np.empty((len(r), n_params))
            for i in range(n_params):
                shifted = theta.copy()
                shifted[i] += 1e-6
                jac[:, i] = (residuals(shifted) - r) / 1e-6
            normal = (jac * weights[:, None]).T @ jac
            gradient = (jac * weights[:, None]).T @ r
            step = np.zeros(n_params)
            improved = False
            while damping < 1e10:
                lhs = normal + damping * (np.diag(np.diag(normal)) + 1e-9 * np.eye(n_params))
                try:
                    step = -np.linalg.solve(lhs, gradient)
                except np.linalg.LinAlgError:
                    damping *= 10
                    continue
                candidate = np.clip(theta + step, low, high)
                r_new = residuals(candidate)
                if weighted_cost(r_new) < cost:
                    theta, r = candidate, r_new
                    damping = max(damping / 3, 1e-12)
                    improved = True
                    break
                damping *= 10
            if not improved or float(np.max(np.abs(step))) < 1e-8:
                break
        return theta

    def grid_search(theta: np.ndarray) -> np.ndarray:
        grids = {"ineff": np.linspace(-1.0, 7.0, 33), "oh": np.linspace(-3.0, 3.0, 25),
                 "exp": np.log(np.linspace(0.3, 1.0, 15)), "unit": np.log(np.logspace(-8, -4, 25))}
        for name, grid in grids.items():
            for i in range(n_g):
                index = slices[name].start + i
                if index in pinned or index in unitless:
                    continue
                current = weighted_cost(residuals(theta))
                trials = []
                for value in grid:
                    trial = theta.copy()
                    trial[index] = value
                    trials.append(weighted_cost(residuals(trial)))
                best = int(np.argmin(trials))
                if trials[best] < current:
                    theta = theta.copy()
                    theta[index] = grid[best]
        return theta

    theta = levenberg_marquardt(theta)
    theta = levenberg_marquardt(grid_search(theta))
    theta[pinned] = 0.0
    values = np.exp(theta)
    op_oh, light_oh, run_oh = (float(v) for v in values[-3:])
    efficiency = {g: float(1 / x) for g, x in zip(groups, values[slices["ineff"]], strict=True)}
    exponent = {g: float(x) for g, x in zip(groups, values[slices["exp"]], strict=True)}
    overhead = {g: float(x) for g, x in zip(groups, values[slices["oh"]], strict=True)}
    unit_cost = {g: float(x) for i, (g, x) in enumerate(zip(groups, values[slices["unit"]], strict=True))
                 if table.group_units[i]}
    output_overhead, inverse_output_bandwidth = (float(v) for v in values[slices["out"]])
    by_class: dict[str, set[str]] = {}
    for f in features:
        for kernel, op_class in zip(f.kernel, f.op_class, strict=True):
            by_class.setdefault(op_class, set()).add(kernel)

    def class_mean(table_: dict[str, float]) -> dict[str, float]:
        return {c: float(math.exp(np.mean([math.log(table_[k]) for k in ks]))) for c, ks in by_class.items()}

    model = KernelModel(
        peak_macs_per_s={d: float(1 / v) for d, v in zip(FITTED_DTYPES, values[slices["peak"]], strict=True)},
        bandwidth_bytes_per_s=[float(1 / v) for v in values[slices["bw"]]],
        efficiency=efficiency, exponent=exponent, overhead_ratio=overhead, op_overhead_s=op_oh,
        light_overhead_s=light_oh, run_overhead_s=run_oh, unit_cost_s=unit_cost,
        output_overhead_s=output_overhead, output_bandwidth_bytes_per_s=1 / inverse_output_bandwidth,
        class_efficiency=class_mean(efficiency), class_exponent=class_mean(exponent),
    )
    return model, residuals(theta)[:n_data]


class _FeatureTable:
    """Every benchmark's nodes in one set of arrays, so a prediction is a few numpy ops."""

    def __init__(self, features: Sequence[NodeFeatures]) -> None:
        self.groups = sorted({k for f in features for k in f.kernel})
        index = {g: i for i, g in enumerate(self.groups)}
        self.bench = np.concatenate([np.full(len(f.kernel), i) for i, f in enumerate(features)])
        self.group = np.concatenate([[index[k] for k in f.kernel] for f in features]).astype(int)
        self.work = np.concatenate([f.work for f in features])
        self.bytes = np.concatenate([f.bytes for f in features])
        self.light = np.concatenate([f.light for f in features])
        self.dispatched = np.concatenate([f.dispatched for f in features])
        self.units = np.concatenate([f.units for f in features])
        self.outputs = np.asarray([f.outputs for f in features], dtype=np.float64)
        self.output_bytes = np.asarray([f.output_bytes for f in features], dtype=np.float64)
        self.count = len(features)
        self.group_units = [bool(np.any(self.units[self.group == i] > 0)) for i in range(len(self.groups))]

    def predict_log(self, theta: np.ndarray, slices: Mapping[str, slice]) -> np.ndarray:
        values = np.exp(theta)
        compute = self.work @ values[slices["peak"]]
        memory = self.bytes @ values[slices["bw"]]
        scaled = _scale(smooth_max(compute, memory), values[slices["exp"]][self.group])
        op_oh, light_oh, run_oh = values[-3:]
        overhead = np.where(self.light, light_oh, op_oh) * values[slices["oh"]][self.group]
        units = self.units * values[slices["unit"]][self.group]
        per_node = (scaled * values[slices["ineff"]][self.group] + overhead + units) * self.dispatched
        output_overhead, inverse_output_bandwidth = values[slices["out"]]
        calls = run_oh + output_overhead * self.outputs + self.output_bytes * inverse_output_bandwidth
        totals = np.bincount(self.bench, weights=per_node, minlength=self.count) + calls
        return np.log(np.maximum(totals, 1e-12))


# --------------------------------------------------------------------------------------
# The calibrated profile's shape: this machine's caches
# --------------------------------------------------------------------------------------
def _cache_sizes() -> dict[int, tuple[int, bool]]:
    """Level -> (bytes per instance, shared by all cores) from sysfs; empty when unknown."""
    sizes: dict[int, tuple[int, bool]] = {}
    base = Path("/sys/devices/system/cpu/cpu0/cache")
    for index in sorted(base.glob("index*")) if base.is_dir() else []:
        try:
            kind = (index / "type").read_text().strip()
            if kind == "Instruction":
                continue
            level = int((index / "level").read_text())
            text = (index / "size").read_text().strip().upper()
            shared = (index / "shared_cpu_list").read_text().strip()
        except (OSError, ValueError):
            continue
        factor = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}.get(text[-1:], 1)
        size = int(text.rstrip("KMG")) * factor
        sizes[level] = (size, "-" in shared or "," in shared)
    return sizes


def memory_levels_here(threads: int, template: HardwareProfile) -> list[MemoryLevel]:
    """This machine's memory hierarchy seen by ``threads`` cores: private caches up to L2
    (summed over the threads), the shared last-level cache, and DRAM. Bandwidths start
    from the template's and are fitted; energies per byte are the template's."""
    sizes = _cache_sizes()
    pj = {lv.name.lower(): lv.energy_pj_per_byte for lv in template.memory_levels}
    levels: list[MemoryLevel] = []
    private = sizes.get(2) or sizes.get(1)
    if private:
        size, shared = private
        capacity = size if shared else size * threads
        levels.append(MemoryLevel("L2", capacity, 1e11, pj.get("l2", 4.0)))
    last = sizes.get(3)
    if last and (not levels or last[0] > levels[-1].capacity_bytes):
        levels.append(MemoryLevel("L3", last[0], 5e10, pj.get("l3", 8.0)))
    if not levels:  # no sysfs (not Linux): one 1 MiB-per-thread cache level as a stand-in
        levels.append(MemoryLevel("cache", (1 << 20) * threads, 1e11, pj.get("l2", 4.0)))
    try:
        dram_bytes = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        dram_bytes = 16 << 30
    dram_bytes = max(int(dram_bytes), levels[-1].capacity_bytes * 2)
    levels.append(MemoryLevel("DRAM", dram_bytes, 2e10, template.memory_levels[-1].energy_pj_per_byte))
    return levels


def initial_profile(target_name: str, threads: int, template: HardwareProfile) -> HardwareProfile:
    """The calibrated profile's starting point: this machine's memory levels, the
    template's energy terms with static power scaled to ``threads`` cores."""
    host_cores = HOST_PROFILE_CORES.get(template.name)
    static = template.static_power_w * threads / host_cores if host_cores else template.static_power_w
    return HardwareProfile(
        name=calibrated_profile_name(target_name, threads),
        description=f"{target_name} with {threads} thread(s) on this machine, calibrated by greencc cost calibrate",
        peak_macs_per_s={d: 5e10 if d == "float32" else 1e11 for d in FITTED_DTYPES},
        memory_levels=memory_levels_here(threads, template),
        energy_pj_per_mac={d: template.energy_pj_per_mac.get(d, template.energy_pj_per_mac["float32"])
                           for d in FITTED_DTYPES},
        static_power_w=static,
        op_overhead_s=1e-6,
        supports=dict(template.supports),
        sources=[],
        calibrated=False,
        calibration_note="not yet fitted",
    )



# --------------------------------------------------------------------------------------
# Running the calibration
# --------------------------------------------------------------------------------------
class BackgroundLoad:
    """How busy the machine was with *other* work while a block ran (Linux ``/proc/stat``).

    ``other_cores``: CPU time used by other processes per second of wall time (cores);
    ``steal_cores``: time the hypervisor gave to other guests. Both are ``None`` where
    ``/proc/stat`` is unreadable. Timings taken while either is large are unreliable: a
    calibration or validation records them and warns.
    """

    def __init__(self) -> None:
        self.other_cores: float | None = None
        self.steal_cores: float | None = None
        self._start: tuple[float, float, float, float] | None = None

    @staticmethod
    def _sample() -> tuple[float, float, float, float] | None:
        try:
            fields = Path("/proc/stat").read_text().splitlines()[0].split()[1:]
            ticks = os.sysconf("SC_CLK_TCK")
        except (OSError, ValueError, IndexError):
            return None
        values = [int(v) for v in fields]
        busy = sum(values[i] for i in (0, 1, 2, 5, 6) if i < len(values))  # user nice system irq softirq
        steal = values[7] if len(values) > 7 else 0
        own = os.times()
        return time.perf_counter(), busy / ticks, steal / ticks, own.user + own.system

    def __enter__(self) -> BackgroundLoad:
        self._start = self._sample()
        return self

    def __exit__(self, *exc: object) -> None:
        end = self._sample()
        if self._start is None or end is None or end[0] <= self._start[0]:
            return
        wall = end[0] - self._start[0]
        own = end[3] - self._start[3]
        self.other_cores = max((end[1] - self._start[1]) - own, 0.0) / wall
        self.steal_cores = max(end[2] - self._start[2], 0.0) / wall

    @property
    def noisy(self) -> bool:
        """True when others used more than a fifth of a core on average."""
        return (self.other_cores or 0.0) + (self.steal_cores or 0.0) > 0.2

    def to_dict(self) -> dict[str, Any]:
        """``other_cores``, ``steal_cores`` and ``noisy``."""
        return {"other_cores": self.other_cores, "steal_cores": self.steal_cores, "noisy": self.noisy}


@dataclass
class BenchmarkResult:
    """A micro-benchmark's measured median (ms) and, after the fit, its prediction (ms)."""

    name: str
    op_class: str
    dtype: str
    measured_ms: float
    predicted_ms: float = 0.0
    nodes: int = 0

    @property
    def error_pct(self) -> float:
        """(predicted − measured) / measured, in percent."""
        return 100.0 * (self.predicted_ms - self.measured_ms) / self.measured_ms


def calibrate(
    target: Any = "ort-cpu",
    *,
    threads: int | None = None,
    benchmarks: Sequence[MicroBenchmark] | None = None,
    min_time_s: float = 0.25,
    rounds: int = 2,
    progress: Callable[[str, int, int], None] | None = None,
) -> Calibration:
    """Run the micro-benchmarks on ``target`` and fit its calibrated profile (not saved).

    ``threads`` defaults to the target's own default (this machine's core count for
    ort-cpu). Every benchmark is timed in each of ``rounds`` interleaved rounds for at
    least ``min_time_s`` seconds (median of calls after a warm-up); the lowest round median
    counts, so a transient slowdown from another tenant does not. ``progress(name, done,
    total)`` is called before each step.
    """
    from greencc import __version__
    from greencc.frontend.onnx_file import load
    from greencc.target import resolve_target
    from greencc.verify.feeds import random_feeds

    options = {"threads": threads} if threads is not None else {}
    resolved = resolve_target(target, **options)
    resolved.require_available()
    if isinstance(rounds, bool) or not isinstance(rounds, int) or rounds < 1:
        raise UsageError(f"rounds={rounds!r} must be a positive integer")
    threads_used = int(resolved.options.get("threads") or os.cpu_count() or 1)
    template = HardwareProfile.named(type(resolved).profile_name)
    start = initial_profile(resolved.name, threads_used, template)
    suite = list(benchmarks if benchmarks is not None else default_benchmarks())
    if not suite:
        raise UsageError("calibration needs at least one micro-benchmark")

    steps = len(suite) * (1 + rounds)
    prepared = []
    features: list[NodeFeatures] = []
    for done, bench in enumerate(suite):
        if progress is not None:
            progress(f"preparing {bench.name}", done, steps)
        model = load(bench.build())
        compiled = resolved.lower(model)
        prepared.append((compiled, compiled.check_feeds(random_feeds(model, seed=0))))
        features.append(node_features(target_graph(model), start))
    medians = np.full((rounds, len(suite)), np.inf)
    with BackgroundLoad() as load_meter:
        for round_index in range(rounds):
            for i, (bench, (compiled, feeds)) in enumerate(zip(suite, prepared, strict=True)):
                if progress is not None:
                    progress(bench.name, len(suite) * (1 + round_index) + i, steps)
                stats = compiled.benchmark(feeds, warmup=3, repeats=10, min_time_s=min_time_s)
                medians[round_index, i] = stats.median_ms
    results = [
        BenchmarkResult(bench.name, bench.op_class, bench.dtype, float(medians[:, i].min()),
                        nodes=len(compiled.model.graph))
        for i, (bench, (compiled, _)) in enumerate(zip(suite, prepared, strict=True))
    ]
    if progress is not None:
        progress("fitting", steps, steps)
    calibration = fit_calibration(
        resolved.name, threads_used, start, template, results, features, min_time_s=min_time_s,
        greencc_version=__version__,
    )
    calibration.fit["rounds"] = rounds
    calibration.fit["round_spread_pct"] = float(np.median(100 * (medians.max(0) / medians.min(0) - 1)))
    calibration.fit["background_load"] = load_meter.to_dict()
    calibration.fit["features"] = [f.to_dict() for f in features]
    return calibration


def fit_calibration(
    target: str,
    threads: int,
    start: HardwareProfile,
    template: HardwareProfile,
    results: Sequence[BenchmarkResult],
    features: Sequence[NodeFeatures],
    *,
    min_time_s: float = 0.0,
    greencc_version: str = "",
) -> Calibration:
    """Fit the kernel model to measured ``results`` and build the calibrated profile."""
    kernel_model, _ = fit_kernel_model(features, [r.measured_ms * 1e-3 for r in results],
                                       len(start.memory_levels))
    for result, feature in zip(results, features, strict=True):
        result.predicted_ms = kernel_model.predict_s(feature) * 1e3
    errors = np.abs([r.error_pct for r in results])
    fit = {
        "kernel_model": kernel_model.to_dict(),
        "benchmarks": [{**asdict(r), "error_pct": r.error_pct} for r in results],
        "median_abs_pct": float(np.median(errors)),
        "p90_abs_pct": float(np.percentile(errors, 90)),
        "max_abs_pct": float(np.max(errors)),
        "rms_log_error": float(np.sqrt(np.mean(np.log([r.predicted_ms / r.measured_ms for r in results]) ** 2))),
        "min_time_s": min_time_s,
    }
    machine = machine_info()
    created = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
    profile = _fitted_profile(start, kernel_model, template, machine, created, threads, fit)
    return Calibration(profile=profile, target=target, threads=threads, machine=machine,
                       created=created, run_overhead_s=kernel_model.run_overhead_s, fit=fit,
                       greencc_version=greencc_version)


def _fitted_profile(start: HardwareProfile, model: KernelModel, template: HardwareProfile,
                    machine: Mapping[str, Any], created: str, threads: int,
                    fit: Mapping[str, Any]) -> HardwareProfile:
    levels = [MemoryLevel(lv.name, lv.capacity_bytes, bw, lv.energy_pj_per_byte)
              for lv, bw in zip(start.memory_levels, model.bandwidth_bytes_per_s, strict=True)]
    note = (
        f"latency terms calibrated on {machine['cpu']} ({machine['cores']} logical cores), "
        f"{threads} thread(s), {created}: {len(fit['benchmarks'])} micro-benchmarks, fit error "
        f"median {fit['median_abs_pct']:.1f}% / p90 {fit['p90_abs_pct']:.1f}%; peak = MatMul's "
        "effective throughput; per-kernel efficiencies and the per-inference overhead "
        f"({model.run_overhead_s * 1e6:.1f} us) are in the .calibration.json record; "
        f"{ENERGY_UNCALIBRATED_MARK}: pJ/MAC and pJ/byte are {template.name}'s, static power "
        f"{template.name}'s scaled to {threads} of {HOST_PROFILE_CORES.get(template.name, '?')} cores "
        "(no energy meter was read)"
    )
    sources = [
        "greencc cost calibrate: least-squares fit (log space, Huber) of the per-kernel roofline "
        "to measured micro-benchmark medians; see the .calibration.json record",
        f"memory level capacities: this machine's caches (sysfs) for {threads} thread(s), DRAM = physical memory",
        f"energy terms from profile {template.name} (its sources apply); not measured here",
    ]
    return HardwareProfile(
        name=start.name,
        description=start.description,
        peak_macs_per_s={d: float(v) for d, v in model.peak_macs_per_s.items()},
        memory_levels=levels,
        energy_pj_per_mac=dict(start.energy_pj_per_mac),
        static_power_w=start.static_power_w,
        op_overhead_s=model.op_overhead_s,
        supports=dict(start.supports),
        sources=sources,
        calibrated=True,
        calibration_note=note,
    )


# --------------------------------------------------------------------------------------
# Prediction per fused kernel
# --------------------------------------------------------------------------------------
def target_graph(model: Any, dims: Mapping[str, int] | None = None, *, seed: int = 0) -> Any:
    """The graph ONNX Runtime actually runs for ``model``, with every tensor's shape at ``dims``.

    ONNX Runtime optimises the model as the target gets it (symbolic dims kept, so shape
    computations stay in the graph as they do at run time) at the ``extended`` level: its
    fusions, without the CPU-specific NCHWc layout rewrite that ``all`` adds and the cost
    model has no ops for. The optimised graph is then run once on random inputs at
    ``dims`` with every intermediate tensor as an output, and each value gets the static
    shape and dtype observed, so contrib ops without shape inference are sized too.
    """
    import onnx_ir as ir
    import onnxruntime as ort

    from greencc.driver import as_model, resolve_dims
    from greencc.frontend.onnx_file import load
    from greencc.ir.io import save_model
    from greencc.verify.feeds import random_feeds

    model = as_model(model)
    dims = resolve_dims(model, dims)
    with tempfile.TemporaryDirectory(prefix="greencc-fused-") as tmp:
        source = save_model(model.ir, Path(tmp) / "model.onnx")
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
        options.optimized_model_filepath = str(Path(tmp) / "fused.onnx")
        options.log_severity_level = 4
        ort.InferenceSession(str(source), options, providers=["CPUExecutionProvider"])
        proto = onnx.load(str(Path(tmp) / "fused.onnx"))
    fused = load(proto)
    observed = _observed_shapes(proto, random_feeds(model, seed=seed, dims=dims))
    for node in fused.graph:
        for value in node.outputs:
            shape = observed.get(value.name)
            if shape is not None:
                value.shape = ir.Shape(list(shape[0]))
                value.dtype = ir.DataType.from_numpy(shape[1])
    return fused


def _observed_shapes(proto: onnx.ModelProto, feeds: Mapping[str, np.ndarray]) -> dict[str, tuple[tuple[int, ...], np.dtype]]:
    import onnxruntime as ort

    probe = onnx.ModelProto()
    probe.CopyFrom(proto)
    existing = {o.name for o in probe.graph.output}
    for node in probe.graph.node:
        for name in node.output:
            if name and name not in existing:
                probe.graph.output.append(onnx.ValueInfoProto(name=name))
                existing.add(name)
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    options.log_severity_level = 4
    try:
        session = ort.InferenceSession(probe.SerializeToString(), options, providers=["CPUExecutionProvider"])
        names = [o.name for o in session.get_outputs()]
        arrays = session.run(names, dict(feeds))
    except Exception as exc:  # an exotic graph: fall back to shape inference alone
        log.info("could not observe the fused graph's shapes: %s", exc)
        return {}
    return {name: (tuple(a.shape), a.dtype) for name, a in zip(names, arrays, strict=True)
            if isinstance(a, np.ndarray)}


@dataclass
class Prediction:
    """A latency prediction (ms per inference) and how it was made."""

    latency_ms: float
    method: str
    nodes: int
    kernels: int

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe dict."""
        return asdict(self)


def predict_latency(model: Any, calibration: Calibration | HardwareProfile | str,
                    dims: Mapping[str, int] | None = None) -> Prediction:
    """Predicted latency of ``model`` per inference on the calibrated target.

    With a :class:`Calibration`: its kernel model over :func:`target_graph` (what ONNX
    Runtime runs). With a plain profile: :func:`~greencc.cost.estimate.estimate_cost`
    over the same fused graph (what the profile alone can say).
    """
    from greencc.cost.estimate import estimate_cost
    from greencc.driver import as_model, resolve_dims

    model = as_model(model)
    dims = resolve_dims(model, dims)
    fused = target_graph(model, dims)
    if isinstance(calibration, Calibration):
        kernel_model = KernelModel.from_dict(calibration.fit["kernel_model"])
        features = node_features(fused, calibration.profile, dims)
        return Prediction(kernel_model.predict_s(features) * 1e3,
                          f"model:kernels({calibration.profile.name}, fused by onnxruntime)",
                          len(model.graph), len(fused.graph))
    cost = estimate_cost(fused, calibration, dims=dims)
    return Prediction(cost.latency_ms, f"model:cost({cost.profile}, fused by onnxruntime)",
                      len(model.graph), len(fused.graph))


def _write_json_atomic(path: Path, data: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, staging = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        os.chmod(staging, 0o644)
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            json.dump(data, handle, indent=2)
            handle.write("\n")
        os.replace(staging, path)
    except BaseException:
        Path(staging).unlink(missing_ok=True)
        raise


__all__ = [
    "BenchmarkResult", "Calibration", "KernelModel", "MicroBenchmark", "NodeFeatures", "Prediction",
    "cache_dir", "calibrate", "calibrated_profile_name", "default_benchmarks", "find_calibration",
    "find_calibrated_profile", "fit_calibration", "fit_kernel_model", "machine_info",
    "node_features", "predict_latency", "profiles_dir", "target_graph",
    "ENERGY_UNCALIBRATED_MARK", "CALIBRATION_SCHEMA",
]
