"""``CompiledModel``: a lowered model that runs, benchmarks, saves atomically and
reloads itself from an artifact directory (``greencc.json`` manifest, the target's files,
``report.json``), whatever target wrote it. The manifest records the
:class:`~greencc.config.CompileConfig` of the compile (absent in older artifacts) and the
SHA-256 of every file, checked before a target reads any of them (see
:mod:`greencc.target.integrity`: an artifact is code, load only trusted ones).
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import json
import os
import shutil
import tempfile
import uuid
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from greencc import __version__
from greencc.config import CompileConfig
from greencc.errors import (
    GreenccError,
    InputMismatchError,
    ModelLoadError,
    TargetUnavailableError,
    UsageError,
)
from greencc.frontend.hf import TOKENIZER_FILES, tokenizer_files
from greencc.ir.shapes import symbolic_dims
from greencc.measure.latency import measure_latency
from greencc.model import DecoderSpec
from greencc.report.html import REPORT_HTML_NAME, write_html
from greencc.report.ledger import Report
from greencc.target.generation import (
    DecodeSession,
    FeedDecodeSession,
    GenerationBenchmark,
    GenerationResult,
    Sampling,
    benchmark_generation,
    decoder_spec_or_raise,
    generate,
)
from greencc.target.integrity import (
    HASHES_KEY,
    digest_problems,
    file_digests,
    verify_artifact_files,
)
from greencc.target.registry import registered_targets
from greencc.verify.feeds import random_feeds

if TYPE_CHECKING:
    from greencc.measure.latency import LatencyStats
    from greencc.model import Model, TensorSpec

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
    built with, ``report`` the compile's ledger and ``config`` its
    :class:`~greencc.config.CompileConfig` (each ``None`` when unknown). ``dims`` are the
    sizes of the symbolic input dims it was compiled and priced at, which ``benchmark()``
    times by default; :attr:`dynamic_dims` the dims its inputs still leave open. Subclasses implement
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
        self.config: CompileConfig | None = None
        self.dims: dict[str, int] = {}
        # The directory whose tokenizer files the artifact carries: the Hugging Face folder
        # the model came from, or the artifact directory it was loaded from.
        self.tokenizer_directory: Path | None = _source_directory(model)

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

    @property
    def dynamic_dims(self) -> list[str]:
        """The symbolic dims of the inputs: the ones a call may size freely (together)."""
        return symbolic_dims(self.model.ir)

    @property
    def accepted_sizes(self) -> dict[str, list[int]]:
        """Dims that take only the listed sizes (a target that compiled one module per
        batch size: ``{"batch": [1, 8]}``); empty by default."""
        return {}

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
        """Measure latency per call (ms) on ``feeds`` (when ``None``: random ones, seed 0, at
        the :attr:`dims` it was compiled at). The input shapes timed are in the result's
        ``shapes``.

        ``threads`` runs the benchmark with that many intra-op threads where the target
        supports changing it; the count used is recorded in the result.
        """
        runner: CompiledModel = self
        if threads is not None and threads != self.options.get("threads"):
            runner = self.with_options(threads=threads)
        if feeds is None:
            feeds = random_feeds(self.model, seed=0, dims=self.dims)
        arrays = runner.check_feeds(feeds)
        stats = measure_latency(
            lambda: runner._run(arrays),
            warmup=warmup,
            repeats=repeats,
            min_time_s=min_time_s,
            threads=runner.options.get("threads"),
        )
        shapes = {name: [int(d) for d in np.shape(array)] for name, array in arrays.items()
                  if isinstance(array, np.ndarray)}
        return dataclasses.replace(stats, shapes=shapes)

    # -- generation (decoders) -----------------------------------------------------------
    def generate(
        self,
        input_ids: Any,
        max_new_tokens: int,
        *,
        attention_mask: Any | None = None,
        temperature: float = 0.0,
        top_k: int | None = None,
        top_p: float | None = None,
        seed: int | None = None,
        stop_tokens: Sequence[int] | None = None,
        eos: Sequence[int] | None = None,
        pad_token_id: int | None = None,
    ) -> GenerationResult:
        """Generate up to ``max_new_tokens`` tokens after each prompt of a decoder.

        ``input_ids``: a list of token ids, a list of such lists (left-padded here), or an
        int64 array [batch, seq] whose ``attention_mask`` marks left padding with 0.
        ``temperature`` 0 is greedy; above 0 tokens are sampled (restricted by ``top_k`` and
        ``top_p``) reproducibly under ``seed``. A row stops at any of ``stop_tokens`` (alias
        ``eos``; default the model's EOS ids; ``()`` never stops) and is then filled with
        ``pad_token_id`` (default the model's pad, else its EOS). The KV cache is carried
        between steps. Returns the sequences, the new tokens, prefill ms and decode tokens/s.
        Raises :class:`UsageError` for a model that is not a decoder or bad arguments.
        """
        if stop_tokens is not None and eos is not None:
            raise UsageError("give stop_tokens or eos, not both", hint="they are the same setting")
        return generate(
            self,
            input_ids,
            max_new_tokens,
            attention_mask=attention_mask,
            sampling=Sampling(temperature=float(temperature), top_k=top_k, top_p=top_p, seed=seed),
            stop_tokens=stop_tokens if stop_tokens is not None else eos,
            pad_token_id=pad_token_id,
        )

    def decode_session(self, batch: int, capacity: int) -> DecodeSession:
        """A session running the decoder step by step for ``batch`` rows of at most
        ``capacity`` tokens in all (targets override it to keep the KV cache their way)."""
        return FeedDecodeSession(self, decoder_spec_or_raise(self), batch)

    def benchmark_generation(
        self, *, batch: int = 1, prompt_tokens: int = 32, new_tokens: int = 32, runs: int = 5, warmup: int = 1
    ) -> GenerationBenchmark:
        """Prefill ms at ``prompt_tokens``, decode tokens/s at ``batch`` and peak RSS (MB)
        of greedy generation on random prompts (see :func:`benchmark_generation`)."""
        return benchmark_generation(
            self, batch=batch, prompt_tokens=prompt_tokens, new_tokens=new_tokens, runs=runs, warmup=warmup
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
        """The ``greencc.json`` contents for an artifact made of ``files`` (``save`` adds
        the SHA-256 of every file)."""
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
            "tokenizer": [path.name for path in self._tokenizer_files()] or None,
            "config": self.config.to_dict() if self.config is not None else None,
            "dims": dict(self.dims),
            "dynamic_dims": self.dynamic_dims,
            "accepted_sizes": self.accepted_sizes,
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
            for path in self._tokenizer_files():
                shutil.copyfile(path, staging / path.name)
            if self.report is not None:
                _write_json(staging / REPORT_NAME, self.report.to_dict())
                write_html(self.report, staging / REPORT_HTML_NAME)
            manifest = {**self.manifest(files), HASHES_KEY: file_digests(staging, MANIFEST_NAME)}
            _write_json(staging / MANIFEST_NAME, manifest)
            _move_into_place(staging, dest)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        return dest

    @classmethod
    def load(cls, directory: str | os.PathLike, **options: Any) -> CompiledModel:
        """Reopen a saved artifact of any registered target.

        ``options`` override the saved target options (e.g. ``threads=4``). Every file's
        SHA-256 is checked against the manifest before the target opens any of them.
        Loading an artifact that holds a shared library runs that library's code: load
        only artifacts from a source you trust. Raises ``ModelLoadError`` for a missing,
        corrupt or modified artifact and ``TargetUnavailableError`` when its target is not
        installed or cannot run here.
        """
        path = Path(directory)
        manifest = read_manifest(path)
        listed = {*manifest["files"], *(manifest.get("tokenizer") or [])}
        if manifest.get("report"):
            listed.add(REPORT_NAME)
        verify_artifact_files(path, manifest, manifest_name=MANIFEST_NAME, listed=listed)
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
        compiled.config = _manifest_config(path, manifest.get("config"))
        compiled.dims = _manifest_dims(path, manifest.get("dims"))
        compiled.tokenizer_directory = path if manifest.get("tokenizer") else None
        return compiled

    def _tokenizer_files(self) -> list[Path]:
        if self.tokenizer_directory is None:
            return []
        return tokenizer_files(self.tokenizer_directory)

    def tokenizer(self) -> Any:
        """The Hugging Face tokenizer the artifact carries (loaded with transformers).

        Raises :class:`UsageError` when the model came with none (it was not loaded from a
        Hugging Face directory) or transformers is not installed.
        """
        if not self._tokenizer_files():
            raise UsageError(
                "this compiled model carries no tokenizer",
                hint="compile from a Hugging Face directory with tokenizer files, or give token ids",
            )
        try:
            from transformers import AutoTokenizer
        except ImportError:
            raise UsageError("reading the tokenizer needs transformers", hint="pip install transformers") from None
        try:
            return AutoTokenizer.from_pretrained(self.tokenizer_directory, local_files_only=True)
        except (OSError, ValueError) as exc:
            raise ModelLoadError(
                f"cannot load the tokenizer in {self.tokenizer_directory}: {exc}",
                hint="the tokenizer files are corrupt or from a newer transformers",
            ) from None

    def __repr__(self) -> str:
        ins = ", ".join(str(s) for s in self.model.inputs)
        return f"<greencc.CompiledModel target={self.target} ({ins}) options={self.options}>"


def _source_directory(model: Model) -> Path | None:
    """The Hugging Face directory ``model`` was exported from, when it still exists."""
    spec = DecoderSpec.of(model)
    source = model.provenance.options.get("source_dir") or (spec.source if spec is not None else None)
    return Path(source) if source and Path(source).is_dir() else None


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
    except RecursionError:  # json's decoder recurses into nested arrays and objects
        raise ModelLoadError(f"{path} is not valid JSON (it nests too deeply)",
                             hint="the artifact is corrupt; compile again") from None
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
    tokenizer = manifest.get("tokenizer") or []
    if not isinstance(tokenizer, list):
        return "'tokenizer' is not a list of file names"
    digests = manifest.get(HASHES_KEY, {})
    problem = digest_problems(digests)
    if problem:
        return problem
    for name in [*manifest["files"], *tokenizer, *digests]:
        if not isinstance(name, str) or Path(name).name != name or name.startswith("."):
            return f"artifact file name {name!r} is not a plain file name"
    for name in tokenizer:
        if name not in TOKENIZER_FILES:
            return f"tokenizer file {name!r} is not one greencc copies"
    return ""


def _manifest_dims(directory: Path, data: Any) -> dict[str, int]:
    """The manifest's ``dims`` (absent in older artifacts: none)."""
    if data is None:
        return {}
    if not isinstance(data, dict) or not all(
        isinstance(name, str) and isinstance(size, int) and not isinstance(size, bool) and size > 0
        for name, size in data.items()
    ):
        raise ModelLoadError(
            f"{directory}/{MANIFEST_NAME}: 'dims' must map dim names to positive sizes, got {data!r}",
            hint="the manifest is corrupt or from another greencc version; compile again",
        )
    return dict(data)


def _manifest_config(directory: Path, data: Any) -> CompileConfig | None:
    """The manifest's compile config; ``None`` for an artifact saved before configs were
    recorded, or (with a warning) for one this greencc cannot read: the model still loads."""
    if data is None:
        return None
    try:
        return CompileConfig.from_dict(data)
    except UsageError as exc:
        warnings.warn(f"{directory}/{MANIFEST_NAME}: its compile config is unreadable ({exc.message}); "
                      "the artifact loads without it", stacklevel=3)
        return None


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

        return Report.from_dict(data)
    except GreenccError as exc:
        raise ModelLoadError(f"{path}: {exc.message}", hint=exc.hint) from None
    except (ValueError, TypeError, KeyError, RecursionError) as exc:
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
