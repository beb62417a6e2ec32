"""The ``tvm-llvm`` target: Apache TVM (Relax + LLVM) on the host CPU.

greencc prepares a static-shaped graph TVM can import (``tvm_import``), TVM legalizes and
fuses it into TIR kernels, every kernel gets a CPU schedule — tuned by MetaSchedule when a
tuning budget is given (``tvm_tuning``), else greencc's default rules (``tvm_schedules``) —
and LLVM compiles it for this machine's CPU. The artifact is a shared library run by TVM's
Relax VM. A decoder keeps symbolic batch and sequence lengths, so one build runs prefill and
decode (``symbolic.py``), and ``generate`` keeps its KV cache in TVM tensors (``decoding.py``).
"""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from greencc.errors import GreenccError, InputMismatchError, ModelLoadError, UsageError
from greencc.frontend.onnx_file import load
from greencc.ir.io import save_model
from greencc.ir.shapes import symbolic_dims
from greencc.ir.traversal import node_label
from greencc.model import DecoderSpec
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
from greencc.target.generation import decoder_spec_or_raise
from greencc.targets.tvm import env as tvm_env
from greencc.targets.tvm.batches import (
    BatchDispatchModel,
    batch_axes,
    batch_dim,
    parse_batches,
    signature_model,
)
from greencc.targets.tvm.build import build_checked, fused_module
from greencc.targets.tvm.decoding import TvmDecodeSession
from greencc.targets.tvm.onnx_import import prepare_for_tvm, to_relax, tvm_supported_ops
from greencc.targets.tvm.tuning import tune

if TYPE_CHECKING:
    from greencc.model import Model
    from greencc.pipeline.context import PassContext
    from greencc.pipeline.progress import ProgressReporter

MODEL_STEM = "model"  # model.so (the TVM library) and model.onnx (what it was compiled from)
LIBRARY_FILE = f"{MODEL_STEM}.so"
MODEL_FILE = f"{MODEL_STEM}.onnx"
DATA_FILE = f"{MODEL_FILE}.data"
TARGET_FILE = "tvm_target.json"
TARGET_FILE_MAX_BYTES = 1 << 20  # untrusted input: refuse absurd sizes before reading


class TvmCompiledModel(CompiledModel):
    """A model compiled by TVM for an LLVM target, run by TVM's Relax virtual machine.

    ``executable`` is the TVM executable (or a loaded library); ``target_spec`` the LLVM
    target it was built for, in TVM's dict form; ``model`` the static-shaped greencc model
    it was compiled from (its signature is what calls are checked against);
    ``compile_s`` and ``tuning`` record compile time (s) and what tuning did.
    """

    def __init__(
        self,
        target: str,
        model: Model,
        executable: Any,
        *,
        target_spec: Mapping[str, Any],
        options: Mapping[str, Any],
        profile_name: str | None = None,
        compile_s: float | None = None,
        tuning: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__(target, model, options=options, profile_name=profile_name)
        self.executable = executable
        self.target_spec = dict(target_spec)
        self.compile_s = compile_s
        self.tuning = dict(tuning or {})
        self._vm = self._make_vm()
        self._main = self._vm["main"]
        self._input_names = [spec.name for spec in model.inputs]
        self._output_names = [spec.name for spec in model.outputs]
        self._decoder = DecoderSpec.of(model)

    def _make_vm(self) -> Any:
        import tvm
        from tvm import relax

        return relax.VirtualMachine(self.executable, tvm.cpu())

    def check_feeds(self, feeds: Mapping[str, Any]) -> dict[str, np.ndarray]:
        """Validate ``feeds`` against the signature; a decoder's ``attention_mask`` must also
        span the past and the new tokens (its Relax shape is ``past_seq + seq``)."""
        arrays = super().check_feeds(feeds)
        if self._decoder is not None:
            total = arrays["attention_mask"].shape[1]
            past = arrays[self._decoder.past_names()[0]].shape[2]
            seq = arrays["input_ids"].shape[1]
            if total != past + seq:
                raise InputMismatchError(
                    f"attention_mask covers {total} positions but the past has {past} and "
                    f"input_ids {seq}",
                    hint="give one mask entry per cached and per new token (total_seq = past_seq + seq)",
                )
        return arrays

    def decode_session(self, batch: int, capacity: int) -> TvmDecodeSession:
        """A session running the decoder's one Relax function step by step, the KV cache
        kept in TVM tensors (``capacity`` is not needed: each step's graph concatenates the
        past and the new keys)."""
        spec = decoder_spec_or_raise(self)
        tvm_env.set_runtime_threads(int(self.options["threads"]))
        return TvmDecodeSession(self._main, self._input_names, self._output_names, spec, batch)

    def _run(self, arrays: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        import tvm

        tvm_env.set_runtime_threads(int(self.options["threads"]))
        args = [tvm.runtime.tensor(np.ascontiguousarray(arrays[name])) for name in self._input_names]
        try:
            result = self._main(*args)
        except Exception as exc:  # feeds were checked already: this is TVM's own failure
            raise GreenccError(
                f"the TVM-compiled model failed while running: {tvm_env.last_line(exc)}",
                hint="please report it with the model; compile for ort-cpu meanwhile",
            ) from None
        outputs = [result] if isinstance(result, tvm.runtime.Tensor) else list(result)
        return {
            name: value.numpy() for name, value in zip(self._output_names, outputs, strict=True)
        }

    def with_options(self, **options: Any) -> TvmCompiledModel:
        """A copy running with another ``threads`` count (other options need a new compile)."""
        changed = {k for k, v in options.items() if self.options.get(k) != v}
        if changed - {"threads"}:
            return super().with_options(**options)  # raises UsageError naming them
        checked = TvmLlvm(**{**self.options, **options}).options
        return type(self)(
            self.target, self.model, self.executable, target_spec=self.target_spec,
            options=checked, profile_name=self.profile_name, compile_s=self.compile_s,
            tuning=self.tuning,
        )

    def _save_artifact(self, directory: Path) -> list[str]:
        files = self.save_module(directory, MODEL_STEM)
        meta = {"target": self.target_spec, "compile_s": self.compile_s, "tuning": self.tuning}
        (directory / TARGET_FILE).write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
        return [*files, TARGET_FILE]

    def save_module(self, directory: Path, stem: str) -> list[str]:
        """Write the shared library ``<stem>.so`` and the model ``<stem>.onnx`` (and its
        ``.data``) into ``directory``; returns the names written."""
        if shutil.which("g++") is None and shutil.which("gcc") is None:
            raise UsageError(
                "saving a TVM-compiled model needs a C compiler to link the shared library",
                hint="install gcc (e.g. apt-get install gcc)",
            )
        with tvm_env.native_warnings_captured():
            self.executable.export_library(str(directory / f"{stem}.so"))
        save_model(self.model.ir, directory / f"{stem}.onnx")
        names = [f"{stem}.so", f"{stem}.onnx", f"{stem}.onnx.data"]
        return [name for name in names if (directory / name).is_file()]

    @classmethod
    def _load_artifact(cls, directory: Path, manifest: dict[str, Any]) -> CompiledModel:
        """The compiled model of ``directory``: one module, or one per batch size
        (:class:`TvmBatchedModel`) when its ``tvm_target.json`` lists ``batches``."""
        meta, spec = read_artifact_meta(directory, manifest, required=(TARGET_FILE,))  # modules: checked per batch
        _check_host_can_run(spec, directory)
        if "batches" in meta:
            return TvmBatchedModel.load_modules(directory, manifest, meta, spec)
        return cls.load_module(directory, MODEL_STEM, manifest, meta, spec)

    @classmethod
    def load_module(cls, directory: Path, stem: str, manifest: Mapping[str, Any], meta: Mapping[str, Any],
                    spec: Mapping[str, Any]) -> TvmCompiledModel:
        """One module saved by :meth:`save_module` as ``<stem>.so`` and ``<stem>.onnx``."""
        import tvm

        for name in (f"{stem}.so", f"{stem}.onnx"):
            if name not in manifest["files"] or not (directory / name).is_file():
                raise ModelLoadError(f"{directory}: artifact file '{name}' is missing",
                                     hint="the artifact is incomplete; compile again")
        try:
            with tvm_env.native_warnings_captured():
                library = tvm.runtime.load_module(str(directory / f"{stem}.so"))
        except Exception as exc:
            raise ModelLoadError(
                f"{directory}/{stem}.so cannot be loaded: {tvm_env.last_line(exc)}",
                hint="it was built for another machine or TVM version; compile again here",
            ) from None
        return cls(
            manifest["target"], load(directory / f"{stem}.onnx"), library, target_spec=spec,
            options=manifest["options"], profile_name=manifest.get("profile"),
            compile_s=meta.get("compile_s"), tuning=meta.get("tuning"),
        )


class TvmBatchedModel(BatchDispatchModel):
    """A ``tvm-llvm`` build with one TVM module per batch size (option ``batches``); each
    call runs on the module of its batch (see :class:`BatchDispatchModel`)."""

    def _save_artifact(self, directory: Path) -> list[str]:
        files: list[str] = []
        for batch, variant in self.variants.items():
            assert isinstance(variant, TvmCompiledModel)
            files += variant.save_module(directory, _batch_stem(batch))
        first = next(iter(self.variants.values()))
        assert isinstance(first, TvmCompiledModel)
        meta = {"target": first.target_spec, "batches": self.batches, "batch_dim": self.dim, "batch_axes": self.axes,
                "compile_s": {str(b): getattr(v, "compile_s", None) for b, v in self.variants.items()},
                "tuning": {str(b): getattr(v, "tuning", {}) for b, v in self.variants.items()}}
        (directory / TARGET_FILE).write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
        return [*files, TARGET_FILE]

    @classmethod
    def load_modules(cls, directory: Path, manifest: Mapping[str, Any], meta: Mapping[str, Any],
                     spec: Mapping[str, Any]) -> TvmBatchedModel:
        """The modules :meth:`_save_artifact` wrote, one per batch in ``meta["batches"]``."""
        try:
            batches = [int(b) for b in meta["batches"]]
            dim = str(meta["batch_dim"])
            axes = {side: {str(k): [int(a) for a in v] for k, v in meta["batch_axes"][side].items()}
                    for side in ("inputs", "outputs")}
            compile_s, tuning = dict(meta.get("compile_s") or {}), dict(meta.get("tuning") or {})
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise ModelLoadError(f"{directory}/{TARGET_FILE} has invalid batches: {exc}", hint="compile again") from None
        variants = {
            batch: TvmCompiledModel.load_module(
                directory, _batch_stem(batch), manifest,
                {"compile_s": compile_s.get(str(batch)), "tuning": tuning.get(str(batch))}, spec)
            for batch in batches
        }
        first = variants[batches[0]]
        return cls(manifest["target"], signature_model(first.model, dim, axes), variants, dim=dim, axes=axes,
                   options=manifest["options"], profile_name=manifest.get("profile"))


def _batch_stem(batch: int) -> str:
    return f"{MODEL_STEM}-b{batch}"


def read_artifact_meta(directory: Path, manifest: Mapping[str, Any],
                       required: Sequence[str] = (LIBRARY_FILE, MODEL_FILE, TARGET_FILE)) -> tuple[dict[str, Any], dict[str, Any]]:
    """Check that a TVM artifact's ``required`` files are there and read its
    ``tvm_target.json`` (an untrusted input: size-capped); returns the metadata and its
    target spec, or raises ``ModelLoadError`` saying what is missing or invalid."""
    for name in required:
        if name not in manifest["files"] or not (directory / name).is_file():
            raise ModelLoadError(
                f"{directory}: artifact file '{name}' is missing",
                hint="the artifact is incomplete; compile again",
            )
    meta_path = directory / TARGET_FILE
    try:
        if meta_path.stat().st_size > TARGET_FILE_MAX_BYTES:
            raise ValueError(f"{meta_path.stat().st_size} bytes is too large")
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as exc:
        raise ModelLoadError(f"{meta_path} is not valid: {exc}", hint="compile again") from None
    spec = meta.get("target") if isinstance(meta, dict) else None
    if not isinstance(spec, dict):
        raise ModelLoadError(f"{directory}/{TARGET_FILE} has no target", hint="compile again")
    return meta, spec


def _check_host_can_run(spec: Mapping[str, Any], directory: Path) -> None:
    """Refuse a library built for another architecture before it crashes the process."""
    import platform

    triple = str(spec.get("mtriple") or "")
    machine = platform.machine().lower()
    aliases = {"amd64": "x86_64", "arm64": "aarch64"}
    machine = aliases.get(machine, machine)
    if triple and aliases.get(triple.split("-")[0], triple.split("-")[0]) != machine:
        raise ModelLoadError(
            f"{directory} was compiled for {triple}, which this {machine} machine cannot run",
            hint="run it on that hardware (or under emulation)",
        )


@register_target("tvm-llvm")
class TvmLlvm(Target):
    """Apache TVM on the host CPU through LLVM, with default or MetaSchedule-tuned schedules.

    Options: ``threads`` (runtime threads; default all cores here), ``mcpu`` (LLVM CPU name;
    default this machine's, e.g. ``znver4``), ``tune_budget_s`` (MetaSchedule tuning time in
    s; 0, the default, builds with greencc's default schedules), ``tune_trials`` (trials per
    tuned kernel, default 64), ``cache_dir`` (tuning record cache; default
    ``$GREENCC_CACHE_DIR/tvm``), ``batches`` (batch sizes, e.g. ``"1,8"``: one module per
    size, each call runs on its batch's; default one module at the compile's dims).
    """

    description = "Apache TVM (Relax + LLVM) on this CPU: default schedules, or MetaSchedule-tuned"
    profile_name = tvm_env.host_profile_name()
    default_options: dict[str, Any] = {
        "threads": None,
        "mcpu": None,
        "tune_budget_s": 0.0,
        "tune_trials": 64,
        "cache_dir": None,
        "batches": None,
    }
    compiled_model_class = TvmCompiledModel

    def check_options(self, options: Mapping[str, Any]) -> dict[str, Any]:
        """Validate ``threads`` (positive int), ``tune_budget_s`` (>= 0), ``tune_trials`` (>= 1)."""
        checked = super().check_options(options)
        label = f"target '{self.name or 'tvm-llvm'}'"
        threads = checked["threads"] if checked["threads"] is not None else tvm_env.default_threads()
        checked["threads"] = _positive_int(threads, f"{label}: threads", minimum=1)
        checked["tune_trials"] = _positive_int(checked["tune_trials"], f"{label}: tune_trials", minimum=1)
        try:
            budget = float(checked["tune_budget_s"])
        except (TypeError, ValueError):
            budget = -1.0
        if not budget >= 0:
            raise UsageError(
                f"{label}: tune_budget_s={checked['tune_budget_s']!r} must be a number of seconds >= 0",
                hint="e.g. tune_budget_s=300 (0 builds with default schedules)",
            )
        checked["tune_budget_s"] = budget
        if checked["mcpu"] is not None and not isinstance(checked["mcpu"], str):
            raise UsageError(f"{label}: mcpu must be an LLVM CPU name", hint="e.g. mcpu='znver4'")
        if checked["cache_dir"] is not None:
            checked["cache_dir"] = str(checked["cache_dir"])
        checked["batches"] = parse_batches(checked["batches"], label)
        return checked

    def available(self) -> Availability:
        """Available when apache-tvm imports with an LLVM code generator."""
        return tvm_env.tvm_availability()

    def capability(self, model: Model) -> list[Partition]:
        """Every node TVM's ONNX importer converts is claimed; others are ``unsupported``
        (a TVM build runs the whole graph, so there is no fallback to ONNX Runtime)."""

        self.require_available()
        supported = tvm_supported_ops()
        verdicts = []
        for index, node in enumerate(model.graph):
            if node.domain in ("", "ai.onnx") and node.op_type in supported:
                verdicts.append((node_id(node, index), self.name, ""))
            else:
                op = node.op_type if node.domain in ("", "ai.onnx") else f"{node.domain}::{node.op_type}"
                reason = f"op '{op}' at node {node_label(node)}: TVM's ONNX importer cannot convert it"
                verdicts.append((node_id(node, index), UNSUPPORTED, reason))
        return group_partitions(verdicts)

    def target_spec(self) -> dict[str, Any]:
        """The LLVM target in TVM's dict form, e.g. ``{"kind": "llvm", "mcpu": "znver4", ...}``."""
        return tvm_env.llvm_target_spec(self.options["threads"], self.options["mcpu"])

    def lower(self, model: Model, ctx: PassContext | None = None) -> CompiledModel:
        """Compile ``model`` with TVM for this CPU; ``ctx.dims`` binds symbolic dims (1 when
        unbound), except a decoder's, which stay symbolic. With the ``batches`` option, one
        module per batch size (:class:`TvmBatchedModel`). Raises ``UnsupportedOpError``
        naming a node TVM cannot import, ``UsageError`` for ``batches`` on a decoder (its
        batch stays symbolic already) or on inputs without a symbolic batch dim."""

        self.require_available()
        batches = self.options["batches"]
        if batches is None:
            return self._lower_one(model, ctx, _dims_for(model, ctx))
        label = f"target '{self.name}'"
        if DecoderSpec.of(model) is not None:
            raise UsageError(f"{label}: batches=... is for static builds; a decoder keeps its batch symbolic "
                             "and runs every batch size from one module", hint="drop the batches option")
        dim = batch_dim(model, label)
        variants = {batch: self._lower_one(model, ctx, {**_dims_for(model, ctx), dim: batch}) for batch in batches}
        axes = batch_axes(model, dim)
        signature = signature_model(variants[batches[0]].model, dim, axes)
        return TvmBatchedModel(self.name, signature, variants, dim=dim, axes=axes, options=self.options,
                               profile_name=self.selected_profile_name)

    def _lower_one(self, model: Model, ctx: PassContext | None, dims: Mapping[str, int]) -> TvmCompiledModel:
        """One TVM module of ``model`` with its symbolic dims bound to ``dims``."""
        started = time.perf_counter()
        prepared = prepare_for_tvm(model, dims)
        with tvm_env.native_warnings_captured():
            relax_mod = to_relax(prepared)
        spec = self.target_spec()
        target = tvm_env.make_target(spec)
        with tvm_env.native_warnings_captured():
            fused = fused_module(relax_mod, target)
        database, tuning = None, {}
        if self.options["tune_budget_s"] > 0:
            progress = _tuning_progress(ctx.progress) if ctx is not None and ctx.progress.enabled else None
            database, summary = tune(
                fused, target, spec,
                budget_s=self.options["tune_budget_s"],
                trials_per_task=self.options["tune_trials"],
                cache_dir=self.options["cache_dir"],
                progress=progress,
            )
            tuning = summary.to_dict()
        executable = build_checked(fused, target, f"the model for {spec['mcpu']}", database)
        return TvmCompiledModel(
            self.name, prepared, executable, target_spec=spec, options=self.options,
            profile_name=self.selected_profile_name, compile_s=time.perf_counter() - started,
            tuning=tuning,
        )


def _tuning_progress(reporter: ProgressReporter) -> Callable[[int, int, str], None]:
    """Tuning's per-kernel callback ``(done, total, message)`` as steps of ``reporter``."""

    def report(done: int, total: int, message: str) -> None:
        reporter.step(f"tvm tuning: {message}", done, total)

    return report


def _dims_for(model: Model, ctx: PassContext | None) -> dict[str, int]:
    """Sizes for the model's symbolic dims: the context's, else 1 (as the driver does)."""

    given = dict(ctx.dims) if ctx is not None else {}
    return {name: int(given.get(name, 1)) for name in symbolic_dims(model.ir)}


def _positive_int(value: Any, what: str, *, minimum: int) -> int:
    try:
        if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
            raise ValueError
        number = int(value)
    except (TypeError, ValueError):
        number = minimum - 1
    if number < minimum:
        raise UsageError(f"{what}={value!r} must be an integer >= {minimum}", hint=f"e.g. {what.split(': ')[-1]}=2")
    return number


__all__ = ["TvmCompiledModel", "TvmLlvm"]
