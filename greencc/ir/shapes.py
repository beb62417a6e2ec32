"""Shape and dtype inference: ONNX's inference, and ONNX Runtime's symbolic inference for
dynamic dims. Both fill ``value.shape`` / ``value.dtype`` in place.

Every function here takes an ``ir.Model`` or a ``greencc.Model`` and returns the same kind.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import importlib.util
import io
import logging
import numbers
import os
import re
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any, TypeVar

import onnx
import onnx_ir as ir
from onnx_ir.passes.common import ShapeInferencePass

from greencc.errors import UsageError
from greencc.ir.contrib_shapes import CONTRIB_SHAPE_RULES, NodeTypes
from greencc.ir.io import INLINE_TENSOR_MAX_BYTES, to_self_contained_proto

log = logging.getLogger(__name__)

M = TypeVar("M")


def _ir_model(model: Any) -> ir.Model:
    if isinstance(model, ir.Model):
        return model
    inner = getattr(model, "ir", None)  # greencc.Model, without importing greencc.model here
    if isinstance(inner, ir.Model):
        return inner
    raise TypeError(f"expected an onnx_ir Model or a greencc Model, got {type(model).__name__}")


def infer_shapes(model: M, *, symbolic: bool = False) -> M:
    """Fill value shapes and dtypes of ``model`` in place and return it.

    ``symbolic=False`` runs ONNX's shape inference with data propagation; ``True`` then runs
    ONNX Runtime's symbolic shape inference, which carries dims such as ``batch`` and
    ``seq`` through Reshape/Concat/Slice arithmetic. Failure leaves shapes unknown, never
    raises: inference is an analysis, not a requirement.
    """
    target = _ir_model(model)
    inputs = set(symbolic_dims(target))
    before = {v: v.shape for n in target.graph for v in n.outputs if v.shape is not None}
    untyped = [v for graph in target.graphs() for n in graph for v in n.outputs if v.type is None]
    with _silenced("onnx_ir.passes.common.shape_inference"):
        ShapeInferencePass(check_type=False, strict_mode=False, data_prop=True)(target)
    _untype_containers(untyped, target.opset_imports)
    for value, shape in before.items():
        # ONNX may replace an exporter's 'batch' by its own 'unk__3'; keep the better one.
        if value.shape is None or _score(list(value.shape), inputs) < _score(list(shape), inputs):
            value.shape = shape
    if symbolic:
        _symbolic_shape_inference(target)
    return model


def _untype_containers(values: list[ir.Value], opsets: Mapping[str, int]) -> None:
    """Leave untyped the ``values`` (untyped before inference) that their op's schema says
    are sequences or optionals: onnx_ir merges only the inferred dtype, which turns such a
    value into a tensor."""
    for value in values:
        node = value.producer()
        if not isinstance(value.type, ir.TensorType) or node is None or node.domain not in ("", "ai.onnx"):
            continue
        try:
            schema = onnx.defs.get_schema(node.op_type, opsets.get("", 1), "")
        except onnx.defs.SchemaError:
            continue
        if value.index() is None or value.index() >= len(schema.outputs):
            continue
        allowed = _allowed_types(schema, schema.outputs[value.index()].type_str)
        if allowed and not any(t.startswith("tensor(") for t in allowed):
            value.type = None
            value.shape = None


def _allowed_types(schema: onnx.defs.OpSchema, type_str: str) -> list[str]:
    """The types a schema's input or output of ``type_str`` (a type or a constraint name) takes."""
    for constraint in schema.type_constraints:
        if constraint.type_param_str == type_str:
            return list(constraint.allowed_type_strs)
    return [type_str]


@contextlib.contextmanager
def _silenced(logger_name: str):
    logger = logging.getLogger(logger_name)
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


def _proto_for_inference(model: ir.Model) -> onnx.ModelProto:
    """A proto of ``model`` whose large weights are typed graph inputs instead of data.

    Shape inference needs the values of small constants (shapes, axes), and only the
    types of weights; this keeps the copy small and external data out of it.
    """
    clone = model.clone()
    for value in list(clone.graph.initializers.values()):
        tensor = value.const_value
        if tensor is None or tensor.nbytes <= INLINE_TENSOR_MAX_BYTES:
            continue
        value.dtype = value.dtype or tensor.dtype
        value.shape = value.shape or ir.Shape(tensor.shape)
        clone.graph.initializers.pop(value.name)
        value.const_value = None
        if value not in clone.graph.inputs:
            clone.graph.inputs.append(value)
    return to_self_contained_proto(clone)


_SYMBOLIC_MODULE = "greencc._ort_symbolic_shape_infer"


@functools.cache
def _symbolic_shape_inference_class() -> Any:
    """ONNX Runtime's ``SymbolicShapeInference``, loaded from its own file.

    Importing it the usual way runs ``onnxruntime.tools/__init__``, which imports torch
    whenever torch is installed (1.5 s, and greencc's core must not load torch).
    """
    package = importlib.util.find_spec("onnxruntime")
    if package is None or not package.submodule_search_locations:
        raise ImportError("onnxruntime is not installed")
    path = Path(list(package.submodule_search_locations)[0]) / "tools" / "symbolic_shape_infer.py"
    spec = importlib.util.spec_from_file_location(_SYMBOLIC_MODULE, path)
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot load {path}")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.SymbolicShapeInference


@functools.cache
def _contrib_aware_inference_class() -> Any:
    """``SymbolicShapeInference`` that also knows :data:`CONTRIB_SHAPE_RULES`' ops."""
    base = _symbolic_shape_inference_class()

    class ContribAwareInference(base):  # type: ignore[misc,valid-type]
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            for op_type in CONTRIB_SHAPE_RULES:
                self.dispatcher_.setdefault(op_type, functools.partial(_apply_contrib_rule, self))

    return ContribAwareInference


def _apply_contrib_rule(inference: Any, node: onnx.NodeProto) -> None:
    """Write the output types :data:`CONTRIB_SHAPE_RULES` gives ``node`` into ``inference``."""

    def shape_of(index: int) -> list[int | str] | None:
        dims = inference._try_get_shape(node, index) if index < len(node.input) and node.input[index] else None
        return None if dims is None or any(d is None for d in dims) else list(dims)

    def elem_type_of(index: int) -> int:
        name = node.input[index] if index < len(node.input) else ""
        if name in inference.known_vi_:
            return inference.known_vi_[name].type.tensor_type.elem_type
        if name in inference.initializers_:
            return inference.initializers_[name].data_type
        return onnx.TensorProto.UNDEFINED

    outputs = CONTRIB_SHAPE_RULES[node.op_type](NodeTypes(node, shape_of, elem_type_of))
    for name, (elem_type, dims) in zip(node.output, outputs or [], strict=False):
        if name:
            inference.known_vi_[name].CopyFrom(onnx.helper.make_tensor_value_info(name, elem_type, dims))


def _run_symbolic_inference(proto: onnx.ModelProto) -> onnx.ModelProto:
    """ONNX Runtime's ``SymbolicShapeInference.infer_shapes`` (auto-merge, rank guessing),
    keeping what it inferred when it stops early instead of raising: the nodes before the
    one it could not type still get their shapes."""
    inference = _contrib_aware_inference_class()(2**31 - 1, True, True, 0)
    inference._preprocess(proto)
    while inference.run_:
        inference._infer_impl()
    inference._update_output_from_vi()
    return inference.out_mp_


@contextlib.contextmanager
def _working_directory(path: str):
    """``contextlib.chdir`` (Python 3.11+) for Python 3.10."""
    previous = os.getcwd()
    os.chdir(path)
    try:
        yield
    finally:
        os.chdir(previous)


def _symbolic_shape_inference(model: ir.Model) -> None:
    try:
        proto = _proto_for_inference(model)
        # The tool may write scratch files into the current directory: run it from a
        # scratch directory so nothing lands in the user's.
        with _silenced(_SYMBOLIC_MODULE), contextlib.redirect_stdout(io.StringIO()), \
                tempfile.TemporaryDirectory(prefix="greencc-symshape-") as scratch, _working_directory(scratch):
            inferred = _run_symbolic_inference(proto)
    except Exception as exc:  # the tool raises bare Exceptions (and asserts) on graphs it cannot follow
        log.info("symbolic shape inference failed: %s", exc)
        return
    by_name = {info.name: info for info in inferred.graph.value_info}
    by_name.update({info.name: info for info in inferred.graph.output})
    inputs = set(symbolic_dims(model))
    for node in model.graph:
        for value in node.outputs:
            info = by_name.get(value.name)
            if info is None or not info.type.HasField("tensor_type"):
                continue
            tensor_type = info.type.tensor_type
            if value.dtype is None and tensor_type.elem_type:
                value.dtype = ir.DataType(tensor_type.elem_type)
            if tensor_type.HasField("shape"):
                dims = [
                    d.dim_value if d.HasField("dim_value") else (d.dim_param or None)
                    for d in tensor_type.shape.dim
                ]
                if value.shape is None or _score(dims, inputs) > _score(list(value.shape), inputs):
                    value.shape = ir.Shape(dims)


def _score(dims: list, input_dims: set[str]) -> int:
    """How much a shape says: 2 per static dim, 1 per dim written in the inputs' symbols.

    Placeholders that name nothing (ONNX's ``unk__3``, an exporter's
    ``LayerNormalization399_dim_0``) score 0, so ORT's ``batch``/``seq`` replace them.
    """
    total = 0
    for dim in dims:
        if isinstance(dim, int):
            total += 2
            continue
        name = dim if isinstance(dim, str) else getattr(dim, "value", None)
        symbols = _SYMBOL.findall(name or "")
        if symbols and all(s in input_dims for s in symbols):
            total += 1
    return total


_SYMBOL = re.compile(r"[A-Za-z_]\w*")


def with_static_inputs(model: M, dims: Mapping[str, int] | None = None) -> M:
    """Return a clone of ``model`` whose symbolic input dims are bound to integers.

    ``dims`` maps symbolic dim names (``batch``, ``seq``...) to positive sizes; names the
    model does not use are ignored. Shapes are then re-inferred from the bound inputs.
    Raises :class:`UsageError` naming the input, axis and dim when a dynamic dim is left
    unbound (or unnamed), or a size is not a positive integer.
    """
    dims = dict(dims or {})
    for name, size in dims.items():
        if isinstance(size, bool) or not isinstance(size, numbers.Integral) or size <= 0:
            raise UsageError(f"dim '{name}' must be a positive integer, got {size!r}")
        dims[name] = int(size)
    source = _ir_model(model)
    known = symbolic_dims(source)
    clone = source.clone()
    initializer_names = set(clone.graph.initializers)
    graph_inputs = set(clone.graph.inputs)
    for out in clone.graph.outputs:
        if out not in graph_inputs:
            out.shape = None
    for value in clone.graph.inputs:
        if value.name in initializer_names or isinstance(value.type, (ir.SequenceType, ir.OptionalType)):
            continue  # a sequence's or optional's element shape is not part of the signature
        if value.shape is None:
            raise UsageError(
                f"input '{value.name}' has no shape, so it cannot be made static",
                hint="give its shape when exporting",
            )
        concrete = []
        for axis, dim in enumerate(value.shape):
            if isinstance(dim, int):
                concrete.append(dim)
                continue
            name = dim.value
            if name is None or name not in dims:
                shown = name or "?"
                example = name or "batch"
                raise UsageError(
                    f"input '{value.name}' axis {axis} is dynamic ('{shown}') and no size was given for it",
                    hint=f"bind it, e.g. dims={{'{example}': 1}} or --dim {example}=1"
                    + (f"; the model's symbolic dims are {', '.join(known)}" if known else ""),
                )
            concrete.append(dims[name])
        value.shape = ir.Shape(concrete)
    for graph in clone.graphs():
        for node in graph:
            for out in node.outputs:
                if out.shape is not None and any(not isinstance(d, int) for d in out.shape):
                    out.shape = None
    infer_shapes(clone, symbolic=True)
    if isinstance(model, ir.Model):
        return clone  # type: ignore[return-value]
    return type(model)(clone, dataclasses.replace(model.provenance))  # type: ignore[attr-defined,call-arg]


def symbolic_dims(model: Any) -> list[str]:
    """Names of the symbolic dims on the model's inputs (initializers excluded), in order."""
    source = _ir_model(model)
    names: list[str] = []
    for value in source.graph.inputs:
        if value.name in source.graph.initializers:
            continue
        for dim in value.shape or []:
            if not isinstance(dim, int) and dim.value and dim.value not in names:
                names.append(dim.value)
    return names
