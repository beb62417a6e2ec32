"""PassManager: order, steps, analyses invalidation, verification, rollback, failures and
reproducers, instruments."""

import json
import warnings

import numpy as np
import pytest

import greencc as gc
from greencc import ir
from greencc.driver import replay
from greencc.errors import PassFailedError
from greencc.instruments.verify import VerifyInstrument
from greencc.pipeline.instruments import Instrument, PrintIRInstrument, TimingInstrument
from greencc.verify.fidelity import FidelityBudget
from tests.helpers import model_from_text

TEXT = """<ir_version: 10, opset_import: ["" : 17]>
g (float[2, 4] x) => (float[2, 4] y) <float[4] w = {-1.0, 0.5, -2.0, 1.0}> {
  a = Add(x, w)
  b = Relu(a)
  y = Tanh(b)
}"""


def _ctx(**kw):
    return gc.PassContext(verify=True, instruments=[VerifyInstrument()], **kw)


@gc.register_pass("test-relu-to-identity-bug")
class ReluToIdentityBug(gc.Pass):
    """Relu -> Identity (wrong on purpose: a buggy exact pass)."""

    def call(self, model, ctx):
        for node in model.graph:
            if node.op_type == "Relu":
                node.op_type = "Identity"
                return gc.PassResult(model, True)
        return gc.PassResult(model, False)


@gc.register_pass("test-scale-weights", lossy=False)
class ScaleWeights(gc.Pass):
    """w -> w * factor (lossy by design, for rollback tests)."""

    lossy = True
    factor: float = 1.001

    def call(self, model, ctx):
        value = model.graph.initializers["w"]
        value.const_value = ir.Tensor(value.const_value.numpy() * np.float32(self.factor), name="w")
        return gc.PassResult(model, True)


@gc.register_pass("test-count-down")
class CountDown(gc.Pass):
    """Removes one Tanh/Relu per run, to test steps=N (exact only on positive inputs... not verified)."""

    def call(self, model, ctx):
        ctx.analysis("test-node-count", model)
        return gc.PassResult(model, False)


@gc.register_pass("test-raises")
class Raises(gc.Pass):
    """Raises a PassError on a named node."""

    def call(self, model, ctx):
        raise gc.PassError("cannot handle this", node="b (Relu)")


def test_input_model_is_not_modified_and_result_verified():
    model = model_from_text(TEXT)
    ctx = _ctx()
    with pytest.raises(PassFailedError) as info:
        gc.PassManager("test-relu-to-identity-bug").run(model, ctx)
    assert [n.op_type for n in model.graph] == ["Add", "Relu", "Tanh"]
    error = info.value
    assert error.pass_name == "test-relu-to-identity-bug"
    assert "changed the model's outputs" in error.message
    assert error.node is not None and "Relu" in error.node or "Identity" in error.node


def test_failure_names_previous_passes_and_node_and_writes_reproducer(tmp_path):
    model = model_from_text(TEXT)
    ctx = gc.PassContext(reproducer_dir=tmp_path)
    with pytest.raises(PassFailedError) as info:
        gc.PassManager("test-typed-options{count=2},test-raises").run(model, ctx)
    error = info.value
    assert error.previous == ["test-typed-options{count=2}"]
    assert "b (Relu)" in error.message and "after [test-typed-options{count=2}]" in error.message
    repro = tmp_path / error.reproducer.split("/")[-1]
    assert (repro / "pipeline.txt").read_text().strip() == "test-typed-options{count=2},test-raises"
    assert json.loads((repro / "options.json").read_text())["seed"] == 0
    with pytest.raises(PassFailedError):
        replay(repro)


def test_lossy_pass_rolled_back_when_over_budget():
    model = model_from_text(TEXT)
    ctx = _ctx(budget=FidelityBudget(max_abs_error=1e-6))
    manager = gc.PassManager("test-scale-weights{factor=1.5}")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        out = manager.run(model, ctx)
    assert manager.records[0].rolled_back is not None
    assert any("rolled back" in str(w.message) for w in caught)
    np.testing.assert_array_equal(out.graph.initializers["w"].const_value.numpy(), [-1.0, 0.5, -2.0, 1.0])


def test_lossy_pass_kept_within_budget():
    model = model_from_text(TEXT)
    ctx = _ctx(budget=FidelityBudget(min_cosine=0.99))
    manager = gc.PassManager("test-scale-weights{factor=1.001}")
    out = manager.run(model, ctx)
    assert manager.records[0].rolled_back is None
    assert manager.records[0].fidelity.cosine_min > 0.99
    assert out.graph.initializers["w"].const_value.numpy()[0] == pytest.approx(-1.001)


def test_steps_repeat_until_unmodified():
    calls = []

    @gc.register_pass("test-three-times")
    def three_times(model, ctx):
        calls.append(1)
        return len(calls) < 3

    manager = gc.PassManager("test-three-times{steps=5}")
    manager.run(model_from_text(TEXT), gc.PassContext(verify=False))
    assert len(calls) == 3
    assert [r.step for r in manager.records] == [1, 2, 3]


def test_analyses_cached_and_invalidated_on_modified():
    computed = []

    @gc.register_analysis("test-node-count")
    def node_count(model, ctx):
        computed.append(len(model.graph))
        return len(model.graph)

    @gc.register_pass("test-modifies")
    def modifies(model, ctx):
        ctx.analysis("test-node-count", model)
        return True

    ctx = gc.PassContext(verify=False)
    gc.PassManager("test-count-down,test-count-down").run(model_from_text(TEXT), ctx)
    assert len(computed) == 1  # unmodified: cached
    computed.clear()
    ctx = gc.PassContext(verify=False)
    gc.PassManager("test-modifies,test-modifies").run(model_from_text(TEXT), ctx)
    assert len(computed) == 2  # modified: invalidated


def test_structural_verification_catches_invalid_graph():
    @gc.register_pass("test-breaks-graph")
    def breaks(model, ctx):
        node = list(model.graph)[1]
        node.op_type = "NoSuchOp"
        return True

    with pytest.raises(PassFailedError, match="invalid graph"):
        gc.PassManager("test-breaks-graph").run(model_from_text(TEXT), gc.PassContext(verify=False))


def test_instruments_see_every_pass():
    seen = []

    class Recorder(Instrument):
        def enter_pipeline(self, model, ctx):
            seen.append("enter")

        def before_pass(self, pass_, model, ctx):
            seen.append(f"before {pass_}")

        def after_pass(self, pass_, model, ctx, record):
            seen.append(f"after {pass_} {record.modified}")

        def exit_pipeline(self, model, ctx):
            seen.append("exit")

    timing = TimingInstrument()
    ctx = gc.PassContext(verify=False, instruments=[Recorder(), timing])
    gc.PassManager("test-typed-options,test-count-down").run(model_from_text(TEXT), ctx)
    assert seen == ["enter", "before test-typed-options", "after test-typed-options False",
                    "before test-count-down", "after test-count-down False", "exit"]
    assert [name for name, _ in timing.timings] == ["test-typed-options", "test-count-down"]


def test_print_ir_after_change(capsys):
    import io

    stream = io.StringIO()

    @gc.register_pass("test-rename")
    def rename(model, ctx):
        list(model.graph)[0].name = "renamed_add"
        return True

    ctx = gc.PassContext(verify=False, instruments=[PrintIRInstrument("change", stream)])
    gc.PassManager("test-typed-options,test-rename").run(model_from_text(TEXT), ctx)
    text = stream.getvalue()
    assert "IR after test-rename" in text and "renamed_add" in text
    assert "IR after test-typed-options" not in text


def test_near_miss_recorded():
    @gc.register_pass("test-declines")
    class Declines(gc.Pass):
        """Declines everywhere."""

        def call(self, model, ctx):
            for node in model.graph:
                self.decline(ctx, node, f"{node.op_type} is not interesting")
            return gc.PassResult(model, False)

    ctx = gc.PassContext(verify=False)
    gc.PassManager("test-declines").run(model_from_text(TEXT), ctx)
    assert [m.reason for m in ctx.near_misses] == ["Add is not interesting", "Relu is not interesting", "Tanh is not interesting"]
