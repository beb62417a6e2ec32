"""What every fusion pass shares: the ledger counters, target awareness, provenance, the
``fuse`` group and ``-O2``; and the helpers the other ``test_fuse_*`` modules import.
"""

from __future__ import annotations

import numpy as np
import onnx
import onnx_ir as ir
from hypothesis import HealthCheck, settings

import greencc as gc
import greencc.passes.fusion  # noqa: F401 - registers the fusion passes
from greencc.ir.meta import REPLACED_KEY
from greencc.pipeline.base import PassResult, get_pass_class
from greencc.pipeline.context import PassContext
from greencc.pipeline.text import Pipeline
from greencc.verify.feeds import random_feeds as model_feeds
from tests.helpers import model_from_text, random_feeds, run_ort
from tests.passes.strategies import fingerprint

# Fused kernels evaluate the same formula in another order: float32 rounding only.
RTOL = 2e-5
ATOL = 2e-5

FUSION_PROPERTY_SETTINGS = settings(
    max_examples=20,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    derandomize=True,
)


def run_fusion(
    model: gc.Model, name: str, *, target: str | None = "ort-cpu", dims: dict | None = None, **options: object
) -> tuple[PassResult, PassContext]:
    """Run pass ``name`` on ``model`` in a fresh context for ``target``."""
    ctx = PassContext(target=target, dims=dims)
    with ctx:
        result = get_pass_class(name)(**options).call(model, ctx)
    return result, ctx


def reasons(ctx: PassContext, name: str) -> list[str]:
    """The near-miss reasons pass ``name`` recorded."""
    return [m.reason for m in ctx.near_misses if m.pass_name == name]


def ops(model: gc.Model) -> list[str]:
    """Op types of the main graph in order, contrib ops as ``ms::Op``."""
    return [("ms::" if n.domain == "com.microsoft" else "") + n.op_type for n in model.graph]


def assert_close(expected: list[np.ndarray], actual: list[np.ndarray]) -> None:
    """Outputs equal up to float32 rounding."""
    assert len(expected) == len(actual)
    for want, got in zip(expected, actual, strict=True):
        assert want.shape == got.shape and want.dtype == got.dtype
        np.testing.assert_allclose(got, want, rtol=RTOL, atol=ATOL)


def check_fusion(
    proto: onnx.ModelProto, name: str, *, dims: dict | None = None, seeds: tuple[int, ...] = (7, 8)
) -> PassResult:
    """Property of an exact fusion on ``proto``: checker passes, signature kept, ONNX
    Runtime gives the original's outputs on fresh random inputs, and a second run
    changes nothing."""
    model = gc.load(proto)
    feeds = [model_feeds(model, seed=s, dims=dims) for s in seeds]
    expected = [run_ort(proto, f) for f in feeds]
    inputs = [v.name for v in model.graph.inputs]
    outputs = [v.name for v in model.graph.outputs]
    result, _ = run_fusion(model, name)
    onnx.checker.check_model(ir.to_proto(model.ir), full_check=False)
    assert [v.name for v in model.graph.inputs] == inputs
    assert [v.name for v in model.graph.outputs] == outputs
    for f, want in zip(feeds, expected, strict=True):
        assert_close(want, run_ort(model, f))
    before = fingerprint(model)
    again, _ = run_fusion(model, name)
    assert again.modified is False, again.stats
    assert fingerprint(model) == before
    return result


# ----------------------------------------------------------------------------- the tests
CONV_WEIGHTS = ", ".join(str(v) for v in np.linspace(-1, 1, 54).round(3))
CONV_RELU = f"""
<ir_version: 10, opset_import: ["" : 17]>
g (float[N, 2, 5, 5] x) => (float[N, 3, 5, 5] y)
<float[3, 2, 3, 3] w = {{{CONV_WEIGHTS}}}, float[3] b = {{0.1, -0.2, 0.3}}>
{{
  c = Conv<pads = [1, 1, 1, 1]>(x, w, b)
  y = Relu(c)
}}
"""


def test_stats_count_fused_sites_and_the_bytes_of_removed_activations():
    model = model_from_text(CONV_RELU)
    result, _ = run_fusion(model, "fuse-activation", dims={"N": 4})
    # The Conv output (4·3·5·5 float32) is no longer written once and read once.
    assert result.stats == {"fused": 1, "activation_bytes_removed": 2 * 4 * 3 * 5 * 5 * 4}


def test_bytes_of_symbolic_shapes_count_only_when_bound():
    model = model_from_text(CONV_RELU)
    result, _ = run_fusion(model, "fuse-activation")
    assert result.stats == {"fused": 1, "activation_bytes_removed": 0}


def test_contrib_fusions_decline_without_a_target_and_say_why():
    model = model_from_text(CONV_RELU)
    before = fingerprint(model)
    result, ctx = run_fusion(model, "fuse-activation", target=None)
    assert result.modified is False and fingerprint(model) == before
    assert reasons(ctx, "fuse-activation") == [
        "no target is set, so com.microsoft::FusedConv is not known to run anywhere (give -t TARGET)"
    ]


def test_contrib_fusions_decline_on_a_target_without_the_op():
    from greencc.target import Target

    class NoContrib(Target):
        """A target running standard ONNX only."""

    model = model_from_text(CONV_RELU)
    ctx = PassContext()
    ctx.target = NoContrib()
    with ctx:
        result = get_pass_class("fuse-activation")().call(model, ctx)
    assert result.modified is False
    assert reasons(ctx, "fuse-activation") == ["target '' does not run com.microsoft::FusedConv"]


def test_fused_nodes_carry_the_provenance_of_what_they_replace():
    model = model_from_text(CONV_RELU)
    conv, relu = list(model.graph)
    conv.name, relu.name = "/net/conv1/Conv", "/net/act/Relu"
    conv.metadata_props["pkg.torch.onnx.stack_trace"] = "model.py:12"
    run_fusion(model, "fuse-activation")
    (fused,) = list(model.graph)
    assert fused.name == "/net/conv1/FusedConv"
    assert fused.metadata_props["pkg.torch.onnx.stack_trace"] == "model.py:12"
    assert fused.metadata_props[REPLACED_KEY] == '["/net/conv1/Conv", "/net/act/Relu"]'


def test_fuse_group_runs_every_fusion_and_o2_is_cleanup_fuse_dce():
    members = [spec.name for spec in Pipeline.parse(get_pass_class("fuse").members)]
    assert members == [
        "fold-batchnorm", "fold-conv-scale", "fold-conv-bias", "fold-pad", "fuse-layernorm",
        "fuse-gelu", "fuse-rmsnorm", "fuse-rotary", "fuse-decoder-attention", "past-shape-from-mask", "fuse-attention",
        "fuse-embed-layernorm", "fuse-skip-layernorm", "fuse-skip-rmsnorm",
        "fuse-bias-gelu", "fuse-matmul-add", "fuse-activation",
    ]
    assert str(Pipeline.parse("-O2")) == "cleanup,fuse,dce"


def test_every_fusion_pass_is_exact_and_documented():
    for name in [spec.name for spec in Pipeline.parse(get_pass_class("fuse").members)] + ["fuse"]:
        cls = get_pass_class(name)
        assert cls.lossy is False
        assert cls.option_specs == {}, name  # no options: pipelines name them bare
        assert "->" in (cls.__doc__ or "").splitlines()[0], name


def test_o2_compiles_a_cnn_for_ort_cpu_with_fused_ops():
    model = model_from_text(CONV_RELU)
    feeds = random_feeds(model, seed=3, dims={"N": 2})
    compiled = gc.compile(model, "ort-cpu", "cleanup,fuse,dce", dims={"N": 2}, threads=1)
    assert ops(compiled.model) == ["ms::FusedConv"]
    np.testing.assert_allclose(
        compiled(feeds)[compiled.model.outputs[0].name], run_ort(model, feeds)[0], rtol=RTOL, atol=ATOL
    )
    row = next(r for r in compiled.report.rows if r.name == "fuse")
    assert row.stats["fuse-activation.fused"] == 1
    assert row.stats["fuse-activation.activation_bytes_removed"] == 2 * 2 * 3 * 5 * 5 * 4
