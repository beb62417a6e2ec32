"""Measurement: the latency harness (warm-up, repeats, median and spread, threads recorded),
energy meters (NVML, RAPL, a labelled CPU-time estimate) with a windowed harness, and
carbon (kWh × PUE × grid intensity, by number or by location from CodeCarbon's offline
tables). See DESIGN §7 and docs/energy.md.
"""

from greencc.measure.carbon import (
    DEFAULT_GRID_INTENSITY_G_PER_KWH,
    DEFAULT_PUE,
    CarbonFactors,
    CarbonFigure,
    carbon_per_inference,
)
from greencc.measure.energy import (
    CpuTimeEstimateMeter,
    EnergyMeasurement,
    Meter,
    MeterAvailability,
    MeterChoice,
    NvmlMeter,
    RaplMeter,
    best_meter,
    measure_energy,
)
from greencc.measure.grid import GridIntensity, lookup_grid_intensity
from greencc.measure.latency import LatencyStats, measure_latency

__all__ = [
    "LatencyStats", "measure_latency",
    "CpuTimeEstimateMeter", "EnergyMeasurement", "Meter", "MeterAvailability", "MeterChoice",
    "NvmlMeter", "RaplMeter", "best_meter", "measure_energy",
    "CarbonFactors", "CarbonFigure", "carbon_per_inference", "GridIntensity", "lookup_grid_intensity",
    "DEFAULT_GRID_INTENSITY_G_PER_KWH", "DEFAULT_PUE",
]
