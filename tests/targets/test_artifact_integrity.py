"""Artifacts are code: the manifest records the SHA-256 of every file, and loading refuses
a changed, swapped, truncated, added or missing file before any target opens it (before a
shared library is mapped); artifacts saved before hashes load with a warning only when
they hold no shared library."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

import greencc as gc
from greencc.target import CompiledModel, resolve_target
from tests.helpers import model_from_text

MODEL = """<ir_version: 10, opset_import: ["" : 17]>
g (float[N, 4] x) => (float[N, 2] y)
<float[4, 2] w = {W}> {
  [mm] h = MatMul(x, w)
  [relu] y = Relu(h)
}"""
FEEDS = {"x": np.random.default_rng(0).standard_normal((3, 4)).astype(np.float32)}


def _model(weights: str = "1.0, -1.0, 0.5, 2.0, -0.25, 0.75, 3.0, -2.0") -> gc.Model:
    return model_from_text(MODEL.replace("{W}", "{" + weights + "}"))


def _manifest(dest: Path) -> dict:
    return json.loads((dest / "greencc.json").read_text())


def _write_manifest(dest: Path, manifest: dict) -> None:
    (dest / "greencc.json").write_text(json.dumps(manifest))


@pytest.fixture
def artifact(tmp_path) -> Path:
    from greencc.report.ledger import Report

    compiled = resolve_target("ort-cpu", threads=1).lower(_model())
    compiled.report = Report(model={"nodes": 2}, target="ort-cpu", profile=None, dims={}, pipeline="-O0")
    return compiled.save(tmp_path / "a")


def test_the_manifest_records_the_sha256_of_every_file(artifact):
    recorded = _manifest(artifact)["sha256"]
    assert {"model.onnx", "report.json"} <= set(recorded)
    assert set(recorded) == {p.name for p in artifact.iterdir()} - {"greencc.json"}
    for name, digest in recorded.items():
        assert digest == hashlib.sha256((artifact / name).read_bytes()).hexdigest()
    np.testing.assert_array_equal(CompiledModel.load(artifact)(FEEDS)["y"],
                                  resolve_target("ort-cpu", threads=1).lower(_model())(FEEDS)["y"])


def test_swapped_weights_of_the_same_signature_are_refused(artifact, tmp_path):
    other = resolve_target("ort-cpu", threads=1).lower(_model("9, 9, 9, 9, 9, 9, 9, 9")).save(tmp_path / "b")
    shutil.copyfile(other / "model.onnx", artifact / "model.onnx")
    with pytest.raises(gc.ModelLoadError, match=r"model\.onnx does not match the SHA-256") as info:
        CompiledModel.load(artifact)
    assert "trust" in info.value.hint


@pytest.mark.parametrize(
    ("tamper", "fragment"),
    [
        (lambda d: (d / "model.onnx").write_bytes((d / "model.onnx").read_bytes()[:-7]), r"model\.onnx does not match"),
        (lambda d: (d / "report.json").write_text("{}"), r"report\.json does not match"),
        (lambda d: (d / "model.onnx").unlink(), "missing artifact file 'model.onnx'"),
        (lambda d: (d / "helper.so").write_bytes(b"\x7fELF"), "unexpected file 'helper.so'"),
        (lambda d: (d / "sub").mkdir(), "unexpected file 'sub'"),
    ],
    ids=["truncated", "report", "missing", "extra-file", "extra-directory"],
)
def test_a_changed_missing_or_extra_file_is_refused_by_name(artifact, tamper, fragment):
    tamper(artifact)
    with pytest.raises(gc.ModelLoadError, match=fragment):
        CompiledModel.load(artifact)


@pytest.mark.parametrize(
    ("edit", "fragment"),
    [
        (lambda m: m["sha256"].update({"model.onnx": "0" * 63}), "64 lowercase hex digits"),
        (lambda m: m.update(sha256=None), "'sha256' is not an object"),
        (lambda m: m["sha256"].update({"../model.so": "0" * 64}), "plain file name"),
        (lambda m: m["sha256"].pop("report.json"), "no SHA-256 for file 'report.json'"),
    ],
    ids=["short-digest", "null", "path", "unhashed-report"],
)
def test_a_malformed_hash_record_is_refused(artifact, edit, fragment):
    manifest = _manifest(artifact)
    edit(manifest)
    _write_manifest(artifact, manifest)
    with pytest.raises(gc.ModelLoadError, match=fragment):
        CompiledModel.load(artifact)


def test_an_artifact_saved_before_hashes_loads_with_a_warning_and_saves_with_them(artifact, tmp_path):
    manifest = _manifest(artifact)
    del manifest["sha256"]
    _write_manifest(artifact, manifest)
    with pytest.warns(UserWarning, match="before greencc recorded file hashes"):
        reopened = CompiledModel.load(artifact)
    again = reopened.save(tmp_path / "resaved")
    assert set(_manifest(again)["sha256"]) == {p.name for p in again.iterdir()} - {"greencc.json"}


def test_an_artifact_saved_before_hashes_holding_a_library_is_refused(artifact):
    manifest = _manifest(artifact)
    del manifest["sha256"]
    _write_manifest(artifact, manifest)
    (artifact / "kernels.bin").write_bytes(b"\x7fELF\x02\x01\x01" + bytes(57))
    with pytest.raises(gc.ModelLoadError, match=r"holds a shared library \(kernels\.bin\)") as info:
        CompiledModel.load(artifact)
    assert "compile" in info.value.hint


# -- a real shared library: tvm-llvm -------------------------------------------------------
@pytest.fixture(scope="module")
def tvm_artifacts(tmp_path_factory) -> tuple[Path, Path]:
    pytest.importorskip("tvm", reason="apache-tvm is not installed (pip install 'greencc[tvm]')")
    root = tmp_path_factory.mktemp("tvm")
    first = resolve_target("tvm-llvm", threads=1).lower(_model()).save(root / "first")
    second = resolve_target("tvm-llvm", threads=1).lower(_model("9, 9, 9, 9, 9, 9, 9, 9")).save(root / "second")
    return first, second


@pytest.fixture
def no_library_loading(monkeypatch):
    import tvm

    def refuse(*args, **kwargs):
        raise AssertionError("a library was loaded before its hash was checked")

    monkeypatch.setattr(tvm.runtime, "load_module", refuse)


@pytest.mark.parametrize("tamper", ["truncated", "swapped"])
def test_a_truncated_or_swapped_library_is_refused_before_it_is_mapped(tvm_artifacts, tmp_path, tamper,
                                                                       no_library_loading):
    first, second = tvm_artifacts
    dest = shutil.copytree(first, tmp_path / "a")
    if tamper == "truncated":
        library = (dest / "model.so").read_bytes()
        (dest / "model.so").write_bytes(library[: len(library) // 2])
    else:
        shutil.copyfile(second / "model.so", dest / "model.so")
    with pytest.raises(gc.ModelLoadError, match=r"model\.so does not match the SHA-256"):
        CompiledModel.load(dest)


def test_a_library_artifact_saved_before_hashes_is_refused(tvm_artifacts, tmp_path, no_library_loading):
    dest = shutil.copytree(tvm_artifacts[0], tmp_path / "a")
    manifest = _manifest(dest)
    del manifest["sha256"]
    _write_manifest(dest, manifest)
    with pytest.raises(gc.ModelLoadError, match=r"holds a shared library \(model\.so\)"):
        CompiledModel.load(dest)


def test_an_intact_library_artifact_loads(tvm_artifacts):
    first, _ = tvm_artifacts
    feeds = {"x": FEEDS["x"][:1]}  # tvm-llvm binds the symbolic batch to 1
    expected = resolve_target("ort-cpu", threads=1).lower(_model())(feeds)["y"]
    np.testing.assert_allclose(CompiledModel.load(first)(feeds)["y"], expected, rtol=0, atol=1e-5)
