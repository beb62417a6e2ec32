"""Per-op work: MAC and byte counts hand-computed on tiny graphs."""

from __future__ import annotations

import onnx.parser
import onnx_ir as ir
import pytest

from greencc.cost import OpWork, estimate_cost, register_op_cost
from greencc.cost.ops import conv_output_spatial, dtype_class, matmul_macs, registered_op_costs
from tests.helpers import model_from_text

HEADER = '<ir_version: 10, opset_import: ["": 20, "com.microsoft": 1]>'


def _only_node(text: str, profile: str = "x86-avx512"):
    estimate = estimate_cost(model_from_text(f"{HEADER}\n{text}"), profile)
    kernels = [n for n in estimate.nodes if n.op_type not in ("Constant",)]
    assert len(kernels) == 1, [n.op_type for n in estimate.nodes]
    return estimate, kernels[0]


def test_matmul_broadcasts_batch_dims():
    # batch [2,1] x [3] -> [2,3]; each is (4x8)@(8x5): 6 * 4*8*5 = 960 MACs.
    estimate, node = _only_node(
        "g (float[2,1,4,8] a, float[3,8,5] b) => (float[2,3,4,5] y) { y = MatMul(a, b) }"
    )
    assert node.macs == 960
    assert estimate.macs_by_dtype == {"float32": 960}
    assert node.op_class == "matmul"
    # inputs 2*1*4*8*4 + 3*8*5*4 bytes, output 2*3*4*5*4 bytes
    assert (node.bytes_read, node.bytes_written) == (256 + 480, 480)


def test_matmul_vector_operands():
    assert matmul_macs([8], [8, 5]) == 40
    assert matmul_macs([4, 8], [8]) == 32
    assert matmul_macs([7, 4, 8], [8, 5]) == 7 * 4 * 8 * 5


def test_gemm_trans_b_with_bias():
    estimate, node = _only_node(
        "g (float[4,8] a, float[16,8] b, float[16] c) => (float[4,16] y) {"
        " y = Gemm <transB=1> (a, b, c) }"
    )
    assert node.macs == 4 * 8 * 16
    assert node.flops == 4 * 16  # the bias add
    assert node.bytes_read == (32 + 128 + 16) * 4
    assert node.bytes_written == 64 * 4


def test_gemm_trans_a():
    _, node = _only_node(
        "g (float[8,4] a, float[8,16] b) => (float[4,16] y) { y = Gemm <transA=1> (a, b) }"
    )
    assert node.macs == 4 * 8 * 16
    assert node.flops == 0


def test_grouped_conv():
    # N*C_out*prod(out)*(C_in/groups)*prod(k) = 1*16*(10*10)*(8/2)*(3*3)
    _, node = _only_node(
        "g (float[1,8,10,10] x, float[16,4,3,3] w) => (float[1,16,10,10] y) {"
        " y = Conv <group=2, pads=[1,1,1,1]> (x, w) }"
    )
    assert node.macs == 16 * 100 * 4 * 9
    assert node.op_class == "conv"


def test_depthwise_strided_padded_conv_with_bias():
    # out = floor((10 + 2 - 3) / 2) + 1 = 5 per axis; 8 channels * 25 * 1 * 9
    _, node = _only_node(
        "g (float[1,8,10,10] x, float[8,1,3,3] w, float[8] b) => (float[1,8,5,5] y) {"
        " y = Conv <group=8, strides=[2,2], pads=[1,1,1,1]> (x, w, b) }"
    )
    assert node.macs == 8 * 25 * 9
    assert node.flops == 8 * 25
    assert node.bytes_written == 8 * 25 * 4


def test_dilated_1d_conv():
    # out = floor((7 + 2 - 2*(3-1) - 1) / 2) + 1 = 3; 2 * 4 * 3 * 3 * 3
    _, node = _only_node(
        "g (float[2,3,7] x, float[4,3,3] w) => (float[2,4,3] y) {"
        " y = Conv <dilations=[2], strides=[2], pads=[1,1]> (x, w) }"
    )
    assert node.macs == 2 * 4 * 3 * 3 * 3


def test_conv_output_spatial_from_attributes():
    x = ir.Value(name="x", shape=ir.Shape([1, 3, 11, 11]), type=ir.TensorType(ir.DataType.FLOAT))
    w = ir.Value(name="w", shape=ir.Shape([6, 3, 3, 3]), type=ir.TensorType(ir.DataType.FLOAT))
    same = ir.Node("", "Conv", [x, w], attributes=[
        ir.AttrString("auto_pad", "SAME_UPPER"), ir.AttrInt64s("strides", [2, 2])])
    assert conv_output_spatial(same, [1, 3, 11, 11], [6, 3, 3, 3]) == [6, 6]
    valid = ir.Node("", "Conv", [x, w], attributes=[ir.AttrString("auto_pad", "VALID")])
    assert conv_output_spatial(valid, [1, 3, 11, 11], [6, 3, 3, 3]) == [9, 9]


def test_conv_transpose():
    # each of the 1*4*5*5 inputs scatters into C_out/groups * prod(k) = 2 * 9 outputs
    _, node = _only_node(
        "g (float[1,4,5,5] x, float[4,2,3,3] w) => (float[1,2,7,7] y) { y = ConvTranspose(x, w) }"
    )
    assert node.macs == 100 * 18


@pytest.mark.parametrize(
    "text, macs",
    [
        ("g (uint8[4,8] a, int8[8,16] b) => (int32[4,16] y) { y = MatMulInteger(a, b) }", 512),
        (
            "g (uint8[4,8] a, float as, uint8 az, int8[8,16] b, float bs, int8 bz, float ys,"
            " uint8 yz) => (uint8[4,16] y) { y = QLinearMatMul(a, as, az, b, bs, bz, ys, yz) }",
            512,
        ),
        (
            "g (uint8[1,2,5,5] x, int8[4,2,3,3] w) => (int32[1,4,3,3] y) { y = ConvInteger(x, w) }",
            4 * 9 * 2 * 9,
        ),
        (
            "g (uint8[1,2,5,5] x, float xs, uint8 xz, int8[4,2,3,3] w, float ws, int8 wz,"
            " float ys, uint8 yz) => (uint8[1,4,3,3] y) {"
            " y = QLinearConv(x, xs, xz, w, ws, wz, ys, yz) }",
            4 * 9 * 2 * 9,
        ),
    ],
)
def test_int8_ops_count_int8_macs(text, macs):
    estimate, node = _only_node(text)
    assert node.dtype == "int8"
    assert estimate.macs_by_dtype == {"int8": macs}


def test_einsum_contraction():
    # bij,bjk->bik: 2 * 3 * 4 * 5 MACs, the same as the batched MatMul
    _, node = _only_node(
        'g (float[2,3,4] a, float[2,4,5] b) => (float[2,3,5] y) { y = Einsum <equation="bij,bjk->bik"> (a, b) }'
    )
    assert node.macs == 2 * 3 * 4 * 5
    _, batched = _only_node(
        'g (float[7,2,3,4] a, float[7,2,4,5] b) => (float[7,2,3,5] y) { y = Einsum <equation="...ij,...jk->...ik"> (a, b) }'
    )
    assert batched.macs == 7 * 2 * 3 * 4 * 5


def test_float16_matmul_is_float16_class():
    estimate, _ = _only_node("g (float16[4,8] a, float16[8,2] b) => (float16[4,2] y) { y = MatMul(a, b) }")
    assert estimate.macs_by_dtype == {"float16": 64}


def test_elementwise_and_normalization_are_flops_not_macs():
    estimate = estimate_cost(model_from_text(f"""{HEADER}
g (float[2,8] x, float[8] s, float[8] b) => (float[2,8] y) {{
  a = Add(x, x)
  e = Exp(a)
  n = LayerNormalization(e, s, b)
  y = Softmax(n)
}}"""), "x86-avx512")
    assert estimate.total_macs == 0
    flops = {n.op_type: n.flops for n in estimate.nodes}
    assert flops["Add"] == 16
    assert flops["Exp"] == 16 * 4
    assert flops["LayerNormalization"] == 16 * 7
    assert flops["Softmax"] == 16 * 8
    classes = {n.op_type: n.op_class for n in estimate.nodes}
    assert classes == {"Add": "elementwise", "Exp": "elementwise",
                       "LayerNormalization": "normalization", "Softmax": "softmax"}


def test_gather_reads_only_the_rows_it_picks():
    # table 1000x16 floats (64,000 B) but only 4 rows (256 B) and the int64 indices (32 B)
    estimate = estimate_cost(model_from_text(f"""{HEADER}
g (int64[4] i) => (float[4,16] y) <float[1000,16] table = {{{", ".join(["0.5"] * 16000)}}}> {{
  y = Gather(table, i)
}}"""), "x86-avx512")
    (node,) = estimate.nodes
    assert node.bytes_read == 4 * 16 * 4 + 4 * 8
    assert node.bytes_written == 4 * 16 * 4
    assert estimate.weight_bytes == 64000 and estimate.parameters == 16000


def test_shape_constant_identity_cost_nothing_and_views_move_no_bytes():
    estimate = estimate_cost(model_from_text(f"""{HEADER}
g (float[2,8] x) => (float[16] y, int64[2] s) {{
  i = Identity(x)
  s = Shape(i)
  k = Constant <value = int64[1] {{16}}> ()
  y = Reshape(i, k)
}}"""), "x86-avx512")
    by_type = {n.op_type: n for n in estimate.nodes}
    for op in ("Identity", "Shape", "Constant"):
        assert by_type[op].latency_ms == 0 and by_type[op].energy_mj == 0
        assert by_type[op].bytes_read == 0
    reshape = by_type["Reshape"]
    assert reshape.bytes_read == reshape.bytes_written == 0
    assert reshape.latency_ms == pytest.approx(5e-6 * 1e3)  # dispatch overhead only


def test_contrib_attention():
    # projection 2*8*16*48, then per head QK^T and AV over 8 positions: 2 * 2*8*8*16
    estimate, node = _only_node(
        "g (float[2,8,16] x, float[16,48] w, float[48] b) => (float[2,8,16] y) {"
        " y = com.microsoft.Attention <num_heads=4> (x, w, b) }"
    )
    assert node.macs == 2 * 8 * 16 * 48 + 2 * (2 * 8 * 8 * 16)
    assert node.domain == "com.microsoft"
    assert estimate.unknown_ops == []


def test_contrib_qattention_splits_int8_projection_from_float_attention():
    estimate, node = _only_node(
        "g (uint8[1,4,8] x, int8[8,24] w, float[24] b, float xs, float ws) => (float[1,4,8] y) {"
        " y = com.microsoft.QAttention <num_heads=2> (x, w, b, xs, ws) }"
    )
    assert estimate.macs_by_dtype == {"float32": 2 * (4 * 4 * 8), "int8": 4 * 8 * 24}
    assert node.dtype == "int8"


def test_contrib_multi_head_attention_and_skip_layer_norm():
    estimate = estimate_cost(model_from_text(f"""{HEADER}
g (float[1,8,16] q, float[1,6,16] k, float[1,6,16] v, float[16] s, float[16] b)
  => (float[1,8,16] y) {{
  a = com.microsoft.MultiHeadAttention <num_heads=2> (q, k, v)
  y = com.microsoft.SkipLayerNormalization (a, q, s, b)
}}"""), "x86-avx512")
    mha, sln = estimate.nodes
    assert mha.macs == 8 * 6 * 16 * 2
    assert sln.macs == 0 and sln.flops == 128 * (7 + 1)
    assert sln.op_class == "normalization"


def test_unknown_op_counts_zero_macs_and_is_listed():
    proto = onnx.parser.parse_model("""<ir_version: 10, opset_import: ["": 20, "my.ops": 1]>
g (float[4,4] x) => (float[4,4] y, float[4,4] t) {
  t = my.ops.Mystery(x)
  y = MatMul(x, x)
}""")
    model = ir.serde.deserialize_model(proto)
    estimate = estimate_cost(model, "x86-avx512")
    assert estimate.unknown_ops == ["my.ops::Mystery"]
    assert estimate.total_macs == 64  # the rest of the graph is still counted
    mystery = next(n for n in estimate.nodes if n.op_type == "Mystery")
    assert (mystery.macs, mystery.op_class) == (0, "other")
    assert mystery.bytes_read == 64  # its input's bytes still count
    assert any("my.ops::Mystery" in note for note in estimate.notes)


def test_register_op_cost_adds_an_op():
    @register_op_cost("Mystery2", domain="test.greencc")
    def _mystery(node):
        return OpWork(macs=7, dtype="int8", op_class="other")

    proto = onnx.parser.parse_model("""<ir_version: 10, opset_import: ["": 20, "test.greencc": 1]>
g (float[4] x) => (float[4] y) { y = test.greencc.Mystery2(x) }""")
    estimate = estimate_cost(ir.serde.deserialize_model(proto), "x86-avx512")
    assert estimate.macs_by_dtype == {"int8": 7}
    assert estimate.unknown_ops == []
    assert "test.greencc::Mystery2" in registered_op_costs()


def test_required_ops_are_covered():
    required = """MatMul Gemm Conv ConvTranspose BatchNormalization LayerNormalization Softmax
    LogSoftmax Gelu Erf Tanh Sigmoid Relu Clip LeakyRelu HardSwish HardSigmoid Add Sub Mul Div
    Pow Sqrt Exp Neg Where Equal IsNaN And Not Max Min ReduceMean ReduceSum ReduceMax MaxPool
    AveragePool GlobalAveragePool Reshape Transpose Gather GatherElements GatherND Concat Slice
    Split Squeeze Unsqueeze Expand Cast Shape Constant Identity Flatten QuantizeLinear
    DequantizeLinear DynamicQuantizeLinear QLinearMatMul MatMulInteger ConvInteger
    QLinearConv""".split()
    contrib = """Attention MultiHeadAttention SkipLayerNormalization EmbedLayerNormalization
    BiasGelu FastGelu FusedMatMul QAttention""".split()
    have = set(registered_op_costs())
    assert [op for op in required if op not in have] == []
    assert [op for op in contrib if f"com.microsoft::{op}" not in have] == []


def test_dtype_classes():
    assert dtype_class(ir.DataType.FLOAT) == "float32"
    assert dtype_class(ir.DataType.DOUBLE) == "float32"
    assert dtype_class(ir.DataType.BFLOAT16) == "bfloat16"
    assert dtype_class(ir.DataType.UINT8) == "int8"
    assert dtype_class(ir.DataType.INT64) == "float32"


def test_a_failing_cost_function_does_not_stop_the_estimate():
    @register_op_cost("Broken", domain="test.greencc")
    def _broken(node):
        raise ZeroDivisionError("bug in a cost function")

    proto = onnx.parser.parse_model("""<ir_version: 10, opset_import: ["": 20, "test.greencc": 1]>
g (float[4,4] x) => (float[4,4] y, float[4,4] z) { y = test.greencc.Broken(x)
 z = MatMul(x, x) }""")
    estimate = estimate_cost(ir.serde.deserialize_model(proto), "x86-avx512")
    assert estimate.total_macs == 64
    assert any("Broken" in note and "failed" in note for note in estimate.notes)
