"""Calibrating the cost model on this machine (``greencc cost calibrate``) and validating
its predictions against measurement on held-out models (``greencc cost validate``).

This layer runs real compiles and sessions, so it sits above the driver; what it fits
(the kernel model and the calibrated profile) lives in :mod:`greencc.cost.kernel_model`,
which the cost model reads without running anything.
"""

from greencc.calibration.benchmarks import MicroBenchmark, default_benchmarks
from greencc.calibration.run import (
    BackgroundLoad,
    Prediction,
    calibrate,
    predict_latency,
    target_graph,
)

__all__ = [
    "BackgroundLoad", "MicroBenchmark", "Prediction", "calibrate", "default_benchmarks",
    "predict_latency", "target_graph",
]
