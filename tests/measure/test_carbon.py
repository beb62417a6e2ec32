"""Carbon: kWh × PUE × grid intensity, the cited default, user values and validation."""

from __future__ import annotations

import pytest

from greencc.errors import UsageError
from greencc.measure import DEFAULT_GRID_INTENSITY_G_PER_KWH, CarbonFactors, carbon_per_inference


def test_default_is_the_cited_world_average_and_pue_one() -> None:
    factors = CarbonFactors()
    assert DEFAULT_GRID_INTENSITY_G_PER_KWH == 475.0
    assert factors.pue == 1.0
    assert "IEA 2019" in factors.grid_source and "assumed" in factors.pue_source
    assert "475 gCO2e/kWh" in factors.describe() and "PUE 1" in factors.describe()


def test_grams_per_inference_and_per_thousand() -> None:
    # 3.6 J = 1e-6 kWh; × 1.5 PUE × 400 g/kWh = 6e-4 g per inference.
    figure = carbon_per_inference(3.6, "rapl", CarbonFactors.of(400, 1.5))
    assert figure.kwh_per_inference == pytest.approx(1e-6)
    assert figure.g_per_inference == pytest.approx(6e-4)
    assert figure.g_per_1k_inferences == pytest.approx(0.6)
    data = figure.to_dict()
    assert data["energy_method"] == "rapl" and data["grid_g_per_kwh"] == 400 and data["pue"] == 1.5
    assert data["grid_source"] == "given by the user"


def test_default_factors_on_a_joule() -> None:
    figure = carbon_per_inference(1.0, "model:cost(x86-avx512)")
    assert figure.g_per_inference == pytest.approx(475 / 3.6e6)


@pytest.mark.parametrize("grid, pue", [(-1, 1.0), (float("nan"), 1.0), (100, 0.9), (100, float("inf"))])
def test_bad_factors_are_usage_errors(grid: float, pue: float) -> None:
    with pytest.raises(UsageError):
        CarbonFactors.of(grid, pue)


def test_carbon_needs_a_method_and_a_valid_energy() -> None:
    with pytest.raises(UsageError, match="method"):
        carbon_per_inference(1.0, "")
    with pytest.raises(UsageError, match="non-negative"):
        carbon_per_inference(-1.0, "rapl")
