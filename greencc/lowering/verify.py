"""Node-by-node comparison of the lowering with ONNX Runtime: every node of a model, lowered
alone, runs on the inputs ONNX Runtime computed for it, and its outputs are compared with
ONNX Runtime's. End to end, an int8 graph cannot match to 1e-4 on a large model: a float
that differs by one ulp upstream (summation order) lands on the other side of a rounding
boundary in the next quantization, and the flipped integer moves the output by a
quantization step. Compared node by node, integer outputs must be equal and float outputs
within tolerance, which checks the integer arithmetic itself.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import onnx
import onnx.helper as oh

from greencc.ir import from_proto, to_self_contained_proto
from greencc.ir.every_value import every_value
from greencc.lowering.torch_module import lower_to_torch
from greencc.model import Model


@dataclass(frozen=True)
class NodeError:
    """The largest difference of one node's outputs from ONNX Runtime's, scaled by
    ``max(1, max |reference|)`` (integer outputs: the absolute difference in steps)."""

    node: str
    op_type: str
    error: float


def node_errors(model: Model, feeds: Mapping[str, np.ndarray]) -> list[NodeError]:
    """Each node of ``model`` lowered alone and run on ONNX Runtime's values for its inputs
    (ONNX Runtime with graph optimizations off, every value exposed), in graph order."""
    proto = to_self_contained_proto(model.ir)
    values = every_value(proto, feeds)
    constants = {init.name: init for init in proto.graph.initializer}
    errors: list[NodeError] = []
    for index, node in enumerate(proto.graph.node):
        if node.op_type == "Constant" or not all(name in values for name in node.output if name):
            continue
        single = _single_node_model(proto, node, values, constants)
        lowered = lower_to_torch(from_proto(single), trainable=False)
        got = lowered.run({name: values[name] for name in lowered.input_names})
        worst = 0.0
        for name in node.output:
            if not name:
                continue
            want, have = values[name], got[name]
            diff = np.abs(have.astype(np.float64) - want.astype(np.float64))
            scale = 1.0 if want.dtype.kind != "f" else max(1.0, float(np.abs(want).max()) if want.size else 1.0)
            worst = max(worst, float(diff.max()) / scale if diff.size else 0.0)
        errors.append(NodeError(node.name or f"{node.op_type}#{index}", node.op_type, worst))
    return errors


def _single_node_model(proto: onnx.ModelProto, node: onnx.NodeProto, values: Mapping[str, np.ndarray],
                       constants: Mapping[str, onnx.TensorProto]) -> onnx.ModelProto:
    inputs, initializers = [], []
    for name in dict.fromkeys(n for n in node.input if n):
        if name in constants:
            initializers.append(constants[name])
        else:
            array = values[name]
            inputs.append(oh.make_tensor_value_info(name, oh.np_dtype_to_tensor_dtype(array.dtype), array.shape))
    outputs = [oh.make_tensor_value_info(name, oh.np_dtype_to_tensor_dtype(values[name].dtype), values[name].shape)
               for name in node.output if name]
    graph = oh.make_graph([node], "single_node", inputs, outputs, initializer=initializers)
    return oh.make_model(graph, opset_imports=list(proto.opset_import), ir_version=proto.ir_version)
