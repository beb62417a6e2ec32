"""Saving and reopening compiled models: atomic writes, manifest checks, dispatch by target."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

import greencc as gc
import greencc.ir.io
import greencc.target.artifact
from greencc.target import CompiledModel, resolve_target
from greencc.targets.ort.cpu import OrtCompiledModel
from tests.helpers import model_from_text

MODEL = """<ir_version: 10, opset_import: ["" : 17]>
g (float[N, 4] x) => (float[N, 2] y)
<float[4, 2] w = {1.0, -1.0, 0.5, 2.0, -0.25, 0.75, 3.0, -2.0}> {
  [mm] h = MatMul(x, w)
  [relu] y = Relu(h)
}"""

OTHER = """<ir_version: 10, opset_import: ["" : 17]>
g (float[N, 4] x) => (float[N, 4] y) { y = Neg(x) }"""

FEEDS = {"x": np.random.default_rng(0).standard_normal((3, 4)).astype(np.float32)}


@pytest.fixture
def compiled() -> OrtCompiledModel:
    return resolve_target("ort-cpu", threads=1).lower(model_from_text(MODEL))


def _leftovers(parent: Path, keep: str) -> list[str]:
    return sorted(p.name for p in parent.iterdir() if p.name != keep)


def test_save_then_load_through_the_base_class_gives_identical_outputs(compiled, tmp_path):
    dest = compiled.save(tmp_path / "artifact")
    assert sorted(p.name for p in dest.iterdir()) == ["greencc.json", "model.onnx"]
    manifest = json.loads((dest / "greencc.json").read_text())
    assert manifest["format_version"] == 1
    assert manifest["target"] == "ort-cpu"
    assert manifest["greencc_version"] == gc.__version__
    assert manifest["options"] == {"threads": 1, "optimization": "all"}
    assert manifest["signature"]["inputs"] == [{"name": "x", "dtype": "float32", "shape": ["N", 4]}]
    assert manifest["files"] == ["model.onnx"] and manifest["created"]

    reopened = CompiledModel.load(dest)
    assert type(reopened) is OrtCompiledModel
    assert reopened.options == compiled.options
    assert reopened.signature == compiled.signature
    np.testing.assert_array_equal(reopened(FEEDS)["y"], compiled(FEEDS)["y"])
    assert _leftovers(tmp_path, "artifact") == []


def test_a_loaded_artifact_session_reads_the_saved_file_not_a_reserialized_copy(compiled, tmp_path, monkeypatch):
    dest = compiled.save(tmp_path / "artifact")
    sources = []
    real = OrtCompiledModel._create_session

    def recording(self):
        sources.append(self._source_path)
        return real(self)

    monkeypatch.setattr(OrtCompiledModel, "_create_session", recording)
    monkeypatch.setattr(OrtCompiledModel, "_serialized_or_file",
                        lambda self: pytest.fail("the loaded artifact was serialized again"))
    reopened = CompiledModel.load(dest)
    assert sources == [dest / "model.onnx"]
    np.testing.assert_array_equal(reopened(FEEDS)["y"], compiled(FEEDS)["y"])


def test_load_options_override_the_saved_ones(compiled, tmp_path):
    reopened = CompiledModel.load(compiled.save(tmp_path / "a"), threads=2)
    assert reopened.options["threads"] == 2
    assert reopened.session.get_session_options().intra_op_num_threads == 2
    with pytest.raises(gc.UsageError, match="no option 'bogus'"):
        CompiledModel.load(tmp_path / "a", bogus=1)


def _with_a_2_kib_weight() -> CompiledModel:
    """y = x · w compiled for ort-cpu, w a constant [4, 128] float32 (2 KiB)."""
    weights = ", ".join(str((i % 7) - 3.0) for i in range(4 * 128))
    return resolve_target("ort-cpu", threads=1).lower(
        model_from_text(
            f"""<ir_version: 10, opset_import: ["" : 17]>
            g (float[N, 4] x) => (float[N, 128] y) <float[4, 128] w = {{{weights}}}> {{
              y = MatMul(x, w)
            }}"""
        )
    )


def test_external_weights_are_saved_beside_the_model_and_reload(tmp_path, monkeypatch):
    compiled = _with_a_2_kib_weight()
    monkeypatch.setattr(greencc.ir.io, "EXTERNAL_DATA_THRESHOLD_BYTES", 0)
    dest = compiled.save(tmp_path / "a")
    assert json.loads((dest / "greencc.json").read_text())["files"] == [
        "model.onnx", "model.onnx.data",
    ]
    reopened = CompiledModel.load(dest)
    assert reopened._source_path == dest / "model.onnx"
    np.testing.assert_array_equal(reopened(FEEDS)["y"], compiled(FEEDS)["y"])


def test_a_large_artifact_keeps_its_weights_in_a_data_file_that_loading_reads_lazily(tmp_path, monkeypatch):
    import onnx_ir as ir

    import greencc.targets.ort.cpu as ort_cpu

    compiled = _with_a_2_kib_weight()
    monkeypatch.setattr(ort_cpu, "ARTIFACT_EXTERNAL_DATA_BYTES", 1024)
    dest = compiled.save(tmp_path / "a")
    assert json.loads((dest / "greencc.json").read_text())["files"] == ["model.onnx", "model.onnx.data"]
    reopened = CompiledModel.load(dest)
    # The IR holds a reference into the data file, not a parsed copy of the weight.
    assert isinstance(reopened.model.ir.graph.initializers["w"].const_value, ir.ExternalTensor)
    np.testing.assert_array_equal(reopened(FEEDS)["y"], compiled(FEEDS)["y"])


def test_saving_over_an_existing_artifact_replaces_it(compiled, tmp_path):
    dest = tmp_path / "a"
    old = resolve_target("ort-cpu", threads=1).lower(model_from_text(OTHER))
    old.save(dest)
    (dest / "stale.txt").write_text("from the old artifact")
    compiled.save(dest)
    assert not (dest / "stale.txt").exists()
    np.testing.assert_array_equal(CompiledModel.load(dest)(FEEDS)["y"], compiled(FEEDS)["y"])
    assert _leftovers(tmp_path, "a") == []


def test_a_failing_save_leaves_no_partial_directory(compiled, tmp_path, monkeypatch):
    def explode(self, directory):
        (directory / "model.onnx").write_bytes(b"half")
        raise OSError("disk full")

    monkeypatch.setattr(OrtCompiledModel, "_save_artifact", explode)
    with pytest.raises(OSError, match="disk full"):
        compiled.save(tmp_path / "new")
    assert list(tmp_path.iterdir()) == []


def test_a_failing_save_keeps_the_existing_artifact_intact(compiled, tmp_path, monkeypatch):
    dest = compiled.save(tmp_path / "a")
    before = {p.name: p.read_bytes() for p in dest.iterdir()}
    other = resolve_target("ort-cpu", threads=1).lower(model_from_text(OTHER))

    monkeypatch.setattr(OrtCompiledModel, "manifest", lambda self, files: 1 / 0)
    with pytest.raises(ZeroDivisionError):
        other.save(dest)
    assert {p.name: p.read_bytes() for p in dest.iterdir()} == before
    assert _leftovers(tmp_path, "a") == []


def test_a_failing_rename_restores_the_existing_artifact(compiled, tmp_path, monkeypatch):
    dest = compiled.save(tmp_path / "a")
    before = {p.name: p.read_bytes() for p in dest.iterdir()}
    other = resolve_target("ort-cpu", threads=1).lower(model_from_text(OTHER))
    real_rename = greencc.target.artifact.os.rename
    calls = []

    def flaky_rename(src, dst):
        calls.append((src, dst))
        if len(calls) == 2:  # moving the new artifact into place
            raise OSError("rename failed")
        real_rename(src, dst)

    monkeypatch.setattr(greencc.target.artifact.os, "rename", flaky_rename)
    with pytest.raises(OSError, match="rename failed"):
        other.save(dest)
    monkeypatch.undo()
    assert {p.name: p.read_bytes() for p in dest.iterdir()} == before
    assert _leftovers(tmp_path, "a") == []


def test_save_refuses_to_replace_a_directory_that_is_not_an_artifact(compiled, tmp_path):
    (tmp_path / "photos").mkdir()
    (tmp_path / "photos" / "cat.jpg").write_bytes(b"meow")
    with pytest.raises(gc.UsageError, match="not a greencc artifact"):
        compiled.save(tmp_path / "photos")
    assert (tmp_path / "photos" / "cat.jpg").read_bytes() == b"meow"
    (tmp_path / "file").write_text("x")
    with pytest.raises(gc.UsageError, match="is a file"):
        compiled.save(tmp_path / "file")
    (tmp_path / "empty").mkdir()
    compiled.save(tmp_path / "empty")
    assert (tmp_path / "empty" / "greencc.json").is_file()


def test_report_is_saved_and_reloaded(compiled, tmp_path):
    from greencc.report.ledger import Report

    compiled.report = Report(model={"nodes": 2}, target="ort-cpu", profile=None, dims={}, pipeline="-O0")
    dest = compiled.save(tmp_path / "a")
    assert json.loads((dest / "report.json").read_text())["pipeline"] == "-O0"
    reopened = CompiledModel.load(dest)
    assert isinstance(reopened.report, Report)
    assert reopened.report.to_dict() == compiled.report.to_dict()
    (dest / "report.json").unlink()
    with pytest.raises(gc.ModelLoadError, match="report"):
        CompiledModel.load(dest)


def _corrupt(dest: Path, edit) -> None:
    manifest = json.loads((dest / "greencc.json").read_text())
    edit(manifest)
    (dest / "greencc.json").write_text(json.dumps(manifest))


@pytest.mark.parametrize(
    ("edit", "error", "fragment"),
    [
        (lambda m: m.update(target="my-npu"), gc.TargetUnavailableError, "target 'my-npu'"),
        (lambda m: m.update(format="zip"), gc.ModelLoadError, "'format'"),
        (lambda m: m.pop("signature"), gc.ModelLoadError, "'signature'"),
        (lambda m: m.update(format_version=99), gc.ModelLoadError, "format version 99"),
        (lambda m: m.update(files=["../../etc/passwd"]), gc.ModelLoadError, "plain file name"),
        (lambda m: m.update(files=["model.onnx", "gone.bin"]), gc.ModelLoadError, "'gone.bin'"),
        (lambda m: m["options"].update(threads=-1), gc.ModelLoadError, "invalid options"),
        (lambda m: m["signature"]["inputs"][0].update(dtype="int64"), gc.ModelLoadError, "signature"),
    ],
    ids=["unknown-target", "format", "no-signature", "future", "path", "missing-file", "options", "tampered"],
)
def test_load_of_a_corrupt_manifest_raises_greencc_errors(compiled, tmp_path, edit, error, fragment):
    dest = compiled.save(tmp_path / "a")
    _corrupt(dest, edit)
    with pytest.raises(error, match=fragment):
        CompiledModel.load(dest)


@pytest.mark.parametrize(
    ("content", "fragment"),
    [("{not json", "not valid JSON"), ("[1, 2]", "JSON object"), (b"\xff\xfe", "not valid JSON")],
)
def test_load_of_unreadable_manifest(compiled, tmp_path, content, fragment):
    dest = compiled.save(tmp_path / "a")
    path = dest / "greencc.json"
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    with pytest.raises(gc.ModelLoadError, match=fragment):
        CompiledModel.load(dest)


def test_load_without_a_manifest_or_a_directory(compiled, tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(gc.ModelLoadError, match="greencc.json is missing"):
        CompiledModel.load(tmp_path / "empty")
    with pytest.raises(gc.ModelLoadError, match="no such directory"):
        CompiledModel.load(tmp_path / "nowhere")
    onnx_file = compiled.model.save(tmp_path / "m.onnx")
    with pytest.raises(gc.ModelLoadError, match="is a file"):
        CompiledModel.load(onnx_file)


def test_load_of_a_corrupt_model_file(compiled, tmp_path):
    dest = compiled.save(tmp_path / "a")
    (dest / "model.onnx").write_bytes(b"\x00garbage")
    with pytest.raises(gc.ModelLoadError):
        CompiledModel.load(dest)
