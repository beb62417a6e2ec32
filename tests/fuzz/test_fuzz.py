"""The fuzz tier (issue 13): seeded hostile models, calibration files, pipelines, options,
recipes and tampered artifacts through ``greencc.cli.main`` in-process, each checked by
:func:`tests.fuzz.harness.problems`; a few bombs run as subprocesses under an address-space
limit. ``GREENCC_FUZZ_CASES`` and ``GREENCC_FUZZ_SEED`` widen or move the run (``make
test-fuzz``); a failing case is replayed with ``pytest tests/fuzz -k <case id>``.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from greencc.cli import main
from tests.fuzz import cases as fuzz
from tests.fuzz.harness import problems, run_inprocess, run_subprocess, snapshot

COUNT = int(os.environ.get("GREENCC_FUZZ_CASES", "1200"))
SEED = int(os.environ.get("GREENCC_FUZZ_SEED", "13"))
SUBPROCESS_BOMBS = int(os.environ.get("GREENCC_FUZZ_SUBPROCESSES", "2"))


@pytest.fixture(scope="module")
def bases(tmp_path_factory: pytest.TempPathFactory) -> fuzz.Bases:
    folder = tmp_path_factory.mktemp("fuzz-bases")
    models = fuzz.base_models()
    model = folder / "dense.onnx"
    model.write_bytes(models["dense"])
    artifact = folder / "artifact"
    assert main(["compile", str(model), "-O1", "-o", str(artifact), "-q"]) == 0
    return fuzz.Bases(models=models, calibration=fuzz.good_calibration(), artifact=artifact)


@pytest.mark.parametrize("case", fuzz.cases(COUNT, SEED), ids=lambda case: case.name)
def test_hostile_input(case: fuzz.FuzzCase, bases: fuzz.Bases, tmp_path: Path) -> None:
    invocation = fuzz.materialize(case, tmp_path, bases)
    before = snapshot(tmp_path)
    outcome = run_inprocess(invocation)
    found = problems(outcome, invocation, before, snapshot(tmp_path))
    assert not found, f"{case.name} {invocation.argv!r}: {found}; stderr: {outcome.stderr[:500]!r}"


# The quickest first: `make test` runs the first GREENCC_FUZZ_SUBPROCESSES of them.
BOMB_CASES = [("expand", "-O1"), ("tile", "-O1"), ("expand", "--no-verify"), ("tile", "--no-verify"),
              ("constant-of-shape", "--no-verify"), ("range", "--no-verify"), ("constant-of-shape", "-O1"),
              ("range", "-O1")]


@pytest.mark.parametrize("name,flag", BOMB_CASES[:SUBPROCESS_BOMBS], ids=lambda v: v)
def test_bomb_in_a_memory_limited_subprocess(name: str, flag: str, tmp_path: Path) -> None:
    import onnx.parser

    model = tmp_path / "in" / "bomb.onnx"
    model.parent.mkdir()
    model.write_bytes(onnx.parser.parse_model(fuzz.BOMBS[name]).SerializeToString())
    out = tmp_path / "out"
    level = ["-O1"] if flag == "-O1" else ["-O1", "--no-verify"]
    invocation = fuzz.Invocation(["compile", str(model), *level, "-o", str(out), "-q"], out)
    before = snapshot(tmp_path)
    outcome = run_subprocess(invocation)
    found = problems(outcome, invocation, before, snapshot(tmp_path))
    assert not found, f"{name} {flag}: {found}; stderr: {outcome.stderr[:500]!r}"
