"""greencc's CPU schedule rules for TVM: the default schedules of untuned ``tvm-llvm`` builds.

TVM's own CPU rules (``s_tir.dlight.cpu``) cover GEMV and row reductions (softmax, layer
norm) but not GEMM, convolutions or element-wise kernels, which then run as serial scalar
loops. The rules here fill that gap, as dlight rules, applied first-match per PrimFunc:

- ``CpuContraction``: dense/matmul, batch matmul and conv2d (any block summing a product of
  two tensors over reduction axes): a register tile of ``rows x (2 x SIMD lanes)`` outputs
  accumulated in locals, vectorized over the contiguous output axis, the tile loops fused and
  run in parallel, and the epilogue (bias, activation) fused into the write-back;
- ``CpuInjective``: element-wise, broadcast and layout kernels: inlined into one loop nest,
  the innermost axis vectorized, the outer ones fused and run in parallel when large.

A rule that cannot schedule a function declines (returns ``None``) and the next rule is
tried; a function no rule takes keeps TVM's unscheduled loops (correct, slower).
"""

from __future__ import annotations

import logging
from typing import Any

log = logging.getLogger(__name__)

# Output elements below which a parallel loop costs more (thread wake-up, ~10 us) than it saves.
PARALLEL_MIN_ELEMENTS = 16384
# Rows of the register tile: 4 rows x 2 vectors = 8 accumulators (of 16/32 on x86 and NEON).
TILE_ROWS = 4
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
    from tvm.target.codegen import llvm_get_vector_width

    try:
        bits = int(llvm_get_vector_width(target))
    except Exception:  # a target LLVM cannot describe: assume the baseline vector width
        bits = 0
    if bits <= 0:
        bits = DEFAULT_VECTOR_BITS
    return max(bits // dtype_bits, 2)


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
            rows = _largest_divisor(extents[-2], TILE_ROWS)
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


def default_schedule_rules() -> list[Any]:
    """The rules untuned ``tvm-llvm`` builds apply, in order: greencc's contraction rule,
    TVM's CPU GEMV and row-reduction rules, greencc's injective rule."""
    dlight = _dlight_base()

    def as_rule(rule: _GuardedRule) -> Any:
        return dlight.ScheduleRule.from_callable(type(rule).__name__)(rule.apply)

    return [
        as_rule(CpuContraction()),
        _guard(dlight.cpu.GEMV()),
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
    "CpuContraction", "CpuInjective", "apply_default_schedules", "default_schedule_rules",
    "vector_lanes",
]
