"""``recover``: distill a pruned or sparsified model back towards the pipeline's input,
label-free, by lowering it to PyTorch, training it on the teacher's outputs and writing
the weights back (see :mod:`distill` for the training loop, :mod:`data` for the rows).

    W (pruned / sparsified weights) -> W' = argmin ‖f(x; W') − f_teacher(x)‖² / ‖f_teacher(x)‖²
"""

from __future__ import annotations

from typing import Any, ClassVar, Literal

import numpy as np

from greencc.errors import GreenccError, UsageError
from greencc.execution.executor import exposing
from greencc.model import Model
from greencc.pipeline.base import Pass, PassResult, register_pass
from greencc.pipeline.context import PassContext

from .data import load_rows, split
from .sites import PADDING_MASK, following_int8, int8_weight_axes, is_float, shared_hidden_states


@register_pass("recover")
class Recover(Pass):
    """Fine-tune the current model to reproduce the pipeline's input model (label-free distillation).

    Rewrites every float weight the lowering to PyTorch makes trainable:
      W -> W' trained so the model's outputs (and with ``loss=hidden`` its hidden states)
      match the teacher's; zeros of every weight matrix stay zero (masked updates).

    The teacher is the pipeline's input as verification keeps it (``ctx.reference``), so
    the pass needs a verified run and declines without one, when no lossy pass has
    changed the model yet, or with ``data=calib`` and no calibration data. ``optimizer``: ``adamw`` or ``adafactor``; ``lr``: the peak
    learning rate (5% warm-up, then a half cosine down to a tenth). ``max_steps``: at most
    this many optimizer steps of ``batch`` samples (``steps=`` is the pass manager's
    repetition count, not this). ``data``: ``calib`` (the run's calibration data) or the
    path of an ``.npz`` named after the model's inputs; rows are cut along axis 0. A
    seeded ``held_out`` fraction of the rows is never trained on: the loss on it is
    measured every ``eval_every`` steps (0: every twentieth of ``max_steps``), and after
    ``patience`` evaluations without improvement training stops; the best step's weights
    are kept. ``loss``: ``output`` matches the graph's float outputs; ``hidden`` also
    matches the hidden states student and teacher share (the outputs of normalization
    nodes with the same name, dtype and shape in both, see
    :func:`sites.shared_hidden_states`). ``match``: ``mse`` compares each by relative
    squared error (ruled by the largest activations), ``cosine`` by the mean over positions
    of 1 − cosine along the last axis (each position's direction alike; suits embeddings
    compared by cosine). ``qat``: fake-quantize the weights int8 will
    quantize (symmetric, per output channel unless the int8 pass says ``per_channel=false``)
    during training; ``auto`` does so when ``quantize-int8`` follows in the run's pipeline.
    ``padding``: ``auto`` leaves padded positions (zeros of a rank-2 ``attention_mask``
    input) out of the loss, as pooling and attention never read them; ``off`` counts every
    position. ``threads``: torch's intra-op threads while training (0: the compile's
    ``threads``, else torch's setting as it stands); restored afterwards. Deterministic
    under the compile's seed. Stats: held-out loss before and at the best step, best step,
    steps run, whether early stopping ended training, rows used.
    """

    lossy: ClassVar[bool] = True

    optimizer: Literal["adamw", "adafactor"] = "adamw"
    lr: float = 1e-4
    max_steps: int = 200
    batch: int = 8
    patience: int = 4
    eval_every: int = 0
    held_out: float = 0.2
    data: str = "calib"
    loss: Literal["output", "hidden"] = "output"
    match: Literal["mse", "cosine"] = "mse"
    qat: Literal["auto", "on", "off"] = "auto"
    padding: Literal["auto", "off"] = "auto"
    threads: int = 0

    def __init__(self, **options: Any) -> None:
        super().__init__(**options)
        if not (self.lr > 0 and np.isfinite(self.lr)):
            raise UsageError(f"recover: lr={self.lr} must be a positive number", hint="e.g. lr=1e-4")
        for name in ("max_steps", "batch", "patience"):
            if getattr(self, name) < 1:
                raise UsageError(f"recover: {name}={getattr(self, name)} must be at least 1")
        if self.threads < 0:
            raise UsageError(f"recover: threads={self.threads} must be >= 0 (0: the compile's threads)")
        if self.eval_every < 0:
            raise UsageError(f"recover: eval_every={self.eval_every} must be >= 0 (0: every twentieth of max_steps)")
        if not 0.0 < self.held_out < 1.0:
            raise UsageError(f"recover: held_out={self.held_out} must be a fraction in (0, 1)", hint="e.g. held_out=0.2")
        if self.data != "calib" and not self.data.endswith(".npz"):
            raise UsageError(f"recover: data={self.data!r} is neither 'calib' nor an .npz path",
                             hint="data=calib or data=path/to/samples.npz")

    def call(self, model: Model, ctx: PassContext) -> PassResult:
        """Distill ``model`` towards the pipeline's input and write the best weights back."""
        reference = ctx.reference
        if not (ctx.verify and reference.ready and reference.original is not None):
            self.decline(ctx, "<model>", "no teacher: recover distills towards the pipeline's input, "
                                         "which only a verified run keeps")
            return PassResult(model, False)
        if not reference.after_lossy:
            self.decline(ctx, "<model>", "nothing to recover: no lossy pass has changed the model")
            return PassResult(model, False)
        if self.data == "calib" and ctx.calibration is None:
            self.decline(ctx, "<model>", "no data to distill on: the run has no calibration data (or give data=PATH.npz)")
            return PassResult(model, False)
        teacher = reference.original
        rows = load_rows(model, self.data, ctx.calibration)
        data = split(model, rows, self.held_out, ctx.seed)
        targets = [v.name for v in model.graph.outputs if is_float(v) and v.name in {t.name for t in teacher.outputs}]
        if not targets:
            self.decline(ctx, "<model>", "no float graph output shared with the teacher to distill")
            return PassResult(model, False)
        hidden = shared_hidden_states(model, teacher) if self.loss == "hidden" else []
        if self.loss == "hidden" and not hidden:
            self.decline(ctx, "<model>", "loss=hidden: no hidden state shared with the teacher; matching outputs only")
        quantized = self._fake_quant_axes(model, ctx)
        # distill imports torch, loaded only when a recovery actually runs.
        from greencc.lowering import lower_to_torch, write_back

        from .distill import Settings, train

        student = exposing(model, hidden) if hidden else model
        try:
            lowered = lower_to_torch(student.ir, trainable=True)
        except GreenccError as exc:  # an op the lowering lacks: the model stays as pruned
            self.decline(ctx, "<model>", f"cannot lower to PyTorch: {exc.message}")
            return PassResult(model, False)
        by_ir = {ir_name: torch_name for torch_name, ir_name in lowered.parameter_names().items()}
        teacher_runner = ctx.executor.runner(teacher, outputs=[*targets, *hidden], purpose="scoring")
        settings = Settings(
            optimizer=self.optimizer, lr=self.lr, max_steps=self.max_steps, batch=self.batch,
            patience=self.patience, eval_every=self.eval_every or max(1, self.max_steps // 20),
            targets=(*targets, *hidden), seed=ctx.seed, padding_mask=self._padding_mask(model), match=self.match,
            fake_quant={by_ir[name]: axis for name, axis in quantized.items() if name in by_ir},
        )
        threads = self.threads or (ctx.config.threads if ctx.config is not None else None)
        outcome = train(lowered.module, lowered.input_names, lowered.output_names, data, teacher_runner, settings,
                        lambda done, total: ctx.progress.step(f"recover ({self.optimizer})", done, total), threads)
        stats: dict[str, int | float] = {
            "rows_train": len(data.train), "rows_held_out": len(data.held_out), "hidden_states": len(hidden),
            "fake_quantized": len(settings.fake_quant), "masked_weights": outcome.masked_weights,
            "padding_masked": int(settings.padding_mask is not None),
            "loss_before": outcome.loss_before, "loss_best": outcome.best_loss, "best_step": outcome.best_step,
            "steps_run": outcome.steps_run, "stopped_early": int(outcome.stopped_early),
            "train_s": outcome.wall_s, "optimizer_state_bytes": outcome.optimizer_state_bytes,
        }
        for step, loss in outcome.curve:
            stats[f"curve.{step}"] = loss
        if outcome.best_step == 0:
            self.decline(ctx, "<model>", "no step improved the held-out loss; weights unchanged")
            return PassResult(model, False, stats)
        stats["weights_written"] = len(write_back(lowered, model.ir, provenance=str(self)))
        return PassResult(model, True, stats)

    def _padding_mask(self, model: Model) -> str | None:
        """The input whose zeros mark padded positions (``padding=auto``), if the model has one."""
        if self.padding == "off":
            return None
        for value in model.graph.inputs:
            if value.name == PADDING_MASK and value.shape is not None and len(value.shape) == 2 and not is_float(value):
                return value.name
        return None

    def _fake_quant_axes(self, model: Model, ctx: PassContext) -> dict[str, int | None]:
        """The weights to fake-quantize (initializer name -> channel axis), per ``qat``."""
        following = following_int8(ctx)
        if self.qat == "off" or (self.qat == "auto" and following is None):
            return {}
        options = following.items[0].instantiate().options if following is not None else {}
        if not options.get("symmetric", True):
            self.decline(ctx, "<model>", "qat: only symmetric int8 weights are simulated; training in float")
            return {}
        return int8_weight_axes(model, per_channel=bool(options.get("per_channel", True)))
