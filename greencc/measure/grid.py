"""Grid carbon intensity by location, offline, from the tables CodeCarbon ships in its wheel.

Location codes: an ISO 3166 country (``FRA`` or ``FR``), or a US state / Canadian
province as ``COUNTRY:REGION`` (``USA:california``, ``USA:CA``, ``CAN:ontario``; spaces in
names may be written as ``-`` or ``_``). The tables are read as files from the installed
``codecarbon`` package (the ``greencc[carbon]`` extra), never by importing it:

- countries: ``data/private_infra/global_energy_mix.json``, ``carbon_intensity`` in
  gCO2e/kWh of the country's latest year there (Our World in Data, "Carbon intensity of
  electricity generation", adapted from Ember and the Energy Institute);
- US states: ``data/private_infra/2023/usa_emissions.json``, EPA eGRID2023 total output
  CO2e rate in lbs/MWh (converted: 1 lb/MWh = 0.45359237 g/kWh);
- Canadian provinces: ``data/private_infra/2023/canada_energy_mix.json``, the share of
  generation by source, priced as CodeCarbon prices it: fossil shares × the combustion
  factors in ``carbon_intensity_per_source.json`` (coal, petroleum, natural gas).
"""

from __future__ import annotations

import difflib
import functools
import importlib.metadata
import importlib.util
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from greencc.errors import UsageError

INSTALL_HINT = "pip install 'greencc[carbon]' (CodeCarbon's offline tables), or give a number of gCO2e/kWh"
COUNTRY_TABLE = "data/private_infra/global_energy_mix.json"
USA_TABLE = "data/private_infra/2023/usa_emissions.json"
CANADA_TABLE = "data/private_infra/2023/canada_energy_mix.json"
SOURCE_FACTORS_TABLE = "data/private_infra/carbon_intensity_per_source.json"
# 1 lb = 0.45359237 kg (exact, by definition of the avoirdupois pound), so 1 lb/MWh =
# 453.59237 g / 1000 kWh.
G_PER_KWH_PER_LB_PER_MWH = 0.45359237
COUNTRY_SOURCE = ("Our World in Data, 'Carbon intensity of electricity generation' "
                  "(adapted from Ember and the Energy Institute)")
# Canada's file lists generation shares only; CodeCarbon prices them with these three
# combustion factors (its `_region_energy_mix_to_emissions_rate`), the rest as zero.
CANADA_FOSSIL_SOURCES = {"coal": "coal", "petroleum": "petroleum", "naturalGas": "natural_gas"}
REGION_COUNTRIES = ("USA", "CAN")


@dataclass(frozen=True)
class GridIntensity:
    """Carbon intensity of a location's electricity in gCO2e/kWh, with its citation.

    ``location`` is the normalised code (``FRA``, ``USA:california``), ``name`` the place in
    words, ``year`` the data year and ``source`` the table cited (data set, file, year).
    """

    location: str
    name: str
    g_per_kwh: float
    year: int | None
    source: str


def codecarbon_dir() -> Path:
    """The installed ``codecarbon`` package directory, found without importing it.

    Raises ``UsageError`` naming the ``greencc[carbon]`` extra when it is not installed.
    """
    spec = importlib.util.find_spec("codecarbon")
    locations = list(spec.submodule_search_locations or []) if spec is not None else []
    for location in locations:
        if (Path(location) / COUNTRY_TABLE).is_file():
            return Path(location)
    raise UsageError(
        "grid intensity by location needs CodeCarbon's offline tables, and codecarbon is not installed"
        + ("" if spec is None else " with its data files"),
        hint=INSTALL_HINT,
    )


def _codecarbon_version() -> str:
    try:
        return importlib.metadata.version("codecarbon")
    except importlib.metadata.PackageNotFoundError:
        return "?"


@functools.lru_cache(maxsize=8)
def _read_table(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise UsageError(f"cannot read CodeCarbon's table {path}: {exc}",
                         hint="reinstall it: pip install --force-reinstall 'greencc[carbon]'") from None
    if not isinstance(data, dict):
        raise UsageError(f"CodeCarbon's table {path} is not a JSON object",
                         hint="reinstall it: pip install --force-reinstall 'greencc[carbon]'")
    return data


def _table(name: str) -> tuple[dict[str, Any], str]:
    """(the parsed table, its citation path ``codecarbon X.Y.Z data/...``)."""
    data = _read_table(codecarbon_dir() / name)
    return data, f"codecarbon {_codecarbon_version()} {name}"


def lookup_grid_intensity(code: str) -> GridIntensity:
    """Grid intensity (gCO2e/kWh) of ``code``: ``FRA``/``FR``, ``USA:california``/``USA:CA``,
    ``CAN:ontario``. ``UsageError`` with close matches when the code is unknown."""
    if not isinstance(code, str) or not code.strip():
        raise UsageError(f"grid location {code!r} must be a country or region code",
                         hint="e.g. FRA, DE, USA:california, CAN:ontario")
    country_part, _, region_part = code.strip().partition(":")
    countries, _ = _table(COUNTRY_TABLE)
    country = _country_code(country_part, countries)
    if not region_part.strip():
        return _country_intensity(country, countries)
    if country == "USA":
        return _usa_state(region_part)
    if country == "CAN":
        return _canada_province(region_part)
    raise UsageError(
        f"no regional grid table for {country} ({countries[country].get('country_name', country)}): "
        f"regions exist for {' and '.join(REGION_COUNTRIES)} only",
        hint=f"use the country code alone: --grid-intensity {country}",
    )


def _country_code(text: str, countries: dict[str, Any]) -> str:
    """``text`` as an ISO alpha-3 code present in the country table (alpha-2 mapped)."""
    key = text.strip().upper()
    if key in countries:
        return key
    if len(key) == 2:
        alpha3 = _alpha3_of(key)
        if alpha3 in countries:
            return alpha3
    names = {str(v.get("country_name", "")).upper(): k for k, v in countries.items()}
    close = difflib.get_close_matches(key, list(countries), n=3, cutoff=0.6)
    close += [names[n] for n in difflib.get_close_matches(key, list(names), n=3, cutoff=0.6)]
    suggestions = ", ".join(f"{c} ({countries[c].get('country_name', c)})" for c in dict.fromkeys(close))
    raise UsageError(
        f"unknown grid location {text.strip()!r}: not an ISO 3166 country code in CodeCarbon's table",
        hint=(f"did you mean {suggestions}? " if suggestions else "")
        + "use an alpha-3 or alpha-2 code (FRA, FR), USA:STATE or CAN:PROVINCE, or a number of gCO2e/kWh",
    )


def _alpha3_of(alpha2: str) -> str | None:
    """ISO alpha-3 of an alpha-2 code via pycountry (installed with codecarbon), if present."""
    if importlib.util.find_spec("pycountry") is None:
        return None
    import pycountry

    country = pycountry.countries.get(alpha_2=alpha2)
    return None if country is None else str(country.alpha_3)


def _country_intensity(country: str, countries: dict[str, Any]) -> GridIntensity:
    entry = countries[country]
    value = entry.get("carbon_intensity")
    if not isinstance(value, (int, float)):
        raise UsageError(f"CodeCarbon's table has no carbon intensity for {country}",
                         hint="give a number of gCO2e/kWh instead")
    _, path = _table(COUNTRY_TABLE)
    year = entry.get("year")
    name = str(entry.get("country_name", country))
    return GridIntensity(
        location=country, name=name, g_per_kwh=float(value), year=year,
        source=f"{country} ({name}): {COUNTRY_SOURCE}, {year}, via {path}",
    )


def _region_key(text: str) -> str:
    return " ".join(text.strip().lower().replace("-", " ").replace("_", " ").split())


def _unknown_region(text: str, country: str, names: list[str]) -> UsageError:
    close = difflib.get_close_matches(_region_key(text), names, n=3, cutoff=0.6)
    codes = [f"{country}:{name.replace(' ', '-')}" for name in (close or names)]
    return UsageError(
        f"unknown region {text.strip()!r} of {country}",
        hint=f"did you mean {', '.join(codes)}?" if close else f"known regions: {', '.join(codes)}",
    )


def _usa_state(text: str) -> GridIntensity:
    table, path = _table(USA_TABLE)
    unit = (table.get("_unit") or {}).get("emissions")
    if unit != "lbs/MWh":
        raise UsageError(f"{path}: emissions are in {unit!r}, expected 'lbs/MWh'",
                         hint="this codecarbon version changed its table; give a number of gCO2e/kWh")
    states = {k: v for k, v in table.items() if not k.startswith("_") and k != "usa"}
    key = _region_key(text)
    by_code = {str(v.get("regionCode", "")).lower(): k for k, v in states.items()}
    name = key if key in states else by_code.get(key)
    if name is None:
        raise _unknown_region(text, "USA", sorted(states))
    source = table.get("_source") or {}
    year = source.get("year")
    field = f", field {source['field']}" if source.get("field") else ""
    return GridIntensity(
        location=f"USA:{name.replace(' ', '-')}", name=name.title(),
        g_per_kwh=float(states[name]["emissions"]) * G_PER_KWH_PER_LB_PER_MWH, year=year,
        source=f"USA:{name.replace(' ', '-')} ({name.title()}): "
        f"{source.get('name', 'EPA eGRID')}{field} ({year}), lbs/MWh × 0.4536, via {path}",
    )


def _canada_province(text: str) -> GridIntensity:
    table, path = _table(CANADA_TABLE)
    factors, factors_path = _table(SOURCE_FACTORS_TABLE)
    if factors.get("unit") not in ("gCO2.eq/kWh", "gCO2e/kWh"):
        raise UsageError(f"{factors_path}: factors are in {factors.get('unit')!r}, expected gCO2.eq/kWh",
                         hint="this codecarbon version changed its table; give a number of gCO2e/kWh")
    key = _region_key(text)
    if key not in table:
        raise _unknown_region(text, "CAN", sorted(table))
    mix = table[key]
    total = float(mix.get("total") or 0.0)
    if total <= 0:
        raise UsageError(f"{path}: no generation total for {key}", hint="give a number of gCO2e/kWh")
    grams = sum(float(mix.get(share, 0.0)) / total * float(factors[factor])
                for share, factor in CANADA_FOSSIL_SOURCES.items())
    year = _year_of(CANADA_TABLE)
    return GridIntensity(
        location=f"CAN:{key.replace(' ', '-')}", name=key.title(), g_per_kwh=grams, year=year,
        source=f"CAN:{key.replace(' ', '-')} ({key.title()}): generation shares {year} from {path} "
        f"× combustion factors for coal, petroleum and natural gas from {SOURCE_FACTORS_TABLE} "
        "(fossil shares only, as CodeCarbon computes it)",
    )


def _year_of(table: str) -> int | None:
    """The year in a table's folder name (``.../2023/...``)."""
    for part in Path(table).parts:
        if part.isdigit() and len(part) == 4:
            return int(part)
    return None


def known_locations() -> dict[str, list[str]]:
    """Every code :func:`lookup_grid_intensity` accepts, by kind: ``countries`` (alpha-3),
    ``USA`` (state names) and ``CAN`` (province names)."""
    countries, _ = _table(COUNTRY_TABLE)
    usa, _ = _table(USA_TABLE)
    canada, _ = _table(CANADA_TABLE)
    return {
        "countries": sorted(countries),
        "USA": sorted(k for k in usa if not k.startswith("_") and k != "usa"),
        "CAN": sorted(canada),
    }


__all__ = ["GridIntensity", "codecarbon_dir", "known_locations", "lookup_grid_intensity",
           "INSTALL_HINT"]
