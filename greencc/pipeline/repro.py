"""Reproducers: a failing pipeline run writes a directory that ``greencc repro DIR``
replays (through the driver): the input model, the pipeline up to the failing pass, the
run's :class:`~greencc.config.CompileConfig` (target and its options, dims, budget, seed),
a copy of its calibration data (with the samples' labels) and of its plugin files. Older reproducers (input model,
pipeline text and options.json only) still read.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import tempfile
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from greencc.config import CompileConfig, file_sha256, is_plugin_file
from greencc.data import LABELS_NAME
from greencc.errors import UsageError

if TYPE_CHECKING:
    from greencc.model import Model
    from greencc.pipeline.context import PassContext

MODEL_FILE = "input.onnx"
PIPELINE_FILE = "pipeline.txt"
OPTIONS_FILE = "options.json"
CONFIG_FILE = "config.json"
CALIBRATION_FILE = "calibration.npz"
PLUGIN_DIR = "plugins"


@dataclass(frozen=True)
class Reproducer:
    """A reproducer directory as read back: ``config`` (absolute paths into the directory;
    its ``pipeline`` ends with the failing pass), whether the run had a target at all, the
    hardware profile it named (older reproducers only) and the error it recorded."""

    directory: Path
    config: CompileConfig
    has_target: bool
    profile: str | None
    error: str | None


def write_reproducer(
    root: Path, model: Model, pipeline_text: str, ctx: PassContext, error: BaseException
) -> Path:
    """Write a reproducer directory under ``root``; returns its path (written atomically).

    ``model`` is the pipeline's input and ``pipeline_text`` the passes up to the failing
    one. The target options, dims, seed, budget and verify flag come from ``ctx``, the rest
    of the config from ``ctx.config``; ``ctx.calibration`` is copied as an ``.npz`` (with
    ``ctx.labels`` as its ``labels`` array, so an ``acc=`` budget replays) and plugin files
    named in the config are copied under ``plugins/``.
    """
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"greencc-repro-{time.strftime('%Y%m%d-%H%M%S')}-{id(error) % 10000:04d}"
    staging = Path(tempfile.mkdtemp(prefix=".repro-", dir=root))
    try:
        model.save(staging / MODEL_FILE)
        (staging / PIPELINE_FILE).write_text(pipeline_text + "\n")
        target_options = _json_safe(ctx.target.options) if ctx.target is not None else {}
        options: dict[str, Any] = {
            "target": ctx.target.name if ctx.target is not None else None,
            "target_options": target_options,
            "profile": ctx.profile.name if ctx.profile is not None else None,
            "dims": ctx.dims,
            "seed": ctx.seed,
            "verify": ctx.verify,
            "budget": str(ctx.budget) if ctx.budget is not None else None,
            "error": f"{type(error).__name__}: {error}",
        }
        (staging / OPTIONS_FILE).write_text(json.dumps(options, indent=2))
        base = ctx.config or CompileConfig()
        config = dataclasses.replace(
            base,
            model=MODEL_FILE,
            model_sha256=file_sha256(staging / MODEL_FILE),
            target=base.target if ctx.config is not None else (options["target"] or base.target),
            target_options=target_options,
            pipeline=pipeline_text,
            dims=ctx.dims,
            budget=options["budget"],
            seed=ctx.seed,
            verify=ctx.verify,
            plugins=_copy_plugins(base.plugins, staging),
            **_copy_calibration(ctx.calibration, staging, _labels_to_keep(ctx, model)),
        )
        (staging / CONFIG_FILE).write_text(config.to_json())
        staging.rename(final)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return final


def read_reproducer(directory: str | Path) -> Reproducer:
    """Read a reproducer directory (either format); ``UsageError`` when it is not one."""
    directory = Path(directory)
    for name in (MODEL_FILE, PIPELINE_FILE, OPTIONS_FILE):
        if not (directory / name).is_file():
            raise UsageError(
                f"{directory} is not a greencc reproducer: {name} is missing",
                hint="pass the directory named in the failure message",
            )
    try:
        options = json.loads((directory / OPTIONS_FILE).read_text())
    except json.JSONDecodeError as exc:
        raise UsageError(f"{directory / OPTIONS_FILE} is not valid JSON: {exc}") from None
    has_target = options.get("target") is not None
    if (directory / CONFIG_FILE).is_file():
        config = CompileConfig.from_json(directory / CONFIG_FILE)
        return Reproducer(directory, config, has_target, None, options.get("error"))
    config = CompileConfig(
        model=str(directory / MODEL_FILE),
        target=options.get("target") or CompileConfig.target,
        pipeline=(directory / PIPELINE_FILE).read_text().strip(),
        dims=options.get("dims") or {},
        seed=options.get("seed", 0),
        verify=options.get("verify", True),
        budget=options.get("budget"),
    )
    return Reproducer(directory, config, has_target, options.get("profile"), options.get("error"))


def _labels_to_keep(ctx: PassContext, model: Model) -> np.ndarray | None:
    """The run's labels, one per calibration sample in order, or ``None`` without labels
    or where a model input is itself named ``labels`` (the ``.npz`` array is then a feed)."""
    if ctx.labels is None or LABELS_NAME in {spec.name for spec in model.inputs}:
        return None
    return np.concatenate([np.asarray(batch) for batch in ctx.labels])


def _copy_calibration(calibration: Any, directory: Path, labels: np.ndarray | None = None) -> dict[str, str | None]:
    """Save the run's calibration feeds as ``calibration.npz`` in ``directory``, with
    ``labels`` (one per sample) as its ``labels`` array; returns the config's calibration
    fields. Batches of one shape are stacked on a new axis 0 (so they read back as the same
    batches); otherwise they are concatenated along axis 0."""
    if calibration is None:
        return {"calibration": None, "calibration_sha256": None}
    batches: list[Mapping[str, Any]] = list(calibration)
    names = list(batches[0]) if batches else []
    arrays: dict[str, np.ndarray] = {}
    for name in names:
        parts = [np.asarray(feed[name]) for feed in batches]
        uniform = all(p.shape == parts[0].shape for p in parts)
        arrays[name] = np.stack(parts) if uniform else np.concatenate(parts)
    if labels is not None:
        arrays[LABELS_NAME] = labels
    path = directory / CALIBRATION_FILE
    with open(path, "wb") as handle:
        np.savez(handle, **arrays)
    return {"calibration": CALIBRATION_FILE, "calibration_sha256": file_sha256(path)}


def _copy_plugins(plugins: Iterable[str], directory: Path) -> tuple[str, ...]:
    """Copy plugin files into ``directory/plugins``; module names stay as they are."""
    entries: list[str] = []
    for index, plugin in enumerate(plugins):
        source = Path(plugin)
        if not (is_plugin_file(plugin) and source.is_file()):
            entries.append(plugin)
            continue
        (directory / PLUGIN_DIR).mkdir(exist_ok=True)
        name = f"{index}-{source.name}"
        shutil.copyfile(source, directory / PLUGIN_DIR / name)
        entries.append(f"{PLUGIN_DIR}/{name}")
    return tuple(entries)


def _json_safe(options: Mapping[str, Any]) -> dict[str, Any]:
    """Target options as JSON values (anything else as its text: a reproducer must be
    written even when a plugin target keeps odd option values)."""
    return json.loads(json.dumps(dict(options), default=str))
