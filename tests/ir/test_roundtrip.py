"""Lossless round trip: load -> save -> load keeps the checker happy, ONNX Runtime's outputs
bit-identical, the structure identical and node metadata (torch stack traces) intact.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import pytest

import greencc as gc
from greencc import ir
from greencc.ir.io import iter_tensor_protos
from tests import models


@dataclass
class Case:
    """An original ONNX file on disk, feeds for it, and what must survive in it."""

    path: Path
    feeds: dict[str, np.ndarray] | None  # None: ONNX Runtime cannot run it (custom op)
    must_have_ops: tuple[str, ...] = ()
    expected: list[np.ndarray] | None = None  # ONNX Runtime's outputs on the original file


def _write(proto: onnx.ModelProto, folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "original.onnx"
    onnx.save_model(proto, path)
    return path


def _minilm_case(exporter: str, folder: Path) -> Case:
    exported = models.minilm_model(exporter)
    path = _write(ir.to_proto(exported.ir), folder)
    return Case(path, models.feeds_of(models.minilm_inputs()), ("MatMul", "Softmax", "LayerNormalization"))


def _cnn_case(folder: Path) -> Case:
    path = _write(models.small_cnn_proto(), folder)
    x = models.small_cnn_input(batch=3).numpy()
    return Case(path, {"x": x}, ("Conv", "BatchNormalization", "MaxPool", "Gemm"))


def _if_case(folder: Path) -> Case:
    path = _write(models.if_model_proto(), folder)
    x = np.random.default_rng(0).standard_normal((2, 3)).astype(np.float32)
    return Case(path, {"x": x}, ("If",))


def _external_case(folder: Path) -> Case:
    path = models.save_with_external_data(models.weighted_model_proto(), folder, name="original.onnx")
    x = np.random.default_rng(1).standard_normal((5, 16)).astype(np.float32)
    return Case(path, {"x": x}, ("MatMul", "Relu"))


def _custom_case(folder: Path) -> Case:
    return Case(_write(models.custom_op_model_proto(), folder), None, ("com.example::Frobnicate",))


BUILDERS: dict[str, Callable[[Path], Case]] = {
    "minilm-dynamo": lambda folder: _minilm_case("dynamo", folder),
    "minilm-legacy": lambda folder: _minilm_case("legacy", folder),
    "cnn-batchnorm": _cnn_case,
    "if-subgraph": _if_case,
    "external-data": _external_case,
    "custom-domain": _custom_case,
}


@pytest.fixture(scope="module", params=list(BUILDERS))
def case(request, tmp_path_factory) -> Case:
    built = BUILDERS[request.param](tmp_path_factory.mktemp(request.param))
    if built.feeds is not None:
        built.expected = models.ort_outputs(built.path, built.feeds)
    return built


def _snapshot(folder: Path) -> dict[str, tuple[bytes, int]]:
    return {p.name: (p.read_bytes(), p.stat().st_mtime_ns) for p in folder.iterdir() if p.is_file()}


def _structure(model: gc.Model) -> list[tuple]:
    """Node by node: op, domain, name, inputs, outputs, attributes' text, metadata."""
    return [
        (
            n.domain, n.op_type, n.name,
            tuple(v.name if v is not None else "" for v in n.inputs),
            tuple(v.name for v in n.outputs),
            tuple(sorted((k, _attribute_text(a)) for k, a in n.attributes.items())),
            tuple(sorted(n.metadata_props.items())),
        )
        for n in ir.traversal.RecursiveGraphIterator(model.graph)
    ]


def _attribute_text(attr: ir.Attr) -> str:
    # Subgraph nodes are compared on their own (RecursiveGraphIterator); name the graph only.
    if attr.type == ir.AttributeType.GRAPH:
        return f"graph {attr.value.name}"
    if attr.type == ir.AttributeType.GRAPHS:
        return f"graphs {[g.name for g in attr.value]}"
    return str(attr)


@pytest.mark.parametrize("external_data", [None, True], ids=["default", "external"])
def test_load_save_load_is_lossless(case: Case, external_data, tmp_path: Path) -> None:
    before = _snapshot(case.path.parent)
    original = gc.load(case.path)
    for op in case.must_have_ops:
        assert original.op_counts()[op] >= 1, f"{op} missing from the original: the case tests nothing"

    saved = original.save(tmp_path / "saved.onnx", external_data=external_data)
    onnx.checker.check_model(str(saved), full_check=case.feeds is not None)
    reloaded = gc.load(saved)

    assert _structure(reloaded) == _structure(original)
    assert reloaded.inputs == original.inputs and reloaded.outputs == original.outputs
    assert reloaded.ir.opset_imports == original.ir.opset_imports
    assert ir.to_self_contained_proto(reloaded.ir).graph == ir.to_self_contained_proto(original.ir).graph
    if case.feeds is not None:
        for got in (models.ort_outputs(saved, case.feeds), models.ort_outputs(reloaded, case.feeds)):
            assert len(got) == len(case.expected)
            for g, e in zip(got, case.expected, strict=True):
                assert g.dtype == e.dtype and np.array_equal(g, e)
    assert _snapshot(case.path.parent) == before, "loading or saving touched the input folder"


def test_forced_external_data_is_written_and_the_folder_moves(case: Case, tmp_path: Path) -> None:
    model = gc.load(case.path)
    saved = model.save(tmp_path / "out" / "model.onnx", external_data=True)
    data = saved.parent / "model.onnx.data"
    big = [v for v in model.graph.initializers.values() if v.const_value.nbytes > 1024]
    proto = onnx.load(saved, load_external_data=False)
    external = {t.name for t in iter_tensor_protos(proto.graph) if t.data_location == onnx.TensorProto.EXTERNAL}
    assert external == {v.name for v in big}
    if big:
        assert data.is_file() and data.stat().st_size >= sum(v.const_value.nbytes for v in big)
        locations = {e.value for t in proto.graph.initializer for e in t.external_data if e.key == "location"}
        assert locations == {"model.onnx.data"}, "external data must be referenced relatively"
    assert sorted(p.name for p in saved.parent.iterdir()) == sorted(["model.onnx"] + (["model.onnx.data"] if big else []))

    moved = tmp_path / "moved"
    shutil.copytree(saved.parent, moved)
    shutil.rmtree(saved.parent)
    onnx.checker.check_model(str(moved / "model.onnx"))
    reloaded = gc.load(moved / "model.onnx")
    assert _structure(reloaded) == _structure(model)
    if case.feeds is not None:
        for g, e in zip(models.ort_outputs(moved / "model.onnx", case.feeds), case.expected, strict=True):
            assert np.array_equal(g, e)


# ---------------------------------------------------------------- focused checks on one model


def test_dynamo_metadata_survives_save_and_load(tmp_path: Path) -> None:
    model = models.minilm_model("dynamo")
    traced = [n for n in model.graph if "pkg.torch.onnx.stack_trace" in n.metadata_props]
    assert len(traced) > len(model.graph) // 2, "the dynamo export should carry stack traces"
    assert any("pkg.torch.onnx.name_scopes" in n.metadata_props for n in model.graph)
    gc.ir.set_meta(traced[0], "cost", {"macs": 12, "dtype": "float32"})
    reloaded = gc.load(model.save(tmp_path / "m.onnx"))
    by_name = {n.name: n for n in reloaded.graph}
    for node in model.graph:
        assert dict(by_name[node.name].metadata_props) == dict(node.metadata_props)
    assert gc.ir.get_meta(by_name[traced[0].name], "cost") == {"macs": 12, "dtype": "float32"}


def test_minilm_exports_match_torch() -> None:
    import torch

    inputs = models.minilm_inputs()
    with torch.no_grad():
        expected = models.minilm_module("sdpa")(*inputs).numpy()
    for exporter in ("dynamo", "legacy"):
        (got,) = models.ort_outputs(models.minilm_model(exporter), models.feeds_of(inputs))
        assert got.shape == (1, models.MINILM_SEQ, 384)
        np.testing.assert_allclose(got, expected, atol=1e-4, err_msg=exporter)


def test_external_tensors_are_inlined_when_saving_elsewhere_without_external_data(tmp_path: Path) -> None:
    source = models.save_with_external_data(models.weighted_model_proto(), tmp_path / "src")
    model = gc.load(source)
    assert all(isinstance(v.const_value, ir.ExternalTensor) for v in model.graph.initializers.values())
    saved = model.save(tmp_path / "dst" / "m.onnx", external_data=False)
    assert [p.name for p in saved.parent.iterdir()] == ["m.onnx"]
    proto = onnx.load(saved, load_external_data=False)
    assert all(t.data_location == onnx.TensorProto.DEFAULT for t in proto.graph.initializer)
    # The model in memory still points at its own folder, unchanged by the save.
    assert all(isinstance(v.const_value, ir.ExternalTensor) for v in model.graph.initializers.values())
    x = {"x": np.ones((2, 16), np.float32)}
    assert np.array_equal(models.ort_outputs(saved, x)[0], models.ort_outputs(source, x)[0])


def test_saving_over_its_own_external_data_keeps_the_weights(tmp_path: Path) -> None:
    source = models.save_with_external_data(
        models.weighted_model_proto(), tmp_path, name="m.onnx", location="m.onnx.data"
    )
    x = {"x": np.random.default_rng(3).standard_normal((2, 16)).astype(np.float32)}
    expected = models.ort_outputs(source, x)[0]
    model = gc.load(source)
    sibling = model.clone()  # shares the (not yet read) external tensors
    # Reorder the initializers so that the new data file has other offsets than the old one.
    values = list(model.graph.initializers.values())
    model.graph.initializers.clear()
    for value in reversed(values):
        model.graph.register_initializer(value)
    model.save(source, external_data=True)
    for m in (model, sibling, gc.load(source)):
        assert np.array_equal(models.ort_outputs(m, x)[0], expected)


def test_save_is_atomic_when_writing_fails(tmp_path: Path, monkeypatch) -> None:
    target = tmp_path / "m.onnx"
    target.write_bytes(b"previous content")
    model = gc.load(models.weighted_model_proto())

    def broken_save(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr("greencc.ir.io.ir.save", broken_save)
    with pytest.raises(OSError, match="disk full"):
        model.save(target)
    assert target.read_bytes() == b"previous content"
    assert sorted(os.listdir(tmp_path)) == ["m.onnx"], "staging files were left behind"


def test_save_refuses_a_directory(tmp_path: Path) -> None:
    with pytest.raises(gc.UsageError, match="directory"):
        gc.load(models.weighted_model_proto()).save(tmp_path)


def test_if_subgraph_keeps_outer_scope_references(tmp_path: Path) -> None:
    model = gc.load(gc.load(models.if_model_proto()).save(tmp_path / "if.onnx"))
    (if_node,) = [n for n in model.graph if n.op_type == "If"]
    then_graph = if_node.attributes["then_branch"].value
    assert list(then_graph.initializers) == ["bias"]
    outer = {v.name for v in gc.ir.captured_values(if_node)}
    assert outer == {"x", "w"}
    for x in (np.ones((2, 3), np.float32), -np.ones((2, 3), np.float32)):
        (y,) = models.ort_outputs(model, {"x": x})
        w = np.array([1, 2, 3], np.float32)
        expected = x * w + np.array([0.5, -0.5, 0.25], np.float32) if x.sum() > 0 else x - w
        assert np.array_equal(y, expected)
