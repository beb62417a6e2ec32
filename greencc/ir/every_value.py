"""Every value a model computes: ONNX Runtime run with graph optimizations off and every
node output exposed as a graph output, so no value is fused away and each keeps its name.

The one place that does this for code below the executor (lowering's per-node check,
the host calibration's shape probe); above it, ``Executor.runner(outputs=...)`` serves.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import onnx


def exposing_every_value(proto: onnx.ModelProto) -> onnx.ModelProto:
    """A copy of ``proto`` whose graph outputs also list every node output of the main
    graph (untyped: ONNX Runtime infers them); ``proto`` is not modified."""
    exposed = onnx.ModelProto()
    exposed.CopyFrom(proto)
    known = {output.name for output in exposed.graph.output}
    for node in exposed.graph.node:
        for name in node.output:
            if name and name not in known:
                exposed.graph.output.append(onnx.ValueInfoProto(name=name))
                known.add(name)
    return exposed


def every_value(proto: onnx.ModelProto, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """``{name: array}`` of ``feeds`` and of every node output of ``proto`` on them, run
    by ONNX Runtime's CPU provider with graph optimizations off (non-tensor outputs left
    out). Raises whatever ONNX Runtime raises for a graph it cannot load or run."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    options.log_severity_level = 3
    session = ort.InferenceSession(exposing_every_value(proto).SerializeToString(), options,
                                   providers=["CPUExecutionProvider"])
    names = [output.name for output in session.get_outputs()]
    arrays = session.run(names, dict(feeds))
    values = dict(feeds)
    values.update((name, array) for name, array in zip(names, arrays, strict=True) if isinstance(array, np.ndarray))
    return values
