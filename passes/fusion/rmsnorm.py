"""RMSNorm fusions: the root-mean-square normalization of Llama-family decoders written with
primitive ops, and the residual Add before it, into one op each.

    x·(1/√(mean(x²)+ε))·γ                     -> SimplifiedLayerNormalization(x, γ)   (fuse-rmsnorm)
    SimplifiedLayerNormalization(Add(a, b), γ) -> com.microsoft::SkipSimplifiedLayerNormalization(a, b, γ)
                                                                                 (fuse-skip-rmsnorm)

A model importing ONNX opset 23 gets the standard ``RMSNormalization`` instead of ONNX
Runtime's ``SimplifiedLayerNormalization`` (an ONNX-domain op only ONNX Runtime defines).
"""

from __future__ import annotations

import numpy as np
import onnx_ir as ir

from greencc.passes.lib.graph_edits import constant_array
from greencc.passes.lib.matching import (
    CONTRIB_DOMAIN,
    FusionRun,
    float_attr,
    int_attr,
    ints_attr,
    label,
    other_readers,
    scalar_constant,
    single_reader,
)
from greencc.passes.lib.rules import Either, Match, Op, Optional, Rule, Var
from greencc.pipeline.base import register_pass

# ONNX Runtime defines this op in the ONNX domain; targets list it under that name.
SIMPLIFIED_LAYERNORM = "ai.onnx::SimplifiedLayerNormalization"
RMS_NORMALIZATION_OPSET = 23


def _mean_square_eps(x: Var) -> Op:
    """mean(x²)+ε, the square as Pow(x, 2) or Mul(x, x)."""
    square = Either(Op("Pow", x, Var("two", const=True), name="square"), Op("Mul", x, x, name="square"))
    return Op("Add", Op("ReduceMean", square, Optional(Var("axes", const=True)), name="mean"),
              Var("eps", const=True), commute=True, name="var_eps")


def _inverse_rms(x: Var) -> Op:
    """1/√(mean(x²)+ε) as exporters write it: Reciprocal(Sqrt), Div(1, Sqrt) or Pow(−0.5)."""
    variance = _mean_square_eps(x)
    root = Op("Sqrt", variance, name="sqrt")
    return Either(
        Op("Reciprocal", root, name="inverse"),
        Op("Div", Var("one", const=True), root, name="inverse"),
        Op("Pow", variance, Var("minus_half", const=True), name="inverse"),
    )


def _normalized(x: Var) -> Op:
    """x·(1/√(mean(x²)+ε)), or x/√(mean(x²)+ε) as ONNX's expansion of RMSNormalization
    writes it; which operation meets which operand is left to the check."""
    return Op(("Mul", "Div"), x, Either(_inverse_rms(x), Op("Sqrt", _mean_square_eps(x), name="sqrt")),
              commute=True, name="normed")


def _operation_problem(m: Match) -> str:
    """Why the root does not multiply x by the inverse root or divide x by the root."""
    root, inverted = m.root, "inverse" in m.named_nodes
    if root.op_type == "Mul" and not inverted:
        return f"{label(root)} multiplies x by the root mean square instead of dividing by it"
    if root.op_type == "Div" and (inverted or root.inputs[0] is not m["x"]):
        return f"{label(root)} does not divide x by the root mean square"
    return ""


def _exponent_problem(m: Match) -> str:
    """Why the constants of the square and the inverse root are not 2, 1 and −0.5."""
    if m.node("square").op_type == "Pow" and scalar_constant(m["two"]) != 2.0:
        return f"the square {label(m.node('square'))} raises to {scalar_constant(m['two'])}, not 2"
    inverse = m.named_nodes.get("inverse")
    if inverse is not None and inverse.op_type == "Div" and scalar_constant(m["one"]) != 1.0:
        return f"{label(inverse)} divides {scalar_constant(m['one'])}, not 1, by the root"
    if inverse is not None and inverse.op_type == "Pow" and scalar_constant(m["minus_half"]) != -0.5:
        return f"{label(inverse)} raises to {scalar_constant(m['minus_half'])}, not -0.5"
    return ""


def _normalized_count(mean: ir.Node, m: Match, rank: int | None) -> int | None:
    """How many trailing axes the mean reduces with keepdims (``k`` for [-k..-1]), or ``None``."""
    axes = ints_attr(mean, "axes")
    if axes is None and m["axes"] is not None:
        array = constant_array(m["axes"])
        axes = None if array is None else [int(a) for a in np.asarray(array).reshape(-1)]
    if not axes or int_attr(mean, "keepdims", 1) != 1:
        return None
    if axes == [-1]:
        return 1
    if rank is None:
        return None
    normal = sorted(a + rank if a < 0 else a for a in axes)
    return len(normal) if normal == list(range(rank - len(normal), rank)) else None


def _scale_of(value: ir.Value, dims: list[int | ir.SymbolicDim] | None, run: FusionRun) -> np.ndarray | ir.Value | None:
    """γ as the op's scale over the normalized ``dims``: a constant broadcast along them
    only (reshaped to them), or a value of exactly that shape; else ``None``."""
    if dims is None:
        return None
    count = len(dims)
    gamma = constant_array(value)
    if gamma is None:
        shape = run.shape(value)
        return value if shape is not None and list(shape) == dims else None
    if gamma.ndim > count and any(s != 1 for s in gamma.shape[: gamma.ndim - count]):
        return None
    if not all(isinstance(d, int) for d in dims):
        return None
    try:
        return np.broadcast_to(gamma.reshape(gamma.shape[max(0, gamma.ndim - count):]), tuple(dims)).copy()
    except ValueError:
        return None


@register_pass("fuse-rmsnorm")
class FuseRmsNorm(Rule):
    """x·(1/√(mean(x²)+ε))·γ -> SimplifiedLayerNormalization(x, γ, epsilon=ε) (RMSNormalization at opset 23).

    The forms of the dynamo exports of Llama, Mistral, Qwen2 and Gemma (Gemma's (1 + w)
    is folded into one constant γ by cleanup), and ONNX's own expansion of RMSNormalization:
    the square as Pow(x, 2) or Mul(x, x), the inverse root as Reciprocal(Sqrt), Div(1, Sqrt)
    or Pow(·, −0.5), or x divided by the root. The mean may cover several trailing axes
    (the op's ``axis``). x may be a Cast to float32 (the statistics are then taken in
    float32, as the model does); a Cast of the normalized value before the γ product is
    kept after the fused op. γ is a constant broadcast along the normalized axes, or a
    value of their shape (a graph input: the op takes it as its scale input); without a
    γ product the scale is ones. Declines when the mean is not over trailing axes, ε is
    not a scalar, an intermediate is read elsewhere, or the target does not run the op.
    """

    pattern = _normalized(Var("x", const=False))

    def check(self, m: Match, run: FusionRun) -> str:
        why = _operation_problem(m) or _exponent_problem(m)
        if why:
            return why
        rank = run.rank(m["x"])
        count = _normalized_count(m.node("mean"), m, rank)
        if count is None:
            return (f"{label(m.node('mean'))} does not average over the last axis only (keeping it) "
                    "nor over trailing axes")
        eps = scalar_constant(m["eps"])
        if eps is None or eps < 0:
            return f"the epsilon '{m['eps'].name}' is not a non-negative scalar"
        for name in ("square", "mean", "var_eps", "sqrt", "inverse"):
            if name not in m.named_nodes:
                continue
            allowed = [n for n in m.nodes if n is not m.named_nodes[name]]
            why = other_readers(m[name], allowed)
            if why:
                return why
        m["epsilon"], m["axis"] = eps, -count
        shape = run.shape(m["x"])
        dims = None if shape is None else list(shape)[-count:]
        m["dims"] = dims
        m["gamma"], m["gamma_mul"], m["cast_out"] = None, None, None
        tail = m.output
        cast = single_reader(tail)
        if cast is not None and cast.op_type == "Cast" and not tail.is_graph_output():
            tail = cast.outputs[0]
        weight_mul = single_reader(tail)
        if weight_mul is not None and weight_mul.op_type == "Mul" and not tail.is_graph_output():
            other = weight_mul.inputs[1] if weight_mul.inputs[0] is tail else weight_mul.inputs[0]
            gamma = _scale_of(other, dims, run)
            if gamma is not None:
                m["gamma"], m["gamma_mul"] = gamma, weight_mul
                m["cast_out"] = cast if tail is not m.output else None
        if m["gamma"] is None and (dims is None or not all(isinstance(d, int) for d in dims)):
            return f"the hidden size of '{m['x'].name}' is unknown, so no unit scale can be made"
        if run.onnx_opset() >= RMS_NORMALIZATION_OPSET:
            return ""
        return run.unsupported_reason(SIMPLIFIED_LAYERNORM)

    def rewrite(self, m: Match, run: FusionRun) -> None:
        x, gamma_mul, cast_out = m["x"], m["gamma_mul"], m["cast_out"]
        graph = m.root.graph
        assert graph is not None
        last = gamma_mul if gamma_mul is not None else m.root
        inverse = "inverse" if "inverse" in m.named_nodes else "sqrt"
        run.fused_away([m[name] for name in ("square", "mean", "var_eps", inverse)] + [m.output])
        dtype = (run.dtype(x) or ir.DataType.FLOAT).numpy()
        gamma = m["gamma"] if m["gamma"] is not None else np.ones(m["dims"])
        scale = gamma if isinstance(gamma, ir.Value) else run.initializer(graph, "rms_gamma", np.asarray(gamma, dtype=dtype))
        standard = run.onnx_opset() >= RMS_NORMALIZATION_OPSET
        fused = run.new_node("RMSNormalization" if standard else "SimplifiedLayerNormalization", [x, scale],
                             {"epsilon": float(m["epsilon"]), "axis": int(m["axis"])}, anchor=m.root,
                             output_names=["rmsnorm_out"])
        extra: list[ir.Node] = []
        result = fused.outputs[0]
        if cast_out is not None:
            recast = run.new_node("Cast", [result], {"to": cast_out.attributes["to"].as_int()}, anchor=cast_out)
            extra, fused, result = [fused], recast, recast.outputs[0]
        matched = [*m.nodes, *([cast_out] if cast_out is not None else []), *([gamma_mul] if gamma_mul else [])]
        run.replace(last.outputs[0], fused, result, matched, before=last, extra_nodes=extra)


def simplified_layernorm_epsilon(node: ir.Node) -> float:
    """The epsilon of a SimplifiedLayerNormalization / RMSNormalization node."""
    return float_attr(node, "epsilon", 1e-5)


@register_pass("fuse-skip-rmsnorm")
class FuseSkipRmsNorm(Rule):
    """SimplifiedLayerNormalization(Add(a, b), γ) -> com.microsoft::SkipSimplifiedLayerNormalization(a, b, γ).

    The residual sum may be read elsewhere (every pre-norm decoder layer reads it again):
    it then comes from the fused op's ``input_skip_bias_sum`` output. Needs inputs of
    equal shape and rank 2 or 3, normalized over the last axis.
    """

    pattern = Op(
        ("SimplifiedLayerNormalization", "RMSNormalization"),
        Op("Add", Var("a", const=False), Var("b", const=False), name="sum"),
        Var("gamma", const=True),
    )

    def check(self, m: Match, run: FusionRun) -> str:
        shape_a, shape_b = run.shape(m["a"]), run.shape(m["b"])
        if shape_a is None or shape_b is None or list(shape_a) != list(shape_b):
            return f"the residual operands have shapes {shape_a} and {shape_b}, not one known shape"
        if len(shape_a) not in (2, 3):
            return f"the input has rank {len(shape_a)}; SkipSimplifiedLayerNormalization takes rank 2 or 3"
        axis = int_attr(m.root, "axis", -1)
        if axis not in (-1, len(shape_a) - 1):
            return f"{label(m.root)} normalizes from axis {axis}, not over the last axis only"
        if m["sum"].is_graph_output():
            return f"the residual sum '{m['sum'].name}' is a graph output"
        m["keep_sum"] = bool(other_readers(m["sum"], [m.root]))
        return run.unsupported_reason(f"{CONTRIB_DOMAIN}::SkipSimplifiedLayerNormalization")

    def rewrite(self, m: Match, run: FusionRun) -> None:
        node, add, keep_sum = m.root, m.node("sum"), m["keep_sum"]
        run.fused_away([] if keep_sum else [add.outputs[0]])
        fused = run.new_node(
            "SkipSimplifiedLayerNormalization", [m["a"], m["b"], m["gamma"]],
            {"epsilon": simplified_layernorm_epsilon(node)}, anchor=node, domain=CONTRIB_DOMAIN,
            output_names=["skip_rmsnorm_out", "", "", "skip_sum"] if keep_sum else ["skip_rmsnorm_out"],
        )
        if keep_sum:
            summed = fused.outputs[3]
            summed.type, summed.shape = add.outputs[0].type, add.outputs[0].shape
            for user, index in list(add.outputs[0].uses()):
                if user is not node:
                    user.replace_input_with(index, summed)
        run.replace(node.outputs[0], fused, fused.outputs[0], [add, node], before=node)
