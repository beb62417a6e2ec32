"""Single ops the model tests do not reach, each lowered alone and compared with ONNX Runtime on
random inputs: ONNX Runtime's fused float ops and its integer kernels (integer outputs equal,
float outputs within 1e-4), and the refusal of an op without a converter."""

from __future__ import annotations

import numpy as np
import onnx
import onnx.helper as oh
import onnxruntime as ort
import pytest

pytest.importorskip("torch")

import greencc as gc  # noqa: E402
from greencc.errors import UnsupportedOpError  # noqa: E402
from greencc.lowering import lower_to_torch  # noqa: E402

MS = "com.microsoft"
rng = np.random.default_rng(0)


def _u8(*shape: int) -> np.ndarray:
    return rng.integers(0, 256, shape).astype(np.uint8)


def _s8(*shape: int) -> np.ndarray:
    return rng.integers(-128, 128, shape).astype(np.int8)


def _f(*shape: int, scale: float = 1.0) -> np.ndarray:
    return (scale * rng.standard_normal(shape)).astype(np.float32)


def _scalar(value: float, dtype: type) -> np.ndarray:
    return np.asarray(value, dtype=dtype)


# (op, domain, inputs: name -> array (None: absent), attributes, output count)
CASES: dict[str, tuple[str, str, dict[str, np.ndarray | None], dict, int]] = {
    "QLinearMatMul": ("QLinearMatMul", "", {
        "a": _u8(4, 16), "a_scale": _scalar(0.02, np.float32), "a_zp": _scalar(120, np.uint8),
        "b": _s8(16, 8), "b_scale": _scalar(0.01, np.float32), "b_zp": _scalar(0, np.int8),
        "y_scale": _scalar(0.05, np.float32), "y_zp": _scalar(128, np.uint8)}, {}, 1),
    "QLinearConv": ("QLinearConv", "", {
        "x": _u8(2, 3, 6, 6), "x_scale": _scalar(0.03, np.float32), "x_zp": _scalar(100, np.uint8),
        "w": _s8(4, 3, 3, 3), "w_scale": np.asarray([0.01, 0.02, 0.015, 0.005], np.float32),
        "w_zp": np.zeros(4, np.int8), "y_scale": _scalar(0.1, np.float32), "y_zp": _scalar(10, np.uint8),
        "bias": rng.integers(-500, 500, 4).astype(np.int32)}, {"pads": [1, 1, 1, 1]}, 1),
    "MatMulInteger": ("MatMulInteger", "", {
        "a": _u8(3, 5, 16), "b": _s8(16, 8), "a_zp": _scalar(7, np.uint8), "b_zp": _s8(8)}, {}, 1),
    "ConvInteger": ("ConvInteger", "", {
        "x": _u8(1, 2, 5, 5), "w": _u8(3, 2, 3, 3), "x_zp": _scalar(3, np.uint8), "w_zp": _scalar(5, np.uint8)},
        {"pads": [1, 0, 1, 0], "strides": [2, 1]}, 1),
    "DynamicQuantizeLinear": ("DynamicQuantizeLinear", "", {"x": _f(4, 33, scale=3.0)}, {}, 3),
    "QuantizeLinear per axis": ("QuantizeLinear", "", {
        "x": _f(3, 4, scale=2.0), "s": np.asarray([0.01, 0.02, 0.03, 0.04], np.float32), "zp": _s8(4)},
        {"axis": 1}, 1),
    "DequantizeLinear": ("DequantizeLinear", "", {
        "q": _s8(3, 4), "s": _scalar(0.05, np.float32), "zp": _scalar(-3, np.int8)}, {}, 1),
    "MatMulIntegerToFloat": ("MatMulIntegerToFloat", MS, {
        "a": _u8(2, 16), "b": _s8(16, 8), "a_scale": _scalar(0.02, np.float32), "b_scale": _f(8, scale=0.01),
        "a_zp": _scalar(128, np.uint8), "b_zp": None, "bias": _f(8)}, {}, 1),
    "DynamicQuantizeMatMul": ("DynamicQuantizeMatMul", MS, {
        "a": _f(2, 3, 16), "b": _s8(16, 8), "b_scale": _f(8, scale=0.01), "b_zp": np.zeros(8, np.int8),
        "bias": _f(8)}, {}, 1),
    "QGemm float output": ("QGemm", MS, {
        "a": _u8(4, 16), "a_scale": _scalar(0.02, np.float32), "a_zp": _scalar(120, np.uint8),
        "b": _s8(8, 16), "b_scale": _scalar(0.01, np.float32), "b_zp": _scalar(0, np.int8),
        "c": rng.integers(-300, 300, 8).astype(np.int32)}, {"transB": 1}, 1),
    "QLinearAdd": ("QLinearAdd", MS, {
        "a": _u8(2, 8), "a_scale": _scalar(0.02, np.float32), "a_zp": _scalar(120, np.uint8),
        "b": _u8(2, 8), "b_scale": _scalar(0.03, np.float32), "b_zp": _scalar(110, np.uint8),
        "c_scale": _scalar(0.05, np.float32), "c_zp": _scalar(128, np.uint8)}, {}, 1),
    "FusedMatMul": ("FusedMatMul", MS, {"a": _f(2, 8, 4), "b": _f(2, 6, 8)},
                    {"alpha": 0.5, "transA": 1, "transB": 1}, 1),
    "FusedGemm": ("FusedGemm", MS, {"a": _f(4, 8), "b": _f(8, 6), "c": _f(6)},
                  {"activation": "LeakyRelu", "activation_alpha": 0.1}, 1),
    "BiasGelu": ("BiasGelu", MS, {"x": _f(2, 5, 8), "b": _f(8)}, {}, 1),
    "FastGelu": ("FastGelu", MS, {"x": _f(2, 5, 8), "b": _f(8)}, {}, 1),
    "QuickGelu": ("QuickGelu", MS, {"x": _f(2, 8)}, {"alpha": 1.5}, 1),
    "SkipSimplifiedLayerNormalization": ("SkipSimplifiedLayerNormalization", MS, {
        "x": _f(2, 3, 8), "skip": _f(2, 3, 8), "gamma": _f(8), "bias": _f(8)}, {"epsilon": 1e-6}, 1),
    "SimplifiedLayerNormalization": ("SimplifiedLayerNormalization", "", {"x": _f(2, 3, 8), "gamma": _f(8)},
                                     {"epsilon": 1e-6}, 1),
    "RotaryEmbedding": ("RotaryEmbedding", MS, {
        "x": _f(2, 4, 5, 8), "pos": np.asarray([[0, 1, 2, 3, 4], [2, 3, 4, 5, 6]], np.int64),
        "cos": np.cos(_f(10, 4)), "sin": np.sin(_f(10, 4))}, {}, 1),
    "MatMulNBits": ("MatMulNBits", MS, {
        "a": _f(3, 40), "b": _u8(6, 2, 16), "scales": _f(12, scale=0.05), "zp": _u8(6, 1)},
        {"K": 40, "N": 6, "bits": 4, "block_size": 32}, 1),
}


def _single(op: str, domain: str, inputs: dict[str, np.ndarray | None], attributes: dict, outputs: int,
            results: list[np.ndarray] | None = None) -> onnx.ModelProto:
    """The one-node model; outputs untyped, or typed as ``results`` (greencc loads typed graphs only)."""
    names = ["" if array is None else name for name, array in inputs.items()]
    while names and not names[-1]:
        names.pop()
    outs = [f"y{i}" for i in range(outputs)]
    node = oh.make_node(op, names, outs, domain=domain, **attributes)
    graph = oh.make_graph(
        [node], "single",
        [oh.make_tensor_value_info(n, oh.np_dtype_to_tensor_dtype(a.dtype), a.shape) for n, a in inputs.items() if a is not None],
        [onnx.ValueInfoProto(name=o) if results is None
         else oh.make_tensor_value_info(o, oh.np_dtype_to_tensor_dtype(r.dtype), r.shape) for o, r in
         zip(outs, results or [None] * len(outs), strict=True)])
    return oh.make_model(graph, opset_imports=[oh.make_opsetid("", 21), oh.make_opsetid(MS, 1)], ir_version=10)


@pytest.mark.parametrize("case", sorted(CASES))
def test_op_matches_onnx_runtime(case: str) -> None:
    op, domain, inputs, attributes, outputs = CASES[case]
    proto = _single(op, domain, inputs, attributes, outputs)
    feeds = {name: array for name, array in inputs.items() if array is not None}
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    session = ort.InferenceSession(proto.SerializeToString(), options, providers=["CPUExecutionProvider"])
    want = session.run(None, feeds)
    typed = _single(op, domain, inputs, attributes, outputs, want)
    got = lower_to_torch(gc.load(typed)).run(feeds)
    for index, expected in enumerate(want):
        have = got[f"y{index}"]
        assert have.dtype == expected.dtype and have.shape == expected.shape
        if expected.dtype.kind == "f":
            np.testing.assert_allclose(have, expected, atol=1e-4, rtol=0)
        else:
            np.testing.assert_array_equal(have, expected)


def test_an_op_without_converter_is_refused_by_name() -> None:
    proto = _single("Frobnicate", "com.example", {"x": _f(2)}, {}, 1, [_f(2)])
    proto.opset_import.append(oh.make_opsetid("com.example", 1))
    with pytest.raises(UnsupportedOpError, match="com.example::Frobnicate"):
        lower_to_torch(gc.load(proto))
