"""Reproducers: a failing pipeline run writes its input model, pipeline text and options
to a directory that ``greencc repro DIR`` replays.
"""

from __future__ import annotations

import json
import shutil
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from greencc.errors import UsageError

if TYPE_CHECKING:
    from greencc.model import Model
    from greencc.pipeline.context import PassContext

MODEL_FILE = "input.onnx"
PIPELINE_FILE = "pipeline.txt"
OPTIONS_FILE = "options.json"


def write_reproducer(
    root: Path, model: Model, pipeline_text: str, ctx: PassContext, error: BaseException
) -> Path:
    """Write a reproducer directory under ``root``; returns its path (written atomically)."""
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"greencc-repro-{time.strftime('%Y%m%d-%H%M%S')}-{id(error) % 10000:04d}"
    staging = Path(tempfile.mkdtemp(prefix=".repro-", dir=root))
    try:
        model.save(staging / MODEL_FILE)
        (staging / PIPELINE_FILE).write_text(pipeline_text + "\n")
        options: dict[str, Any] = {
            "target": ctx.target.name if ctx.target is not None else None,
            "profile": ctx.profile.name if ctx.profile is not None else None,
            "dims": ctx.dims,
            "seed": ctx.seed,
            "verify": ctx.verify,
            "budget": str(ctx.budget) if ctx.budget is not None else None,
            "error": f"{type(error).__name__}: {error}",
        }
        (staging / OPTIONS_FILE).write_text(json.dumps(options, indent=2))
        staging.rename(final)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return final


def replay(directory: str | Path) -> Model:
    """Re-run a reproducer; returns the output model, or raises the pass failure again."""
    from greencc.frontend.onnx_file import load
    from greencc.pipeline.context import PassContext
    from greencc.pipeline.manager import PassManager

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
    model = load(directory / MODEL_FILE)
    pipeline = (directory / PIPELINE_FILE).read_text().strip()
    ctx = PassContext(
        target=options.get("target"),
        profile=options.get("profile"),
        dims=options.get("dims") or {},
        seed=options.get("seed", 0),
        verify=options.get("verify", True),
        budget=options.get("budget"),
    )
    with ctx:
        return PassManager(pipeline).run(model, ctx)
