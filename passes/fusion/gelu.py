"""GELU fusions: the primitive erf and tanh forms into one op, and a preceding bias Add
into ONNX Runtime's bias-GELU kernels.

    fuse-gelu       0.5·x·(1 + erf(x/√2))                      -> Gelu (opset 20) | com.microsoft::Gelu
                    0.5·x·(1 + tanh(√(2/π)·(x + 0.044715·x³)))  -> Gelu<approximate=tanh> | com.microsoft::FastGelu
    fuse-bias-gelu  Gelu(Add(x, b))                            -> com.microsoft::BiasGelu(x, b)
                    Gelu<tanh>(Add(x, b)) / FastGelu(Add(x, b)) -> com.microsoft::FastGelu(x, b)

Exact up to float rounding: the fused kernels evaluate the same formula.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import onnx_ir as ir

from greencc.passes.lib.graph_edits import constant_tensor
from greencc.passes.lib.matching import (
    CONTRIB_DOMAIN,
    FusionPass,
    FusionRun,
    other_readers,
    producer,
    scalar_constant,
    single_reader,
)
from greencc.passes.lib.rules import ANY_DOMAIN, Match, Op, Rule, Var
from greencc.pipeline.base import register_pass

SQRT2 = math.sqrt(2.0)
SQRT_2_OVER_PI = math.sqrt(2.0 / math.pi)
TANH_CUBIC = 0.044715  # the cubic coefficient of the tanh approximation (Hendrycks & Gimpel 2016)


def _close(value: float | None, target: float) -> bool:
    # The exporters write these as float32 constants: equal to ~1e-7 relative.
    return value is not None and math.isclose(value, target, rel_tol=1e-6)


def _scalar(value: ir.Value | None) -> float | None:
    """The number a scalar constant holds, also through a Sqrt of one (ONNX's expansion
    of Gelu computes √2 and √(2/π) in the graph)."""
    found = scalar_constant(value)
    if found is not None:
        return found
    root = producer(value, "Sqrt")
    inner = None if root is None else scalar_constant(root.inputs[0])
    return None if inner is None or inner < 0 else math.sqrt(inner)


def _is_sum(node: ir.Node | None) -> bool:
    """Whether ``node`` adds two values: an Add, or a Sum of two inputs."""
    if node is None or node.domain not in ("", "ai.onnx"):
        return False
    return node.op_type == "Add" or (node.op_type == "Sum" and len(node.inputs) == 2)


def _other(node: ir.Node, value: ir.Value) -> ir.Value | None:
    """The input of binary ``node`` that is not ``value`` (``None`` if neither/both)."""
    a, b = node.inputs[0], node.inputs[1]
    if a is value and b is not value:
        return b
    if b is value and a is not value:
        return a
    return None


@dataclass
class GeluSite:
    x: ir.Value
    approximate: str
    nodes: list[ir.Node]
    output: ir.Value


@register_pass("fuse-gelu")
class FuseGelu(FusionPass):
    """0.5·x·(1+erf(x/√2)) -> Gelu; 0.5·x·(1+tanh(√(2/π)(x+0.044715x³))) -> Gelu<tanh>.

    The product may be written in any association ((x·0.5)·(1+erf), x·((1+erf)·0.5)...),
    x/√2 as Div or Mul by 1/√2, x³ as Pow(x, 3) or Mul(x, Mul(x, x)), a sum as Add or a
    two-input Sum, √2 and √(2/π) as constants or Sqrt of one (ONNX's own expansion of
    Gelu writes Sum and Sqrt(2)). Emits the opset-20 Gelu when the model's opset has it,
    else the target's com.microsoft Gelu / FastGelu.
    """

    def match(self, node: ir.Node, run: FusionRun) -> GeluSite | None:
        if node.domain not in ("", "ai.onnx") or node.op_type not in ("Erf", "Tanh"):
            return None
        if node.op_type == "Erf":
            found = self._erf_argument(node)
            approximate = "none"
        else:
            found = self._tanh_argument(node)
            approximate = "tanh"
        if found is None:
            return None
        x, inner_nodes = found
        one_plus = single_reader(node.outputs[0])
        if one_plus is None or not _is_sum(one_plus):
            return None
        if not _close(scalar_constant(_other(one_plus, node.outputs[0])), 1.0):
            return None
        product = self._half_x_product(one_plus.outputs[0], x)
        if product is None:
            run.decline(node, f"1+{node.op_type.lower()}(·) is not multiplied by exactly x and 0.5")
            return None
        mul_nodes, output = product
        nodes = [*inner_nodes, node, one_plus, *mul_nodes]
        for inner in nodes[:-1]:
            why = other_readers(inner.outputs[0], nodes)
            if why:
                run.decline(node, f"an intermediate of the GELU is read elsewhere: {why}")
                return None
        op = self.fused_op(run, approximate)
        if op is None:
            run.decline(
                node, f"the model's opset {run.onnx_opset()} has no Gelu (20) and "
                f"{self.contrib_op(approximate)}: {run.unsupported_reason(self.contrib_op(approximate))}",
            )
            return None
        return GeluSite(x, approximate, nodes, output)

    @staticmethod
    def contrib_op(approximate: str) -> str:
        return f"{CONTRIB_DOMAIN}::{'Gelu' if approximate == 'none' else 'FastGelu'}"

    def fused_op(self, run: FusionRun, approximate: str) -> str | None:
        """``"Gelu"`` (opset 20), the contrib op's name, or ``None`` when neither runs."""
        if run.onnx_opset() >= 20:
            return "Gelu"
        if not run.unsupported_reason(self.contrib_op(approximate)):
            return self.contrib_op(approximate)
        return None

    @staticmethod
    def _erf_argument(erf: ir.Node) -> tuple[ir.Value, list[ir.Node]] | None:
        scaled = erf.inputs[0]
        node = producer(scaled, "Div", "Mul")
        if node is None:
            return None
        if node.op_type == "Div":
            if _close(_scalar(node.inputs[1]), SQRT2):
                return node.inputs[0], [node]
            return None
        for i in (0, 1):
            if _close(_scalar(node.inputs[1 - i]), 1.0 / SQRT2):
                return node.inputs[i], [node]
        return None

    @staticmethod
    def _tanh_argument(tanh: ir.Node) -> tuple[ir.Value, list[ir.Node]] | None:
        scale = producer(tanh.inputs[0], "Mul")
        if scale is None:
            return None
        for i in (0, 1):
            if _close(_scalar(scale.inputs[1 - i]), SQRT_2_OVER_PI):
                inner = producer(scale.inputs[i], "Add", "Sum")
                break
        else:
            return None
        if not _is_sum(inner):
            return None
        for i in (0, 1):
            x = inner.inputs[i]
            cubic_term = producer(inner.inputs[1 - i], "Mul")
            if cubic_term is None:
                continue
            for j in (0, 1):
                if not _close(scalar_constant(cubic_term.inputs[1 - j]), TANH_CUBIC):
                    continue
                cube_nodes = _cube_of(cubic_term.inputs[j], x)
                if cube_nodes is not None:
                    return x, [*cube_nodes, cubic_term, inner, scale]
        return None

    @staticmethod
    def _half_x_product(factor: ir.Value, x: ir.Value) -> tuple[list[ir.Node], ir.Value] | None:
        """The Mul nodes computing ``factor · x · 0.5`` (any association) and the result."""
        nodes: list[ir.Node] = []
        have_x = have_half = False
        current = factor
        for _ in range(2):
            mul = single_reader(current)
            if mul is None or mul.op_type != "Mul" or mul.domain not in ("", "ai.onnx"):
                return None
            other = _other(mul, current)
            if other is None:
                return None
            nodes.append(mul)
            operands = [other]
            inner = producer(other, "Mul")
            if other is not x and inner is not None and single_reader(other) is mul:
                operands = list(inner.inputs)
                nodes.insert(len(nodes) - 1, inner)
            for operand in operands:
                if operand is x and not have_x:
                    have_x = True
                elif _close(scalar_constant(operand), 0.5) and not have_half:
                    have_half = True
                else:
                    return None
            current = mul.outputs[0]
            if have_x and have_half:
                return nodes, current
        return None

    def rewrite(self, site: GeluSite, run: FusionRun) -> None:
        run.fused_away([n.outputs[0] for n in site.nodes[:-1]])
        op = self.fused_op(run, site.approximate)
        assert op is not None
        anchor = site.nodes[0]
        if op == "Gelu":
            gelu = run.new_node("Gelu", [site.x], {"approximate": site.approximate}, anchor=anchor)
        else:
            gelu = run.new_node(op.split("::")[1], [site.x], anchor=anchor, domain=CONTRIB_DOMAIN)
        run.replace(site.output, gelu, gelu.outputs[0], site.nodes, before=site.nodes[-1])


def _cube_of(value: ir.Value, x: ir.Value) -> list[ir.Node] | None:
    """The nodes computing ``value = x³`` (Pow(x, 3), x·(x·x) or (x·x)·x), else ``None``."""
    pow_node = producer(value, "Pow")
    if pow_node is not None:
        if pow_node.inputs[0] is x and _close(scalar_constant(pow_node.inputs[1]), 3.0):
            return [pow_node]
        return None
    outer = producer(value, "Mul")
    if outer is None:
        return None
    for i in (0, 1):
        if outer.inputs[i] is not x:
            continue
        square = producer(outer.inputs[1 - i], "Mul")
        if square is not None and square.inputs[0] is x and square.inputs[1] is x:
            return [square, outer]
    return None


def _approximation(node: ir.Node) -> str | None:
    """``"none"`` / ``"tanh"``: which GELU ``node`` computes without a bias; else ``None``."""
    if node.domain in ("", "ai.onnx") and node.op_type == "Gelu":
        attr = node.attributes.get("approximate")
        return "none" if attr is None else attr.as_string()
    if node.domain == CONTRIB_DOMAIN and node.op_type == "Gelu":
        return "none"
    if node.domain == CONTRIB_DOMAIN and node.op_type == "FastGelu" and (
        len(node.inputs) < 2 or node.inputs[1] is None
    ):
        return "tanh"
    return None


@register_pass("fuse-bias-gelu")
class FuseBiasGelu(Rule):
    """Gelu(Add(x, b)) -> com.microsoft::BiasGelu(x, b); the tanh form -> FastGelu(x, b).

    ``b`` is a constant vector as long as the last axis of ``x`` (a Linear layer's bias),
    and the Add is read only by the GELU.
    """

    pattern = Op(
        ("Gelu", "FastGelu"),
        Op("Add", Var("x", const=False), Var("bias", const=True), commute=True, name="add"),
        domain=ANY_DOMAIN, more_inputs=True, where=lambda node: _approximation(node) is not None,
    )

    def check(self, m: Match, run: FusionRun) -> str:
        x, bias = m["x"], m["bias"]
        tensor, shape = constant_tensor(bias), run.shape(x)
        if len(tensor.shape) != 1 or shape is None or not shape or shape[-1] != tensor.shape[0]:
            return f"the bias '{bias.name}' is not a vector along the last axis of '{x.name}'"
        why = other_readers(m["add"], [m.root])
        if why:
            return f"the biased value cannot be removed: {why}"
        m["op"] = "BiasGelu" if _approximation(m.root) == "none" else "FastGelu"
        return run.unsupported_reason(f"{CONTRIB_DOMAIN}::{m['op']}")

    def rewrite(self, m: Match, run: FusionRun) -> None:
        run.fused_away([m["add"]])
        fused = run.new_node(m["op"], [m["x"], m["bias"]], anchor=m.root, domain=CONTRIB_DOMAIN)
        run.replace(m.output, fused, fused.outputs[0], [m.node("add"), m.root], before=m.root)
