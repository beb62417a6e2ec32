"""The ``asic-int8`` target: a parametric int8 systolic-array accelerator (its hardware
profile's ``supports.systolic_array``) beside a host CPU, lowered through TVM.

The int8 GEMM/conv groups and quantization ops of a QDQ (or dynamic int8) graph become
packed calls into a bit-exact functional simulator that counts cycles, MACs and bytes per
memory level (``asic_graph``, ``asic_relax``, ``asic_sim``); everything else is compiled
for the host by TVM LLVM, visibly (``capability`` names each host node and why). A run
leaves its simulated figures in ``compiled.simulation`` and in the report (``lower`` runs
once on seeded random feeds, so a compile's ledger has them: they depend on shapes only).
"""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from greencc.cost.profile import HardwareProfile
from greencc.errors import GreenccError, ModelLoadError, UnsupportedOpError, UsageError
from greencc.frontend.onnx_file import load
from greencc.ir import to_self_contained_proto
from greencc.ir.io import save_model
from greencc.ir.shapes import symbolic_dims, with_static_inputs
from greencc.pipeline.context import PassContext
from greencc.pipeline.manager import PassManager
from greencc.target import (
    FALLBACK_PREFIX,
    UNSUPPORTED,
    Availability,
    CompiledModel,
    Partition,
    Target,
    group_partitions,
    register_target,
)
from greencc.targets.asic.graph import AsicCall, accelerator_proto, node_names, plan
from greencc.targets.asic.relax import (
    AcceleratorSession,
    active,
    register_packed_function,
    to_relax,
)
from greencc.targets.asic.sim import SystolicSimulator
from greencc.targets.asic.spec import SystolicArraySpec
from greencc.targets.tvm import env as tvm_env
from greencc.targets.tvm.build import build_checked, fused_module
from greencc.targets.tvm.onnx_import import tvm_supported_ops
from greencc.verify.feeds import random_feeds

if TYPE_CHECKING:
    from greencc.cost.profile import HardwareProfile
    from greencc.model import Model
    from greencc.pipeline.context import PassContext
    from greencc.targets.asic.graph import AsicCall, Placement
    from greencc.targets.asic.relax import AcceleratorSession
    from greencc.targets.asic.sim import SimulationSummary
    from greencc.targets.asic.spec import SystolicArraySpec

LIBRARY_FILE = "model.so"
MODEL_FILE = "model.onnx"
DATA_FILE = f"{MODEL_FILE}.data"
ASIC_FILE = "asic.json"
ASIC_FILE_MAX_BYTES = 16 << 20  # untrusted input: refuse absurd sizes before reading
HOST = "tvm-llvm"  # what runs the nodes the accelerator does not
# tvm_import's preparation (static shapes, shape arithmetic folded), except that results of
# 256 bytes or more stay computed: folding would turn DequantizeLinear(int8 weight) into a
# float weight and hide the int8 product from the accelerator (quantize-int8 leaves
# weights under 64 elements, 256 float32 bytes, in float).
PREPARE_PIPELINE = "simplify-shapes,fold-constants{max_size=255},remove-identity,cse,dce"


class AsicCompiledModel(CompiledModel):
    """A model lowered for the accelerator: a TVM executable whose accelerator calls run in
    the simulator. ``calls`` are the accelerator calls, ``host_nodes`` the nodes the host
    CPU runs (node -> why), ``array`` the accelerator, ``hardware`` its profile;
    ``simulation`` holds the figures of the last run (``None`` before the first)."""

    def __init__(self, target: str, model: Model, executable: Any, *, calls: list[AsicCall],
                 host_nodes: Mapping[str, str], hardware: HardwareProfile, target_spec: Mapping[str, Any],
                 options: Mapping[str, Any], profile_name: str | None = None,
                 compile_s: float | None = None) -> None:

        super().__init__(target, model, options=options, profile_name=profile_name)
        self.executable = executable
        self.calls = list(calls)
        self.host_nodes = dict(host_nodes)
        self.hardware = hardware
        self.array: SystolicArraySpec = SystolicArraySpec.from_profile(hardware)
        self.target_spec = dict(target_spec)
        self.compile_s = compile_s
        self.simulation: SimulationSummary | None = None
        register_packed_function()
        import tvm
        from tvm import relax

        self._main = relax.VirtualMachine(executable, tvm.cpu())["main"]

    @property
    def report(self) -> Any:
        """The compile's ledger; attaching one gives it this model's simulated figures."""
        return self._report

    @report.setter
    def report(self, value: Any) -> None:
        self._report = value
        if value is not None and getattr(self, "simulation", None) is not None and hasattr(value, "simulated"):
            value.simulated = self.simulated_figures()

    def simulate(self, feeds: Mapping[str, Any] | None = None) -> SimulationSummary:
        """Run once (on seeded random feeds when ``None``) and return the simulated figures.
        Cycles, MACs, bytes and energy depend on the shapes only, not on the values."""
        if feeds is None:

            feeds = random_feeds(self.model, seed=0)
        self(feeds)
        assert self.simulation is not None
        return self.simulation

    def session(self, *, trace: bool = False) -> AcceleratorSession:
        """A fresh accelerator session (simulator and counters) for one run."""

        return AcceleratorSession({c.call_id: c for c in self.calls},
                                  SystolicSimulator(self.array, self.hardware.name), trace=trace)

    def _run(self, arrays: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return self._run_in(self.session(), arrays)

    def run_traced(self, feeds: Mapping[str, Any]) -> tuple[dict[str, np.ndarray], AcceleratorSession]:
        """Run and keep every accelerator call's inputs and outputs (``session.records``),
        for bit-exact checks against the reference (``asic_reference.check_calls``)."""
        session = self.session(trace=True)
        return self._run_in(session, self.check_feeds(feeds)), session

    def _run_in(self, session: AcceleratorSession, arrays: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        import tvm


        tvm_env.set_runtime_threads(int(self.options["threads"]))
        args = [tvm.runtime.tensor(np.ascontiguousarray(arrays[s.name])) for s in self.model.inputs]
        with active(session):
            try:
                result = self._main(*args)
            except Exception as exc:
                if session.error is not None:
                    raise session.error from None
                if isinstance(exc, GreenccError):
                    raise
                lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
                raise GreenccError(  # TVM's own failure: its last line says what went wrong
                    f"the asic-int8 model failed while running: {lines[-1] if lines else type(exc).__name__}",
                    hint="please report it with the model",
                ) from None
        outputs = [result] if isinstance(result, tvm.runtime.Tensor) else list(result)
        self.simulation = session.simulator.summary()
        if self.report is not None and hasattr(self.report, "simulated"):
            self.report.simulated = self.simulated_figures()
        return {s.name: v.numpy() for s, v in zip(self.model.outputs, outputs, strict=True)}

    def simulated_figures(self) -> dict[str, Any] | None:
        """The last run's simulated figures with the host's share, as the report holds them."""
        if self.simulation is None:
            return None
        return {**self.simulation.to_dict(), "host": dict(self.host_nodes)}

    def with_options(self, **options: Any) -> AsicCompiledModel:
        """A copy running with another host ``threads`` count."""
        changed = {k for k, v in options.items() if self.options.get(k) != v}
        if changed - {"threads"}:
            return super().with_options(**options)  # type: ignore[return-value]
        return type(self)(self.target, self.model, self.executable, calls=self.calls,
                          host_nodes=self.host_nodes, hardware=self.hardware, target_spec=self.target_spec,
                          options={**self.options, **options}, profile_name=self.profile_name,
                          compile_s=self.compile_s)

    def _save_artifact(self, directory: Path) -> list[str]:
        if shutil.which("g++") is None and shutil.which("gcc") is None:
            raise UsageError("saving an asic-int8 model needs a C compiler to link the host library",
                             hint="install gcc (e.g. apt-get install gcc)")
        with tvm_env.native_warnings_captured():
            self.executable.export_library(str(directory / LIBRARY_FILE))
        save_model(self.model.ir, directory / MODEL_FILE)
        meta = {"target": self.target_spec, "compile_s": self.compile_s, "hardware": self.hardware.to_dict(),
                "calls": [c.to_dict() for c in self.calls], "host_nodes": self.host_nodes}
        (directory / ASIC_FILE).write_text(json.dumps(meta, indent=1) + "\n", encoding="utf-8")
        return [n for n in (LIBRARY_FILE, MODEL_FILE, ASIC_FILE, DATA_FILE) if (directory / n).is_file()]

    @classmethod
    def _load_artifact(cls, directory: Path, manifest: dict[str, Any]) -> AsicCompiledModel:
        import tvm


        for name in (LIBRARY_FILE, MODEL_FILE, ASIC_FILE):
            if name not in manifest["files"] or not (directory / name).is_file():
                raise ModelLoadError(f"{directory}: artifact file '{name}' is missing",
                                     hint="the artifact is incomplete; compile again")
        path = directory / ASIC_FILE
        try:
            if path.stat().st_size > ASIC_FILE_MAX_BYTES:
                raise ValueError(f"{path.stat().st_size} bytes is too large")
            meta = json.loads(path.read_text(encoding="utf-8"))
            calls = [AsicCall.from_dict(c) for c in meta["calls"]]
            hardware = HardwareProfile.from_dict(meta["hardware"], origin=str(path))
            spec, host = dict(meta["target"]), {str(k): str(v) for k, v in meta["host_nodes"].items()}
        except GreenccError as exc:
            raise ModelLoadError(f"{path}: {exc.message}", hint="compile again") from None
        except (ValueError, KeyError, TypeError, AttributeError, UnicodeDecodeError) as exc:
            raise ModelLoadError(f"{path} is not valid: {exc}", hint="compile again") from None
        try:
            with tvm_env.native_warnings_captured():
                library = tvm.runtime.load_module(str(directory / LIBRARY_FILE))
        except Exception as exc:
            raise ModelLoadError(f"{directory}/{LIBRARY_FILE} cannot be loaded: {exc}",
                                 hint="it was built for another machine or TVM version; compile again") from None
        return cls(manifest["target"], load(directory / MODEL_FILE), library, calls=calls, host_nodes=host,
                   hardware=hardware, target_spec=spec, options=manifest["options"],
                   profile_name=manifest.get("profile"), compile_s=meta.get("compile_s"))


@register_target("asic-int8")
class AsicInt8(Target):
    """An int8 systolic-array accelerator (simulated) with a host CPU (TVM LLVM).

    The hardware is the profile's ``supports.systolic_array`` (``asic-int8-systolic``: a
    128×128 array at 1 GHz); a variant is a subclass pinning another profile (see
    ``examples/custom_target.py``). Quantize first (``quantize-int8``, static or dynamic):
    float MatMuls run on the host. Options: ``threads`` (host TVM threads; default all
    cores), ``mcpu`` (host LLVM CPU; default this machine's).
    """

    description = "int8 systolic-array accelerator (functional simulator) + host CPU through TVM"
    profile_name = "asic-int8-systolic"
    default_options: dict[str, Any] = {"threads": None, "mcpu": None}
    compiled_model_class = AsicCompiledModel

    def check_options(self, options: Mapping[str, Any]) -> dict[str, Any]:
        """``threads`` a positive integer (default: all cores), ``mcpu`` an LLVM CPU name.
        ``batches`` (tvm-llvm's several batch sizes) is refused, saying why."""
        if "batches" in options:
            raise UsageError(
                f"target '{self.name or 'asic-int8'}' compiles one batch size: its accelerator calls, their "
                "tiling and the simulated cycles are planned for one shape, so an artifact holds one",
                hint="compile one artifact per batch size with --dim batch=N (tvm-llvm takes "
                "--target-option batches=1,8)",
            )
        checked = super().check_options(options)
        threads = checked["threads"] if checked["threads"] is not None else tvm_env.default_threads()
        if isinstance(threads, bool) or not isinstance(threads, int) or threads < 1:
            raise UsageError(f"target '{self.name or 'asic-int8'}': threads={threads!r} must be an integer >= 1",
                             hint="e.g. threads=2")
        checked["threads"] = threads
        if checked["mcpu"] is not None and not isinstance(checked["mcpu"], str):
            raise UsageError("mcpu must be an LLVM CPU name", hint="e.g. mcpu='znver4'")
        return checked

    def profile_by_name(self, name: str) -> HardwareProfile:  # type: ignore[override]
        """A built-in profile, or the one a subclass pins (so its artifacts reload)."""

        pinned = getattr(type(self), "profile", None)
        if isinstance(pinned, HardwareProfile) and pinned.name == name:
            return pinned
        return HardwareProfile.named(name)

    def available(self) -> Availability:
        """Available when TVM (the host compiler) imports with LLVM and the profile
        describes a systolic array."""
        availability = tvm_env.tvm_availability()
        if not availability.ok:
            return Availability(False, f"the host side needs TVM: {availability.reason}")
        try:
            self.array()
        except GreenccError as exc:
            return Availability(False, exc.message)
        return Availability(True)

    def array(self) -> SystolicArraySpec:
        """The accelerator of this target's profile (``UsageError`` when it has none)."""

        return SystolicArraySpec.from_profile(self.profile)

    def placement(self, model: Model) -> Placement:
        """Where each node of ``model`` runs (accelerator, host, unsupported)."""

        return plan(node_names(to_self_contained_proto(model.ir)), tvm_supported_ops())

    def capability(self, model: Model) -> list[Partition]:
        """Accelerator partitions, ``fallback:tvm-llvm`` for nodes the host CPU runs (TVM
        LLVM; the reason says why the accelerator does not), ``unsupported`` for nodes
        neither can run."""
        self.require_available()
        placement = self.placement(model)
        where = placement.where()
        verdicts = []
        for name in placement.order:
            place = where[name]
            if place == "asic":
                verdicts.append((name, self.name, ""))
            elif place == "host":
                verdicts.append((name, FALLBACK_PREFIX + HOST, placement.host[name]))
            else:
                verdicts.append((name, UNSUPPORTED, placement.unsupported[name]))
        return group_partitions(verdicts)

    def lower(self, model: Model, ctx: PassContext | None = None) -> AsicCompiledModel:
        """Compile for the accelerator and the host; ``ctx.dims`` binds symbolic dims (1
        when unbound). Raises ``UnsupportedOpError`` naming a node nothing here runs."""

        self.require_available()
        started = time.perf_counter()
        given = dict(ctx.dims) if ctx is not None else {}
        dims = {name: int(given.get(name, 1)) for name in symbolic_dims(model.ir)}
        prepared = _prepare(model, dims)
        proto = node_names(to_self_contained_proto(prepared.ir))
        placement = plan(proto, tvm_supported_ops())
        if placement.unsupported:
            name, reason = next(iter(placement.unsupported.items()))
            more = len(placement.unsupported) - 1
            raise UnsupportedOpError(
                f"target '{self.name}' cannot run node '{name}': {reason}" + (f"; {more} more such node(s)" if more else ""),
                hint="rewrite it into standard ONNX ops with a pass, or compile for ort-cpu")
        calls = {c.call_id: c for c in placement.calls}
        register_packed_function()
        with tvm_env.native_warnings_captured():
            relax_mod = to_relax(accelerator_proto(proto, placement), calls)
        spec = tvm_env.llvm_target_spec(self.options["threads"], self.options["mcpu"])
        target = tvm_env.make_target(spec)
        executable = build_checked(fused_module(relax_mod, target), target, f"the host part for {spec['mcpu']}")
        compiled = AsicCompiledModel(
            self.name, prepared, executable, calls=placement.calls, host_nodes=placement.host,
            hardware=self.profile, target_spec=spec, options=self.options,
            profile_name=self.selected_profile_name, compile_s=time.perf_counter() - started)
        # The counts depend on shapes only: one run now puts them in the ledger at compile time.
        compiled.simulate()
        return compiled


def _prepare(model: Model, dims: Mapping[str, int]) -> Model:
    """A static-shaped, cleaned-up copy of ``model`` that keeps its int8 weights int8."""

    static = with_static_inputs(model, dict(dims)) if dims else model.clone()
    return PassManager(PREPARE_PIPELINE).run(static, PassContext(verify=False))


__all__ = ["AsicCompiledModel", "AsicInt8"]
