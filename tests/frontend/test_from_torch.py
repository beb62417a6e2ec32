"""``greencc.from_torch``: provenance, the dynamo -> legacy fallback, errors, dynamic
shapes with both exporters, and quiet exporters.
"""

from __future__ import annotations

import logging
import warnings

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import greencc as gc  # noqa: E402
from tests import models  # noqa: E402


@pytest.fixture
def failing_exporter(monkeypatch):
    """Make ``torch.onnx.export`` raise for the exporters named in the returned set."""
    real_export = torch.onnx.export
    failing: set[str] = set()

    def export(*args, dynamo=True, **kwargs):
        name = "dynamo" if dynamo else "legacy"
        if name in failing:
            raise RuntimeError(f"simulated {name} failure\nwith a long second line")
        return real_export(*args, dynamo=dynamo, **kwargs)

    monkeypatch.setattr(torch.onnx, "export", export)
    return failing


def test_provenance_records_the_exporter_and_options() -> None:
    model = models.tiny_bert_model("dynamo")
    provenance = model.provenance
    assert provenance.exporter == "dynamo" and provenance.notes == []
    assert provenance.source.endswith("LastHiddenState")
    assert provenance.options["requested_exporter"] == "dynamo"
    assert provenance.options["input_names"] == ["input_ids", "attention_mask"]
    assert provenance.options["dynamic_shapes"] == models.TINY_BERT_DYNAMIC
    assert provenance.options["opset"] == model.ir.opset_imports[""]
    assert provenance.options["torch"] == torch.__version__
    assert provenance.to_dict()["exporter"] == "dynamo"
    assert models.tiny_bert_model("legacy").provenance.exporter == "legacy"


def test_auto_falls_back_to_legacy_and_says_why(failing_exporter) -> None:
    failing_exporter.add("dynamo")
    model = gc.from_torch(models.small_cnn_module(), models.small_cnn_input(), exporter="auto")
    assert model.provenance.exporter == "legacy"
    assert model.provenance.options["requested_exporter"] == "auto"
    notes = " ".join(model.provenance.notes)
    assert "dynamo exporter failed: RuntimeError: simulated dynamo failure" in notes
    assert "long second line" not in notes
    assert "fell back to the legacy exporter" in notes
    x = models.small_cnn_input(batch=2, seed=5)
    with torch.no_grad():
        expected = models.small_cnn_module()(x).numpy()
    np.testing.assert_allclose(models.ort_outputs(model, {"x": x.numpy()})[0], expected, atol=1e-5)


def test_auto_uses_dynamo_when_it_works() -> None:
    model = gc.from_torch(models.small_cnn_module(), {"x": models.small_cnn_input()})
    assert model.provenance.exporter == "dynamo" and model.provenance.notes == []
    assert [s.name for s in model.inputs] == ["x"]


def test_both_exporters_failing_is_an_export_error(failing_exporter) -> None:
    failing_exporter.update({"dynamo", "legacy"})
    with pytest.raises(gc.ExportError) as info:
        gc.from_torch(models.small_cnn_module(), models.small_cnn_input())
    message = str(info.value)
    assert "SmallCNN" in message
    assert "dynamo exporter failed: RuntimeError: simulated dynamo failure" in message
    assert "legacy exporter failed: RuntimeError: simulated legacy failure" in message
    assert info.value.exit_code == 3


def test_an_explicit_exporter_does_not_fall_back(failing_exporter) -> None:
    failing_exporter.add("dynamo")
    with pytest.raises(gc.ExportError, match="dynamo exporter failed") as info:
        gc.from_torch(models.small_cnn_module(), models.small_cnn_input(), exporter="dynamo")
    assert "legacy" not in info.value.message


@pytest.mark.parametrize(
    "module, hint",
    [(lambda x: x, "nn.Module"), ("model.onnx", "greencc.load"), (None, "nn.Module")],
    ids=["function", "path", "none"],
)
def test_non_module_is_a_usage_error(module, hint) -> None:
    with pytest.raises(gc.UsageError, match="expects a torch.nn.Module") as info:
        gc.from_torch(module, torch.zeros(1))
    assert hint in str(info.value)


def test_bad_arguments_are_usage_errors() -> None:
    cnn, x = models.small_cnn_module(), models.small_cnn_input()
    with pytest.raises(gc.UsageError, match="unknown exporter 'onnxscript'"):
        gc.from_torch(cnn, x, exporter="onnxscript")
    with pytest.raises(gc.UsageError, match="unknown input 'images'"):
        gc.from_torch(cnn, x, dynamic_shapes={"images": {0: "batch"}})
    with pytest.raises(gc.UsageError, match="bad axis 4"):
        gc.from_torch(cnn, x, dynamic_shapes={"x": {4: "batch"}})
    with pytest.raises(gc.UsageError, match="dim name"):
        gc.from_torch(cnn, x, dynamic_shapes={"x": {0: 3}})
    with pytest.raises(gc.UsageError, match="2 input names for 1 example inputs"):
        gc.from_torch(cnn, x, input_names=["a", "b"])


def test_module_mode_is_restored() -> None:
    cnn = models.small_cnn_module()
    cnn.train()
    try:
        model = gc.from_torch(cnn, models.small_cnn_input(), exporter="legacy")
    finally:
        training = cnn.training
        cnn.eval()
    assert training, "from_torch left the module in eval mode"
    assert "BatchNormalization" not in model.op_counts()  # exported in eval mode: BN folded


@pytest.mark.parametrize("exporter", ["dynamo", "legacy"])
def test_dynamic_shapes(exporter: str) -> None:
    model = models.tiny_bert_model(exporter)
    assert [s.shape for s in model.inputs] == [("batch", "seq"), ("batch", "seq")]
    assert gc.ir.symbolic_dims(model) == ["batch", "seq"]
    inputs = models.tiny_bert_inputs(batch=3, seq=10, seed=4)  # not the traced size
    with torch.no_grad():
        expected = models.tiny_bert_module()(*inputs).numpy()
    (got,) = models.ort_outputs(model, models.feeds_of(inputs))
    assert got.shape == (3, 10, 32)
    np.testing.assert_allclose(got, expected, atol=1e-4)


def test_static_export_has_no_symbolic_dims() -> None:
    model = gc.from_torch(models.small_cnn_module(), models.small_cnn_input(batch=2), exporter="legacy")
    assert model.inputs[0].shape == (2, 1, 8, 8) and gc.ir.symbolic_dims(model) == []


def _noisy_export(monkeypatch) -> None:
    """Wrap torch.onnx.export so it prints, warns and logs like the real exporters do."""
    real_export = torch.onnx.export

    def export(*args, **kwargs):
        print("[torch.onnx] Obtain model graph ...")
        logging.getLogger("torch.onnx._internal.exporter._registration").warning(
            "torchvision is not installed. Skipping torchvision::nms"
        )
        logging.getLogger("onnxscript.optimizer._constant_folding").warning("Evaluation failed")
        warnings.warn("legacy TorchScript-based ONNX export", DeprecationWarning, stacklevel=2)
        return real_export(*args, **kwargs)

    monkeypatch.setattr(torch.onnx, "export", export)


def test_from_torch_is_quiet_by_default(monkeypatch, capfd, caplog, recwarn) -> None:
    _noisy_export(monkeypatch)
    levels = {name: logging.getLogger(name).level for name in ("torch.onnx", "onnxscript")}
    caplog.set_level(logging.DEBUG)
    caplog.clear()
    gc.from_torch(models.small_cnn_module(), models.small_cnn_input(), exporter="legacy")
    out, err = capfd.readouterr()
    assert out == "" and err == ""
    assert [r for r in caplog.records if r.levelno >= logging.WARNING] == []
    assert [str(w.message) for w in recwarn] == []
    assert {name: logging.getLogger(name).level for name in levels} == levels


@pytest.mark.filterwarnings("ignore:The feature will be removed:DeprecationWarning")
def test_verbose_lets_the_exporters_speak(monkeypatch, capfd, caplog) -> None:
    _noisy_export(monkeypatch)
    caplog.set_level(logging.WARNING)
    with pytest.warns(DeprecationWarning, match="legacy TorchScript"):
        gc.from_torch(models.small_cnn_module(), models.small_cnn_input(), exporter="legacy", verbose=True)
    out, _ = capfd.readouterr()
    assert "Obtain model graph" in out
    assert any("torchvision is not installed" in r.getMessage() for r in caplog.records)


def test_digits_cnn_is_trained_and_exports() -> None:
    trained = models.digits_cnn()
    assert trained.accuracy > 0.85
    model = models.digits_cnn_model()
    assert model.inputs[0].shape == ("batch", 1, 8, 8) and model.outputs[0].name == "logits"
    data = models.digits_data()
    (logits,) = models.ort_outputs(model, {"image": data.test_x})
    assert abs(float((logits.argmax(1) == data.test_y).mean()) - trained.accuracy) < 1e-9


def test_digits_cnn_is_the_same_network_on_every_machine() -> None:
    # Tests judge this network's accuracy after pruning and int8: it must be one network.
    # Trained in float64, it came out with this weight mass on an Intel Xeon (AVX-512); a
    # machine that trains another network fails here, naming the cause, rather than in an
    # accuracy assertion downstream.
    module = models.digits_cnn().module
    mass = sum(float(np.abs(p.detach().numpy().astype(np.float64)).sum()) for p in module.parameters())
    assert mass == pytest.approx(373.71581386436446, rel=1e-6)
    assert models.digits_cnn().accuracy == pytest.approx(0.9777777777777777)
