"""The ort-cpu target: capability, lowering, running, input checks, options, benchmark."""

from __future__ import annotations

import os

import numpy as np
import onnxruntime as ort
import pytest

import greencc as gc
from greencc.target import UNSUPPORTED, resolve_target
from greencc.targets.ort import cpu as ort_cpu
from greencc.targets.ort.cpu import OrtCompiledModel, unsupported_reason
from tests.helpers import model_from_text, run_ort

MLP = """<ir_version: 10, opset_import: ["" : 17]>
mlp (float[N, 4] x, float[N, 3] bias) => (float[N, 3] y, float[N] total)
<float[4, 3] w = {0.5, -1.0, 2.0, 0.25, 1.5, -0.75, 1.0, 0.0, -2.0, 3.0, 0.125, -0.5},
 int64[1] axes = {1}> {
  [mm] h = MatMul(x, w)
  [add] a = Add(h, bias)
  [relu] y = Relu(a)
  [sum] total = ReduceSum<keepdims = 0>(y, axes)
}"""

STATIC = """<ir_version: 10, opset_import: ["" : 17]>
static (float[2, 4] x) => (float[2, 4] y) {
  y = Relu(x)
}"""

FROBNICATE = """<ir_version: 10, opset_import: ["" : 17, "com.example" : 1]>
frob_model (float[2] x) => (float[2] y) {
  [relu_in] a = Relu(x)
  [frob] b = com.example.Frobnicate(a)
  [relu_out] y = Relu(b)
}"""

TWO_DIMS = """<ir_version: 10, opset_import: ["" : 17]>
two (float[N, 4] x, float[M, 4] y) => (float[N, 4] z) {
  z = Add(x, y)
}"""


@pytest.fixture
def target() -> gc.Target:
    return resolve_target("ort-cpu", threads=1)


def _mlp_feeds(batch: int = 3, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {
        "x": rng.standard_normal((batch, 4)).astype(np.float32),
        "bias": rng.standard_normal((batch, 3)).astype(np.float32),
    }


def test_lowered_model_matches_onnxruntime_run_directly(target):
    model = model_from_text(MLP)
    compiled = target.lower(model)
    assert isinstance(compiled, OrtCompiledModel)
    for batch, seed in ((1, 0), (5, 1)):
        feeds = _mlp_feeds(batch, seed)
        outputs = compiled(feeds)
        expected = run_ort(model, feeds)
        assert list(outputs) == ["y", "total"]
        np.testing.assert_allclose(outputs["y"], expected[0], rtol=1e-6, atol=1e-6)
        np.testing.assert_allclose(outputs["total"], expected[1], rtol=1e-6, atol=1e-6)
    assert compiled.run(feeds).keys() == outputs.keys()


def test_lower_leaves_the_input_model_alone(target):
    model = model_from_text(MLP)
    before = [(n.name, n.op_type) for n in model.graph]
    compiled = target.lower(model)
    assert compiled.model is not model
    assert [(n.name, n.op_type) for n in model.graph] == before
    assert compiled.target == "ort-cpu"
    assert compiled.profile_name == target.selected_profile_name


def test_contrib_op_lowers_and_runs(target):
    model = model_from_text(
        """<ir_version: 10, opset_import: ["" : 17, "com.microsoft" : 1]>
        g (float[2, 3] x) => (float[2, 3] y) { [gelu] y = com.microsoft.Gelu(x) }"""
    )
    assert [p.target for p in target.capability(model)] == ["ort-cpu"]
    x = np.linspace(-2, 2, 6, dtype=np.float32).reshape(2, 3)
    np.testing.assert_allclose(target.lower(model)({"x": x})["y"], run_ort(model, {"x": x})[0])


@pytest.mark.parametrize(
    ("feeds", "fragment"),
    [
        ({"x": np.zeros((2, 4), np.float32), "bogus": np.zeros(1)}, "unknown input"),
        ({"x": np.zeros((2, 4), np.float32)}, "missing input"),
        ({"x": np.zeros((2, 4), np.float64), "bias": np.zeros((2, 3), np.float32)}, "dtype"),
        ({"x": np.zeros((2, 4, 1), np.float32), "bias": np.zeros((2, 3), np.float32)}, "shape"),
        ({"x": np.zeros((2, 5), np.float32), "bias": np.zeros((2, 3), np.float32)}, "shape"),
        # N is 2 in x and 3 in bias: symbolic dims shared by inputs must agree.
        ({"x": np.zeros((2, 4), np.float32), "bias": np.zeros((3, 3), np.float32)}, "dim 'N'"),
    ],
    ids=["wrong-name", "missing", "wrong-dtype", "wrong-rank", "wrong-static-dim", "symbolic-disagree"],
)
def test_bad_feeds_raise_input_mismatch(target, feeds, fragment):
    compiled = target.lower(model_from_text(MLP))
    with pytest.raises(gc.InputMismatchError, match=fragment):
        compiled(feeds)


def test_static_dim_mismatch_is_caught_before_onnxruntime(target):
    compiled = target.lower(model_from_text(STATIC))
    with pytest.raises(gc.InputMismatchError, match=r"\[3, 4\]"):
        compiled({"x": np.zeros((3, 4), np.float32)})


def test_shape_error_reported_by_onnxruntime_becomes_input_mismatch(target):
    # N and M are distinct symbols, so only ONNX Runtime sees that 2 cannot broadcast to 3.
    compiled = target.lower(model_from_text(TWO_DIMS))
    ok = compiled({"x": np.ones((2, 4), np.float32), "y": np.ones((1, 4), np.float32)})
    np.testing.assert_array_equal(ok["z"], np.full((2, 4), 2, np.float32))
    with pytest.raises(gc.InputMismatchError, match="broadcast"):
        compiled({"x": np.ones((2, 4), np.float32), "y": np.ones((3, 4), np.float32)})


def test_unknown_domain_op_is_rejected_at_lower_naming_op_domain_and_node(target):
    model = model_from_text(FROBNICATE)
    with pytest.raises(gc.UnsupportedOpError) as info:
        target.lower(model)
    message = str(info.value)
    assert "unsupported op 'Frobnicate' in domain 'com.example' at node frob" in message
    assert info.value.hint


def test_unsupported_op_inside_a_subgraph_names_both_nodes(target):
    model = model_from_text(
        """<ir_version: 10, opset_import: ["" : 17, "com.example" : 1]>
        g (bool c, float[2] x) => (float[2] y) {
          [branch] y = If(c) <
            then_branch = g1 () => (float[2] t) { [inner_frob] t = com.example.Frobnicate(x) },
            else_branch = g2 () => (float[2] e) { e = Relu(x) }>
        }"""
    )
    partitions = target.capability(model)
    assert [(p.target, p.nodes) for p in partitions] == [(UNSUPPORTED, ["branch"])]
    with pytest.raises(gc.UnsupportedOpError, match="at node inner_frob .* inside branch"):
        target.lower(model)


def test_capability_partitions_runs_of_claimed_and_unsupported_nodes(target):
    partitions = target.capability(model_from_text(FROBNICATE))
    assert [(p.target, p.nodes, p.claimed) for p in partitions] == [
        ("ort-cpu", ["relu_in"], True),
        (UNSUPPORTED, ["frob"], False),
        ("ort-cpu", ["relu_out"], True),
    ]
    assert "com.example" in partitions[1].reason and partitions[0].reason == ""
    whole = target.capability(model_from_text(MLP))
    assert [(p.target, p.nodes) for p in whole] == [("ort-cpu", ["mm", "add", "relu", "sum"])]


def test_unnamed_nodes_get_distinct_ids(target):
    model = model_from_text(
        """<ir_version: 10, opset_import: ["" : 17]>
        g (float[2] x) => (float[2] y) { a = Relu(x)  y = Relu(a) }"""
    )
    (partition,) = target.capability(model)
    assert partition.nodes == ["<Relu#0>", "<Relu#1>"]


def test_unsupported_reason_uses_opsets_and_onnxruntime_kernels():
    assert unsupported_reason("", "Gelu", 20) == ""
    assert "not an op" in unsupported_reason("", "Gelu", 17)  # Gelu entered ONNX at opset 20
    assert unsupported_reason("", "Relu", 13) == ""
    assert unsupported_reason("ai.onnx", "Relu", 13) == ""
    assert unsupported_reason("com.microsoft", "Attention", 1) == ""
    assert "no CPU kernel for com.microsoft::NoSuchOp" in unsupported_reason(
        "com.microsoft", "NoSuchOp", 1
    )
    assert "no ops in domain 'com.example'" in unsupported_reason("com.example", "Frobnicate", 1)


def test_supported_fused_ops_and_legalize(target):
    fused = target.supported_fused_ops()
    assert {"com.microsoft::Attention", "com.microsoft::SkipLayerNormalization"} <= fused
    assert all(op.startswith("com.microsoft::") for op in fused - {"ai.onnx::SimplifiedLayerNormalization"})
    assert target.legalize() == []


def test_threads_and_optimization_options_reach_the_session():
    model = model_from_text(MLP)
    compiled = resolve_target("ort-cpu", threads=1, optimization="disabled").lower(model)
    options = compiled.session.get_session_options()
    assert options.intra_op_num_threads == 1
    assert options.inter_op_num_threads == 1
    assert options.execution_mode == ort.ExecutionMode.ORT_SEQUENTIAL
    assert options.graph_optimization_level == ort.GraphOptimizationLevel.ORT_DISABLE_ALL

    compiled = resolve_target("ort-cpu", threads=2, optimization="basic").lower(model)
    options = compiled.session.get_session_options()
    assert options.intra_op_num_threads == 2
    assert options.graph_optimization_level == ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    assert compiled.options == {"threads": 2, "optimization": "basic"}


def test_default_options():
    target = resolve_target("ort-cpu")
    assert target.options == {"threads": os.cpu_count() or 1, "optimization": "all"}
    assert resolve_target("ort-cpu", threads="3").options["threads"] == 3


@pytest.mark.parametrize(
    ("options", "fragment"),
    [
        ({"threads": 0}, "threads=0"),
        ({"threads": 1.5}, "threads=1.5"),
        ({"threads": "many"}, "threads='many'"),
        ({"optimization": "max"}, "optimization='max'"),
        ({"thread": 2}, "no option 'thread'"),
    ],
)
def test_bad_options_raise_usage_error(options, fragment):
    with pytest.raises(gc.UsageError, match=fragment):
        resolve_target("ort-cpu", **options)


def test_unavailable_onnxruntime_is_reported_not_raised(monkeypatch):
    monkeypatch.setattr(ort, "get_available_providers", lambda: ["SomethingElse"])
    target = resolve_target("ort-cpu", threads=1)
    availability = target.available()
    assert not availability and availability.ok is False
    assert "CPU provider" in availability.reason
    with pytest.raises(gc.TargetUnavailableError, match="not available"):
        target.lower(model_from_text(STATIC))


def test_large_or_external_weights_build_the_session_from_a_file(target, monkeypatch):
    monkeypatch.setattr(ort_cpu, "INLINE_WEIGHTS_LIMIT_BYTES", 0)
    model = model_from_text(MLP)
    compiled = target.lower(model)
    assert compiled._workdir is not None
    assert os.path.isfile(os.path.join(compiled._workdir.name, "model.onnx"))
    feeds = _mlp_feeds()
    np.testing.assert_allclose(compiled(feeds)["y"], run_ort(model, feeds)[0], rtol=1e-6)


def test_benchmark_records_repeats_and_threads(target):
    compiled = target.lower(model_from_text(MLP))
    stats = compiled.benchmark(warmup=1, repeats=7)
    assert stats.repeats == 7 and stats.warmup == 1 and stats.threads == 1
    assert 0 < stats.min_ms <= stats.median_ms <= stats.max_ms

    other = compiled.benchmark(_mlp_feeds(), warmup=0, repeats=3, threads=2)
    assert other.threads == 2
    # Benchmarking with other threads builds a separate session; this one is unchanged.
    assert compiled.session.get_session_options().intra_op_num_threads == 1
    with pytest.raises(gc.InputMismatchError):
        compiled.benchmark({"x": np.zeros((2, 4), np.float32)}, repeats=1)
