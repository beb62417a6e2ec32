"""``every_value``: every node output of a model, as ONNX Runtime computes it unoptimized."""

from __future__ import annotations

import numpy as np

from greencc.ir import to_self_contained_proto
from greencc.ir.every_value import every_value, exposing_every_value
from greencc.verify.feeds import random_feeds
from tests import models


def test_every_node_output_is_returned_and_the_model_is_left_alone() -> None:
    model = models.small_cnn_model()
    proto = to_self_contained_proto(model.ir)
    before = proto.SerializeToString()
    feeds = random_feeds(model, seed=0)
    values = every_value(proto, feeds)
    produced = [name for node in proto.graph.node for name in node.output if name]
    assert set(produced) <= set(values)
    assert set(feeds) <= set(values)
    assert proto.SerializeToString() == before
    assert len(exposing_every_value(proto).graph.output) == len(set(produced) | {o.name for o in proto.graph.output})


def test_values_are_the_unfused_graphs() -> None:
    # With optimizations on, ORT would fold Conv+Relu and the Conv's own output would be gone.
    model = models.small_cnn_model()
    proto = to_self_contained_proto(model.ir)
    feeds = random_feeds(model, seed=1)
    values = every_value(proto, feeds)
    relus = [node for node in proto.graph.node if node.op_type == "Relu"]
    assert len(relus) == 2
    for node in relus:
        np.testing.assert_array_equal(values[node.output[0]], np.maximum(values[node.input[0]], 0))
