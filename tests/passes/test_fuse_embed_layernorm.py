"""fuse-embed-layernorm: token + position (+ segment) embedding sums and their LayerNorm
become com.microsoft::EmbedLayerNormalization, whichever way the positions were exported."""

from __future__ import annotations

import numpy as np
import onnx
import onnx.helper as oh
from hypothesis import given
from hypothesis import strategies as st

from tests.helpers import model_from_text, run_ort
from tests.passes.strategies import fingerprint
from tests.passes.test_fuse_support import (
    FUSION_PROPERTY_SETTINGS,
    assert_close,
    check_fusion,
    ops,
    reasons,
    run_fusion,
)

FLOAT, INT64 = onnx.TensorProto.FLOAT, onnx.TensorProto.INT64
RNG = np.random.default_rng(0)
WORD = RNG.standard_normal((10, 4)).astype(np.float32)
POS = RNG.standard_normal((1, 6, 4)).astype(np.float32)


def _floats(array: np.ndarray) -> str:
    return "{" + ", ".join(repr(float(v)) for v in array.reshape(-1)) + "}"


BEFORE = f"""
<ir_version: 10, opset_import: ["" : 17]>
g (int64[N, 6] ids) => (float[N, 6, 4] y)
<float[10, 4] word = {_floats(WORD)}, float[1, 6, 4] pos = {_floats(POS)},
 float[4] gamma = {{1.0, 2.0, 0.5, 1.5}}, float[4] beta = {{0.1, 0.2, 0.3, 0.4}}>
{{
  e = Gather(word, ids)
  s = Add(e, pos)
  y = LayerNormalization<epsilon = 1e-12>(s, gamma, beta)
}}
"""


def _ids(batch: int = 3, seq: int = 6, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 10, (batch, seq)).astype(np.int64)


def test_golden_folded_positions_become_the_position_table():
    model = model_from_text(BEFORE)
    result, _ = run_fusion(model, "fuse-embed-layernorm", dims={"N": 2})
    # The looked-up embeddings and their sum (2·6·4 floats each) are no longer materialized.
    assert result.stats == {"fused": 1, "activation_bytes_removed": 2 * (2 * 2 * 6 * 4 * 4)}
    assert ops(model) == ["Cast", "ms::EmbedLayerNormalization"]
    cast, fused = list(model.graph)
    assert cast.attributes["to"].as_int() == onnx.TensorProto.INT32
    names = [v.name if v is not None else "" for v in fused.inputs]
    assert names[0] == cast.outputs[0].name and names[1] == "" and names[2] == "word"
    np.testing.assert_array_equal(fused.inputs[3].const_value.numpy(), POS[0])
    assert names[5:] == ["gamma", "beta"]
    assert fused.outputs[0].name == "y"


def test_matches_ort_and_is_idempotent():
    model = model_from_text(BEFORE)
    feeds = {"ids": _ids()}
    expected = run_ort(model, feeds)
    run_fusion(model, "fuse-embed-layernorm")
    assert_close(expected, run_ort(model, feeds))
    before = fingerprint(model)
    again, _ = run_fusion(model, "fuse-embed-layernorm")
    assert again.modified is False and fingerprint(model) == before


def test_declines_with_reasons():
    model = model_from_text(
        f"""
        <ir_version: 10, opset_import: ["" : 17]>
        g (int64[N, S] ids, int64[N, 6] ids2, float[N, 6, 4] other) => (float[N, S, 4] y1, float[N, 6, 4] y2,
                                                                        float[N, 6, 4] y3)
        <float[10, 4] word = {_floats(WORD)}, float[1, 6, 4] pos = {_floats(POS)},
         float[4] gamma = {{1.0, 2.0, 0.5, 1.5}}, int64[1, 6] backwards = {{5, 4, 3, 2, 1, 0}}>
        {{
          e1 = Gather(word, ids)
          s1 = Add(e1, pos)
          y1 = LayerNormalization(s1, gamma)
          e2 = Gather(word, ids2)
          p2 = Gather(word, backwards)
          s2 = Add(e2, p2)
          y2 = LayerNormalization(s2, gamma)
          e3 = Gather(word, ids2)
          s3 = Add(e3, other)
          y3 = LayerNormalization(s3, gamma)
        }}
        """
    )
    before = fingerprint(model)
    result, ctx = run_fusion(model, "fuse-embed-layernorm")
    assert result.modified is False and fingerprint(model) == before
    assert reasons(ctx, "fuse-embed-layernorm") == [
        "the constant addend 'pos' holds 6 positions but the sequence length is dynamic",
        "<unnamed Gather -> p2> does not look up positions 0..S-1 or one constant row",
        "the addend from input 'other' is neither a position nor a token-type embedding",
    ]


@st.composite
def embedding_graphs(draw: st.DrawFn) -> tuple[onnx.ModelProto, bool]:
    rng = np.random.default_rng(draw(st.integers(0, 2**16)))
    hidden, seq, max_pos = 4, 6, 8
    dynamic = draw(st.booleans())
    inits = [
        onnx.numpy_helper.from_array(rng.standard_normal((12, hidden)).astype(np.float32), "word"),
        onnx.numpy_helper.from_array(rng.uniform(0.5, 1.5, hidden).astype(np.float32), "gamma"),
    ]
    inputs = [oh.make_tensor_value_info("ids", INT64, ["N", "S" if dynamic else seq])]
    nodes = [oh.make_node("Gather", ["word", "ids"], ["e_word"])]
    addends = ["e_word"]
    positions = draw(st.sampled_from(["arange", "slice", "constant"] if not dynamic else ["slice"]))
    table = rng.standard_normal((max_pos, hidden)).astype(np.float32)
    inits.append(onnx.numpy_helper.from_array(table, "pos_table"))
    if positions == "constant":
        inits.append(onnx.numpy_helper.from_array(table[None, :seq], "pos_folded"))
        addends.append("pos_folded")
    else:
        if positions == "arange":
            inits.append(onnx.numpy_helper.from_array(np.arange(seq, dtype=np.int64)[None], "pos_ids"))
        else:
            inits += [
                onnx.numpy_helper.from_array(np.arange(max_pos, dtype=np.int64)[None], "pos_buffer"),
                onnx.numpy_helper.from_array(np.array([0], np.int64), "zero"),
                onnx.numpy_helper.from_array(np.array([1], np.int64), "one"),
            ]
            nodes += [
                oh.make_node("Shape", ["ids"], ["seq_len"], start=1, end=2),
                oh.make_node("Slice", ["pos_buffer", "zero", "seq_len", "one"], ["pos_ids"]),
            ]
        nodes.append(oh.make_node("Gather", ["pos_table", "pos_ids"], ["e_pos"]))
        addends.append("e_pos")
    segments = draw(st.sampled_from(["none", "input", "zeros", "offset"]))
    types = rng.standard_normal((2, hidden)).astype(np.float32)
    if segments == "input":
        inputs.append(oh.make_tensor_value_info("segment_ids", INT64, ["N", "S" if dynamic else seq]))
        inits.append(onnx.numpy_helper.from_array(types, "type_table"))
        nodes.append(oh.make_node("Gather", ["type_table", "segment_ids"], ["e_type"]))
        addends.append("e_type")
    elif segments == "zeros":
        inits += [onnx.numpy_helper.from_array(types, "type_table"),
                  onnx.numpy_helper.from_array(np.zeros((1, max_pos), np.int64), "type_buffer")]
        inits.append(onnx.numpy_helper.from_array(np.array([1, 1], np.int64), "ones2"))
        nodes += [oh.make_node("Expand", ["type_buffer", "ones2"], ["type_wide"]),
                  oh.make_node("Gather", ["type_table", "type_wide"], ["e_type_wide"])]
        # A constant row of zeros, kept to the sequence length by a Slice (as exporters do).
        inits += [onnx.numpy_helper.from_array(np.array([0], np.int64), "t0"),
                  onnx.numpy_helper.from_array(np.array([1], np.int64), "t1")]
        nodes += [oh.make_node("Shape", ["ids"], ["t_len"], start=1, end=2),
                  oh.make_node("Slice", ["e_type_wide", "t0", "t_len", "t1"], ["e_type"])]
        addends.append("e_type")
    elif segments == "offset":
        inits.append(onnx.numpy_helper.from_array(types[:1][None], "type_row"))
        addends.append("type_row")
    order = list(rng.permutation(len(addends)))
    current = addends[order[0]]
    for k, index in enumerate(order[1:]):
        nodes.append(oh.make_node("Add", [current, addends[index]], [f"sum{k}"]))
        current = f"sum{k}"
    ln_inputs = [current, "gamma"]
    if draw(st.booleans()):
        inits.append(onnx.numpy_helper.from_array(rng.standard_normal(hidden).astype(np.float32), "beta"))
        ln_inputs.append("beta")
    nodes.append(oh.make_node("LayerNormalization", ln_inputs, ["y"], epsilon=1e-12))
    out_shape = ["N", "S" if dynamic else seq, hidden]
    outputs = [oh.make_tensor_value_info("y", FLOAT, out_shape)]
    if draw(st.integers(0, 3)) == 0:
        nodes.append(oh.make_node("Relu", [current], ["sum_read"]))
        outputs.append(oh.make_tensor_value_info("sum_read", FLOAT, out_shape))
    graph = oh.make_graph(nodes, "g", inputs, outputs, initializer=inits)
    proto = oh.make_model(graph, opset_imports=[oh.make_opsetid("", 17)], ir_version=10)
    return proto, dynamic


@FUSION_PROPERTY_SETTINGS
@given(case=embedding_graphs())
def test_property_random_embeddings(case):
    proto, dynamic = case
    result = check_fusion(proto, "fuse-embed-layernorm", dims={"N": 2, "S": 5} if dynamic else {"N": 2})
    assert result.stats["fused"] == 1
