"""`greencc advise`: the threads x batch curve, the recommendation, its label, the page."""

from __future__ import annotations

from greencc.cli import main
from greencc.measure.energy import MEASURED_METHODS, best_meter
from greencc.serve.advise import Advice, AdvicePoint


def test_advise_prints_the_curve_and_a_labelled_recommendation(artifacts, capsys, tmp_path):
    page = tmp_path / "advice.html"
    status = main(["advise", str(artifacts["o1"]), "--slo-ms", "1000", "--threads", "1,2", "--batch", "1,4",
                   "--window", "0.1", "--html", str(page)])
    out = capsys.readouterr().out
    assert status == 0, out
    rows = [line.split() for line in out.splitlines() if line.strip()[:1].isdigit()]
    assert [(r[0], r[1]) for r in rows] == [("1", "1"), ("1", "4"), ("2", "1"), ("2", "4")]
    assert "recommendation: --threads" in out
    label = "measured" if best_meter("cpu").meter.method in MEASURED_METHODS else "estimated"
    assert f"— {label} (" in out and f"mJ/inference {label}" in out
    assert "CPU frequency:" in out and "GPU power limit:" in out
    html = page.read_text()
    assert "Serving advice: energy per inference vs threads and batch" in html and "recommended:" in html


def test_the_best_point_is_the_least_energy_within_the_target():
    points = [AdvicePoint(1, 1, 2.0, 0.004, "m", True), AdvicePoint(1, 8, 9.0, 0.001, "m", False),
              AdvicePoint(2, 4, 4.0, 0.002, "m", True)]
    assert Advice(5.0, points, False, "m").best == points[2]
    assert Advice(1.0, points[1:2], False, "m").best is None
    assert "no setting meets 1 ms" in Advice(1.0, points[1:2], False, "m").to_text()
