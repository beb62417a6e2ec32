"""Payload checks: every bad request is a 4xx PayloadError naming the problem."""

from __future__ import annotations

import json

import numpy as np
import onnx.parser
import pytest

import greencc as gc
from greencc.serve.payload import Limits, PayloadError, feeds_from_payload, parse_json

IDS_MODEL = """<ir_version: 10, opset_import: ["" : 17]>
g (int64[batch, 4] ids, float[batch, 4] x) => (float[batch, 4] y) {
  f = Cast<to = 1>(ids)
  y = Add(f, x)
}"""


@pytest.fixture(scope="module")
def compiled():
    return gc.compile(gc.load(onnx.parser.parse_model(IDS_MODEL)), pipeline="-O0", dims={"batch": 1})


def _refused(data, compiled, limits: Limits | None = None) -> PayloadError:
    with pytest.raises(PayloadError) as caught:
        feeds_from_payload(data, compiled, limits or Limits())
    return caught.value


def test_a_good_payload_becomes_arrays_of_the_signature(compiled):
    feeds = feeds_from_payload({"inputs": {"ids": [[1, 2, 3, 4]], "x": [[0, 0.5, 1, 2]]}}, compiled, Limits())
    assert feeds["ids"].dtype == np.int64 and feeds["x"].dtype == np.float32
    assert feeds["x"].shape == (1, 4)


def test_wrong_and_missing_names(compiled):
    error = _refused({"inputs": {"ids": [[1, 2, 3, 4]], "x": [[0, 0, 0, 0]], "z": [1]}}, compiled)
    assert error.status == 422 and "unknown input name(s) ['z']" in error.message
    error = _refused({"inputs": {"ids": [[1, 2, 3, 4]]}}, compiled)
    assert error.status == 422 and "missing input(s) ['x']" in error.message
    error = _refused({"input": {}}, compiled)
    assert error.status == 422 and "no 'inputs' object" in error.message


def test_wrong_shapes(compiled):
    error = _refused({"inputs": {"ids": [[1, 2, 3]], "x": [[0, 0, 0]]}}, compiled)
    assert error.status == 422 and "input 'ids' has shape [1, 3]" in error.message
    error = _refused({"inputs": {"ids": [[1, 2, 3, 4]], "x": [[0, 0, 0, 0], [1, 1, 1, 1]]}}, compiled)
    assert error.status == 422 and "dim 'batch'" in error.message
    error = _refused({"inputs": {"ids": [[1, 2], [3]], "x": [[0, 0, 0, 0]]}}, compiled)
    assert error.status == 422 and "'ids' is not a rectangular array" in error.message


def test_wrong_dtypes(compiled):
    error = _refused({"inputs": {"ids": [[1.5, 2, 3, 4]], "x": [[0, 0, 0, 0]]}}, compiled)
    assert error.status == 422 and "'ids' has floating-point values, the model expects int64" in error.message
    error = _refused({"inputs": {"ids": [[1, 2, 3, 4]], "x": [["a", "b", "c", "d"]]}}, compiled)
    assert error.status == 422 and "'x' has text values, the model expects float32" in error.message
    error = _refused({"inputs": {"ids": [[2**70, 2, 3, 4]], "x": [[0, 0, 0, 0]]}}, compiled)
    assert error.status == 422


def test_oversize_bodies_and_arrays_are_413(compiled):
    error = _refused({"inputs": {"ids": [[1, 2, 3, 4]] * 3, "x": [[0, 0, 0, 0]] * 3}}, compiled,
                     Limits(max_elements=20))
    assert error.status == 413 and "more than 20 elements" in error.message
    with pytest.raises(PayloadError) as caught:
        parse_json(json.dumps({"inputs": {}}).encode(), Limits(max_body_bytes=5))
    assert caught.value.status == 413 and "exceeds the limit of 5 bytes" in caught.value.message


def test_malformed_bodies_are_400():
    for body in (b"not json", b"[1, 2]", b"\xff"):
        with pytest.raises(PayloadError) as caught:
            parse_json(body, Limits())
        assert caught.value.status == 400
