"""Pass instruments: hooks around every pass (TVM style). Timing, progress and IR dumps live
here; verification (greencc.instruments.verify) and the energy ledger (greencc.report.ledger)
are instruments too.
"""

from __future__ import annotations

import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

if TYPE_CHECKING:
    from greencc.model import Model
    from greencc.pipeline.base import Pass
    from greencc.pipeline.context import PassContext


@dataclass
class PassRecord:
    """What happened in one pass run; instruments read and fill it (the ledger's raw row)."""

    name: str
    lossy: bool
    modified: bool = False
    wall_ms: float = 0.0
    stats: dict[str, int | float] = field(default_factory=dict)
    fidelity: Any = None  # greencc.verify.fidelity.Fidelity when verification ran
    rolled_back: str | None = None  # why a lossy pass was undone
    step: int = 1


class Instrument:
    """Base class: override any hook. Hooks must not modify the model."""

    def enter_pipeline(self, model: Model, ctx: PassContext) -> None:
        """Called once before the first pass, with the input model."""

    def before_pass(self, pass_: Pass, model: Model, ctx: PassContext) -> None:
        """Called before each pass runs."""

    def after_pass(self, pass_: Pass, model: Model, ctx: PassContext, record: PassRecord) -> None:
        """Called after each successful pass; may set ``record.rolled_back`` or raise."""

    def after_pass_failure(self, pass_: Pass, model: Model, ctx: PassContext, error: Exception) -> None:
        """Called after a pass raised or failed verification."""

    def exit_pipeline(self, model: Model, ctx: PassContext) -> None:
        """Called once after the last pass, with the output model."""


class TimingInstrument(Instrument):
    """Collects wall time per pass in ms (``self.timings``: list of (pass, ms))."""

    def __init__(self) -> None:
        self.timings: list[tuple[str, float]] = []
        self._start = 0.0

    def before_pass(self, pass_: Pass, model: Model, ctx: PassContext) -> None:
        self._start = time.perf_counter()

    def after_pass(self, pass_: Pass, model: Model, ctx: PassContext, record: PassRecord) -> None:
        self.timings.append((str(pass_), (time.perf_counter() - self._start) * 1e3))


class PrintIRInstrument(Instrument):
    """Prints the graph after passes: ``after`` is a pass name, ``"all"`` or ``"change"``."""

    def __init__(self, after: str = "change", stream: TextIO | None = None) -> None:
        self.after = after
        self.stream = stream or sys.stderr

    def after_pass(self, pass_: Pass, model: Model, ctx: PassContext, record: PassRecord) -> None:
        if self.after == "all" or (self.after == "change" and record.modified) or self.after == pass_.name:
            print(f"// -----// IR after {pass_} //----- //", file=self.stream)
            print(str(model.graph), file=self.stream)


class DumpIRInstrument(Instrument):
    """Writes the input model and the model after every pass as ONNX files in ``directory``
    (``00-input.onnx``, ``01-cleanup.onnx``, ...; a ``steps=N`` repeat adds ``-step2``...),
    to open in Netron; ``written`` lists the paths."""

    def __init__(self, directory: str | os.PathLike) -> None:
        self.directory = Path(directory)
        self.written: list[Path] = []
        self._index = 0

    def enter_pipeline(self, model: Model, ctx: PassContext) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        self._index = 0
        self._write(model, "input")

    def after_pass(self, pass_: Pass, model: Model, ctx: PassContext, record: PassRecord) -> None:
        self._index += 1
        step = f"-step{record.step}" if record.step > 1 else ""
        self._write(model, f"{pass_.name}{step}")

    def _write(self, model: Model, label: str) -> None:
        self.written.append(model.save(self.directory / f"{self._index:02d}-{label}.onnx"))


class ProgressInstrument(Instrument):
    """Reports each pass to ``ctx.progress`` as it starts and ends: pass i of ``total`` (the
    pipeline's items; the repeated steps of a ``steps=N`` item count as that one item)."""

    def __init__(self, total: int) -> None:
        self.total = total
        self._index = 0
        self._last: Pass | None = None

    def enter_pipeline(self, model: Model, ctx: PassContext) -> None:
        self._index, self._last = 0, None

    def before_pass(self, pass_: Pass, model: Model, ctx: PassContext) -> None:
        if pass_ is not self._last:
            self._index += 1
            self._last = pass_
        ctx.progress.start_pass(str(pass_), self._index, self.total)

    def after_pass(self, pass_: Pass, model: Model, ctx: PassContext, record: PassRecord) -> None:
        ctx.progress.end_pass(record.modified)

    def after_pass_failure(self, pass_: Pass, model: Model, ctx: PassContext, error: Exception) -> None:
        ctx.progress.end_pass(False)
