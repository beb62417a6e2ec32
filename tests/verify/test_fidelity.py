"""Fidelity metrics, budgets, exact tolerances, random feeds and bisection."""

import numpy as np
import pytest

from greencc.errors import UsageError
from greencc.execution import Executor
from greencc.verify.bisect import first_divergent_node
from greencc.verify.feeds import random_feeds
from greencc.verify.fidelity import FidelityBudget, exact_violation, measure_fidelity
from tests.helpers import model_from_text


def test_cosine_and_errors_hand_computed():
    ref = [[np.array([1.0, 0.0], np.float32)], [np.array([0.0, 2.0], np.float32)]]
    got = [[np.array([1.0, 1.0], np.float32)], [np.array([0.0, 2.0], np.float32)]]
    f = measure_fidelity(ref, got)
    assert f.cosine_min == pytest.approx(1 / np.sqrt(2))
    assert f.cosine_mean == pytest.approx((1 / np.sqrt(2) + 1) / 2)
    assert f.max_abs_error == pytest.approx(1.0)
    assert f.max_rel_error == pytest.approx(1.0)  # 1.0 / max|ref| of the first sample
    assert f.samples == 2


def test_accuracy_with_labels():
    ref = [[np.array([[0.1, 0.9], [0.8, 0.2]])]]
    got = [[np.array([[0.6, 0.4], [0.8, 0.2]])]]
    f = measure_fidelity(ref, got, labels=[np.array([1, 0])])
    assert f.reference_accuracy == 1.0 and f.accuracy == 0.5
    assert FidelityBudget.parse("acc=0.1").check(f) is not None
    assert FidelityBudget.parse("acc=0.6").check(f) is None


def test_nan_where_reference_has_none_is_infinite_error():
    f = measure_fidelity([[np.array([1.0, 2.0])]], [[np.array([1.0, np.nan])]])
    assert f.max_abs_error == float("inf")
    assert exact_violation([[np.array([1.0, 2.0], np.float32)]], [[np.array([1.0, np.nan], np.float32)]])


def test_budget_parse_and_round_trip():
    b = FidelityBudget.parse("cos=0.99, abs=1e-3")
    assert b.min_cosine == 0.99 and b.max_abs_error == 1e-3 and b.max_accuracy_drop is None
    assert FidelityBudget.parse(str(b)) == b
    for bad in ("cos", "cosine=0.9", "cos=high"):
        with pytest.raises(UsageError):
            FidelityBudget.parse(bad)


def test_exact_tolerance_by_dtype():
    ref = np.ones(4, np.float32) * 100
    assert exact_violation([[ref]], [[ref + np.float32(5e-3)]]) is None  # 5e-3 <= 1e-5 + 1e-4*100
    assert "differs by" in exact_violation([[ref]], [[ref + np.float32(5e-2)]])
    ints = np.arange(4)
    assert exact_violation([[ints]], [[ints + 1]]) is not None
    assert "changed from" in exact_violation([[ref]], [[ref.astype(np.float64)]])


def test_random_feeds_respect_gather_bounds_and_dims():
    m = model_from_text("""<ir_version: 10, opset_import: ["" : 17]>
g (int64[batch, seq] ids, int64[batch, seq] mask, float[batch, 3] x) => (float[batch, seq, 2] y, float[batch, 3] z)
<float[7, 2] table = {1,2,3,4,5,6,7,8,9,10,11,12,13,14}> { y = Gather(table, ids)
 z = Relu(x) }""")
    a = random_feeds(m, seed=1, dims={"batch": 4, "seq": 16})
    assert a["ids"].shape == (4, 16) and a["ids"].max() < 7 and a["ids"].min() >= 0
    assert set(np.unique(a["mask"])) <= {0, 1} and a["mask"][:, 0].all()
    assert a["x"].dtype == np.float32
    b = random_feeds(m, seed=1, dims={"batch": 4, "seq": 16})
    c = random_feeds(m, seed=2, dims={"batch": 4, "seq": 16})
    assert np.array_equal(a["x"], b["x"]) and not np.array_equal(a["x"], c["x"])


def test_bisection_names_first_divergent_node():
    text = """<ir_version: 10, opset_import: ["" : 17]>
g (float[4] x) => (float[4] y) { a = Abs(x)
 b = Neg(a)
 c = Relu(b)
 y = Exp(c) }"""
    original = model_from_text(text)
    broken = model_from_text(text.replace("b = Neg(a)", "b = Identity(a)"))
    feeds = {"x": np.array([1.0, -2.0, 3.0, -4.0], np.float32)}
    executor = Executor()
    assert "Identity" in first_divergent_node(original, broken, feeds, executor)
    assert first_divergent_node(original, model_from_text(text), feeds, executor) is None
