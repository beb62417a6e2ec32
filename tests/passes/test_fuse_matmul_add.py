"""fuse-matmul-add: MatMul + Add becomes Gemm only where Gemm's rank-2 contract holds."""

from __future__ import annotations

import numpy as np
import onnx
import onnx.helper as oh
from hypothesis import given
from hypothesis import strategies as st

from tests.helpers import model_from_text, random_feeds, run_ort
from tests.passes.strategies import fingerprint
from tests.passes.test_fuse_support import (
    FUSION_PROPERTY_SETTINGS,
    assert_close,
    check_fusion,
    ops,
    reasons,
    run_fusion,
)

FLOAT = onnx.TensorProto.FLOAT

BEFORE = """
<ir_version: 10, opset_import: ["" : 17]>
g (float[N, 4] a, float[4, 3] b) => (float[N, 3] y)
<float[3] bias = {0.5, -1.0, 2.0}>
{
  p = MatMul(a, b)
  y = Add(bias, p)
}
"""

EXPECTED = """
<ir_version: 10, opset_import: ["" : 17]>
g (float[N, 4] a, float[4, 3] b) => (float[N, 3] y)
<float[3] bias = {0.5, -1.0, 2.0}>
{
  y = Gemm(a, b, bias)
}
"""


def test_golden_matmul_add_becomes_gemm():
    from tests.passes.strategies import canonical

    model = model_from_text(BEFORE)
    result, _ = run_fusion(model, "fuse-matmul-add", dims={"N": 5})
    assert result.stats == {"fused": 1, "activation_bytes_removed": 2 * 5 * 3 * 4}
    assert canonical(model) == canonical(model_from_text(EXPECTED))


def test_matches_ort_and_is_idempotent():
    model = model_from_text(BEFORE)
    feeds = random_feeds(model, seed=1, dims={"N": 4})
    expected = run_ort(model, feeds)
    run_fusion(model, "fuse-matmul-add")
    assert_close(expected, run_ort(model, feeds))
    before = fingerprint(model)
    again, _ = run_fusion(model, "fuse-matmul-add")
    assert again.modified is False and fingerprint(model) == before


def test_declines_where_gemm_is_not_legal():
    model = model_from_text(
        """
        <ir_version: 10, opset_import: ["" : 17]>
        g (float[N, S, 4] x, float[N, 4] a, float[4, 3] b) => (float[N, S, 3] y1, float[2, N, 3] y2,
                                                               float[N, 3] y3, float[N, 3] p3)
        <float[3] bias = {0.5, -1.0, 2.0}, float[2, 1, 3] wide = {1.0, 2.0, 3.0, 4.0, 5.0, 6.0}>
        {
          p1 = MatMul(x, b)
          y1 = Add(p1, bias)
          p2 = MatMul(a, b)
          y2 = Add(p2, wide)
          p3 = MatMul(a, b)
          y3 = Add(p3, bias)
        }
        """
    )
    before = fingerprint(model)
    result, ctx = run_fusion(model, "fuse-matmul-add")
    assert result.modified is False and fingerprint(model) == before
    assert reasons(ctx, "fuse-matmul-add") == [
        "MatMul operand A 'x' has rank 3; Gemm needs rank 2",
        "the bias 'wide' has rank 3 and would raise the rank",
        "cannot fuse <unnamed MatMul -> p3>: 'p3' is a graph output",
    ]


@st.composite
def matmul_add_graphs(draw: st.DrawFn) -> onnx.ModelProto:
    rng = np.random.default_rng(draw(st.integers(0, 2**16)))
    m, k, n = (draw(st.integers(1, 4)) for _ in range(3))
    rank = draw(st.sampled_from([2, 2, 3]))
    a_shape = ["N", k] if rank == 2 else [2, "N", k]
    bias_shape = draw(st.sampled_from([(n,), (1, n), (), (m, n), (m, 1), (1,)]))
    if len(bias_shape) == 2 and bias_shape[0] == m and m != 1:
        a_shape = [m, k] if rank == 2 else [2, m, k]  # a full [M, N] bias needs a static M
    inits = [
        onnx.numpy_helper.from_array(rng.standard_normal((k, n)).astype(np.float32), "b"),
        onnx.numpy_helper.from_array(rng.standard_normal(bias_shape).astype(np.float32), "bias"),
    ]
    order = ["p", "bias"] if draw(st.booleans()) else ["bias", "p"]
    nodes = [oh.make_node("MatMul", ["a", "b"], ["p"]), oh.make_node("Add", order, ["y"])]
    if draw(st.booleans()):
        nodes.append(oh.make_node("Relu", ["y"], ["r"]))
    out_shape = [*a_shape[:-1], n]
    outputs = [oh.make_tensor_value_info(v.output[0], FLOAT, out_shape) for v in nodes[1:]]
    graph = oh.make_graph(nodes, "g", [oh.make_tensor_value_info("a", FLOAT, a_shape)], outputs, initializer=inits)
    return oh.make_model(graph, opset_imports=[oh.make_opsetid("", 17)], ir_version=10)


@FUSION_PROPERTY_SETTINGS
@given(proto=matmul_add_graphs())
def test_property_random_matmul_adds(proto):
    result = check_fusion(proto, "fuse-matmul-add")
    rank = len(proto.graph.input[0].type.tensor_type.shape.dim)
    assert result.stats["fused"] == int(rank == 2)
    if rank == 2:
        import greencc as gc

        model = gc.load(proto)
        run_fusion(model, "fuse-matmul-add")
        assert "Gemm" in ops(model)
