"""Progress: the events a ``progress=`` callback receives, in order (stages, pass i of N,
inner steps of long passes), and the terminal display staying quiet off a terminal."""

from __future__ import annotations

import numpy as np

import greencc as gc
from greencc.cli import main
from greencc.pipeline.progress import ProgressEvent, ProgressReporter, TerminalProgress
from tests.helpers import model_from_text

_RNG = np.random.default_rng(0)
W1 = ", ".join(f"{v:.4f}" for v in _RNG.standard_normal(16 * 32) * 0.2)
W2 = ", ".join(f"{v:.4f}" for v in _RNG.standard_normal(32 * 8) * 0.2)
MLP = f"""
<ir_version: 10, opset_import: ["" : 17]>
g (float[N, 16] x) => (float[N, 8] y)
<float[16, 32] w1 = {{{W1}}}, float[32, 8] w2 = {{{W2}}}>
{{
  i = Identity(x)
  h = MatMul(i, w1)
  r = Relu(h)
  y = MatMul(r, w2)
}}
"""


def _events(pipeline: str, budget: str | None = None) -> list[ProgressEvent]:
    events: list[ProgressEvent] = []
    gc.compile(model_from_text(MLP), "ort-cpu", pipeline, dims={"N": 4}, progress=events.append, budget=budget)
    return events


def test_events_come_in_order_with_pass_numbers_and_inner_steps():
    # A budget int4 cannot meet, so the sensitivity fallback measures each layer (its steps;
    # int8 would put these tiny layers back in float unmeasured, as they save no energy).
    quantize = "quantize-weights{block=16,fallback=sensitivity}"
    events = _events(f"cleanup{{steps=3}},{quantize}", budget="cos=0.9999999")
    summary = [(e.kind, e.name, e.index, e.total) for e in events if e.kind != "step"]
    assert summary == [
        ("stage", "load model", 0, 0),
        ("pass-start", "cleanup", 1, 2), ("pass-end", "cleanup", 1, 2),
        # steps=3 repeats cleanup while it changes something: still item 1 of 2
        ("pass-start", "cleanup", 1, 2), ("pass-end", "cleanup", 1, 2),
        ("pass-start", quantize, 2, 2),
        ("pass-end", quantize, 2, 2),
        ("stage", "lower ort-cpu", 0, 2),
    ]
    ends = [e.modified for e in events if e.kind == "pass-end"]
    assert ends[:2] == [True, False]
    steps = [(e.name, e.what, e.done, e.steps) for e in events if e.kind == "step"]
    assert steps == [(quantize, what, done, 2) for what in ("rtn weights", "int4 sensitivity") for done in (1, 2)]
    elapsed = [e.elapsed_s for e in events]
    assert elapsed == sorted(elapsed) and elapsed[0] >= 0
    assert all(e.pass_elapsed_s <= e.elapsed_s for e in events)


def test_optimize_reports_passes_too():
    events: list[ProgressEvent] = []
    gc.optimize(model_from_text(MLP), "cleanup", dims={"N": 4}, progress=events.append)
    assert [(e.kind, e.name, e.index, e.total) for e in events] == [
        ("pass-start", "cleanup", 1, 1), ("pass-end", "cleanup", 1, 1)]


def test_a_reporter_without_callback_does_nothing():
    reporter = ProgressReporter()
    assert not reporter.enabled
    reporter.start_pass("cleanup", 1, 1)
    reporter.step("work", 1, 2)
    reporter.end_pass(True)


def test_terminal_progress_is_quiet_off_a_terminal(capsys):
    with TerminalProgress() as show:  # pytest captures stderr: not a terminal
        assert not show.enabled
        gc.compile(model_from_text(MLP), "ort-cpu", "cleanup", dims={"N": 4}, progress=show)
    assert capsys.readouterr().err == ""


def test_cli_compile_prints_no_progress_when_piped(tmp_path, capsys):
    path = tmp_path / "mlp.onnx"
    gc.ir.save_model(model_from_text(MLP).ir, path)
    assert main(["compile", str(path), "-O1", "--dim", "N=4", "-o", str(tmp_path / "out")]) == 0
    captured = capsys.readouterr()
    assert "pass 1/" not in captured.err and "\r" not in captured.err
    assert "greencc ledger" in captured.out
