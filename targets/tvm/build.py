"""Relax module -> TVM executable: legalize and fuse, schedule every kernel, lower, build.

Kernels get, in order of preference: a tuned schedule from a MetaSchedule database (when
one is given), then greencc's default CPU rules (``tvm_schedules``). The rest of the
pipeline is TVM's own CPU pipeline (``relax.backend.cpu_generic``).
"""

from __future__ import annotations

from typing import Any

from greencc.errors import GreenccError
from greencc.targets.tvm import env as tvm_env
from greencc.targets.tvm.schedules import apply_default_schedules, fast_math_legalizations


def fuse_passes(target: Any) -> list[Any]:
    """Relax passes up to fused TIR kernels (the form tuning and scheduling work on)."""
    from tvm import relax


    # TVM's CPU legalization (relax.backend.cpu_generic.legalize_passes), with erf/exp/GELU/
    # softmax legalized to vectorizable polynomials instead of scalar libm calls.
    return [
        relax.transform.DecomposeOpsForInference(),
        relax.transform.CanonicalizeBindings(),
        relax.transform.LegalizeOps(customize_legalize_map=fast_math_legalizations()),
        relax.transform.AnnotateTIROpPattern(),
        relax.transform.FoldConstant(),
        relax.transform.FuseOps(),
        relax.transform.FuseTIR(),
    ]


def fused_module(mod: Any, target: Any) -> Any:
    """``mod`` legalized and fused into TIR kernels for ``target`` (not yet scheduled)."""
    import tvm

    with target:
        return tvm.transform.Sequential(fuse_passes(target))(mod)


def build_executable(mod: Any, target: Any, database: Any = None) -> Any:
    """Compile a fused Relax module (see :func:`fused_module`) into a VM executable.

    ``database`` is a MetaSchedule database whose tuned schedules take precedence; kernels
    it does not cover get greencc's default CPU schedules.
    """
    import tvm
    from tvm import relax
    from tvm.relax.backend.cpu_generic import pipeline as cpu


    @tvm.transform.module_pass(opt_level=0, name="GreenccCpuPipeline")
    def pipeline(module: Any, _ctx: Any) -> Any:
        passes = []
        if database is not None:
            passes.append(relax.transform.MetaScheduleApplyDatabase())
        passes.append(apply_default_schedules())
        passes += cpu.dataflow_lower_passes(target) + cpu.finalize_passes(target)
        with target:
            if database is not None:
                with database:
                    return tvm.transform.Sequential(passes)(module)
            return tvm.transform.Sequential(passes)(module)

    return tvm.compile(mod, target=target, relax_pipeline=pipeline)


def build_checked(mod: Any, target: Any, what: str, database: Any = None) -> Any:
    """:func:`build_executable` with TVM's native output captured; a failure other than
    greencc's own errors becomes a ``GreenccError`` saying TVM failed to build ``what``."""

    try:
        with tvm_env.native_warnings_captured():
            return build_executable(mod, target, database)
    except GreenccError:
        raise
    except Exception as exc:
        raise GreenccError(
            f"TVM failed to build {what}: {type(exc).__name__}: {tvm_env.last_line(exc)}",
            hint="please report it with the model; compile for ort-cpu meanwhile",
        ) from None


__all__ = ["build_checked", "build_executable", "fuse_passes", "fused_module"]
