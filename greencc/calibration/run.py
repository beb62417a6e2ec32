"""Latency prediction per fused kernel (:func:`predict_latency`): the graph ONNX Runtime
actually runs (:func:`~greencc.execution.calibrate.target_graph`) priced by a calibrated
kernel model, or by a plain profile. Running the micro-benchmarks and fitting the model is
:mod:`greencc.execution.calibrate`'s job.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

from greencc.cost.estimate import estimate_cost
from greencc.cost.kernel_model import Calibration, KernelModel, node_features
from greencc.cost.profile import HardwareProfile
from greencc.driver import as_model, resolve_dims
from greencc.execution.calibrate import target_graph
from greencc.targets.ort.kernel_choice import refusing_optimizers


@dataclass
class Prediction:
    """A latency prediction (ms per inference) and how it was made."""

    latency_ms: float
    method: str
    nodes: int
    kernels: int

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe dict."""
        return asdict(self)


def predict_latency(model: Any, calibration: Calibration | HardwareProfile | str,
                    dims: Mapping[str, int] | None = None) -> Prediction:
    """Predicted latency of ``model`` per inference on the calibrated target.

    With a :class:`Calibration`: its kernel model over :func:`target_graph` (what ONNX
    Runtime runs). With a plain profile: :func:`~greencc.cost.estimate.estimate_cost`
    over the same fused graph (what the profile alone can say).
    """

    model = as_model(model)
    dims = resolve_dims(model, dims)
    refused = refusing_optimizers(calibration.threads) if isinstance(calibration, Calibration) else []
    fused = target_graph(model, dims, disabled_optimizers=refused)
    if isinstance(calibration, Calibration):
        kernel_model = KernelModel.from_dict(calibration.fit["kernel_model"])
        features = node_features(fused, calibration.profile, dims)
        return Prediction(kernel_model.predict_s(features) * 1e3,
                          f"model:kernels({calibration.profile.name}, fused by onnxruntime)",
                          len(model.graph), len(fused.graph))
    cost = estimate_cost(fused, calibration, dims=dims)
    return Prediction(cost.latency_ms, f"model:cost({cost.profile}, fused by onnxruntime)",
                      len(model.graph), len(fused.graph))


