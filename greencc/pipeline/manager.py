"""``PassManager``: runs a pipeline, verifying structure after every pass, calling the
instruments (numerics, cost, timing, dumps) and turning failures into errors that name the
pass, the passes before it and the node, with a reproducer on disk.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

from greencc.errors import GreenccError, PassError, PassFailedError, VerificationError
from greencc.ir.io import check_model
from greencc.ir.traversal import find_cycle, node_label
from greencc.pipeline.base import Pass
from greencc.pipeline.context import PassContext
from greencc.pipeline.instruments import PassRecord
from greencc.pipeline.repro import write_reproducer
from greencc.pipeline.text import PassSpec, Pipeline

if TYPE_CHECKING:
    from greencc.model import Model


class PassManager:
    """Runs a pipeline of passes over a copy of a model.

    ``PassManager("cleanup,fold-constants{max_size=1024}").run(model, ctx)`` returns the
    rewritten model and leaves ``model`` untouched. ``records`` lists one
    :class:`PassRecord` per pass run (per step when ``steps=N``).
    """

    def __init__(self, pipeline: str | Pipeline | list) -> None:
        self.pipeline = Pipeline.of(pipeline)
        # Instantiate now so unknown passes and bad options fail before any work is done.
        self.passes: list[tuple[PassSpec, Pass]] = [(spec, spec.instantiate()) for spec in self.pipeline]
        for spec, _ in self.passes:
            spec.steps  # noqa: B018 - validates steps=N early
        self.records: list[PassRecord] = []

    def __str__(self) -> str:
        return str(self.pipeline)

    def run(self, model: Model, ctx: PassContext | None = None) -> Model:
        """Run every pass in order on a clone of ``model`` and return the result."""
        ctx = ctx or PassContext.current() or PassContext()
        original = model
        model = model.clone()
        self.records = []
        for instrument in ctx.instruments:
            instrument.enter_pipeline(model, ctx)
        done: list[str] = []
        for spec, pass_ in self.passes:
            for step in range(1, spec.steps + 1):
                record = PassRecord(name=str(spec), lossy=pass_.lossy, step=step)
                model = self._run_one(pass_, spec, model, original, ctx, done, record)
                self.records.append(record)
                if not record.modified or record.rolled_back:
                    break
            done.append(str(spec))
        for instrument in ctx.instruments:
            instrument.exit_pipeline(model, ctx)
        return model

    def _run_one(
        self,
        pass_: Pass,
        spec: PassSpec,
        model: Model,
        original: Model,
        ctx: PassContext,
        done: list[str],
        record: PassRecord,
    ) -> Model:
        snapshot = model.clone() if pass_.lossy else None
        for instrument in ctx.instruments:
            instrument.before_pass(pass_, model, ctx)
        start = time.perf_counter()
        try:
            pass_.requires(model, ctx)
            result = pass_.call(model, ctx)
            record.wall_ms = (time.perf_counter() - start) * 1e3
            record.modified = bool(result.modified)
            record.stats = dict(result.stats)
            model = result.model
            if record.modified:
                ctx.invalidate(pass_.preserves)
                _verify_structure(model)
            pass_.ensures(model, ctx)
            for instrument in ctx.instruments:
                instrument.after_pass(pass_, model, ctx, record)
        except Exception as exc:
            for instrument in ctx.instruments:
                instrument.after_pass_failure(pass_, model, ctx, exc)
            raise self._failure(exc, spec, original, ctx, done) from exc
        if record.rolled_back and snapshot is not None:
            ctx.invalidate()
            return snapshot
        return model

    def _failure(
        self,
        exc: Exception,
        spec: PassSpec,
        original: Model,
        ctx: PassContext,
        done: list[str],
    ) -> PassFailedError:
        node = getattr(exc, "node", None)
        cause = exc.message if isinstance(exc, GreenccError) else f"{type(exc).__name__}: {exc}"
        where = f" on node {node}" if node else ""
        before = ", ".join(done) if done else "nothing"
        reproducer = None
        if ctx.reproducer_dir is not None:
            pipeline_text = ",".join([*done, str(spec)])
            try:
                reproducer = str(write_reproducer(ctx.reproducer_dir, original, pipeline_text, ctx, exc))
            except OSError:
                reproducer = None
        kind = "verification failed for" if isinstance(exc, VerificationError) else "failed in"
        message = f"{kind} pass '{spec}' (after [{before}]){where}: {cause}"
        hint = f"reproduce with: greencc repro {reproducer}" if reproducer else (
            "set a reproducer directory (--repro-dir) to save a reproducer"
        )
        error = PassFailedError(
            message, pass_name=spec.name, previous=list(done), node=node,
            reproducer=reproducer, hint=hint,
        )
        if isinstance(exc, VerificationError):
            error.exit_code = VerificationError.exit_code
        return error


def _verify_structure(model: Model) -> None:
    """Structural checks after a modifying pass: acyclic, sorted, ONNX checker clean."""
    cycle = find_cycle(model.graph)
    if cycle is not None:
        raise PassError(
            "the pass introduced a cycle through " + " -> ".join(node_label(n) for n in cycle[:6]),
            node=node_label(cycle[0]),
        )
    try:
        model.graph.sort()
    except ValueError as exc:  # defensive: find_cycle should have caught it
        raise PassError(f"graph cannot be sorted: {exc}") from None
    try:
        check_model(model.ir, "rewritten model")
    except GreenccError as exc:
        raise PassError(f"the pass left an invalid graph: {exc.message}") from None
