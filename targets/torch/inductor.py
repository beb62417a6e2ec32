"""The ``torch-inductor`` target: the model lowered to a ``torch.fx`` module (``greencc.lowering``),
exported with ``torch.export`` (the IR's symbolic dims as ``torch.export.Dim``s) and compiled
ahead of time by Inductor into an AOTInductor package (``model.pt2``) that the artifact
carries and ``CompiledModel.load`` runs in any process with the same torch.

``device=cuda`` is the same code path on torch's CUDA device (and the driver's NVML meter);
it is available only where torch sees a CUDA device.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import tempfile
import time
import weakref
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from greencc.errors import GreenccError, ModelLoadError, UsageError
from greencc.frontend.onnx_file import load
from greencc.ir.io import save_model
from greencc.ir.shapes import symbolic_dims, with_static_inputs
from greencc.ir.traversal import node_label
from greencc.target import (
    UNSUPPORTED,
    Availability,
    CompiledModel,
    Partition,
    Target,
    group_partitions,
    node_id,
    register_target,
)
from greencc.verify.feeds import random_feeds

if TYPE_CHECKING:
    from greencc.model import Model
    from greencc.pipeline.context import PassContext

PACKAGE_FILE = "model.pt2"
MODEL_FILE = "model.onnx"
DATA_FILE = f"{MODEL_FILE}.data"
META_FILE = "inductor.json"
META_MAX_BYTES = 1 << 20  # untrusted input: refuse absurd sizes before reading
DEVICES = ("cpu", "cuda")
MODES = ("default", "max-autotune")
# torch.export specializes a dim whose example size is 0 or 1: examples are at least this.
MIN_EXAMPLE_SIZE = 2
# The compiled package against the lowered module on the example feeds (absolute, float32):
# Inductor reorders float reductions, so it is not bit-exact.
SELF_CHECK_TOLERANCE = 1e-3


class InductorCompiledModel(CompiledModel):
    """A model compiled by Inductor into an AOTInductor package, run by torch's package loader.

    ``package_path`` is the ``.pt2`` file; ``compile_s`` the export + compile time (s);
    ``model`` the greencc model it was lowered from (its signature is what calls are
    checked against: symbolic dims stay symbolic when the target was ``dynamic``).
    """

    def __init__(self, target: str, model: Model, package_path: Path, *, options: Mapping[str, Any],
                 profile_name: str | None = None, compile_s: float | None = None) -> None:
        super().__init__(target, model, options=options, profile_name=profile_name)
        self.package_path = Path(package_path)
        self.compile_s = compile_s
        self._runner = _load_package(self.package_path, self.options["device"])
        self._input_names = [spec.name for spec in model.inputs]
        self._output_names = [spec.name for spec in model.outputs]

    def _run(self, arrays: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        import torch

        torch.set_num_threads(int(self.options["threads"]))
        device = torch.device(self.options["device"])
        tensors = [torch.from_numpy(np.ascontiguousarray(arrays[name])).to(device) for name in self._input_names]
        with torch.no_grad():
            outputs = self._runner(*tensors)
        return {name: out.detach().cpu().numpy() for name, out in zip(self._output_names, outputs, strict=True)}

    def with_options(self, **options: Any) -> InductorCompiledModel:
        """A copy running with another ``threads`` count (other options need a new compile)."""
        changed = {k for k, v in options.items() if self.options.get(k) != v}
        if changed - {"threads"}:
            return super().with_options(**options)  # type: ignore[return-value]  # raises UsageError
        checked = TorchInductor(**{**self.options, **options}).options
        return type(self)(self.target, self.model, self.package_path, options=checked,
                          profile_name=self.profile_name, compile_s=self.compile_s)

    def _save_artifact(self, directory: Path) -> list[str]:
        import torch

        shutil.copyfile(self.package_path, directory / PACKAGE_FILE)
        save_model(self.model.ir, directory / MODEL_FILE)
        meta = {"torch": torch.__version__, "device": self.options["device"], "mode": self.options["mode"],
                "dynamic": self.options["dynamic"], "compile_s": self.compile_s}
        (directory / META_FILE).write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
        names = [PACKAGE_FILE, MODEL_FILE, DATA_FILE, META_FILE]
        return [name for name in names if (directory / name).is_file()]

    @classmethod
    def _load_artifact(cls, directory: Path, manifest: dict[str, Any]) -> CompiledModel:
        """The package of ``directory``, refused (``ModelLoadError``) when a file is missing or
        it was built by another torch version (AOTInductor packages are tied to it)."""
        import torch

        for name in (PACKAGE_FILE, MODEL_FILE, META_FILE):
            if name not in manifest["files"] or not (directory / name).is_file():
                raise ModelLoadError(f"{directory}: artifact file '{name}' is missing",
                                     hint="the artifact is incomplete; compile again")
        meta_path = directory / META_FILE
        if meta_path.stat().st_size > META_MAX_BYTES:
            raise ModelLoadError(f"{meta_path}: {meta_path.stat().st_size} bytes is too large for its metadata",
                                 hint="the artifact is corrupt; compile again")
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
        if meta.get("torch") != torch.__version__:
            raise ModelLoadError(
                f"{directory}: compiled by torch {meta.get('torch')}, this is torch {torch.__version__}",
                hint="AOTInductor packages run only on the torch that built them; compile again here",
            )
        options = dict(manifest["options"])
        if options.get("device") == "cuda" and not torch.cuda.is_available():
            raise ModelLoadError(f"{directory}: compiled for CUDA, and torch sees no CUDA device here",
                                 hint="load it on a machine with an NVIDIA GPU, or compile with device=cpu")
        return cls(manifest["target"], load(directory / MODEL_FILE), directory / PACKAGE_FILE,
                   options=options, profile_name=manifest.get("profile"), compile_s=meta.get("compile_s"))


def _load_package(path: Path, device: str) -> Any:
    import torch

    try:
        return torch._inductor.aoti_load_package(str(path))
    except Exception as exc:  # a corrupt or foreign package: torch raises RuntimeError or worse
        raise ModelLoadError(f"{path}: torch cannot load the AOTInductor package ({type(exc).__name__}: "
                             f"{str(exc).splitlines()[0] if str(exc) else ''})",
                             hint=f"compile again for device={device} with this torch") from None


@register_target("torch-inductor")
class TorchInductor(Target):
    """PyTorch Inductor, ahead of time: the lowered module exported and compiled into an
    AOTInductor package.

    Options: ``device`` (``cpu``, or ``cuda`` where torch sees a GPU), ``mode``
    (``default``, or ``max-autotune``: Inductor benchmarks GEMM templates and picks the
    fastest, a longer compile), ``dynamic`` (default true: the IR's symbolic dims stay
    symbolic, one package runs every size; false binds them to the compile's dims), and
    ``threads`` (CPU threads at run time; default all cores).
    """

    description = "PyTorch Inductor via torch.export + AOTInductor (CPU; CUDA where a GPU exists)"
    profile_name = "x86-avx512"
    default_options: dict[str, Any] = {"device": "cpu", "mode": "default", "dynamic": True, "threads": None}
    compiled_model_class = InductorCompiledModel

    def check_options(self, options: Mapping[str, Any]) -> dict[str, Any]:
        """Validate ``device`` and ``mode`` (one of theirs), ``dynamic`` (a boolean) and
        ``threads`` (1 to cores x 4, default ``os.cpu_count()``)."""
        checked = super().check_options(options)
        label = "target 'torch-inductor'"
        for key, allowed in (("device", DEVICES), ("mode", MODES)):
            if str(checked[key]) not in allowed:
                raise UsageError(f"{label}: {key}={checked[key]!r} is not one of {', '.join(allowed)}",
                                 hint=f"e.g. {key}={allowed[0]}")
            checked[key] = str(checked[key])
        checked["dynamic"] = _boolean(checked["dynamic"], f"{label}: dynamic")
        checked["threads"] = checked["threads"] if checked["threads"] is not None else os.cpu_count() or 1
        return checked

    @property
    def device(self) -> str:
        """Where the work runs, as the energy meters name it (``cpu`` or ``gpu``)."""
        return "gpu" if self.options["device"] == "cuda" else "cpu"

    def available(self) -> Availability:
        """Available when torch is installed, a C++ compiler exists (Inductor compiles C++ on
        the CPU and the package wrapper on either device), and for ``cuda`` a CUDA device."""
        if importlib.util.find_spec("torch") is None:
            return Availability(False, "torch is not installed (pip install 'greencc[torch]')")
        if shutil.which("g++") is None and shutil.which("c++") is None:
            return Availability(False, "Inductor needs a C++ compiler (g++) to build its kernels")
        if self.options["device"] == "cuda":
            import torch

            if not torch.cuda.is_available():
                return Availability(False, "device=cuda: torch sees no CUDA device on this machine")
        return Availability(True)

    def capability(self, model: Model) -> list[Partition]:
        """Every node the lowering converts is claimed; others are ``unsupported`` (the whole
        graph runs in one package, so there is no fallback to ONNX Runtime)."""
        from greencc.lowering.registry import lookup

        verdicts = []
        for index, node in enumerate(model.graph):
            if node.op_type == "Constant" or lookup(node.domain, node.op_type) is not None:
                verdicts.append((node_id(node, index), self.name, ""))
            else:
                op = node.op_type if node.domain in ("", "ai.onnx") else f"{node.domain}::{node.op_type}"
                reason = f"op '{op}' at node {node_label(node)}: greencc cannot lower it to torch"
                verdicts.append((node_id(node, index), UNSUPPORTED, reason))
        return group_partitions(verdicts)

    def lower(self, model: Model, ctx: PassContext | None = None) -> CompiledModel:
        """Lower ``model`` to torch, export it (symbolic dims as ``torch.export.Dim`` when
        ``dynamic``, else bound to ``ctx.dims``) and compile an AOTInductor package; the
        package is checked against the lowered module on random feeds. Raises
        ``UnsupportedOpError`` for an op the lowering lacks and ``GreenccError`` when torch
        cannot export or compile the module."""
        import torch

        self.require_available()
        started = time.perf_counter()
        dims = _example_dims(model, ctx)
        if not self.options["dynamic"] and symbolic_dims(model.ir):
            model = with_static_inputs(model, dims)
        from greencc.lowering import lower_to_torch

        lowered = lower_to_torch(model, trainable=False)
        device = torch.device(self.options["device"])
        module = lowered.module.to(device)
        feeds = random_feeds(model, seed=ctx.seed if ctx is not None else 0, dims=dims)
        example = tuple(torch.from_numpy(np.ascontiguousarray(feeds[name])).to(device) for name in lowered.input_names)
        directory = Path(tempfile.mkdtemp(prefix="greencc-inductor-"))
        try:
            exported = torch.export.export(module, example, dynamic_shapes=_dynamic_shapes(model), strict=False)
            configs = {"max_autotune": self.options["mode"] == "max-autotune"}
            package = torch._inductor.aoti_compile_and_package(
                exported, package_path=str(directory / PACKAGE_FILE), inductor_configs=configs)
        except GreenccError:
            raise
        except Exception as exc:  # torch's export/compile errors have no common base class
            shutil.rmtree(directory, ignore_errors=True)
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise GreenccError(f"torch-inductor could not compile the model: {type(exc).__name__}: {first}",
                               hint="try dynamic=false (sizes bound to --dims), or compile for ort-cpu") from exc
        compiled = InductorCompiledModel(self.name, model, Path(package), options=self.options,
                                         profile_name=self.selected_profile_name,
                                         compile_s=time.perf_counter() - started)
        weakref.finalize(compiled, shutil.rmtree, directory, True)
        _self_check(compiled, lowered, feeds)
        return compiled


def _boolean(value: Any, what: str) -> bool:
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in ("true", "1", "yes", "on"):
        return True
    if text in ("false", "0", "no", "off"):
        return False
    raise UsageError(f"{what}={value!r} is not a boolean", hint="true or false")


def _example_dims(model: Model, ctx: PassContext | None) -> dict[str, int]:
    """Example sizes for the symbolic dims: the context's (at least 2, which torch.export
    needs to keep a dim symbolic), else 2."""
    given = dict(ctx.dims) if ctx is not None else {}
    return {name: max(MIN_EXAMPLE_SIZE, int(given.get(name, MIN_EXAMPLE_SIZE))) for name in symbolic_dims(model.ir)}


def _dynamic_shapes(model: Model) -> tuple[dict[int, Any] | None, ...] | None:
    """``torch.export`` dynamic shapes: one ``Dim`` per symbolic dim name, shared by every
    input axis that carries it; None when every dim is static."""
    import torch

    named: dict[str, Any] = {}
    shapes: list[dict[int, Any] | None] = []
    for spec in model.inputs:
        axes = {axis: named.setdefault(dim, torch.export.Dim(_dim_identifier(dim), min=1))
                for axis, dim in enumerate(spec.shape or ()) if isinstance(dim, str)}
        shapes.append(axes or None)
    return tuple(shapes) if named else None


def _dim_identifier(name: str) -> str:
    """A dim name torch.export accepts (a Python identifier)."""
    cleaned = "".join(c if c.isalnum() or c == "_" else "_" for c in name)
    return cleaned if cleaned and not cleaned[0].isdigit() else f"d_{cleaned}"


def _self_check(compiled: InductorCompiledModel, lowered: Any, feeds: Mapping[str, np.ndarray]) -> None:
    """Refuse a package whose outputs differ from the lowered module's on ``feeds``."""
    import torch

    got = compiled._run(dict(feeds))
    with torch.no_grad():
        want = lowered.run(feeds)
    for name, expected in want.items():
        if expected.dtype.kind != "f":
            continue
        error = float(np.abs(got[name].astype(np.float64) - expected).max()) if expected.size else 0.0
        if not error <= SELF_CHECK_TOLERANCE:
            raise GreenccError(
                f"torch-inductor: output '{name}' of the compiled package differs from the lowered "
                f"module by {error:.3g} (tolerance {SELF_CHECK_TOLERANCE})",
                hint="please report it with the model; compile for ort-cpu meanwhile",
            )


__all__ = ["InductorCompiledModel", "TorchInductor"]
