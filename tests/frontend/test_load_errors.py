"""Bad input at ``greencc.load``: each case raises a specific greencc error whose message
names the problem, never a raw protobuf/onnx exception, and never modifies the input.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx
import onnx.helper as oh
import pytest

import greencc as gc
from tests import models


def _snapshot(folder: Path) -> dict[str, tuple[bytes, int]]:
    return {
        str(p.relative_to(folder)): (p.read_bytes(), p.stat().st_mtime_ns)
        for p in sorted(folder.rglob("*"))
        if p.is_file() and not p.is_symlink()
    }


def _expect_error(source, error: type[gc.GreenccError], *needles: str) -> gc.GreenccError:
    """Load ``source`` and check the error's exact class, message words and hidden cause."""
    with pytest.raises(gc.GreenccError) as info:
        gc.load(source)
    exc = info.value
    assert type(exc) is error, f"expected {error.__name__}, got {type(exc).__name__}: {exc}"
    text = str(exc).lower()
    for needle in needles:
        assert needle.lower() in text, f"{needle!r} not in message: {exc}"
    # No protobuf/onnx exception leaks through the chain (raised `from None` where caught).
    assert exc.__cause__ is None and (exc.__context__ is None or exc.__suppress_context__)
    return exc


@pytest.fixture
def folder(tmp_path: Path):
    """A folder whose files must be byte-for-byte and mtime identical after the test."""
    work = tmp_path / "models"
    work.mkdir()
    yield work
    # Only a snapshot taken by the test itself is compared (see `unchanged`).


@pytest.fixture
def unchanged(folder: Path):
    """Call after creating the inputs; asserts on teardown that nothing changed."""
    snapshots: list[dict] = []

    def take() -> None:
        snapshots.append(_snapshot(folder))

    yield take
    assert snapshots, "the test never took its snapshot"
    assert _snapshot(folder) == snapshots[0], "greencc.load modified its input"


def _cnn_bytes() -> bytes:
    return models.weighted_model_proto().SerializeToString()


# ------------------------------------------------------------------------- files and bytes


def test_missing_path(folder: Path) -> None:
    _expect_error(folder / "nope.onnx", gc.ModelLoadError, "nope.onnx", "no such file")


def test_directory(folder: Path, unchanged) -> None:
    (folder / "inside.onnx").write_bytes(_cnn_bytes())
    unchanged()
    _expect_error(folder, gc.ModelLoadError, "is a directory")


def test_empty_file(folder: Path, unchanged) -> None:
    (folder / "empty.onnx").write_bytes(b"")
    unchanged()
    _expect_error(folder / "empty.onnx", gc.ModelLoadError, "empty")
    _expect_error(b"", gc.ModelLoadError, "empty")


def test_truncated_model(folder: Path, unchanged) -> None:
    data = _cnn_bytes()
    path = folder / "half.onnx"
    path.write_bytes(data[: len(data) // 2])
    unchanged()
    _expect_error(path, gc.ModelLoadError, "half.onnx", "not a valid onnx model", "truncated")
    _expect_error(data[: len(data) // 2], gc.ModelLoadError, "not a valid onnx model")


def test_text_file(folder: Path, unchanged) -> None:
    path = folder / "notes.onnx"
    path.write_text("These are my notes about the model.\nNot a model at all.\n")
    unchanged()
    _expect_error(path, gc.ModelLoadError, "notes.onnx", "not a valid onnx model", "text")


def test_onnx_text_is_recognised(folder: Path, unchanged) -> None:
    path = folder / "model.txt"
    path.write_text(models.IF_MODEL_TEXT)
    unchanged()
    _expect_error(path, gc.ModelLoadError, "onnx text", "onnx.parser")


def test_zip_archive_is_not_unpickled(folder: Path, unchanged) -> None:
    import zipfile

    path = folder / "weights.pt"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("archive/data.pkl", b"\x80\x04K\x01.")
    unchanged()
    _expect_error(path, gc.ModelLoadError, "zip", "from_torch")


@pytest.mark.parametrize("seed", range(12))
def test_random_bytes(seed: int, folder: Path, unchanged) -> None:
    rng = np.random.default_rng(seed)
    data = rng.integers(0, 256, size=int(rng.integers(1, 4096)), dtype=np.uint8).tobytes()
    path = folder / f"random{seed}.onnx"
    path.write_bytes(data)
    unchanged()
    for source in (path, data):
        with pytest.raises(gc.ModelLoadError, match="not a valid ONNX model") as info:
            gc.load(source)
        assert info.value.__cause__ is None and info.value.__suppress_context__


def test_valid_protobuf_that_is_not_a_model() -> None:
    # Protobuf parses it (every field is optional) but there is no graph or opset.
    data = onnx.ModelProto(producer_name="pytorch").SerializeToString()
    _expect_error(data, gc.ModelLoadError, "not a valid onnx model", "no ir version", "no graph")


def test_wrong_source_type() -> None:
    with pytest.raises(gc.UsageError, match="cannot load a model from a int"):
        gc.load(42)


# ---------------------------------------------------------------------------- graph content


def test_cycle(folder: Path, unchanged) -> None:
    path = folder / "cyclic.onnx"
    onnx.save_model(models.cyclic_model_proto(), path)
    unchanged()
    exc = _expect_error(path, gc.ModelLoadError, "cycle", "add (Add)", "relu (Relu)", "neg (Neg)")
    assert "acyclic" in (exc.hint or "")


def _unknown_op_proto(op_type: str, opset: int = 17) -> onnx.ModelProto:
    graph = oh.make_graph(
        [oh.make_node("Relu", ["x"], ["r"], name="relu"), oh.make_node(op_type, ["r"], ["y"], name="mystery")],
        "g",
        [oh.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [2])],
        [oh.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [2])],
    )
    return oh.make_model(graph, opset_imports=[oh.make_opsetid("", opset)], ir_version=8)


def test_unknown_op_in_the_default_domain(folder: Path, unchanged) -> None:
    path = folder / "unknown.onnx"
    onnx.save_model(_unknown_op_proto("Frobnicate"), path)
    unchanged()
    exc = _expect_error(path, gc.UnsupportedOpError, "'Frobnicate'", "'ai.onnx'", "mystery", "opset 17")
    assert exc.exit_code == 4


def test_op_newer_than_the_models_opset_says_which_opset_has_it() -> None:
    exc = _expect_error(_unknown_op_proto("Gelu", opset=17), gc.UnsupportedOpError, "'Gelu'", "mystery")
    assert "opset 20" in (exc.hint or "")


def test_custom_domain_op_loads() -> None:
    model = gc.load(models.custom_op_model_proto())
    assert model.op_counts()["com.example::Frobnicate"] == 1
    assert model.ir.opset_imports["com.example"] == 1


def test_custom_domain_without_opset_import_is_named() -> None:
    proto = models.custom_op_model_proto()
    del proto.opset_import[1]
    _expect_error(proto, gc.ModelLoadError, "com.example", "opset_import")


def test_invalid_graph_is_a_load_error_naming_the_value() -> None:
    graph = oh.make_graph(
        [oh.make_node("Relu", ["ghost"], ["y"], name="haunted")],
        "g",
        [oh.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [2])],
        [oh.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [2])],
    )
    proto = oh.make_model(graph, opset_imports=[oh.make_opsetid("", 17)], ir_version=8)
    _expect_error(proto, gc.ModelLoadError, "haunted (Relu)", "'ghost'", "defines")


# ----------------------------------------------------------------------------- external data


def _external_model(folder: Path, edit: Callable[[onnx.TensorProto], None] | None = None) -> Path:
    """The weighted model saved with external data in ``folder``; ``edit`` alters W1's entry."""
    path = models.save_with_external_data(models.weighted_model_proto(), folder)
    if edit is not None:
        proto = onnx.load(path, load_external_data=False)
        (w1,) = [t for t in proto.graph.initializer if t.name == "W1"]
        edit(w1)
        onnx.save_model(proto, path)
    return path


def _set_location(location: str) -> Callable[[onnx.TensorProto], None]:
    def edit(tensor: onnx.TensorProto) -> None:
        for entry in tensor.external_data:
            if entry.key == "location":
                entry.value = location

    return edit


def test_external_data_loads_from_its_own_folder(folder: Path, unchanged) -> None:
    path = _external_model(folder)
    unchanged()
    model = gc.load(path)
    x = {"x": np.ones((1, 16), np.float32)}
    assert np.array_equal(models.ort_outputs(model, x)[0], models.ort_outputs(path, x)[0])


def test_external_data_escaping_with_dotdot(tmp_path: Path, folder: Path, unchanged) -> None:
    # A real file with the right size sits outside: only the location check can stop it.
    (tmp_path / "secret.bin").write_bytes(b"\0" * 8192)
    path = _external_model(folder, _set_location("../secret.bin"))
    unchanged()
    _expect_error(path, gc.ModelLoadError, "'W1'", "../secret.bin", "outside the model's folder")


def test_external_data_with_an_absolute_path(tmp_path: Path, folder: Path, unchanged) -> None:
    secret = tmp_path / "secret.bin"
    secret.write_bytes(b"\0" * 8192)
    path = _external_model(folder, _set_location(str(secret)))
    unchanged()
    _expect_error(path, gc.ModelLoadError, "'W1'", str(secret), "outside the model's folder")


def test_external_data_through_a_symlink_pointing_outside(tmp_path: Path, folder: Path, unchanged) -> None:
    path = _external_model(folder)
    outside = tmp_path / "elsewhere.bin"
    os.replace(folder / "weights.bin", outside)
    os.symlink(outside, folder / "weights.bin")
    unchanged()
    _expect_error(path, gc.ModelLoadError, "weights.bin", "outside the model's folder")


def test_external_data_through_a_symlink_inside_is_fine(folder: Path) -> None:
    path = _external_model(folder)
    os.replace(folder / "weights.bin", folder / "real.bin")
    os.symlink("real.bin", folder / "weights.bin")
    assert len(gc.load(path).graph.initializers) == 3


def test_truncated_external_data(folder: Path, unchanged) -> None:
    path = _external_model(folder)
    data = folder / "weights.bin"
    data.write_bytes(data.read_bytes()[:1000])
    unchanged()
    _expect_error(path, gc.ModelLoadError, "weights.bin", "truncated")


def test_missing_external_data(folder: Path, unchanged) -> None:
    path = _external_model(folder)
    (folder / "weights.bin").unlink()
    unchanged()
    _expect_error(path, gc.ModelLoadError, "weights.bin", "missing")


def test_external_length_that_does_not_match_the_shape(folder: Path, unchanged) -> None:
    def shrink(tensor: onnx.TensorProto) -> None:
        for entry in tensor.external_data:
            if entry.key == "length":
                entry.value = "16"

    path = _external_model(folder, shrink)
    unchanged()
    _expect_error(path, gc.ModelLoadError, "'W1'", "16 bytes", "2048")


def test_hard_linked_external_data(tmp_path: Path, folder: Path, unchanged) -> None:
    path = _external_model(folder)
    os.link(folder / "weights.bin", tmp_path / "other-link.bin")
    unchanged()
    _expect_error(path, gc.ModelLoadError, "weights.bin", "hard link")


def test_external_data_in_bytes_has_no_folder(folder: Path) -> None:
    path = _external_model(folder)
    _expect_error(path.read_bytes(), gc.ModelLoadError, "'W1'", "not given as a file path")
