"""Graph edits the cleanup passes share: reading constants, naming new values, and
replacing a value without changing the model's public signature.

A graph's output names are the model's API, so every replacement here keeps them: the
replacement takes the output's name, or an ``Identity`` carries it when the replacement
cannot be renamed (a graph input, an initializer, another output, an outer-scope value).
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import onnx_ir as ir

from greencc.ir import inherit_provenance, subgraphs

# Domains whose ops follow the ONNX specification (deterministic unless listed below).
ONNX_DOMAINS = frozenset({"", "ai.onnx"})
# Ops whose result differs between runs: never folded, merged or evaluated ahead of time.
# Dropout is random in training mode; remove-identity handles its inference form.
NON_DETERMINISTIC_OPS = frozenset(
    {
        "RandomUniform",
        "RandomNormal",
        "RandomUniformLike",
        "RandomNormalLike",
        "Multinomial",
        "Bernoulli",
        "Dropout",
    }
)


def is_onnx_op(node: ir.Node) -> bool:
    """Whether ``node`` is an op of the default ONNX domain."""
    return node.domain in ONNX_DOMAINS


def all_graphs(model: ir.Model) -> list[ir.Graph]:
    """The main graph followed by every subgraph, as a list safe to hold while editing."""
    return list(model.graphs())


def constant_tensor(value: ir.Value | None) -> ir.TensorProtocol | None:
    """The tensor ``value`` always holds, or ``None`` when it is not a constant.

    Constants are initializers that are not also graph inputs (an input can override
    them) and outputs of ``Constant`` nodes.
    """
    if value is None:
        return None
    if value.is_initializer():
        return None if value.is_graph_input() else value.const_value
    producer = value.producer()
    if producer is not None and producer.op_type == "Constant" and is_onnx_op(producer):
        return constant_node_tensor(producer)
    return None


def constant_array(value: ir.Value | None, max_elements: int | None = None) -> np.ndarray | None:
    """``value``'s constant data as a numpy array, or ``None`` (also when it is larger
    than ``max_elements``, so that checks never page in big weights)."""
    tensor = constant_tensor(value)
    if tensor is None:
        return None
    if max_elements is not None and tensor.size > max_elements:
        return None
    try:
        return tensor.numpy()
    except Exception:  # an unreadable external tensor is simply not a usable constant
        return None


def constant_node_tensor(node: ir.Node) -> ir.TensorProtocol | None:
    """The tensor a ``Constant`` node produces, or ``None`` for a sparse or invalid one."""
    if len(node.attributes) != 1:
        return None
    name, attr = next(iter(node.attributes.items()))
    if attr.is_ref():  # a reference to a function attribute: the value is unknown here
        return None
    if name == "value":
        return attr.as_tensor()
    if name == "value_int":
        return ir.tensor(np.array(attr.as_int(), dtype=np.int64))
    if name == "value_ints":
        return ir.tensor(np.array(list(attr.as_ints()), dtype=np.int64))
    if name == "value_float":
        return ir.tensor(np.array(attr.as_float(), dtype=np.float32))
    if name == "value_floats":
        return ir.tensor(np.array(list(attr.as_floats()), dtype=np.float32))
    if name == "value_string":
        return ir.StringTensor(np.array(_utf8(attr.value), dtype=np.bytes_))
    if name == "value_strings":
        return ir.StringTensor(np.array([_utf8(s) for s in attr.value], dtype=np.bytes_))
    return None


def _utf8(text: str | bytes) -> bytes:
    return text.encode("utf-8") if isinstance(text, str) else text


class NameScope:
    """Hands out value names unused anywhere in a model (ONNX names are model-wide SSA)."""

    def __init__(self, model: ir.Model) -> None:
        self._model = model
        self._taken: set[str] | None = None

    def fresh(self, base: str) -> str:
        """A new unique name starting with ``base``; it is reserved once returned."""
        taken = self._names()
        candidate = base
        counter = 0
        while candidate in taken:
            counter += 1
            candidate = f"{base}_{counter}"
        taken.add(candidate)
        return candidate

    def _names(self) -> set[str]:
        if self._taken is None:
            taken: set[str] = set()
            for graph in self._model.graphs():
                taken.update(v.name for v in graph.inputs if v.name)
                taken.update(v.name for v in graph.outputs if v.name)
                taken.update(name for name in graph.initializers if name)
                for node in graph:
                    taken.update(v.name for v in node.outputs if v.name)
            self._taken = taken
        return self._taken


def can_take_output_name(graph: ir.Graph, value: ir.Value) -> bool:
    """Whether ``value`` can be renamed to become one of ``graph``'s outputs.

    Only a node output of ``graph`` itself qualifies: graph inputs and initializers are
    names other code knows, another output already has its public name, and a value of
    an enclosing graph must not be renamed from inside a subgraph.
    """
    producer = value.producer()
    return producer is not None and producer.graph is graph and not value.is_graph_output()


def redirect(
    graph: ir.Graph,
    old: ir.Value,
    new: ir.Value,
    *,
    before: ir.Node,
    replaced: Iterable[ir.Node] = (),
) -> ir.Node | None:
    """Make every user of ``old`` read ``new`` instead, keeping ``graph``'s output names.

    When ``old`` is an output of ``graph``, ``new`` takes its name if it can; otherwise an
    ``Identity(new)`` named like ``old`` is inserted before ``before`` (and returned), with
    the provenance of ``replaced``. The caller removes ``old``'s producer afterwards.
    """
    if not old.is_graph_output():
        old.replace_all_uses_with(new)
        return None
    name = old.name
    if can_take_output_name(graph, new):
        _merge_type_info(new, old)
        old.replace_all_uses_with(new, replace_graph_outputs=True)
        old.name = None
        new.name = name
        return None
    carrier = ir.Value(name=None, type=old.type or new.type, shape=old.shape or new.shape)
    identity = ir.node("Identity", [new], outputs=[carrier])
    inherit_provenance(identity, replaced)
    graph.insert_before(before, identity)
    # Nodes read ``new`` directly (so a folded constant stays visibly constant to them);
    # only the output slot goes through the Identity.
    for user, index in old.uses():
        user.replace_input_with(index, new)
    old.replace_all_uses_with(carrier, replace_graph_outputs=True)
    old.name = None
    carrier.name = name
    return identity


def _merge_type_info(target: ir.Value, source: ir.Value) -> None:
    """Give ``target`` the dtype / shape facts ``source`` knows and it does not."""
    if target.type is None and source.type is not None:
        target.type = source.type
    if source.shape is None:
        return
    if target.shape is None:
        target.shape = source.shape
        return
    if len(target.shape) != len(source.shape):
        return
    dims = []
    for mine, theirs in zip(target.shape, source.shape, strict=True):
        known_mine = isinstance(mine, int) or (mine is not None and mine.value is not None)
        dims.append(mine if known_mine else theirs)
    target.shape = ir.Shape(dims)


def new_initializer(
    graph: ir.Graph, name: str, data: np.ndarray | ir.TensorProtocol
) -> ir.Value:
    """Register a fresh initializer ``name`` holding a new tensor over ``data``.

    The tensor object is new even when ``data`` is one (tensors are shared between
    model clones, so their names and contents are never touched); the array is shared.
    """
    if isinstance(data, np.ndarray):
        array, dtype = data, None
    else:
        array, dtype = data.numpy(), data.dtype
    tensor: ir.TensorProtocol
    if array.dtype.kind in "OSU" or dtype == ir.DataType.STRING:
        tensor = ir.StringTensor(np.asarray(array, dtype=np.bytes_), name=name)
    else:
        tensor = ir.Tensor(array, dtype=dtype, name=name)
    value = ir.Value(
        name=name, type=ir.TensorType(tensor.dtype), shape=ir.Shape(tensor.shape), const_value=tensor
    )
    graph.register_initializer(value)
    return value


def replace_with_constant(
    graph: ir.Graph,
    old: ir.Value,
    array: np.ndarray | ir.TensorProtocol,
    names: NameScope,
    *,
    before: ir.Node,
    replaced: Iterable[ir.Node] = (),
) -> ir.Value:
    """Replace ``old`` (a node output of ``graph``) by a new initializer holding ``array``.

    The initializer takes ``old``'s name; when ``old`` is a graph output, the initializer
    gets a fresh name and an ``Identity`` keeps the output, as ONNX backends expect outputs
    to be produced by nodes. Returns the new initializer value. The caller removes
    ``old``'s producer afterwards.
    """
    if old.is_graph_output():
        init = new_initializer(graph, names.fresh(f"{old.name}_value"), array)
        redirect(graph, old, init, before=before, replaced=replaced)
        return init
    name = old.name or names.fresh("folded")
    old.name = None
    init = new_initializer(graph, name, array)
    old.replace_all_uses_with(init)
    return init


def remove_node(node: ir.Node) -> None:
    """Detach ``node`` from its inputs, and its subgraphs from what they capture, and
    remove it from its graph. The node's outputs must be unused."""
    graph = node.graph
    assert graph is not None
    stack = subgraphs(node)
    while stack:
        sub = stack.pop()
        for inner in sub:
            # The whole subgraph goes away, so every inner use can be dropped; this releases
            # the outer values it captured.
            for i in range(len(inner.inputs)):
                inner.replace_input_with(i, None)
            stack.extend(subgraphs(inner))
    graph.remove(node, safe=True)
