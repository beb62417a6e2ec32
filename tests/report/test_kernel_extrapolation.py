"""A calibrated kernel model prices a kernel no calibration benchmark timed from its op
class's means; when such kernels carry much of its prediction, the report's energy headline
is the roofline, and says why, instead of that extrapolation (a quick calibration without
EmbedLayerNormalization once put MiniLM -O3 at 2.13x the energy of the original while the
roofline said 0.40x). Also: EmbedLayerNormalization is priced on the rows it reads."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnx.parser
import pytest

import greencc as gc
from greencc.cost import estimate_cost
from greencc.cost import kernel_model as km
from greencc.cost.profile import HardwareProfile
from greencc.report.ledger import KERNEL_EXTRAPOLATION_LIMIT
from tests.helpers import model_from_text

# MatMul then LayerNormalization: the calibration below timed MatMul but not LayerNormalization.
_W, _S, _B = ", ".join(["0.01"] * 1024), ", ".join(["1.0"] * 32), ", ".join(["0.0"] * 32)
MODEL = f"""<ir_version: 10, opset_import: ["" : 17]>
g (float[16, 32] x) => (float[16, 32] y) <float[32, 32] w = {{{_W}}}, float[32] s = {{{_S}}}, float[32] b = {{{_B}}}> {{
  h = MatMul(x, w)
  y = LayerNormalization<axis = -1>(h, s, b)
}}"""


@pytest.fixture(autouse=True)
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("GREENCC_CACHE_DIR", str(tmp_path / "cache"))
    return tmp_path / "cache"


@pytest.fixture
def model(tmp_path: Path) -> Path:
    path = tmp_path / "m.onnx"
    onnx.save(onnx.parser.parse_model(MODEL), path)
    return path


def _save_calibration(*, fitted: tuple[str, ...]) -> km.KernelModel:
    """A handmade calibration of ort-cpu at 1 thread on this machine whose benchmarks timed
    only the kernels ``fitted``; the normalization class's mean efficiency (from kernels
    not in the model) is 1e-4, far below LayerNormalization's own."""
    profile = km.initial_profile("ort-cpu", 1, HardwareProfile.named("x86-avx512"))
    profile.calibrated = True
    profile.calibration_note = f"handmade for a test; {km.ENERGY_UNCALIBRATED_MARK}"
    kernel_model = km.KernelModel(
        peak_macs_per_s={"float32": 5e10, "int8": 2e11},
        bandwidth_bytes_per_s=[lv.bandwidth_bytes_per_s for lv in profile.memory_levels],
        efficiency={k: 1.0 for k in fitted}, exponent={k: 1.0 for k in fitted},
        overhead_ratio={k: 1.0 for k in fitted}, op_overhead_s=1e-6, light_overhead_s=2e-7, run_overhead_s=3e-6,
        class_efficiency={"matmul": 1.0, "normalization": 1e-4},
    )
    km.Calibration(profile=profile, target="ort-cpu", threads=1, machine=km.machine_info(),
                   created="2026-01-02T03:04:05+00:00", run_overhead_s=3e-6,
                   fit={"kernel_model": kernel_model.to_dict(), "suite": "quick"}).save()
    return kernel_model


def test_prediction_names_the_time_on_kernels_no_benchmark_timed(model: Path) -> None:
    kernel_model = _save_calibration(fitted=("MatMul",))
    profile = km.find_calibrated_profile("ort-cpu", 1)
    features = km.node_features(gc.load(model), profile)
    prediction = kernel_model.predict(features)
    assert prediction.seconds == pytest.approx(kernel_model.predict_s(features))
    layernorm = kernel_model.node_seconds(features)[features.kernel.index("LayerNormalization")]
    assert list(prediction.extrapolated_s) == ["LayerNormalization"]
    # Its scaled roofline time is extrapolated; its dispatch overhead (1 µs, fitted) is not.
    assert prediction.extrapolated_s["LayerNormalization"] == pytest.approx(layernorm - 1e-6)
    assert prediction.extrapolated_share == pytest.approx((layernorm - 1e-6) / prediction.seconds)
    assert prediction.extrapolated_share > 0.9  # the class mean of 1e-4 makes it dominate
    assert kernel_model.fitted("MatMul") and not kernel_model.fitted("LayerNormalization")


def test_an_extrapolating_kernel_model_does_not_lead_the_headline(model: Path) -> None:
    _save_calibration(fitted=("MatMul",))
    report = gc.compile(gc.load(model), "ort-cpu", "cleanup", threads=1).report
    kernel = next(f for f in report.energy_figures() if f["method"] == "model:kernels")
    roofline = next(f for f in report.energy_figures() if f["method"] == "model:cost")
    assert kernel["extrapolated_share"] > KERNEL_EXTRAPOLATION_LIMIT
    assert kernel["extrapolated_kernels"] == ["LayerNormalization"]
    assert "no calibration benchmark timed (LayerNormalization)" in kernel["label"]
    assert kernel["final_mj"] > 10 * roofline["final_mj"]  # the extrapolation this guards against
    headline = report.headline()
    assert headline["method"] == "model:cost" and headline["final_mj"] == report.rows[-1].est_energy_mj
    assert "never timed LayerNormalization" in headline["why"]
    text = " ".join(report.to_console(width=200).split())
    assert "never timed LayerNormalization" in text
    # The extrapolation survives report.json.
    again = gc.Report.from_dict(report.to_dict())
    assert again.headline()["method"] == "model:cost"


def test_a_kernel_model_that_timed_the_model_s_kernels_leads(model: Path) -> None:
    _save_calibration(fitted=("MatMul", "LayerNormalization"))
    report = gc.compile(gc.load(model), "ort-cpu", "cleanup", threads=1).report
    headline = report.headline()
    assert headline["method"] == "model:kernels" and headline["extrapolated_share"] == 0.0
    assert "no calibration benchmark timed" not in headline["label"]


def test_embed_layernorm_reads_the_rows_it_picks_not_its_tables() -> None:
    # 1000-row word table (64,000 B) and 64-row position table (4,096 B); 4 tokens pick
    # 4 rows of each (256 B), as its output holds.
    words = ", ".join(["0.5"] * 16000)
    positions = ", ".join(["0.1"] * 1024)
    estimate = estimate_cost(model_from_text(f"""<ir_version: 10, opset_import: ["": 17, "com.microsoft": 1]>
g (int32[1, 4] ids) => (float[1, 4, 16] y, int32[1] mask) <float[1000, 16] words = {{{words}}},
   float[64, 16] positions = {{{positions}}}, float[16] s = {{{", ".join(["1.0"] * 16)}}},
   float[16] b = {{{", ".join(["0.0"] * 16)}}}> {{
  y, mask = com.microsoft.EmbedLayerNormalization<epsilon = 1e-12>(ids, , words, positions, , s, b)
}}"""), "x86-avx512")
    (node,) = estimate.nodes
    output = 4 * 16 * 4
    assert node.bytes_read == 4 * 4 + output + output + 16 * 4 + 16 * 4
    assert np.isfinite(node.latency_ms)


def test_the_quick_suite_times_every_fused_kernel_int8_leaves_in_a_bert() -> None:
    from greencc.execution.microbenchmarks import quick_benchmarks
    from tests.models import tiny_bert_inputs, tiny_bert_model

    ids, mask = tiny_bert_inputs(batch=2, seq=16)
    quantized, _ = gc.optimize(tiny_bert_model(), "cleanup,fuse,dce,quantize-int8",
                               calibration=[{"input_ids": ids.numpy(), "attention_mask": mask.numpy()}])
    cost = estimate_cost(quantized, "x86-avx512")
    # The kernels that do the arithmetic: fused contrib kernels, products, normalizations.
    kernels = {f"{n.domain}::{n.op_type}" if n.domain not in ("", "ai.onnx") else n.op_type for n in cost.nodes
               if n.domain == "com.microsoft" or n.op_class in ("matmul", "normalization", "quantization")}
    assert {"com.microsoft::EmbedLayerNormalization", "com.microsoft::QAttention"} <= kernels
    timed = {f"{node.domain}::{node.op_type}" if node.domain else node.op_type
             for bench in quick_benchmarks() for node in bench.build().graph.node}
    assert kernels <= timed, sorted(kernels - timed)
