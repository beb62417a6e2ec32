"""The executor: results equal ONNX Runtime's, intermediates, the session cache per model
version (reuse, never stale), session options by purpose, a custom backend serving a whole
pipeline, and the verification reference run once per compile."""

from __future__ import annotations

import warnings
from typing import Any, ClassVar

import numpy as np
import onnx
import onnx_ir as ir
import onnxruntime as ort
import pytest

import greencc as gc
import greencc.target.registry as target_api
from greencc.errors import UsageError
from greencc.execution import Executor, model_version
from greencc.instruments.verify import VerifyInstrument
from greencc.pipeline.context import PassContext
from greencc.pipeline.manager import PassManager
from greencc.target import (
    CompiledModel,
    Target,
    register_target,
    registered_targets,
    resolve_target,
)
from greencc.targets.ort.cpu import OrtCpu
from tests import helpers, models

PIPELINE = "prune-heads{budget=0.5},quantize-int8{fallback=sensitivity}"


def _weighted() -> gc.Model:
    return gc.load(models.weighted_model_proto())


def _feeds(seed: int = 0) -> dict[str, np.ndarray]:
    return {"x": np.random.default_rng(seed).standard_normal((3, 16)).astype(np.float32)}


def _intermediates_by_ort(model: gc.Model, names: list[str], feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    """``names`` computed by an independent route: ONNX shape inference, then a session
    whose outputs are those values."""
    proto = onnx.shape_inference.infer_shapes(gc.ir.to_self_contained_proto(model.ir))
    infos = {vi.name: vi for vi in proto.graph.value_info}
    del proto.graph.output[:]
    proto.graph.output.extend(infos[name] for name in names)
    return helpers.run_ort(proto, feeds)


# -- results --------------------------------------------------------------------------------

@pytest.mark.parametrize("purpose", ["reference", "scoring", "deployment"])
def test_results_equal_onnx_runtime(purpose):
    model = _weighted()
    feeds = _feeds()
    got = Executor().run(model, feeds, purpose=purpose)
    np.testing.assert_allclose(got["y"], helpers.run_ort(model, feeds)[0], rtol=1e-5, atol=1e-5)
    assert list(got) == ["y"]


def test_reference_runs_are_bit_exact_with_onnx_runtime():
    model = _weighted()
    feeds = _feeds(1)
    np.testing.assert_array_equal(Executor().run(model, feeds)["y"], helpers.run_ort(model, feeds)[0])


def test_intermediates_are_returned_by_name():
    model = _weighted()
    feeds = _feeds(2)
    names = ["hb", "h", "r"]  # untyped in the model: the executor infers their dtypes
    got = Executor().run(model, feeds, outputs=[*names, "y", "x"])
    assert list(got) == [*names, "y", "x"]
    for name, expected in zip(names, _intermediates_by_ort(model, names, feeds), strict=True):
        np.testing.assert_array_equal(got[name], expected)
    np.testing.assert_array_equal(got["x"], feeds["x"])
    assert [v.name for v in model.graph.outputs] == ["y"]  # the model itself is not touched


def test_unknown_tensor_fails_with_the_closest_names():
    with pytest.raises(UsageError, match="tensor 'hbb' is not an input or node output") as info:
        Executor().runner(_weighted(), outputs=["hbb"])
    assert "hb" in info.value.hint


def test_unknown_purpose_is_refused():
    with pytest.raises(UsageError, match="unknown execution purpose 'fast'"):
        Executor().runner(_weighted(), purpose="fast")  # type: ignore[arg-type]


# -- the session cache ------------------------------------------------------------------------

class _LoweringCounter:
    def __init__(self) -> None:
        self.calls = 0


@pytest.fixture
def lowerings(monkeypatch):
    """Counts every ort-cpu lowering in the process."""
    counter = _LoweringCounter()
    original = OrtCpu.lower

    def lower(self, model, ctx=None):
        counter.calls += 1
        return original(self, model, ctx)

    monkeypatch.setattr(OrtCpu, "lower", lower)
    return counter


def test_an_unchanged_model_reuses_its_session(lowerings):
    executor = Executor()
    model = _weighted()
    runner = executor.runner(model)
    assert executor.runner(model) is runner
    assert executor.runner(model.clone()) is runner  # a clone is the same version
    assert executor.runner(model, outputs=["r"]) is not runner  # other outputs: another session
    assert executor.runner(model, purpose="scoring") is not runner  # other options: another session
    assert lowerings.calls == 3
    for _ in range(3):
        executor.run(model, _feeds())
    assert lowerings.calls == 3


def test_the_cache_keeps_at_most_cache_size_sessions(lowerings):
    executor = Executor(cache_size=1)
    first, second = _weighted(), gc.load(models.weighted_model_proto(seed=1))
    executor.runner(first)
    executor.runner(second)
    executor.runner(first)  # evicted by the second model
    assert lowerings.calls == 3


def _replace_weight(model: gc.Model) -> None:
    w2 = model.graph.initializers["W2"]
    w2.const_value = ir.tensor(np.asarray(w2.const_value.numpy()) * 2.0)


def _rewire(model: gc.Model) -> None:
    mm2 = next(n for n in model.graph if n.name == "mm2")
    hb = next(n for n in model.graph if n.name == "bias").outputs[0]
    mm2.replace_input_with(0, hb)  # skip the Relu


def _change_attribute(model: gc.Model) -> None:
    relu = next(n for n in model.graph if n.name == "relu")
    relu.op_type = "LeakyRelu"
    relu.attributes["alpha"] = ir.AttrFloat32("alpha", 0.5)


def _new_bias_object(model: gc.Model) -> None:
    # The same numbers in a new tensor: a new version (tensor identity), never a stale one.
    b = model.graph.initializers["b"]
    b.const_value = ir.tensor(np.array(b.const_value.numpy()))


@pytest.mark.parametrize("change", [_replace_weight, _rewire, _change_attribute, _new_bias_object])
def test_no_stale_session_after_an_in_place_change(change):
    executor = Executor()
    model = _weighted()
    feeds = _feeds(3)
    before = executor.runner(model)
    np.testing.assert_array_equal(before(feeds)["y"], helpers.run_ort(model, feeds)[0])
    version = model_version(model)
    change(model)
    assert model_version(model) != version
    after = executor.runner(model)
    assert after is not before
    np.testing.assert_array_equal(after(feeds)["y"], helpers.run_ort(model, feeds)[0])


def test_a_change_inside_a_subgraph_is_a_new_version():
    model = gc.load(models.if_model_proto())
    version = model_version(model)
    assert model_version(model.clone()) == version
    if_node = next(n for n in model.graph if n.op_type == "If")
    then_graph = if_node.attributes["then_branch"].value
    bias = then_graph.initializers["bias"]
    bias.const_value = ir.tensor(np.array([9.0, 9.0, 9.0], np.float32))
    assert model_version(model) != version
    feeds = {"x": np.ones((2, 3), np.float32)}
    np.testing.assert_array_equal(Executor().run(model, feeds)["y"], helpers.run_ort(model, feeds)[0])


def test_graph_output_order_and_value_names_are_part_of_the_version():
    model = _weighted()
    version = model_version(model)
    next(n for n in model.graph if n.name == "relu").outputs[0].name = "relu_out"
    assert model_version(model) != version


# -- options by purpose -------------------------------------------------------------------------

def test_session_options_follow_the_purpose_and_threads_are_honoured():
    executor = Executor(threads=2)
    model = _weighted()
    levels = ort.GraphOptimizationLevel

    reference = executor.runner(model).compiled.session_options
    assert (reference.intra_op_num_threads, reference.graph_optimization_level) == (1, levels.ORT_DISABLE_ALL)
    scoring = executor.runner(model, purpose="scoring").compiled.session_options
    assert scoring.graph_optimization_level == levels.ORT_ENABLE_BASIC
    deployment = executor.runner(model, purpose="deployment").compiled.session_options
    assert (deployment.intra_op_num_threads, deployment.graph_optimization_level) == (2, levels.ORT_ENABLE_ALL)
    overridden = executor.runner(model, threads=3).compiled.session_options
    assert (overridden.intra_op_num_threads, overridden.graph_optimization_level) == (3, levels.ORT_DISABLE_ALL)


def test_a_compile_for_ort_cpu_deploys_on_its_thread_count():
    assert Executor.for_compile(resolve_target("ort-cpu", threads=3)).threads == 3
    assert Executor.for_compile(None).threads == 1
    assert PassContext(target=resolve_target("ort-cpu", threads=2)).executor.threads == 2
    with pytest.raises(UsageError, match="threads=0"):
        Executor(threads=0)


# -- a custom backend serves a whole pipeline ---------------------------------------------------

class _CountedModel(CompiledModel):
    """ort-cpu's compiled model, counting its runs."""

    def __init__(self, inner: CompiledModel, runs: list[dict[str, Any]]) -> None:
        super().__init__("counting-ort", inner.model, options=inner.options)
        self.inner = inner
        self.runs = runs

    def _run(self, arrays: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        self.runs.append(self.options)
        return self.inner._run(arrays)


class CountingOrt(Target):
    """ort-cpu behind counters: every lowering and every run, with the options used."""

    default_options: ClassVar[dict[str, Any]] = {"threads": None, "optimization": "all"}
    compiled_model_class = CompiledModel
    lowered: ClassVar[list[dict[str, Any]]] = []
    runs: ClassVar[list[dict[str, Any]]] = []

    def capability(self, model):
        return OrtCpu().capability(model)

    def lower(self, model, ctx=None):
        inner = OrtCpu(**self.options).lower(model, ctx)
        CountingOrt.lowered.append(inner.options)
        return _CountedModel(inner, CountingOrt.runs)


@pytest.fixture
def counting_backend(monkeypatch):
    """``counting-ort`` registered in a private copy of the target registry."""
    registered_targets()
    monkeypatch.setattr(target_api, "_TARGETS", dict(target_api._TARGETS))
    monkeypatch.setattr(CountingOrt, "lowered", [])
    monkeypatch.setattr(CountingOrt, "runs", [])
    register_target("counting-ort")(CountingOrt)
    return CountingOrt


def test_verification_and_lossy_scoring_run_on_the_executors_backend(counting_backend, lowerings):
    model = models.tiny_bert_model()
    executor = Executor("counting-ort")
    ctx = PassContext(target="ort-cpu", budget="cos=0.5", dims=models.TINY_BERT_DIMS,
                      instruments=[VerifyInstrument()], executor=executor)
    manager = PassManager(PIPELINE)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no rollback
        with ctx:
            manager.run(model, ctx)
    prune, int8 = manager.records
    # prune-heads removes heads; quantize-int8 scores every layer, then keeps the tiny
    # model's layers in float (int8 would cost more energy than it saves).
    assert prune.modified and "sensitivity.min_cosine_all_int8" in int8.stats
    assert lowerings.calls == len(counting_backend.lowered)  # no pass built a session of its own
    levels = [options["optimization"] for options in counting_backend.lowered]
    assert levels.count("disabled") == 2  # verification: the input and after prune-heads
    assert "basic" in levels  # prune-heads' scoring
    assert "all" in levels  # quantize-int8's sensitivity scoring
    assert all(o["threads"] == 1 for o in counting_backend.lowered if o["optimization"] in ("disabled", "all"))


def test_the_reference_runs_once_per_compile(monkeypatch):
    model = models.tiny_bert_model()
    original = ir.to_proto(model.ir).SerializeToString()
    reference_runs: list[int] = []
    lower = OrtCpu.lower

    def recording(self, lowered, ctx=None):
        compiled = lower(self, lowered, ctx)
        if ir.to_proto(lowered.ir).SerializeToString() == original:
            reference_runs.append(0)
            compiled._run = _counting(compiled._run, reference_runs, len(reference_runs) - 1)
        return compiled

    monkeypatch.setattr(OrtCpu, "lower", recording)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        compiled = gc.compile(model, "ort-cpu", PIPELINE, budget="cos=0.5", dims=models.TINY_BERT_DIMS)
    prune, int8 = compiled.report.rows[1:]
    assert prune.modified and "sensitivity.min_cosine_all_int8" in int8.stats  # both read the reference
    assert reference_runs == [2]  # one session of the input model, run once per verification sample


def _counting(run: Any, counts: list[int], index: int) -> Any:
    def counted(arrays: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        counts[index] += 1
        return run(arrays)

    return counted
