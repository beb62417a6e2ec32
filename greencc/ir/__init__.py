"""greencc's IR: onnx_ir, re-exported, plus load/save, analysis views and metadata helpers.

Pass authors import everything they need from here::

    from greencc import ir
    for node in model.graph: ...
"""

from onnx_ir import (
    Attr,
    AttributeType,
    DataType,
    ExternalTensor,
    Function,
    Graph,
    Model,
    Node,
    Shape,
    SymbolicDim,
    Tensor,
    TensorType,
    Value,
    convenience,
    from_proto,
    tape,
    to_proto,
)
from onnx_ir.convenience import replace_all_uses_with, replace_nodes_and_values

from greencc.ir import traversal  # greencc's, which also re-exports onnx_ir's iterator
from greencc.ir.graph_view import to_networkx
from greencc.ir.io import (
    check_model,
    iter_tensors,
    load_model,
    save_model,
    to_self_contained_proto,
    weights_nbytes,
)
from greencc.ir.meta import get_meta, inherit_provenance, set_meta, source_module
from greencc.ir.shapes import infer_shapes, symbolic_dims, with_static_inputs
from greencc.ir.traversal import (
    captured_values,
    find_cycle,
    node_label,
    subgraphs,
    topological_sort,
)

__all__ = [
    "Attr", "AttributeType", "DataType", "ExternalTensor", "Function", "Graph", "Model",
    "Node", "Shape", "SymbolicDim", "Tensor", "TensorType", "Value", "convenience",
    "from_proto", "tape", "to_proto", "traversal", "replace_all_uses_with",
    "replace_nodes_and_values", "to_networkx", "check_model", "iter_tensors", "load_model",
    "save_model", "to_self_contained_proto", "weights_nbytes", "get_meta",
    "inherit_provenance", "set_meta", "source_module", "infer_shapes", "symbolic_dims",
    "with_static_inputs", "captured_values", "find_cycle", "node_label", "subgraphs",
    "topological_sort",
]
