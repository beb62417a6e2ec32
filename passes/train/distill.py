"""Label-free distillation of a lowered student (a ``torch.fx.GraphModule``) towards a
teacher's outputs: AdamW or Adafactor, warm-up then cosine decay, gradient clipping,
masked updates (a weight's zeros stay zero), optional int8 weight fake-quantization, and
early stopping on held-out rows that restores the best step. Imports torch: ``recover``
loads it only when it runs.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from torch.nn.utils import parametrize

from .data import DistillData, Feeds, batches, epoch_order

# Optimizer settings besides the learning rate. AdamW: PyTorch's defaults. Adafactor:
# PyTorch's (Shazeer & Stern 2018 without first moment, factored second moments).
ADAMW_WEIGHT_DECAY = 0.01
# Gradients are clipped to this global L2 norm: one outlier batch must not undo recovery.
CLIP_NORM = 1.0
# Fraction of the steps the learning rate warms up over; the rest decays by a half cosine
# to FINAL_LR_FRACTION of the peak.
WARMUP_FRACTION = 0.05
FINAL_LR_FRACTION = 0.1
# Added to the teacher's energy in the relative loss, so an all-zero target cannot divide by zero.
EPS = 1e-12

TeacherRun = Callable[[Feeds], dict[str, np.ndarray]]


@dataclass(frozen=True)
class Settings:
    """How to train: ``optimizer`` (``adamw`` | ``adafactor``), peak ``lr``, at most
    ``max_steps`` optimizer steps of ``batch`` rows, held-out evaluation every
    ``eval_every`` steps, stop after ``patience`` evaluations without improvement;
    ``targets``: the output names matched (``hidden`` among them weighed the same as the
    graph outputs, see :func:`relative_loss`); ``padding_mask``: the input whose
    ``[batch, seq]`` zeros mark padded positions, left out of the loss (``None``: every
    position counts); ``match``: how a target is compared, ``mse`` (:func:`relative_loss`)
    or ``cosine`` (:func:`cosine_loss`); ``fake_quant``: torch parameter name -> output-channel axis
    (``None``: per tensor) of the weights fake-quantized to int8."""

    optimizer: str
    lr: float
    max_steps: int
    batch: int
    patience: int
    eval_every: int
    targets: tuple[str, ...]
    seed: int
    padding_mask: str | None = None
    match: str = "mse"
    fake_quant: Mapping[str, int | None] = field(default_factory=dict)


@dataclass
class Outcome:
    """What training did: held-out loss before and at the best step (``best_step`` 0 means
    no step improved and the weights are unchanged), steps run, whether early stopping
    ended it before ``max_steps``, the (step, held-out loss) curve, wall time (s), the
    optimizer state's size (bytes) and the number of masked (zero-keeping) weights."""

    loss_before: float
    best_loss: float
    best_step: int
    steps_run: int
    stopped_early: bool
    curve: list[tuple[int, float]]
    wall_s: float
    optimizer_state_bytes: int
    masked_weights: int


def train(module: torch.nn.Module, input_names: Sequence[str], output_names: Sequence[str], data: DistillData,
          teacher: TeacherRun, settings: Settings, progress: Callable[[int, int], None],
          threads: int | None = None) -> Outcome:
    """Distill ``module`` (in place) towards ``teacher`` on ``data`` and leave it at its best
    held-out step; ``progress(done, total)`` is called after every step. ``threads``:
    torch's intra-op threads meanwhile (``None``: as set), restored afterwards."""
    previous = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    try:
        return _train(module, input_names, output_names, data, teacher, settings, progress)
    finally:
        torch.set_num_threads(previous)


def _train(module: torch.nn.Module, input_names: Sequence[str], output_names: Sequence[str], data: DistillData,
           teacher: TeacherRun, settings: Settings, progress: Callable[[int, int], None]) -> Outcome:
    start = time.perf_counter()
    torch.manual_seed(settings.seed)
    module.train()
    quantized = _attach_fake_quant(module, settings.fake_quant)
    params = [p for p in module.parameters() if p.requires_grad]
    masks = [(p, p.detach() != 0) for p in params if p.ndim >= 2 and bool((p.detach() == 0).any())]
    optimizer = _optimizer(settings, params)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, _lr_factor(settings.max_steps))

    def forward(feeds: Feeds) -> dict[str, torch.Tensor]:
        return run_module(module, input_names, output_names, feeds)

    def mask_of(feeds: Feeds) -> np.ndarray | None:
        return feeds.get(settings.padding_mask) if settings.padding_mask else None

    measure = cosine_loss if settings.match == "cosine" else relative_loss

    held_out = [(group, [teacher(feeds) for feeds in group])
                for group in batches(data.held_out, settings.batch, data.stackable)]

    def evaluate() -> float:
        with torch.no_grad():
            losses = [measure(forward(feeds), expected, settings.targets, mask_of(feeds))
                      for group, targets in held_out for feeds, expected in zip(group, targets, strict=True)]
        return float(torch.stack(losses).mean())

    best_loss = loss_before = evaluate()
    best_step, best_state = 0, [p.detach().clone() for p in params]
    curve = [(0, loss_before)]
    since_best = step = epoch = 0
    order: list[list[Feeds]] = []
    while step < settings.max_steps and since_best < settings.patience:
        if not order:
            permutation = epoch_order(len(data.train), settings.seed, epoch)
            order = batches([data.train[i] for i in permutation], settings.batch, data.stackable)
            epoch += 1
        group = order.pop(0)
        optimizer.zero_grad(set_to_none=True)
        for feeds in group:
            loss = measure(forward(feeds), teacher(feeds), settings.targets, mask_of(feeds)) / len(group)
            loss.backward()
        torch.nn.utils.clip_grad_norm_(params, CLIP_NORM)
        for param, mask in masks:
            if param.grad is not None:
                param.grad.mul_(mask)
        optimizer.step()
        schedule.step()
        with torch.no_grad():
            for param, mask in masks:
                param.mul_(mask)
        step += 1
        progress(step, settings.max_steps)
        if step % settings.eval_every == 0 or step == settings.max_steps:
            loss_now = evaluate()
            curve.append((step, loss_now))
            if loss_now < best_loss:
                best_loss, best_step, since_best = loss_now, step, 0
                best_state = [p.detach().clone() for p in params]
            else:
                since_best += 1
    with torch.no_grad():
        for param, saved in zip(params, best_state, strict=True):
            param.copy_(saved)
    state_bytes = sum(t.numel() * t.element_size() for s in optimizer.state.values() for t in s.values()
                      if isinstance(t, torch.Tensor))
    _detach_fake_quant(quantized)
    module.eval()
    return Outcome(loss_before, best_loss, best_step, step, step < settings.max_steps, curve,
                   time.perf_counter() - start, state_bytes, len(masks))


def run_module(module: torch.nn.Module, input_names: Sequence[str], output_names: Sequence[str],
               feeds: Feeds) -> dict[str, torch.Tensor]:
    """``module``'s outputs by name on numpy ``feeds`` (inputs passed in ``input_names``
    order; a module returning a tensor, a sequence or a mapping)."""
    result = module(*(torch.from_numpy(np.ascontiguousarray(feeds[name])) for name in input_names))
    if isinstance(result, Mapping):
        return dict(result)
    if isinstance(result, torch.Tensor):
        result = (result,)
    return dict(zip(output_names, result, strict=True))


def relative_loss(got: Mapping[str, torch.Tensor], expected: Mapping[str, np.ndarray],
                  targets: Sequence[str], padding: np.ndarray | None = None) -> torch.Tensor:
    """Mean over ``targets`` of ``‖s − t‖² / ‖t‖²`` (student ``s``, teacher ``t``): scale-free,
    so a hidden state and the output count alike, and ``1 − cos`` is bounded by it. Where
    ``padding`` (``[batch, seq]``, zero at padded positions) matches a target's leading
    dims, both norms sum over the unpadded positions only."""
    terms = []
    for name in targets:
        target = torch.from_numpy(np.asarray(expected[name], np.float32))
        student = got[name].float()
        error, energy = (student - target) ** 2, target**2
        weight = _kept_positions(padding, tuple(target.shape), target.ndim)
        if weight is not None:
            error, energy = error * weight, energy * weight
        terms.append(error.sum() / (energy.sum() + EPS))
    return torch.stack(terms).mean()


def cosine_loss(got: Mapping[str, torch.Tensor], expected: Mapping[str, np.ndarray],
                targets: Sequence[str], padding: np.ndarray | None = None) -> torch.Tensor:
    """Mean over ``targets`` of the mean over positions of ``1 − cos(s, t)`` along the last
    axis (student ``s``, teacher ``t``): every position's direction counts alike, however
    large its norm, where :func:`relative_loss` is ruled by the largest activations. Where
    ``padding`` (``[batch, seq]``, zero at padded positions) matches a target's leading
    dims, padded positions are left out. A target of rank below 2 is compared whole."""
    terms = []
    for name in targets:
        target = torch.from_numpy(np.asarray(expected[name], np.float32))
        student = got[name].float()
        if target.ndim < 2:
            target, student = target.reshape(1, -1), student.reshape(1, -1)
        distance = 1 - torch.nn.functional.cosine_similarity(student, target, dim=-1, eps=1e-8)
        weight = _kept_positions(padding, tuple(distance.shape), distance.ndim) if target.ndim >= 3 else None
        if weight is None:
            terms.append(distance.mean())
        else:
            weight = weight.expand_as(distance)
            terms.append((distance * weight).sum() / weight.sum().clamp_min(1))
    return torch.stack(terms).mean()


def _kept_positions(padding: np.ndarray | None, shape: tuple[int, ...], ndim: int) -> torch.Tensor | None:
    """1 at the unpadded positions of ``padding`` (``[batch, seq]``), 0 elsewhere, shaped to
    broadcast over a tensor of ``shape`` (rank ``ndim``); ``None`` when there is no
    padding or ``shape`` does not lead with ``[batch, seq]``."""
    if padding is None or ndim < 2 or shape[:2] != padding.shape:
        return None
    return torch.from_numpy(np.asarray(padding != 0, np.float32)).reshape(*padding.shape, *([1] * (ndim - 2)))


def _optimizer(settings: Settings, params: list[torch.nn.Parameter]) -> torch.optim.Optimizer:
    if settings.optimizer == "adafactor":
        return torch.optim.Adafactor(params, lr=settings.lr)
    return torch.optim.AdamW(params, lr=settings.lr, weight_decay=ADAMW_WEIGHT_DECAY)


def _lr_factor(max_steps: int) -> Callable[[int], float]:
    warmup = max(1, int(WARMUP_FRACTION * max_steps))

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = (step - warmup) / max(1, max_steps - warmup)
        return FINAL_LR_FRACTION + (1 - FINAL_LR_FRACTION) * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))

    return factor


class _FakeQuantInt8(torch.nn.Module):
    """Symmetric int8 fake quantization with a straight-through gradient: the scale is
    ``max|w| / 127`` per output channel (or per tensor), as ``quantize-int8`` computes it."""

    def __init__(self, axis: int | None) -> None:
        super().__init__()
        self.axis = axis

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        if self.axis is None:
            scale = weight.detach().abs().max().clamp_min(EPS) / 127
            return torch.fake_quantize_per_tensor_affine(weight, float(scale), 0, -127, 127)
        dims = [d for d in range(weight.ndim) if d != self.axis]
        scale = weight.detach().abs().amax(dim=dims).clamp_min(EPS) / 127
        zero = torch.zeros_like(scale, dtype=torch.int32)
        return torch.fake_quantize_per_channel_affine(weight, scale, zero, self.axis, -127, 127)


def _attach_fake_quant(module: torch.nn.Module, axes: Mapping[str, int | None]) -> list[tuple[torch.nn.Module, str]]:
    """Fake-quantize the named parameters in every forward; the float weights stay the
    ones the optimizer updates (and the ones written back)."""
    attached = []
    for name, axis in axes.items():
        owner_name, _, leaf = name.rpartition(".")
        owner = module.get_submodule(owner_name) if owner_name else module
        parametrize.register_parametrization(owner, leaf, _FakeQuantInt8(axis))
        attached.append((owner, leaf))
    return attached


def _detach_fake_quant(attached: list[tuple[torch.nn.Module, str]]) -> None:
    for owner, leaf in attached:
        parametrize.remove_parametrizations(owner, leaf, leave_parametrized=False)
