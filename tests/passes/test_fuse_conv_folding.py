"""fold-batchnorm, fold-conv-bias, fold-conv-scale, fold-pad: per-channel affine maps and
zero pads fold into the Conv, exactly; every refusal names its condition."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx
import onnx.helper as oh
from hypothesis import given
from hypothesis import strategies as st

import greencc as gc
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


def _floats(values: np.ndarray) -> str:
    return ", ".join(repr(float(v)) for v in np.asarray(values, np.float32).reshape(-1))


RNG = np.random.default_rng(0)
W = RNG.standard_normal((3, 2, 3, 3)).astype(np.float32)
B = RNG.standard_normal(3).astype(np.float32)
GAMMA = np.array([0.5, 1.5, -1.0], np.float32)
BETA = np.array([0.1, -0.2, 0.3], np.float32)
MEAN = np.array([0.2, -0.1, 0.4], np.float32)
VAR = np.array([0.5, 2.0, 1.0], np.float32)

BATCHNORM = f"""
<ir_version: 10, opset_import: ["" : 17]>
g (float[N, 2, 5, 5] x) => (float[N, 3, 5, 5] y)
<float[3, 2, 3, 3] w = {{{_floats(W)}}}, float[3] b = {{{_floats(B)}}},
 float[3] gamma = {{{_floats(GAMMA)}}}, float[3] beta = {{{_floats(BETA)}}},
 float[3] mean = {{{_floats(MEAN)}}}, float[3] var = {{{_floats(VAR)}}}>
{{
  c = Conv<pads = [1, 1, 1, 1]>(x, w, b)
  y = BatchNormalization<epsilon = 0.001>(c, gamma, beta, mean, var)
}}
"""



# ------------------------------------------------------------------------ fold-batchnorm
def test_batchnorm_golden_folds_into_the_conv_weights_and_bias():
    model = model_from_text(BATCHNORM)
    result, _ = run_fusion(model, "fold-batchnorm", dims={"N": 2})
    assert result.stats == {"fused": 1, "activation_bytes_removed": 2 * 2 * 3 * 5 * 5 * 4}
    assert ops(model) == ["Conv"]
    conv = model.graph.node(0)
    assert conv.inputs[0].name == "x" and conv.outputs[0].name == "y"
    assert list(conv.attributes["pads"].as_ints()) == [1, 1, 1, 1]
    scale = GAMMA.astype(np.float64) / np.sqrt(VAR.astype(np.float64) + 0.001)
    np.testing.assert_allclose(conv.inputs[1].const_value.numpy(), W * scale[:, None, None, None], rtol=1e-6)
    np.testing.assert_allclose(conv.inputs[2].const_value.numpy(), (B - MEAN) * scale + BETA, rtol=1e-6)
    assert model.graph.outputs[0].name == "y"


def test_batchnorm_matches_ort_and_is_idempotent():
    model = model_from_text(BATCHNORM)
    feeds = random_feeds(model, seed=11, dims={"N": 3})
    expected = run_ort(model, feeds)
    run_fusion(model, "fold-batchnorm")
    assert_close(expected, run_ort(model, feeds))
    before = fingerprint(model)
    again, _ = run_fusion(model, "fold-batchnorm")
    assert again.modified is False and fingerprint(model) == before


def test_batchnorm_declines_with_reasons():
    model = model_from_text(
        f"""
        <ir_version: 10, opset_import: ["" : 17]>
        g (float[N, 2, 5, 5] x, float[3, 2, 3, 3] wx) => (float[N, 3, 5, 5] y1, float[N, 3, 5, 5] c1,
                                                           float[N, 3, 5, 5] y2, float[N, 2, 5, 5] y3)
        <float[3, 2, 3, 3] w = {{{_floats(W)}}}, float[3] gamma = {{{_floats(GAMMA)}}},
         float[3] beta = {{{_floats(BETA)}}}, float[3] mean = {{{_floats(MEAN)}}}, float[3] var = {{{_floats(VAR)}}},
         float[2] g2 = {{1.0, 2.0}}, float[2] z2 = {{0.0, 0.0}}, float[2] o2 = {{1.0, 1.0}}>
        {{
          c1 = Conv<pads = [1, 1, 1, 1]>(x, w)
          y1 = BatchNormalization(c1, gamma, beta, mean, var)
          c2 = Conv<pads = [1, 1, 1, 1]>(x, wx)
          y2 = BatchNormalization(c2, gamma, beta, mean, var)
          r = Relu(x)
          y3 = BatchNormalization(r, g2, z2, z2, o2)
        }}
        """
    )
    before = fingerprint(model)
    result, ctx = run_fusion(model, "fold-batchnorm")
    assert result.modified is False and fingerprint(model) == before
    assert reasons(ctx, "fold-batchnorm") == [
        "cannot fold into <unnamed Conv -> c1>: 'c1' is a graph output",
        "the weight of <unnamed Conv -> c2> is not a constant",
        "its input comes from <unnamed Relu -> r>, not from a Conv",
    ]


@dataclass
class ConvParts:
    """A random Conv (1-D or 2-D, grouped or not, with or without bias) reading input x."""

    inits: list
    nodes: list
    spatial: int
    in_ch: int
    out_ch: int
    groups: int
    kernel: int
    rng: np.random.Generator
    size: int = 5

    @property
    def out_size(self) -> int:
        return self.size - self.kernel + 1

    def model(self, outputs: list[str]) -> onnx.ModelProto:
        x = oh.make_tensor_value_info("x", FLOAT, ["N", self.in_ch] + [self.size] * self.spatial)
        outs = [
            oh.make_tensor_value_info(o, FLOAT, ["N", self.out_ch] + [self.out_size] * self.spatial)
            for o in outputs
        ]
        graph = oh.make_graph(self.nodes, "g", [x], outs, initializer=self.inits)
        return oh.make_model(graph, opset_imports=[oh.make_opsetid("", 17)], ir_version=10)


def _conv_parts(draw: st.DrawFn, data: str = "x") -> ConvParts:
    rng = np.random.default_rng(draw(st.integers(0, 2**16)))
    spatial = draw(st.sampled_from([1, 2]))
    groups = draw(st.sampled_from([1, 2]))
    in_ch = groups * draw(st.integers(1, 2))
    out_ch = groups * draw(st.integers(1, 3))
    kernel = draw(st.integers(1, 3))
    w = rng.standard_normal((out_ch, in_ch // groups) + (kernel,) * spatial).astype(np.float32)
    inits = [onnx.numpy_helper.from_array(w, "w")]
    conv_inputs = [data, "w"]
    if draw(st.booleans()):
        inits.append(onnx.numpy_helper.from_array(rng.standard_normal(out_ch).astype(np.float32), "b"))
        conv_inputs.append("b")
    nodes = [oh.make_node("Conv", conv_inputs, ["c"], name="conv", group=groups)]
    return ConvParts(inits, nodes, spatial, in_ch, out_ch, groups, kernel, rng)


@st.composite
def batchnorm_graphs(draw: st.DrawFn) -> onnx.ModelProto:
    conv = _conv_parts(draw)
    for name in ("gamma", "beta", "mean"):
        conv.inits.append(onnx.numpy_helper.from_array(conv.rng.standard_normal(conv.out_ch).astype(np.float32), name))
    conv.inits.append(onnx.numpy_helper.from_array(conv.rng.uniform(0.2, 3, conv.out_ch).astype(np.float32), "var"))
    eps = draw(st.sampled_from([1e-5, 1e-3, 0.1]))
    conv.nodes.append(oh.make_node("BatchNormalization", ["c", "gamma", "beta", "mean", "var"], ["y"], epsilon=eps))
    outputs = ["y"]
    extra = draw(st.sampled_from(["none", "reader", "output"]))
    if extra == "reader":
        conv.nodes.append(oh.make_node("Relu", ["c"], ["r"]))
        outputs.append("r")
    elif extra == "output":
        outputs.append("c")
    return conv.model(outputs)


@FUSION_PROPERTY_SETTINGS
@given(proto=batchnorm_graphs())
def test_batchnorm_property_random_convs(proto):
    result = check_fusion(proto, "fold-batchnorm")
    extra_reader = len(proto.graph.output) > 1
    assert result.stats["fused"] == (0 if extra_reader else 1)


# -------------------------------------------------------------- fold-conv-bias / -scale
AFFINE = f"""
<ir_version: 10, opset_import: ["" : 17]>
g (float[N, 2, 5, 5] x) => (float[N, 3, 3, 3] y)
<float[3, 2, 3, 3] w = {{{_floats(W)}}}, float[3] b = {{{_floats(B)}}},
 float[3, 1, 1] s = {{2.0, -0.5, 0.25}}, float[1, 3, 1, 1] t = {{1.0, 2.0, 3.0}}>
{{
  c = Conv(x, w, b)
  m = Mul(s, c)
  y = Sub(m, t)
}}
"""


def test_scale_then_bias_golden_fold_into_one_conv():
    model = model_from_text(AFFINE)
    scaled, _ = run_fusion(model, "fold-conv-scale", dims={"N": 1})
    assert scaled.stats == {"fused": 1, "activation_bytes_removed": 2 * 3 * 3 * 3 * 4}
    biased, _ = run_fusion(model, "fold-conv-bias")
    assert biased.stats["fused"] == 1
    assert ops(model) == ["Conv"]
    conv = model.graph.node(0)
    s = np.array([2.0, -0.5, 0.25])
    np.testing.assert_allclose(conv.inputs[1].const_value.numpy(), W * s[:, None, None, None], rtol=1e-6)
    np.testing.assert_allclose(conv.inputs[2].const_value.numpy(), B * s - [1.0, 2.0, 3.0], rtol=1e-6)
    assert conv.outputs[0].name == "y"


def test_affine_folds_match_ort_and_are_idempotent():
    model = model_from_text(AFFINE)
    feeds = random_feeds(model, seed=4, dims={"N": 2})
    expected = run_ort(model, feeds)
    for name in ("fold-conv-scale", "fold-conv-bias"):
        run_fusion(model, name)
    assert_close(expected, run_ort(model, feeds))
    before = fingerprint(model)
    for name in ("fold-conv-scale", "fold-conv-bias"):
        again, _ = run_fusion(model, name)
        assert again.modified is False
    assert fingerprint(model) == before


def test_affine_folds_decline_with_reasons():
    model = model_from_text(
        f"""
        <ir_version: 10, opset_import: ["" : 17]>
        g (float[N, 2, 5, 5] x, float[3] v) => (float[N, 3, 3, 3] y1, float[N, 3, 3, 3] y2,
                                               float[N, 3, 3, 3] y3, float[N, 3, 3, 3] y4)
        <float[3, 2, 3, 3] w = {{{_floats(W)}}}, float[1, 3, 3, 1] spatial = {{{_floats(np.arange(9))}}},
         float[3, 1, 1] zeros = {{1.0, 0.0, 2.0}}, float[3] c = {{1.0, 2.0, 3.0}}>
        {{
          c1 = Conv(x, w)
          y1 = Add(c1, spatial)
          c2 = Conv(x, w)
          y2 = Div(c2, zeros)
          c3 = Conv(x, w)
          y3 = Sub(c, c3)
          c4 = Conv(x, w)
          y4 = Mul(c4, v)
        }}
        """
    )
    before = fingerprint(model)
    bias, ctx_bias = run_fusion(model, "fold-conv-bias")
    scale, ctx_scale = run_fusion(model, "fold-conv-scale")
    assert not bias.modified and not scale.modified and fingerprint(model) == before
    assert reasons(ctx_bias, "fold-conv-bias") == [
        "the constant of shape (1, 3, 3, 1) varies along axis 2, not only along the channel axis 1",
        "Sub(C, Conv) is not an affine map of the Conv output",
    ]
    assert reasons(ctx_scale, "fold-conv-scale") == [
        "the divisor holds a zero",
        "its other input 'v' is not a (small) constant",
    ]


@st.composite
def affine_graphs(draw: st.DrawFn) -> onnx.ModelProto:
    conv = _conv_parts(draw)
    rank, m = conv.spatial + 2, conv.out_ch
    spatially_varying = (1, m, conv.out_size) + (1,) * (conv.spatial - 1)
    shapes = [(), (1,), (m,) + (1,) * conv.spatial, (1, m) + (1,) * conv.spatial, (1,) * rank, spatially_varying]
    current = "c"
    for i in range(draw(st.integers(1, 3))):
        shape = draw(st.sampled_from(shapes))
        op = draw(st.sampled_from(["Add", "Sub", "Mul", "Div"]))
        data = conv.rng.uniform(0.5, 2.0, shape) * conv.rng.choice([-1, 1], shape)
        conv.inits.append(onnx.numpy_helper.from_array(np.asarray(data, np.float32), f"k{i}"))
        operands = [current, f"k{i}"] if op in ("Sub", "Div") or draw(st.booleans()) else [f"k{i}", current]
        conv.nodes.append(oh.make_node(op, operands, [f"a{i}"]))
        current = f"a{i}"
    conv.nodes.append(oh.make_node("Identity", [current], ["y"]))
    return conv.model(["y"])


def _foldable_prefix(proto: onnx.ModelProto, ops_folded: tuple[str, ...]) -> int:
    """How many ops after the Conv a fold of ``ops_folded`` must take: the leading run
    of those ops whose constant is per channel."""
    shapes = {t.name: tuple(t.dims) for t in proto.graph.initializer}
    rank = len(shapes["w"])
    count = 0
    for node in proto.graph.node[1:]:
        constant = next((i for i in node.input if i in shapes), None)
        if node.op_type not in ops_folded or constant is None:
            break
        shape = (1,) * (rank - len(shapes[constant])) + shapes[constant]
        if any(size != 1 for axis, size in enumerate(shape) if axis != 1):
            break
        count += 1
    return count


@FUSION_PROPERTY_SETTINGS
@given(proto=affine_graphs(), order=st.sampled_from(["bias-first", "scale-first"]))
def test_affine_property_random_chains(proto, order):
    names = {"fold-conv-bias": ("Add", "Sub"), "fold-conv-scale": ("Mul", "Div")}
    for name in names if order == "bias-first" else reversed(names):
        result = check_fusion(proto, name)
        assert result.stats["fused"] == _foldable_prefix(proto, names[name])
        # Each fold keeps the model equivalent to the original; chain them on the result.
        model = gc.load(proto)
        run_fusion(model, name)
        proto = gc.ir.to_proto(model.ir)


# -------------------------------------------------------------------------- fold-pad
PADDED = f"""
<ir_version: 10, opset_import: ["" : 17]>
g (float[N, 2, 5, 5] x) => (float[N, 3, 6, 7] y)
<float[3, 2, 3, 3] w = {{{_floats(W)}}}, int64[8] p = {{0, 0, 1, 2, 0, 0, 2, 3}}, float zero = {{0.0}}>
{{
  padded = Pad<mode = "constant">(x, p, zero)
  y = Conv<pads = [0, 1, 0, 0]>(padded, w)
}}
"""


def test_pad_golden_becomes_conv_pads():
    model = model_from_text(PADDED)
    result, _ = run_fusion(model, "fold-pad", dims={"N": 1})
    assert result.stats == {"fused": 1, "activation_bytes_removed": 2 * 2 * 8 * 10 * 4}
    assert ops(model) == ["Conv"]
    conv = model.graph.node(0)
    assert conv.inputs[0].name == "x"
    assert list(conv.attributes["pads"].as_ints()) == [1, 3, 2, 3]


def test_pad_matches_ort_and_is_idempotent():
    model = model_from_text(PADDED)
    feeds = random_feeds(model, seed=2, dims={"N": 2})
    expected = run_ort(model, feeds)
    run_fusion(model, "fold-pad")
    assert_close(expected, run_ort(model, feeds))
    before = fingerprint(model)
    again, _ = run_fusion(model, "fold-pad")
    assert again.modified is False and fingerprint(model) == before


def test_pad_declines_with_reasons():
    model = model_from_text(
        f"""
        <ir_version: 10, opset_import: ["" : 17]>
        g (float[N, 2, 5, 5] x) => (float[N, 3, 5, 5] y1, float[N, 3, 5, 5] y2, float[N, 3, 3, 3] y3,
                                   float[N, 3, 3, 3] y4, float[N, 3, 5, 5] y5)
        <float[3, 2, 3, 3] w = {{{_floats(W)}}}, float[3, 3, 3, 3] w3 = {{{_floats(np.ones(81))}}},
         int64[8] p = {{0, 0, 1, 1, 0, 0, 1, 1}}, int64[8] pc = {{0, 1, 1, 1, 0, 0, 1, 1}},
         int64[8] neg = {{0, 0, -1, 0, 0, 0, 1, 0}}, float one = {{1.0}}>
        {{
          a = Pad<mode = "reflect">(x, p)
          y1 = Conv(a, w)
          b = Pad(x, p, one)
          y2 = Conv(b, w)
          c = Pad(x, pc)
          y3 = Conv(c, w3)
          d = Pad(x, neg)
          y4 = Conv(d, w)
          e = Pad(x, p)
          y5 = Conv<auto_pad = "SAME_UPPER">(e, w)
        }}
        """
    )
    before = fingerprint(model)
    result, ctx = run_fusion(model, "fold-pad")
    assert result.modified is False and fingerprint(model) == before
    assert reasons(ctx, "fold-pad") == [
        "<unnamed Pad -> a> uses mode 'reflect', not constant",
        "<unnamed Pad -> b> pads with 1.0, not zero",
        "<unnamed Pad -> c> pads the batch or channel axis ([0, 1, 1, 1, 0, 0, 1, 1])",
        "<unnamed Pad -> d> crops (negative pads [0, 0, -1, 0, 0, 0, 1, 0])",
        "the Conv uses auto_pad=SAME_UPPER",
    ]


@st.composite
def pad_graphs(draw: st.DrawFn) -> onnx.ModelProto:
    conv = _conv_parts(draw, data="padded")
    spatial = conv.spatial
    begins = [0, 0] + [draw(st.integers(-1, 2)) for _ in range(spatial)]
    ends = [0, 0] + [draw(st.integers(0, 2)) for _ in range(spatial)]
    if draw(st.integers(0, 4)) == 0:
        begins[0] = 1  # a batch pad: valid, but must not fold
    conv.inits.append(onnx.numpy_helper.from_array(np.array(begins + ends, np.int64), "pads"))
    pad_inputs = ["x", "pads"]
    if draw(st.booleans()):
        value = draw(st.sampled_from([0.0, 0.0, 0.5]))
        conv.inits.append(onnx.numpy_helper.from_array(np.array(value, np.float32), "value"))
        pad_inputs.append("value")
    conv_pads = [draw(st.integers(0, 1)) for _ in range(2 * spatial)]
    conv.nodes = [
        oh.make_node("Pad", pad_inputs, ["padded"], mode="constant"),
        oh.make_node("Conv", list(conv.nodes[0].input), ["y"], group=conv.groups, pads=conv_pads),
    ]
    padded = [conv.size + begins[2 + i] + ends[2 + i] for i in range(spatial)]
    out_dims = [padded[i] + conv_pads[i] + conv_pads[i + spatial] - conv.kernel + 1 for i in range(spatial)]
    x = oh.make_tensor_value_info("x", FLOAT, ["N", conv.in_ch] + [conv.size] * spatial)
    y = oh.make_tensor_value_info("y", FLOAT, [None, conv.out_ch] + out_dims)
    graph = oh.make_graph(conv.nodes, "g", [x], [y], initializer=conv.inits)
    return oh.make_model(graph, opset_imports=[oh.make_opsetid("", 17)], ir_version=10)


@FUSION_PROPERTY_SETTINGS
@given(proto=pad_graphs())
def test_pad_property_random_pads(proto):
    result = check_fusion(proto, "fold-pad")
    arrays = {t.name: onnx.numpy_helper.to_array(t) for t in proto.graph.initializer}
    pads, value = arrays["pads"], float(arrays.get("value", 0.0))
    rank = len(pads) // 2
    foldable = pads.min() >= 0 and value == 0.0 and not pads[[0, 1, rank, rank + 1]].any()
    assert result.stats["fused"] == int(foldable)
