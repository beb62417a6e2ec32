"""greencc's default CPU schedule rules for TVM: which kernels each rule takes or declines,
the loops it produces (parallel, vectorized, register tile), that scheduled kernels
compute the same values as numpy, including extents that do not divide the tile, and the
polynomial erf/exp legalizations (no libm calls left, values within 1e-5 of float64)."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("tvm", reason="apache-tvm is not installed (pip install 'greencc[tvm]')")

import tvm  # noqa: E402
from tvm import te  # noqa: E402

from greencc.targets.tvm.schedules import (  # noqa: E402
    PARALLEL_MIN_ELEMENTS,
    CpuContraction,
    CpuInjective,
    CpuRowReduction,
    apply_default_schedules,
    tile_rows,
    vector_lanes,
)

TARGET = tvm.target.Target({"kind": "llvm", "mcpu": "skylake-avx512", "num-cores": 2})
AVX2 = tvm.target.Target({"kind": "llvm", "mcpu": "haswell", "num-cores": 2})


def _matmul(m: int, k: int, n: int, epilogue: bool = False):
    a = te.placeholder((m, k), name="A")
    b = te.placeholder((k, n), name="B")
    r = te.reduce_axis((0, k), name="k")
    c = te.compute((m, n), lambda i, j: te.sum(a[i, r] * b[r, j], axis=r), name="C")
    if epilogue:
        bias = te.placeholder((n,), name="bias")
        out = te.compute((m, n), lambda i, j: te.max(c[i, j] + bias[j], 0.0), name="out")
        return te.create_prim_func([a, b, bias, out])
    return te.create_prim_func([a, b, c])


def _row_sum(m: int, n: int):
    a = te.placeholder((m, n), name="A")
    r = te.reduce_axis((0, n), name="r")
    s = te.compute((m,), lambda i: te.sum(a[i, r], axis=r), name="S")
    return te.create_prim_func([a, s])


def _scale_shift(shape: tuple[int, ...]):
    a = te.placeholder(shape, name="A")
    b = te.compute(shape, lambda *i: a(*i) * 2.0, name="B")
    c = te.compute(shape, lambda *i: b(*i) + 1.0, name="C")
    return te.create_prim_func([a, c])


def _run(func, arrays):
    lib = tvm.compile(tvm.IRModule({"main": func}), target=TARGET)
    tensors = [tvm.runtime.tensor(a) for a in arrays]
    lib["main"](*tensors)
    return tensors[-1].numpy()


def test_vector_lanes_follow_the_target():
    assert vector_lanes(TARGET) == 16  # AVX-512: 512 bits of float32
    assert vector_lanes(TARGET, 8) == 64
    assert vector_lanes(AVX2) == 8  # 256-bit AVX2 (TVM's own query answers 512 here)
    assert vector_lanes(tvm.target.Target({"kind": "llvm", "mcpu": "x86-64"})) == 4
    neon = tvm.target.Target({"kind": "llvm", "mtriple": "aarch64-linux-gnu", "mcpu": "cortex-a76"})
    assert vector_lanes(neon) == 4  # 128-bit NEON


def test_contraction_tiles_vectorizes_and_parallelizes_a_large_matmul():
    func = _matmul(128, 64, 256, epilogue=True)
    sch = CpuContraction().apply(func, TARGET, False)
    assert sch is not None
    text = sch.mod.script()
    assert "T.parallel" in text and "T.vectorized" in text and "T.unroll" in text
    # The epilogue (bias + relu) is fused into the tile's write-back: no separate output loop.
    assert text.count("T.sblock(\"out\")") + text.count("T.block(\"out\")") <= 1
    rng = np.random.default_rng(0)
    a = rng.standard_normal((128, 64)).astype("float32")
    b = rng.standard_normal((64, 256)).astype("float32")
    bias = rng.standard_normal(256).astype("float32")
    out = _run(sch.mod["main"], [a, b, bias, np.zeros((128, 256), "float32")])
    np.testing.assert_allclose(out, np.maximum(a @ b + bias, 0), rtol=1e-5, atol=1e-4)


def _tile_loops(text: str) -> tuple[list[str], list[str]]:
    """Extents of the unrolled and vectorized loops in a scheduled kernel's TVMScript."""
    import re

    return re.findall(r"T\.unroll\((\d+)\)", text), re.findall(r"T\.vectorized\((\d+)\)", text)


def test_register_tile_fits_the_target_registers():
    # AVX-512 (32 registers): 8 rows x 2 vectors of 16 lanes = 16 accumulators.
    assert tile_rows(TARGET) == 8
    scheduled = CpuContraction().apply(_matmul(128, 64, 256), TARGET, False)
    unrolled, vectorized = _tile_loops(scheduled.mod.script())
    assert "8" in unrolled and "32" in vectorized
    # AVX2 (16 registers): 4 rows x 2 vectors of 8 lanes, so nothing spills.
    assert tile_rows(AVX2) == 4
    scheduled = CpuContraction().apply(_matmul(128, 64, 256), AVX2, False)
    unrolled, vectorized = _tile_loops(scheduled.mod.script())
    assert unrolled and set(unrolled) == {"4"} and "16" in vectorized and "32" not in vectorized


def test_contraction_handles_extents_that_do_not_divide_the_tile():
    func = _matmul(7, 13, 5)
    sch = CpuContraction().apply(func, TARGET, False)
    assert sch is not None
    assert 7 * 5 < PARALLEL_MIN_ELEMENTS and "T.parallel" not in sch.mod.script()
    rng = np.random.default_rng(1)
    a = rng.standard_normal((7, 13)).astype("float32")
    b = rng.standard_normal((13, 5)).astype("float32")
    out = _run(sch.mod["main"], [a, b, np.zeros((7, 5), "float32")])
    np.testing.assert_allclose(out, a @ b, rtol=1e-5, atol=1e-5)


def test_contraction_declines_row_reductions_and_elementwise():
    assert CpuContraction().apply(_row_sum(64, 384), TARGET, False) is None
    assert CpuContraction().apply(_scale_shift((64, 384)), TARGET, False) is None
    # Not a CPU target.
    cuda = tvm.target.Target({"kind": "cuda", "arch": "sm_80"})
    assert CpuContraction().apply(_matmul(64, 64, 64), cuda, False) is None


def test_injective_inlines_vectorizes_and_parallelizes():
    func = _scale_shift((128, 384))
    sch = CpuInjective().apply(func, TARGET, False)
    assert sch is not None
    text = sch.mod.script()
    assert "T.vectorized" in text and "T.parallel" in text
    assert "\"B\"" not in text  # the producer was inlined
    a = np.random.default_rng(2).standard_normal((128, 384)).astype("float32")
    np.testing.assert_allclose(_run(sch.mod["main"], [a, np.zeros_like(a)]), a * 2 + 1, rtol=1e-6)


def test_injective_declines_reductions():
    assert CpuInjective().apply(_row_sum(8, 8), TARGET, False) is None
    assert CpuInjective().apply(_matmul(8, 8, 8), TARGET, False) is None


def test_default_pass_schedules_every_kernel_it_can():
    mod = tvm.IRModule({
        "mm": _matmul(64, 32, 64).with_attr("global_symbol", "mm"),
        "ew": _scale_shift((64, 256)).with_attr("global_symbol", "ew"),
    })
    with TARGET:
        scheduled = apply_default_schedules()(mod)
    for name in ("mm", "ew"):
        assert scheduled[name].attrs["tirx.is_scheduled"]


def _activations_module():
    from tvm.script import ir as I
    from tvm.script import relax as R

    @I.ir_module
    class Activations:
        @R.function
        def main(x: R.Tensor((4, 64), "float32"), d: R.Tensor((4, 64), "float64")):
            with R.dataflow():
                gelu = R.nn.gelu(x)
                probs = R.nn.softmax(gelu, axis=-1)
                both = R.add(R.erf(x), R.exp(x))
                wide = R.nn.gelu(d)
                R.output(probs, both, wide)
            return (probs, both, wide)

    return Activations


def test_float32_erf_and_exp_become_polynomials_that_match_float64():
    import math

    from tvm import relax

    from greencc.targets.tvm.build import build_executable, fused_module

    fused = fused_module(_activations_module(), TARGET)
    text = fused.script()
    # Only the float64 GELU keeps TVM's erf (a libm call); no float32 kernel calls libm.
    assert text.count("T.erf(") == 1 and "T.exp(" not in text
    vm = relax.VirtualMachine(build_executable(fused, TARGET), tvm.cpu())
    x = (np.random.default_rng(3).standard_normal((4, 64)) * 3).astype("float32")
    results = vm["main"](tvm.runtime.tensor(x), tvm.runtime.tensor(x.astype("float64")))
    probs, both, wide = (t.numpy() for t in results)
    wide_x = x.astype("float64")
    erf = np.vectorize(math.erf)(wide_x)
    gelu = wide_x * 0.5 * (1 + np.vectorize(math.erf)(wide_x / math.sqrt(2)))
    expected = np.exp(gelu - gelu.max(axis=-1, keepdims=True))
    expected /= expected.sum(axis=-1, keepdims=True)
    np.testing.assert_allclose(probs, expected, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(both, erf + np.exp(wide_x), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(wide, gelu, rtol=1e-12)


def _softmax(rows: int, cols: int):
    from tvm import topi

    x = te.placeholder((rows, cols), name="x")
    return te.create_prim_func([x, topi.nn.softmax(x, axis=-1)])


def test_row_reduction_vectorizes_the_reductions_of_a_softmax():
    sch = CpuRowReduction().apply(_softmax(96, 128), TARGET, False)
    assert sch is not None
    text = sch.mod.script()
    # Max and sum each become 16 partial results (rfactor), updated by one vector per step.
    assert text.count("_rf") >= 2 and "T.parallel" in text
    assert "T.vectorized(16)" in text
    x = (np.random.default_rng(4).standard_normal((96, 128)) * 4).astype("float32")
    expected = np.exp(x - x.max(axis=-1, keepdims=True))
    expected /= expected.sum(axis=-1, keepdims=True)
    result = _run(sch.mod["main"], [x, np.zeros_like(x)])
    np.testing.assert_allclose(result, expected, rtol=1e-5, atol=1e-7)


def test_row_reduction_declines_what_it_cannot_vectorize():
    # A row of 13 is no multiple of the SIMD width: TVM's own rule (the next one) takes it.
    assert CpuRowReduction().apply(_softmax(8, 13), TARGET, False) is None
    assert CpuRowReduction().apply(_scale_shift((64, 384)), TARGET, False) is None
    assert CpuRowReduction().apply(_row_sum(64, 384), TARGET, False) is None  # no epilogue
