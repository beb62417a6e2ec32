"""Grid intensity by location from CodeCarbon's offline tables: a number, a country
(alpha-3 and alpha-2), a US state (converted from lbs/MWh), a Canadian province, unknown
codes with close matches, and the missing ``greencc[carbon]`` extra."""

from __future__ import annotations

import importlib.util
import json
import sys

import pytest

from greencc.errors import UsageError
from greencc.measure import CarbonFactors
from greencc.measure.grid import (
    COUNTRY_TABLE,
    USA_TABLE,
    codecarbon_dir,
    known_locations,
    lookup_grid_intensity,
)

needs_codecarbon = pytest.mark.skipif(
    importlib.util.find_spec("codecarbon") is None, reason="the greencc[carbon] extra is not installed"
)


def _raw(table: str) -> dict:
    return json.loads((codecarbon_dir() / table).read_text())


def test_a_number_needs_no_table_and_is_the_users() -> None:
    for given in (300, 300.0, "300", " 3e2 "):
        factors = CarbonFactors.of(given)
        assert factors.grid_g_per_kwh == 300.0 and factors.grid_source == "given by the user"
        assert factors.grid_location is None


def test_a_number_works_without_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "codecarbon", None)  # makes find_spec say "not installed"
    assert CarbonFactors.of("250").grid_g_per_kwh == 250.0


@needs_codecarbon
def test_a_country_by_alpha3_and_alpha2_cites_its_table() -> None:
    expected = _raw(COUNTRY_TABLE)["FRA"]
    for code in ("FRA", "fra", "FR"):
        factors = CarbonFactors.of(code)
        assert factors.grid_g_per_kwh == pytest.approx(expected["carbon_intensity"])
        assert factors.grid_location == "FRA"
    # France's grid is mostly nuclear and hydro: far below the 475 g/kWh world average.
    assert 10 < factors.grid_g_per_kwh < 150
    source = factors.grid_source
    assert "France" in source and "Our World in Data" in source and "Ember" in source
    assert str(expected["year"]) in source and "global_energy_mix.json" in source
    assert "FRA (France)" in factors.describe()


@needs_codecarbon
def test_a_us_state_is_converted_from_lbs_per_mwh() -> None:
    table = _raw(USA_TABLE)
    assert table["_unit"]["emissions"] == "lbs/MWh"
    lbs_per_mwh = table["california"]["emissions"]
    for code in ("USA:california", "USA:California", "usa:CA", "US:ca"):
        found = lookup_grid_intensity(code)
        assert found.location == "USA:california" and found.name == "California"
        # 1 lb/MWh = 453.59237 g / 1000 kWh.
        assert found.g_per_kwh == pytest.approx(lbs_per_mwh * 0.45359237)
    assert "eGRID" in found.source and "usa_emissions.json" in found.source and "2023" in found.source
    assert lookup_grid_intensity("USA:new-york").location == "USA:new-york"


@needs_codecarbon
def test_a_canadian_province_prices_its_fossil_shares() -> None:
    quebec = lookup_grid_intensity("CAN:quebec")
    alberta = lookup_grid_intensity("CAN:alberta")
    # Quebec runs on hydro, Alberta on gas and coal.
    assert quebec.g_per_kwh < 20 < 300 < alberta.g_per_kwh
    assert "canada_energy_mix.json" in alberta.source and "carbon_intensity_per_source.json" in alberta.source
    assert lookup_grid_intensity("CAN:british_columbia").location == "CAN:british-columbia"


@needs_codecarbon
@pytest.mark.parametrize("code, fragment", [
    ("FRANCE", "did you mean FRA (France)"),
    ("FRX", "FRA (France)"),
    ("USA:californa", "did you mean USA:california"),
    ("CAN:ontaro", "did you mean CAN:ontario"),
])
def test_an_unknown_code_suggests_close_matches(code: str, fragment: str) -> None:
    with pytest.raises(UsageError) as info:
        CarbonFactors.of(code)
    assert "unknown" in info.value.message and fragment in info.value.hint


@needs_codecarbon
def test_a_region_of_a_country_without_a_regional_table() -> None:
    with pytest.raises(UsageError, match="regions exist for USA and CAN only") as info:
        lookup_grid_intensity("FRA:paris")
    assert "--grid-intensity FRA" in info.value.hint


@needs_codecarbon
def test_known_locations_lists_every_kind() -> None:
    known = known_locations()
    assert "FRA" in known["countries"] and "california" in known["USA"] and "ontario" in known["CAN"]
    assert "usa" not in known["USA"] and not any(k.startswith("_") for k in known["USA"])


def test_a_code_without_the_extra_says_how_to_install_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "codecarbon", None)
    with pytest.raises(UsageError, match="codecarbon is not installed") as info:
        CarbonFactors.of("FRA")
    assert "pip install 'greencc[carbon]'" in info.value.hint


def test_locating_the_tables_does_not_import_codecarbon() -> None:
    import subprocess

    code = ("import sys; from greencc.measure.carbon import CarbonFactors; "
            "CarbonFactors.of('FRA') if __import__('importlib.util').util.find_spec('codecarbon') else None; "
            "print('codecarbon' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"
