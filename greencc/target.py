"""Targets: the backends greencc lowers to, their registry and tags, and ``CompiledModel``.

A target claims the nodes it can run (as ONNX Runtime's execution providers do), names
the passes it needs before lowering, and lowers a ``Model`` into a ``CompiledModel`` that
runs, saves, reloads and benchmarks itself. Built-in targets live in ``greencc.targets``;
third-party targets plug in through the entry-point group ``greencc.targets``.
"""

from __future__ import annotations

import datetime as _dt
import difflib
import importlib
import importlib.metadata
import json
import os
import re
import shutil
import tempfile
import uuid
import warnings
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, NamedTuple

import numpy as np

from greencc.errors import (
    GreenccError,
    InputMismatchError,
    ModelLoadError,
    TargetUnavailableError,
    UsageError,
)

if TYPE_CHECKING:
    import onnx_ir as ir

    from greencc.cost.profile import HardwareProfile
    from greencc.measure.latency import LatencyStats
    from greencc.model import Model, TensorSpec
    from greencc.pipeline.context import PassContext

ENTRY_POINT_GROUP = "greencc.targets"
# Unclaimed nodes of a target other than ort-cpu run here (visibly, in the report).
FALLBACK_TARGET = "ort-cpu"
FALLBACK_PREFIX = "fallback:"
# The partition label of nodes that no target here can run.
UNSUPPORTED = "unsupported"

_NAME_RE = re.compile(r"^[a-z][a-z0-9]*(-[a-z0-9]+)*$")


class Availability(NamedTuple):
    """Whether a target can run on this machine, and why not when it cannot.

    Truthiness follows ``ok`` (a plain 2-tuple would always be true).
    """

    ok: bool
    reason: str = ""

    def __bool__(self) -> bool:
        return bool(self.ok)


@dataclass
class Partition:
    """A run of nodes (by name, in graph order) assigned to one target.

    ``target`` is the claiming target's name, ``"fallback:ort-cpu"`` for nodes another
    target leaves to ONNX Runtime, or ``"unsupported"`` for nodes nothing here runs;
    ``reason`` says why an unclaimed partition was not claimed.
    """

    target: str
    nodes: list[str]
    reason: str = ""

    @property
    def claimed(self) -> bool:
        """True when the target that was asked runs these nodes itself."""
        return not (self.target.startswith(FALLBACK_PREFIX) or self.target == UNSUPPORTED)


def node_id(node: ir.Node, index: int) -> str:
    """A node's name, or ``<Op#index>`` for an unnamed node (index = position in graph)."""
    return node.name or f"<{node.op_type}#{index}>"


def group_partitions(verdicts: Iterable[tuple[str, str, str]]) -> list[Partition]:
    """Group ``(node_id, target, reason)`` in graph order into maximal runs per target.

    The reasons of a run's nodes are joined (distinct ones, in order of appearance).
    """
    partitions: list[Partition] = []
    reasons: list[list[str]] = []
    for name, target, reason in verdicts:
        if not partitions or partitions[-1].target != target:
            partitions.append(Partition(target, []))
            reasons.append([])
        partitions[-1].nodes.append(name)
        if reason and reason not in reasons[-1]:
            reasons[-1].append(reason)
    for partition, why in zip(partitions, reasons, strict=True):
        partition.reason = "; ".join(why)
    return partitions


# --------------------------------------------------------------------------------------
# Targets
# --------------------------------------------------------------------------------------
class Target:
    """Base class of every target.

    Subclasses are registered with ``@register_target("kebab-name")``, set
    ``description``, ``profile_name`` (the default hardware profile), ``default_options``
    (every option the target accepts, with its default) and ``compiled_model_class``, and
    implement ``available``, ``capability`` and ``lower``. ``check_options`` may be
    overridden to validate and normalise option values (call ``super()`` first).
    """

    name: ClassVar[str] = ""
    description: ClassVar[str] = ""
    profile_name: ClassVar[str] = ""
    default_options: ClassVar[dict[str, Any]] = {}
    compiled_model_class: ClassVar[type[CompiledModel]]

    def __init__(self, *, profile: HardwareProfile | str | None = None, **options: Any) -> None:
        self.options: dict[str, Any] = self.check_options(options)
        self._profile: HardwareProfile | None = None
        self._profile_name = type(self).profile_name
        if isinstance(profile, str):
            self._profile_name = profile
        elif profile is not None:
            self._profile = profile
            self._profile_name = getattr(profile, "name", self._profile_name)
        pinned = getattr(type(self), "profile", None)
        if not isinstance(pinned, property):
            # A subclass that pins `profile` as a class attribute (as in DESIGN §6) stays
            # overridable per instance, as this constructor promises.
            if profile is None:
                self._profile_name = getattr(pinned, "name", self._profile_name)
            else:
                vars(self)["profile"] = self.profile_by_name(profile) if isinstance(profile, str) else profile

    @property
    def profile(self) -> HardwareProfile:
        """The hardware profile cost estimates use (loaded on first use by name)."""
        if self._profile is None:
            self._profile = self.profile_by_name(self._profile_name)
        return self._profile

    @staticmethod
    def profile_by_name(name: str) -> HardwareProfile:
        """Load the named hardware profile (``targets/profiles/<name>.json``)."""
        from greencc.cost.profile import HardwareProfile

        return HardwareProfile.named(name)

    @property
    def selected_profile_name(self) -> str:
        """The name of the profile this target uses, without loading it."""
        return self._profile_name

    def check_options(self, options: Mapping[str, Any]) -> dict[str, Any]:
        """Reject unknown options (``UsageError``) and fill in defaults."""
        label = self.name or type(self).__name__
        for key in options:
            if key not in self.default_options:
                known = ", ".join(self.default_options) or "none"
                raise UsageError(
                    f"target '{label}' has no option '{key}'", hint=f"its options are: {known}"
                )
        return {**self.default_options, **options}

    def available(self) -> Availability:
        """Whether this target can run here (never raises)."""
        return Availability(True)

    def capability(self, model: Model) -> list[Partition]:
        """The nodes this target claims, as partitions in graph order."""
        raise NotImplementedError(f"target '{self.name}' does not implement capability()")

    def legalize(self) -> list[str]:
        """Names of the passes the target needs before ``lower`` (run by the driver)."""
        return []

    def supported_fused_ops(self) -> set[str]:
        """Fused op types it runs natively, as ``"domain::Op"`` (fusion passes consult it)."""
        return set()

    def lower(self, model: Model, ctx: PassContext | None = None) -> CompiledModel:
        """Turn ``model`` into a runnable ``CompiledModel``; ``model`` is not modified."""
        raise NotImplementedError(f"target '{self.name}' does not implement lower()")

    def require_available(self) -> None:
        """Raise ``TargetUnavailableError`` with the reason when the target cannot run here."""
        availability = self.available()
        if not availability.ok:
            raise TargetUnavailableError(
                f"target '{self.name}' is not available here: {availability.reason}",
                hint="run `greencc targets` to see what this machine can run",
            )

    def __repr__(self) -> str:
        options = ", ".join(f"{k}={v}" for k, v in self.options.items())
        return f"<target {self.name} {{{options}}} profile={self._profile_name}>"


_TARGETS: dict[str, type[Target]] = {}
_BUILTINS_LOADED = False
_PLUGINS_LOADED = False


def register_target(name: str, *, replace: bool = False) -> Callable[[type[Target]], type[Target]]:
    """Class decorator registering a ``Target`` subclass under the kebab-case ``name``.

    Registering a taken name raises ``UsageError`` unless ``replace=True``.
    """
    if not isinstance(name, str) or not _NAME_RE.match(name):
        raise UsageError(f"target name {name!r} is not kebab-case", hint="e.g. 'my-npu'")

    def decorate(cls: type[Target]) -> type[Target]:
        if not (isinstance(cls, type) and issubclass(cls, Target)):
            raise TypeError(f"register_target expects a Target subclass, got {cls!r}")
        existing = _TARGETS.get(name)
        if existing is not None and existing is not cls and not replace:
            raise UsageError(
                f"a target named '{name}' is already registered "
                f"({existing.__module__}.{existing.__qualname__})",
                hint="pick another name or pass replace=True",
            )
        cls.name = name
        if not cls.__dict__.get("description"):
            doc = (cls.__doc__ or "").strip()
            cls.description = doc.splitlines()[0] if doc else ""
        _TARGETS[name] = cls
        return cls

    return decorate


def _load_builtins() -> None:
    global _BUILTINS_LOADED
    if not _BUILTINS_LOADED:
        _BUILTINS_LOADED = True
        importlib.import_module("greencc.targets")


def _load_plugins() -> None:
    """Import the targets of the ``greencc.targets`` entry-point group, once.

    A plugin that fails to load is registered as a placeholder that reports itself
    unavailable with the reason, so one broken package never hides the others.
    """
    global _PLUGINS_LOADED
    if _PLUGINS_LOADED:
        return
    _PLUGINS_LOADED = True
    try:
        entry_points = list(importlib.metadata.entry_points(group=ENTRY_POINT_GROUP))
    except Exception as exc:  # a broken installation's metadata must not break greencc
        warnings.warn(f"could not read the '{ENTRY_POINT_GROUP}' entry points: {exc}", stacklevel=2)
        return
    for entry_point in entry_points:
        try:
            loaded = entry_point.load()
            if isinstance(loaded, type) and issubclass(loaded, Target):
                if _TARGETS.get(loaded.name) is not loaded:
                    register_target(entry_point.name)(loaded)
        except Exception as exc:
            reason = f"plugin '{entry_point.value}' failed to load: {type(exc).__name__}: {exc}"
            if entry_point.name in _TARGETS or not _NAME_RE.match(entry_point.name):
                warnings.warn(f"target plugin '{entry_point.name}': {reason}", stacklevel=2)
                continue
            _TARGETS[entry_point.name] = _broken_plugin(entry_point.name, reason)


class _BrokenPlugin(Target):
    """Placeholder for a target plugin that failed to load."""

    broken_reason: ClassVar[str] = ""

    def check_options(self, options: Mapping[str, Any]) -> dict[str, Any]:
        return dict(options)

    def available(self) -> Availability:
        return Availability(False, self.broken_reason)

    def capability(self, model: Model) -> list[Partition]:
        self.require_available()
        return []

    def lower(self, model: Model, ctx: PassContext | None = None) -> CompiledModel:
        self.require_available()
        raise AssertionError("unreachable")


def _broken_plugin(name: str, reason: str) -> type[Target]:
    cls = type(
        f"BrokenPlugin_{name.replace('-', '_')}",
        (_BrokenPlugin,),
        {"broken_reason": reason, "description": f"(plugin failed to load) {reason}"},
    )
    cls.name = name
    return cls


def registered_targets() -> dict[str, type[Target]]:
    """Every target by name, sorted: built-ins, then entry-point plugins (loaded lazily).

    A plugin that failed to load appears as a target whose ``available()`` says why.
    """
    _load_builtins()
    _load_plugins()
    return dict(sorted(_TARGETS.items()))


def get_target_class(name: str) -> type[Target]:
    """The target class registered as ``name``; ``UsageError`` with suggestions otherwise."""
    targets = registered_targets()
    try:
        return targets[name]
    except KeyError:
        raise _unknown_target(name) from None


def _unknown_target(name: str) -> UsageError:
    from greencc.targets.tags import TAGS

    close = difflib.get_close_matches(name, [*registered_targets(), *TAGS], n=3)
    hint = f"did you mean {', '.join(close)}?" if close else "run `greencc targets` to list them"
    return UsageError(f"unknown target '{name}'", hint=hint)


def resolve_target(target: Target | str, **options: Any) -> Target:
    """A ``Target`` instance from an instance, a target name or a tag name.

    A tag (``"x86-avx512"``) selects its target with its hardware profile; ``options``
    go to the target's constructor (``profile=`` overrides a tag's profile). Raises
    ``UsageError`` for an unknown name and ``TargetUnavailableError`` for a tag whose
    target is not installed or a plugin that failed to load.
    """
    if isinstance(target, Target):
        if not options:
            return target
        profile = target._profile if target._profile is not None else target._profile_name
        return type(target)(profile=options.pop("profile", profile), **{**target.options, **options})
    if not isinstance(target, str):
        raise UsageError(
            f"a target must be a name or a greencc.Target, got {type(target).__name__}",
            hint="e.g. target='ort-cpu' or target='x86-avx512'",
        )
    name = target.strip()
    targets = registered_targets()
    if name in targets:
        cls = targets[name]
    else:
        from greencc.targets.tags import TAGS

        if name not in TAGS:
            raise _unknown_target(name)
        target_name, profile_name = TAGS[name]
        cls = targets.get(target_name)
        if cls is None:
            raise TargetUnavailableError(
                f"tag '{name}' uses target '{target_name}', which is not registered in this "
                "installation",
                hint=f"install the package that provides '{target_name}', or pick another "
                "target; `greencc targets` lists what is installed",
            )
        options.setdefault("profile", profile_name)
    if issubclass(cls, _BrokenPlugin):
        raise TargetUnavailableError(
            f"target '{cls.name}' is not available: {cls.broken_reason}",
            hint="reinstall or fix the plugin package",
        )
    return cls(**options)


# --------------------------------------------------------------------------------------
# Compiled models
# --------------------------------------------------------------------------------------
MANIFEST_NAME = "greencc.json"
REPORT_NAME = "report.json"
ARTIFACT_FORMAT = "greencc-compiled-model"
FORMAT_VERSION = 1
# Manifests and reports are untrusted input: refuse absurd sizes before reading them.
_MANIFEST_MAX_BYTES = 1 << 20
_REPORT_MAX_BYTES = 64 << 20


class CompiledModel:
    """A lowered model that runs on its target: ``outputs = compiled(feeds)``.

    ``target`` is the target's name, ``model`` the lowered greencc ``Model`` (its
    signature is what calls are checked against), ``options`` the target options it was
    built with and ``report`` the compile's ledger (or ``None``). Subclasses implement
    ``_run``, ``_save_artifact`` and ``_load_artifact``, and ``with_options`` where a
    running option (threads) can change after lowering.
    """

    def __init__(
        self,
        target: str,
        model: Model,
        *,
        options: Mapping[str, Any] | None = None,
        report: Any = None,
        profile_name: str | None = None,
    ) -> None:
        self.target = target
        self.model = model
        self.options: dict[str, Any] = dict(options or {})
        self.report = report
        self.profile_name = profile_name

    # -- running -------------------------------------------------------------------------
    def __call__(self, feeds: Mapping[str, Any]) -> dict[str, np.ndarray]:
        """Run on ``feeds`` (input name -> array); returns output name -> array.

        Feeds are checked against the signature first (``InputMismatchError``).
        """
        return self._run(self.check_feeds(feeds))

    def run(self, feeds: Mapping[str, Any]) -> dict[str, np.ndarray]:
        """Same as calling the compiled model."""
        return self(feeds)

    def check_feeds(self, feeds: Mapping[str, Any]) -> dict[str, np.ndarray]:
        """Validate ``feeds`` against the signature; symbolic dims must agree across inputs."""
        # A compiled model's graph does not change: its input specs are computed once
        # (they cost about a third of the check, which runs on every call).
        cached = self.__dict__.get("_input_specs")
        if cached is None or cached[0] is not self.model:
            cached = self.__dict__["_input_specs"] = (self.model, self.model.inputs)
        arrays = self.model.check_feeds(feeds, cached[1])
        _check_symbolic_dims(cached[1], arrays)
        return arrays

    def _run(self, arrays: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        raise NotImplementedError

    def with_options(self, **options: Any) -> CompiledModel:
        """A copy running with changed target options (e.g. ``threads``)."""
        raise UsageError(
            f"target '{self.target}' cannot change options {sorted(options)} after lowering",
            hint="lower the model again with the options you want",
        )

    def benchmark(
        self,
        feeds: Mapping[str, Any] | None = None,
        *,
        warmup: int = 10,
        repeats: int = 50,
        min_time_s: float = 0.0,
        threads: int | None = None,
    ) -> LatencyStats:
        """Measure latency per call (ms) on ``feeds`` (random ones, seed 0, when ``None``).

        ``threads`` runs the benchmark with that many intra-op threads where the target
        supports changing it; the count used is recorded in the result.
        """
        from greencc.measure.latency import measure_latency

        runner: CompiledModel = self
        if threads is not None and threads != self.options.get("threads"):
            runner = self.with_options(threads=threads)
        if feeds is None:
            from greencc.verify.feeds import random_feeds

            feeds = random_feeds(self.model, seed=0)
        arrays = runner.check_feeds(feeds)
        return measure_latency(
            lambda: runner._run(arrays),
            warmup=warmup,
            repeats=repeats,
            min_time_s=min_time_s,
            threads=runner.options.get("threads"),
        )

    @property
    def signature(self) -> dict[str, list[dict[str, Any]]]:
        """Inputs and outputs as JSON-ready ``{"name", "dtype", "shape"}`` records."""
        return {
            "inputs": [_spec_record(s) for s in self.model.inputs],
            "outputs": [_spec_record(s) for s in self.model.outputs],
        }

    # -- saving and loading --------------------------------------------------------------
    def _save_artifact(self, directory: Path) -> list[str]:
        """Write the target's artifact files into ``directory``; return their names."""
        raise NotImplementedError

    @classmethod
    def _load_artifact(cls, directory: Path, manifest: dict[str, Any]) -> CompiledModel:
        """Rebuild from the artifact files in ``directory`` and its validated manifest."""
        raise NotImplementedError

    def manifest(self, files: list[str]) -> dict[str, Any]:
        """The ``greencc.json`` contents for an artifact made of ``files``."""
        from greencc import __version__

        return {
            "format": ARTIFACT_FORMAT,
            "format_version": FORMAT_VERSION,
            "greencc_version": __version__,
            "target": self.target,
            "profile": self.profile_name,
            "options": _json_safe(self.options),
            "signature": self.signature,
            "files": sorted(files),
            "report": REPORT_NAME if self.report is not None else None,
            "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        }

    def save(self, directory: str | os.PathLike) -> Path:
        """Write the artifact directory atomically; returns its path.

        The directory (``greencc.json``, the target's files, ``report.json``) is built
        beside the destination and renamed into place only when complete; an existing
        artifact there is replaced after that, never left half-written. A non-empty
        directory that is not a greencc artifact is refused rather than deleted.
        """
        dest = Path(directory).absolute()
        if dest.exists() and not dest.is_dir():
            raise UsageError(
                f"cannot save to {dest}: it is a file", hint="give a directory path"
            )
        if dest.is_dir() and any(dest.iterdir()) and not (dest / MANIFEST_NAME).is_file():
            raise UsageError(
                f"cannot save to {dest}: the directory exists and is not a greencc artifact",
                hint="choose a new or empty directory (greencc only replaces its own artifacts)",
            )
        dest.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{dest.name}.staging-", dir=dest.parent))
        try:
            files = self._save_artifact(staging)
            if self.report is not None:
                _write_json(staging / REPORT_NAME, self.report.to_dict())
            _write_json(staging / MANIFEST_NAME, self.manifest(files))
            _move_into_place(staging, dest)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        return dest

    @classmethod
    def load(cls, directory: str | os.PathLike, **options: Any) -> CompiledModel:
        """Reopen a saved artifact of any registered target.

        ``options`` override the saved target options (e.g. ``threads=4``). Raises
        ``ModelLoadError`` for a missing or corrupt artifact and ``TargetUnavailableError``
        when its target is not installed or cannot run here.
        """
        path = Path(directory)
        manifest = read_manifest(path)
        target_name = manifest["target"]
        targets = registered_targets()
        target_cls = targets.get(target_name)
        if target_cls is None:
            raise TargetUnavailableError(
                f"{path} was compiled for target '{target_name}', which is not registered here",
                hint=f"install the package that provides it; registered targets: "
                f"{', '.join(targets) or 'none'}",
            )
        try:
            target = target_cls(profile=manifest.get("profile"), **{**manifest["options"], **options})
        except UsageError as exc:
            if options:
                raise
            raise ModelLoadError(
                f"{path}/{MANIFEST_NAME}: invalid options for target '{target_name}': {exc.message}",
                hint="the manifest is corrupt or from another greencc version; compile again",
            ) from None
        target.require_available()
        compiled_cls = target_cls.compiled_model_class
        if not issubclass(compiled_cls, cls):
            raise UsageError(
                f"{path} holds a '{target_name}' artifact, not a {cls.__name__}",
                hint="use greencc.CompiledModel.load() to open artifacts of any target",
            )
        manifest = {**manifest, "options": target.options}
        compiled = compiled_cls._load_artifact(path, manifest)
        if compiled.signature != manifest["signature"]:
            raise ModelLoadError(
                f"{path}: the artifact's model does not match the signature in its manifest",
                hint="the directory was modified after saving; compile again",
            )
        if manifest.get("report"):
            compiled.report = _load_report(path / REPORT_NAME)
        return compiled

    def __repr__(self) -> str:
        ins = ", ".join(str(s) for s in self.model.inputs)
        return f"<greencc.CompiledModel target={self.target} ({ins}) options={self.options}>"


def read_manifest(directory: Path) -> dict[str, Any]:
    """Read and validate ``directory/greencc.json`` (``ModelLoadError`` when it is bad)."""
    if not directory.exists():
        raise ModelLoadError(f"{directory}: no such directory", hint="check the path")
    if not directory.is_dir():
        raise ModelLoadError(
            f"{directory} is a file, not a compiled-model directory",
            hint="CompiledModel.load() opens what CompiledModel.save() wrote; "
            "use greencc.load() for an .onnx file",
        )
    path = directory / MANIFEST_NAME
    if not path.is_file():
        raise ModelLoadError(
            f"{directory} is not a greencc artifact: {MANIFEST_NAME} is missing",
            hint="CompiledModel.load() opens directories written by CompiledModel.save()",
        )
    size = path.stat().st_size
    if size > _MANIFEST_MAX_BYTES:
        raise ModelLoadError(
            f"{path}: {size} bytes is too large for a manifest", hint="the artifact is corrupt"
        )
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ModelLoadError(
            f"{path} is not valid JSON ({exc})", hint="the artifact is corrupt; compile again"
        ) from None
    problems = _manifest_problems(manifest)
    if problems:
        raise ModelLoadError(
            f"{path} is not a valid greencc manifest: {problems}",
            hint="the artifact is corrupt or was not written by greencc; compile again",
        )
    if manifest["format_version"] > FORMAT_VERSION:
        raise ModelLoadError(
            f"{path} has format version {manifest['format_version']}; this greencc reads "
            f"up to {FORMAT_VERSION}",
            hint=f"upgrade greencc (it was written by greencc {manifest.get('greencc_version')})",
        )
    return manifest


def _manifest_problems(manifest: Any) -> str:
    if not isinstance(manifest, dict):
        return f"expected a JSON object, found {type(manifest).__name__}"
    if manifest.get("format") != ARTIFACT_FORMAT:
        return f"'format' is {manifest.get('format')!r}, expected {ARTIFACT_FORMAT!r}"
    expected: dict[str, type | tuple[type, ...]] = {
        "format_version": int,
        "target": str,
        "options": dict,
        "signature": dict,
        "files": list,
    }
    for key, kind in expected.items():
        if not isinstance(manifest.get(key), kind):
            return f"'{key}' is missing or not a {getattr(kind, '__name__', kind)}"
    for name in manifest["files"]:
        if not isinstance(name, str) or Path(name).name != name or name.startswith("."):
            return f"artifact file name {name!r} is not a plain file name"
    return ""


def _load_report(path: Path) -> Any:
    if not path.is_file():
        raise ModelLoadError(
            f"{path} is missing though the manifest lists a report",
            hint="the artifact is incomplete; compile again",
        )
    if path.stat().st_size > _REPORT_MAX_BYTES:
        raise ModelLoadError(f"{path} is too large for a report", hint="the artifact is corrupt")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        from greencc.report.ledger import Report

        return Report.from_dict(data)
    except GreenccError as exc:
        raise ModelLoadError(f"{path}: {exc.message}", hint=exc.hint) from None
    except (ValueError, TypeError, KeyError) as exc:
        raise ModelLoadError(
            f"{path} is not a valid greencc report ({exc})", hint="the artifact is corrupt"
        ) from None


def _move_into_place(staging: Path, dest: Path) -> None:
    """Rename the complete ``staging`` directory to ``dest``, replacing an old ``dest``."""
    if not dest.exists():
        os.rename(staging, dest)
        return
    old = dest.parent / f".{dest.name}.old-{uuid.uuid4().hex[:8]}"
    os.rename(dest, old)
    try:
        os.rename(staging, dest)
    except BaseException:
        os.rename(old, dest)
        raise
    shutil.rmtree(old, ignore_errors=True)


def _write_json(path: Path, data: Any) -> None:
    path.write_text(json.dumps(data, indent=2, default=_json_default) + "\n", encoding="utf-8")


def _json_default(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"{type(value).__name__} is not JSON-serialisable")


def _json_safe(options: Mapping[str, Any]) -> dict[str, Any]:
    return json.loads(json.dumps(dict(options), default=_json_default))


def _spec_record(spec: TensorSpec) -> dict[str, Any]:
    return {
        "name": spec.name,
        "dtype": spec.dtype,
        "shape": None if spec.shape is None else list(spec.shape),
    }


def _check_symbolic_dims(specs: list[TensorSpec], arrays: Mapping[str, np.ndarray]) -> None:
    """A symbolic dim named in several inputs must have one size across them."""
    seen: dict[str, tuple[int, str]] = {}
    for spec in specs:
        if spec.shape is None:
            continue
        for dim, size in zip(spec.shape, arrays[spec.name].shape, strict=True):
            if not isinstance(dim, str) or not dim:
                continue
            if dim in seen and seen[dim][0] != size:
                first_size, first_input = seen[dim]
                raise InputMismatchError(
                    f"dim '{dim}' is {size} in input '{spec.name}' but {first_size} in input "
                    f"'{first_input}'",
                    hint=f"inputs sharing the symbolic dim '{dim}' must agree on its size",
                )
            seen.setdefault(dim, (size, spec.name))


__all__ = [
    "Availability", "CompiledModel", "Partition", "Target", "FALLBACK_TARGET", "UNSUPPORTED",
    "get_target_class", "group_partitions", "node_id", "read_manifest", "register_target",
    "registered_targets", "resolve_target",
]
