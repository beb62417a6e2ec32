"""The int8 systolic-array accelerator's functional simulator (numpy): bit-exact results
and counted work — cycles, MACs and bytes at each memory level — for each call.

One primitive does the arithmetic: a weight-stationary tiled GEMM, int8/uint8 A [M, K]
times int8/uint8 W [K, N] with zero points, accumulated in int32, then an epilogue on the
vector unit (int32 out; float out = acc · scale + bias; or requantized, with an optional
Relu). Conv is im2col onto it. The vector unit also runs QuantizeLinear,
DequantizeLinear and DynamicQuantizeLinear (ONNX semantics, round half to even).

Timing model (per GEMM call, stated so it can be argued with):
- the array holds a ``kr × nc`` weight tile (kr ≤ rows, nc ≤ cols); activation rows
  stream through it, one per cycle. A tile costs ``max(mc, kr)`` cycles (stream ``mc``
  rows; the next tile's weights load meanwhile, double-buffered, so only a longer load
  shows) plus ``kr + nc - 1`` cycles of pipeline fill and drain; the first weight load
  (``kr`` cycles) is not hidden;
- int32 partial sums stay in the accumulator SRAM across K tiles; when ``M`` rows of
  them do not fit, ``M`` is split into chunks and the weights are streamed again per chunk;
- the epilogue runs on the vector unit at ``vector_lanes`` elements per cycle after the
  array (not overlapped);
- DRAM transfers overlap computation (double-buffered SRAM): a call takes
  ``max(array + epilogue cycles, DRAM bytes / bandwidth × clock)``. Each call reads its
  inputs and weights from DRAM and writes its output there (no residency across calls);
  inputs larger than their SRAM are fetched again for each pass that needs them.
Energy = MACs × pJ/MAC + Σ bytes × pJ/byte per level (dynamic) + static power × time.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from greencc.targets.asic.spec import LEVELS, SystolicArraySpec

_INT_RANGES = {np.dtype(np.uint8): (0, 255), np.dtype(np.int8): (-128, 127)}


@dataclass
class CallCounters:
    """The work of one accelerator call: ``node`` (the graph node it runs), ``kind``
    (``gemm``, ``conv``, ``quantize``...), ``shape`` (M, K, N for GEMMs; elements for
    vector ops), ``macs``, ``cycles``, ``bytes`` moved per memory level."""

    node: str
    kind: str
    shape: tuple[int, ...]
    macs: int = 0
    cycles: int = 0
    bytes: dict[str, int] = field(default_factory=lambda: dict.fromkeys(LEVELS, 0))

    def dynamic_pj(self, spec: SystolicArraySpec) -> float:
        """MACs × pJ/MAC + bytes × pJ/byte at each level (pJ)."""
        return self.macs * spec.energy_pj_per_mac + sum(
            count * spec.energy_pj_per_byte[level] for level, count in self.bytes.items())


@dataclass
class SimulationSummary:
    """Totals of one run (one inference on the feeds given): ``cycles``, ``simulated_ms``
    (cycles at the clock), ``macs``, ``bytes_by_level``, ``dynamic_mj`` + ``static_mj``
    (static power × simulated time) = ``energy_mj``, ``utilization`` (MACs / (cycles ×
    array cells)) and the per-call counters. Accelerator work only: host ops are not in it."""

    profile: str
    clock_hz: float
    array: str  # "rows x cols", e.g. "128x128"
    cells: int  # rows × cols MACs
    cycles: int
    macs: int
    bytes_by_level: dict[str, int]
    dynamic_mj: float
    static_mj: float
    calls: list[CallCounters]

    @property
    def simulated_ms(self) -> float:
        """Accelerator time at the clock (ms)."""
        return self.cycles / self.clock_hz * 1e3

    @property
    def energy_mj(self) -> float:
        """Dynamic + static accelerator energy (mJ)."""
        return self.dynamic_mj + self.static_mj

    @property
    def utilization(self) -> float:
        """MACs done / MAC slots available over the run."""
        return self.macs / (self.cycles * self.cells) if self.cycles else 0.0

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready figures (units in the key names) and the per-call list."""
        return {
            "method": "simulated",
            "label": f"simulated: greencc asic-int8 functional simulator ({self.profile}, "
                     f"{self.array} array at {self.clock_hz / 1e6:g} MHz; accelerator calls only, "
                     "host ops excluded; uncalibrated)",
            "profile": self.profile, "array": self.array, "clock_hz": self.clock_hz,
            "cycles": self.cycles, "simulated_ms": self.simulated_ms, "macs": self.macs,
            "utilization": self.utilization, "bytes_by_level": dict(self.bytes_by_level),
            "dynamic_mj": self.dynamic_mj, "static_mj": self.static_mj, "energy_mj": self.energy_mj,
            "calls": [{"node": c.node, "kind": c.kind, "shape": list(c.shape), "macs": c.macs,
                       "cycles": c.cycles, "bytes": dict(c.bytes)} for c in self.calls],
        }


@dataclass(frozen=True)
class Epilogue:
    """What the vector unit does with the int32 accumulators of a GEMM.

    ``out``: ``"int32"`` (as is), ``"float"`` (``float32(acc) · multiplier + bias``) or
    ``"quant"`` (that, then Relu when ``relu``, then ``saturate(round_half_even(y /
    out_scale) + out_zero_point)`` in ``out_zero_point``'s dtype). ``multiplier`` is the
    float32 per-column (or scalar) ``a_scale · w_scale``; ``bias`` float32 per column."""

    out: str = "int32"
    multiplier: np.ndarray | None = None
    bias: np.ndarray | None = None
    relu: bool = False
    out_scale: np.ndarray | None = None
    out_zero_point: np.ndarray | None = None

    def out_bytes(self) -> int:
        return 1 if self.out == "quant" else 4


class SystolicSimulator:
    """Runs accelerator calls on numpy arrays and keeps their counters (``calls``)."""

    def __init__(self, spec: SystolicArraySpec, profile_name: str = "?") -> None:
        self.spec = spec
        self.profile_name = profile_name
        self.calls: list[CallCounters] = []

    def reset(self) -> None:
        """Forget the counters of earlier calls."""
        self.calls = []

    def summary(self) -> SimulationSummary:
        """Totals over the calls since the last :meth:`reset`."""
        spec = self.spec
        cycles = sum(c.cycles for c in self.calls)
        by_level = {level: sum(c.bytes[level] for c in self.calls) for level in LEVELS}
        dynamic = sum(c.dynamic_pj(spec) for c in self.calls) * 1e-9
        static = spec.static_power_w * cycles / spec.clock_hz * 1e3
        return SimulationSummary(self.profile_name, spec.clock_hz, f"{spec.rows}x{spec.cols}", spec.rows * spec.cols, cycles,
                                 sum(c.macs for c in self.calls), by_level, dynamic, static, list(self.calls))

    # -- the GEMM primitive ----------------------------------------------------------------
    def gemm(self, a: np.ndarray, a_zero_point: Any, w: np.ndarray, w_zero_point: Any,
             epilogue: Epilogue, *, node: str, kind: str = "gemm",
             dram_activation_bytes: int | None = None) -> np.ndarray:
        """``epilogue((a - a_zp) @ (w - w_zp))`` for int8/uint8 ``a`` [M, K] and ``w`` [K, N]
        (``w_zp`` scalar or per column), accumulated in int32 weight tile by weight tile.

        ``dram_activation_bytes`` is what the activations cost to fetch from DRAM when it is
        not ``a`` itself (conv: the input image, which im2col expands on chip)."""
        spec = self.spec
        m, k = a.shape
        k2, n = w.shape
        assert k == k2, (a.shape, w.shape)
        a32 = a.astype(np.int32) - np.asarray(a_zero_point, np.int32)
        w32 = w.astype(np.int32) - np.asarray(w_zero_point, np.int32).reshape(1, -1)
        acc = np.zeros((m, n), np.int32)
        for n0 in range(0, n, spec.cols):
            for k0 in range(0, k, spec.rows):
                # one weight tile: exact in float64 (|products| < 2^15, sums < 2^53)
                tile = a32[:, k0:k0 + spec.rows].astype(np.float64) @ w32[k0:k0 + spec.rows, n0:n0 + spec.cols]
                acc[:, n0:n0 + spec.cols] += tile.astype(np.int32)
        counters = self._gemm_counters(m, k, n, epilogue.out_bytes(), node, kind,
                                       a.nbytes if dram_activation_bytes is None else dram_activation_bytes)
        self.calls.append(counters)
        return _apply_epilogue(acc, epilogue)

    def conv2d(self, x: np.ndarray, x_zero_point: Any, w: np.ndarray, w_zero_point: Any,
               epilogue: Epilogue, *, node: str, pads: tuple[int, int, int, int],
               strides: tuple[int, int], dilations: tuple[int, int]) -> np.ndarray:
        """2-D convolution (NCHW, group 1) as im2col onto :meth:`gemm`; padding holds the
        input zero point (real zero). ``w`` is [OC, C, kh, kw], ``w_zp`` scalar or per OC."""
        b, c, h, wd = x.shape
        oc, c2, kh, kw = w.shape
        assert c == c2, (x.shape, w.shape)
        top, left, bottom, right = pads
        padded = np.full((b, c, h + top + bottom, wd + left + right), np.asarray(x_zero_point).astype(x.dtype),
                         dtype=x.dtype)
        padded[:, :, top:top + h, left:left + wd] = x
        oh = (h + top + bottom - dilations[0] * (kh - 1) - 1) // strides[0] + 1
        ow = (wd + left + right - dilations[1] * (kw - 1) - 1) // strides[1] + 1
        columns = np.empty((b, oh, ow, c, kh, kw), dtype=x.dtype)
        for i in range(kh):
            for j in range(kw):
                rows = slice(i * dilations[0], i * dilations[0] + strides[0] * (oh - 1) + 1, strides[0])
                cols = slice(j * dilations[1], j * dilations[1] + strides[1] * (ow - 1) + 1, strides[1])
                columns[..., i, j] = padded[:, :, rows, cols].transpose(0, 2, 3, 1)
        patches = columns.reshape(b * oh * ow, c * kh * kw)
        weights = w.reshape(oc, c * kh * kw).T
        out = self.gemm(patches, x_zero_point, weights, w_zero_point, epilogue, node=node, kind="conv",
                        dram_activation_bytes=x.nbytes)
        return out.reshape(b, oh, ow, oc).transpose(0, 3, 1, 2).copy()

    def _gemm_counters(self, m: int, k: int, n: int, out_bytes: int, node: str, kind: str,
                       dram_activation_bytes: int) -> CallCounters:
        spec = self.spec
        k_tiles, n_tiles = math.ceil(k / spec.rows), math.ceil(n / spec.cols)
        chunk = max(1, spec.accumulator_sram_bytes // (4 * spec.cols))
        chunks = [min(chunk, m - start) for start in range(0, m, chunk)]
        cycles = min(k, spec.rows)  # the first weight tile's load
        for mc in chunks:
            for nt in range(n_tiles):
                nc = min(spec.cols, n - nt * spec.cols)
                for kt in range(k_tiles):
                    kr = min(spec.rows, k - kt * spec.rows)
                    cycles += max(mc, kr) + kr + nc - 1
        cycles += math.ceil(m * n / spec.vector_lanes)  # epilogue
        weight_fetches = 1 if k * n <= spec.weight_sram_bytes else len(chunks)
        activation_fetches = 1 if m * k <= spec.activation_sram_bytes else n_tiles
        counters = CallCounters(node, kind, (m, k, n), macs=m * k * n)
        counters.bytes["dram"] = (k * n * weight_fetches + dram_activation_bytes * activation_fetches
                                  + m * n * out_bytes + 8 * n)  # + per-column scale and bias
        counters.bytes["weight_sram"] = k * n * (weight_fetches + len(chunks))
        counters.bytes["activation_sram"] = m * k * (activation_fetches + n_tiles)
        counters.bytes["accumulator_sram"] = 2 * k_tiles * m * n * 4
        dram_cycles = math.ceil(counters.bytes["dram"] / spec.dram_bandwidth_bytes_per_s * spec.clock_hz)
        counters.cycles = max(cycles, dram_cycles)
        return counters

    # -- the vector unit -------------------------------------------------------------------
    def quantize(self, x: np.ndarray, scale: np.ndarray, zero_point: np.ndarray, axis: int, *, node: str) -> np.ndarray:
        """ONNX QuantizeLinear: ``saturate(round_half_even(x / scale) + zero_point)``."""
        s, z = _along(x, scale, axis), _along(x, zero_point, axis)
        lo, hi = _INT_RANGES[np.dtype(zero_point.dtype)]
        q = np.clip(np.rint(x.astype(np.float32) / s.astype(np.float32)) + z.astype(np.float32), lo, hi)
        self._vector_call(node, "quantize", x.size, x.nbytes, x.size, passes=1)
        return q.astype(zero_point.dtype)

    def dequantize(self, q: np.ndarray, scale: np.ndarray, zero_point: np.ndarray, axis: int, *, node: str) -> np.ndarray:
        """ONNX DequantizeLinear: ``(q - zero_point) · scale`` in float32."""
        s, z = _along(q, scale, axis), _along(q, zero_point, axis)
        y = (q.astype(np.int32) - z.astype(np.int32)).astype(np.float32) * s.astype(np.float32)
        self._vector_call(node, "dequantize", q.size, q.nbytes, 4 * q.size, passes=1)
        return y.astype(np.float32)

    def dynamic_quantize(self, x: np.ndarray, *, node: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """ONNX DynamicQuantizeLinear: uint8 over ``[min(x, 0), max(x, 0)]``."""
        x = x.astype(np.float32)
        lo = np.float32(min(0.0, float(x.min()) if x.size else 0.0))
        hi = np.float32(max(0.0, float(x.max()) if x.size else 0.0))
        scale = np.float32((hi - lo) / np.float32(255))
        if scale == 0:
            scale = np.float32(1.0)  # all zeros: any scale quantizes them exactly
        zero_point = np.uint8(np.clip(np.rint(np.float32(0) - lo / scale), 0, 255))
        q = np.clip(np.rint(x / scale) + np.float32(zero_point), 0, 255).astype(np.uint8)
        self._vector_call(node, "dynamic_quantize", x.size, x.nbytes, x.size, passes=2)
        return q, np.asarray(scale, np.float32), np.asarray(zero_point, np.uint8)

    def _vector_call(self, node: str, kind: str, elements: int, in_bytes: int, out_bytes: int, *, passes: int) -> None:
        spec = self.spec
        counters = CallCounters(node, kind, (elements,))
        counters.bytes["dram"] = in_bytes * passes + out_bytes
        counters.bytes["activation_sram"] = (in_bytes + out_bytes) * passes
        compute = passes * math.ceil(elements / spec.vector_lanes)
        dram_cycles = math.ceil(counters.bytes["dram"] / spec.dram_bandwidth_bytes_per_s * spec.clock_hz)
        counters.cycles = max(compute, dram_cycles)
        self.calls.append(counters)


def _apply_epilogue(acc: np.ndarray, epilogue: Epilogue) -> np.ndarray:
    if epilogue.out == "int32":
        return acc
    assert epilogue.multiplier is not None
    y = acc.astype(np.float32) * epilogue.multiplier.astype(np.float32).reshape(1, -1)
    if epilogue.bias is not None:
        y = y + epilogue.bias.astype(np.float32).reshape(1, -1)
    if epilogue.out == "float":
        return y
    if epilogue.relu:
        y = np.maximum(y, np.float32(0))
    assert epilogue.out_scale is not None and epilogue.out_zero_point is not None
    zero_point = np.asarray(epilogue.out_zero_point)
    lo, hi = _INT_RANGES[np.dtype(zero_point.dtype)]
    q = np.rint(y / np.asarray(epilogue.out_scale, np.float32)) + zero_point.astype(np.float32)
    return np.clip(q, lo, hi).astype(zero_point.dtype)


def _along(x: np.ndarray, param: np.ndarray, axis: int) -> np.ndarray:
    """A scale or zero point broadcast against ``x``: as is when 0-d, else along ``axis``."""
    param = np.asarray(param)
    if param.ndim == 0:
        return param
    shape = [1] * x.ndim
    shape[axis % x.ndim] = param.size
    return param.reshape(shape)


__all__ = ["CallCounters", "Epilogue", "SimulationSummary", "SystolicSimulator"]
