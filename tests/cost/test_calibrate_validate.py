"""Validation: Spearman's rank correlation, the scores and their acceptance, the report's
Markdown, replacing only its own BENCHMARKS.md section, and an end-to-end run over small
in-process cases (the real suite, with MiniLM, runs from the command line)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest

import greencc as gc
from greencc import calibration as cal
from greencc.calibration.validate import (
    SECTION_TITLE,
    CaseResult,
    PredictorScore,
    ValidationCase,
    ValidationReport,
    spearman,
    validate,
    write_section,
)
from greencc.errors import UsageError


@pytest.fixture(autouse=True)
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("GREENCC_CACHE_DIR", str(tmp_path / "cache"))
    return tmp_path / "cache"


def test_spearman_matches_known_values() -> None:
    assert spearman([1, 2, 3, 4], [10, 20, 30, 40]) == pytest.approx(1.0)
    assert spearman([1, 2, 3, 4], [4, 3, 2, 1]) == pytest.approx(-1.0)
    # Monotone but not linear: still a perfect rank correlation.
    assert spearman([1, 2, 3, 4, 5], [1, 8, 27, 64, 125]) == pytest.approx(1.0)
    # Ties get average ranks: ranks (1, 2.5, 2.5, 4) against (1, 2, 3, 4).
    expected = np.corrcoef([1, 2.5, 2.5, 4], [1, 2, 3, 4])[0, 1]
    assert spearman([1, 2, 2, 3], [1, 2, 3, 4]) == pytest.approx(expected)
    assert np.isnan(spearman([1], [2]))


def test_scores_and_acceptance() -> None:
    good = PredictorScore.of("p", [1, 2, 4, 8], [1.1, 1.9, 4.2, 7.5])
    assert good.spearman == pytest.approx(1.0) and good.median_abs_pct == pytest.approx(5.625)  # of 10, 5, 5, 6.25 %
    assert good.passes
    biased = PredictorScore.of("p", [1, 2, 4, 8], [1.5, 3, 6, 12])  # ranks right, 50% off
    assert biased.spearman == pytest.approx(1.0) and not biased.passes
    shuffled = PredictorScore.of("p", [1, 2, 4, 8], [2, 1, 8, 4])
    assert shuffled.spearman < 0.9 and not shuffled.passes


def _report() -> ValidationReport:
    results = [
        CaseResult(f"m{i}", "family", "-O1", {"batch": 1}, 10, 8, measured, measured * 0.9, measured * 1.2,
                   predicted, predicted * 1.3, predicted * 0.1)
        for i, (measured, predicted) in enumerate([(1.0, 1.1), (2.0, 1.5), (4.0, 4.4), (8.0, 8.0)])
    ]
    return ValidationReport("ort-cpu", 2, "ort-cpu-2threads",
                            {"created": "today", "benchmarks": 70, "median_abs_pct": 4.0, "p90_abs_pct": 15.0,
                             "template": "x86-avx512"},
                            {"cpu": "Test CPU", "cores": 2}, "now", results,
                            {"other_cores": 0.01, "steal_cores": 0.0, "noisy": False},
                            ["greencc cost calibrate -t ort-cpu", "greencc cost validate -t ort-cpu"])


def test_report_markdown_and_worst_offenders() -> None:
    report = _report()
    assert [r.name for r in report.worst(2)] == ["m1", "m0"]  # -25%, then +10%
    text = report.to_markdown()
    assert text.startswith(SECTION_TITLE + "\n")
    assert "`greencc cost calibrate -t ort-cpu`; then `greencc cost validate -t ort-cpu`" in text
    assert "| kernel model (calibrated, per fused kernel) | 1.000 |" in text
    assert "m1 (-25%)" in text and "Test CPU" in text
    data = report.to_dict()
    assert data["scores"][0]["passes"] is True and data["results"][1]["error_pct"] == pytest.approx(-25.0)


def test_write_section_replaces_only_its_own_section(tmp_path: Path) -> None:
    path = tmp_path / "BENCHMARKS.md"
    path.write_text("# Benchmarks\n\nintro\n\n## Spine\n\nspine table\n\n"
                    f"{SECTION_TITLE}\n\nold numbers\n\n## Fusion (issue 3)\n\nfusion table\n")
    write_section(path, f"{SECTION_TITLE}\n\nnew numbers\n")
    text = path.read_text()
    assert "new numbers" in text and "old numbers" not in text
    assert text.index("## Spine") < text.index(SECTION_TITLE) < text.index("## Fusion (issue 3)")
    assert "spine table" in text and "fusion table" in text and "intro" in text
    other = tmp_path / "other.md"
    other.write_text("# Benchmarks\n\n## Spine\n\nx\n")
    write_section(other, f"{SECTION_TITLE}\n\nappended\n")
    assert other.read_text().endswith(f"{SECTION_TITLE}\n\nappended\n")
    with pytest.raises(UsageError, match="title"):
        write_section(other, "## Something else\n")


def _mlp() -> gc.Model:
    """x[batch, 64] -> MatMul -> Add -> Relu -> MatMul -> y[batch, 16], seeded weights."""
    import onnx.helper as oh
    import onnx.numpy_helper as nh

    rng = np.random.default_rng(0)

    def weight(name: str, *shape: int) -> onnx.TensorProto:
        return nh.from_array((rng.standard_normal(shape) * 0.1).astype(np.float32), name)

    graph = oh.make_graph(
        [oh.make_node("MatMul", ["x", "w1"], ["h"]), oh.make_node("Add", ["h", "b1"], ["a"]),
         oh.make_node("Relu", ["a"], ["r"]), oh.make_node("MatMul", ["r", "w2"], ["y"])],
        "mlp", [oh.make_tensor_value_info("x", onnx.TensorProto.FLOAT, ["batch", 64])],
        [oh.make_tensor_value_info("y", onnx.TensorProto.FLOAT, ["batch", 16])],
        [weight("w1", 64, 128), weight("b1", 128), weight("w2", 128, 16)])
    return gc.load(oh.make_model(graph, opset_imports=[oh.make_opsetid("", 17)], ir_version=9))


def test_validate_end_to_end_on_small_cases() -> None:
    few = [b for b in cal.default_benchmarks()
           if b.name in {"neg[1]x1", "neg[1]x16", "add 4K", "relu 64K", "matmul 16x32x32", "matmul 128x384x384",
                         "gemm 8x16x10"}]
    calibration = cal.calibrate("ort-cpu", threads=1, benchmarks=few, min_time_s=0.02)
    cases = [ValidationCase(f"mlp{p} b{b}", _mlp, p, {"batch": b}, "MLP") for p in ("-O0", "-O1") for b in (1, 64)]
    report = validate("ort-cpu", threads=1, cases=cases, calibration=calibration, min_time_s=0.05)
    assert [r.name for r in report.results] == [c.name for c in cases]
    for result in report.results:
        assert result.measured_ms > 0 and result.predicted_ms > 0 and result.kernels >= 1
    scores = report.scores()
    assert len(scores) == 3 and scores[0].predictor.startswith("kernel model")
    assert report.background_load["other_cores"] is not None
    assert "| MLP | -O0 | batch=64 |" in report.to_markdown()


def test_validate_without_a_calibration_says_how_to_make_one() -> None:
    with pytest.raises(UsageError, match="no calibrated profile") as info:
        validate("ort-cpu", threads=1, cases=[])
    assert "greencc cost calibrate -t ort-cpu --threads 1" in info.value.hint


def test_default_suite_holds_the_decoder_and_the_vit() -> None:
    from greencc.calibration.validate import default_suite

    full = {c.name: c for c in default_suite()}
    for family in ("gpt2", "vit"):
        for preset in ("-O0", "-O1", "-O2"):
            for batch in (1, 8):
                case = full[f"{family}{preset} b{batch}"]
                assert case.pipeline == preset and case.dims == {"batch": batch}
    assert "causal" in full["gpt2-O2 b1"].family and "ViT" in full["vit-O2 b1"].family
    quick = [c.name for c in default_suite(quick=True)]
    assert [n for n in quick if n.startswith(("gpt2", "vit"))] == ["gpt2-O2 b1", "vit-O2 b1"]
    assert not any(n.startswith("minilm") for n in quick)
    for batch in (1, 8):
        assert "prune-heads" in full[f"minilm-pruned b{batch}"].pipeline
        assert f"tiny-bert-pruned b{batch}" in quick


@pytest.mark.slow
def test_validate_predicts_the_decoder_and_the_vit() -> None:
    from tests import models

    few = [b for b in cal.default_benchmarks()
           if b.name in {"neg[1]x1", "add 4K", "matmul 16x32x32", "matmul 128x384x384", "gemm 128x384x384",
                         "attention 2x16x32 h2", "skiplayernorm 128x32"}]
    calibration = cal.calibrate("ort-cpu", threads=1, benchmarks=few, min_time_s=0.02)
    cases = [
        ValidationCase("gpt2-O2 b2", lambda: models.gpt2_model("dynamo", dynamic=True), "-O2", {"batch": 2}, "GPT-2"),
        ValidationCase("vit-O1 b2", lambda: models.vit_model("dynamo", dynamic=True), "-O1", {"batch": 2}, "ViT"),
    ]
    report = validate("ort-cpu", threads=1, cases=cases, calibration=calibration, min_time_s=0.05)
    for result in report.results:
        assert np.isfinite(result.predicted_ms) and result.predicted_ms > 0 and result.measured_ms > 0
        # Not a precision check (seven benchmarks calibrate this model): nothing absurd. The
        # kernel model is held against the same calibration's roofline, not against the
        # measurement: a timing bound flaked under the parallel suite's load (predicted/measured
        # 10.07 once), and accuracy is the validation benchmark's job (BENCHMARKS.md).
        assert 0.1 < result.predicted_ms / result.profile_ms < 10, result
