"""greencc's CPU schedule rules for TVM: the default schedules of untuned ``tvm-llvm`` builds.

TVM's own CPU rules (``s_tir.dlight.cpu``) cover GEMV and row reductions (softmax, layer
norm) but not GEMM, convolutions or element-wise kernels, which then run as serial scalar
loops. The rules here fill that gap, as dlight rules, applied first-match per PrimFunc:

- ``CpuContraction``: dense/matmul, batch matmul and conv2d (any block summing a product of
  two tensors over reduction axes): a register tile of ``rows x (2 x SIMD lanes)`` outputs
  accumulated in locals, vectorized over the contiguous output axis, the tile loops fused and
  run in parallel, and the epilogue (bias, activation) fused into the write-back;
- ``CpuRowReduction``: softmax and layer norm as TVM's ``dlight.cpu.Reduction`` schedules
  them, but with each reduction split into SIMD-wide partial results (``rfactor``) so that
  it runs as vector instructions instead of a serial scalar chain;
- ``CpuInjective``: element-wise, broadcast and layout kernels: inlined into one loop nest,
  the innermost axis vectorized, the outer ones fused and run in parallel when large.

``fast_math_legalizations`` is not a rule: it is the Relax legalization of float32 ``erf``,
``exp``, GELU and softmax to polynomials LLVM vectorizes (libm calls it cannot).

A rule that cannot schedule a function declines (returns ``None``) and the next rule is
tried; a function no rule takes keeps TVM's unscheduled loops (correct, slower).
"""

from __future__ import annotations

import logging
from typing import Any

log = logging.getLogger(__name__)

# Output elements below which a parallel loop costs more (thread wake-up, ~10 us) than it saves.
PARALLEL_MIN_ELEMENTS = 16384
# Rows of the register tile, by the number of SIMD registers: rows x 2 vectors accumulate,
# and 3 more registers hold the two weight vectors and the broadcast input. With 32 registers
# (AVX-512, AArch64) 8 x 2 = 16 accumulators; with 16 (SSE, AVX2) 4 x 2 = 8. Measured on
# znver4, 1 thread, float32 1024x384x1536: 73 GFLOP/s with 4 rows, 89 with 8 (docs/tvm.md).
TILE_ROWS = 4
TILE_ROWS_32_REGISTERS = 8
# SIMD lanes when the target does not say (128-bit vectors of float32).
DEFAULT_VECTOR_BITS = 128


def _largest_divisor(extent: int, limit: int, multiple_of: int = 1) -> int:
    """The largest divisor of ``extent`` that is <= ``limit`` and a multiple of ``multiple_of``.

    Falls back to the largest plain divisor <= ``limit`` (1 at worst), so loops split
    evenly: an uneven split leaves a guarded tail that LLVM cannot vectorize.
    """
    best = 1
    for candidate in range(min(extent, limit), 0, -1):
        if extent % candidate == 0:
            if candidate % multiple_of == 0:
                return candidate
            best = max(best, candidate)
    return best


def vector_lanes(target: Any, dtype_bits: int = 32) -> int:
    """SIMD lanes of ``dtype_bits``-wide elements on ``target`` (at least 2)."""
    from tvm.target.codegen import llvm_get_cpu_features, llvm_get_vector_width

    try:
        features = set(llvm_get_cpu_features(target))
        # TVM 0.27's llvm_get_vector_width answers 512 for every x86 CPU (haswell, x86-64
        # included), so x86 widths come from the CPU's features.
        if "avx512f" in features:
            bits = 512
        elif "avx" in features:
            bits = 256
        elif "sse2" in features:
            bits = 128
        else:
            bits = int(llvm_get_vector_width(target))
    except Exception:  # a target LLVM cannot describe: assume the baseline vector width
        bits = 0
    if bits <= 0:
        bits = DEFAULT_VECTOR_BITS
    return max(bits // dtype_bits, 2)


def tile_rows(target: Any) -> int:
    """Most rows of the contraction's register tile on ``target`` (see ``TILE_ROWS``)."""
    triple = str(target.attrs.get("mtriple", "")) if "mtriple" in target.attrs else ""
    if triple.startswith(("aarch64", "arm64")) or vector_lanes(target, 32) >= 16:
        return TILE_ROWS_32_REGISTERS
    return TILE_ROWS


def _const_extent(sch: Any, loop: Any) -> int | None:
    from tvm import tirx

    extent = sch.get(loop).extent
    return int(extent.value) if isinstance(extent, tirx.IntImm) else None


def _buffer_vars(region: Any) -> set[Any]:
    """The variables used by a buffer region's index expressions."""
    from tvm.s_tir.dlight.analysis.common_analysis import collect_vars_used_in_prim_expr

    found: set[Any] = set()
    for rng in region.region:
        found |= set(collect_vars_used_in_prim_expr(rng.min))
    return found


def _is_contraction(block: Any) -> bool:
    """True for ``C[s...] += A[...] * B[...]`` where both A and B vary with a reduction axis.

    This separates matmuls and convolutions from row reductions: a softmax sum reads one
    tensor; a variance reads ``x`` and ``mean``, and ``mean`` does not vary with the reduced
    axis.
    """
    from tvm import tirx

    reduce_vars = {iv.var for iv in block.iter_vars if iv.iter_type == tirx.IterVar.CommReduce}
    spatial = [iv for iv in block.iter_vars if iv.iter_type == tirx.IterVar.DataPar]
    if not reduce_vars or not spatial or len(block.writes) != 1:
        return False
    written = block.writes[0].source
    reads = [r for r in block.reads if not r.source.same_as(written)]
    if len(reads) != 2:
        return False
    return all(_buffer_vars(r) & reduce_vars for r in reads)


def _dlight_base() -> Any:
    from tvm.s_tir import dlight

    return dlight


class _GuardedRule:
    """Wraps a rule's scheduling so that a failure declines instead of failing the build."""

    def _schedule(self, func: Any, target: Any) -> Any:
        raise NotImplementedError

    def apply(self, func: Any, target: Any, tunable: bool) -> Any:
        from tvm import tirx

        if not isinstance(func, tirx.PrimFunc) or target.kind.name != "llvm":
            return None
        try:
            return self._schedule(func, target)
        except Exception as exc:  # a rule that cannot handle a function declines
            log.debug("%s declined a function: %s", type(self).__name__, exc)
            return None

    def is_target_available(self, target: Any) -> bool:
        return target.kind.name == "llvm"


def _child_blocks(sch: Any) -> list[Any]:
    from tvm.s_tir.dlight.analysis import get_root_block

    return list(sch.get_child_blocks(get_root_block(sch)))


def _inline_producers(sch: Any, block: Any) -> None:
    """Compute-inline every injective producer of ``block`` that allows it (transposes,
    reshapes, padding), so the contraction reads the original tensors directly."""
    from tvm.s_tir.dlight.gpu.matmul import auto_inline_producers

    auto_inline_producers(sch, block)


class CpuContraction(_GuardedRule):
    """Register-tiled, vectorized, parallel schedule for matmul / batch matmul / conv2d."""

    def _schedule(self, func: Any, target: Any) -> Any:
        from tvm import s_tir, tirx
        from tvm.s_tir.dlight.gpu.matmul import auto_inline_consumer_chain

        sch = s_tir.Schedule(func)
        blocks = _child_blocks(sch)
        contractions = [b for b in blocks if _is_contraction(sch.get(b))]
        if len(contractions) != 1:
            return None
        main = contractions[0]
        stmt = sch.get(main)
        kinds = [iv.iter_type for iv in stmt.iter_vars]
        n_spatial = sum(1 for k in kinds if k == tirx.IterVar.DataPar)
        # Legalized contractions list spatial iterators first, then the reduction ones.
        if any(k != tirx.IterVar.DataPar for k in kinds[:n_spatial]):
            return None
        _inline_producers(sch, main)
        loops = sch.get_loops(main)
        if len(loops) != len(kinds):
            return None
        spatial, reduction = loops[:n_spatial], loops[n_spatial:]
        extents = [_const_extent(sch, loop) for loop in spatial]
        if any(e is None for e in extents):
            return None
        dtype_bits = sch.get(main).writes[0].source.dtype.bits
        lanes = vector_lanes(target, dtype_bits)

        inner_extent = extents[-1]
        col = _largest_divisor(inner_extent, 2 * lanes, multiple_of=lanes)
        j_outer, j_inner = sch.split(spatial[-1], factors=[None, col])
        tile_outer = [*spatial[:-1]]
        row_loops: list[Any] = []
        if n_spatial >= 2:
            rows = _largest_divisor(extents[-2], tile_rows(target))
            i_outer, i_inner = sch.split(spatial[-2], factors=[None, rows])
            tile_outer = [*spatial[:-2], i_outer]
            row_loops = [i_inner]
        # Column panels outermost among the tile loops: consecutive tiles then reuse one
        # panel of the (usually constant) right operand from cache.
        order = [*tile_outer[:-1], j_outer, tile_outer[-1]] if tile_outer else [j_outer]
        sch.reorder(*order, *reduction, *row_loops, j_inner)
        fused = sch.fuse(*order) if len(order) > 1 else order[0]

        write_back = sch.cache_write(main, 0, "local")
        sch.reverse_compute_at(write_back, fused, preserve_unit_loops=True)
        auto_inline_consumer_chain(sch, write_back)

        total = 1
        for extent in extents:
            total *= extent
        if total >= PARALLEL_MIN_ELEMENTS:
            sch.parallel(fused)
        for loop in row_loops:
            sch.unroll(loop)
        sch.vectorize(j_inner)
        sch.decompose_reduction(main, reduction[0])
        # The write-back (with the fused epilogue) walks the tile: vectorize its inner axis.
        wb_loops = sch.get_loops(write_back)
        wb_inner = _const_extent(sch, wb_loops[-1])
        if wb_inner is not None and wb_inner > 1:
            sch.vectorize(wb_loops[-1])
        return sch


class CpuInjective(_GuardedRule):
    """Element-wise / broadcast / layout kernels: one loop nest, vectorized and parallel."""

    def _schedule(self, func: Any, target: Any) -> Any:
        from tvm import s_tir, tirx

        sch = s_tir.Schedule(func)
        blocks = _child_blocks(sch)
        if not blocks:
            return None
        for block in blocks:
            if any(iv.iter_type != tirx.IterVar.DataPar for iv in sch.get(block).iter_vars):
                return None
        # Inline everything into the last block where possible.
        for block in blocks[:-1]:
            try:
                sch.compute_inline(block)
            except Exception:
                return None
        last = _child_blocks(sch)[-1]
        loops = sch.get_loops(last)
        if not loops:
            return None
        extents = [_const_extent(sch, loop) for loop in loops]
        if any(e is None for e in extents):
            return None
        total = 1
        for extent in extents:
            total *= extent
        dtype_bits = sch.get(last).writes[0].source.dtype.bits
        lanes = vector_lanes(target, max(dtype_bits, 8))
        inner = loops[-1]
        outer = list(loops[:-1])
        width = _largest_divisor(extents[-1], lanes)
        if width > 1:
            if width < extents[-1]:
                rest, inner = sch.split(inner, factors=[None, width])
                outer.append(rest)
            sch.vectorize(inner)
        else:
            outer.append(inner)
        if outer and total >= PARALLEL_MIN_ELEMENTS:
            fused = sch.fuse(*outer) if len(outer) > 1 else outer[0]
            sch.parallel(fused)
        return sch


class CpuRowReduction(_GuardedRule):
    """Row reductions followed by element-wise work (softmax, layer norm), vectorized.

    The structure is TVM's ``dlight.cpu.Reduction`` (leading spatial axes fused and run in
    parallel, every block computed at that loop, element-wise blocks vectorized), with one
    change: before the blocks move under the shared loop, each reduction over a multiple of
    the SIMD width is ``rfactor``-ed into ``lanes`` partial results, updated by one vector
    instruction per ``lanes`` inputs, then summed. TVM's rule keeps a scalar reduction whose
    every step waits on the previous one (a max or add latency per element). Measured on
    znver4, one thread: softmax over 8x12x128x128 4.9 -> 1.9 ms, layer norm over 8x128x384
    1.7 -> 1.0 ms. Reassociating the sum changes results by float32 rounding only.
    Declines what ``dlight.cpu.Reduction`` would decline, which then gets it.
    """

    def _schedule(self, func: Any, target: Any) -> Any:
        from tvm import s_tir, tirx
        from tvm.s_tir.dlight.analysis import normalize_prim_func

        sch = s_tir.Schedule(func)
        infos = normalize_prim_func(sch)
        if infos is None or len(infos) < 2 or not infos[-1].is_injective():
            return None
        if all(info.is_injective() for info in infos):
            return None
        leading = None
        for info in infos:
            kinds = info.dom_kind()
            if not kinds or kinds[0] != "S":
                return None
            count = len(kinds) - len(kinds.lstrip("S"))
            leading = count if leading is None else min(leading, count)
        dtype_bits = sch.get(infos[-1].block_rv).writes[0].source.dtype.bits
        lanes = vector_lanes(target, dtype_bits)
        partials = []
        for info in infos[:-1]:
            if info.is_injective() or not info.dom_kind().endswith("R"):
                continue  # rfactor splits the innermost loop: it must be the reduction
            inner = sch.get_loops(info.block_rv)[-1]
            extent = _const_extent(sch, inner)
            if extent is None or extent <= lanes or extent % lanes:
                continue
            _, lane = sch.split(inner, factors=[None, lanes])
            partials.append(sch.rfactor(lane, leading))
        if not partials:
            return None  # nothing to vectorize: TVM's rule schedules it the same way
        blocks = _child_blocks(sch)
        loops = sch.get_loops(blocks[-1])
        spatial = sch.fuse(*loops[:leading]) if leading > 1 else loops[0]
        sch.parallel(spatial)
        for block in reversed(blocks[:-1]):
            sch.compute_at(block, spatial, preserve_unit_loops=True)
        for block in blocks:
            if any(block.same_as(partial) for partial in partials):
                # Loops (..., lane, outer reduction): reduce outside, one vector per step.
                lane, outer = sch.get_loops(block)[-2:]
                sch.reorder(outer, lane)
                sch.decompose_reduction(block, outer)
                sch.vectorize(lane)
            elif all(iv.iter_type == tirx.IterVar.DataPar for iv in sch.get(block).iter_vars):
                _vectorize_inner(sch, block, lanes)
        return sch


def _vectorize_inner(sch: Any, block: Any, lanes: int) -> None:
    """Vectorize ``block``'s innermost loop by ``lanes`` (whole when it is that short)."""
    inner = sch.get_loops(block)[-1]
    extent = _const_extent(sch, inner)
    if extent is None or extent < 2:
        return
    if extent <= lanes:
        sch.vectorize(inner)
    elif extent % lanes == 0:
        _, vector = sch.split(inner, factors=[None, lanes])
        sch.vectorize(vector)


def fast_math_legalizations() -> dict[str, Any]:
    """Relax legalizations computing ``erf`` and ``exp`` with polynomials instead of libm.

    LLVM lowers TIR's ``erf`` and ``exp`` to scalar libm calls even in a vectorized loop
    (measured on znver4, 128 x 1536 float32: ``erf`` 10 ns and ``exp`` 5.6 ns per element,
    against 0.4 ns for TVM's polynomial ``fast_erf`` / ``fast_exp``), which made the GELU
    epilogue cost more than its matmul and the attention softmax a tenth of MiniLM. These
    legalizations give float32 ``nn.gelu``, ``nn.softmax``, ``erf`` and ``exp`` TVM's
    polynomial forms (max abs error of ``fast_erf`` 4e-7; max relative error of
    ``fast_exp`` 1e-7, measured on [-10, 10]); other dtypes keep TVM's legalization.
    Pass the result as ``LegalizeOps(customize_legalize_map=...)``.
    """
    import math

    from tvm import ir, te, tirx, topi

    def float32_only(fast: Any, op_name: str) -> Any:
        default = ir.Op.get(op_name).get_attr("FLegalize")

        def legalize(bb: Any, call: Any) -> Any:
            if str(call.args[0].ty.dtype) != "float32":
                return default(bb, call)
            return fast(bb, call)

        return legalize

    def gelu(bb: Any, call: Any) -> Any:
        def te_gelu(x: te.Tensor) -> te.Tensor:
            erf = topi.fast_erf(topi.multiply(x, tirx.const(math.sqrt(0.5), "float32")))
            half = tirx.const(0.5, "float32")
            return te.compute(x.shape, lambda *i: x(*i) * (half + erf(*i) * half), name="T_gelu")

        return bb.call_te(te_gelu, call.args[0], primfunc_name_hint="gelu")

    def softmax(bb: Any, call: Any) -> Any:
        return bb.call_te(topi.nn.fast_softmax, call.args[0], call.attrs.axis,
                          primfunc_name_hint="softmax")

    def erf(bb: Any, call: Any) -> Any:
        return bb.call_te(topi.fast_erf, call.args[0], primfunc_name_hint="erf")

    def exp(bb: Any, call: Any) -> Any:
        return bb.call_te(topi.fast_exp, call.args[0], primfunc_name_hint="exp")

    fast = {"relax.nn.gelu": gelu, "relax.nn.softmax": softmax, "relax.erf": erf, "relax.exp": exp}
    return {name: float32_only(rule, name) for name, rule in fast.items()}


def default_schedule_rules() -> list[Any]:
    """The rules untuned ``tvm-llvm`` builds apply, in order: greencc's contraction rule,
    TVM's CPU GEMV rule, greencc's vectorized row-reduction rule (TVM's scalar one as its
    fallback), greencc's injective rule."""
    dlight = _dlight_base()

    def as_rule(rule: _GuardedRule) -> Any:
        return dlight.ScheduleRule.from_callable(type(rule).__name__)(rule.apply)

    return [
        as_rule(CpuContraction()),
        _guard(dlight.cpu.GEMV()),
        as_rule(CpuRowReduction()),
        _guard(dlight.cpu.Reduction()),
        as_rule(CpuInjective()),
    ]


def _guard(rule: Any) -> Any:
    """A TVM rule wrapped so that an exception inside it declines instead of failing."""
    dlight = _dlight_base()

    def apply(func: Any, target: Any, tunable: bool) -> Any:
        try:
            return rule.apply(func, target, tunable)
        except Exception as exc:
            log.debug("%s declined a function: %s", type(rule).__name__, exc)
            return None

    return dlight.ScheduleRule.from_callable(type(rule).__name__)(apply)


def apply_default_schedules() -> Any:
    """The TVM module pass applying :func:`default_schedule_rules` to unscheduled PrimFuncs."""
    dlight = _dlight_base()
    return dlight.ApplyDefaultSchedule(*default_schedule_rules())


__all__ = [
    "CpuContraction", "CpuInjective", "CpuRowReduction", "apply_default_schedules",
    "default_schedule_rules",
    "fast_math_legalizations", "vector_lanes",
]
