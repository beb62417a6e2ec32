"""Apache TVM on this machine: whether it can be used (and why not), the host's LLVM target
in TVM's dict form, and the runtime's thread count.

Nothing here imports TVM at module import time: ``greencc targets`` asks for availability
without paying TVM's import (seconds) unless a TVM target is actually checked.
"""

from __future__ import annotations

import contextlib
import functools
import importlib.metadata
import importlib.util
import os
import sys
import tempfile
import warnings
from collections.abc import Iterator
from typing import Any

from greencc.target import Availability

# apache-tvm-ffi 0.1.15 segfaults MetaSchedule (in tvm::ffi::ToJSONGraph) on the first
# tuning record; 0.1.14.post1 works with apache-tvm 0.27 (measured, see docs/tvm.md).
TVM_FFI_BROKEN_PREFIX = "0.1.15"
INSTALL_HINT = "pip install 'greencc[tvm]' (apache-tvm 0.27 with apache-tvm-ffi 0.1.14.post1)"

# TVM's runtime pool pins its workers, and the calling thread, to single cores when it
# starts (TVM_BIND_THREADS defaults to on). The pin is inherited by every thread created
# afterwards, so one tvm-llvm call left ONNX Runtime and PyTorch in the same process on
# one core (measured: ORT's MiniLM batch 8 went from ~140 to 384 ms). greencc turns the
# binding off unless the user set the variable; it is read when the pool (re)starts.
os.environ.setdefault("TVM_BIND_THREADS", "0")
# The pool's size is fixed when it starts (TVM_NUM_THREADS, else half the cores on x86,
# assuming hyper-threads) and ``set_runtime_threads`` can shrink it but never grow it: on
# this project's 2-vCPU machines every tvm-llvm kernel ran on one thread (measured 13.1
# against 6.9 ms on a 1024x384x1536 matmul). greencc sizes it to the usable cores.
os.environ.setdefault("TVM_NUM_THREADS", str(len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity")
                                             else (os.cpu_count() or 1)))


@functools.cache
def tvm_availability() -> Availability:
    """Whether TVM with an LLVM code generator can be imported here (never raises).

    The result is cached per process: TVM's import costs seconds and cannot change.
    """
    if importlib.util.find_spec("tvm") is None:
        return Availability(False, f"apache-tvm is not installed ({INSTALL_HINT})")
    try:
        import tvm
        import tvm.relax  # noqa: F401  (the Relax frontend and VM greencc lowers through)
    except Exception as exc:
        return Availability(False, f"apache-tvm cannot be imported: {type(exc).__name__}: {exc}")
    try:
        llvm = bool(tvm.runtime.enabled("llvm"))
    except Exception as exc:
        return Availability(False, f"TVM cannot report its code generators: {exc}")
    if not llvm:
        return Availability(False, "this TVM build has no LLVM code generator (USE_LLVM=OFF)")
    return Availability(True)


def tvm_ffi_version() -> str | None:
    """The installed apache-tvm-ffi version, or ``None`` when it is not installed."""
    try:
        return importlib.metadata.version("apache-tvm-ffi")
    except importlib.metadata.PackageNotFoundError:
        return None


def tuning_availability() -> Availability:
    """Whether MetaSchedule tuning can run: TVM usable, a working tvm-ffi, its helpers."""
    base = tvm_availability()
    if not base:
        return base
    version = tvm_ffi_version() or ""
    if version.startswith(TVM_FFI_BROKEN_PREFIX):
        return Availability(
            False,
            f"apache-tvm-ffi {version} crashes MetaSchedule; install apache-tvm-ffi==0.1.14.post1",
        )
    missing = [name for name in ("xgboost", "psutil", "cloudpickle") if importlib.util.find_spec(name) is None]
    if missing:
        return Availability(False, f"MetaSchedule needs {', '.join(missing)} ({INSTALL_HINT})")
    return Availability(True)


@functools.cache
def host_cpu() -> str:
    """LLVM's name for this machine's CPU (``znver4``, ``skylake-avx512``, ``neoverse-n1``)."""
    from tvm.target.codegen import llvm_get_system_cpu

    return str(llvm_get_system_cpu())


def llvm_target_spec(threads: int, mcpu: str | None = None, mtriple: str | None = None) -> dict[str, Any]:
    """TVM's dict form of an LLVM target (the CLI string form is rejected by TVM 0.27).

    ``mcpu`` defaults to the host CPU; ``threads`` becomes ``num-cores``, which MetaSchedule
    uses to size parallel loops.
    """
    spec: dict[str, Any] = {"kind": "llvm", "mcpu": mcpu or host_cpu(), "num-cores": int(threads)}
    if mtriple:
        spec["mtriple"] = mtriple
    return spec


def make_target(spec: dict[str, Any]) -> Any:
    """A ``tvm.target.Target`` from a dict spec."""
    import tvm

    return tvm.target.Target(spec)


_configured_threads: int | None = None


def set_runtime_threads(threads: int) -> None:
    """Size TVM's (process-wide) runtime thread pool to ``threads`` workers, if it changed.

    Parallel loops in compiled kernels run on this pool; ``TVM_NUM_THREADS`` only applies
    before the pool first starts, so greencc reconfigures it explicitly.
    """
    global _configured_threads
    if _configured_threads == threads:
        return
    import tvm

    # Mode 1 ("big cores") is the pool's own start-up mode; only the worker count changes.
    # The pool can shrink below TVM_NUM_THREADS but never grow past it.
    tvm.get_global_func("runtime.config_threadpool")(1, int(threads))
    _configured_threads = threads
    running = int(tvm.get_global_func("runtime.NumThreads")())
    if running < threads:
        warnings.warn(
            f"greencc: TVM's thread pool runs {running} thread(s), not the {threads} asked for: it was "
            f"sized when it started (TVM_NUM_THREADS={os.environ.get('TVM_NUM_THREADS')}); set "
            "TVM_NUM_THREADS before the first TVM call",
            stacklevel=2,
        )


def last_line(exc: BaseException) -> str:
    """The last non-empty line of an exception's text: where TVM says what failed."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return lines[-1] if lines else type(exc).__name__


@contextlib.contextmanager
def native_warnings_captured() -> Iterator[list[str]]:
    """Capture what TVM's C++ code writes to stderr (fd 2) while the block runs.

    TVM logs a warning line per saved constant and per gather op ("Scope Saving", "Fast
    mode segfaults ..."); greencc's users get its errors as exceptions instead. The captured
    lines are yielded (filled in when the block ends) for callers that want to show them.
    """
    lines: list[str] = []
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile(mode="w+b") as sink:
        os.dup2(sink.fileno(), 2)
        try:
            yield lines
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            sink.seek(0)
            lines.extend(sink.read().decode("utf-8", "replace").splitlines())


def host_profile_name() -> str:
    """The hardware profile of this machine's kind of CPU (``x86-avx512`` or ``arm-cortex-a76``)."""
    import platform

    machine = platform.machine().lower()
    return "arm-cortex-a76" if machine in ("aarch64", "arm64") else "x86-avx512"


def default_threads() -> int:
    """The default thread count: every core this process may use."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


__all__ = [
    "default_threads", "host_cpu", "host_profile_name", "native_warnings_captured", "llvm_target_spec", "make_target", "set_runtime_threads",
    "tuning_availability", "tvm_availability", "tvm_ffi_version",
]
