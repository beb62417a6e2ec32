"""Attention over the keys up to the last one any row keeps, when inputs are padded at the end.

    trim-padded-keys  Attention(X, [Wq|Wk|Wv], [bq|bk|bv], mask[B, S])
                      -> MultiHeadAttention(X·Wq+bq, K, V, mask[:, :L])
                         with K|V = X[:, :L]·[Wk|Wv] + [bk|bv]
                      QAttention(Xq, ...) -> the same with MatMulIntegerToFloat products

``L`` is computed in the graph, per call: one past the last position any row of the batch
keeps (``S`` when some row keeps no key, since such a row attends evenly over all ``S``).
Keys after ``L`` are masked for every row, so their softmax weight is exactly zero; leaving
them out changes no output beyond float rounding, padded query rows included. What it
saves is the K/V projections and the scores of those keys: with ``S = 128`` and sentences
of 13–19 tokens, a MiniLM's int8 attention did a third of its work. With no padding it
costs the extra nodes (2–4% at ``S = 128``, up to 11% at ``S = 16`` on MiniLM), so by
default it applies only when the calibration inputs are padded (``when=padded``: their
mean ``L / S`` at most ``max_kept``); ``when=always`` applies it regardless.

Declines: the attention has a past, a causal mask, an additive bias, rotary or uneven
Q/K/V sizes; the mask is not a 2-D key mask; weights or (QAttention) weight scales and
zero points are not constants; the input is not ``[B, S, hidden]``; the target lacks
``MultiHeadAttention`` (or ``MatMulIntegerToFloat``); the calibration inputs are not padded
enough, or there are none (``when=padded``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Literal

import numpy as np
import onnx_ir as ir

from greencc.data import as_calibration
from greencc.model import Model
from greencc.passes.lib.graph_edits import constant_array, is_onnx_op
from greencc.passes.lib.matching import CONTRIB_DOMAIN, FusionPass, FusionRun
from greencc.pipeline.base import PassResult, register_pass
from greencc.pipeline.context import PassContext

# Ops a key mask passes through between a graph input and the attention (truth tests and casts).
_MASK_CARRIERS = frozenset({"Cast", "Greater", "Not", "Identity"})
# Attributes under which Attention / QAttention mean what MultiHeadAttention does.
_ALLOWED_ATTRIBUTES = frozenset({"num_heads", "scale", "mask_filter_value", "unidirectional"})
# Inputs: Attention (x, weights, bias, mask_index, past, attention_bias, past_sequence_length);
# QAttention (x, weights, bias, x_scale, w_scale, mask_index, x_zero_point, w_zero_point, past).
_LAYOUTS = {
    "Attention": {"mask": 3, "beyond": (4, 5, 6)},
    "QAttention": {"mask": 5, "beyond": (8,)},
}


@dataclass
class PaddedKeysSite:
    node: ir.Node
    weight: np.ndarray  # [hidden_in, 3·hidden]
    bias: np.ndarray  # [3·hidden]
    scales: tuple[np.ndarray, np.ndarray] | None = None  # QAttention's weight scale, zero point


@register_pass("trim-padded-keys")
class TrimPaddedKeys(FusionPass):
    """Attention / QAttention with a key mask -> MultiHeadAttention over the first ``L`` keys.

    Rewrites:
      Attention(X, W, b, mask)  -> MultiHeadAttention(X·Wq+bq, split(X[:, :L]·Wkv+bkv), mask[:, :L])
      QAttention(Xq, W, b, ...) -> the same with MatMulIntegerToFloat on the quantized X
    ``L`` (per call) is one past the last key any row keeps; outputs are unchanged within
    float rounding. ``when=padded`` (default) applies only when the calibration inputs'
    mean ``L / S`` is at most ``max_kept``; ``when=always`` applies regardless.
    """

    lossy: ClassVar[bool] = False

    when: Literal["padded", "always"] = "padded"
    max_kept: float = 0.75

    def prepare(self, run: FusionRun) -> None:
        self._kept: dict[ir.Value, ir.Value] = {}  # mask -> L [1]
        self._trimmed_masks: dict[ir.Value, ir.Value] = {}
        self._padding: dict[ir.Value, float | str] = {}
        self._constants: dict[int, ir.Value] = {}
        self.kept_fraction: float | None = None

    def match(self, node: ir.Node, run: FusionRun) -> PaddedKeysSite | None:
        if node.domain != CONTRIB_DOMAIN or node.op_type not in _LAYOUTS:
            return None
        layout = _LAYOUTS[node.op_type]
        reason = _structure_reason(node, layout)
        if reason:
            run.decline(node, reason)
            return None
        mask = node.inputs[layout["mask"]]
        if run.rank(mask) != 2:
            run.decline(node, "the mask is not a 2-D [batch, keys] key mask")
            return None
        x = node.inputs[0]
        if run.rank(x) != 3:
            run.decline(node, "the input is not [batch, seq, hidden]")
            return None
        weight, bias = constant_array(node.inputs[1]), constant_array(node.inputs[2])
        if weight is None or bias is None or weight.ndim != 2 or weight.shape[1] % 3 or bias.shape != (weight.shape[1],):
            run.decline(node, "the packed Q/K/V weights or bias are not constants of [hidden_in, 3·hidden]")
            return None
        scales = None
        if node.op_type == "QAttention":
            scale, zero = constant_array(node.inputs[4]), constant_array(node.inputs[7]) if len(node.inputs) > 7 else None
            if scale is None or (len(node.inputs) > 7 and node.inputs[7] is not None and zero is None):
                run.decline(node, "the weight scale or zero point is not a constant")
                return None
            scales = (scale, zero if zero is not None else np.zeros((), weight.dtype))
            if not run.supports(node, f"{CONTRIB_DOMAIN}::MatMulIntegerToFloat"):
                return None
        if not run.supports(node, f"{CONTRIB_DOMAIN}::MultiHeadAttention"):
            return None
        if self.when == "padded":
            padding = self._padding_of(mask, run)
            if isinstance(padding, str):
                run.decline(node, padding)
                return None
            if padding > self.max_kept:
                run.decline(node, f"the calibration inputs keep {padding:.0%} of the keys on average "
                                  f"(above max_kept={self.max_kept:g}): trimming would cost more than it saves")
                return None
        return PaddedKeysSite(node, weight, bias, scales)

    def rewrite(self, site: PaddedKeysSite, run: FusionRun) -> None:
        node = site.node
        graph = node.graph
        assert graph is not None
        layout = _LAYOUTS[node.op_type]
        mask = node.inputs[layout["mask"]]
        extra: list[ir.Node] = []
        kept = self._kept_length(mask, run, node, extra)
        trimmed_mask = self._trimmed_mask(mask, kept, run, node, extra)
        hidden = site.weight.shape[1] // 3
        prefix = node.name or "attention"
        x = node.inputs[0]
        zero, one = self._constant(run, graph, 0), self._constant(run, graph, 1)
        first_keys = run.new_node("Slice", [x, zero, kept, one], anchor=node, output_names=[f"{prefix}_key_rows"])
        extra.append(first_keys)
        parts = {"q": slice(0, hidden), "kv": slice(hidden, 3 * hidden)}
        products: dict[str, ir.Value] = {}
        for part, columns in parts.items():
            source = x if part == "q" else first_keys.outputs[0]
            weight = run.initializer(graph, f"{prefix}_{part}_weight", np.ascontiguousarray(site.weight[:, columns]))
            bias = run.initializer(graph, f"{prefix}_{part}_bias", np.ascontiguousarray(site.bias[columns]))
            if site.scales is None:
                product = run.new_node("MatMul", [source, weight], anchor=node, output_names=[f"{prefix}_{part}_matmul"])
                biased = run.new_node("Add", [product.outputs[0], bias], anchor=node, output_names=[f"{prefix}_{part}"])
                extra += [product, biased]
            else:
                scale, zero_point = (_columns(array, columns, run, graph, f"{prefix}_{part}_{name}")
                                     for array, name in zip(site.scales, ("weight_scale", "weight_zero_point"), strict=True))
                biased = run.new_node(
                    "MatMulIntegerToFloat",
                    [source, weight, node.inputs[3], scale, node.inputs[6] if len(node.inputs) > 6 else None, zero_point, bias],
                    anchor=node, domain=CONTRIB_DOMAIN, output_names=[f"{prefix}_{part}"],
                )
                extra.append(biased)
            products[part] = biased.outputs[0]
        sizes = run.initializer(graph, f"{prefix}_kv_sizes", np.array([hidden, hidden], np.int64))
        split = run.new_node("Split", [products["kv"], sizes], {"axis": 2}, anchor=node,
                             output_names=[f"{prefix}_k", f"{prefix}_v"])
        extra.append(split)
        attributes = {attr.name: attr.value for attr in node.attributes.values() if attr.name != "unidirectional"}
        fused = run.new_node(
            "MultiHeadAttention",
            [products["q"], split.outputs[0], split.outputs[1], None, trimmed_mask],
            attributes, anchor=node, domain=CONTRIB_DOMAIN, output_names=[f"{node.outputs[0].name or 'attention'}_trimmed"],
        )
        run.replace(node.outputs[0], fused, fused.outputs[0], [node], before=node, extra_nodes=extra)

    def call(self, model: Model, ctx: PassContext) -> PassResult:
        """FusionPass's run, with the share of keys the calibration inputs keep in the stats."""
        result = super().call(model, ctx)
        if self.kept_fraction is not None:
            result.stats["calibration_kept_keys"] = round(self.kept_fraction, 4)
        return result

    # -- the data: how padded are the inputs? ------------------------------------------
    def _padding_of(self, mask: ir.Value, run: FusionRun) -> float | str:
        """Mean over the calibration batches of L / S for ``mask``, or why it is unknown."""
        if mask in self._padding:
            return self._padding[mask]
        self._padding[mask] = result = self._measure_padding(mask, run)
        if not isinstance(result, str):
            self.kept_fraction = result if self.kept_fraction is None else max(self.kept_fraction, result)
        return result

    def _measure_padding(self, mask: ir.Value, run: FusionRun) -> float | str:
        source = _mask_input(mask)
        if source is None:
            return "the key mask is not computed from a graph input by casts and truth tests alone (when=always applies anyway)"
        if run.ctx.calibration is None:
            return "no calibration data says whether inputs are padded (give calibration data, or when=always)"
        shares = []
        for feed in as_calibration(run.ctx.calibration, run.model).batches():
            keys = np.asarray(feed.get(source.name)) if source.name in feed else None
            if keys is None or keys.ndim != 2 or keys.shape[1] == 0:
                return f"the calibration data has no 2-D '{source.name}'"
            shares.append(kept_length(keys != 0) / keys.shape[1])
        if not shares:
            return "the calibration data holds no samples"
        return float(np.mean(shares))

    # -- the graph: L and the trimmed mask, built once per mask ---------------------------
    def _kept_length(self, mask: ir.Value, run: FusionRun, anchor: ir.Node, extra: list[ir.Node]) -> ir.Value:
        """``L`` as an int64 [1]: one past the last key any row keeps, or S when a row keeps none."""
        if mask in self._kept:
            return self._kept[mask]
        graph = anchor.graph
        assert graph is not None

        def node(op: str, inputs: list[ir.Value], name: str, **attributes: object) -> ir.Value:
            made = run.new_node(op, inputs, attributes, anchor=anchor, output_names=[name])
            extra.append(made)
            return made.outputs[0]

        def reduce(op: str, value: ir.Value, axis: int | None, name: str, keepdims: int) -> ir.Value:
            if axis is None:
                return node(op, [value], name, keepdims=keepdims)
            if run.onnx_opset() >= 18:
                return node(op, [value, self._constant(run, graph, axis)], name, keepdims=keepdims)
            return node(op, [value], name, axes=[axis], keepdims=keepdims)

        int32 = ir.DataType.INT32
        keys = mask if _is_zero_one(mask) and mask.dtype == int32 else node(
            "Cast", [node("Cast", [mask], "trim_mask_keep", to=ir.DataType.BOOL)], "trim_mask_01", to=int32)
        # A row that keeps no key attends evenly over all of them: count it as keeping all.
        # (ReduceSum, not ReduceMax: ONNX Runtime's symbolic shape inference follows its axes input.)
        row_keeps = reduce("ReduceSum", keys, 1, "trim_row_keeps", 1)  # [B, 1]
        no_keys = run.initializer(graph, "trim_no_keys", np.zeros((), np.int32))
        row_empty = node("Cast", [node("Equal", [row_keeps, no_keys], "trim_row_is_empty")], "trim_row_empty", to=int32)
        keeps = node("Max", [keys, row_empty], "trim_keeps")
        one_key = run.initializer(graph, "trim_one_key", np.ones((), np.int32))
        column_keeps = node("Min", [reduce("ReduceSum", keeps, 0, "trim_column_count", 0), one_key], "trim_column_keeps")  # [S], 0/1
        last = node("ArgMax", [column_keeps], "trim_last_key", axis=0, keepdims=1, select_last_index=1)
        kept = node("Add", [last, self._constant(run, graph, 1)], "trim_kept_keys")  # L, [1]
        self._kept[mask] = kept
        return kept

    def _trimmed_mask(self, mask: ir.Value, kept: ir.Value, run: FusionRun, anchor: ir.Node, extra: list[ir.Node]) -> ir.Value:
        if mask not in self._trimmed_masks:
            graph = anchor.graph
            assert graph is not None
            zero, axis = self._constant(run, graph, 0), self._constant(run, graph, 1)
            sliced = run.new_node("Slice", [mask, zero, kept, axis], anchor=anchor, output_names=["trim_mask"])
            extra.append(sliced)
            self._trimmed_masks[mask] = sliced.outputs[0]
        return self._trimmed_masks[mask]

    def _constant(self, run: FusionRun, graph: ir.Graph, value: int) -> ir.Value:
        """A shared int64 [1] initializer holding ``value`` (Slice bounds and axes, axes of reductions)."""
        if value not in self._constants:
            self._constants[value] = run.initializer(graph, f"trim_{value}", np.array([value], np.int64))
        return self._constants[value]


def kept_length(keep: np.ndarray) -> int:
    """One past the last column any row of the 2-D boolean ``keep`` keeps; all columns when
    a row keeps none (what the rewritten graph computes, as a number)."""
    if not keep.any(axis=1).all():
        return keep.shape[1]
    return int(np.flatnonzero(keep.any(axis=0))[-1]) + 1


def _is_zero_one(mask: ir.Value) -> bool:
    """Whether ``mask`` is a Cast of a boolean (so it holds only 0 and 1)."""
    node = mask.producer()
    return (node is not None and node.op_type == "Cast" and is_onnx_op(node) and node.inputs[0] is not None
            and node.inputs[0].dtype == ir.DataType.BOOL)


def _structure_reason(node: ir.Node, layout: dict) -> str:
    for index in layout["beyond"]:
        if len(node.inputs) > index and node.inputs[index] is not None:
            return f"input {index} (a past, attention bias or past length) is set"
    if len(node.inputs) <= layout["mask"] or node.inputs[layout["mask"]] is None:
        return "there is no key mask"
    for name, attr in node.attributes.items():
        if name not in _ALLOWED_ATTRIBUTES:
            return f"attribute {name} has no MultiHeadAttention equivalent"
        if name == "unidirectional" and attr.value:
            return "the mask is causal: every key is needed by a later query"
    return ""


def _mask_input(mask: ir.Value) -> ir.Value | None:
    """The graph input the key mask is computed from by casts and truth tests, or None."""
    value = mask
    while not value.is_graph_input():
        node = value.producer()
        if node is None or not is_onnx_op(node) or node.op_type not in _MASK_CARRIERS:
            return None
        variable = [v for v in node.inputs if v is not None and constant_array(v, 1 << 16) is None]
        if len(variable) != 1:
            return None
        value = variable[0]
    return value


def _columns(array: np.ndarray, columns: slice, run: FusionRun, graph: ir.Graph, name: str) -> ir.Value:
    """A per-column scale or zero point cut to ``columns`` (a scalar one shared as is)."""
    data = array if array.ndim == 0 or array.size == 1 else np.ascontiguousarray(array.reshape(-1)[columns])
    return run.initializer(graph, name, data)
