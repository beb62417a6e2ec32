"""Constant folding: evaluate ahead of time what depends only on constants.

``ConstantFolder`` is the engine (also used by simplify-shapes): it evaluates one node
as a one-node model in ONNX Runtime (the runtime verification compares against),
falling back to ONNX's reference evaluator, and swaps the node's outputs for initializers.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import numpy as np
import onnx
import onnx.helper
import onnx_ir as ir

from greencc.ir import subgraphs
from greencc.model import Model
from greencc.passes.lib.graph_edits import (
    NON_DETERMINISTIC_OPS,
    NameScope,
    all_graphs,
    constant_node_tensor,
    constant_tensor,
    is_onnx_op,
    remove_node,
    replace_with_constant,
)
from greencc.pipeline.base import Pass, PassResult, register_pass
from greencc.pipeline.context import PassContext

# Inputs bigger than this (bytes, all inputs of one node together) are not evaluated:
# serialising them into a one-node model would cost more memory than folding saves.
MAX_INPUT_BYTES = 256 * 1024 * 1024
# Inputs up to this size (bytes) are given to shape inference as values, so that outputs
# whose shape comes from input values (ConstantOfShape, Range, Expand...) get a static
# shape, and so a size, before anything is evaluated.
MAX_INFERENCE_VALUE_BYTES = 1024 * 1024
# Ops whose output size is set by their inputs' values rather than their shapes: with no
# static output shape they are not evaluated, as the result could be of any size.
VALUE_SIZED_OPS = frozenset({
    "ConstantOfShape", "Range", "Expand", "Tile", "Resize", "Upsample", "Pad", "CenterCropPad",
    "OneHot", "Col2Im", "MaxUnpool", "MelWeightMatrix", "STFT", "DFT", "BlackmanWindow",
    "HammingWindow", "HannWindow",
})

# IR versions before 4 require every initializer to be a graph input; 4 dropped that
# rule and changed nothing else (onnx/IR.md, "IR version 4").
INITIALIZERS_NEED_NOT_BE_INPUTS = 4

Decline = Callable[[ir.Node, str], None]


class FoldDeclined(Exception):
    """Raised inside the folder when a node cannot be folded; the message is the reason."""


class ConstantFolder:
    """Folds single nodes of ``model`` whose inputs are all constants.

    ``max_size`` bounds each result in bytes; ``decline(node, reason)`` is told why a
    node with constant inputs was left alone.
    """

    def __init__(self, model: ir.Model, max_size: int, names: NameScope, decline: Decline) -> None:
        self.max_size = max_size
        self.names = names
        self._decline = decline
        self._opsets = dict(model.opset_imports)
        # The one-node models hold their inputs as initializers that are not graph inputs.
        self._ir_version = max(model.ir_version, INITIALIZERS_NEED_NOT_BE_INPUTS)

    # -- Constant nodes ----------------------------------------------------------------
    def lift_constant(self, node: ir.Node) -> bool:
        """Turn a used ``Constant`` node into an initializer; ``True`` when it did.

        A Constant that is a graph output stays: an output must be produced by a node.
        """
        graph = node.graph
        assert graph is not None
        output = node.outputs[0]
        if output.is_graph_output() or not output.uses():
            return False
        tensor = constant_node_tensor(node)
        if tensor is None:
            self._decline(node, "a sparse or malformed Constant is not turned into an initializer")
            return False
        replace_with_constant(graph, output, tensor, self.names, before=node, replaced=[node])
        remove_node(node)
        return True

    # -- general nodes -----------------------------------------------------------------
    def try_fold(self, node: ir.Node) -> bool:
        """Fold ``node`` when all its inputs are constant; ``True`` when it was replaced."""
        inputs = [constant_tensor(v) if v is not None else None for v in node.inputs]
        if any(t is None and v is not None for t, v in zip(inputs, node.inputs, strict=True)):
            return False
        if not any(out.uses() or out.is_graph_output() for out in node.outputs):
            return False  # dead: dce's job, and evaluating it would be wasted work
        if node.op_type == "Constant" and is_onnx_op(node):
            return False
        if _is_output_carrier(node):
            return False
        try:
            results = self._evaluate(node, inputs)
        except FoldDeclined as exc:
            self._decline(node, str(exc))
            return False
        graph = node.graph
        assert graph is not None
        for output, result in zip(node.outputs, results, strict=True):
            if output.uses() or output.is_graph_output():
                replace_with_constant(graph, output, result, self.names, before=node, replaced=[node])
        remove_node(node)
        return True

    def _evaluate(
        self, node: ir.Node, inputs: Sequence[ir.TensorProtocol | None]
    ) -> list[np.ndarray]:
        if not is_onnx_op(node):
            raise FoldDeclined(f"ops of domain '{node.domain}' are not evaluated ahead of time")
        if node.op_type in NON_DETERMINISTIC_OPS:
            raise FoldDeclined(f"{node.op_type} is not deterministic")
        if subgraphs(node):
            raise FoldDeclined(f"{node.op_type} has subgraphs")
        if node.op_type in ("Shape", "Size"):
            # Only metadata is needed: no weight is read.
            tensor = inputs[0]
            assert tensor is not None
            return [_shape_result(node, tuple(tensor.shape.numpy()))]
        input_bytes = sum(t.nbytes for t in inputs if t is not None)
        if input_bytes > MAX_INPUT_BYTES:
            raise FoldDeclined(
                f"inputs are {input_bytes} bytes, over {MAX_INPUT_BYTES}: not evaluated ahead of time"
            )
        node_proto = ir.serde.serialize_node(node)
        input_names = [f"in{i}" if t is not None else "" for i, t in enumerate(inputs)]
        output_names = [f"out{i}" for i in range(len(node.outputs))]
        del node_proto.input[:]
        node_proto.input.extend(input_names)
        del node_proto.output[:]
        node_proto.output.extend(output_names)
        node_proto.name = "fold"
        output_types = self._infer_output_types(
            node_proto, inputs, input_names, output_names,
            with_values=input_bytes <= MAX_INFERENCE_VALUE_BYTES,
        )
        for output, (elem_type, shape) in zip(node.outputs, output_types, strict=True):
            if not (output.uses() or output.is_graph_output()):
                continue
            if shape is None:
                if node.op_type in VALUE_SIZED_OPS:
                    raise FoldDeclined(
                        f"the size of result '{output.name}' is not known before evaluating it"
                    )
                continue
            nbytes = _nbytes(elem_type, shape)
            if nbytes > self.max_size:
                raise FoldDeclined(
                    f"result '{output.name}' would be {nbytes} bytes, over max_size={self.max_size} bytes"
                )
        results = self._run(node_proto, inputs, input_names, output_types)
        for output, result, (elem_type, _) in zip(node.outputs, results, output_types, strict=True):
            if not isinstance(result, np.ndarray):
                raise FoldDeclined(f"result '{output.name}' is not a tensor")
            if result.nbytes > self.max_size and (output.uses() or output.is_graph_output()):
                raise FoldDeclined(
                    f"result '{output.name}' is {result.nbytes} bytes, over max_size={self.max_size} bytes"
                )
            expected = onnx.helper.tensor_dtype_to_np_dtype(elem_type)
            if result.dtype != expected and not (result.dtype.kind in "OSU" and elem_type == onnx.TensorProto.STRING):
                raise FoldDeclined(
                    f"evaluation returned {result.dtype} for '{output.name}', expected {expected}"
                )
        return results

    def _graph(
        self,
        node_proto: onnx.NodeProto,
        inputs: Sequence[ir.TensorProtocol | None],
        input_names: Sequence[str],
        outputs: Sequence[onnx.ValueInfoProto],
        *,
        as_initializers: bool,
    ) -> onnx.ModelProto:
        graph_inputs, initializers = [], []
        for name, tensor in zip(input_names, inputs, strict=True):
            if tensor is None:
                continue
            if as_initializers:
                proto = ir.serde.serialize_tensor(tensor)
                proto.name = name
                initializers.append(proto)
            else:
                graph_inputs.append(
                    onnx.helper.make_tensor_value_info(
                        name, tensor.dtype.value, list(tensor.shape.numpy())
                    )
                )
        graph = onnx.helper.make_graph(
            [node_proto], "fold", graph_inputs, list(outputs), initializer=initializers
        )
        opsets = [onnx.helper.make_opsetid(d, v) for d, v in self._opsets.items()]
        return onnx.helper.make_model(graph, opset_imports=opsets, ir_version=self._ir_version)

    def _infer_output_types(
        self,
        node_proto: onnx.NodeProto,
        inputs: Sequence[ir.TensorProtocol | None],
        input_names: Sequence[str],
        output_names: Sequence[str],
        *,
        with_values: bool,
    ) -> list[tuple[int, tuple[int, ...] | None]]:
        """Each output's ONNX element type and static shape (``None`` when not static);
        ``with_values`` lets inference read the input values, not only their shapes."""
        outputs = []
        for name in output_names:
            info = onnx.ValueInfoProto()
            info.name = name
            outputs.append(info)
        model = self._graph(node_proto, inputs, input_names, outputs, as_initializers=with_values)
        try:
            inferred = onnx.shape_inference.infer_shapes(model, strict_mode=True, data_prop=True)
        except Exception as exc:
            raise FoldDeclined(f"shape inference rejected the node: {_first_line(exc)}") from None
        types = []
        for info in inferred.graph.output:
            if not info.type.HasField("tensor_type") or not info.type.tensor_type.elem_type:
                raise FoldDeclined(f"output '{info.name}' is not a tensor of known type")
            tensor_type = info.type.tensor_type
            shape = None
            if tensor_type.HasField("shape") and all(
                d.HasField("dim_value") for d in tensor_type.shape.dim
            ):
                shape = tuple(d.dim_value for d in tensor_type.shape.dim)
            types.append((tensor_type.elem_type, shape))
        return types

    def _run(
        self,
        node_proto: onnx.NodeProto,
        inputs: Sequence[ir.TensorProtocol | None],
        input_names: Sequence[str],
        output_types: Sequence[tuple[int, tuple[int, ...] | None]],
    ) -> list[np.ndarray]:
        outputs = [
            onnx.helper.make_tensor_value_info(f"out{i}", elem, None)
            for i, (elem, _) in enumerate(output_types)
        ]
        model = self._graph(node_proto, inputs, input_names, outputs, as_initializers=True)
        errors = []
        for evaluate in (_run_onnxruntime, _run_reference):
            try:
                return [np.asarray(r) for r in evaluate(model)]
            except Exception as exc:
                errors.append(_first_line(exc))
        raise FoldDeclined(f"could not be evaluated: {'; '.join(errors)}")


def _run_onnxruntime(model: onnx.ModelProto) -> list[np.ndarray]:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    options.intra_op_num_threads = 1
    options.log_severity_level = 4
    session = ort.InferenceSession(
        model.SerializeToString(), options, providers=["CPUExecutionProvider"]
    )
    return session.run(None, {})


def _run_reference(model: onnx.ModelProto) -> list[np.ndarray]:
    from onnx.reference import ReferenceEvaluator

    return ReferenceEvaluator(model).run(None, {})


def _shape_result(node: ir.Node, dims: tuple[int, ...]) -> np.ndarray:
    if node.op_type == "Size":
        return np.array(math.prod(dims), dtype=np.int64)
    start_attr = node.attributes.get("start")
    end_attr = node.attributes.get("end")
    start = start_attr.as_int() if start_attr is not None else 0
    end = end_attr.as_int() if end_attr is not None else len(dims)
    return np.array(dims[shape_slice(start, end, len(dims))], dtype=np.int64)


def shape_slice(start: int, end: int, rank: int) -> slice:
    """The slice of dims ``Shape(start=, end=)`` selects (negative values count from the end,
    both clamped to [0, rank])."""
    if start < 0:
        start += rank
    if end < 0:
        end += rank
    return slice(min(max(start, 0), rank), min(max(end, 0), rank))


def _nbytes(elem_type: int, shape: tuple[int, ...]) -> int:
    count = math.prod(shape)
    try:
        itemsize = ir.DataType(elem_type).itemsize
    except ValueError:
        return count
    return math.ceil(count * itemsize)


def _is_output_carrier(node: ir.Node) -> bool:
    """``Identity(initializer) -> graph output``: the folded form of a constant output."""
    return (
        node.op_type == "Identity"
        and is_onnx_op(node)
        and len(node.inputs) == 1
        and node.inputs[0] is not None
        and node.inputs[0].is_initializer()
        and node.outputs[0].is_graph_output()
    )


def admit_initializers(model: ir.Model) -> None:
    """Let ``model`` hold initializers that are not graph inputs, as folding creates: a
    model of IR version 3 moves to version 4, which differs only in allowing it."""
    if model.ir_version is not None and model.ir_version < INITIALIZERS_NEED_NOT_BE_INPUTS:
        model.ir_version = INITIALIZERS_NEED_NOT_BE_INPUTS


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0][:200] if text else type(exc).__name__


@register_pass("fold-constants")
class FoldConstants(Pass):
    """Evaluate nodes whose inputs are all constants and store their results as initializers.

    Rewrites:
      Constant() -> c                           ->  initializer c
      Op(c1, c2) -> y  (c1, c2 constants)        ->  initializer y = Op(c1, c2)
      Op(c1, c2) -> y  (y a graph output)        ->  Identity(initializer y_value) -> y

    ``max_size`` is in bytes: a result larger than it stays computed at run time and the
    pass reports why. Non-deterministic ops (RandomNormal, Dropout...), ops with
    subgraphs and ops outside the default ONNX domain are never folded. Constant-valued
    graph outputs keep their names and are produced by an ``Identity``, as backends expect.
    """

    lossy = False
    max_size: int = 1048576

    def call(self, model: Model, ctx: PassContext) -> PassResult:
        folder = ConstantFolder(
            model.ir, self.max_size, NameScope(model.ir), lambda n, r: self.decline(ctx, n, r)
        )
        folded = lifted = 0
        for graph in all_graphs(model.ir):
            for node in list(graph):
                if node.graph is not graph:
                    continue  # removed earlier in this sweep
                if node.op_type == "Constant" and is_onnx_op(node):
                    lifted += folder.lift_constant(node)
                elif folder.try_fold(node):
                    folded += 1
        if folded or lifted:
            admit_initializers(model.ir)
        stats = {"folded": folded, "lifted_constants": lifted}
        return PassResult(model, modified=bool(folded or lifted), stats=stats)
