"""A fixed, seeded sample of ONNX's backend suite through -O1 and -O2 (the whole suite is
``make test-conformance``): no run may give wrong numbers, raise anything but a
GreenccError, or break a model ONNX Runtime runs correctly."""

from __future__ import annotations

import random
import warnings

import pytest

from tests.conformance.runner import LEVELS, Outcome, ort_runs, run_level, summary
from tests.conformance.suite import ConformanceCase, load_cases

SEED = 13
# Tests ONNX Runtime runs correctly in the sample; each runs at every level in LEVELS.
SAMPLE_TESTS = 100


def sample(cases: list[ConformanceCase], count: int = SAMPLE_TESTS, seed: int = SEED) -> list[ConformanceCase]:
    """``count`` cases ONNX Runtime runs correctly, drawn in a seeded order from ``cases``."""
    order = list(cases)
    random.Random(seed).shuffle(order)
    chosen = []
    for case in order:
        if len(chosen) == count:
            break
        if ort_runs(case) is None:
            chosen.append(case)
    return chosen


@pytest.fixture(scope="module")
def outcomes() -> list[Outcome]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        cases = sample(load_cases(kinds=("node", "pytorch-converted", "pytorch-operator", "simple")))
        return [run_level(case, level) for case in cases for level in LEVELS]


def test_sample_is_large_enough(outcomes: list[Outcome]) -> None:
    assert len(outcomes) >= 200
    assert {o.kind for o in outcomes} >= {"node", "pytorch-converted"}


def test_sample_has_no_wrong_numbers_exceptions_or_broken_models(outcomes: list[Outcome]) -> None:
    bad = [f"{o.category} {o.level} {o.kind}/{o.name}: {o.detail}" for o in outcomes
           if o.category in ("wrong-numbers", "unexpected-exception", "broken")]
    assert not bad, "\n".join(bad)
    counts = summary(outcomes)["counts"]
    assert counts["pass"] + counts["declined"] == len(outcomes)
