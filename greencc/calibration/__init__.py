"""Calibrating the cost model on this machine (``greencc cost calibrate``) and validating
its predictions against measurement on held-out models (``greencc cost validate``).

Validation runs real compiles, so this layer sits above the driver; the micro-benchmarks
and the fit's runner live in :mod:`greencc.execution.calibrate` (a compile's driver runs
the quick calibration on first use), what is fitted in :mod:`greencc.cost.kernel_model`.
"""

from greencc.calibration.run import Prediction, predict_latency
from greencc.execution.calibrate import BackgroundLoad, calibrate, target_graph
from greencc.execution.microbenchmarks import MicroBenchmark, default_benchmarks

__all__ = [
    "BackgroundLoad", "MicroBenchmark", "Prediction", "calibrate", "default_benchmarks",
    "predict_latency", "target_graph",
]
