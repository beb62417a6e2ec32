"""Carbon: grams of CO2-equivalent per inference from energy, as kWh × PUE × grid intensity.

The grid intensity is the cited world-average default, a number the user gives, or a
location code (``FRA``, ``FR``, ``USA:california``, ``CAN:ontario``) looked up offline in the
tables CodeCarbon ships (:mod:`greencc.measure.grid`, the ``greencc[carbon]`` extra) and
cited by table, year and data set. Intensity still varies by hour and contract: a yearly
average is what these figures use.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

from greencc.errors import UsageError
from greencc.measure.grid import lookup_grid_intensity

# World-average carbon intensity of electricity, 475 gCO2e/kWh: IEA, "Global Energy & CO2
# Status Report 2019"; CodeCarbon uses this figure as its default when it cannot locate
# the machine (CodeCarbon documentation, "Methodology").
DEFAULT_GRID_INTENSITY_G_PER_KWH = 475.0
DEFAULT_GRID_SOURCE = "IEA 2019 world average (CodeCarbon's default)"
# Power usage effectiveness (facility energy / IT energy). 1.0 counts the machine only,
# no cooling or power delivery: an assumption, stated wherever a figure is shown; a data
# centre's PUE is typically above 1 (pass --pue).
DEFAULT_PUE = 1.0
DEFAULT_PUE_SOURCE = "assumed 1.0: the machine only, no facility overhead"

_J_PER_KWH = 3.6e6


@dataclass(frozen=True)
class CarbonFactors:
    """Grid intensity (gCO2e/kWh) and PUE (≥ 1), with where each came from."""

    grid_g_per_kwh: float = DEFAULT_GRID_INTENSITY_G_PER_KWH
    pue: float = DEFAULT_PUE
    grid_source: str = DEFAULT_GRID_SOURCE
    pue_source: str = DEFAULT_PUE_SOURCE
    # The location code the intensity was looked up for (``FRA``, ``USA:california``), if any.
    grid_location: str | None = None

    def __post_init__(self) -> None:
        if not _finite(self.grid_g_per_kwh) or self.grid_g_per_kwh < 0:
            raise UsageError(
                f"grid intensity {self.grid_g_per_kwh!r} must be a non-negative number of gCO2e/kWh",
                hint=f"e.g. --grid-intensity {DEFAULT_GRID_INTENSITY_G_PER_KWH:g} (world average)",
            )
        if not _finite(self.pue) or self.pue < 1.0:
            raise UsageError(
                f"PUE {self.pue!r} must be a number ≥ 1 (facility energy / IT energy)",
                hint="e.g. --pue 1.2 for an efficient data centre, 1.0 for the machine alone",
            )

    @classmethod
    def of(cls, grid_intensity: float | str | None = None, pue: float | None = None) -> CarbonFactors:
        """Factors from optional user values; the defaults (and their sources) fill the rest.

        ``grid_intensity`` is gCO2e/kWh (a number, or text that parses as one) or a location
        code looked up by :func:`greencc.measure.grid.lookup_grid_intensity` (``FRA``,
        ``FR``, ``USA:california``, ``CAN:ontario``), whose table is then the cited source.
        """
        grid, grid_source, location = DEFAULT_GRID_INTENSITY_G_PER_KWH, DEFAULT_GRID_SOURCE, None
        if isinstance(grid_intensity, str) and _number(grid_intensity) is None:

            found = lookup_grid_intensity(grid_intensity)
            grid, grid_source, location = found.g_per_kwh, found.source, found.location
        elif grid_intensity is not None:
            value = _number(grid_intensity) if isinstance(grid_intensity, str) else grid_intensity
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise UsageError(
                    f"grid intensity {grid_intensity!r} must be a number of gCO2e/kWh or a location code",
                    hint="e.g. --grid-intensity 300, --grid-intensity FRA or --grid-intensity USA:california",
                )
            grid, grid_source = float(value), "given by the user"
        return cls(
            grid_g_per_kwh=grid,
            pue=DEFAULT_PUE if pue is None else float(pue),
            grid_source=grid_source,
            pue_source=DEFAULT_PUE_SOURCE if pue is None else "given by the user",
            grid_location=location,
        )

    def grams(self, energy_j: float) -> float:
        """gCO2e of ``energy_j`` joules of IT energy: kWh × PUE × intensity."""
        return energy_j / _J_PER_KWH * self.pue * self.grid_g_per_kwh

    def describe(self) -> str:
        """``grid 475 gCO2e/kWh (IEA 2019 ...), PUE 1.0 (assumed ...)``."""
        return (
            f"grid {self.grid_g_per_kwh:g} gCO2e/kWh ({self.grid_source}), "
            f"PUE {self.pue:g} ({self.pue_source})"
        )

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe dict of the factors and their sources."""
        return asdict(self)


@dataclass(frozen=True)
class CarbonFigure:
    """gCO2e per inference and per 1,000 inferences from one energy figure.

    ``energy_method`` is the label of the energy it was computed from (``model:cost(...)``,
    ``rapl``, ``estimate:cpu-time×tdp``...), so a carbon figure is never unlabelled.
    """

    j_per_inference: float
    energy_method: str
    factors: CarbonFactors

    @property
    def kwh_per_inference(self) -> float:
        """IT energy per inference in kWh."""
        return self.j_per_inference / _J_PER_KWH

    @property
    def g_per_inference(self) -> float:
        """gCO2e per inference."""
        return self.factors.grams(self.j_per_inference)

    @property
    def g_per_1k_inferences(self) -> float:
        """gCO2e per 1,000 inferences."""
        return 1000 * self.g_per_inference

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe dict with the inputs (energy, its method, the factors) and the results."""
        return {
            "j_per_inference": self.j_per_inference,
            "energy_method": self.energy_method,
            "kwh_per_inference": self.kwh_per_inference,
            "g_per_inference": self.g_per_inference,
            "g_per_1k_inferences": self.g_per_1k_inferences,
            "grid_g_per_kwh": self.factors.grid_g_per_kwh,
            "pue": self.factors.pue,
            "grid_source": self.factors.grid_source,
            "pue_source": self.factors.pue_source,
            "grid_location": self.factors.grid_location,
        }


def carbon_per_inference(
    j_per_inference: float, energy_method: str, factors: CarbonFactors | None = None
) -> CarbonFigure:
    """gCO2e per inference for ``j_per_inference`` joules measured or estimated by ``energy_method``."""
    if not _finite(j_per_inference) or j_per_inference < 0:
        raise UsageError(f"energy per inference {j_per_inference!r} must be a non-negative number of J")
    if not isinstance(energy_method, str) or not energy_method:
        raise UsageError("a carbon figure needs the method of the energy it comes from")
    return CarbonFigure(float(j_per_inference), energy_method, factors or CarbonFactors())


def _number(text: str) -> float | None:
    """``text`` as a float, or ``None`` when it is not a number (a location code)."""
    try:
        return float(text)
    except ValueError:
        return None


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


__all__ = [
    "CarbonFactors", "CarbonFigure", "carbon_per_inference",
    "DEFAULT_GRID_INTENSITY_G_PER_KWH", "DEFAULT_GRID_SOURCE", "DEFAULT_PUE", "DEFAULT_PUE_SOURCE",
]
