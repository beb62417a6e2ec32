"""Hypothesis generators of small valid ONNX graphs for the cleanup passes' property tests,
and the checks those tests share: ORT equivalence, checker, signature, idempotence.

Graphs are chains and DAGs of elementwise ops over one float input, sprinkled with what
the cleanup passes target: Identity, same-dtype Casts, Mul by 1 / Add of 0 (with
constants that sometimes broadcast the shape), Reshape to the same shape, constant
subexpressions, duplicated subexpressions and initializers, Shape -> Gather arithmetic,
dead nodes and constant-valued outputs.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import TypeVar

import numpy as np
import onnx
import onnx.helper as oh
import onnx_ir as ir
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st

import greencc as gc
from greencc.pipeline.base import PassResult, get_pass_class
from greencc.pipeline.context import PassContext
from tests.helpers import random_feeds, run_ort

FLOAT = onnx.TensorProto.FLOAT
INT64 = onnx.TensorProto.INT64
OPSET = 17

# Small and quick: each example builds, runs ORT twice and the pass twice.
PROPERTY_SETTINGS = settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    derandomize=True,
)

Shape = tuple  # dims: int or the symbolic name "N"
T = TypeVar("T")


class _GraphBuilder:
    """Accumulates nodes, initializers and the float values available as operands."""

    def __init__(self, rng: np.random.Generator) -> None:
        self.rng = rng
        self.nodes: list[onnx.NodeProto] = []
        self.initializers: list[onnx.TensorProto] = []
        self.values: dict[str, Shape] = {}  # float32 values usable as operands
        self.constant_values: dict[str, Shape] = {}  # float values computed from constants only
        self._counter = 0

    def choice(self, options: Sequence[T]) -> T:
        """One of ``options``, uniformly (hypothesis would favour the first)."""
        return options[int(self.rng.integers(len(options)))]

    def coin(self) -> bool:
        return bool(self.rng.integers(2))

    def pick(self, shape: Shape | None = None) -> str:
        """An existing float value (of ``shape``, when given) to use as an operand."""
        return self.choice([n for n, s in self.values.items() if shape is None or s == shape])

    def name(self, prefix: str) -> str:
        self._counter += 1
        return f"{prefix}{self._counter}"

    def node(self, op: str, inputs: list[str], **attrs: object) -> str:
        out = self.name(op.lower())
        self.nodes.append(oh.make_node(op, inputs, [out], name=self.name("n"), **attrs))
        return out

    def initializer(self, array: np.ndarray, prefix: str = "w") -> str:
        name = self.name(prefix)
        self.initializers.append(onnx.numpy_helper.from_array(array, name))
        return name

    def constant_node(self, array: np.ndarray) -> str:
        out = self.name("k")
        tensor = onnx.numpy_helper.from_array(array, out + "_t")
        self.nodes.append(oh.make_node("Constant", [], [out], name=self.name("n"), value=tensor))
        return out

    def constant(self, array: np.ndarray, as_node: bool) -> str:
        return self.constant_node(array) if as_node else self.initializer(array)


def _static(shape: Shape) -> tuple[int, ...]:
    """Dims for a constant meant to broadcast against ``shape``: the input's batch "N" is
    fed as 2 (so 2 is valid and exercises the symbolic-dim checks); other symbolic dims
    (flattened ones) get 1, which broadcasts against anything."""
    return tuple((2 if d == "N" else 1) if isinstance(d, str) else d for d in shape)


@st.composite
def graphs(draw: st.DrawFn, min_steps: int = 3, max_steps: int = 10) -> onnx.ModelProto:
    """A random valid ONNX model over one float32 input ``x`` (opset 17).

    Hypothesis draws the input shape, the number of steps and a seed; the steps and their
    operands come from a numpy generator on that seed, because hypothesis favours the first
    of a list of options and would build mostly Relu chains.
    """
    rank = draw(st.integers(1, 3))
    dims = draw(st.lists(st.integers(1, 4), min_size=rank, max_size=rank))
    dynamic = draw(st.booleans())
    shape: Shape = tuple(["N", *dims[1:]]) if dynamic else tuple(dims)
    rng = np.random.default_rng(draw(st.integers(0, 2**16)))
    b = _GraphBuilder(rng)
    b.values["x"] = shape
    steps = draw(st.integers(min_steps, max_steps))
    for _ in range(steps):
        b.choice(_STEPS)(b)
    names = list(b.values)
    # Every value nothing reads is an output (up to four), so most rewrites are observable;
    # sometimes another value (possibly the input itself) or a constant-valued one too.
    read = {name for node in b.nodes for name in _names_read(node)}
    outputs = [name for name in names if name not in read][-4:] or [names[-1]]
    if b.coin():
        extra = b.choice(names)
        if extra not in outputs:
            outputs.append(extra)
    if b.constant_values and b.coin():
        outputs.append(b.choice(sorted(b.constant_values)))
    out_infos = []
    for name in outputs:
        dims_of = b.values.get(name, b.constant_values.get(name))
        out_infos.append(oh.make_tensor_value_info(name, FLOAT, list(dims_of)))
    graph = oh.make_graph(
        b.nodes,
        "generated",
        [oh.make_tensor_value_info("x", FLOAT, list(shape))],
        out_infos,
        initializer=b.initializers,
    )
    return oh.make_model(graph, opset_imports=[oh.make_opsetid("", OPSET)], ir_version=10)


def _names_read(node: onnx.NodeProto) -> list[str]:
    """Inputs of ``node`` and of the nodes in its subgraphs (captured values included)."""
    names, stack = list(node.input), [node]
    while stack:
        for attr in stack.pop().attribute:
            for graph in [attr.g] if attr.HasField("g") else list(attr.graphs):
                for inner in graph.node:
                    names.extend(inner.input)
                    stack.append(inner)
    return names


def _unary(b: _GraphBuilder) -> None:
    src = b.pick()
    op = b.choice(["Relu", "Neg", "Abs", "Tanh", "Sigmoid"])
    b.values[b.node(op, [src])] = b.values[src]


def _binary(b: _GraphBuilder) -> None:
    left = b.pick()
    right = b.pick(b.values[left])
    op = b.choice(["Add", "Mul", "Sub", "Max"])
    b.values[b.node(op, [left, right])] = b.values[left]


def _identity(b: _GraphBuilder) -> None:
    src = b.pick()
    b.values[b.node("Identity", [src])] = b.values[src]


def _cast(b: _GraphBuilder) -> None:
    src = b.pick()
    if b.coin():
        b.values[b.node("Cast", [src], to=FLOAT)] = b.values[src]
    else:  # float -> double -> float is exact
        wide = b.node("Cast", [src], to=onnx.TensorProto.DOUBLE)
        b.values[b.node("Cast", [wide], to=FLOAT)] = b.values[src]


def _neutral(b: _GraphBuilder) -> None:
    src = b.pick()
    shape = b.values[src]
    op, value = b.choice([("Mul", 1.0), ("Div", 1.0), ("Add", 0.0), ("Sub", 0.0)])
    # A scalar, a broadcast that keeps the shape, or one that raises the rank.
    options = [(), (1,), (_static(shape)[-1],), (2, *_static(shape))]
    const_shape = b.choice(options)
    const = b.constant(np.full(const_shape, value, np.float32), as_node=b.coin())
    out_shape = shape if len(const_shape) <= len(shape) else (2, *shape)
    inputs = [const, src] if op in ("Mul", "Add") and b.coin() else [src, const]
    b.values[b.node(op, inputs)] = out_shape


def _constant_subexpression(b: _GraphBuilder) -> None:
    src = b.pick()
    shape = b.values[src]
    last = _static(shape)[-1]
    c1 = b.constant(b.rng.standard_normal(last).astype(np.float32), as_node=b.coin())
    c2 = b.constant(b.rng.standard_normal(last).astype(np.float32), as_node=b.coin())
    combined = b.node(b.choice(["Add", "Mul", "Sub"]), [c1, c2])
    folded = b.node(b.choice(["Relu", "Abs", "Neg"]), [combined])
    b.constant_values[folded] = (last,)
    b.values[b.node("Add", [src, folded])] = shape


def _duplicate(b: _GraphBuilder) -> None:
    candidates = [n for n in b.nodes if n.op_type not in ("Constant",) and n.output[0] in b.values]
    if not candidates:
        return _unary(b)
    original = b.choice(candidates)
    copy = onnx.NodeProto()
    copy.CopyFrom(original)
    copy.name = b.name("n")
    del copy.output[:]
    out = b.name("dup")
    copy.output.append(out)
    b.nodes.append(copy)
    b.values[out] = b.values[original.output[0]]


def _duplicate_initializer(b: _GraphBuilder) -> None:
    src = b.pick()
    shape = b.values[src]
    data = b.rng.standard_normal(_static(shape)[-1]).astype(np.float32)
    first = b.initializer(data)
    second = b.initializer(data.copy())
    left = b.node("Mul", [src, first])
    right = b.node("Mul", [src, second])
    b.values[b.node("Add", [left, right])] = shape


def _reshape_same(b: _GraphBuilder) -> None:
    src = b.pick()
    shape = b.values[src]
    target = [0 if isinstance(d, str) else d for d in shape]
    if b.coin():
        target[-1] = -1
    b.values[b.node("Reshape", [src, b.initializer(np.array(target, np.int64), "t")])] = shape


def _shape_arithmetic(b: _GraphBuilder) -> None:
    """Flatten through Shape -> Gather -> Unsqueeze -> Concat; sometimes restore the shape
    with Reshape(flat, Shape(x)), sometimes keep the flat value (so the dims are seen)."""
    src = b.pick()
    shape = b.values[src]
    s = b.node("Shape", [src])
    axis = int(b.rng.integers(len(shape)))
    kept = b.node("Gather", [s, b.initializer(np.array(axis, np.int64), "i")], axis=0)
    kept_1d = b.node("Unsqueeze", [kept, b.initializer(np.array([0], np.int64), "a")])
    target = b.node("Concat", [kept_1d, b.initializer(np.array([-1], np.int64), "r")], axis=0)
    flat = b.node("Reshape", [src, target])
    if b.coin():
        b.values[b.node("Reshape", [flat, s])] = shape
    else:
        others = [d for i, d in enumerate(shape) if i != axis]
        symbolic_rest = any(isinstance(d, str) for d in others)
        rest = b.name("M") if symbolic_rest else int(np.prod(others, dtype=np.int64))
        b.values[flat] = (shape[axis], rest)


def _constant_of_shape(b: _GraphBuilder) -> None:
    src = b.pick()
    s = b.node("Shape", [src])
    value = onnx.numpy_helper.from_array(np.array([0.5], np.float32), "v")
    filled = b.node("ConstantOfShape", [s], value=value)
    b.values[b.node("Add", [src, filled])] = b.values[src]


def _transpose_identity(b: _GraphBuilder) -> None:
    src = b.pick()
    perm = list(range(len(b.values[src])))
    b.values[b.node("Transpose", [src], perm=perm)] = b.values[src]


def _dropout(b: _GraphBuilder) -> None:
    src = b.pick()
    b.values[b.node("Dropout", [src])] = b.values[src]


def _expand_same(b: _GraphBuilder) -> None:
    src = b.pick()
    shape = b.values[src]
    target = np.array([1] * len(shape), np.int64)
    b.values[b.node("Expand", [src, b.initializer(target, "e")])] = shape


def _squeeze_pair(b: _GraphBuilder) -> None:
    src = b.pick()
    axes = b.initializer(np.array([0], np.int64), "a")
    up = b.node("Unsqueeze", [src, axes])
    b.values[b.node("Squeeze", [up, axes])] = b.values[src]


def _if_branch(b: _GraphBuilder) -> None:
    """An If on a data-dependent condition whose branches capture outer values and hold
    removable work of their own (Identity, Mul by 1, a dead node, a duplicate)."""
    # Captured through a Neg: ONNX Runtime 1.32 loses a captured value produced by a
    # float -> double -> float Cast pair ("Missing Input"), even with optimizations off.
    picked = b.pick()
    shape = b.values[picked]
    src = b.node("Neg", [picked])
    total = b.node("ReduceSum", [src], keepdims=0)
    cond = b.node("Greater", [total, b.initializer(np.array(0.0, np.float32), "zero")])
    one = b.initializer(np.array(1.0, np.float32), "one")
    branches = []
    for label in ("then", "else"):
        inner: list[onnx.NodeProto] = []
        scaled = b.name(f"{label}_scaled")
        inner.append(oh.make_node("Mul", [src, one], [scaled], name=b.name("n")))
        first, second = b.name(f"{label}_a"), b.name(f"{label}_b")
        op = "Neg" if label == "else" else "Relu"
        inner.append(oh.make_node(op, [scaled], [first], name=b.name("n")))
        inner.append(oh.make_node(op, [scaled], [second], name=b.name("n")))
        inner.append(oh.make_node("Exp", [first], [b.name(f"{label}_dead")], name=b.name("n")))
        result = b.name(f"{label}_out")
        inner.append(oh.make_node("Add", [first, second], [result], name=b.name("n")))
        branches.append(
            oh.make_graph(inner, label, [], [oh.make_tensor_value_info(result, FLOAT, None)])
        )
    out = b.name("if")
    b.nodes.append(
        oh.make_node("If", [cond], [out], name=b.name("n"), then_branch=branches[0], else_branch=branches[1])
    )
    b.values[out] = shape


def _dead(b: _GraphBuilder) -> None:
    src = b.pick()
    b.node(b.choice(["Relu", "Exp"]), [src])  # its output is never used


_STEPS = [
    _unary, _binary, _identity, _cast, _neutral, _constant_subexpression, _duplicate,
    _duplicate_initializer, _reshape_same, _shape_arithmetic, _constant_of_shape,
    _transpose_identity, _dropout, _expand_same, _squeeze_pair, _dead, _if_branch,
]


# -- shared checks ---------------------------------------------------------------------


def run_pass(model: gc.Model, name: str, **options: object) -> tuple[PassResult, PassContext]:
    """Run the registered pass ``name`` on ``model`` in a fresh context."""
    ctx = PassContext()
    with ctx:
        result = get_pass_class(name)(**options).call(model, ctx)
    return result, ctx


def fingerprint(model: gc.Model) -> tuple:
    """Everything a pass may change, as comparable data (inferred shapes left out)."""
    proto = ir.to_proto(model.ir)
    nodes = []
    for graph_proto in _graph_protos(proto.graph):
        for node in graph_proto.node:
            copy = onnx.NodeProto()
            copy.CopyFrom(node)
            copy.ClearField("name")
            nodes.append(copy.SerializeToString(deterministic=True))
    initializers = sorted(
        (t.name, t.data_type, tuple(t.dims), hashlib.sha256(t.SerializeToString()).hexdigest())
        for t in proto.graph.initializer
    )
    return (
        tuple(nodes),
        tuple(initializers),
        tuple(i.name for i in proto.graph.input),
        tuple(o.name for o in proto.graph.output),
        tuple(sorted((o.domain, o.version) for o in proto.opset_import)),
    )


def _graph_protos(graph: onnx.GraphProto) -> list[onnx.GraphProto]:
    found, stack = [], [graph]
    while stack:
        g = stack.pop()
        found.append(g)
        for node in g.node:
            for attr in node.attribute:
                if attr.HasField("g"):
                    stack.append(attr.g)
                stack.extend(attr.graphs)
    return found


def assert_same_outputs(expected: list[np.ndarray], actual: list[np.ndarray]) -> None:
    """Outputs equal up to float rounding (exact passes), NaNs included."""
    assert len(expected) == len(actual)
    for want, got in zip(expected, actual, strict=True):
        assert want.dtype == got.dtype and want.shape == got.shape
        np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6, equal_nan=True)


def check_exact_pass(proto: onnx.ModelProto, name: str, **options: object) -> PassResult:
    """The property every exact pass has on ``proto``: same signature, checker passes,
    ORT gives the original's outputs on fresh data, and a second run changes nothing."""
    model = gc.load(proto)
    feeds = random_feeds(model, seed=1234)
    expected = run_ort(proto, feeds)
    inputs = [v.name for v in model.graph.inputs]
    outputs = [v.name for v in model.graph.outputs]
    result, _ = run_pass(model, name, **options)
    assert result.model is model
    onnx.checker.check_model(ir.to_proto(model.ir), full_check=True)
    assert [v.name for v in model.graph.inputs] == inputs
    assert [v.name for v in model.graph.outputs] == outputs
    assert_same_outputs(expected, run_ort(model, feeds))
    before = fingerprint(model)
    again, _ = run_pass(model, name, **options)
    assert again.modified is False, again.stats
    assert fingerprint(model) == before
    return result


def canonical(model: gc.Model) -> tuple:
    """The main graph with intermediate names replaced by their order of appearance, so
    that a pass's result can be compared with an expected model written by hand."""
    graph = model.graph
    names: dict[str, str] = {}
    for value in graph.inputs:
        names[value.name] = value.name
    for value in graph.outputs:
        names[value.name] = value.name

    def name_of(value: ir.Value | None) -> str:
        if value is None:
            return ""
        if value.name not in names:
            names[value.name] = f"%{len(names)}"
        return names[value.name]

    nodes = []
    for node in graph:
        attrs = tuple(sorted((k, _attribute_repr(a)) for k, a in node.attributes.items()))
        nodes.append(
            (node.op_type, node.domain, tuple(name_of(v) for v in node.inputs),
             tuple(name_of(v) for v in node.outputs), attrs)
        )
    initializers = sorted(
        (name_of(v), v.const_value.dtype, tuple(v.const_value.shape.numpy()),
         tuple(np.asarray(v.const_value.numpy()).reshape(-1).tolist()))
        for v in graph.initializers.values()
    )
    return (
        tuple(nodes),
        tuple(initializers),
        tuple(v.name for v in graph.inputs),
        tuple(v.name for v in graph.outputs),
    )


def _attribute_repr(attr: ir.Attr) -> object:
    if attr.type == ir.AttributeType.TENSOR:
        array = attr.as_tensor().numpy()
        return (str(array.dtype), array.shape, tuple(array.reshape(-1).tolist()))
    value = attr.value
    return tuple(value) if isinstance(value, (list, tuple)) else value
