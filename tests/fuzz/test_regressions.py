"""Each escape the issue-13 fuzzing run (and this tier) found, as a test of its own: the
command gets a documented exit status and one clean error line, or the right result."""

from __future__ import annotations

import io
import zipfile
from pathlib import Path

import numpy as np
import onnx
import onnx.parser
import pytest

import greencc as gc
from greencc.cli import main
from greencc.data import CalibrationData
from tests.fuzz.cases import DENSE, Invocation
from tests.fuzz.harness import problems, run_inprocess, snapshot


def _dense(folder: Path) -> Path:
    path = folder / "in" / "dense.onnx"
    path.parent.mkdir(exist_ok=True)
    onnx.save(onnx.parser.parse_model(DENSE), path)
    return path


def _run(folder: Path, argv: list[str], output: Path | None = None) -> tuple[int, str]:
    """Run greencc on argv; assert the hostile-input contract; return (status, stderr)."""
    invocation = Invocation(argv, output)
    before = snapshot(folder)
    outcome = run_inprocess(invocation)
    assert not problems(outcome, invocation, before, snapshot(folder)), outcome.stderr
    return outcome.status, outcome.stderr


def _npz(path: Path, members: dict[str, bytes]) -> Path:
    with zipfile.ZipFile(path, "w") as archive:
        for name, data in members.items():
            archive.writestr(name, data)
    return path


def _header(shape: tuple[int, ...], descr: str = "<f4") -> bytes:
    buffer = io.BytesIO()
    np.lib.format.write_array_header_1_0(buffer, {"descr": descr, "fortran_order": False, "shape": shape})
    return buffer.getvalue()


def test_npz_header_declaring_64_gib_is_refused_before_reading(tmp_path: Path) -> None:
    model = _dense(tmp_path)
    npz = _npz(model.parent / "bomb.npz", {"x.npy": _header((1 << 34, 1, 8)) + bytes(64)})
    status, err = _run(tmp_path, ["compile", str(model), "--calib", str(npz), "-o", str(tmp_path / "out")])
    assert status == 2 and "declares" in err


def test_npz_whose_zip_directory_lies_is_bounded_by_the_header(tmp_path: Path) -> None:
    """A member's header says 4 GiB of zeros while the zip directory says a few bytes."""
    model = _dense(tmp_path)
    npz = _npz(model.parent / "liar.npz", {"x.npy": _header((1 << 28, 1, 4)) + bytes(16)})
    status, err = _run(tmp_path, ["compile", str(model), "--calib", str(npz), "-o", str(tmp_path / "out")])
    assert status == 2 and "stores 16" in err


def test_npz_over_available_memory_is_a_system_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from greencc import data

    monkeypatch.setattr(data, "_available_memory_bytes", lambda: 100)
    model = _dense(tmp_path)
    npz = model.parent / "calib.npz"
    np.savez(npz, x=np.zeros((4, 1, 8), np.float32))
    status, err = _run(tmp_path, ["compile", str(model), "--calib", str(npz), "-o", str(tmp_path / "out")])
    assert status == 8 and "available" in err


@pytest.mark.parametrize("name", ["x.txt", "x"])
def test_npz_member_that_is_not_npy_is_named(tmp_path: Path, name: str) -> None:
    model = _dense(tmp_path)
    npz = _npz(model.parent / "calib.npz", {name: b"hello"})
    status, err = _run(tmp_path, ["compile", str(model), "--calib", str(npz), "-o", str(tmp_path / "out")])
    assert status == 2 and f"member '{name}' is not an .npy array" in err


def test_big_endian_feeds_give_the_little_endian_result(tmp_path: Path) -> None:
    compiled = gc.compile(gc.load(_dense(tmp_path)), target="ort-cpu", pipeline="-O1")
    x = np.linspace(-1, 1, 8, dtype=np.float32).reshape(1, 8)
    native = compiled({"x": x})["y"]
    swapped = compiled({"x": x.astype(">f4")})["y"]
    np.testing.assert_array_equal(swapped, native)
    assert np.isfinite(swapped).all()


def test_big_endian_calibration_is_read_in_native_order(tmp_path: Path) -> None:
    model = gc.load(_dense(tmp_path))
    npz = tmp_path / "be.npz"
    x = np.random.default_rng(0).standard_normal((3, 1, 8)).astype(">f4")
    np.savez(npz, x=x)
    data = CalibrationData.from_npz(npz, model).check(model)
    first = data.batches()[0]["x"]
    assert first.dtype.isnative
    np.testing.assert_array_equal(first, x[0].astype(np.float32))


def _mutated(folder: Path, edit, name: str = "bad.onnx") -> Path:  # noqa: ANN001 - a small local callback
    proto = onnx.parser.parse_model(DENSE)
    data = edit(proto)
    path = folder / "in" / name
    path.parent.mkdir(exist_ok=True)
    path.write_bytes(data if isinstance(data, bytes) else proto.SerializeToString())
    return path


def _non_utf8_node_name(proto: onnx.ModelProto) -> bytes:
    proto.graph.node[0].name = "NAMEXX"
    return proto.SerializeToString().replace(b"NAMEXX", b"NA\xff\xfeXX")


def _non_utf8_input_name(proto: onnx.ModelProto) -> bytes:
    proto.graph.input[0].name = "QQ"
    proto.graph.node[0].input[0] = "QQ"
    return proto.SerializeToString().replace(b"QQ", b"\xff\xfe")


def _attribute_undefined(proto: onnx.ModelProto) -> None:
    proto.graph.node[3].op_type = "LeakyRelu"
    proto.graph.node[3].attribute.add().CopyFrom(onnx.helper.make_attribute("alpha", 0.5))
    proto.graph.node[3].attribute[0].type = onnx.AttributeProto.UNDEFINED


def _input_undefined(proto: onnx.ModelProto) -> None:
    proto.graph.input[0].type.tensor_type.elem_type = onnx.TensorProto.UNDEFINED


def _initializer_undefined(proto: onnx.ModelProto) -> None:
    proto.graph.initializer[0].data_type = onnx.TensorProto.UNDEFINED


def _negative_dim(proto: onnx.ModelProto) -> None:
    proto.graph.input[0].type.tensor_type.shape.dim[0].dim_value = -3


def _nul_in_external_location(proto: onnx.ModelProto) -> None:
    tensor = proto.graph.initializer[0]
    tensor.ClearField("float_data")
    tensor.data_location = onnx.TensorProto.EXTERNAL
    for key, value in (("location", "w\x00.bin"), ("offset", "0"), ("length", "32")):
        entry = tensor.external_data.add()
        entry.key, entry.value = key, value


def _decoder_metadata(text: str):  # noqa: ANN202 - returns an edit
    def edit(proto: onnx.ModelProto) -> None:
        entry = proto.metadata_props.add()
        entry.key, entry.value = "greencc.decoder", text
    return edit


@pytest.mark.parametrize("edit,fragment", [
    (_non_utf8_node_name, "not UTF-8"),
    (_non_utf8_input_name, "not UTF-8"),
    (_attribute_undefined, "attribute 'alpha' of type UNDEFINED"),
    (_input_undefined, "'x' has element type UNDEFINED"),
    (_initializer_undefined, "data type UNDEFINED"),
    (_negative_dim, "a dim of -3"),
    (_nul_in_external_location, "NUL"),
    (_decoder_metadata("null"), "greencc.decoder"),
    (_decoder_metadata("[]"), "greencc.decoder"),
    (_decoder_metadata('{"family": "llama", "num_layers": 2, "num_heads": 1, "num_kv_heads": 1, "head_dim": 2, '
                       '"hidden_size": 2, "vocab_size": -1}'), "vocab_size"),
], ids=lambda v: getattr(v, "__name__", None) or str(v)[:20])
def test_malformed_model_is_a_load_error_not_a_bug(tmp_path: Path, edit, fragment: str) -> None:  # noqa: ANN001
    path = _mutated(tmp_path, edit)
    (tmp_path / "in" / "w").write_bytes(bytes(32))
    for argv in (["inspect", str(path)], ["compile", str(path), "-O1", "-o", str(tmp_path / "out")]):
        status, err = _run(tmp_path, argv, tmp_path / "out" if argv[0] == "compile" else None)
        assert status == 3 and fragment in err, err


def test_deeply_nested_recipe_is_a_usage_error(tmp_path: Path) -> None:
    recipe = tmp_path / "in" / "recipe.toml"
    recipe.parent.mkdir()
    recipe.write_text("a = " + "[" * 100_000 + "]" * 100_000)
    status, err = _run(tmp_path, ["compile", "--config", str(recipe), "-o", str(tmp_path / "out")])
    assert status == 2 and "nests" in err


def test_report_json_over_the_input_model_is_refused(tmp_path: Path) -> None:
    model = _dense(tmp_path)
    status, err = _run(tmp_path, ["compile", str(model), "-O1", "--report-json", str(model), "-o", str(tmp_path / "out")])
    assert status == 2 and "is an input of this compile" in err


def test_ir_dump_escapes_node_names(tmp_path: Path) -> None:
    path = _mutated(tmp_path, lambda proto: setattr(proto.graph.node[0], "name", "n\x1b[31mred\nX") or None)
    status, _ = _run(tmp_path, ["compile", str(path), "-O1", "--print-ir-after", "all", "-o", str(tmp_path / "out"), "-q"],
                     tmp_path / "out")
    assert status == 0


@pytest.mark.parametrize("name", ["greencc.json", "report.json"])
def test_deeply_nested_artifact_json_is_a_load_error(tmp_path: Path, name: str) -> None:
    model = _dense(tmp_path)
    artifact = tmp_path / "in" / "art"
    assert main(["compile", str(model), "-O1", "-o", str(artifact), "-q"]) == 0
    (artifact / name).write_text("[" * 100_000 + "]" * 100_000)
    status, err = _run(tmp_path, ["bench", str(artifact), "--repeats", "1", "--warmup", "0"])
    assert status == 3 and name in err


@pytest.mark.parametrize("dim", [2**40, 2**62])
def test_input_too_large_to_feed_is_refused_before_allocating(tmp_path: Path, dim: int) -> None:
    path = _mutated(tmp_path, lambda proto: proto.graph.input[0].type.tensor_type.shape.dim[0].__setattr__("dim_value", dim))
    status, err = _run(tmp_path, ["compile", str(path), "-O1", "-o", str(tmp_path / "out")], tmp_path / "out")
    assert status == 2 and "of random data, over the 4 GiB limit" in err
