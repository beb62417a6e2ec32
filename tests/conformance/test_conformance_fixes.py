"""What ONNX's backend suite found, each kept fixed: folding on IR-version-3 models, Range
and sequence values in simplify-shapes, sequence and optional feeds, verification feeds
valid for the operators they reach, and verification that blames the inputs, not a pass,
when the input model itself cannot run on them."""

from __future__ import annotations

import warnings

import numpy as np
import onnx
import onnx.helper as oh
import onnx_ir as ir
import onnxruntime as ort
import pytest

import greencc as gc
from greencc.data import CalibrationData
from greencc.errors import InputMismatchError, ModelLoadError, UsageError, VerificationError
from greencc.execution import Executor
from greencc.instruments.verify import UnverifiableError, VerifyInstrument
from greencc.pipeline.manager import PassManager
from greencc.targets.ort.cpu import OrtCpu
from greencc.verify.feeds import random_feeds
from tests.conformance.runner import LEVELS, run_level
from tests.conformance.suite import find_case

F, I64, STR = onnx.TensorProto.FLOAT, onnx.TensorProto.INT64, onnx.TensorProto.STRING


def _ort(model: onnx.ModelProto, feeds: dict) -> list:
    return ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, feeds)


@pytest.mark.parametrize(("name", "kind"), [
    ("test_PixelShuffle", "pytorch-converted"),
    ("test_operator_repeat", "pytorch-operator"),
    ("test_operator_repeat_dim_overflow", "pytorch-operator"),
    ("test_affine_grid_2d_expanded", "node"),
    ("test_affine_grid_2d_align_corners_expanded", "node"),
    ("test_sequence_map_extract_shapes_expanded", "node"),
    ("test_identity_sequence", "node"),  # a sequence input has no static shape to bind
    ("test_loop13_seq", "node"),  # sequence outputs compared tensor by tensor
    ("test_sequence_insert_at_back", "node"),
    ("test_sequence_model8", "simple"),  # an empty input: its 0-sized axis binds no dim
])
def test_backend_tests_that_greencc_broke_now_pass(name: str, kind: str) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        case = find_case(name, kind)
        outcomes = [run_level(case, level) for level in LEVELS]
    assert [(o.category, o.detail) for o in outcomes] == [("pass", "")] * len(LEVELS)


def test_folding_an_ir_version_3_model_keeps_it_valid() -> None:
    # IR 3 wants every initializer to be a graph input; folded constants are not inputs.
    a = oh.make_tensor("a", F, [3], [1.0, 2.0, 3.0])
    b = oh.make_tensor("b", F, [3], [4.0, 5.0, 6.0])
    graph = oh.make_graph(
        [oh.make_node("Constant", [], ["a"], value=a), oh.make_node("Constant", [], ["b"], value=b),
         oh.make_node("Mul", ["a", "b"], ["ab"]), oh.make_node("Add", ["x", "ab"], ["y"])], "g",
        [oh.make_tensor_value_info("x", F, [3])], [oh.make_tensor_value_info("y", F, [3])],
    )
    proto = oh.make_model(graph, opset_imports=[oh.make_opsetid("", 8)], ir_version=3)
    onnx.checker.check_model(proto)
    compiled = gc.compile(proto, "ort-cpu", "fold-constants")
    assert compiled.model.ir.ir_version >= 4
    assert "Mul" not in compiled.model.op_counts()
    onnx.checker.check_model(ir.to_proto(compiled.model.ir))
    x = np.array([1.0, -1.0, 0.5], np.float32)
    np.testing.assert_allclose(compiled({"x": x})["y"], x + np.array([4.0, 10.0, 18.0], np.float32))


def _sequence_model() -> onnx.ModelProto:
    """y = ConcatFromSequence(seq, axis=0) for a sequence of float tensors [?, 2]."""
    seq_type = oh.make_sequence_type_proto(oh.make_tensor_type_proto(F, ["n", 2]))
    graph = oh.make_graph(
        [oh.make_node("ConcatFromSequence", ["seq"], ["y"], axis=0)], "g",
        [oh.make_value_info("seq", seq_type)], [oh.make_tensor_value_info("y", F, ["m", 2])],
    )
    return oh.make_model(graph, opset_imports=[oh.make_opsetid("", 17)])


def test_sequence_feeds_are_checked_and_run() -> None:
    parts = [np.ones((1, 2), np.float32), np.full((3, 2), 2.0, np.float32)]
    compiled = gc.compile(_sequence_model(), "ort-cpu", "-O1", calibration=[{"seq": parts}])
    np.testing.assert_array_equal(compiled({"seq": parts})["y"], np.concatenate(parts))
    assert str(compiled.model.inputs[0]) == "seq: sequence<float32>"
    with pytest.raises(InputMismatchError, match="give a list of arrays"):
        compiled({"seq": np.ones((2, 2), np.float32)})
    with pytest.raises(InputMismatchError, match="dtype float64"):
        compiled({"seq": [np.ones((1, 2))]})
    with pytest.raises(InputMismatchError, match="ragged"):
        compiled({"seq": [[[1.0, 2.0], [3.0]]]})


def test_calibration_takes_sequences_and_refuses_ragged_lists() -> None:
    parts = [np.ones((1, 2), np.float32), np.ones((3, 2), np.float32)]
    data = CalibrationData.from_feeds([{"seq": parts}])
    assert data.check(gc.load(_sequence_model())) is data
    (feed,) = list(data)
    assert isinstance(feed["seq"], list) and len(feed["seq"]) == 2
    with pytest.raises(UsageError, match="ragged"):
        CalibrationData.from_feeds([{"x": [[1.0, 2.0], [3.0]]}])
    with pytest.raises(UsageError, match="sequence<float32>"):
        CalibrationData.from_feeds([{"seq": np.ones((2, 2), np.float32)}]).check(gc.load(_sequence_model()))


def test_sequence_inputs_get_generated_feeds() -> None:
    compiled = gc.compile(_sequence_model(), "ort-cpu", "-O1")
    feeds = random_feeds(gc.load(_sequence_model()))
    assert isinstance(feeds["seq"], list) and all(a.dtype == np.float32 for a in feeds["seq"])
    assert compiled(feeds)["y"].shape[1] == 2


def _model(nodes: list, inputs: list, outputs: list, initializers: list | None = None) -> onnx.ModelProto:
    graph = oh.make_graph(nodes, "g", inputs, outputs, initializer=initializers or [])
    return oh.make_model(graph, opset_imports=[oh.make_opsetid("", 18)])


def test_generated_feeds_are_valid_for_shape_axes_split_and_divisor_inputs() -> None:
    proto = _model(
        [
            oh.make_node("Reshape", ["x", "shape"], ["r"]),
            oh.make_node("ReduceSum", ["r", "axes"], ["s"], keepdims=1),
            oh.make_node("Split", ["x", "split"], ["p", "q"], axis=1),
            oh.make_node("Div", ["n", "d"], ["quotient"]),
            oh.make_node("Slice", ["x", "starts", "ends", "slice_axes"], ["sliced"]),
        ],
        [oh.make_tensor_value_info("x", F, [2, 6]), oh.make_tensor_value_info("shape", I64, [2]),
         oh.make_tensor_value_info("axes", I64, [1]), oh.make_tensor_value_info("split", I64, [2]),
         oh.make_tensor_value_info("n", I64, [8]), oh.make_tensor_value_info("d", I64, [8]),
         oh.make_tensor_value_info("starts", I64, [1]), oh.make_tensor_value_info("ends", I64, [1]),
         oh.make_tensor_value_info("slice_axes", I64, [1])],
        [oh.make_tensor_value_info(n, F, ["a", "b"]) for n in ("s", "p", "q", "sliced")]
        + [oh.make_tensor_value_info("quotient", I64, [8])],
    )
    model = gc.load(proto)
    feeds = random_feeds(model)
    assert (feeds["d"] != 0).all()
    _ort(proto, feeds)  # runs: every shape, axis and split input is valid
    gc.compile(proto, "ort-cpu", "-O1")  # verification runs on generated feeds


def test_generated_feeds_give_string_inputs_words() -> None:
    beta = oh.make_tensor("beta", STR, [1], [b"beta"])
    proto = _model(
        [oh.make_node("Concat", ["words", "beta"], ["more"], axis=0)],
        [oh.make_tensor_value_info("words", STR, [4])], [oh.make_tensor_value_info("more", STR, [5])],
        [beta],
    )
    feeds = random_feeds(gc.load(proto))
    assert feeds["words"].dtype == object and all(isinstance(w, str) for w in feeds["words"])
    compiled = gc.compile(proto, "ort-cpu", "-O1")
    words = np.array(["alpha", "gamma", "beta", "delta"], dtype=object)
    assert list(compiled({"words": words})["more"]) == [*words, "beta"]


def _opaque_shape_model() -> onnx.ModelProto:
    """Reshape(x, shape + 0): the shape input is read only through arithmetic, so no valid
    value can be guessed for it."""
    zero = oh.make_tensor("zero", I64, [2], [0, 0])
    return _model(
        [oh.make_node("Add", ["shape", "zero"], ["target"]), oh.make_node("Reshape", ["x", "target"], ["y"])],
        [oh.make_tensor_value_info("x", F, [2, 6]), oh.make_tensor_value_info("shape", I64, [2])],
        [oh.make_tensor_value_info("y", F, ["a", "b"])], [zero],
    )


def test_an_input_model_that_cannot_run_on_generated_feeds_asks_for_calibration() -> None:
    with pytest.raises(UnverifiableError) as info:
        gc.compile(_opaque_shape_model(), "ort-cpu", "-O1")
    message = str(info.value)
    assert "generated inputs" in message and "--calib" in message
    assert "onnxruntime failed" not in message.split(":")[0]
    assert info.value.exit_code == 2 and info.value.unverifiable
    good = {"x": np.ones((2, 6), np.float32), "shape": np.array([3, 4], np.int64)}
    compiled = gc.compile(_opaque_shape_model(), "ort-cpu", "-O1", calibration=[good])
    assert compiled(good)["y"].shape == (3, 4)


def test_an_input_model_that_cannot_run_on_the_calibration_data_says_so() -> None:
    bad = {"x": np.ones((2, 6), np.float32), "shape": np.array([5, 5], np.int64)}
    with pytest.raises(UnverifiableError, match="input model itself cannot run on the calibration data"):
        gc.compile(_opaque_shape_model(), "ort-cpu", "-O1", calibration=[bad])


@gc.register_pass("test-mark-fragile")
class MarkFragile(gc.Pass):
    """Marks the model 'fragile' (outputs unchanged) for the target below."""

    def call(self, model, ctx):
        model.ir.metadata_props["fragile"] = "1"
        return gc.PassResult(model, True)


class RefusesFragileWhenOptimizing(OrtCpu):
    """ort-cpu, except that with graph optimizations on it refuses a model marked fragile,
    as ONNX Runtime refused the AffineGrid expansion's Range once it optimized the graph."""

    name = "test-refuses-fragile-when-optimizing"

    def lower(self, model, ctx=None):
        if self.options["optimization"] != "disabled" and model.ir.metadata_props.get("fragile"):
            raise ModelLoadError("onnxruntime rejected the lowered model: fragile")
        return super().lower(model, ctx)


def _run_on(target: OrtCpu, pipeline: str, proto: onnx.ModelProto) -> None:
    ctx = gc.PassContext(target=target, executor=Executor(target), verify=True, instruments=[VerifyInstrument()])
    with ctx:
        PassManager(pipeline).run(gc.load(proto), ctx)


def test_verification_runs_the_model_as_the_target_loads_it() -> None:
    proto = _range_of_branch_model()
    target = RefusesFragileWhenOptimizing()
    with pytest.raises(VerificationError, match="fails when loaded as target .* loads it"):
        _run_on(target, "test-mark-fragile", proto)
    _run_on(OrtCpu(), "test-mark-fragile", proto)  # the check is about the target's form only


def _range_of_branch_model() -> onnx.ModelProto:
    """Range(0, If(Size(size) == 2, Split(size)[0], [1]), 1): as in ONNX's AffineGrid
    expansion, the limit is a [1] tensor computed in a branch."""
    def branch(name: str, node: onnx.NodeProto, output: str) -> onnx.GraphProto:
        return oh.make_graph([node], name, [], [oh.make_tensor_value_info(output, I64, [1])])

    then_branch = branch("then", oh.make_node("Split", ["size"], ["h", "w"], num_outputs=2), "h")
    else_branch = branch("else", oh.make_node("Identity", ["one_1d"], ["h1"]), "h1")
    constants = [oh.make_tensor("two", I64, [], [2]), oh.make_tensor("zero", I64, [], [0]),
                 oh.make_tensor("one", I64, [], [1]), oh.make_tensor("one_1d", I64, [1], [1])]
    return _model(
        [oh.make_node("Size", ["size"], ["rank"]), oh.make_node("Equal", ["rank", "two"], ["cond"]),
         oh.make_node("If", ["cond"], ["limit"], then_branch=then_branch, else_branch=else_branch),
         oh.make_node("Range", ["zero", "limit", "one"], ["r"])],
        [oh.make_tensor_value_info("size", I64, [2])], [oh.make_tensor_value_info("r", I64, ["n"])], constants,
    )


def test_simplify_shapes_gives_range_scalar_operands() -> None:
    proto = _range_of_branch_model()
    for level in LEVELS:
        compiled = gc.compile(proto, "ort-cpu", level)
        np.testing.assert_array_equal(compiled({"size": np.array([3, 5], np.int64)})["r"], np.arange(3))
