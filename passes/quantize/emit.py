"""The int8 forms a site is rewritten into, in standard ONNX wherever one exists:

    dynamic  MatMul(x, W)   -> Mul(Cast(MatMulInteger(DynamicQuantizeLinear(x), Wq)), sx·sw)
             Gemm(x, W, b)  -> the same, + b
             Conv(x, W, b)  -> Mul(Cast(ConvInteger(DynamicQuantizeLinear(x), Wq)), sx·sw) + b
             Attention(x, W, b, mask) -> com.microsoft QAttention(DynamicQuantizeLinear(x), Wq, b, ...)
    static   op(x, W, ...)  -> op(DequantizeLinear(QuantizeLinear(x)), DequantizeLinear(Wq), ...)
             (Conv also gets Q/DQ on its output, or after its Relu, so ONNX Runtime forms QLinearConv)

ONNX Runtime fuses the dynamic chains into DynamicQuantizeMatMul / MatMulIntegerToFloat
and the QDQ ones into QLinearConv / MatMulIntegerToFloat / QGemm. Weights are symmetric
int8 (zero point 0), per output channel or per tensor; activations asymmetric uint8.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx_ir as ir

from greencc.ir import inherit_provenance
from greencc.passes.lib.graph_edits import NameScope, constant_tensor, new_initializer, redirect
from greencc.quant import quant_params, quantize, weight_range

from .placement import CONTRIB, QuantSite

FLOAT = ir.DataType.FLOAT


@dataclass
class QuantizedWeight:
    """A weight in int8: ``q`` (int8 array), ``scale`` (float32, 0-d or 1-d along ``axis``),
    ``zero_point`` (int8, same shape as ``scale``)."""

    q: np.ndarray
    scale: np.ndarray
    zero_point: np.ndarray
    axis: int | None


def quantize_weight(w: np.ndarray, axis: int | None, symmetric: bool = True) -> QuantizedWeight:
    """``w`` quantized to int8 per channel along ``axis`` (or per tensor when ``None``),
    with greencc.quant's min/max weight range and parameters."""
    r = weight_range(w, axis)
    scale, zero_point = quant_params(r, "int8", symmetric=symmetric)
    return QuantizedWeight(quantize(w, scale, zero_point, axis), scale, zero_point, axis)


class Emitter:
    """Rewrites sites of one graph, sharing one quantization of each activation tensor
    among the sites that read it."""

    def __init__(self, model: ir.Model, graph: ir.Graph) -> None:
        self.model = model
        self.graph = graph
        self.names = NameScope(model)
        self._dynamic: dict[str, tuple[ir.Value, ir.Value, ir.Value]] = {}
        self._static: dict[str, ir.Value] = {}
        self._node_names: set[str] | None = None
        self.inserted_nodes = 0

    # -- helpers -------------------------------------------------------------------------
    def _const(self, base: str, array: np.ndarray) -> ir.Value:
        return new_initializer(self.graph, self.names.fresh(base), np.asarray(array))

    def _node(self, op: str, inputs: list[ir.Value | None], anchor: ir.Node, *, outputs: int = 1,
              attributes: dict | None = None, domain: str = "") -> ir.Node:
        while inputs and inputs[-1] is None:
            inputs.pop()
        outs = [ir.Value(name=self.names.fresh(f"{anchor.name or op}_{op.lower()}")) for _ in range(outputs)]
        node = ir.node(op, inputs, attributes or {}, domain=domain, outputs=outs,
                       name=self._fresh_node_name(anchor, op))
        self.graph.insert_before(anchor, node)
        inherit_provenance(node, [anchor])
        self.inserted_nodes += 1
        return node

    def _fresh_node_name(self, anchor: ir.Node, op: str) -> str:
        if self._node_names is None:
            self._node_names = {n.name for g in self.model.graphs() for n in g if n.name}
        taken = self._node_names
        base = f"{anchor.name or op}_{op}"
        name, i = base, 0
        while name in taken:
            i += 1
            name = f"{base}_{i}"
        taken.add(name)
        return name

    def dynamic_input(self, value: ir.Value, anchor: ir.Node) -> tuple[ir.Value, ir.Value, ir.Value]:
        """(x_q uint8, x_scale, x_zero_point) of ``value``, one DynamicQuantizeLinear per value."""
        key = value.name or str(id(value))
        if key not in self._dynamic:
            node = self._node("DynamicQuantizeLinear", [value], anchor, outputs=3)
            self._dynamic[key] = (node.outputs[0], node.outputs[1], node.outputs[2])
        return self._dynamic[key]

    def static_input(self, value: ir.Value, scale: np.ndarray, zero_point: np.ndarray, anchor: ir.Node) -> ir.Value:
        """``value`` through QuantizeLinear -> DequantizeLinear with a calibrated range."""
        key = value.name or str(id(value))
        if key not in self._static:
            s = self._const(f"{key}_scale", np.asarray(scale, np.float32))
            z = self._const(f"{key}_zero_point", np.asarray(zero_point))
            q = self._node("QuantizeLinear", [value, s, z], anchor)
            dq = self._node("DequantizeLinear", [q.outputs[0], s, z], anchor)
            dq.outputs[0].dtype = FLOAT
            dq.outputs[0].shape = value.shape
            self._static[key] = dq.outputs[0]
        return self._static[key]

    def static_output(self, value: ir.Value, scale: np.ndarray, zero_point: np.ndarray, producer: ir.Node) -> bool:
        """Put QuantizeLinear -> DequantizeLinear after ``value`` (its readers read the DQ);
        ``False`` (nothing done) when ``value`` is a graph output, whose values stay exact."""
        if value.is_graph_output():
            return False
        readers = list(value.uses())
        s = self._const(f"{value.name}_scale", np.asarray(scale, np.float32))
        z = self._const(f"{value.name}_zero_point", np.asarray(zero_point))
        q_out = ir.Value(name=self.names.fresh(f"{value.name}_quantized"))
        dq_out = ir.Value(name=self.names.fresh(f"{value.name}_dequantized"), type=value.type, shape=value.shape)
        q = ir.node("QuantizeLinear", [value, s, z], outputs=[q_out], name=self._fresh_node_name(producer, "QuantizeLinear"))
        dq = ir.node("DequantizeLinear", [q_out, s, z], outputs=[dq_out],
                     name=self._fresh_node_name(producer, "DequantizeLinear"))
        self.graph.insert_after(producer, [q, dq])
        for node in (q, dq):
            inherit_provenance(node, [producer])
        self.inserted_nodes += 2
        for user, index in readers:
            user.replace_input_with(index, dq_out)
        return True

    def _weight_init(self, site: QuantSite, qw: QuantizedWeight, q: np.ndarray | None = None) -> tuple[ir.Value, ir.Value, ir.Value]:
        base = site.weight.name or site.name
        return (self._const(f"{base}_quantized", q if q is not None else qw.q),
                self._const(f"{base}_scale", qw.scale), self._const(f"{base}_zero_point", qw.zero_point))

    def split_fused_conv(self, site: QuantSite) -> None:
        """FusedConv(x, W, b){Relu} -> Relu(Conv(x, W, b)), so the Conv can take int8 and
        the runtime can fuse the Relu again into its integer kernel."""
        node = site.node
        if node.op_type != "FusedConv":
            return
        attributes = {k: v for k, v in node.attributes.items() if not k.startswith("activation")}
        conv = self._node("Conv", list(node.inputs[:3]), node, attributes=dict(attributes))
        conv.outputs[0].dtype = FLOAT
        relu = self._node("Relu", [conv.outputs[0]], node)
        self._finish(node, node.outputs[0], relu.outputs[0])
        site.node = conv

    # -- dynamic -------------------------------------------------------------------------
    def dynamic(self, site: QuantSite, qw: QuantizedWeight, outliers: np.ndarray | None = None) -> None:
        """Rewrite ``site`` into its dynamic int8 form (see the module docstring).

        ``outliers`` (MatMul/Gemm only): input channels computed in float beside the int8
        product (LLM.int8()'s decomposition): ``x·W = (x·m)·Wq + x[:, c]·W[c, :]`` with
        ``m`` zero on channels ``c``, so the outliers no longer stretch the activation's
        int8 range; ``qw`` must then be the quantization of ``W`` with rows ``c`` zeroed.
        """
        self.split_fused_conv(site)
        node = site.node
        # Read the input now: an earlier rewrite may have replaced its producer.
        x = node.inputs[0]
        side = None
        if outliers is not None and len(outliers) and site.kind in ("MatMul", "Gemm"):
            x, side = self._outlier_split(site, x, np.asarray(outliers, np.int64))
            xq, xs, xz = self._node("DynamicQuantizeLinear", [x], node, outputs=3).outputs
        else:
            xq, xs, xz = self.dynamic_input(x, node)
        out = node.outputs[0]
        if site.kind == "Attention":
            wq, ws, wz = self._weight_init(site, qw)
            inputs = [xq, wq, node.inputs[2], xs, ws,
                      node.inputs[3] if len(node.inputs) > 3 else None, xz, wz]
            attributes = {k: v for k, v in node.attributes.items()
                          if k in ("num_heads", "unidirectional", "scale", "mask_filter_value")}
            self.model.opset_imports.setdefault(CONTRIB, 1)
            new = self._node("QAttention", inputs, node, attributes=dict(attributes), domain=CONTRIB)
            self._finish(node, out, new.outputs[0])
            return
        q = qw.q
        if site.kind == "Gemm" and site.channel_axis == 0:
            q = np.ascontiguousarray(q.T)  # Gemm transB=1 holds W as [N, K]; MatMulInteger wants [K, N]
        wq, ws, wz = self._weight_init(site, qw, q)
        op = "ConvInteger" if site.kind == "Conv" else "MatMulInteger"
        attributes = ({k: v for k, v in node.attributes.items() if k != "group"}
                      if site.kind == "Conv" else {})
        if site.kind == "Conv" and qw.scale.ndim == 1:
            # ConvInteger takes a per-tensor weight zero point only; the scale stays per channel.
            wz = self._const(f"{site.weight.name}_zero_point_scalar", np.zeros((), np.int8))
        integer = self._node(op, [xq, wq, xz, wz], node, attributes=dict(attributes))
        as_float = self._node("Cast", [integer.outputs[0]], node, attributes={"to": ir.DataType.FLOAT})
        # Conv's per-channel terms broadcast over its output [N, C, *spatial]: one trailing
        # axis per spatial dim (1 for Conv1d, 2 for Conv2d, 3 for Conv3d).
        channel_shape = (-1,) + (1,) * (len(q.shape) - 2)
        scale = ws
        if site.kind == "Conv" and qw.scale.ndim == 1:
            scale = self._const(f"{site.weight.name}_scale_nchw", qw.scale.reshape(channel_shape))
        scales = self._node("Mul", [xs, scale], node)
        result = self._node("Mul", [as_float.outputs[0], scales.outputs[0]], node)
        final = result.outputs[0]
        bias = node.inputs[2] if len(node.inputs) > 2 else None
        if bias is not None:
            if site.kind == "Conv":
                b = constant_tensor(bias)
                assert b is not None
                bias = self._const(f"{bias.name}_nchw", np.asarray(b.numpy()).reshape(channel_shape))
            final = self._node("Add", [final, bias], node).outputs[0]
        if side is not None:
            final = self._node("Add", [final, side], node).outputs[0]
        self._finish(node, out, final)

    def _outlier_split(self, site: QuantSite, x: ir.Value, channels: np.ndarray) -> tuple[ir.Value, ir.Value]:
        """(x with the outlier channels zeroed, x[..., channels] · W[channels, :] in float)."""
        node = site.node
        w = site.weight_array
        if site.kind == "Gemm" and site.channel_axis == 0:
            w = w.T
        keep = np.ones(w.shape[0], np.float32)
        keep[channels] = 0.0
        masked = self._node("Mul", [x, self._const(f"{site.name}_inlier_mask", keep)], node).outputs[0]
        picked = self._node("Gather", [x, self._const(f"{site.name}_outlier_channels", channels)], node,
                            attributes={"axis": -1}).outputs[0]
        rows = self._const(f"{site.name}_outlier_rows", np.ascontiguousarray(w[channels, :], np.float32))
        side = self._node("MatMul", [picked, rows], node).outputs[0]
        return masked, side

    # -- static --------------------------------------------------------------------------
    def static(self, site: QuantSite, qw: QuantizedWeight, act_scale: np.ndarray, act_zero_point: np.ndarray) -> None:
        """Rewrite ``site`` into QDQ form: its activation and weight through Q/DQ pairs."""
        self.split_fused_conv(site)
        node = site.node
        x = self.static_input(node.inputs[0], act_scale, act_zero_point, node)
        wq, ws, wz = self._weight_init(site, qw)
        attributes = {"axis": qw.axis} if qw.axis is not None else {}
        dq = self._node("DequantizeLinear", [wq, ws, wz], node, attributes=attributes)
        dq.outputs[0].dtype = FLOAT
        node.replace_input_with(0, x)
        node.replace_input_with(1, dq.outputs[0])

    def _finish(self, old: ir.Node, old_out: ir.Value, new_out: ir.Value) -> None:
        new_out.type = old_out.type
        new_out.shape = old_out.shape
        redirect(self.graph, old_out, new_out, before=old, replaced=[old])
        if not any(o.uses() or o.is_graph_output() for o in old.outputs):
            self.graph.remove(old, safe=True)
