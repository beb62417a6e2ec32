"""Fused kernels onnxruntime runs slower than the ops they replace, measured on this host.

onnxruntime 1.32's CPU ``SkipLayerNormalization`` takes about 2 µs per row of 384 floats,
where ``Add`` + ``LayerNormalization`` (opset 17) take about 0.35 µs: 261 against 43 µs on
[1, 128, 384] at 1 thread, 144 against 45 µs at 2 threads, 2.07 ms against 0.41 ms on
[1, 1024, 384] (Intel Xeon with AVX-512, measured 2026-12-07); on one row both cost the
same. A fusion that swaps the fast pair for the slow kernel makes the model slower, so
``fuse-skip-layernorm`` asks the target, and ``ort-cpu`` answers from a measurement of
this host (a few milliseconds, once per process and thread count) rather than from a
version table nobody keeps current. With ``GREENCC_HOST_PROFILE=off`` nothing is
measured and every fused kernel counts as fast (compiles then do not depend on the host).
"""

from __future__ import annotations

import functools
import statistics
import time

import numpy as np

SKIP_LAYERNORM = "com.microsoft::SkipLayerNormalization"
# onnxruntime's graph transformer that would fuse the unfused form straight back.
REFUSING_OPTIMIZERS = {SKIP_LAYERNORM: "SkipLayerNormFusion"}
# The fused kernel counts as slower only beyond this factor (the measurement's noise is
# far below it: the gap measured is 3-6x).
MIN_SLOWDOWN = 1.25
ROWS, HIDDEN = 128, 384
RUNS = 15


@functools.cache
def slower_fused_kernels(threads: int) -> dict[str, str]:
    """``{"domain::Op": why}`` of the fused kernels onnxruntime's CPU provider runs more than
    :data:`MIN_SLOWDOWN` times slower than the unfused ops on this host at ``threads``
    intra-op threads (empty with ``GREENCC_HOST_PROFILE=off``)."""
    from greencc.execution.calibrate import host_profile_mode

    if host_profile_mode() == "off":
        return {}
    fused_us, unfused_us = time_skip_layernorm(threads)
    if fused_us <= MIN_SLOWDOWN * unfused_us:
        return {}
    import onnxruntime as ort

    return {SKIP_LAYERNORM: (
        f"onnxruntime {ort.__version__}'s CPU SkipLayerNormalization took {fused_us:.0f} µs against "
        f"{unfused_us:.0f} µs for Add + LayerNormalization on [1, {ROWS}, {HIDDEN}] at {threads} thread(s), "
        "measured on this host"
    )}


def refusing_optimizers(threads: int) -> list[str]:
    """onnxruntime optimizers to turn off in a session at ``threads`` threads, so that it
    does not fuse back what :func:`slower_fused_kernels` left unfused."""
    return [REFUSING_OPTIMIZERS[op] for op in slower_fused_kernels(threads) if op in REFUSING_OPTIMIZERS]


def time_skip_layernorm(threads: int) -> tuple[float, float]:
    """Median µs of one run of com.microsoft SkipLayerNormalization and of Add +
    LayerNormalization on the same [1, ROWS, HIDDEN] inputs (alternating, after warm-up)."""
    import onnx
    import onnx.helper as oh
    import onnxruntime as ort

    rng = np.random.default_rng(0)
    weights = [onnx.numpy_helper.from_array(rng.standard_normal(HIDDEN).astype(np.float32), name)
               for name in ("gamma", "beta")]
    shape = [1, ROWS, HIDDEN]
    inputs = [oh.make_tensor_value_info(name, onnx.TensorProto.FLOAT, shape) for name in ("x", "skip")]
    output = [oh.make_tensor_value_info("y", onnx.TensorProto.FLOAT, shape)]
    opsets = [oh.make_opsetid("", 17), oh.make_opsetid("com.microsoft", 1)]
    fused = [oh.make_node("SkipLayerNormalization", ["x", "skip", "gamma", "beta"], ["y"], domain="com.microsoft")]
    unfused = [oh.make_node("Add", ["x", "skip"], ["sum"]),
               oh.make_node("LayerNormalization", ["sum", "gamma", "beta"], ["y"], axis=-1)]
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.log_severity_level = 3
    sessions = [
        ort.InferenceSession(oh.make_model(oh.make_graph(nodes, "kernel_choice", inputs, output, weights),
                                           opset_imports=opsets).SerializeToString(),
                             options, providers=["CPUExecutionProvider"], disabled_optimizers=["SkipLayerNormFusion"])
        for nodes in (fused, unfused)
    ]
    feeds = {name: rng.standard_normal(shape).astype(np.float32) for name in ("x", "skip")}
    times: list[list[float]] = [[], []]
    for turn in range(RUNS + 3):
        for session, taken in zip(sessions, times, strict=True):
            start = time.perf_counter()
            session.run(None, feeds)
            if turn >= 3:
                taken.append((time.perf_counter() - start) * 1e6)
    return statistics.median(times[0]), statistics.median(times[1])
