"""ort-cpu's measured kernel choice: onnxruntime's CPU SkipLayerNormalization against
Add + LayerNormalization, the fusion that asks, and the sessions that must not fuse back."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest

import greencc as gc
from greencc.execution.calibrate import target_graph
from greencc.target import resolve_target
from greencc.targets.ort import kernel_choice
from greencc.targets.ort.kernel_choice import (
    SKIP_LAYERNORM,
    refusing_optimizers,
    slower_fused_kernels,
)
from greencc.verify.feeds import random_feeds
from tests.helpers import model_from_text
from tests.models import tiny_bert_model
from tests.passes.test_fuse_skip_layernorm import BEFORE
from tests.passes.test_fuse_support import ops, reasons, run_fusion


@pytest.fixture
def measured(monkeypatch: pytest.MonkeyPatch):
    """Host measurement on (GREENCC_HOST_PROFILE=detect), with the timing replaced by
    ``set(fused_us, unfused_us)``; the cache is cleared before and after."""
    monkeypatch.setenv("GREENCC_HOST_PROFILE", "detect")
    slower_fused_kernels.cache_clear()

    def set_timing(fused_us: float, unfused_us: float) -> None:
        slower_fused_kernels.cache_clear()
        monkeypatch.setattr(kernel_choice, "time_skip_layernorm", lambda threads: (fused_us, unfused_us))

    yield set_timing
    slower_fused_kernels.cache_clear()


def test_the_timing_is_a_real_measurement() -> None:
    fused_us, unfused_us = kernel_choice.time_skip_layernorm(1)
    assert 0 < fused_us < 1e5 and 0 < unfused_us < 1e5


def test_nothing_is_measured_with_the_host_profile_off(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GREENCC_HOST_PROFILE", "off")
    slower_fused_kernels.cache_clear()
    monkeypatch.setattr(kernel_choice, "time_skip_layernorm", lambda threads: pytest.fail("measured"))
    assert slower_fused_kernels(2) == {} and refusing_optimizers(2) == []
    slower_fused_kernels.cache_clear()


def test_a_slow_fused_kernel_is_reported_with_its_numbers(measured) -> None:
    measured(260.0, 45.0)
    why = slower_fused_kernels(2)[SKIP_LAYERNORM]
    assert "260 µs against 45 µs" in why and "2 thread(s)" in why
    assert refusing_optimizers(2) == ["SkipLayerNormFusion"]
    assert resolve_target("ort-cpu", threads=2).slower_fused_ops() == {SKIP_LAYERNORM: why}
    measured(50.0, 45.0)  # within MIN_SLOWDOWN: not slower
    assert slower_fused_kernels(2) == {} and refusing_optimizers(2) == []


def test_the_fusion_declines_with_the_reason_and_fuses_where_the_kernel_is_fast(measured) -> None:
    measured(260.0, 45.0)
    model = model_from_text(BEFORE)
    result, ctx = run_fusion(model, "fuse-skip-layernorm", dims={"N": 1})
    assert not result.modified and "ms::SkipLayerNormalization" not in ops(model)
    assert any("left as Add + LayerNormalization, which run faster" in r and "260 µs" in r
               for r in reasons(ctx, "fuse-skip-layernorm"))
    measured(50.0, 45.0)
    result, _ = run_fusion(model, "fuse-skip-layernorm", dims={"N": 1})
    assert result.modified and "ms::SkipLayerNormalization" in ops(model)


def test_ort_cpu_sessions_do_not_fuse_back_what_was_left_unfused(measured, monkeypatch: pytest.MonkeyPatch) -> None:
    measured(260.0, 45.0)
    created: list[list[str]] = []
    real = ort.InferenceSession

    def recording(*args, disabled_optimizers=None, **kwargs):  # noqa: ANN001, ANN202
        created.append(list(disabled_optimizers or []))
        return real(*args, disabled_optimizers=disabled_optimizers, **kwargs)

    monkeypatch.setattr(ort, "InferenceSession", recording)
    bert = tiny_bert_model()
    compiled = gc.compile(bert, "ort-cpu", "-O2", threads=2, verify=False)
    op_types = {node.op_type for node in compiled.model.graph}
    assert "SkipLayerNormalization" not in op_types and "LayerNormalization" in op_types
    assert created and created[-1] == ["SkipLayerNormFusion"]
    # What onnxruntime runs (and the cost model prices) keeps them apart too.
    dims = {"batch": 1, "seq": 8}
    kept = target_graph(compiled.model, dims, disabled_optimizers=refusing_optimizers(2))
    refused = target_graph(compiled.model, dims)
    assert "SkipLayerNormalization" not in {node.op_type for node in kept.graph}
    assert "SkipLayerNormalization" in {node.op_type for node in refused.graph}
    feeds = random_feeds(bert, seed=3, dims=dims)
    reference = gc.compile(bert, "ort-cpu", "-O0", threads=2, verify=False)(feeds)
    got = compiled(feeds)
    for name, want in reference.items():
        np.testing.assert_allclose(got[name], want, rtol=1e-4, atol=1e-4)
