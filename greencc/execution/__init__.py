"""Execution: the one service that runs models for greencc's own work (verification,
bisection, calibration collection, scoring of lossy passes), backed by a target, with its
sessions cached per model version. Passes reach it as ``ctx.executor``; the verification
reference of a pipeline run is ``ctx.reference``. The cost model's micro-benchmarks, and the
quick calibration a target runs on first use, are timed in :mod:`greencc.execution.calibrate`.
"""

from greencc.execution.executor import (
    DEFAULT_BACKEND,
    PURPOSE_OPTIONS,
    Executor,
    SessionRunner,
    exposing,
)
from greencc.execution.reference import VerificationReference
from greencc.execution.version import ModelVersion, model_version

__all__ = [
    "DEFAULT_BACKEND", "PURPOSE_OPTIONS", "Executor", "ModelVersion", "SessionRunner",
    "VerificationReference", "exposing", "model_version",
]
