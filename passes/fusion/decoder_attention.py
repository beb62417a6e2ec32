"""Causal self-attention of a decoder with a KV cache (past in, present out) into one
ONNX Runtime op: ``GroupQueryAttention`` where keys/values have fewer heads than queries
(Llama, Mistral, Qwen2), ``MultiHeadAttention`` with past and present otherwise (GPT-2,
OPT, Phi).

    Reshape(Transpose(Softmax(Q·Kᵀ·s + mask)·V)) with K = Concat(past_key, k), V = Concat(past_value, v)
        -> GroupQueryAttention(q, k, v, past_key, past_value, seqlens_k, total_sequence_length, …, attention_bias)
        -> MultiHeadAttention(q, k, v, …, attention_bias, past_key, past_value)

The graph keeps its signature: the fused op's present outputs become ``present.{i}.key`` /
``present.{i}.value``. The model's own additive mask is passed as ``attention_bias`` (it
already holds the causal and padding rules, so left padding stays exact). Rotary
embeddings (``fuse-rotary``'s RotaryEmbedding) move inside GroupQueryAttention
(``do_rotary`` with the model's ``position_ids``, so every row keeps its own positions)
where the kernel can take them, else they are re-applied to the 3-D projections. With the
rotation inside, Q, K and V projections of one input pack into one MatMul whose output is
GroupQueryAttention's packed QKV: one weight read and one kernel call instead of three.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import onnx_ir as ir

from greencc.passes.lib.graph_edits import constant_array, redirect
from greencc.passes.lib.matching import (
    CONTRIB_DOMAIN,
    FusionRun,
    int_attr,
    ints_attr,
    label,
    remove_unused,
    scalar_constant,
)
from greencc.passes.lib.rules import Either, Match, Op, Rule, Var
from greencc.pipeline.base import register_pass

GROUP_QUERY_ATTENTION = f"{CONTRIB_DOMAIN}::GroupQueryAttention"
MULTI_HEAD_ATTENTION = f"{CONTRIB_DOMAIN}::MultiHeadAttention"
# GroupQueryAttention's input slots (onnxruntime's contrib schema).
_GQA_COS_CACHE, _GQA_POSITION_IDS, _GQA_ATTENTION_BIAS, _GQA_QUERY_SEQLENS = 7, 9, 10, 16
# onnxruntime's CPU kernel rotates inside GroupQueryAttention only for head sizes of 16·n.
_GQA_ROTARY_HEAD_MULTIPLE = 16

_RAW_SCORES = Op(
    "MatMul",
    Either(Op("Mul", Var("q4", const=False), Var("q_scale", const=True), commute=True, name="q_scaled"), Var("q4")),
    Either(Op("Mul", Var("k_t", const=False), Var("k_scale", const=True), commute=True, name="k_scaled"), Var("k_t")),
    name="qk",
)
_SCORES = Either(Op("Mul", _RAW_SCORES, Var("score_scale", const=True), commute=True, name="scores_scaled"), _RAW_SCORES)
_SOFTMAX = Op("Softmax", Either(Op("Add", _SCORES, Var("bias", const=False), commute=True, name="masked"), _SCORES),
              name="softmax")
# SDPA exports zero the rows a −∞ mask leaves empty: Where(IsNaN(p), 0, p).
_PROBS = Either(Op("Where", Op("IsNaN", _SOFTMAX), Var("nan_fill", const=True), Var("probs"), name="nan_guard"),
                _SOFTMAX)
_CONTEXT = Op("MatMul", _PROBS, Var("v_all", const=False), name="context")
# Phi's export reshapes the context to its own shape before merging the heads.
PATTERN = Op(
    "Reshape",
    Op("Transpose", Either(Op("Reshape", _CONTEXT, Var("context_shape"), name="context_view"), _CONTEXT),
       name="context_t"),
    Var("merged_shape"),
    name="merged",
)


@dataclass
class Projection:
    """One of q, k, v: the 3-D tensor [batch, seq, heads·head_size] a block splits into
    heads, its head count, and the RotaryEmbedding applied to the heads (if any)."""

    value: ir.Value
    heads: int
    rotary: ir.Node | None
    nodes: list[ir.Node] = field(default_factory=list)


def _producer(value: ir.Value | None, op_type: str, domain: str = "") -> ir.Node | None:
    node = value.producer() if value is not None else None
    if node is None or node.op_type != op_type or (node.domain or "") not in (domain, "ai.onnx" if not domain else domain):
        return None
    return node


def _perm(node: ir.Node) -> list[int] | None:
    return ints_attr(node, "perm")


def split_heads(value: ir.Value, run: FusionRun) -> Projection | str:
    """``value`` = [RotaryEmbedding](Transpose(Reshape(x, [b, s, h, d]), (0, 2, 1, 3))), x rank 3."""
    nodes: list[ir.Node] = []
    rotary = _producer(value, "RotaryEmbedding", CONTRIB_DOMAIN)
    if rotary is not None:
        nodes.append(rotary)
        value = rotary.inputs[0]
    transpose = _producer(value, "Transpose")
    reshape = _producer(transpose.inputs[0], "Reshape") if transpose is not None else None
    if transpose is None or reshape is None or _perm(transpose) != [0, 2, 1, 3]:
        return f"'{value.name}' is not a projection split into heads (Transpose(Reshape(x), (0, 2, 1, 3)))"
    x, split = reshape.inputs[0], run.shape(reshape.outputs[0])
    x_shape = run.shape(x)
    if split is None or len(split) != 4 or not all(isinstance(d, int) for d in split[2:]):
        return f"the heads of {label(reshape)} have no static count and size ({split})"
    if x_shape is None or len(x_shape) != 3 or x_shape[-1] != split[2] * split[3]:
        return f"{label(reshape)} does not split a [batch, seq, {split[2] * split[3]}] projection into heads"
    return Projection(x, int(split[2]), rotary, [*nodes, transpose, reshape])


def present_of(value: ir.Value, run: FusionRun) -> tuple[ir.Node, list[ir.Node], int] | str:
    """``value`` = Concat(past, new) on the sequence axis, possibly repeated for grouped
    heads (Reshape(Expand(Unsqueeze(present, 2)))); returns (concat, repeat nodes, repeats)."""
    repeat: list[ir.Node] = []
    reshape = _producer(value, "Reshape")
    expand = _producer(reshape.inputs[0], "Expand") if reshape is not None else None
    unsqueeze = _producer(expand.inputs[0], "Unsqueeze") if expand is not None else None
    repeats = 1
    if unsqueeze is not None:
        axes = ints_attr(unsqueeze, "axes") or [int(a) for a in np.asarray(constant_array(unsqueeze.inputs[1])
                                                                          if len(unsqueeze.inputs) > 1 else []).reshape(-1)]
        expanded, grouped = run.shape(expand.outputs[0]), run.shape(unsqueeze.inputs[0])
        if axes != [2] or expanded is None or len(expanded) != 5 or not isinstance(expanded[2], int):
            return f"{label(reshape)} does not repeat grouped key/value heads"
        repeat, repeats, value = [reshape, expand, unsqueeze], int(expanded[2]), unsqueeze.inputs[0]
        del grouped
    concat = _producer(value, "Concat")
    if concat is None or len(concat.inputs) != 2:
        return f"'{value.name}' is not Concat(past, new): the block has no KV cache"
    axis = int_attr(concat, "axis", 0)
    past = concat.inputs[0]
    if axis not in (2, -2) or past is None or not past.is_graph_input():
        return f"{label(concat)} does not append to a past graph input on the sequence axis"
    return concat, repeat, repeats


def transposed_keys(value: ir.Value) -> tuple[ir.Value, list[ir.Node]] | str:
    """``value`` = Kᵀ of K: Transpose(K, (0, 1, 3, 2)), or the SDPA export's
    Reshape(Transpose(Reshape(K, [-1, T, d]), (0, 2, 1)), [b, h, d, T])."""
    transpose = _producer(value, "Transpose")
    if transpose is not None and _perm(transpose) == [0, 1, 3, 2]:
        return transpose.inputs[0], [transpose]
    outer = _producer(value, "Reshape")
    transpose = _producer(outer.inputs[0], "Transpose") if outer is not None else None
    inner = _producer(transpose.inputs[0], "Reshape") if transpose is not None else None
    if inner is None or _perm(transpose) != [0, 2, 1]:
        return f"the keys '{value.name}' are not transposed for Q·Kᵀ"
    return inner.inputs[0], [outer, transpose, inner]


@register_pass("fuse-decoder-attention")
class FuseDecoderAttention(Rule):
    """Causal self-attention with past/present -> GroupQueryAttention (kv heads < heads) or MultiHeadAttention.

    Q, K and V are 3-D projections split into heads (rotated by RotaryEmbedding or not);
    keys and values are ``Concat(past_key_values.{i}, new)`` (the present outputs),
    repeated for grouped heads; scalings of Q, K and the scores multiply into ``scale``;
    the additive mask becomes ``attention_bias``. GroupQueryAttention gets
    ``seqlens_k = total_seq − 1`` for every row, ``total_sequence_length`` and
    ``query_seqlens = seq`` derived from ``attention_mask``'s and the query's shapes (every
    row appends all its new tokens, as Concat does; padding is in the mask) and
    ``causal=1``; rows whose keys are all masked (left padding of a prompt, whose outputs
    are discarded) differ from the model. A whole-head, unscaled RotaryEmbedding shared by
    Q and K moves inside GroupQueryAttention (``do_rotary=1``, cos/sin caches and the
    graph's ``position_ids``) when the head size is a multiple of 16; Q, K and V MatMuls of
    one input with constant weights (biases too) then pack into one MatMul feeding the
    packed-QKV input. Declines without a KV cache, a mask (GQA), static head counts, or
    target support.
    """

    pattern = PATTERN

    def prepare(self, run: FusionRun) -> None:
        """Forget the sequence-length inputs of an earlier run (made once per graph)."""
        self._lengths: dict[int, tuple[ir.Value, ir.Value, ir.Value]] = {}

    def check(self, m: Match, run: FusionRun) -> str:
        softmax = m.node("softmax")
        if int_attr(softmax, "axis", -1) not in (-1, 3):
            return f"{label(softmax)} does not normalize over the keys"
        if "nan_guard" in m.named_nodes and (m["probs"] is not m["softmax"] or
                                               scalar_constant(m["nan_fill"]) != 0.0):
            return f"{label(m.node('nan_guard'))} is not Where(IsNaN(p), 0, p)"
        if _perm(m.node("context_t")) != [0, 2, 1, 3]:
            return f"{label(m.node('context_t'))} does not merge the heads back"
        query = split_heads(m["q4"], run)
        if isinstance(query, str):
            return f"the query path: {query}"
        keys = transposed_keys(m["k_t"])
        if isinstance(keys, str):
            return keys
        k_all, k_transpose = keys
        key_cache = present_of(k_all, run)
        value_cache = present_of(m["v_all"], run)
        for what, found in (("key", key_cache), ("value", value_cache)):
            if isinstance(found, str):
                return f"the {what} path: {found}"
        assert not isinstance(key_cache, str) and not isinstance(value_cache, str)
        key = split_heads(key_cache[0].inputs[1], run)
        value = split_heads(value_cache[0].inputs[1], run)
        for what, found in (("key", key), ("value", value)):
            if isinstance(found, str):
                return f"the new {what}s: {found}"
        assert isinstance(key, Projection) and isinstance(value, Projection)
        if value.rotary is not None:
            return "the values are rotated"
        if (query.rotary is None) != (key.rotary is None):
            return "only one of queries and keys is rotated"
        if key.heads != value.heads or query.heads != key.heads * key_cache[2] or key_cache[2] != value_cache[2]:
            return (f"{query.heads} query heads do not share {key.heads} key and {value.heads} value "
                    f"heads evenly (repeated {key_cache[2]}×)")
        merged = run.shape(m.output)
        head_size = int(run.shape(query.nodes[-1].outputs[0])[3])
        if merged is None or len(merged) not in (2, 3) or merged[-1] != query.heads * head_size:
            return (f"{label(m.root)} does not merge the heads into [batch, seq, {query.heads * head_size}] "
                    f"or [batch·seq, {query.heads * head_size}]")
        if "context_view" in m.named_nodes:
            viewed = run.shape(m["context_view"])
            if viewed is None or len(viewed) != 4 or viewed[1] != query.heads or viewed[3] != head_size:
                return f"{label(m.node('context_view'))} does not keep the context's [batch, heads, seq, head_size]"
        scale = 1.0
        for name in ("q_scale", "k_scale", "score_scale"):
            if name in m.values:
                factor = scalar_constant(m[name])
                if factor is None:
                    return f"the scaling '{m[name].name}' is not one number"
                scale *= factor
        grouped = query.heads != key.heads
        bias = m.values.get("bias")
        if bias is not None:
            bias_shape = run.shape(bias)
            if bias_shape is None or len(bias_shape) != 4 or bias_shape[1] not in (1, query.heads):
                return f"the mask '{bias.name}' is not shaped [batch|1, heads|1, seq, total_seq] ({bias_shape})"
        elif grouped:
            return "the block adds no mask; GroupQueryAttention is always causal"
        if grouped and not _graph_input(run, "attention_mask"):
            return "no 'attention_mask' graph input to derive seqlens_k and total_sequence_length from"
        m["query"], m["key"], m["value"] = query, key, value
        m["key_cache"], m["value_cache"], m["k_transpose"] = key_cache, value_cache, k_transpose
        m["scale"], m["head_size"], m["grouped"] = scale, head_size, grouped
        m["fold_rotary"] = grouped and query.rotary is not None and _rotary_folds(query, key, head_size, run)
        m["packed"] = (_packed_projections(query, key, value)
                       if grouped and (m["fold_rotary"] or query.rotary is None) else None)
        return run.unsupported_reason(GROUP_QUERY_ATTENTION if grouped else MULTI_HEAD_ATTENTION)

    def rewrite(self, m: Match, run: FusionRun) -> None:
        query, key, value = m["query"], m["key"], m["value"]
        key_concat, value_concat = m["key_cache"][0], m["value_cache"][0]
        graph = m.root.graph
        assert graph is not None
        extra: list[ir.Node] = []
        q, k, v = query.value, key.value, value.value
        packed_from: list[ir.Node] = []
        if query.rotary is not None and not m["fold_rotary"]:
            q_rot = _rotary_3d(query, m["head_size"], run, extra)
            k_rot = _rotary_3d(key, m["head_size"], run, extra)
            q, k = q_rot, k_rot
        if m["packed"] is not None:
            q, packed_from = _pack_projections(m["packed"], run, m.root, extra), m["packed"].nodes
            k = v = None
        run.fused_away([m["qk"], m["softmax"], m["context"], m["context_t"]])
        if m["grouped"]:
            if id(graph) not in self._lengths:
                self._lengths[id(graph)] = _sequence_lengths(run, graph, query.value)
            seqlens_k, total, query_seqlens = self._lengths[id(graph)]
            inputs: list[ir.Value | None] = [q, k, v, key_concat.inputs[0], value_concat.inputs[0],
                                             seqlens_k, total]
            attributes = {"num_heads": query.heads, "kv_num_heads": key.heads, "scale": float(m["scale"]), "causal": 1}
            if m["fold_rotary"]:
                rotary = query.rotary
                assert rotary is not None
                inputs += [rotary.inputs[2], rotary.inputs[3], rotary.inputs[1]]
                attributes["do_rotary"] = 1
                attributes["rotary_interleaved"] = _int(rotary, "interleaved")
            inputs += [None] * (_GQA_ATTENTION_BIAS - len(inputs)) + [m.values.get("bias")]
            inputs += [None] * (_GQA_QUERY_SEQLENS - len(inputs)) + [query_seqlens]
            fused = run.new_node(
                "GroupQueryAttention", inputs, attributes,
                anchor=m.node("softmax"), domain=CONTRIB_DOMAIN, output_names=["gqa_out", "present_key", "present_value"],
            )
        else:
            inputs = [q, k, value.value, None, None, m.values.get("bias"), key_concat.inputs[0], value_concat.inputs[0]]
            fused = run.new_node(
                "MultiHeadAttention", inputs,
                {"num_heads": query.heads, "scale": float(m["scale"]), "unidirectional": 0},
                anchor=m.node("softmax"), domain=CONTRIB_DOMAIN, output_names=["mha_out", "present_key", "present_value"],
            )
        site = [*m.nodes, *query.nodes, *key.nodes, *value.nodes, key_concat, value_concat,
                *m["key_cache"][1], *m["value_cache"][1], *m["k_transpose"]]
        for old, new in ((key_concat.outputs[0], fused.outputs[1]), (value_concat.outputs[0], fused.outputs[2])):
            new.type, new.shape = old.type, old.shape
        result, last = fused.outputs[0], fused
        if run.rank(m.output) == 2:  # GPT-2's Conv1D reads the context as [batch·seq, hidden]
            rows = run.initializer(graph, "context_rows", np.array([-1, query.heads * m["head_size"]], dtype=np.int64))
            last = run.new_node("Reshape", [result, rows], anchor=m.root)
            extra.append(fused)
            result = last.outputs[0]
        run.replace(m.output, last, result, site, before=m.root, extra_nodes=extra)
        for old, new in ((key_concat.outputs[0], fused.outputs[1]), (value_concat.outputs[0], fused.outputs[2])):
            redirect(graph, old, new, before=fused, replaced=site)
        remove_unused([*site, *_shape_feeders(site), *packed_from])


def _int(node: ir.Node, name: str, default: int = 0) -> int:
    attr = node.attributes.get(name)
    return attr.as_int() if attr is not None else default


def _rotary_folds(query: Projection, key: Projection, head_size: int, run: FusionRun) -> bool:
    """Whether GroupQueryAttention can rotate ``query`` and ``key`` itself: both use one
    RotaryEmbedding form (same positions from a graph input, caches, layout) over the whole
    head, unscaled, and the head size is one onnxruntime's kernel rotates."""
    q_rot, k_rot = query.rotary, key.rotary
    assert q_rot is not None and k_rot is not None
    if any(a is not b for a, b in zip(q_rot.inputs[1:4], k_rot.inputs[1:4], strict=True)):
        return False
    positions, cos = q_rot.inputs[1], q_rot.inputs[2]
    if positions is None or not positions.is_graph_input() or positions.dtype != ir.DataType.INT64:
        return False
    cos_shape = run.shape(cos) if cos is not None else None
    for node in (q_rot, k_rot):
        scale = node.attributes.get("scale")
        if (scale is not None and scale.as_float() != 1.0) or _int(node, "is_packed_batching"):
            return False
        if _int(node, "rotary_embedding_dim") not in (0, head_size) or _int(node, "interleaved") != _int(q_rot, "interleaved"):
            return False
    return (head_size % _GQA_ROTARY_HEAD_MULTIPLE == 0 and cos_shape is not None and len(cos_shape) == 2
            and cos_shape[1] == head_size // 2)


@dataclass
class PackedProjections:
    """Q, K and V as MatMul(x, W) [+ b] of one ``x`` with constant weights (and biases):
    the nodes computing them, their weights and biases in Q, K, V order."""

    x: ir.Value
    weights: list[np.ndarray]
    biases: list[np.ndarray] | None
    nodes: list[ir.Node]


def _packed_projections(*projections: Projection) -> PackedProjections | None:
    """The MatMuls (and bias Adds) behind ``projections`` when they read one input with
    constant [K, N] weights and nothing else reads their results; else ``None``."""
    x: ir.Value | None = None
    weights: list[np.ndarray] = []
    biases: list[np.ndarray] = []
    nodes: list[ir.Node] = []
    for projection in projections:
        value = projection.value
        if len(value.uses()) != 1:
            return None
        add = _producer(value, "Add")
        if add is not None:
            bias = constant_array(add.inputs[1]) if add.inputs[1] is not None else None
            if bias is None or np.ndim(bias) != 1 or len(add.inputs[0].uses()) != 1:
                return None
            biases.append(np.asarray(bias))
            nodes.append(add)
            value = add.inputs[0]
        matmul = _producer(value, "MatMul")
        weight = constant_array(matmul.inputs[1]) if matmul is not None and matmul.inputs[1] is not None else None
        if matmul is None or weight is None or np.ndim(weight) != 2 or (x is not None and matmul.inputs[0] is not x):
            return None
        x = matmul.inputs[0]
        weights.append(np.asarray(weight))
        nodes.append(matmul)
    if x is None or len(biases) not in (0, len(projections)) or len({w.shape[0] for w in weights}) != 1:
        return None
    if len({w.dtype for w in weights}) != 1:
        return None
    return PackedProjections(x, weights, biases or None, nodes)


def _pack_projections(packed: PackedProjections, run: FusionRun, anchor: ir.Node, extra: list[ir.Node]) -> ir.Value:
    """One MatMul (and bias Add) computing Q|K|V side by side: GroupQueryAttention's packed input."""
    graph = anchor.graph
    assert graph is not None
    weight = run.initializer(graph, "qkv_weight", np.concatenate(packed.weights, axis=1))
    node = run.new_node("MatMul", [packed.x, weight], anchor=packed.nodes[-1], output_names=["qkv"])
    extra.append(node)
    if packed.biases is not None:
        bias = run.initializer(graph, "qkv_bias", np.concatenate(packed.biases))
        node = run.new_node("Add", [node.outputs[0], bias], anchor=packed.nodes[0], output_names=["qkv_biased"])
        extra.append(node)
    return node.outputs[0]


def _graph_input(run: FusionRun, name: str) -> ir.Value | None:
    return next((v for v in run.model.ir.graph.inputs if v.name == name), None)


def _rotary_3d(projection: Projection, head_size: int, run: FusionRun, extra: list[ir.Node]) -> ir.Value:
    """The RotaryEmbedding of ``projection``'s heads, applied to its 3-D form."""
    rotary = projection.rotary
    assert rotary is not None
    attributes = {name: attr.as_int() for name, attr in rotary.attributes.items()}
    attributes["num_heads"] = projection.heads
    attributes["rotary_embedding_dim"] = attributes.get("rotary_embedding_dim") or head_size
    node = run.new_node("RotaryEmbedding", [projection.value, *rotary.inputs[1:]], attributes,
                        anchor=rotary, domain=CONTRIB_DOMAIN, output_names=["rotary_out"])
    extra.append(node)
    return node.outputs[0]


def _sequence_lengths(run: FusionRun, graph: ir.Graph, query: ir.Value) -> tuple[ir.Value, ir.Value, ir.Value]:
    """(seqlens_k, total_sequence_length, query_seqlens) as int32, computed at the top of
    ``graph`` from attention_mask's shape [batch, total_seq] and input_ids' [batch, seq]
    (the query's shape when there is no input_ids): every row holds total_seq keys after
    this step and appends seq of them."""
    mask = _graph_input(run, "attention_mask")
    assert mask is not None
    ids = _graph_input(run, "input_ids")
    tokens = ids if ids is not None and run.rank(ids) == 2 else query
    made: list[ir.Node] = []

    def add(op: str, inputs: list[ir.Value], attributes: dict | None = None) -> ir.Value:
        node = run.new_node(op, inputs, attributes or {}, anchor=graph[0], output_names=[f"gqa_{op.lower()}"])
        made.append(node)
        return node.outputs[0]

    one = run.initializer(graph, "gqa_one", np.array([1], dtype=np.int64))
    batch = add("Shape", [mask], {"start": 0, "end": 1})
    total = add("Shape", [mask], {"start": 1, "end": 2})
    seqlens_k = add("Expand", [add("Cast", [add("Sub", [total, one])], {"to": int(ir.DataType.INT32)}), batch])
    total_scalar = add("Cast", [add("Squeeze", [total])], {"to": int(ir.DataType.INT32)})
    seq = add("Cast", [add("Shape", [tokens], {"start": 1, "end": 2})], {"to": int(ir.DataType.INT32)})
    query_seqlens = add("Expand", [seq, batch])
    anchor = graph[0] if tokens is not query else query.producer()
    assert anchor is not None
    graph.insert_before(anchor, made)
    return seqlens_k, total_scalar, query_seqlens


def _shape_feeders(nodes: list[ir.Node], limit: int = 256) -> list[ir.Node]:
    """Nodes computing the integer shape operands of ``nodes`` (Shape, Slice, Concat…),
    walked back until a float value: what becomes dead with them."""
    found: list[ir.Node] = []
    seen = set(map(id, nodes))
    stack = [v for n in nodes for v in n.inputs[1:] if v is not None]
    while stack and len(found) < limit:
        value = stack.pop()
        producer = value.producer()
        if producer is None or id(producer) in seen or value.dtype not in (ir.DataType.INT64, ir.DataType.INT32):
            continue
        seen.add(id(producer))
        found.append(producer)
        stack.extend(v for v in producer.inputs if v is not None)
    for node in nodes:
        for out in node.outputs:
            for user, _ in out.uses():
                if user.op_type == "Shape" and id(user) not in seen:
                    seen.add(id(user))
                    found.append(user)
    return found
