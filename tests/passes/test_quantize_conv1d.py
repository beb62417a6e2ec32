"""quantize-int8 on 1-D (and 3-D) convolutions: the per-channel scale and bias broadcast
over one trailing axis per spatial dim (a [C, 1, 1] scale made ONNX Runtime reject every
Conv1d: "Mul Incompatible dimensions"), and -O3 compiles a lone Conv1d, a Whisper-like
conv stem and a wav2vec2-like feature extractor within the fidelity budget."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

import greencc as gc
from tests.helpers import run_ort


def _conv_model(spatial: int) -> gc.Model:
    import torch

    conv = {1: torch.nn.Conv1d, 2: torch.nn.Conv2d, 3: torch.nn.Conv3d}[spatial]
    torch.manual_seed(0)
    module = torch.nn.Sequential(conv(4, 8, 3, padding=1), torch.nn.ReLU(), conv(8, 8, 3, stride=2)).eval()
    example = torch.randn(2, 4, *([9] * spatial))
    return gc.from_torch(module, (example,), exporter="legacy")


def _whisper_stem() -> tuple[object, tuple[int, ...]]:
    """Whisper's encoder front: two Conv1d + GELU over log-mel frames, then a Linear."""
    import torch

    class Stem(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv1 = torch.nn.Conv1d(16, 32, 3, padding=1)
            self.conv2 = torch.nn.Conv1d(32, 32, 3, stride=2, padding=1)
            self.proj = torch.nn.Linear(32, 32)

        def forward(self, mel: torch.Tensor) -> torch.Tensor:
            x = torch.nn.functional.gelu(self.conv2(torch.nn.functional.gelu(self.conv1(mel))))
            return self.proj(x.transpose(1, 2))

    return Stem(), (1, 16, 64)


def _wav2vec2_features() -> tuple[object, tuple[int, ...]]:
    """wav2vec2's feature extractor: strided Conv1d over raw audio, GroupNorm, GELU."""
    import torch

    layers = torch.nn.Sequential(
        torch.nn.Conv1d(1, 16, 10, stride=5, bias=False), torch.nn.GroupNorm(16, 16), torch.nn.GELU(),
        torch.nn.Conv1d(16, 16, 3, stride=2, bias=False), torch.nn.GELU(),
        torch.nn.Conv1d(16, 16, 2, stride=2, bias=False), torch.nn.GELU(),
    )
    return layers, (1, 1, 400)


def _lone_conv1d() -> tuple[object, tuple[int, ...]]:
    import torch

    return torch.nn.Conv1d(8, 16, 3, padding=1), (2, 8, 32)


def _cosine(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a.astype(np.float64).ravel(), b.astype(np.float64).ravel()
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


@pytest.mark.parametrize("spatial", [1, 2, 3])
@pytest.mark.parametrize("mode", ["dynamic", "static"])
def test_int8_convolutions_of_every_rank_run_on_ort_close_to_float(spatial, mode):
    model = _conv_model(spatial)
    feeds = {model.inputs[0].name: np.random.default_rng(1).standard_normal((2, 4, *([9] * spatial)), np.float32)}
    expected = run_ort(model, feeds)[0]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        compiled = gc.compile(model, "ort-cpu", f"cleanup,fuse,dce,quantize-int8{{mode={mode}}}",
                              calibration=[feeds], threads=1)
    counts = compiled.model.op_counts()
    assert counts.get("ConvInteger" if mode == "dynamic" else "DequantizeLinear", 0) >= 2, counts
    got = next(iter(compiled(feeds).values()))
    assert got.shape == expected.shape
    assert _cosine(got, expected) >= 0.999


@pytest.mark.parametrize("build", [_lone_conv1d, _whisper_stem, _wav2vec2_features],
                         ids=["conv1d", "whisper-stem", "wav2vec2-features"])
def test_o3_compiles_one_dimensional_convolutions_within_the_budget(build):
    import torch

    module, shape = build()
    torch.manual_seed(0)
    module.eval()
    model = gc.from_torch(module, (torch.randn(*shape),), exporter="legacy")
    rng = np.random.default_rng(2)
    name = model.inputs[0].name
    calibration = [{name: rng.standard_normal(shape).astype(np.float32)} for _ in range(4)]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        compiled = gc.compile(model, "ort-cpu", "-O3", calibration=calibration, threads=1)
    row = next(r for r in compiled.report.rows if r.name.startswith("quantize-int8"))
    assert row.rolled_back is None
    assert row.stats["quantized"] + row.stats.get("float_fallback", 0) >= 1
    feeds = {name: rng.standard_normal(shape).astype(np.float32)}
    assert _cosine(next(iter(compiled(feeds).values())), run_ort(model, feeds)[0]) >= 0.99
