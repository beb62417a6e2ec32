"""The numpy reference the accelerator is checked against, bit for bit: the same QDQ
graph run by ONNX's reference evaluator (``onnx.reference``, plain numpy), with each
QDQ int8 product computed in integers the way a QDQ backend defines it:

    DQ(a), DQ(W) -> MatMul/Gemm/Conv [+ bias]   ->   float32(Σ (a - za)(W - zw)) · float32(sa · sw) + bias

(a direct int64 product, no tiles, no im2col). Every other node — QuantizeLinear,
DequantizeLinear, DynamicQuantizeLinear, MatMulInteger, ConvInteger, Relu and the float
ops — is ONNX's own reference implementation. ``check_calls`` replays each accelerator
call of a traced run on this reference; ``host_outputs`` runs the host's part on what the
accelerator returned; ``reference_outputs`` runs the whole graph.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import onnx
from onnx.reference import ReferenceEvaluator
from onnx.reference.op_run import OpRun
from onnx.reference.ops.op_dequantize_linear import _CommonDequantizeLinear

from greencc.ir import to_self_contained_proto
from greencc.targets.asic.graph import AsicCall, Placement, node_names

DOMAIN = "greencc.reference"


class IntegerProduct(OpRun):
    """``greencc.reference::IntegerProduct(a, a_scale, a_zp, w, w_scale[, w_zp][, bias])``:
    the integer semantics of a QDQ MatMul (``conv=0``, ``trans_b``) or 2-D Conv (``conv=1``,
    ``pads``, ``strides``, ``dilations``) with float32 output."""

    op_domain = DOMAIN

    def _run(self, a, a_scale, a_zp, w, w_scale, w_zp=None, bias=None,  # noqa: ANN001
             conv=0, trans_b=0, pads=None, strides=None, dilations=None):  # noqa: ANN001
        return (integer_product(a, a_scale, a_zp, w, w_scale, w_zp, bias, conv=conv, trans_b=trans_b,
                                pads=pads, strides=strides, dilations=dilations),)


def integer_product(a: np.ndarray, a_scale: np.ndarray, a_zp: np.ndarray, w: np.ndarray, w_scale: np.ndarray,
                    w_zp: np.ndarray | None = None, bias: np.ndarray | None = None, *, conv: int = 0,
                    trans_b: int = 0, pads: Any = None, strides: Any = None, dilations: Any = None) -> np.ndarray:
    """What ``IntegerProduct`` computes (float32), on numpy arrays."""
    a64 = a.astype(np.int64) - np.int64(a_zp)
    w_zp = np.zeros((), np.int64) if w_zp is None else w_zp.astype(np.int64)
    if conv:
        w64 = w.astype(np.int64) - w_zp.reshape(-1, 1, 1, 1) if w_zp.ndim else w.astype(np.int64) - w_zp
        acc = _direct_conv(a64, w64, a_zp, tuple(pads), tuple(strides), tuple(dilations))
        channel_shape = (1, -1, 1, 1)
    else:
        if trans_b:
            w = w.T
        w64 = w.astype(np.int64) - w_zp.reshape(1, -1) if w_zp.ndim else w.astype(np.int64) - w_zp
        acc = np.matmul(a64, w64)
        channel_shape = (-1,)
    assert np.abs(acc).max(initial=0) < 2**31, "int32 accumulator overflow"
    scale = (np.asarray(a_scale, np.float32) * np.asarray(w_scale, np.float32)).astype(np.float32)
    y = acc.astype(np.int32).astype(np.float32) * scale.reshape(channel_shape if scale.ndim else ())
    if bias is not None:
        y = y + bias.astype(np.float32).reshape(channel_shape)
    return y.astype(np.float32)


class DequantizeLinear(_CommonDequantizeLinear):
    """ONNX's reference DequantizeLinear for graphs of opset 13-18: onnx.reference ships
    only opset 19+, whose semantics for int8/uint8 inputs are the same."""

    op_domain = ""


_NEW_OPS = [IntegerProduct, DequantizeLinear]


def _direct_conv(x: np.ndarray, w: np.ndarray, x_zp: Any, pads: tuple[int, ...], strides: tuple[int, ...],
                 dilations: tuple[int, ...]) -> np.ndarray:
    """Sum over (c, i, j) of x[b, c, oh·s + i·d, ow·s + j·d] · w[o, c, i, j], with the
    padding holding the zero point (real zero: 0 once ``x`` is zero-point corrected)."""
    top, left, bottom, right = pads
    x = np.pad(x, ((0, 0), (0, 0), (top, bottom), (left, right)), constant_values=0)
    _, _, kh, kw = w.shape
    oh = (x.shape[2] - dilations[0] * (kh - 1) - 1) // strides[0] + 1
    ow = (x.shape[3] - dilations[1] * (kw - 1) - 1) // strides[1] + 1
    out = np.zeros((x.shape[0], w.shape[0], oh, ow), np.int64)
    for i in range(kh):
        for j in range(kw):
            window = x[:, :, i * dilations[0]::strides[0], j * dilations[1]::strides[1]][:, :, :oh, :ow]
            out += np.einsum("bchw,oc->bohw", window, w[:, :, i, j])
    return out


def reference_proto(proto: onnx.ModelProto, placement: Placement) -> onnx.ModelProto:
    """``proto`` with each QDQ group's product node replaced by an ``IntegerProduct`` of
    the same name and output (its DequantizeLinear nodes stay; unused, they are harmless)."""
    out = onnx.ModelProto()
    out.CopyFrom(proto)
    products = {c.integer_product: c for c in placement.calls if c.integer_product}
    bias_adds = {c.attrs["bias_add"]: c for c in placement.calls if c.attrs.get("bias_add")}
    nodes = []
    for node in proto.graph.node:
        call = products.get(node.name)
        if node.name in bias_adds:
            continue  # MatMul + Add(bias) is one IntegerProduct with a bias
        if call is None:
            nodes.append(node)
            continue
        output = node.output[0]
        if call.attrs.get("bias_add"):
            output = next(n.output[0] for n in proto.graph.node if n.name == call.attrs["bias_add"])
        names = [call.inputs.get(role, "") for role in ("a", "a_scale", "a_zp", "w", "w_scale", "w_zp", "bias")]
        while names and not names[-1]:
            names.pop()
        attrs: dict[str, Any] = {"conv": int(call.kind == "conv"), "trans_b": int(call.attrs.get("trans_b", 0))}
        if call.kind == "conv":
            attrs.update(pads=list(call.attrs["pads"]), strides=list(call.attrs["strides"]),
                         dilations=list(call.attrs["dilations"]))
        nodes.append(onnx.helper.make_node("IntegerProduct", names, [output], name=node.name,
                                           domain=DOMAIN, **attrs))
    del out.graph.node[:]
    out.graph.node.extend(nodes)
    out.opset_import.append(onnx.helper.make_opsetid(DOMAIN, 1))
    return out


def reference_outputs(proto: onnx.ModelProto, placement: Placement, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Run the whole graph on the reference (slow: plain numpy)."""
    evaluator = ReferenceEvaluator(reference_proto(proto, placement), new_ops=_NEW_OPS)
    names = [o.name for o in proto.graph.output]
    return dict(zip(names, evaluator.run(None, dict(feeds)), strict=True))


def host_outputs(records: Sequence[tuple[AsicCall, dict[str, np.ndarray], list[np.ndarray]]],
                 proto: onnx.ModelProto, placement: Placement, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The host's part of the graph run on the reference, on what the accelerator really
    returned: every accelerator call's outputs are taken from ``records`` (a traced run)
    instead of being recomputed. Returns the graph outputs and every tensor the host
    passed to an accelerator call, by name, so each can be compared with the traced run
    to float rounding: a rounding difference no longer grows through later calls."""
    ref = reference_proto(proto, placement)
    replaced = {name for call in placement.calls for name in call.replaced}
    returned = {name: value for call, _, outputs in records for name, value in zip(call.outputs, outputs, strict=True)}
    constants = {init.name for init in ref.graph.initializer}
    handed = {call.inputs[role] for call, args, _ in records for role in args}
    wanted = [o.name for o in ref.graph.output] + sorted(handed - set(returned) - set(feeds) - constants)
    graph = onnx.helper.make_graph(
        [n for n in ref.graph.node if n.name not in replaced], "host",
        [onnx.helper.make_value_info(name, onnx.TypeProto()) for name in [*feeds, *returned]],
        [onnx.helper.make_value_info(name, onnx.TypeProto()) for name in wanted],
        initializer=list(ref.graph.initializer))
    model = onnx.helper.make_model(graph, opset_imports=list(ref.opset_import), ir_version=ref.ir_version)
    values = ReferenceEvaluator(model, new_ops=_NEW_OPS).run(None, {**feeds, **returned})
    return dict(zip(wanted, values, strict=True))


def compiled_graph(compiled: Any) -> tuple[onnx.ModelProto, Placement]:
    """The graph an ``AsicCompiledModel`` was lowered from (nodes named as in lowering)
    and its placement."""

    proto = node_names(to_self_contained_proto(compiled.model.ir))
    return proto, Placement(list(compiled.calls), dict(compiled.host_nodes), {}, [n.name for n in proto.graph.node])


def check_calls(records: Sequence[tuple[AsicCall, dict[str, np.ndarray], list[np.ndarray]]],
                proto: onnx.ModelProto, placement: Placement) -> list[str]:
    """Replay every traced accelerator call on the reference, on the inputs it ran with;
    returns one line per call whose outputs are not identical (dtype and every bit)."""
    ref = reference_proto(proto, placement)
    by_name = {n.name: n for n in ref.graph.node}
    opsets = list(ref.opset_import)
    problems = []
    for call, args, outputs in records:
        nodes = [by_name[name] for name in call.replaced if name in by_name]
        feeds = {call.inputs[role]: value for role, value in args.items()}
        graph = onnx.helper.make_graph(
            nodes, f"call{call.call_id}", [onnx.helper.make_value_info(name, onnx.TypeProto()) for name in feeds],
            [onnx.helper.make_value_info(name, onnx.TypeProto()) for name in call.outputs])
        model = onnx.helper.make_model(graph, opset_imports=opsets, ir_version=ref.ir_version)
        expected = ReferenceEvaluator(model, new_ops=_NEW_OPS).run(None, feeds)
        for name, got, want in zip(call.outputs, outputs, expected, strict=True):
            want = np.asarray(want)
            if got.dtype != want.dtype or got.shape != want.shape or got.tobytes() != want.tobytes():
                diff = np.abs(got.astype(np.float64) - want.astype(np.float64)).max() if got.shape == want.shape else "shape"
                problems.append(f"call {call.call_id} ({call.kind} '{call.node}') output '{name}': "
                                f"{got.dtype}{list(got.shape)} vs reference {want.dtype}{list(want.shape)}, max |Δ| {diff}")
    return problems


__all__ = ["IntegerProduct", "check_calls", "compiled_graph", "host_outputs", "integer_product", "reference_outputs",
           "reference_proto"]
