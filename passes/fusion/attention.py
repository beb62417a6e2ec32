"""Attention fusion: a self-attention block found by the ``attention-heads`` analysis
becomes one ``com.microsoft::Attention`` with packed Q/K/V weights.

    fuse-attention  Softmax(QKᵀ·scale + mask) @ V with Q/K/V = X·W+b split into heads and merged back
                    -> com.microsoft::Attention(X, [Wq|Wk|Wv], [bq|bk|bv], mask_index, attention_bias)

The mask is classified by evaluating its subgraph (the ops between the model's mask input
and the scores) on probe masks: a key-padding mask becomes ``mask_index`` (the model's 2-D
mask, converted to int32 with the model's truth test), a causal mask ``unidirectional=1``,
any other additive ``[B|1, H|1, S|1, S]`` term ``attention_bias``. The filler the model uses
for masked scores (e.g. float32's lowest) becomes ``mask_filter_value``, so masked keys
get the same zero weight; the SDPA exports' ``Where(IsNaN(p), 0, p)`` guard only acts on
rows where every key is masked, which ONNX Runtime also leaves finite.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import numpy as np
import onnx
import onnx.helper
import onnx_ir as ir

from greencc.passes.lib.attention_heads import (
    AttentionAnalysis,
    AttentionSite,
    Projection,
    analyze_attention,
)
from greencc.passes.lib.graph_edits import constant_tensor
from greencc.passes.lib.matching import CONTRIB_DOMAIN, FusionPass, FusionRun, label
from greencc.pipeline.base import register_pass

# A mask subgraph bigger than this (nodes) is not evaluated.
MAX_MASK_NODES = 400
# Sizes bound to symbolic dims when a mask is probed (distinct, so axes cannot be confused).
PROBE_SIZES = (3, 5, 7, 11, 13)


@dataclass(frozen=True)
class MaskForm:
    """How a block masks its scores, in the terms ``com.microsoft::Attention`` takes."""

    padding_input: ir.Value | None = None  # the model's [B, S] key-padding mask
    truth: str = "nonzero"  # which mask values keep a key: "nonzero" or "positive"
    causal: bool = False
    filter_value: float | None = None
    bias: ir.Value | None = None  # an additive [B|1, H|1, S|1, S] term
    expand_rows: bool = False  # the bias has one row for all queries: expand it to S rows


@dataclass
class AttentionFusionSite:
    site: AttentionSite
    mask: MaskForm


@register_pass("fuse-attention")
class FuseAttention(FusionPass):
    """Softmax(QKᵀ·scale + mask) @ V of one input's Q/K/V projections -> com.microsoft::Attention.

    Heads may be split and merged by any Reshape/Transpose chain; the mask may be a
    padding, causal or additive one; an SDPA NaN guard after the Softmax is absorbed.

    Uses the ``attention-heads`` analysis; declines (with the analysis' reason) blocks
    it cannot prove equivalent, masks it cannot express, and targets without the op.
    """

    analyses = ("attention-heads",)

    def prepare(self, run: FusionRun) -> None:
        analysis = run.ctx.analysis("attention-heads", run.model)
        if not isinstance(analysis, AttentionAnalysis) or analysis.model is not run.model.ir:
            analysis = analyze_attention(run.model.ir)  # a context reused across models
        self._analysis = analysis
        self._masks: dict[tuple[ir.Value | None, str], MaskForm | str] = {}
        self._mask_index: dict[tuple[ir.Value, str], ir.Value] = {}
        self._expanded: dict[ir.Value, ir.Value] = {}

    def match(self, node: ir.Node, run: FusionRun) -> AttentionFusionSite | None:
        if node.op_type != "Softmax" or node.domain not in ("", "ai.onnx"):
            return None
        site = self._analysis.sites.get(node)
        if site is None:
            reason = self._analysis.declined.get(node)
            if reason:
                run.decline(node, reason)
            return None
        if not run.supports(node, f"{CONTRIB_DOMAIN}::Attention"):
            return None
        key = (site.mask, site.mask_kind)
        if key not in self._masks:
            self._masks[key] = classify_mask(site, run)
        mask = self._masks[key]
        if isinstance(mask, str):
            run.decline(node, mask)
            return None
        return AttentionFusionSite(site, mask)

    def rewrite(self, fusion: AttentionFusionSite, run: FusionRun) -> None:
        site, mask = fusion.site, fusion.mask
        anchor = site.output.producer() or site.softmax
        graph = anchor.graph
        assert graph is not None
        run.fused_away(site.intermediates)
        weight, bias = _packed_parameters(site)
        prefix = site.softmax.name or "attention"
        packed_weight = run.initializer(graph, f"{prefix}_qkv_weight", weight)
        packed_bias = run.initializer(graph, f"{prefix}_qkv_bias", bias)
        extra: list[ir.Node] = []
        mask_index = None
        if mask.padding_input is not None:
            mask_index = self._mask_index_of(mask, run, anchor, extra)
        attributes: dict[str, object] = {"num_heads": site.num_heads}
        if not math.isclose(site.scale, 1.0 / math.sqrt(site.head_size), rel_tol=1e-6):
            attributes["scale"] = float(site.scale)
        if mask.causal:
            attributes["unidirectional"] = 1
        if mask.filter_value is not None and (mask.padding_input is not None or mask.causal):
            attributes["mask_filter_value"] = float(mask.filter_value)
        bias_input = mask.bias
        if mask.bias is not None and mask.expand_rows:
            bias_input = self._expanded_bias(mask.bias, site.x, run, anchor, extra)
        fused = run.new_node(
            "Attention",
            [site.x, packed_weight, packed_bias, mask_index, None, bias_input],
            attributes, anchor=site.softmax, domain=CONTRIB_DOMAIN,
            output_names=[f"{site.output.name or 'attention'}_fused"],
        )
        result = fused
        if site.output.shape is not None and len(site.output.shape) == 2:
            # The block's output was [B·S, hidden] for a rank-2 projection: keep that shape.
            flat = run.initializer(graph, "attention_flat_shape", np.array([-1, site.hidden_size], np.int64))
            result = run.new_node("Reshape", [fused.outputs[0], flat], anchor=site.softmax)
            extra.append(fused)
        run.replace(site.output, result, result.outputs[0], site.nodes, before=anchor, extra_nodes=extra)

    def _expanded_bias(self, bias: ir.Value, x: ir.Value, run: FusionRun, anchor: ir.Node, extra: list[ir.Node]) -> ir.Value:
        """``bias`` [B|1, H|1, 1, S] expanded to one row per query, as Attention needs."""
        if bias in self._expanded:
            return self._expanded[bias]
        graph = anchor.graph
        seq = run.new_node("Shape", [x], {"start": 1, "end": 2}, anchor=anchor, output_names=["attention_seq"])
        ones = run.initializer(graph, "attention_bias_lead", np.ones(2, np.int64))
        one = run.initializer(graph, "attention_bias_tail", np.ones(1, np.int64))
        target = run.new_node("Concat", [ones, seq.outputs[0], one], {"axis": 0}, anchor=anchor, output_names=["attention_bias_rows"])
        expand = run.new_node("Expand", [bias, target.outputs[0]], anchor=anchor, output_names=["attention_bias"])
        expand.outputs[0].dtype = bias.dtype
        extra.extend([seq, target, expand])
        self._expanded[bias] = expand.outputs[0]
        return expand.outputs[0]

    def _mask_index_of(self, mask: MaskForm, run: FusionRun, anchor: ir.Node, extra: list[ir.Node]) -> ir.Value:
        """The int32 key mask ONNX Runtime reads (1 keeps a key), built once per input."""
        source = mask.padding_input
        assert source is not None
        key = (source, mask.truth)
        if key in self._mask_index:
            return self._mask_index[key]
        dtype = source.dtype
        if mask.truth == "positive" and dtype != ir.DataType.BOOL:
            zero = run.initializer(anchor.graph, "mask_zero", np.zeros((), dtype.numpy()))
            keep = run.new_node("Greater", [source, zero], anchor=anchor, output_names=["mask_keep"])
        else:
            keep = run.new_node("Cast", [source], {"to": ir.DataType.BOOL}, anchor=anchor, output_names=["mask_keep"])
        keep.outputs[0].dtype = ir.DataType.BOOL
        as_int = run.new_node("Cast", [keep.outputs[0]], {"to": ir.DataType.INT32}, anchor=anchor, output_names=["mask_index"])
        as_int.outputs[0].dtype = ir.DataType.INT32
        as_int.outputs[0].shape = source.shape
        extra.extend([keep, as_int])
        self._mask_index[key] = as_int.outputs[0]
        return as_int.outputs[0]


def _projection_columns(projection: Projection) -> tuple[np.ndarray, np.ndarray]:
    weight = constant_tensor(projection.weight).numpy()
    if projection.transposed:
        weight = weight.T
    start, end = projection.columns
    columns = weight[:, start:end]
    if projection.bias is None:
        bias = np.zeros(end - start, dtype=weight.dtype)
    else:
        bias = constant_tensor(projection.bias).numpy().reshape(-1)[start:end]
    return columns, bias


def _packed_parameters(site: AttentionSite) -> tuple[np.ndarray, np.ndarray]:
    parts = [_projection_columns(p) for p in (site.q, site.k, site.v)]
    weight = np.concatenate([w for w, _ in parts], axis=1)
    bias = np.concatenate([b for _, b in parts]).astype(weight.dtype)
    return np.ascontiguousarray(weight), bias


# ---------------------------------------------------------------------------- mask probing
def classify_mask(site: AttentionSite, run: FusionRun) -> MaskForm | str:
    """The :class:`MaskForm` of ``site``'s mask, or the reason it cannot be expressed."""
    if site.mask is None:
        return MaskForm()
    probe = _MaskProbe.build(site.mask, site.x, run)
    if isinstance(probe, str):
        return _as_bias(site, run) or probe
    outcome = probe.classify(site)
    if isinstance(outcome, str):
        return _as_bias(site, run) or outcome
    return outcome


def _as_bias(site: AttentionSite, run: FusionRun) -> MaskForm | None:
    """An additive mask already shaped [B|1, H|1, S, S] passes through as attention_bias."""
    if site.mask_kind != "add" or site.mask is None:
        return None
    shape = run.shape(site.mask)
    x_shape = site.x.shape
    if shape is None or x_shape is None or len(shape) != 4:
        return None
    batch, seq = x_shape[0], x_shape[1]
    ok = shape[0] in (1, batch) and shape[1] in (1, site.num_heads) and shape[2] in (1, seq) and shape[3] == seq
    if not ok:
        return None
    return MaskForm(bias=site.mask, expand_rows=shape[2] != seq or shape[2] == 1)


@dataclass
class _MaskProbe:
    """The mask's subgraph as a small model of the mask input alone, ready to evaluate."""

    proto: onnx.ModelProto
    input: ir.Value | None
    input_shape: tuple[int, ...] | None
    batch: int
    seq: int

    @classmethod
    def build(cls, mask: ir.Value, x: ir.Value, run: FusionRun) -> _MaskProbe | str:
        nodes: list[ir.Node] = []
        seen: set[ir.Node] = set()
        data_inputs: list[ir.Value] = []
        shape_nodes: list[ir.Node] = []
        initializers: dict[str, ir.Value] = {}
        stack = [mask]
        while stack:
            value = stack.pop()
            if value.is_graph_input():
                if value not in data_inputs:
                    data_inputs.append(value)
                continue
            if value.const_value is not None and value.is_initializer():
                initializers[value.name] = value
                continue
            node = value.producer()
            if node is None:
                return f"the mask reads '{value.name}', which has no producer here"
            if node in seen:
                continue
            seen.add(node)
            nodes.append(node)
            if len(nodes) > MAX_MASK_NODES:
                return f"the mask is computed by more than {MAX_MASK_NODES} nodes"
            if any(attr.type in (ir.AttributeType.GRAPH, ir.AttributeType.GRAPHS) for attr in node.attributes.values()):
                return f"the mask is computed inside {label(node)} (a subgraph)"
            if node.op_type == "Shape":
                shape_nodes.append(node)
                continue  # only the shape is read, which the probe binds
            stack.extend(v for v in node.inputs if v is not None)
        if len(data_inputs) > 1:
            names = ", ".join(v.name for v in data_inputs)
            return f"the mask depends on the values of several inputs ({names})"
        source = data_inputs[0] if data_inputs else None
        sizes = _probe_dims(run)
        x_dims = [d if isinstance(d, int) else d.value for d in (x.shape or [None, None])]
        batch, seq = _bound(x_dims[0], sizes), _bound(x_dims[1], sizes)
        input_shape = None
        if source is not None:
            dims = [_bound(d if isinstance(d, int) else d.value, sizes) for d in (source.shape or [])]
            if len(dims) != 2 or None in dims:
                return f"the mask input '{source.name}' is not a [batch, seq] tensor"
            input_shape = tuple(int(d) for d in dims)
        mask_dtype = run.dtype(mask)
        if mask_dtype is None:
            return f"the element type of the mask '{mask.name}' is unknown"
        node_protos = []
        order = {node: i for i, node in enumerate(run.model.graph)}
        for node in sorted(nodes, key=lambda n: order.get(n, 0)):
            if node.op_type == "Shape":
                shape = _bound_shape(node.inputs[0], sizes)
                if shape is None:
                    return f"the mask reads the shape of '{node.inputs[0].name}', which is not known"
                start = node.attributes.get("start")
                end = node.attributes.get("end")
                picked = shape[start.as_int() if start else 0 : end.as_int() if end else None]
                node_protos.append(onnx.helper.make_node(
                    "Constant", [], [node.outputs[0].name],
                    value=onnx.numpy_helper.from_array(np.array(picked, np.int64)),
                ))
                continue
            node_protos.append(ir.serde.serialize_node(node))
        graph_inputs = []
        if source is not None:
            graph_inputs.append(onnx.helper.make_tensor_value_info(source.name, int(source.dtype), list(input_shape)))
        tensors = [ir.serde.serialize_tensor(v.const_value) for v in initializers.values()]
        for tensor, name in zip(tensors, initializers, strict=True):
            tensor.name = name
        graph = onnx.helper.make_graph(
            node_protos, "mask_probe", graph_inputs,
            [onnx.helper.make_tensor_value_info(mask.name, int(mask_dtype), None)], initializer=tensors,
        )
        opsets = [onnx.helper.make_opsetid(d, v) for d, v in run.model.ir.opset_imports.items()]
        proto = onnx.helper.make_model(graph, opset_imports=opsets, ir_version=run.model.ir.ir_version or 10)
        if batch is None or seq is None:
            return "the batch or sequence length of the attention input is unknown"
        return cls(proto, source, input_shape, int(batch), int(seq))

    def evaluate(self, feeds: list[np.ndarray | None]) -> list[np.ndarray] | str:
        try:
            session = _session(self.proto.SerializeToString())
            name = self.input.name if self.input is not None else None
            return [session.run(None, {name: f} if name else {})[0] for f in feeds]
        except Exception as exc:  # the probe is an analysis: failure only means "unknown"
            return f"the mask subgraph could not be evaluated ({type(exc).__name__})"

    def classify(self, site: AttentionSite) -> MaskForm | str:
        """Which keys the mask keeps, as a function of the mask input, from probes.

        Binary masks decide the structure (padding, causal); masks holding other values
        (-1, 2) decide the truth test ONNX Runtime must apply (``!= 0`` or ``> 0``). A
        mask that only means something for 0/1 inputs (``(1 - m) · -10000``) is kept as
        an additive bias instead, so the fused graph stays exact for every input.
        """
        binary, extra = self._probes()
        read = self._keeps(site, binary)
        if isinstance(read, str):
            return read
        keeps, filler = read
        causal = np.tril(np.ones((self.seq, self.seq), bool))
        structure = None
        for uses_input in ((True, False) if self.input is not None else (False,)):
            for is_causal in (False, True):
                expected = [self._expected(feed, "nonzero" if uses_input else None, is_causal, causal) for feed in binary]
                if all(np.array_equal(k, e) for k, e in zip(keeps, expected, strict=True)):
                    structure = (uses_input, is_causal)
                    break
            if structure is not None:
                break
        if structure is None:
            return "the mask is neither a key-padding mask of a [batch, seq] input nor causal"
        uses_input, is_causal = structure
        if not uses_input:
            return MaskForm(causal=is_causal, filter_value=filler) if is_causal else MaskForm()
        truth = "nonzero"
        if extra:
            read_extra = self._keeps(site, extra)
            truth = None
            if not isinstance(read_extra, str) and read_extra[1] in (None, filler):
                for candidate in ("nonzero", "positive"):
                    expected = [self._expected(feed, candidate, is_causal, causal) for feed in extra]
                    if all(np.array_equal(k, e) for k, e in zip(read_extra[0], expected, strict=True)):
                        truth = candidate
                        break
            if truth is None:
                if site.mask_kind == "add":
                    return MaskForm(bias=site.mask, expand_rows=True)
                return "the mask keeps keys by a test that is neither != 0 nor > 0 on its input"
        return MaskForm(padding_input=self.input, truth=truth, causal=is_causal, filter_value=filler)

    def _keeps(self, site: AttentionSite, feeds: list[np.ndarray | None]) -> tuple[list[np.ndarray], float | None] | str:
        """For each feed, which (batch, query, key) scores the mask keeps; and the filler."""
        outputs = self.evaluate(feeds)
        if isinstance(outputs, str):
            return outputs
        b, s = self.batch, self.seq
        shaped = []
        for out in outputs:
            if out.ndim > 4 or (out.ndim >= 3 and out.shape[-3] != 1):
                return f"the mask of shape {list(out.shape)} differs between heads"
            try:
                shaped.append(np.broadcast_to(out.reshape((1,) * (4 - out.ndim) + out.shape), (b, 1, s, s))[:, 0])
            except ValueError:
                return f"the mask of shape {list(out.shape)} does not broadcast to [{b}, 1, {s}, {s}]"
        if site.mask_kind != "add":
            keep_when = site.mask_kind == "keep-where-true"
            return [m.astype(bool) == keep_when for m in shaped], site.fill_value
        values = np.unique(np.concatenate([m.reshape(-1) for m in shaped]))
        fillers = [float(v) for v in values if v != 0]
        if len(fillers) > 1 or (fillers and fillers[0] >= 0):
            return "the additive mask holds values other than 0 and one negative filler"
        return [m == 0 for m in shaped], (fillers[0] if fillers else None)

    def _expected(self, feed: np.ndarray | None, truth: str | None, is_causal: bool, causal: np.ndarray) -> np.ndarray:
        expected = np.ones((self.batch, self.seq, self.seq), bool)
        if truth is not None and feed is not None:
            key_keep = feed != 0 if truth == "nonzero" else feed > 0
            expected &= np.asarray(key_keep, bool)[:, None, :]
        if is_causal:
            expected &= causal[None]
        return expected

    def _probes(self) -> tuple[list[np.ndarray | None], list[np.ndarray]]:
        """Binary probe masks (all kept, random, a padded tail) and masks with other values."""
        if self.input is None:
            return [None], []
        dtype = self.input.dtype.numpy()
        shape = self.input_shape
        rng = np.random.default_rng(0)
        binary: list[np.ndarray | None] = [np.ones(shape, dtype)]
        for _ in range(3):
            binary.append((rng.random(shape) < 0.6).astype(dtype))
        tail = np.ones(shape, dtype)
        tail[:, shape[1] // 2 :] = 0
        binary.append(tail)
        extra = []
        if dtype.kind in "if":
            extra.append(rng.integers(-1, 3, shape).astype(dtype))
            extra.append(np.full(shape, 2, dtype))
        return binary, extra


@functools.lru_cache(maxsize=16)
def _session(serialized: bytes):  # noqa: ANN202 - an onnxruntime.InferenceSession
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    options.intra_op_num_threads = 1
    options.log_severity_level = 3
    return ort.InferenceSession(serialized, options, providers=["CPUExecutionProvider"])


def _probe_dims(run: FusionRun) -> dict[str, int]:
    """Static sizes for the model's symbolic input dims while probing."""
    names: list[str] = []
    for value in run.model.graph.inputs:
        for dim in value.shape or []:
            if not isinstance(dim, int) and dim.value and dim.value not in names:
                names.append(dim.value)
    return {name: PROBE_SIZES[i % len(PROBE_SIZES)] for i, name in enumerate(names)}


def _bound(dim: int | str | None, sizes: dict[str, int]) -> int | None:
    if isinstance(dim, int):
        return dim
    return sizes.get(dim) if dim else None


def _bound_shape(value: ir.Value, sizes: dict[str, int]) -> list[int] | None:
    if value.shape is None:
        return None
    dims = [_bound(d if isinstance(d, int) else d.value, sizes) for d in value.shape]
    return None if None in dims else [int(d) for d in dims]
