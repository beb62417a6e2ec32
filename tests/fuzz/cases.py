"""The fuzz tier's seeded generator: each case is a kind and a seed, and
:func:`materialize` writes its hostile files into a folder and returns the command line
that feeds them to ``greencc``. The same (kind, seed) always gives the same bytes.

Kinds: ``model`` (byte flips, truncation, bad dtypes, dims, names, attributes, opsets,
external data, bombs), ``calib`` (.npz files), ``pipeline`` (pipeline text), ``options``
(command-line flags), ``recipe`` (CompileConfig TOML) and ``artifact`` (a compiled
artifact tampered with).
"""

from __future__ import annotations

import io
import random
import shutil
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import onnx.parser

KINDS = ("model", "calib", "pipeline", "options", "recipe", "artifact")
# How often each kind is drawn: models and options are where most escapes were found.
WEIGHTS = (30, 12, 16, 18, 10, 14)

DENSE = """<ir_version: 10, opset_import: ["" : 17]>
dense (float[1, 8] x) => (float[1, 8] y) <float[8] w = {1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0}, float one = {1.0}> {
  i = Identity(x)
  m = Mul(i, one)
  a = Add(m, w)
  y = Relu(a)
}"""

SYMBOLIC = """<ir_version: 10, opset_import: ["" : 17]>
symbolic (float[N, 4] x, int64[N, 2] idx) => (float[N, 2] y) <float[4, 4] w = {1.0, 0.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 0.0, 1.0}> {
  h = MatMul(x, w)
  s = Softmax<axis=-1>(h)
  y = GatherElements<axis=1>(s, idx)
}"""

CONV = """<ir_version: 8, opset_import: ["" : 13]>
conv (float[1, 2, 6, 6] x) => (float[1, 2, 3, 3] y) <float[2, 2, 3, 3] k = {1.0, 0.5, 0.25, 1.0, 0.5, 0.25, 1.0, 0.5, 0.25, 1.0, 0.5, 0.25, 1.0, 0.5, 0.25, 1.0, 0.5, 0.25, 1.0, 0.5, 0.25, 1.0, 0.5, 0.25, 1.0, 0.5, 0.25, 1.0, 0.5, 0.25, 1.0, 0.5, 0.25, 1.0, 0.5, 0.25}, float[2] b = {0.1, -0.1}> {
  c = Conv<pads=[1, 1, 1, 1]>(x, k, b)
  r = Relu(c)
  y = MaxPool<kernel_shape=[2, 2], strides=[2, 2]>(r)
}"""

BOMBS = {
    "constant-of-shape": """<ir_version: 10, opset_import: ["" : 17]>
bomb (float[1] x) => (float[1] y) {
  s = Constant<value=int64[2] {30000, 30000}>()
  c = ConstantOfShape<value=float[1] {1.0}>(s)
  r = ReduceSum<keepdims=0>(c)
  y = Add(x, r)
}""",
    "range": """<ir_version: 10, opset_import: ["" : 17]>
bomb (float[1] x) => (float[1] y) {
  lo = Constant<value=float {0.0}>()
  hi = Constant<value=float {500000000.0}>()
  st = Constant<value=float {1.0}>()
  r = Range(lo, hi, st)
  m = ReduceMax<keepdims=0>(r)
  y = Add(x, m)
}""",
    "expand": """<ir_version: 10, opset_import: ["" : 17]>
bomb (float[1] x) => (float[1] y) {
  one = Constant<value=float[1] {1.0}>()
  s = Constant<value=int64[3] {4096, 4096, 512}>()
  e = Expand(one, s)
  r = ReduceSum<keepdims=0>(e)
  y = Add(x, r)
}""",
    "tile": """<ir_version: 10, opset_import: ["" : 17]>
bomb (float[1] x) => (float[1] y) {
  one = Constant<value=float[1, 1] {1.0}>()
  reps = Constant<value=int64[2] {65536, 65536}>()
  t = Tile(one, reps)
  r = ReduceSum<keepdims=0>(t)
  y = Add(x, r)
}""",
}

# Names and texts that have broken tools before: terminal escapes, line breaks, NUL,
# bidirectional overrides, path tricks, format strings, pipeline syntax, very long text.
HOSTILE_TEXT = (
    "\x1b[31mred\x1b[0m", "\x1b]0;title\x07", "line\nbreak", "carriage\rreturn", "nul\x00byte",
    "\u202eevil", "\u2028sep", "../../etc/passwd", "/etc/passwd", "%s%n%x", "{", "}", "a,b{c=d}", "",
    " ", "é" * 3, "x" * 5000, "\t", "$(touch pwned)", "`id`", "\\", "'\"",
)
HUGE_NUMBERS = ("1e309", "-1e309", "nan", "inf", "-inf", "1e9", str(2**63), str(-(2**63) - 1), "0x10", "1_000",
                str(10**20), "-0", "0", "-1", "2147483648", "4294967296", "9" * 40, "0.5", "1e-320")
NON_UTF8 = b"\xff\xfe\xfd\xfc\xfb\xfa\xf9"
MARK = b"NONUTF8"  # as long as NON_UTF8, so protobuf length prefixes stay right
ELEM_TYPES = (0, 1, 2, 6, 7, 8, 9, 10, 11, 14, 16, 17, 21, 23, 99, 1000)
DIMS = (-1, -7, 0, 1, 3, 2**31, 2**40, 2**62)
OPS = ("Relu", "Add", "MatMul", "Conv", "Reshape", "Loop", "If", "Scan", "Frobnicate", "", "Gemm",
       "QuantizeLinear", "Resize", "NonMaxSuppression", "Einsum", "Cast", "SequenceAt", "\x1b[2J")


@dataclass(frozen=True)
class FuzzCase:
    """One seeded case: ``kind`` picks the generator, ``seed`` everything it draws."""

    kind: str
    seed: int

    @property
    def name(self) -> str:
        """The pytest id, e.g. ``model-00042``."""
        return f"{self.kind}-{self.seed:05d}"


@dataclass
class Invocation:
    """What a case runs: ``argv`` for ``greencc``; ``output`` is the directory a compile
    writes (None when the command writes nothing)."""

    argv: list[str]
    output: Path | None = None


@dataclass(frozen=True)
class Bases:
    """Valid starting points the generators mutate, built once per session."""

    models: dict[str, bytes]
    calibration: bytes  # a good .npz for the DENSE model
    artifact: Path  # DENSE compiled to ort-cpu at -O1


def cases(count: int, seed: int) -> list[FuzzCase]:
    """``count`` cases drawn by ``seed``; kinds in proportion to :data:`WEIGHTS`."""
    rng = random.Random(seed)
    kinds = rng.choices(KINDS, weights=WEIGHTS, k=count)
    return [FuzzCase(kind, seed * 100_000 + index) for index, kind in enumerate(kinds)]


def base_models() -> dict[str, bytes]:
    """The serialized valid models the model generator mutates."""
    return {name: onnx.parser.parse_model(text).SerializeToString() for name, text in
            (("dense", DENSE), ("symbolic", SYMBOLIC), ("conv", CONV))}


def good_calibration() -> bytes:
    """An .npz of four samples for DENSE's input ``x``."""
    buffer = io.BytesIO()
    np.savez(buffer, x=np.random.default_rng(0).standard_normal((4, 1, 8)).astype(np.float32))
    return buffer.getvalue()


def materialize(case: FuzzCase, folder: Path, bases: Bases) -> Invocation:
    """Write ``case``'s inputs under ``folder`` and return its command line."""
    rng = random.Random(case.seed)
    return GENERATORS[case.kind](rng, folder, bases)


# -- bytes -----------------------------------------------------------------------------------
def corrupt_bytes(rng: random.Random, data: bytes) -> bytes:
    """``data`` with random bytes flipped, cut, repeated or spliced in."""
    out = bytearray(data)
    for _ in range(rng.randint(1, 4)):
        how = rng.choice(("flip", "flip", "truncate", "insert", "duplicate", "zero"))
        if not out:
            break
        at = rng.randrange(len(out))
        if how == "flip":
            out[at] ^= 1 << rng.randrange(8)
        elif how == "truncate":
            del out[at:]
        elif how == "insert":
            out[at:at] = rng.randbytes(rng.randint(1, 16))
        elif how == "duplicate":
            out[at:at] = out[at:at + rng.randint(1, 64)]
        else:
            out[at:at + rng.randint(1, 32)] = bytes(min(32, len(out) - at))
    return bytes(out)


# -- models ----------------------------------------------------------------------------------
def _values(model: onnx.ModelProto) -> list[onnx.ValueInfoProto]:
    graph = model.graph
    return [*graph.input, *graph.output, *graph.value_info]


def _rename(rng: random.Random, model: onnx.ModelProto) -> None:
    node = rng.choice(model.graph.node)
    text = rng.choice((*HOSTILE_TEXT, MARK.decode()))
    target = rng.choice(("node", "value", "graph", "output", "doc"))
    if target == "node":
        node.name = text
    elif target == "graph":
        model.graph.name = text
    elif target == "doc":
        node.doc_string = text
    else:
        old = node.output[0] if target == "value" else model.graph.output[0].name
        for other in model.graph.node:
            other.input[:] = [text if name == old else name for name in other.input]
            other.output[:] = [text if name == old else name for name in other.output]
        for value in _values(model):
            if value.name == old:
                value.name = text


def _retype(rng: random.Random, model: onnx.ModelProto) -> None:
    elem = rng.choice(ELEM_TYPES)
    if rng.random() < 0.5 and model.graph.initializer:
        rng.choice(model.graph.initializer).data_type = elem
    else:
        rng.choice(_values(model)).type.tensor_type.elem_type = elem


def _redim(rng: random.Random, model: onnx.ModelProto) -> None:
    if rng.random() < 0.4 and model.graph.initializer:
        tensor = rng.choice(model.graph.initializer)
        if tensor.dims:
            tensor.dims[rng.randrange(len(tensor.dims))] = rng.choice(DIMS)
        return
    shape = rng.choice(_values(model)).type.tensor_type.shape
    if not shape.dim:
        return
    dim = shape.dim[rng.randrange(len(shape.dim))]
    if rng.random() < 0.7:
        dim.dim_value = rng.choice(DIMS)
    else:
        dim.dim_param = rng.choice(HOSTILE_TEXT) or "N"


def _reattribute(rng: random.Random, model: onnx.ModelProto) -> None:
    node = rng.choice(model.graph.node)
    if not node.attribute:
        node.attribute.add().CopyFrom(onnx.helper.make_attribute(rng.choice(("axis", "alpha", "\x1b")), rng.choice((-(2**40), 1.5, "s"))))
        return
    attribute = rng.choice(node.attribute)
    how = rng.randrange(3)
    if how == 0:
        attribute.type = rng.choice((0, 1, 2, 3, 5, 7, 13))
    elif how == 1:
        attribute.ints[:] = [rng.choice(DIMS) for _ in range(rng.randint(0, 5))]
        attribute.i = rng.choice(DIMS)
    else:
        del node.attribute[:]


def _reop(rng: random.Random, model: onnx.ModelProto) -> None:
    node = rng.choice(model.graph.node)
    node.op_type = rng.choice(OPS)
    if rng.random() < 0.3:
        node.domain = rng.choice(("com.microsoft", "ai.onnx.ml", "com.example", "\x1b[0m", "ai.onnx"))


def _reversion(rng: random.Random, model: onnx.ModelProto) -> None:
    if rng.random() < 0.5:
        model.ir_version = rng.choice((-1, 0, 1, 3, 4, 11, 12, 99))
    else:
        model.opset_import[0].version = rng.choice((-1, 0, 1, 6, 12, 23, 24, 99999))


def _rewire(rng: random.Random, model: onnx.ModelProto) -> None:
    graph = model.graph
    how = rng.randrange(5)
    if how == 0 and len(graph.node) > 1:
        del graph.node[rng.randrange(len(graph.node))]
    elif how == 1:
        graph.node[rng.randrange(len(graph.node))].input.append(rng.choice(("nowhere", "", "x")))
    elif how == 2:
        graph.output.add().CopyFrom(graph.output[0])
    elif how == 3:
        del graph.input[:]
    else:
        graph.node.reverse()


def _reweigh(rng: random.Random, model: onnx.ModelProto) -> None:
    if not model.graph.initializer:
        return
    tensor = rng.choice(model.graph.initializer)
    how = rng.randrange(4)
    if how == 0:
        tensor.float_data.extend([rng.random() for _ in range(rng.randint(1, 5))])
    elif how == 1:
        values = list(tensor.float_data) or [1.0]
        tensor.ClearField("float_data")
        tensor.raw_data = np.asarray(values[:-1], np.float32).tobytes()
    elif how == 2:
        tensor.ClearField("float_data")
        tensor.dims[:] = [2**20, 2**20]
    else:
        tensor.float_data[:] = [float("nan"), float("inf")][: len(tensor.float_data)] + list(tensor.float_data[2:])


def _externalize(rng: random.Random, model: onnx.ModelProto) -> None:
    if not model.graph.initializer:
        return
    tensor = rng.choice(model.graph.initializer)
    tensor.ClearField("float_data")
    tensor.ClearField("raw_data")
    tensor.data_location = onnx.TensorProto.EXTERNAL
    location = rng.choice(("weights.bin", "../weights.bin", "/etc/passwd", "w\x00.bin", "x" * 4000,
                           "missing.bin", ".", "", "sub/../../weights.bin", "\x1b[31m.bin"))
    entries = {"location": location, "offset": rng.choice(("0", "4", "-8", "1e9", "x", str(2**63))),
               "length": rng.choice(("32", "4", "0", "-1", str(2**40), "y"))}
    for key in rng.sample(sorted(entries), rng.randint(1, 3)):
        entry = tensor.external_data.add()
        entry.key, entry.value = key, entries[key]


def _metadata(rng: random.Random, model: onnx.ModelProto) -> None:
    entry = model.metadata_props.add()
    entry.key = rng.choice(("greencc.decoder", "greencc.meta", "\x1b[1m"))
    entry.value = rng.choice(("{", "[]", '{"family": 1}', '{"num_layers": -1}', "null", "x" * 10000,
                              '{"family": "llama", "num_layers": 99999999, "num_heads": 0, "num_kv_heads": 0, '
                              '"head_dim": 0, "hidden_size": 0, "vocab_size": -1}'))


MUTATORS: tuple[Callable[[random.Random, onnx.ModelProto], None], ...] = (
    _rename, _retype, _redim, _reattribute, _reop, _reversion, _rewire, _reweigh, _externalize, _metadata,
)


def hostile_model(rng: random.Random, bases: Bases) -> bytes:
    """A mutated model: proto-level mutations, a bomb, or corrupted bytes."""
    roll = rng.random()
    if roll < 0.08:
        return onnx.parser.parse_model(BOMBS[rng.choice(sorted(BOMBS))]).SerializeToString()
    base = bases.models[rng.choice(sorted(bases.models))]
    if roll < 0.3:
        return corrupt_bytes(rng, base)
    model = onnx.ModelProto.FromString(base)
    for mutate in rng.sample(MUTATORS, rng.randint(1, 3)):
        mutate(rng, model)
    return model.SerializeToString().replace(MARK, NON_UTF8)


def _model_case(rng: random.Random, folder: Path, bases: Bases) -> Invocation:
    inputs = folder / "in"
    inputs.mkdir()
    path = inputs / "model.onnx"
    path.write_bytes(hostile_model(rng, bases))
    (inputs / "weights.bin").write_bytes(np.arange(8, dtype=np.float32).tobytes() * 4)
    out = folder / "out"
    command = rng.choice(("inspect", "inspect-json", "O0", "O1", "O1", "cleanup"))
    if command.startswith("inspect"):
        return Invocation(["inspect", str(path), *(["--json"] if command == "inspect-json" else [])])
    pipeline = ["--pipeline", "cleanup"] if command == "cleanup" else [f"-{command}"]
    return Invocation(["compile", str(path), *pipeline, "-o", str(out), "-q"], out)


# -- calibration files -----------------------------------------------------------------------
def _npy(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.lib.format.write_array(buffer, array, allow_pickle=True)
    return buffer.getvalue()


def _npy_header(shape: tuple[int, ...], descr: str) -> bytes:
    buffer = io.BytesIO()
    np.lib.format.write_array_header_1_0(buffer, {"descr": descr, "fortran_order": False, "shape": shape})
    return buffer.getvalue()


def hostile_npz(rng: random.Random, bases: Bases) -> bytes:
    """An .npz for DENSE (input ``x``: float32[1, 8]) that is wrong in one way."""
    good = np.random.default_rng(rng.randrange(2**32)).standard_normal((4, 1, 8)).astype(np.float32)
    members: dict[str, bytes]
    how = rng.randrange(12)
    if how == 0:
        return corrupt_bytes(rng, bases.calibration)
    if how == 1:
        members = {"x.npy": _npy_header((rng.choice((2**34, 2**40, 3 * 2**28)), 8), "<f4") + b"\0" * 64}
    elif how == 2:
        members = {rng.choice(("x.txt", "x", "../x.npy", "x.npy/", "\x1b.npy")): b"hello"}
    elif how == 3:
        members = {"x.npy": _npy(np.array([{"a": 1}, None], dtype=object))}
    elif how == 4:
        members = {"x.npy": _npy(good.astype(rng.choice((">f4", ">f8", "<f8", "<i4", "<U3", "?"))))}
    elif how == 5:
        members = {rng.choice(("y.npy", "X.npy", "x.npy.npy", ".npy")): _npy(good)}
    elif how == 6:
        bad = good.copy()
        bad.flat[rng.randrange(bad.size)] = rng.choice((np.nan, np.inf, -np.inf))
        members = {"x.npy": _npy(bad)}
    elif how == 7:
        members = {"x.npy": _npy(good.reshape(rng.choice(((32,), (4, 8), (1, 4, 1, 8), (4, 2, 4)))))}
    elif how == 8:
        members = {"x.npy": _npy(good), "extra.npy": _npy(good)}
    elif how == 9:
        members = {"x.npy": _npy_header((4, 1, 8), rng.choice(("<f4", "|O", "<V4", "<M8[s]", "<c8", "xx")))
                   + rng.randbytes(rng.choice((0, 16, 128)))}
    elif how == 10:
        members = {"x.npy": _npy(np.zeros((0, 1, 8), np.float32))}
    else:
        return rng.choice((b"", b"PK\x05\x06" + bytes(18), b"\x93NUMPY", rng.randbytes(64)))
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=rng.choice((zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED))) as archive:
        for name, data in members.items():
            archive.writestr(name, data)
    return buffer.getvalue()


def _calib_case(rng: random.Random, folder: Path, bases: Bases) -> Invocation:
    inputs = folder / "in"
    inputs.mkdir()
    model = inputs / "dense.onnx"
    model.write_bytes(bases.models["dense"])
    npz = inputs / "calib.npz"
    npz.write_bytes(hostile_npz(rng, bases))
    out = folder / "out"
    level = rng.choice(("-O1", "-O3"))
    return Invocation(["compile", str(model), level, "--calib", str(npz), "-o", str(out), "-q"], out)


# -- pipeline text ---------------------------------------------------------------------------
PASSES = ("cleanup", "dce", "cse", "fold-constants", "remove-identity", "simplify-shapes", "fuse",
          "fuse-gelu", "fold-batchnorm", "sparsify", "prune-heads", "quantize-int8", "quantize-weights",
          "no-such-pass")
OPTION_KEYS = ("max_size", "ratio", "method", "steps", "sparsity", "pattern", "block_size", "bits", "x", "")


def hostile_pipeline(rng: random.Random) -> str:
    """Pipeline text: real passes with random options, presets, and broken syntax."""
    if rng.random() < 0.15:
        return rng.choice(("-O0", "-O1", "-O4", "green", "-O", "--", "-O2,-O1", *HOSTILE_TEXT))
    items = []
    for _ in range(rng.randint(1, 4)):
        name = rng.choice(PASSES)
        if rng.random() < 0.5:
            options = ",".join(f"{rng.choice(OPTION_KEYS)}={rng.choice((*HUGE_NUMBERS, *HOSTILE_TEXT[:8], 'entropy', 'true'))}"
                               for _ in range(rng.randint(1, 3)))
            name += "{" + options + "}"
        items.append(name)
    text = ",".join(items)
    if rng.random() < 0.3:
        at = rng.randrange(len(text) + 1)
        text = text[:at] + rng.choice(("{", "}", ",", "=", "{{", "\x00", "\n", ";")) + text[at:]
    return text


def _pipeline_case(rng: random.Random, folder: Path, bases: Bases) -> Invocation:
    inputs = folder / "in"
    inputs.mkdir()
    model = inputs / "model.onnx"
    model.write_bytes(bases.models[rng.choice(("dense", "conv"))])
    out = folder / "out"
    return Invocation(["compile", str(model), "--pipeline", hostile_pipeline(rng), "-o", str(out), "-q"], out)


# -- command-line options --------------------------------------------------------------------
def _flag_value(rng: random.Random) -> str:
    return rng.choice((*HUGE_NUMBERS, *HOSTILE_TEXT[:12], "1", "2", "4"))


def _options_case(rng: random.Random, folder: Path, bases: Bases) -> Invocation:
    inputs = folder / "in"
    inputs.mkdir()
    model = inputs / "model.onnx"
    model.write_bytes(bases.models[rng.choice(("dense", "symbolic"))])
    out = folder / "out"
    command = rng.choice(("compile", "compile", "compile", "inspect", "bench", "generate", "report", "repro"))
    flags: list[str] = []
    if command == "compile":
        choices = (
            lambda: ["--threads", _flag_value(rng)],
            lambda: ["--seed", _flag_value(rng)],
            lambda: ["--dim", f"{rng.choice(('N', 'batch', '', '=', *HOSTILE_TEXT[:6]))}={_flag_value(rng)}"],
            lambda: ["--budget", rng.choice(("cos", "mae", "top1", "acc", "x", "")) + rng.choice(("=", ">", "")) + _flag_value(rng)],
            lambda: ["--target-option", f"{rng.choice(('threads', 'opt_level', 'x', ''))}={_flag_value(rng)}"],
            lambda: ["-t", rng.choice(("ort-cpu", "no-such", "", "ort-cpu\x1b[31m", "tvm-llvm{", "ORT-CPU"))],
            lambda: ["--measure-window", _flag_value(rng)],
            lambda: ["--pue", _flag_value(rng)],
            lambda: ["--grid-intensity", rng.choice((*HUGE_NUMBERS[:6], "XYZ", "USA:nowhere", "FRA", "-5"))],
            lambda: ["--print-ir-after", rng.choice(("all", "change", "cleanup", "\x1b[2J"))],
            lambda: ["--explain", rng.choice(("cleanup", "fuse", "no-such", "\n"))],
            lambda: ["--repro-dir", str(folder / rng.choice(("r", "in/model.onnx", "x" * 300)))],
            lambda: ["--report-json", str(rng.choice((folder / "r.json", inputs, folder / "no" / "r.json", inputs / "model.onnx")))],
            lambda: ["--plugin", rng.choice(("no_such_module", str(inputs / "model.onnx"), "os", ""))],
        )
        for make in rng.sample(choices, rng.randint(1, 3)):
            flags += make()
        if rng.random() < 0.3:
            flags.append("--no-verify")
        return Invocation(["compile", str(model), "-O1", *flags, "-o", str(out), "-q"], out)
    if command == "inspect":
        flags = rng.choice((["--top", _flag_value(rng)], ["--dim", f"N={_flag_value(rng)}"],
                            ["--profile", rng.choice(("nope", "../x", "\x1b"))], ["-t", rng.choice(("nope", ""))]))
        return Invocation(["inspect", str(model), *flags])
    artifact = folder / "art"
    shutil.copytree(bases.artifact, artifact)
    if command == "bench":
        flags = rng.choice((["--repeats", rng.choice(("0", "-1", "1", "x"))], ["--warmup", rng.choice(("-5", "0", "y"))],
                            ["--dim", f"N={_flag_value(rng)}"], ["--seed", _flag_value(rng)],
                            ["--grid-intensity", "5"], ["--generate", "--batch", rng.choice(("0", "-1", "1"))]))
        return Invocation(["bench", str(artifact), "--repeats", "1", "--warmup", "0", *flags])
    if command == "generate":
        flags = rng.choice((["--ids", rng.choice(("1,2", "", ",", "x", str(2**70), "-1"))], ["--prompt", rng.choice(HOSTILE_TEXT)]))
        return Invocation(["generate", str(artifact), *flags, "--max-new-tokens", rng.choice(("1", "0", "-3"))])
    if command == "report":
        return Invocation(["report", str(rng.choice((artifact / "greencc.json", model, inputs, folder / "missing.json")))])
    return Invocation(["repro", str(rng.choice((artifact, inputs, folder / "missing")))])


# -- recipes ---------------------------------------------------------------------------------
RECIPE_FIELDS = ("model", "model_sha256", "target", "pipeline", "calibration", "calibration_sha256", "budget",
                 "threads", "seed", "verify", "measure", "energy_window_s", "grid_intensity", "pue", "plugins",
                 "nonsense")
TABLE_KEYS = ("N", "threads", "x", '"\\u001b"')


def _toml_value(rng: random.Random) -> str:
    return rng.choice((
        "1", "-1", "0", str(2**63 - 1), "1e309", "nan", "inf", "-inf", "true", '""', '"\\u001b[31m"',
        '"model.onnx"', '"../model.onnx"', '"/etc/passwd"', '"-O1"', '"cleanup{"', '"cos=2"', "[1, 2]",
        '["a", 1]', "{ a = 1 }", "1979-05-27T07:32:00Z", '"' + "x" * 3000 + '"', "[" * 200 + "]" * 200,
    ))


def hostile_recipe(rng: random.Random) -> bytes:
    """A CompileConfig TOML recipe with random fields, values and syntax errors."""
    lines = ['model = "model.onnx"'] if rng.random() < 0.7 else []
    for field in rng.sample(RECIPE_FIELDS, rng.randint(1, 4)):
        lines.append(f"{field} = {_toml_value(rng)}")
    for table in rng.sample(("dims", "target_options"), rng.randint(0, 2)):
        lines.append(f"[{table}]")
        lines.append(f"{rng.choice(TABLE_KEYS)} = {_toml_value(rng)}")
    text = "\n".join(lines).encode()
    roll = rng.random()
    if roll < 0.15:
        return corrupt_bytes(rng, text)
    if roll < 0.2:
        return text + NON_UTF8
    if roll < 0.25:
        return b"a = " + b"[" * 100_000 + b"]" * 100_000
    return text


def _recipe_case(rng: random.Random, folder: Path, bases: Bases) -> Invocation:
    inputs = folder / "in"
    inputs.mkdir()
    (inputs / "model.onnx").write_bytes(bases.models["dense"])
    recipe = inputs / "recipe.toml"
    recipe.write_bytes(hostile_recipe(rng))
    out = folder / "out"
    return Invocation(["compile", "--config", str(recipe), "-o", str(out), "-q"], out)


# -- artifacts -------------------------------------------------------------------------------
def _artifact_case(rng: random.Random, folder: Path, bases: Bases) -> Invocation:
    artifact = folder / "art"
    shutil.copytree(bases.artifact, artifact)
    files = sorted(p for p in artifact.rglob("*") if p.is_file())
    victim = rng.choice(files)
    how = rng.randrange(6)
    if how == 0:
        victim.write_bytes(corrupt_bytes(rng, victim.read_bytes()))
    elif how == 1:
        victim.unlink()
    elif how == 2:
        victim.write_bytes(rng.choice((b"", b"[1,2]", b"null", b'"x"', b"[" * 100_000, b"{}", NON_UTF8,
                                       b'{"schema": "greencc.report/1", "rows": [5]}')))
    elif how == 3:
        (artifact / rng.choice(("model.onnx", "greencc.json"))).write_bytes(hostile_model(rng, bases))
    elif how == 4:
        victim.unlink()
        victim.symlink_to(rng.choice(("/etc/passwd", "/dev/zero", str(folder / "missing"), "/")))
    else:
        text = victim.read_bytes()
        for old, new in ((b'"ort-cpu"', b'"tvm-llvm"'), (b"float32", b"float64"), (b'"threads": ', b'"threads": -'),
                         (b"model.onnx", b"../../../x.onnx"), (b'"1"', b'"\\u001b[31m"')):
            if old in text and rng.random() < 0.5:
                text = text.replace(old, new, 1)
        victim.write_bytes(text)
    command = rng.choice(("bench", "bench", "report", "generate"))
    if command == "bench":
        return Invocation(["bench", str(artifact), "--repeats", "1", "--warmup", "0"])
    if command == "report":
        return Invocation(["report", str(artifact / "report.json")])
    return Invocation(["generate", str(artifact), "--ids", "1,2", "--max-new-tokens", "1"])


GENERATORS: dict[str, Callable[[random.Random, Path, Bases], Invocation]] = {
    "model": _model_case, "calib": _calib_case, "pipeline": _pipeline_case, "options": _options_case,
    "recipe": _recipe_case, "artifact": _artifact_case,
}

