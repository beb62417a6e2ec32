"""One-pass range collection on the tiny BERT against numpy on the intermediate tensors, read
independently (ONNX shape inference + an ONNX Runtime session exposing them as outputs)."""

from __future__ import annotations

import numpy as np
import onnx
import pytest

from greencc.data import CalibrationData
from greencc.errors import UsageError
from greencc.execution import Executor
from greencc.ir import to_self_contained_proto
from greencc.quant import (
    EntropyObserver,
    MinMaxObserver,
    PercentileObserver,
    collect_abs_max,
    collect_ranges,
    iter_intermediates,
)
from tests import helpers, models

# LayerNorm output (a MatMul input), the masked attention scores (additive float mask:
# huge negative fillers), the softmax, a GELU output and a MatMul output.
TENSORS = ["layer_norm", "val_139", "val_140", "gelu", "val_159"]


EXECUTOR = Executor()


@pytest.fixture(scope="module")
def bert():
    return models.tiny_bert_model()


@pytest.fixture(scope="module")
def calibration():
    feeds = []
    for seed, (batch, seq) in enumerate([(2, 16), (1, 9), (3, 12)]):
        feeds.append(models.feeds_of(models.tiny_bert_inputs(batch=batch, seq=seq, seed=seed)))
    return CalibrationData.from_feeds(feeds)


def _intermediates(model, names, feeds):
    """The values of ``names`` for ``feeds``, by an independent route."""
    proto = onnx.shape_inference.infer_shapes(to_self_contained_proto(model.ir))
    infos = {vi.name: vi for vi in proto.graph.value_info}
    del proto.graph.output[:]
    proto.graph.output.extend(infos[name] for name in names)
    return dict(zip(names, helpers.run_ort(proto, feeds), strict=True))


@pytest.fixture(scope="module")
def values(bert, calibration):
    per_batch = [_intermediates(bert, TENSORS, feeds) for feeds in calibration]
    return {name: [batch[name] for batch in per_batch] for name in TENSORS}


def test_the_test_tensors_are_what_they_claim(bert, values):
    ops = {value.name: node.op_type for node in bert.graph for value in node.outputs}
    assert [ops[name] for name in TENSORS] == ["LayerNormalization", "Add", "Softmax", "Gelu", "MatMul"]
    assert min(v.min() for v in values["val_139"]) <= -1e30  # the mask fillers are really there


def test_minmax_equals_numpy_on_intermediates(bert, calibration, values):
    before = len(bert.graph.outputs)
    ranges = collect_ranges(bert, calibration, TENSORS, ("minmax",), executor=EXECUTOR)
    assert len(bert.graph.outputs) == before  # the model is not modified
    for name in TENSORS:
        everything = np.concatenate([v.reshape(-1) for v in values[name]])
        regular = everything[np.abs(everything) < 1e30]
        r = ranges[name]["minmax"]
        assert float(r.lo) == float(regular.min()) and float(r.hi) == float(regular.max()), name
    fillers = sum(int((v <= -1e30).sum()) for v in values["val_139"])
    assert fillers > 0 and f"excluded {fillers} values <= -1e+30 (mask fillers)" in ranges["val_139"]["minmax"].note
    assert ranges["layer_norm"]["minmax"].note == ""


def test_every_observer_is_fed_the_same_run(bert, calibration, values):
    methods = {"minmax": {}, "p99": {"method": "percentile", "percentile": 99.0},
               "entropy": {}, "mse": {"symmetric": True}}
    ranges = collect_ranges(bert, calibration, ["gelu", "val_139"], methods, executor=EXECUTOR)
    for name in ("gelu", "val_139"):
        assert set(ranges[name]) == set(methods)
        everything = np.concatenate([v.reshape(-1) for v in values[name]])
        regular = everything[np.abs(everything) < 1e30]
        p99 = PercentileObserver(percentile=99.0)
        entropy = EntropyObserver()
        for batch in values[name]:
            p99.update(batch)
            entropy.update(batch)
        assert float(ranges[name]["p99"].hi) == float(p99.range().hi)
        assert float(ranges[name]["entropy"].hi) == float(entropy.range().hi)
        # Within a bin of the order statistics around the 99th percentile (the data is sparse).
        below, above = np.percentile(regular, 99.0, method="lower"), np.percentile(regular, 99.0, method="higher")
        assert below - p99.bin_width <= float(ranges[name]["p99"].hi) <= above + p99.bin_width
        assert ranges[name]["mse"].method == "mse" and float(ranges[name]["mse"].hi) <= regular.max()


def test_inputs_and_initializers_can_be_observed(bert, calibration):
    weight = "encoder.embeddings.LayerNorm.weight"
    ranges = collect_ranges(bert, calibration, ["attention_mask", weight], executor=EXECUTOR)
    assert (float(ranges["attention_mask"]["minmax"].lo), float(ranges["attention_mask"]["minmax"].hi)) == (0, 1)
    constant = bert.graph.initializers[weight].const_value.numpy()
    assert float(ranges[weight]["minmax"].hi) == float(constant.max())


def test_collect_abs_max_per_channel(bert, calibration, values):
    maxima = collect_abs_max(bert, calibration, ["layer_norm", "gelu"], executor=EXECUTOR)
    for name in ("layer_norm", "gelu"):
        expected = np.max([np.abs(v).reshape(-1, v.shape[-1]).max(axis=0) for v in values[name]], axis=0)
        assert maxima[name].shape == (32 if name == "layer_norm" else 64,)
        np.testing.assert_array_equal(maxima[name], expected)


def test_iter_intermediates_yields_each_batch(bert, calibration, values):
    batches = list(iter_intermediates(bert, calibration, ["gelu"], executor=EXECUTOR, threads=2))
    assert len(batches) == calibration.num_batches
    for got, expected in zip(batches, values["gelu"], strict=True):
        np.testing.assert_array_equal(got["gelu"], expected)


def test_per_channel_activation_observer(bert, calibration, values):
    from greencc.quant import run_observers

    observer = MinMaxObserver(axis=-1)
    run_observers(bert, calibration, {"val_159": [observer]}, executor=EXECUTOR)
    expected = np.max([v.reshape(-1, v.shape[-1]).max(axis=0) for v in values["val_159"]], axis=0)
    np.testing.assert_array_equal(observer.range().hi, expected)


def test_bad_requests_fail_before_running(bert, calibration):
    with pytest.raises(UsageError, match="tensor 'gelu_9' is not") as info:
        collect_ranges(bert, calibration, ["gelu_9"], executor=EXECUTOR)
    assert "gelu" in info.value.hint  # did you mean
    with pytest.raises(UsageError, match="unknown calibration method 'kl'"):
        collect_ranges(bert, calibration, ["gelu"], ("minmax", "kl"), executor=EXECUTOR)
    with pytest.raises(UsageError, match="unknown input name"):
        collect_ranges(bert, [{"ids": np.zeros((1, 4), np.int64)}], ["gelu"], executor=EXECUTOR)
    with pytest.raises(UsageError, match="empty"):
        collect_ranges(bert, CalibrationData(), ["gelu"], executor=EXECUTOR)
    with pytest.raises(UsageError, match="no calibration methods"):
        collect_ranges(bert, calibration, ["gelu"], (), executor=EXECUTOR)
