"""Pass plugins (the greencc.passes entry-point group, plugin files) and reproducers:
what they record, the calibration copy that reads back as the same batches, and old
reproducer directories that still replay."""

import importlib.metadata
import json
import sys
import uuid
import warnings

import numpy as np
import onnx
import onnx.parser
import pytest

import greencc as gc
from greencc.config import CompileConfig
from greencc.data import CalibrationData
from greencc.driver import replay
from greencc.errors import PassFailedError, UsageError
from greencc.frontend.onnx_file import load
from greencc.pipeline import base
from greencc.pipeline.repro import read_reproducer, write_reproducer

MODEL = """<ir_version: 10, opset_import: ["" : 17]>
g (float[N, 8] x) => (float[N, 8] y) {
  i = Identity(x)
  y = Relu(i)
}"""


@pytest.fixture
def pass_registry(monkeypatch):
    """A private copy of the pass registry with entry points not yet read."""
    base.load_builtins()
    monkeypatch.setattr(base, "_PASSES", dict(base._PASSES))
    monkeypatch.setattr(base, "_PLUGINS_LOADED", False)


def _module(tmp_path, monkeypatch, body: str) -> str:
    name = f"greencc_test_pass_plugin_{uuid.uuid4().hex[:8]}"
    (tmp_path / f"{name}.py").write_text(body)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, name, raising=False)
    return name


def _entry_points(monkeypatch, *points):
    def entry_points(**kwargs):
        assert kwargs == {"group": "greencc.passes"}
        return list(points)

    monkeypatch.setattr(importlib.metadata, "entry_points", entry_points)


def test_entry_point_passes_load_lazily_and_a_broken_one_says_why(pass_registry, tmp_path, monkeypatch):
    good = _module(tmp_path, monkeypatch, (
        "import greencc as gc\n"
        "class Halve(gc.Pass):\n"
        "    '''x -> x (an entry-point pass class)'''\n"
        "    def call(self, model, ctx):\n"
        "        return gc.PassResult(model, False)\n"
        "def noop(model, ctx):\n"
        "    '''nothing -> nothing (an entry-point function)'''\n"
        "    return False\n"
    ))
    broken = _module(tmp_path, monkeypatch, "raise ImportError('libnpu.so not found')\n")
    _entry_points(
        monkeypatch,
        importlib.metadata.EntryPoint("ep-halve", f"{good}:Halve", "greencc.passes"),
        importlib.metadata.EntryPoint("ep-noop", f"{good}:noop", "greencc.passes"),
        importlib.metadata.EntryPoint("ep-broken", f"{broken}:Pass", "greencc.passes"),
    )
    assert good not in sys.modules  # nothing is imported before a pass is looked up
    with pytest.warns(UserWarning, match="libnpu.so not found"):
        passes = gc.registered_passes()
    assert passes["ep-halve"].__name__ == "Halve" and passes["ep-halve"].name == "ep-halve"
    assert base.pass_summary(passes["ep-noop"]).startswith("nothing -> nothing")
    assert "(plugin failed to load)" in base.pass_summary(passes["ep-broken"])
    assert "cleanup" in passes  # the built-ins are still there
    with pytest.raises(UsageError, match="pass 'ep-broken' is not available: .*libnpu.so not found"):
        gc.PassManager("ep-broken")
    model = load(onnx.parser.parse_model(MODEL).SerializeToString())
    out = gc.PassManager("ep-halve,ep-noop").run(model, gc.PassContext(dims={"N": 1}))
    assert len(out.graph) == 2


def test_unreadable_entry_points_do_not_break_the_registry(pass_registry, monkeypatch):
    def entry_points(**kwargs):
        raise RuntimeError("corrupt metadata")

    monkeypatch.setattr(importlib.metadata, "entry_points", entry_points)
    with pytest.warns(UserWarning, match="corrupt metadata"):
        assert "dce" in gc.registered_passes()


def test_plugin_file_registers_passes_once(pass_registry, tmp_path):
    plugin = tmp_path / "plug.py"
    plugin.write_text(
        "import greencc as gc\n"
        "@gc.register_pass('file-noop')\n"
        "def file_noop(model, ctx):\n"
        "    '''nothing -> nothing'''\n"
        "    return False\n"
    )
    module = gc.load_plugin(plugin)
    assert gc.load_plugin(str(plugin)) is module  # loading again does not re-register
    assert "file-noop" in gc.registered_passes()


def _ctx_with_calibration(batches):
    return gc.PassContext(target="ort-cpu", dims={"N": 2}, seed=4, budget="cos=0.9",
                          calibration=CalibrationData(batches))


def test_reproducer_keeps_config_calibration_and_target_options(tmp_path):
    model = load(onnx.parser.parse_model(MODEL).SerializeToString())
    rng = np.random.default_rng(1)
    batches = [{"x": rng.standard_normal((2, 8)).astype(np.float32)} for _ in range(3)]
    ctx = _ctx_with_calibration(batches)
    ctx.config = CompileConfig(pipeline="-O3", measure=True, target_options={"optimization": "basic"})
    ctx.target = gc.registered_targets()["ort-cpu"](optimization="basic")
    repro = write_reproducer(tmp_path, model, "cleanup,dce", ctx, RuntimeError("boom"))
    read = read_reproducer(repro)
    config = read.config
    assert read.has_target and read.error == "RuntimeError: boom"
    assert config.pipeline == "cleanup,dce" and config.measure  # the failing prefix, the rest as recorded
    assert config.target_options["optimization"] == "basic" and config.seed == 4 and config.budget == "cos=0.9"
    assert dict(config.dims) == {"N": 2}
    replayed = CalibrationData.from_npz(config.calibration, model)
    assert replayed.num_batches == 3
    for got, expected in zip(replayed, batches, strict=True):
        assert np.array_equal(got["x"], expected["x"])


def test_uneven_calibration_batches_keep_every_sample(tmp_path):
    model = load(onnx.parser.parse_model(MODEL).SerializeToString())
    batches = [{"x": np.ones((2, 8), np.float32)}, {"x": np.zeros((1, 8), np.float32)}]
    repro = write_reproducer(tmp_path, model, "dce", _ctx_with_calibration(batches), RuntimeError("x"))
    stored = np.load(repro / "calibration.npz")["x"]
    assert stored.shape == (3, 8) and stored[:2].all() and not stored[2].any()


def test_old_reproducer_directory_still_replays(tmp_path):
    # The format before CompileConfig: input.onnx, pipeline.txt and options.json only.
    @gc.register_pass("test-old-repro-raises", replace=True)
    def raises(model, ctx):
        """x -> error"""
        raise RuntimeError("still broken")

    repro = tmp_path / "old"
    repro.mkdir()
    onnx.save(onnx.parser.parse_model(MODEL), repro / "input.onnx")
    (repro / "pipeline.txt").write_text("cleanup,test-old-repro-raises\n")
    (repro / "options.json").write_text(json.dumps({
        "target": "ort-cpu", "profile": None, "dims": {"N": 1}, "seed": 0, "verify": True,
        "budget": None, "error": "RuntimeError: still broken",
    }))
    config = read_reproducer(repro).config
    assert config.target == "ort-cpu" and config.pipeline == "cleanup,test-old-repro-raises"
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(PassFailedError, match="still broken"):
            replay(repro)
