"""fuse-attention and the attention-heads analysis: self-attention blocks, however their
heads are split and their masks built, become com.microsoft::Attention; the analysis
reports the head structure before and after fusion."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import onnx
import onnx.helper as oh
from hypothesis import given
from hypothesis import strategies as st

import greencc as gc
from greencc.passes.lib.attention_heads import AttentionHeads, analyze_attention
from greencc.pipeline.context import PassContext
from tests.passes.strategies import fingerprint
from tests.passes.test_fuse_support import (
    FUSION_PROPERTY_SETTINGS,
    assert_close,
    check_fusion,
    ops,
    reasons,
    run_fusion,
)

FLOAT, INT64, BOOL = onnx.TensorProto.FLOAT, onnx.TensorProto.INT64, onnx.TensorProto.BOOL
LOWEST = float(np.finfo(np.float32).min)


@dataclass(frozen=True)
class Block:
    """How one generated attention block is written (each field is a real exporter's choice)."""

    heads: int = 2
    head_size: int = 3
    batch: int | str = 2
    seq: int = 4
    packed: bool = False  # one QKV MatMul split three ways (GPT-2) or three MatMuls (BERT)
    bias: bool = True
    key: str = "perm0231"  # how Kᵀ is formed: perm0231 | double | flatten
    scale: str = "scores-div"  # scores-div | scores-mul | qk-sqrt | custom
    mask: str = "hf-legacy"  # none | hf-legacy | where-bool | causal | causal-padding | fill
    nan_guard: bool = False
    output_projection: bool = True

    @property
    def hidden(self) -> int:
        return self.heads * self.head_size


def attention_model(block: Block, seed: int = 0) -> onnx.ModelProto:
    """One self-attention block as its exporters write it."""
    rng = np.random.default_rng(seed)
    h, d, hid, s = block.heads, block.head_size, block.hidden, block.seq
    inits: list[onnx.TensorProto] = []
    nodes: list[onnx.NodeProto] = []

    def const(name: str, value: np.ndarray | float | list) -> str:
        array = np.asarray(value)
        if array.dtype == np.float64:
            array = array.astype(np.float32)
        inits.append(onnx.numpy_helper.from_array(array, name))
        return name

    def node(op: str, inputs: list[str], out: str, **attrs: object) -> str:
        nodes.append(oh.make_node(op, inputs, [out], name=f"{op}_{out}", **attrs))
        return out

    # Projections.
    if block.packed:
        node("MatMul", ["x", const("w_qkv", rng.standard_normal((hid, 3 * hid)) / math.sqrt(hid))], "qkv_mm")
        qkv = node("Add", ["qkv_mm", const("b_qkv", rng.standard_normal(3 * hid))], "qkv") if block.bias else "qkv_mm"
        nodes.append(oh.make_node("Split", [qkv, const("split", np.array([hid] * 3, np.int64))], ["q", "k", "v"], axis=2))
    else:
        for role in "qkv":
            mm = node("MatMul", ["x", const(f"w_{role}", rng.standard_normal((hid, hid)) / math.sqrt(hid))], f"{role}_mm")
            if block.bias:
                node("Add", [const(f"b_{role}", rng.standard_normal(hid)), mm], role)
            else:
                node("Identity", [mm], role)
    split_shape = const("split_heads", np.array([0, 0, h, d], np.int64))
    for role in "qv":
        node("Reshape", [role, split_shape], f"{role}4")
        node("Transpose", [f"{role}4"], f"{role}h", perm=[0, 2, 1, 3])
    node("Reshape", ["k", split_shape], "k4")
    if block.key == "perm0231":
        node("Transpose", ["k4"], "kt", perm=[0, 2, 3, 1])
    elif block.key == "double":
        node("Transpose", ["k4"], "kh", perm=[0, 2, 1, 3])
        node("Transpose", ["kh"], "kt", perm=[0, 1, 3, 2])
    else:  # the dynamo SDPA export: fold batch and heads, transpose, unfold
        node("Transpose", ["k4"], "kh", perm=[0, 2, 1, 3])
        node("Reshape", ["kh", const("fold", np.array([-1, s, d], np.int64))], "k3")
        node("Transpose", ["k3"], "k3t", perm=[0, 2, 1])
        node("Reshape", ["k3t", const("unfold", np.array([block.batch, h, d, s], np.int64))], "kt")
    q, kt = "qh", "kt"
    factor = 0.3 if block.scale == "custom" else 1 / math.sqrt(d)
    if block.scale == "qk-sqrt":
        root = const("root_scale", math.sqrt(factor))
        q, kt = node("Mul", [q, root], "qs"), node("Mul", [root, kt], "kts")
    scores = node("MatMul", [q, kt], "scores")
    if block.scale == "scores-div":
        scores = node("Div", [scores, const("sqrt_d", math.sqrt(d))], "scaled")
    elif block.scale in ("scores-mul", "custom"):
        scores = node("Mul", [scores, const("scale", factor)], "scaled")
    # Masks.
    causal = np.tril(np.ones((s, s), bool))[None, None]
    if block.mask in ("hf-legacy", "where-bool", "causal-padding", "fill"):
        key_mask = node("Unsqueeze", ["mask", const("axes12", np.array([1, 2], np.int64))], "mask4")
    if block.mask == "hf-legacy":
        as_float = node("Cast", [key_mask], "mask_f", to=FLOAT)
        inverted = node("Sub", [const("one", 1.0), as_float], "inverted")
        additive = node("Mul", [inverted, const("minus", -10000.0)], "additive")
        scores = node("Add", [scores, additive], "masked")
    elif block.mask in ("where-bool", "causal-padding"):
        keep = node("Cast", [key_mask], "keep", to=BOOL)
        if block.mask == "causal-padding":
            keep = node("And", [const("causal", causal), keep], "keep_causal")
        additive = node("Where", [keep, const("zero", 0.0), const("lowest", LOWEST)], "additive")
        scores = node("Add", [additive, scores], "masked")
    elif block.mask == "causal":
        scores = node("Add", [scores, const("causal_bias", np.where(causal, 0.0, -1e9))], "masked")
    elif block.mask == "fill":
        keep = node("Cast", [key_mask], "keep", to=BOOL)
        scores = node("Where", [keep, scores, const("fill", -1e9)], "masked")
    probs = node("Softmax", [scores], "probs", axis=-1)
    if block.nan_guard:
        node("IsNaN", [probs], "nan")
        probs = node("Where", ["nan", const("zero_p", 0.0), probs], "probs_safe")
    node("MatMul", [probs, "vh"], "context")
    node("Transpose", ["context"], "context_t", perm=[0, 2, 1, 3])
    merged = node("Reshape", ["context_t", const("merge", np.array([0, 0, hid], np.int64))], "merged")
    if block.output_projection:
        node("MatMul", [merged, const("w_o", rng.standard_normal((hid, hid)))], "y")
    else:
        node("Identity", [merged], "y")
    inputs = [oh.make_tensor_value_info("x", FLOAT, [block.batch, s, hid])]
    if block.mask in ("hf-legacy", "where-bool", "causal-padding", "fill"):
        inputs.append(oh.make_tensor_value_info("mask", INT64, [block.batch, s]))
    graph = oh.make_graph(
        nodes, "attention", inputs, [oh.make_tensor_value_info("y", FLOAT, [block.batch, s, hid])],
        initializer=inits,
    )
    return oh.make_model(graph, opset_imports=[oh.make_opsetid("", 17)], ir_version=10)


def _feeds(block: Block, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    batch = block.batch if isinstance(block.batch, int) else 3
    feeds = {"x": rng.standard_normal((batch, block.seq, block.hidden)).astype(np.float32)}
    if block.mask not in ("none", "causal"):
        mask = np.ones((batch, block.seq), np.int64)
        mask[0, -1] = 0
        feeds["mask"] = mask
    return feeds


def _input(node: gc.ir.Node, index: int) -> gc.ir.Value | None:
    """Input ``index`` of ``node``, ``None`` when absent (trailing empty inputs are dropped)."""
    return node.inputs[index] if index < len(node.inputs) else None


# --------------------------------------------------------------------------------- tests
def test_golden_bert_block_becomes_one_attention():
    block = Block()
    model = gc.load(attention_model(block))
    result, _ = run_fusion(model, "fuse-attention")
    assert result.stats["fused"] == 1
    assert ops(model)[-2:] == ["ms::Attention", "MatMul"] and "Softmax" not in ops(model)
    attention = next(n for n in model.graph if n.op_type == "Attention")
    assert attention.attributes["num_heads"].as_int() == 2
    assert "scale" not in attention.attributes  # 1/√d is the op's default
    # (1 - m) · -10000 is a mask only for 0/1 inputs: it stays an exact additive bias.
    assert _input(attention, 5) is not None and _input(attention, 3) is None
    weights = attention.inputs[1].const_value.numpy()
    proto = attention_model(block)
    arrays = {t.name: onnx.numpy_helper.to_array(t) for t in proto.graph.initializer}
    np.testing.assert_array_equal(weights, np.concatenate([arrays["w_q"], arrays["w_k"], arrays["w_v"]], axis=1))
    np.testing.assert_array_equal(
        attention.inputs[2].const_value.numpy(), np.concatenate([arrays["b_q"], arrays["b_k"], arrays["b_v"]])
    )
    assert attention.outputs[0].uses()[0][0].op_type == "MatMul"


def test_transformers5_padding_mask_becomes_mask_index():
    block = Block(mask="where-bool", nan_guard=True, key="flatten", scale="qk-sqrt")
    model = gc.load(attention_model(block))
    result, _ = run_fusion(model, "fuse-attention", dims={})
    assert result.stats["fused"] == 1
    attention = next(n for n in model.graph if n.op_type == "Attention")
    assert _input(attention, 3) is not None and _input(attention, 3).dtype == gc.ir.DataType.INT32
    assert attention.attributes["mask_filter_value"].as_float() == np.float32(LOWEST)
    assert "unidirectional" not in attention.attributes


def test_causal_masks_become_unidirectional():
    for mask in ("causal", "causal-padding"):
        model = gc.load(attention_model(Block(mask=mask)))
        run_fusion(model, "fuse-attention")
        attention = next(n for n in model.graph if n.op_type == "Attention")
        assert attention.attributes["unidirectional"].as_int() == 1
        assert (_input(attention, 3) is not None) == (mask == "causal-padding")


def test_matches_ort_and_is_idempotent():
    for block in (Block(), Block(mask="causal-padding", packed=True, scale="custom"), Block(mask="fill", bias=False)):
        proto = attention_model(block)
        model = gc.load(proto)
        feeds = _feeds(block)
        from tests.helpers import run_ort

        expected = run_ort(proto, feeds)
        run_fusion(model, "fuse-attention")
        assert "Softmax" not in ops(model)
        assert_close(expected, run_ort(model, feeds))
        before = fingerprint(model)
        again, _ = run_fusion(model, "fuse-attention")
        assert again.modified is False and fingerprint(model) == before


def test_head_structure_analysis_before_and_after_fusion():
    model = gc.load(attention_model(Block(heads=3, head_size=2)))
    with PassContext(target="ort-cpu") as ctx:
        before = ctx.analysis("attention-heads", model).blocks
    assert before == [
        AttentionHeads(
            block="Softmax_probs", num_heads=3, head_size=2, hidden_size=6,
            q_weight="w_q", k_weight="w_k", v_weight="w_v", o_weight="w_o",
            q_columns=(0, 6), k_columns=(0, 6), v_columns=(0, 6),
            q_bias="b_q", k_bias="b_k", v_bias="b_v", o_bias=None, fused=False, module=None,
        )
    ]
    run_fusion(model, "fuse-attention")
    (after,) = analyze_attention(model.ir).blocks
    assert after.fused and (after.num_heads, after.head_size, after.hidden_size) == (3, 2, 6)
    assert after.q_weight == after.k_weight == after.v_weight
    assert (after.q_columns, after.k_columns, after.v_columns) == ((0, 6), (6, 12), (12, 18))
    assert after.o_weight == "w_o"


def test_packed_projection_columns_in_the_analysis():
    (block,) = analyze_attention(gc.load(attention_model(Block(packed=True))).ir).blocks
    assert block.q_weight == block.k_weight == block.v_weight == "w_qkv"
    assert (block.q_columns, block.k_columns, block.v_columns) == ((0, 6), (6, 12), (12, 18))


def test_declines_with_reasons():
    # Cross-attention: keys and values from another input.
    proto = attention_model(Block(mask="none"))
    proto.graph.input.append(oh.make_tensor_value_info("memory", FLOAT, [2, 4, 6]))
    for n in proto.graph.node:
        if n.op_type == "MatMul" and n.output[0] in ("k_mm", "v_mm"):
            n.input[0] = "memory"
    model = gc.load(proto)
    result, ctx = run_fusion(model, "fuse-attention")
    assert result.modified is False
    assert reasons(ctx, "fuse-attention") == [
        "queries, keys and values are projected from different tensors (cross-attention is not fused)"
    ]
    # The probabilities are a model output (output_attentions=True).
    proto = attention_model(Block(mask="none"))
    proto.graph.output.append(oh.make_tensor_value_info("probs", FLOAT, [2, 2, 4, 4]))
    result, ctx = run_fusion(gc.load(proto), "fuse-attention")
    assert reasons(ctx, "fuse-attention") == [
        "an intermediate of the block is needed elsewhere: 'probs' is a graph output"
    ]
    # An additive term that is not a mask and not shaped as an attention bias (per key).
    proto = attention_model(Block(mask="causal"))
    for t in proto.graph.initializer:
        if t.name == "causal_bias":
            t.CopyFrom(onnx.numpy_helper.from_array(np.array([0.5, -1.0, 2.0, 0.0], np.float32), "causal_bias"))
    result, ctx = run_fusion(gc.load(proto), "fuse-attention")
    assert reasons(ctx, "fuse-attention") == [
        "the additive mask holds values other than 0 and one negative filler"
    ]


def test_declines_on_a_target_without_attention():
    model = gc.load(attention_model(Block(mask="none")))
    result, ctx = run_fusion(model, "fuse-attention", target=None)
    assert result.modified is False
    assert reasons(ctx, "fuse-attention") == [
        "no target is set, so com.microsoft::Attention is not known to run anywhere (give -t TARGET)"
    ]


@st.composite
def blocks(draw: st.DrawFn) -> Block:
    batch = draw(st.sampled_from([1, 2, "B"]))
    key = draw(st.sampled_from(["perm0231", "double"] + (["flatten"] if isinstance(batch, int) else [])))
    return Block(
        heads=draw(st.integers(1, 3)), head_size=draw(st.sampled_from([2, 4])), batch=batch,
        seq=draw(st.sampled_from([3, 5])), packed=draw(st.booleans()), bias=draw(st.booleans()),
        key=key, scale=draw(st.sampled_from(["scores-div", "scores-mul", "qk-sqrt", "custom"])),
        mask=draw(st.sampled_from(["none", "hf-legacy", "where-bool", "causal", "causal-padding", "fill"])),
        nan_guard=draw(st.booleans()), output_projection=draw(st.booleans()),
    )


@FUSION_PROPERTY_SETTINGS
@given(block=blocks())
def test_property_random_attention_blocks(block):
    result = check_fusion(attention_model(block), "fuse-attention", dims={"B": 2})
    assert result.stats["fused"] == 1, block
