"""Layer normalization fusions: the primitive form into the opset-17 op, and the residual
and embedding sums around it into ONNX Runtime's contrib ops.

    fuse-layernorm        (x-μ)/√(σ²+ε)·γ+β in ReduceMean/Sub/Pow/Sqrt/Div/Mul/Add
                          (and Mul(d,d), Reciprocal, Pow(·,0.5) variants) -> LayerNormalization
    fuse-skip-layernorm   LayerNormalization(Add(a, Add(b, bias)))          -> com.microsoft::SkipLayerNormalization(b, a, γ, β, bias)
    fuse-embed-layernorm  LayerNormalization(Gather(W, ids) + positions [+ segments]) -> com.microsoft::EmbedLayerNormalization

fuse-layernorm is exact up to float rounding; the two contrib fusions sum in a different
order inside the fused kernel (also exact up to rounding).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import onnx_ir as ir

from greencc.ir import topological_sort
from greencc.passes.lib.graph_edits import constant_array, constant_tensor, is_onnx_op, redirect
from greencc.passes.lib.matching import (
    CONTRIB_DOMAIN,
    MAX_CHECKED_ELEMENTS,
    FusionPass,
    FusionRun,
    float_attr,
    int_attr,
    ints_attr,
    label,
    only_consumer,
    other_readers,
    producer,
    remove_unused,
    scalar_constant,
)
from greencc.passes.lib.rules import Match, Op, Rule, Var
from greencc.pipeline.base import register_pass


# ----------------------------------------------------------------------------- fuse-layernorm
def _reduce_axes(node: ir.Node, run: FusionRun) -> list[int] | None:
    """The axes a ReduceMean reduces (attribute before opset 18, input after)."""
    if len(node.inputs) > 1 and node.inputs[1] is not None:
        array = constant_array(node.inputs[1], max_elements=16)
        return None if array is None else [int(v) for v in np.asarray(array).reshape(-1)]
    return ints_attr(node, "axes")


def _trailing_axes(axes: list[int] | None, rank: int | None) -> int | None:
    """How many trailing axes ``axes`` names (``k`` for [-k..-1]), or ``None``."""
    if axes is None or rank is None:
        return None
    normal = sorted(a + rank if a < 0 else a for a in axes)
    if not normal or normal != list(range(rank - len(normal), rank)):
        return None
    return len(normal)


def _static_dims(value: ir.Value, run: FusionRun) -> list[int] | None:
    """``value``'s dims when every one is a number (symbolic dims are not bound here: a
    constant shape must hold for every size the model accepts)."""
    shape = run.shape(value)
    if shape is None or not all(isinstance(d, int) for d in shape):
        return None
    return [int(d) for d in shape]


@dataclass
class Flattening:
    """The 2-D view ONNX's expansion of LayerNormalization normalizes: ``Flatten(x, axis)``
    of the original input ``x``, whose normalized dims are ``dims``; ``reshape`` turns the
    result back into ``x``'s shape, unless it already has it (``restored`` either way)."""

    x: ir.Value
    axis: int
    dims: list[int | ir.SymbolicDim]
    flatten: ir.Node
    reshape: ir.Node | None = None
    restored: bool = False


@dataclass
class LayerNormSite:
    x: ir.Value
    nodes: list[ir.Node]
    intermediates: list[ir.Value]
    output: ir.Value
    axis: int
    epsilon: float
    scale: ir.Value | np.ndarray
    bias: ir.Value | np.ndarray | None
    # Values the op's Mean / InvStdDev outputs replace, and the nodes computing them.
    mean_outputs: list[ir.Value] = field(default_factory=list)
    inv_std_outputs: list[ir.Value] = field(default_factory=list)
    extra_nodes: list[ir.Node] = field(default_factory=list)


@register_pass("fuse-layernorm")
class FuseLayerNorm(FusionPass):
    """(x - ReduceMean(x)) / Sqrt(ReduceMean((x - μ)²) + ε) [· γ] [+ β] -> LayerNormalization.

    Variants: the square as Pow(d, 2) or Mul(d, d); the variance also as
    ReduceMean(x²) - μ² (ONNX's own expansion writes it so); the division as Div or as Mul
    by Reciprocal; the root as Sqrt or Pow(·, 0.5). Both means reduce the same trailing
    axes with keepdims; ε, γ and β broadcast only along the normalized axes; γ and β may
    be graph inputs of the normalized shape. ONNX's expansion, which normalizes
    ``Flatten(x, axis)`` with ``Flatten(γ, 0)`` / ``Flatten(β, 0)`` and reshapes the result
    back to x's shape, becomes ``LayerNormalization(x, γ, β, axis)``. A mean read elsewhere,
    and a Reciprocal of the root, come from the op's Mean / InvStdDev outputs (float32 x
    only: the op keeps them in float32). Needs opset 17.
    """

    def match(self, node: ir.Node, run: FusionRun) -> LayerNormSite | None:
        if node.op_type != "Sub" or node.domain not in ("", "ai.onnx"):
            return None
        x = node.inputs[0]
        mean = producer(node.inputs[1], "ReduceMean")
        if mean is None or mean.inputs[0] is not x:
            return None
        d = node.outputs[0]
        readers = [user for user, _ in d.uses()]
        square = next((u for u in readers if u.op_type in ("Pow", "Mul") and self._is_square(u, d)), None)
        if square is not None:
            variance = only_consumer(square.outputs[0])
            if variance is None or variance.op_type != "ReduceMean":
                run.decline(node, "the squared deviation does not feed one ReduceMean")
                return None
            moments = [square, variance]
        else:
            found = self._moment_variance(x, mean)
            if found is None:
                return None
            moments, variance = found
        add_eps = only_consumer(moments[-1].outputs[0])
        if add_eps is None or add_eps.op_type != "Add":
            run.decline(node, "the variance is not followed by Add(ε)")
            return None
        sigma2 = moments[-1].outputs[0]
        epsilon = scalar_constant(add_eps.inputs[1] if add_eps.inputs[0] is sigma2 else add_eps.inputs[0])
        if epsilon is None:
            run.decline(node, "ε is not a scalar constant")
            return None
        root = only_consumer(add_eps.outputs[0])
        if root is None or not (
            root.op_type == "Sqrt" or (root.op_type == "Pow" and scalar_constant(root.inputs[1]) == 0.5)
        ):
            run.decline(node, "σ²+ε is not followed by Sqrt")
            return None
        nodes = [mean, node, *moments, add_eps, root]
        normalize = self._normalize(d, root, readers, nodes)
        if normalize is None:
            run.decline(node, "x-μ is not divided by √(σ²+ε)")
            return None
        rank = run.rank(x)
        axes_mean, axes_var = _reduce_axes(mean, run), _reduce_axes(variance, run)
        if axes_mean is None and len(mean.inputs) < 2 and rank is not None:
            axes_mean = list(range(rank))
        if axes_var is None and len(variance.inputs) < 2 and rank is not None:
            axes_var = list(range(rank))
        count = _trailing_axes(axes_mean, rank)
        if count is None or _trailing_axes(axes_var, rank) != count:
            run.decline(node, f"the means reduce axes {axes_mean} and {axes_var}, not the same trailing axes (rank {rank})")
            return None
        if int_attr(mean, "keepdims", 1) != 1 or int_attr(variance, "keepdims", 1) != 1:
            run.decline(node, "a ReduceMean drops the reduced axes (keepdims=0)")
            return None
        nodes.append(normalize)
        intermediates = [mean.outputs[0], d, *(n.outputs[0] for n in moments), add_eps.outputs[0], root.outputs[0]]
        if normalize.op_type == "Mul":
            intermediates.append(normalize.inputs[1] if normalize.inputs[0] is d else normalize.inputs[0])
        flat = self._flattening(x, count, run)
        affine = self._affine(normalize.outputs[0], x, count, flat, run)
        if flat is not None and not flat.restored:
            flat = None  # normalized in 2-D and kept so: the op normalizes the 2-D value
            affine = self._affine(normalize.outputs[0], x, count, None, run)
        scale, bias, affine_nodes, affine_values, output = affine
        nodes.extend(affine_nodes)
        intermediates.extend(affine_values)
        site = LayerNormSite(x, nodes, intermediates, output, -count, epsilon, scale, None)
        if flat is not None:
            nodes.insert(len(nodes) - 1, flat.flatten)
            intermediates.append(x)
            site.x, site.axis = flat.x, flat.axis
            if flat.reshape is not None:
                nodes.append(flat.reshape)
                intermediates.append(output)
                site.output = flat.reshape.outputs[0]
        why = self._extra_outputs(site, mean, root, flat, run)
        if why:
            run.decline(node, why)
            return None
        allowed = nodes + site.extra_nodes
        if mean.outputs[0] in site.mean_outputs:
            intermediates.remove(mean.outputs[0])  # still written: as the op's Mean output
        for inner in intermediates:
            why = other_readers(inner, allowed)
            if why:
                run.decline(node, f"an intermediate cannot be removed: {why}")
                return None
        if run.onnx_opset() < 17:
            run.decline(node, f"LayerNormalization needs opset 17; the model imports opset {run.onnx_opset()}")
            return None
        if scale is None:
            scale = self._ones(site.x, -site.axis, run)
            if scale is None:
                run.decline(node, "the normalized axes have no static size (needed for γ = 1)")
                return None
        site.scale, site.bias = scale, bias
        return site

    @staticmethod
    def _is_square(node: ir.Node, d: ir.Value) -> bool:
        if node.op_type == "Pow":
            return node.inputs[0] is d and scalar_constant(node.inputs[1]) == 2.0
        return node.inputs[0] is d and node.inputs[1] is d

    def _moment_variance(self, x: ir.Value, mean: ir.Node) -> tuple[list[ir.Node], ir.Node] | None:
        """The nodes of σ² = ReduceMean(x²) - μ² (last the Sub) and that ReduceMean, else ``None``."""
        mu = mean.outputs[0]
        for user, _ in mu.uses():
            if user.op_type not in ("Pow", "Mul") or not is_onnx_op(user) or not self._is_square(user, mu):
                continue
            sub = only_consumer(user.outputs[0])
            if sub is None or sub.op_type != "Sub" or not is_onnx_op(sub) or sub.inputs[1] is not user.outputs[0]:
                continue
            second = producer(sub.inputs[0], "ReduceMean")
            squared = None if second is None else producer(second.inputs[0], "Pow", "Mul")
            if squared is not None and self._is_square(squared, x):
                return [squared, second, user, sub], second
        return None

    @staticmethod
    def _normalize(d: ir.Value, root: ir.Node, readers: list[ir.Node], nodes: list[ir.Node]) -> ir.Node | None:
        std = root.outputs[0]
        for user in readers:
            if user.op_type == "Div" and user.inputs[0] is d and user.inputs[1] is std:
                return user
        reciprocal = only_consumer(std)
        if reciprocal is not None and reciprocal.op_type == "Reciprocal":
            for user in readers:
                if user.op_type == "Mul" and reciprocal.outputs[0] in user.inputs:
                    nodes.append(reciprocal)
                    return user
        return None

    @staticmethod
    def _flattening(x: ir.Value, count: int, run: FusionRun) -> Flattening | None:
        """The Flatten ``x`` comes from, when the normalization covers its second axis."""
        flatten = producer(x, "Flatten")
        if flatten is None or count != 1 or run.rank(x) != 2:
            return None
        source = flatten.inputs[0]
        shape = run.shape(source)
        if shape is None:
            return None
        axis = int_attr(flatten, "axis", 1)
        axis = axis + len(shape) if axis < 0 else axis
        return Flattening(source, axis - len(shape), list(shape)[axis:], flatten)

    def _affine(
        self, output: ir.Value, x: ir.Value, count: int, flat: Flattening | None, run: FusionRun
    ) -> tuple[ir.Value | np.ndarray | None, ir.Value | np.ndarray | None, list[ir.Node], list[ir.Value], ir.Value]:
        """γ, β, the Mul / Add nodes applying them (with the Flattens of γ and β), the values
        they replace, and the output; with ``flat``, its ``reshape`` is set when the output
        is reshaped back to the flattened input's shape."""
        operands: dict[str, ir.Value | np.ndarray | None] = {"scale": None, "bias": None}
        nodes: list[ir.Node] = []
        values: list[ir.Value] = []
        for op, role in (("Mul", "scale"), ("Add", "bias")):
            follower = only_consumer(output)
            if follower is None or follower.op_type != op or follower.domain not in ("", "ai.onnx"):
                break
            other = follower.inputs[1] if follower.inputs[0] is output else follower.inputs[0]
            operand = self._affine_operand(other, x, count, run) if flat is None else self._flat_operand(other, flat, run)
            if operand is None:
                break
            operands[role] = operand
            flatten = producer(other, "Flatten")
            if flat is not None and flatten is not None and operand is flatten.inputs[0]:
                nodes.append(flatten)
                values.append(other)
            values.append(output)
            nodes.append(follower)
            output = follower.outputs[0]
        if flat is not None:
            reshape = only_consumer(output)
            if reshape is not None and reshape.op_type == "Reshape" and is_onnx_op(reshape) and self._restores(reshape, flat, run):
                flat.reshape, flat.restored = reshape, True
            else:
                dims = _static_dims(flat.x, run)
                flat.restored = dims is not None and _static_dims(output, run) == dims
        return operands["scale"], operands["bias"], nodes, values, output

    @staticmethod
    def _restores(reshape: ir.Node, flat: Flattening, run: FusionRun) -> bool:
        """Whether ``reshape`` gives back the shape of the flattened input."""
        target = reshape.inputs[1]
        shape_of = producer(target, "Shape")
        if shape_of is not None:
            return shape_of.inputs[0] is flat.x and not shape_of.attributes
        dims = _static_dims(flat.x, run)
        array = constant_array(target, max_elements=16)
        return dims is not None and array is not None and [int(v) for v in np.asarray(array).reshape(-1)] == dims

    @staticmethod
    def _flat_operand(value: ir.Value, flat: Flattening, run: FusionRun) -> ir.Value | np.ndarray | None:
        """γ or β of a flattened normalization as the normalized shape of the original input:
        the input of ``Flatten(w, 0)`` when ``w`` has that shape, or a constant of one value
        per normalized element (or one value) reshaped to it."""
        flatten = producer(value, "Flatten")
        if flatten is not None and int_attr(flatten, "axis", 1) == 0:
            shape = run.shape(flatten.inputs[0])
            return flatten.inputs[0] if shape is not None and list(shape) == flat.dims else None
        array = constant_array(value, max_elements=MAX_CHECKED_ELEMENTS)
        if array is None or not all(isinstance(d, int) for d in flat.dims):
            return None
        size = int(np.prod(flat.dims, dtype=np.int64))
        if array.size == 1:
            return np.full(flat.dims, array.reshape(-1)[0], dtype=array.dtype)
        if array.size == size and array.shape[-1] == size:
            return array.reshape(flat.dims)
        return None

    @staticmethod
    def _affine_operand(
        value: ir.Value, x: ir.Value, count: int, run: FusionRun
    ) -> ir.Value | np.ndarray | None:
        """γ or β as the normalized shape (a constant reshaped, or a value of that shape)."""
        normalized = run.shape(x)
        normalized_dims = None if normalized is None else list(normalized)[-count:]
        array = constant_array(value, max_elements=MAX_CHECKED_ELEMENTS)
        if array is not None and normalized_dims is not None and list(array.shape) == normalized_dims:
            return value  # already the normalized shape: used as it is
        if array is not None:
            if array.ndim > (len(normalized) if normalized is not None else count):
                return None
            squeezed = array.reshape(array.shape[max(0, array.ndim - count):]) if all(
                s == 1 for s in array.shape[: max(0, array.ndim - count)]
            ) else None
            if squeezed is None:
                return None
            if normalized_dims is not None and all(isinstance(d, int) for d in normalized_dims):
                try:
                    return np.broadcast_to(squeezed, tuple(normalized_dims)).copy()
                except ValueError:
                    return None
            return squeezed if squeezed.ndim == count else None
        shape = run.shape(value)
        if shape is not None and normalized_dims is not None and list(shape) == normalized_dims:
            return value
        return None

    @staticmethod
    def _extra_outputs(site: LayerNormSite, mean: ir.Node, root: ir.Node, flat: Flattening | None, run: FusionRun) -> str:
        """Route a mean read outside the site, and a Reciprocal of the root, to the op's Mean
        and InvStdDev outputs; with ``flat``, through Reshapes to the op's reduced shape.
        Returns why they cannot be, or ``""``."""
        inside = set(site.nodes)
        dims = _static_dims(site.x, run) if flat is not None else None
        reduced = None if dims is None else dims[: len(dims) - len(flat.dims)] + [1] * len(flat.dims)
        readers: list[tuple[list[ir.Value], ir.Value, ir.Node | None]] = [
            (site.mean_outputs, mean.outputs[0], None)
        ]
        for user, _ in root.outputs[0].uses():
            if user not in inside and user.op_type == "Reciprocal" and is_onnx_op(user):
                readers.append((site.inv_std_outputs, user.outputs[0], user))
        for outputs, value, node in readers:
            outside = [user for user, _ in value.uses() if user not in inside]
            if node is None and not outside and not value.is_graph_output():
                continue
            if run.dtype(site.x) != ir.DataType.FLOAT:
                return (f"'{value.name}' is read elsewhere, and LayerNormalization's Mean / InvStdDev "
                        "outputs are float32 but the input is not")
            if node is not None:
                site.extra_nodes.append(node)
            if flat is None or (reduced is not None and _static_dims(value, run) == reduced):
                outputs.append(value)  # already the op's reduced shape
                continue
            if value.is_graph_output():
                return f"'{value.name}' is a graph output of the flattened normalization"
            for user in outside:
                target = constant_array(user.inputs[1], max_elements=16) if user.op_type == "Reshape" else None
                if target is None or reduced is None or [int(v) for v in np.asarray(target).reshape(-1)] != reduced:
                    return f"'{value.name}' is read by {label(user)}, not reshaped to the op's reduced shape"
                site.extra_nodes.append(user)
                outputs.append(user.outputs[0])
        return ""

    @staticmethod
    def _ones(x: ir.Value, count: int, run: FusionRun) -> np.ndarray | None:
        shape = run.shape(x)
        dtype = run.dtype(x)
        if shape is None or dtype is None:
            return None
        dims = list(shape)[-count:]
        if not all(isinstance(d, int) for d in dims):
            return None
        return np.ones(dims, dtype=dtype.numpy())

    def rewrite(self, site: LayerNormSite, run: FusionRun) -> None:
        graph = site.nodes[-1].graph
        assert graph is not None
        run.fused_away(site.intermediates)
        operands: list[ir.Value | None] = [site.x]
        for role, operand in (("scale", site.scale), ("bias", site.bias)):
            if isinstance(operand, np.ndarray):
                dtype = run.dtype(site.x)
                operand = run.initializer(graph, f"layernorm_{role}", operand.astype(dtype.numpy() if dtype else operand.dtype))
            operands.append(operand)
        extras = [(1, site.mean_outputs), (2, site.inv_std_outputs)]
        named = ["layernorm_out", "layernorm_mean", "layernorm_inv_std_dev"]
        layernorm = run.new_node(
            "LayerNormalization", operands, {"axis": site.axis, "epsilon": site.epsilon},
            anchor=site.nodes[1], output_names=named if site.mean_outputs or site.inv_std_outputs else named[:1],
        )
        matched = [*site.nodes, *site.extra_nodes]
        run.replace(site.output, layernorm, layernorm.outputs[0], matched, before=site.nodes[-1])
        if site.mean_outputs or site.inv_std_outputs or site.extra_nodes:
            for index, olds in extras:
                for old in olds:
                    new = layernorm.outputs[index]
                    new.type, new.shape = new.type or old.type, new.shape or old.shape
                    redirect(graph, old, new, before=layernorm, replaced=matched)
            remove_unused(matched)
            topological_sort(graph)  # readers of the mean may precede the fused op


# ------------------------------------------------------------------------ fuse-skip-layernorm
def _layernorm_parameters(node: ir.Node, run: FusionRun, hidden: int | None) -> str:
    """Why LayerNormalization ``node`` cannot become a contrib LayerNorm, or ``""``."""
    rank = run.rank(node.inputs[0])
    axis = int_attr(node, "axis", -1)
    if rank is None:
        return "the input's rank is unknown"
    if axis not in (-1, rank - 1):
        return f"it normalizes from axis {axis}, not over the last axis only"
    if any(out.uses() or out.is_graph_output() for out in node.outputs[1:]):
        return "its Mean / InvStdDev outputs are used"
    for role, value in (("scale", node.inputs[1]), ("bias", node.inputs[2] if len(node.inputs) > 2 else None)):
        if value is None:
            continue
        shape = run.shape(value)
        if shape is None or len(shape) != 1 or (hidden is not None and shape[0] != hidden):
            return f"its {role} is not a vector of the hidden size {hidden}"
    return ""


def _bias_of(value: ir.Value, hidden: int | None, run: FusionRun, reader: ir.Node) -> tuple[ir.Value, ir.Value, ir.Node] | None:
    """``(x, bias, add)`` when ``value = Add(x, bias)`` with a constant bias vector read
    only by ``reader``."""
    add = producer(value, "Add")
    if add is None or other_readers(value, [reader]):
        return None
    for i in (0, 1):
        bias = add.inputs[1 - i]
        tensor = constant_tensor(bias)
        if tensor is None or len(tensor.shape) != 1 or (hidden is not None and tensor.shape[0] != hidden):
            continue
        if constant_tensor(add.inputs[i]) is None:
            return add.inputs[i], bias, add
    return None


@register_pass("fuse-skip-layernorm")
class FuseSkipLayerNorm(Rule):
    """LayerNormalization(Add(a, b)) -> com.microsoft::SkipLayerNormalization(a, b, γ, β).

    A bias Add on either side joins it: Add(Add(x, bias), b) -> SkipLayerNormalization(x, b, γ, β, bias).

    The residual sum may be read elsewhere (pre-norm transformers): it then comes from the
    fused op's ``input_skip_bias_sum`` output. Needs rank-3 inputs of equal shape and a
    normalization over the last axis. Declines where the target measured its
    SkipLayerNormalization slower than Add + LayerNormalization (onnxruntime 1.32's CPU
    kernel is 3-6x slower from 16 rows up; see ``targets/ort/kernel_choice.py``).
    """

    # Two non-constant addends: a residual; a constant one is a bias (fuse-embed-layernorm's).
    pattern = Op(
        "LayerNormalization",
        Op("Add", Var("a", const=False), Var("b", const=False), name="sum"),
        more_inputs=True,
    )

    def check(self, m: Match, run: FusionRun) -> str:
        node, a, b = m.root, m["a"], m["b"]
        shape_a, shape_b = run.shape(a), run.shape(b)
        if shape_a is None or shape_b is None or list(shape_a) != list(shape_b):
            return f"the residual operands have shapes {shape_a} and {shape_b}, not one known shape"
        if len(shape_a) != 3:
            return f"the input has rank {len(shape_a)}; SkipLayerNormalization takes rank 3"
        hidden = shape_a[-1] if isinstance(shape_a[-1], int) else None
        op = f"{CONTRIB_DOMAIN}::SkipLayerNormalization"
        why = _layernorm_parameters(node, run, hidden) or run.unsupported_reason(op)
        if why:
            return why
        if slower := run.slower_reason(op):
            return f"left as Add + LayerNormalization, which run faster: {slower}"
        if m["sum"].is_graph_output():
            return f"the residual sum '{m['sum'].name}' is a graph output"
        m["keep_sum"] = bool(other_readers(m["sum"], [node]))
        m["input"], m["skip"], m["bias"], m["bias_add"] = a, b, None, None
        for first, second in ((a, b), (b, a)):
            found = _bias_of(first, hidden, run, m.node("sum"))
            if found is not None:
                m["input"], m["bias"], m["bias_add"] = found
                m["skip"] = second
                break
        return ""

    def rewrite(self, m: Match, run: FusionRun) -> None:
        node, add, bias_add, keep_sum = m.root, m.node("sum"), m["bias_add"], m["keep_sum"]
        removed = [] if keep_sum else [add.outputs[0]]
        if bias_add is not None:
            removed.append(bias_add.outputs[0])
        run.fused_away(removed)
        beta = node.inputs[2] if len(node.inputs) > 2 else None
        fused = run.new_node(
            "SkipLayerNormalization",
            [m["input"], m["skip"], node.inputs[1], beta, m["bias"]],
            {"epsilon": float_attr(node, "epsilon", 1e-5)},
            anchor=node, domain=CONTRIB_DOMAIN,
            output_names=["skip_layernorm_out", "", "", "skip_sum"] if keep_sum else None,
        )
        matched = [n for n in (bias_add, add, node) if n is not None]
        if keep_sum:
            summed = fused.outputs[3]
            summed.type, summed.shape = add.outputs[0].type, add.outputs[0].shape
            for user, index in list(add.outputs[0].uses()):
                if user is not node:
                    user.replace_input_with(index, summed)
        run.replace(node.outputs[0], fused, fused.outputs[0], matched, before=node)


# ----------------------------------------------------------------------- fuse-embed-layernorm
UNIFORM_PASSTHROUGH = frozenset(
    {"Expand", "Slice", "Reshape", "Unsqueeze", "Squeeze", "Cast", "Identity", "Tile",
     "Flatten", "Transpose"}
)


def uniform_value(value: ir.Value | None) -> float | None:
    """The single number every element of ``value`` provably holds, else ``None``.

    Follows data movement (Expand, Slice, Gather/GatherElements from a uniform tensor...)
    back to a constant whose elements are all equal; iterative, bounded.
    """
    for _ in range(64):
        if value is None:
            return None
        array = constant_array(value, max_elements=MAX_CHECKED_ELEMENTS)
        if array is not None:
            flat = np.asarray(array).reshape(-1)
            if flat.size and np.all(flat == flat[0]) and array.dtype.kind in "fiub":
                return float(flat[0])
            return None
        node = value.producer()
        if node is None or node.domain not in ("", "ai.onnx"):
            return None
        if node.op_type == "ConstantOfShape":
            attr = node.attributes.get("value")
            if attr is None:
                return 0.0
            return float(np.asarray(attr.as_tensor().numpy()).reshape(-1)[0])
        if node.op_type in UNIFORM_PASSTHROUGH or node.op_type in ("Gather", "GatherElements", "GatherND"):
            value = node.inputs[0]
            continue
        return None
    return None


@dataclass
class EmbeddingSum:
    """The addends of an embedding sum, sorted into the EmbedLayerNormalization inputs."""

    word_table: ir.Value | None = None
    ids: ir.Value | None = None
    segment_table: ir.Value | None = None
    segment_ids: ir.Value | None = None
    position_table: np.ndarray | None = None  # rows per position
    offset: np.ndarray | None = None  # added at every position
    nodes: list[ir.Node] = field(default_factory=list)
    intermediates: list[ir.Value] = field(default_factory=list)


def _arange_rows(indices: ir.Value) -> int | None:
    """``n`` when ``indices`` provably holds 0, 1, ..., n-1 along its last axis (a constant
    arange, or a prefix Slice of one with a static length); else ``None``."""
    array = constant_array(indices, max_elements=MAX_CHECKED_ELEMENTS)
    if array is not None:
        flat = np.asarray(array)
        if flat.ndim >= 1 and all(s == 1 for s in flat.shape[:-1]):
            row = flat.reshape(-1)
            if np.array_equal(row, np.arange(row.size)):
                return int(row.size)
        return None
    return None


def _prefix_arange(indices: ir.Value, run: FusionRun) -> bool:
    """Whether ``indices`` = Slice(arange constant, 0, n) along its last axis (any n)."""
    node = producer(indices, "Slice")
    if node is None:
        return False
    source = constant_array(node.inputs[0], max_elements=MAX_CHECKED_ELEMENTS)
    if source is None or source.ndim < 1 or not all(s == 1 for s in source.shape[:-1]):
        return False
    if not np.array_equal(source.reshape(-1), np.arange(source.size)):
        return False
    starts = constant_array(node.inputs[1], max_elements=8)
    axes = constant_array(node.inputs[3], max_elements=8) if len(node.inputs) > 3 and node.inputs[3] is not None else None
    steps = constant_array(node.inputs[4], max_elements=8) if len(node.inputs) > 4 and node.inputs[4] is not None else None
    if starts is None or np.asarray(starts).reshape(-1).tolist() != [0]:
        return False
    if axes is not None and int(np.asarray(axes).reshape(-1)[0]) not in (-1, source.ndim - 1):
        return False
    return steps is None or np.asarray(steps).reshape(-1).tolist() == [1]


@dataclass
class EmbedLayerNormSite:
    layernorm: ir.Node
    parts: EmbeddingSum
    keep_sum: bool


@register_pass("fuse-embed-layernorm")
class FuseEmbedLayerNorm(FusionPass):
    """LayerNorm(Gather(W, ids) + positions [+ segments]) -> com.microsoft::EmbedLayerNormalization.

    Emitted as ``EmbedLayerNormalization(ids, segment_ids, W, P, T, γ, β)``.

    Positions are a Gather of a table by 0..S-1 (a constant arange or a prefix Slice of
    one) or constants of shape [1, S, H] (exporters fold position and token-type lookups
    of a static sequence into these); addends equal at every position (a token-type
    lookup of constant ids) fold into the position table. ``ids`` is a rank-2 graph input.
    """

    def match(self, node: ir.Node, run: FusionRun) -> EmbedLayerNormSite | None:
        if node.op_type != "LayerNormalization" or node.domain not in ("", "ai.onnx"):
            return None
        root = producer(node.inputs[0], "Add")
        if root is None:
            return None
        leaves, adds = self._sum_tree(root)
        parts = EmbeddingSum(nodes=adds)
        lookups = []
        for leaf in leaves:
            gather = producer(leaf, "Gather")
            if gather is not None and int_attr(gather, "axis", 0) == 0 and constant_tensor(gather.inputs[0]) is not None:
                lookups.append((leaf, gather))
        from_inputs = [(v, g) for v, g in lookups if g.inputs[1] is not None and g.inputs[1].is_graph_input()]
        if not from_inputs:
            return None  # no token lookup: not an embedding
        from_inputs.sort(key=lambda vg: -constant_tensor(vg[1].inputs[0]).shape[0])
        word_value, word = from_inputs[0]
        parts.word_table, parts.ids = word.inputs[0], word.inputs[1]
        ids_shape = run.shape(parts.ids)
        if ids_shape is None or len(ids_shape) != 2:
            run.decline(node, f"the token ids '{parts.ids.name}' are not a rank-2 [batch, seq] input")
            return None
        table_shape = constant_tensor(parts.word_table).shape
        if len(table_shape) != 2:
            run.decline(node, "the word embedding table is not a matrix")
            return None
        hidden = int(table_shape[1])
        seq = ids_shape[1] if isinstance(ids_shape[1], int) else None
        handled = {word_value}
        parts.nodes.append(word)
        parts.intermediates.append(word_value)
        if len(from_inputs) > 1:
            seg_value, seg = from_inputs[1]
            if len(from_inputs) > 2:
                run.decline(node, "more than two embedding lookups come from graph inputs")
                return None
            parts.segment_table, parts.segment_ids = seg.inputs[0], seg.inputs[1]
            handled.add(seg_value)
            parts.nodes.append(seg)
            parts.intermediates.append(seg_value)
        for leaf in leaves:
            if leaf in handled:
                continue
            why = self._add_positional(leaf, parts, hidden, seq, run)
            if why:
                run.decline(node, why)
                return None
        if parts.position_table is None:
            if seq is None:
                run.decline(node, "no position embedding found and the sequence length is not static")
                return None
            parts.position_table = np.zeros((seq, hidden), np.float32)
        why = _layernorm_parameters(node, run, hidden)
        if why:
            run.decline(node, why)
            return None
        for inner in parts.intermediates:
            if inner is root.outputs[0]:
                continue
            why = other_readers(inner, parts.nodes + [node])
            if why:
                run.decline(node, f"an embedding lookup is read elsewhere: {why}")
                return None
        for dtype_value in (parts.ids, parts.segment_ids):
            if dtype_value is not None and run.dtype(dtype_value) not in (ir.DataType.INT32, ir.DataType.INT64):
                run.decline(node, f"the ids '{dtype_value.name}' are not int32/int64")
                return None
        if not run.supports(node, f"{CONTRIB_DOMAIN}::EmbedLayerNormalization"):
            return None
        if root.outputs[0].is_graph_output():
            run.decline(node, f"the embedding sum '{root.outputs[0].name}' is a graph output")
            return None
        keep_sum = bool(other_readers(root.outputs[0], [node]))
        return EmbedLayerNormSite(node, parts, keep_sum)

    @staticmethod
    def _sum_tree(root: ir.Node) -> tuple[list[ir.Value], list[ir.Node]]:
        """Leaves and Add nodes of the Add tree under ``root`` (inner sums read once)."""
        leaves: list[ir.Value] = []
        adds = [root]
        stack = list(reversed(root.inputs))
        while stack:
            value = stack.pop()
            inner = producer(value, "Add")
            if inner is not None and only_consumer(value) is not None and len(adds) < 8:
                adds.append(inner)
                stack.extend(reversed(inner.inputs))
            else:
                leaves.append(value)
        return leaves, adds

    @staticmethod
    def _add_positional(
        leaf: ir.Value, parts: EmbeddingSum, hidden: int, seq: int | None, run: FusionRun
    ) -> str:
        """Fold ``leaf`` into the position table or the offset; the reason when it cannot."""
        array = constant_array(leaf)
        if array is not None:
            array = np.asarray(array, np.float64)
            if array.shape[-1:] != (hidden,):
                return f"the constant addend '{leaf.name}' of shape {array.shape} is not per hidden unit"
            lead = array.shape[:-1]
            if all(s == 1 for s in lead):
                parts.offset = array.reshape(hidden) + (0 if parts.offset is None else parts.offset)
                return ""
            if len(lead) >= 1 and all(s == 1 for s in lead[:-1]):
                if seq is None or lead[-1] != seq:
                    return (f"the constant addend '{leaf.name}' holds {lead[-1]} positions but the "
                            f"sequence length is {seq or 'dynamic'}")
                rows = array.reshape(seq, hidden)
                parts.position_table = rows if parts.position_table is None else _add_rows(parts.position_table, rows)
                return ""
            return f"the constant addend '{leaf.name}' of shape {array.shape} varies over the batch"
        moves, looked_up = _strip_row_preserving(leaf, run)
        gather = producer(looked_up, "Gather")
        if gather is None or constant_tensor(gather.inputs[0]) is None or int_attr(gather, "axis", 0) != 0:
            origin = leaf.producer()
            what = label(origin) if origin else f"input '{leaf.name}'"
            return f"the addend from {what} is neither a position nor a token-type embedding"
        table = np.asarray(constant_tensor(gather.inputs[0]).numpy(), np.float64)
        if table.ndim != 2 or table.shape[1] != hidden:
            return f"the table of {label(gather)} is not [rows, {hidden}]"
        indices = gather.inputs[1]
        uniform = uniform_value(indices)
        if moves and uniform is None:
            return f"{label(moves[0])} reshapes a lookup that is not one constant row"
        parts.nodes.extend([gather, *moves])
        parts.intermediates.extend([gather.outputs[0], *(m.outputs[0] for m in moves)])
        if uniform is not None:
            row = int(uniform)
            parts.offset = table[row] + (0 if parts.offset is None else parts.offset)
            return ""
        rows = _arange_rows(indices)
        if rows is not None or _prefix_arange(indices, run):
            positions = table if rows is None else table[:rows]
            if seq is not None and positions.shape[0] < seq:
                return f"the position table has {positions.shape[0]} rows for {seq} positions"
            parts.position_table = positions if parts.position_table is None else _add_rows(parts.position_table, positions)
            return ""
        return f"{label(gather)} does not look up positions 0..S-1 or one constant row"

    def rewrite(self, site: EmbedLayerNormSite, run: FusionRun) -> None:
        node, parts = site.layernorm, site.parts
        graph = node.graph
        assert graph is not None
        root_sum = node.inputs[0]
        removed = [v for v in parts.intermediates] + ([] if site.keep_sum else [root_sum])
        run.fused_away(removed)
        dtype = constant_tensor(parts.word_table).dtype.numpy()
        positions = parts.position_table
        if parts.offset is not None:
            positions = positions + parts.offset
        position_table = run.initializer(graph, "position_embedding_folded", positions.astype(dtype))
        casts = []
        ids = self._int32(parts.ids, node, run, casts)
        segment_ids = self._int32(parts.segment_ids, node, run, casts) if parts.segment_ids is not None else None
        hidden = positions.shape[1]
        gamma = node.inputs[1]
        beta = node.inputs[2] if len(node.inputs) > 2 else None
        if beta is None:
            beta = run.initializer(graph, "embed_layernorm_beta", np.zeros(hidden, dtype))
        fused = run.new_node(
            "EmbedLayerNormalization",
            [ids, segment_ids, parts.word_table, position_table, parts.segment_table, gamma, beta],
            {"epsilon": float_attr(node, "epsilon", 1e-5)},
            anchor=node, domain=CONTRIB_DOMAIN,
            # ONNX Runtime's type inference always types the mask_index output.
            output_names=["embed_layernorm_out", "embed_mask_index", *(["embedding_sum"] if site.keep_sum else [])],
        )
        matched = [*parts.nodes, node]
        if site.keep_sum:
            summed = fused.outputs[2]
            summed.type, summed.shape = root_sum.type, root_sum.shape
            for user, index in list(root_sum.uses()):
                if user is not node:
                    user.replace_input_with(index, summed)
        run.replace(node.outputs[0], fused, fused.outputs[0], matched, before=node, extra_nodes=casts)

    @staticmethod
    def _int32(value: ir.Value, anchor: ir.Node, run: FusionRun, casts: list[ir.Node]) -> ir.Value:
        if value.dtype == ir.DataType.INT32:
            return value
        cast = run.new_node("Cast", [value], {"to": ir.DataType.INT32}, anchor=anchor, output_names=[f"{value.name}_int32"])
        cast.outputs[0].dtype = ir.DataType.INT32
        casts.append(cast)
        return cast.outputs[0]


def _strip_row_preserving(value: ir.Value, run: FusionRun) -> tuple[list[ir.Node], ir.Value]:
    """Slices and Expands over the leading axes above ``value`` (they keep every row of
    a lookup intact), outermost last; and the value under them."""
    moves: list[ir.Node] = []
    current = value
    for _ in range(8):
        node = producer(current, "Slice", "Expand")
        if node is None:
            break
        if node.op_type == "Slice":
            axes = constant_array(node.inputs[3], max_elements=8) if len(node.inputs) > 3 and node.inputs[3] is not None else None
            rank = run.rank(node.inputs[0])
            if axes is None or rank is None or any(int(a) in (-1, rank - 1) for a in np.asarray(axes).reshape(-1)):
                break
        moves.insert(0, node)
        current = node.inputs[0]
    return moves, current


def _add_rows(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    rows = min(a.shape[0], b.shape[0])
    return a[:rows] + b[:rows]
