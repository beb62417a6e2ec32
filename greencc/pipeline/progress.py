"""Progress of a compile: the events a ``progress=`` callback receives (pass i of N with
elapsed time, the inner steps of long passes, the stages around the pipeline), the reporter
passes call through ``ctx.progress``, and the terminal display the CLI draws. Passes never
print: they report, and the caller decides how (or whether) to show it.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

ProgressKind = Literal["pass-start", "pass-end", "step", "stage"]


@dataclass(frozen=True)
class ProgressEvent:
    """One step of a compile, in the order it happens.

    ``kind``: ``"pass-start"`` (pass ``index`` of ``total`` begins), ``"pass-end"`` (it
    finished; ``modified`` says whether it changed the model), ``"step"`` (inner progress
    of the running pass or stage: ``done`` of ``steps`` units of ``what``; ``steps`` is
    ``None`` when unknown) or ``"stage"`` (work outside the passes begins: ``name`` says
    what, e.g. ``"lower ort-cpu"``; ``index`` is 0). ``elapsed_s``: seconds since the
    first event of the run; ``pass_elapsed_s``: seconds since the current pass or stage began.
    """

    kind: ProgressKind
    name: str
    index: int
    total: int
    elapsed_s: float
    pass_elapsed_s: float = 0.0
    what: str = ""
    done: int = 0
    steps: int | None = None
    modified: bool | None = None


ProgressCallback = Callable[[ProgressEvent], None]


class ProgressReporter:
    """What passes and targets report progress through (``ctx.progress``): it turns calls
    into :class:`ProgressEvent` s for the run's callback, and does nothing without one.

    A long pass calls ``ctx.progress.step("sensitivity", done, total)`` as it goes; the
    pipeline's ``ProgressInstrument`` reports the passes themselves.
    """

    def __init__(self, callback: ProgressCallback | None = None) -> None:
        self.callback = callback
        self._started: float | None = None
        self._current_started = 0.0
        self._name = ""
        self._index = 0
        self._total = 0

    @property
    def enabled(self) -> bool:
        """True when someone listens (reporting may then be worth a little work)."""
        return self.callback is not None

    def start_pass(self, name: str, index: int, total: int) -> None:
        """Pass ``name`` (``index`` of ``total``, 1-based) begins."""
        self._begin(name, index, total)
        self._emit("pass-start")

    def end_pass(self, modified: bool) -> None:
        """The current pass finished; ``modified``: whether it changed the model."""
        self._emit("pass-end", modified=modified)

    def stage(self, name: str) -> None:
        """Work outside the passes begins (building the verification reference, lowering)."""
        self._begin(name, 0, self._total)
        self._emit("stage")

    def step(self, what: str, done: int, steps: int | None = None) -> None:
        """Inner progress of the current pass or stage: ``done`` of ``steps`` units of ``what``."""
        self._emit("step", what=what, done=done, steps=steps)

    def _begin(self, name: str, index: int, total: int) -> None:
        now = time.perf_counter()
        if self._started is None:
            self._started = now
        self._current_started, self._name, self._index, self._total = now, name, index, total

    def _emit(self, kind: ProgressKind, **extra: Any) -> None:
        if self.callback is None:
            return
        now = time.perf_counter()
        if self._started is None:
            self._started = self._current_started = now
        self.callback(ProgressEvent(
            kind, self._name, self._index, self._total, now - self._started,
            now - self._current_started, **extra,
        ))


class TerminalProgress:
    """A progress display on stderr, used as a ``progress=`` callback inside ``with``:
    ``pass 3/7 fuse`` with the pass's and the run's elapsed time, and the running pass's
    inner steps. Shows nothing when stderr is not a terminal (CI, pipes, log files)."""

    def __init__(self, *, enabled: bool | None = None) -> None:
        self.enabled = sys.stderr.isatty() if enabled is None else enabled
        self._bar: Any = None
        self._passes: Any = None
        self._inner: Any = None

    def __enter__(self) -> TerminalProgress:
        if self.enabled:
            from rich.console import Console
            from rich.progress import (
                BarColumn,
                MofNCompleteColumn,
                Progress,
                TextColumn,
                TimeElapsedColumn,
            )

            self._bar = Progress(TextColumn("{task.description:<40}"), BarColumn(), MofNCompleteColumn(),
                                 TimeElapsedColumn(), console=Console(stderr=True), transient=True)
            self._passes = self._bar.add_task("starting", total=None)
            self._inner = self._bar.add_task("", total=None, visible=False)
            self._bar.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._bar is not None:
            self._bar.stop()
            self._bar = None

    def __call__(self, event: ProgressEvent) -> None:
        if self._bar is None:
            return
        if event.kind == "step":
            self._bar.update(self._inner, description=f"  {event.what}"[:40], completed=event.done,
                             total=event.steps, visible=True)
            return
        if event.kind == "stage":
            self._bar.update(self._passes, description=event.name[:40])
        elif event.kind == "pass-start":
            self._bar.update(self._passes, description=f"pass {event.index}/{event.total} {event.name}"[:40],
                             completed=event.index - 1, total=event.total)
        else:
            self._bar.update(self._passes, completed=event.index)
        self._bar.reset(self._inner, visible=False)
