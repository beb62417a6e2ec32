"""A 20,000-node, 20,000-deep chain: load, sort (also after shuffling), networkx view, save
and reload, all iterative (no RecursionError) and fast.
"""

from __future__ import annotations

import random
import sys
import time
from pathlib import Path

import networkx as nx
import numpy as np
import pytest

import greencc as gc
from greencc import ir
from tests import models

DEPTH = 20_000
# Generous for 2 shared cores; each step takes well under a second on its own.
BUDGET_S = 10.0


@pytest.fixture(scope="module")
def chain_bytes() -> bytes:
    return models.deep_chain_proto(DEPTH).SerializeToString()


@pytest.fixture(scope="module")
def loaded(chain_bytes) -> gc.Model:
    """One loaded chain for the tests that only read it."""
    return gc.load(chain_bytes)


@pytest.fixture
def chain(chain_bytes) -> gc.Model:
    """A fresh chain for the tests that rewrite it."""
    return gc.load(chain_bytes)


def _assert_chain_order(graph: ir.Graph) -> None:
    assert [n.name for n in graph] == [f"n{i}" for i in range(DEPTH)]


def _timed(step):
    start = time.perf_counter()
    result = step()
    elapsed = time.perf_counter() - start
    assert elapsed < BUDGET_S, f"took {elapsed:.1f} s"
    return result


def test_deeper_than_the_recursion_limit() -> None:
    assert DEPTH > 10 * sys.getrecursionlimit(), "the chain would not catch a recursive algorithm"


def test_loads_from_bytes_sorted(chain_bytes) -> None:
    model = _timed(lambda: gc.load(chain_bytes))
    assert len(model.graph) == DEPTH
    _assert_chain_order(model.graph)
    assert gc.ir.find_cycle(model.graph) is None


def test_load_sorts_a_shuffled_proto() -> None:
    proto = models.deep_chain_proto(DEPTH)
    nodes = list(proto.graph.node)
    random.Random(0).shuffle(nodes)
    del proto.graph.node[:]
    proto.graph.node.extend(nodes)
    model = _timed(lambda: gc.load(proto.SerializeToString()))
    _assert_chain_order(model.graph)


def test_topological_sort_after_shuffling_in_the_ir(chain: gc.Model) -> None:
    nodes = list(chain.graph)
    random.Random(1).shuffle(nodes)
    chain.graph.remove(nodes, safe=False)
    chain.graph.extend(nodes)
    assert [n.name for n in chain.graph] != [f"n{i}" for i in range(DEPTH)]
    _timed(lambda: gc.ir.topological_sort(chain.graph))
    _assert_chain_order(chain.graph)
    gc.ir.check_model(chain.ir)


def test_networkx_view(loaded: gc.Model) -> None:
    chain = loaded
    view = _timed(lambda: gc.ir.to_networkx(chain.graph))
    assert view.number_of_nodes() == DEPTH and view.number_of_edges() == DEPTH - 1
    assert nx.is_directed_acyclic_graph(view)
    assert nx.dag_longest_path_length(view) == DEPTH - 1
    first, last = chain.graph.node(0), chain.graph.node(DEPTH - 1)
    assert view.edges[first, chain.graph.node(1)]["values"] == ["v1"]
    assert nx.has_path(view, first, last)


def test_find_cycle_in_a_deep_cycle(chain: gc.Model) -> None:
    # Close the chain: n0 now reads the last node's output.
    last = chain.graph.node(DEPTH - 1)
    chain.graph.node(0).replace_input_with(0, last.outputs[0])
    cycle = _timed(lambda: gc.ir.find_cycle(chain.graph))
    assert cycle is not None and len(cycle) == DEPTH
    assert cycle[0].outputs[0] in cycle[1].inputs or cycle[-1].outputs[0] in cycle[0].inputs


def test_saves_and_reloads(loaded: gc.Model, tmp_path: Path) -> None:
    path = _timed(lambda: loaded.save(tmp_path / "chain.onnx"))
    reloaded = _timed(lambda: gc.load(path))
    assert len(reloaded.graph) == DEPTH
    _assert_chain_order(reloaded.graph)


def test_shape_inference_on_the_chain(chain: gc.Model) -> None:
    for node in chain.graph:
        node.outputs[0].shape = None
    _timed(lambda: gc.ir.infer_shapes(chain.ir))
    assert chain.graph.node(DEPTH - 1).outputs[0].shape == ir.Shape([4])


def test_runs_in_onnx_runtime(loaded: gc.Model) -> None:
    # An even number of Neg computes the identity exactly.
    x = np.arange(4, dtype=np.float32)
    (y,) = _timed(lambda: models.ort_outputs(loaded, {"x": x}))
    assert np.array_equal(y, x)
