"""The ``tvm-aarch64`` target: Apache TVM cross-compiling for 64-bit Arm (NEON, SVE optional).

The graph goes through the same import, fusion and default CPU schedules as ``tvm-llvm``
(``tvm_import``, ``tvm_build``, ``tvm_schedules``), LLVM generates AArch64 code, and
``aarch64-linux-gnu-gcc`` links the shared library. On an aarch64 machine the library runs
in-process under TVM's Relax VM; elsewhere it runs under ``qemu-aarch64`` in a Debian arm64
root (``aarch64_emulation``), which checks outputs, not speed.
"""

from __future__ import annotations

import functools
import json
import shutil
import subprocess
import tempfile
import time
import warnings
import weakref
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from greencc.errors import GreenccError, ModelLoadError, TargetUnavailableError, UsageError
from greencc.frontend.onnx_file import load
from greencc.ir.io import save_model
from greencc.target import Availability, CompiledModel, Target, register_target
from greencc.targets.tvm import aarch64_emulation as emulation
from greencc.targets.tvm import env as tvm_env
from greencc.targets.tvm.build import build_checked, fused_module
from greencc.targets.tvm.llvm import (
    DATA_FILE,
    LIBRARY_FILE,
    MODEL_FILE,
    TARGET_FILE,
    TvmLlvm,
    _dims_for,
    _positive_int,
    read_artifact_meta,
)
from greencc.targets.tvm.onnx_import import prepare_for_tvm, to_relax

if TYPE_CHECKING:
    from greencc.model import Model
    from greencc.pipeline.context import PassContext

TRIPLE = "aarch64-linux-gnu"
CROSS_CC = "aarch64-linux-gnu-gcc"
DEFAULT_MCPU = "cortex-a76"  # the arm-cortex-a76 profile's core (ARMv8.2-A: NEON, dotprod, fp16)
EM_AARCH64 = 183  # ELF e_machine of AArch64 (the ELF for the Arm 64-bit Architecture ABI)
ELF_MACHINES = {3: "x86 (i386)", 40: "32-bit Arm", 62: "x86-64", 183: "AArch64", 243: "RISC-V"}
TOOLCHAIN_INSTALL = "apt-get install gcc-aarch64-linux-gnu libc6-dev-arm64-cross"
QEMU_INSTALL = "apt-get install qemu-user"


# --------------------------------------------------------------------------------------
# ELF check
# --------------------------------------------------------------------------------------
def elf_machine(path: str | Path) -> int:
    """The ``e_machine`` field of the ELF file at ``path`` (183 for AArch64, 62 for x86-64).

    Raises ``ModelLoadError`` when the file is not a 64-bit little-endian ELF file.
    """
    with open(path, "rb") as handle:
        header = handle.read(20)
    if len(header) < 20 or header[:4] != b"\x7fELF":
        raise ModelLoadError(f"{path} is not an ELF shared library", hint="compile again")
    if header[4] != 2 or header[5] != 1:  # EI_CLASS = ELFCLASS64, EI_DATA = little-endian
        raise ModelLoadError(f"{path} is not a 64-bit little-endian ELF file", hint="compile again")
    return int.from_bytes(header[18:20], "little")


def check_aarch64_elf(path: str | Path) -> None:
    """Raise ``ModelLoadError`` unless ``path`` is a 64-bit little-endian AArch64 ELF file
    (``e_machine == 183``), naming the machine it was built for otherwise."""
    machine = elf_machine(path)
    if machine != EM_AARCH64:
        name = ELF_MACHINES.get(machine, f"machine {machine}")
        raise ModelLoadError(
            f"{path} was built for {name} (ELF e_machine {machine}), not AArch64 ({EM_AARCH64})",
            hint="compile the model for tvm-aarch64 again",
        )


# --------------------------------------------------------------------------------------
# Toolchain
# --------------------------------------------------------------------------------------
def default_cc() -> str:
    """The C compiler that links AArch64 libraries: the cross gcc, or ``gcc`` on an aarch64
    machine without one."""
    if shutil.which(CROSS_CC) is None and not emulation.needs_emulation():
        return "gcc"
    return CROSS_CC


@functools.cache
def _links_shared_libraries(cc_path: str) -> bool:
    """Whether ``cc_path`` finds its C library's start files (``crti.o``): the cross gcc
    without ``libc6-dev-arm64-cross`` cannot link a shared library."""
    try:
        found = subprocess.run([cc_path, "-print-file-name=crti.o"], capture_output=True,
                               text=True, timeout=30, check=False).stdout.strip()
    except (OSError, subprocess.TimeoutExpired):
        return False
    return Path(found).is_absolute()


def compiler_problems(cc: str) -> list[str]:
    """What is missing to compile AArch64 libraries with ``cc``: TVM with LLVM, and a C
    compiler that links; each with its install command. Empty when nothing is."""
    problems = []
    tvm = tvm_env.tvm_availability()
    if not tvm.ok:
        problems.append(tvm.reason)
    cc_path = shutil.which(cc)
    if cc_path is None:
        problems.append(f"the AArch64 C compiler '{cc}' is not installed ({TOOLCHAIN_INSTALL})")
    elif not _links_shared_libraries(cc_path):
        problems.append(f"'{cc}' cannot link: the arm64 C library's development files are "
                        f"missing ({TOOLCHAIN_INSTALL})")
    return problems


def emulator_problem() -> str:
    """Why AArch64 code cannot run here (no ``qemu-aarch64`` on a machine that is not
    aarch64), with the install command; ``""`` when it can."""
    if emulation.needs_emulation() and emulation.qemu_path() is None:
        return (f"{emulation.QEMU} is not installed, and this {emulation.host_machine()} "
                f"machine needs it to run AArch64 code ({QEMU_INSTALL})")
    return ""


# --------------------------------------------------------------------------------------
# Compiled model
# --------------------------------------------------------------------------------------
class _LibraryFile:
    """An AArch64 library on disk; a temporary copy is removed when no model uses it."""

    def __init__(self, path: Path, *, temporary_dir: Path | None = None) -> None:
        self.path = path
        if temporary_dir is not None:
            weakref.finalize(self, shutil.rmtree, str(temporary_dir), True)


class TvmAarch64CompiledModel(CompiledModel):
    """A model TVM compiled to an AArch64 shared library.

    Runs in-process with TVM's Relax VM on an aarch64 machine, else under ``qemu-aarch64``
    in the emulation root (``emulated`` says which; ``last_run_ms`` is the emulated VM
    call's own time, ms). ``target_spec`` is the LLVM target in TVM's dict form;
    ``compile_s`` the compile time (s), linking included.
    """

    def __init__(
        self,
        target: str,
        model: Model,
        library: _LibraryFile,
        *,
        target_spec: Mapping[str, Any],
        options: Mapping[str, Any],
        profile_name: str | None = None,
        compile_s: float | None = None,
    ) -> None:
        super().__init__(target, model, options=options, profile_name=profile_name)
        self.library = library
        self.target_spec = dict(target_spec)
        self.compile_s = compile_s
        self.tuning: dict[str, Any] = {}
        self.emulated = emulation.needs_emulation()
        self._runner: emulation.EmulatedRunner | None = None
        self._main: Any = None
        self._input_names = [spec.name for spec in model.inputs]
        self._output_names = [spec.name for spec in model.outputs]

    @property
    def library_path(self) -> Path:
        """The AArch64 shared library this model runs (a private temporary copy, removed with it)."""
        return self.library.path

    @property
    def last_run_ms(self) -> float | None:
        """The last emulated call's time inside the VM (ms); ``None`` when run natively."""
        return self._runner.last_run_ms if self._runner is not None else None

    def _run(self, arrays: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        ordered = [np.ascontiguousarray(arrays[name]) for name in self._input_names]
        if self.emulated:
            if self._runner is None:
                self._runner = emulation.EmulatedRunner(self.library.path)
                weakref.finalize(self, self._runner.close)
            outputs = self._runner.run(ordered, threads=int(self.options["threads"]))
        else:
            outputs = self._run_native(ordered)
        return dict(zip(self._output_names, outputs, strict=True))

    def _run_native(self, ordered: list[np.ndarray]) -> list[np.ndarray]:
        import tvm
        from tvm import relax

        if self._main is None:
            try:
                with tvm_env.native_warnings_captured():
                    library = tvm.runtime.load_module(str(self.library.path))
            except Exception as exc:
                raise ModelLoadError(
                    f"{self.library.path} cannot be loaded: {tvm_env.last_line(exc)}",
                    hint="it was built by another TVM version; compile again here",
                ) from None
            self._main = relax.VirtualMachine(library, tvm.cpu())["main"]
        tvm_env.set_runtime_threads(int(self.options["threads"]))
        try:
            result = self._main(*[tvm.runtime.tensor(a) for a in ordered])
        except Exception as exc:
            raise GreenccError(
                f"the TVM-compiled model failed while running: {tvm_env.last_line(exc)}",
                hint="please report it with the model; compile for ort-cpu meanwhile",
            ) from None
        values = [result] if isinstance(result, tvm.runtime.Tensor) else list(result)
        return [value.numpy() for value in values]

    def benchmark(self, feeds: Mapping[str, Any] | None = None, **kwargs: Any) -> Any:
        """Latency per call (ms), as ``CompiledModel.benchmark``; under emulation it times
        qemu on this machine (and the transfer of inputs and outputs), not an Arm CPU, and
        warns so."""
        if self.emulated:
            warnings.warn(
                "tvm-aarch64 runs under qemu-user here: its latency is the emulator's, not an "
                "Arm CPU's (the cost model's arm-cortex-a76 estimate is the one to read)",
                RuntimeWarning, stacklevel=2,
            )
        return super().benchmark(feeds, **kwargs)

    def with_options(self, **options: Any) -> TvmAarch64CompiledModel:
        """A copy running with another ``threads`` count (other options need a new compile)."""
        changed = {k for k, v in options.items() if self.options.get(k) != v}
        if changed - {"threads"}:
            return super().with_options(**options)  # raises UsageError naming them
        checked = TvmAarch64(**{**self.options, **options}).options
        return type(self)(
            self.target, self.model, self.library, target_spec=self.target_spec, options=checked,
            profile_name=self.profile_name, compile_s=self.compile_s,
        )

    def close(self) -> None:
        """Stop the emulation worker, if one runs (it also stops when the model is collected)."""
        if self._runner is not None:
            self._runner.close()
            self._runner = None

    def _save_artifact(self, directory: Path) -> list[str]:
        shutil.copyfile(self.library.path, directory / LIBRARY_FILE)
        check_aarch64_elf(directory / LIBRARY_FILE)
        save_model(self.model.ir, directory / MODEL_FILE)
        meta = {"target": self.target_spec, "compile_s": self.compile_s, "tuning": {}}
        (directory / TARGET_FILE).write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
        names = [LIBRARY_FILE, MODEL_FILE, TARGET_FILE, DATA_FILE]
        return [name for name in names if (directory / name).is_file()]

    @classmethod
    def _load_artifact(cls, directory: Path, manifest: dict[str, Any]) -> TvmAarch64CompiledModel:
        meta, spec = read_artifact_meta(directory, manifest)
        if not str(spec.get("mtriple", "")).startswith("aarch64"):
            raise ModelLoadError(f"{directory / TARGET_FILE} does not describe an AArch64 target", hint="compile again")
        check_aarch64_elf(directory / LIBRARY_FILE)
        # A private copy: saving another artifact over this directory must not pull the
        # library from under a worker that starts later.
        private = Path(tempfile.mkdtemp(prefix="greencc-aarch64-"))
        shutil.copyfile(directory / LIBRARY_FILE, private / LIBRARY_FILE)
        compile_s = meta.get("compile_s")
        return cls(
            manifest["target"], load(directory / MODEL_FILE),
            _LibraryFile(private / LIBRARY_FILE, temporary_dir=private), target_spec=spec,
            options=manifest["options"], profile_name=manifest.get("profile"),
            compile_s=compile_s if isinstance(compile_s, (int, float)) else None,
        )


# --------------------------------------------------------------------------------------
# Target
# --------------------------------------------------------------------------------------
@register_target("tvm-aarch64")
class TvmAarch64(Target):
    """Apache TVM cross-compiling for AArch64 Linux (NEON; SVE with ``sve=True``).

    Options: ``threads`` (runtime threads and LLVM's ``num-cores``; default all cores
    here), ``mcpu`` (LLVM AArch64 CPU name, default ``cortex-a76``), ``sve`` (add the
    Scalable Vector Extension, default off: Cortex-A76 has none), ``cc`` (the C compiler
    that links the library, default ``aarch64-linux-gnu-gcc``). Outputs are checked under
    ``qemu-aarch64`` on other machines; latency measured there is the emulator's.
    """

    description = "Apache TVM (Relax + LLVM) cross-compiled for AArch64; qemu-user runs it elsewhere"
    profile_name = "arm-cortex-a76"
    default_options: dict[str, Any] = {"threads": None, "mcpu": DEFAULT_MCPU, "sve": False, "cc": None}
    compiled_model_class = TvmAarch64CompiledModel

    # Which nodes TVM's importer converts does not depend on the CPU it compiles for.
    capability = TvmLlvm.capability

    def check_options(self, options: Mapping[str, Any]) -> dict[str, Any]:
        """Validate ``threads`` (positive int), ``mcpu`` (a name), ``sve`` (bool), ``cc``."""
        checked = super().check_options(options)
        label = f"target '{self.name or 'tvm-aarch64'}'"
        threads = checked["threads"] if checked["threads"] is not None else tvm_env.default_threads()
        checked["threads"] = _positive_int(threads, f"{label}: threads", minimum=1)
        if not isinstance(checked["mcpu"], str) or not checked["mcpu"]:
            raise UsageError(f"{label}: mcpu must be an LLVM AArch64 CPU name",
                             hint="e.g. mcpu='cortex-a76', 'neoverse-n1' or 'generic'")
        if not isinstance(checked["sve"], bool):
            raise UsageError(f"{label}: sve={checked['sve']!r} must be true or false", hint="e.g. sve=True")
        if checked["cc"] is None:
            checked["cc"] = default_cc()
        if not isinstance(checked["cc"], str) or not checked["cc"]:
            raise UsageError(f"{label}: cc must name a C compiler", hint=f"e.g. cc='{CROSS_CC}'")
        return checked

    def available(self) -> Availability:
        """Available when TVM (with LLVM) imports, the AArch64 C compiler links, and — on a
        machine that is not aarch64 — ``qemu-aarch64`` is installed. The reason names each
        missing piece with its install command. The emulation root is checked when the
        model first runs (it is not needed to compile and save)."""
        problems = compiler_problems(self.options["cc"])
        if emulator_problem():
            problems.append(emulator_problem())
        if problems:
            return Availability(False, "; ".join(problems))
        return Availability(True)

    def target_spec(self) -> dict[str, Any]:
        """The LLVM target in TVM's dict form: ``{"kind": "llvm", "mtriple":
        "aarch64-linux-gnu", "mcpu": "cortex-a76", "mattr": ["+neon"], "num-cores": N}``."""
        mattr = ["+neon", "+sve"] if self.options["sve"] else ["+neon"]
        return {"kind": "llvm", "mtriple": TRIPLE, "mcpu": self.options["mcpu"], "mattr": mattr,
                "num-cores": int(self.options["threads"])}

    def lower(self, model: Model, ctx: PassContext | None = None) -> TvmAarch64CompiledModel:
        """Cross-compile ``model`` into an AArch64 shared library; ``ctx.dims`` binds symbolic
        dims (1 when unbound). Raises ``UnsupportedOpError`` naming a node TVM cannot import,
        ``UsageError`` for a CPU LLVM does not know, ``TargetUnavailableError`` without TVM
        or the cross compiler (running under emulation is checked when the model runs)."""
        # Compiling needs no emulator: a machine without qemu can still build and save.
        problems = compiler_problems(self.options["cc"])
        if problems:
            raise TargetUnavailableError(
                f"target '{self.name}' cannot compile here: {'; '.join(problems)}",
                hint="run `greencc targets` to see what this machine can run",
            )
        from tvm.target.codegen import llvm_is_valid_cpu


        spec = self.target_spec()
        if spec["mcpu"] != "generic" and not llvm_is_valid_cpu(spec["mcpu"], TRIPLE):
            raise UsageError(f"target '{self.name}': LLVM knows no AArch64 CPU '{spec['mcpu']}'",
                             hint="e.g. mcpu='cortex-a76', 'cortex-a55', 'neoverse-n1' or 'generic'")
        started = time.perf_counter()
        prepared = prepare_for_tvm(model, _dims_for(model, ctx))
        with tvm_env.native_warnings_captured():
            relax_mod = to_relax(prepared)
        target = tvm_env.make_target(spec)
        executable = build_checked(fused_module(relax_mod, target), target, f"the model for AArch64 ({spec['mcpu']})")
        library = self._link(executable)
        return TvmAarch64CompiledModel(
            self.name, prepared, library, target_spec=spec, options=self.options,
            profile_name=self.selected_profile_name, compile_s=time.perf_counter() - started,
        )

    def _link(self, executable: Any) -> _LibraryFile:
        """Export ``executable`` as a shared library linked by the AArch64 C compiler."""
        directory = Path(tempfile.mkdtemp(prefix="greencc-aarch64-"))
        path = directory / LIBRARY_FILE
        try:
            with tvm_env.native_warnings_captured():
                executable.export_library(str(path), cc=self.options["cc"])
            check_aarch64_elf(path)
        except Exception as exc:
            shutil.rmtree(directory, ignore_errors=True)
            if isinstance(exc, GreenccError):
                raise
            raise GreenccError(
                f"linking the AArch64 library with '{self.options['cc']}' failed: {tvm_env.last_line(exc)}",
                hint=f"check the cross toolchain ({TOOLCHAIN_INSTALL})",
            ) from None
        return _LibraryFile(path, temporary_dir=directory)


__all__ = [
    "EM_AARCH64", "TvmAarch64", "TvmAarch64CompiledModel", "check_aarch64_elf", "compiler_problems",
    "default_cc", "elf_machine", "emulator_problem",
]
