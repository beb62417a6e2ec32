"""What a new user reaches for in the first hour: ``python -m greencc``, ``greencc passes
NAME`` with each option's type, default and description, ``bench --threads`` (its help
shows it), ``--profile FILE.json``, ``--dump-ir DIR``, units on bench's energy line, and the
reason an explicitly named pass changed nothing."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import onnx
import onnx.parser
import pytest

from greencc.cli import main
from greencc.measure.energy import EnergyMeasurement

ROOT = Path(__file__).resolve().parents[2]


def test_python_dash_m_greencc_is_the_cli() -> None:
    done = subprocess.run([sys.executable, "-m", "greencc", "--version"], capture_output=True, text=True,
                          cwd=ROOT, timeout=120)
    assert done.returncode == 0 and done.stdout.startswith("greencc ")


def test_passes_name_describes_each_option(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["passes", "quantize-int8{fallback=sensitivity}"]) == 0
    text = capsys.readouterr().out
    assert text.startswith("quantize-int8 (lossy")
    assert "  fallback: none|sensitivity = 'none'" in text
    assert "``fallback=sensitivity`` keeps the layers" in text
    assert "  outlier_ratio: float = 0.0" in text
    assert "(the pass's docstring does not describe it)" not in text
    assert main(["passes", "quantize-int8", "--json"]) == 0
    options = json.loads(capsys.readouterr().out)["quantize-int8"]["options"]
    assert options["per_channel"]["type"] == "bool" and "per output channel" in options["per_channel"]["description"]
    assert main(["passes", "no-such-pass"]) == 2
    assert "unknown pass 'no-such-pass'" in capsys.readouterr().err


def test_bench_threads_exists_and_runs(good_model: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "out"
    assert main(["compile", str(good_model), "-O1", "-o", str(out), "-q"]) == 0
    with pytest.raises(SystemExit):
        main(["bench", "--help"])
    assert "--threads" in capsys.readouterr().out
    assert main(["bench", str(out), "--threads", "1", "--repeats", "3", "--warmup", "1", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["threads"] == 1


def test_energy_figures_carry_units() -> None:
    energy = EnergyMeasurement(method="rapl", meter="fake", window_s=1.0, calls=100, inferences_per_call=1,
                               energy_j=1.0, idle_power_w=0.5, idle_window_s=1.0)
    assert " mJ above an idle draw of 0.50 W" in str(energy)


def test_profile_file_prices_the_compile(good_model: Path, tmp_path: Path) -> None:
    data = json.loads((ROOT / "targets" / "profiles" / "x86-avx512.json").read_text())
    data["name"] = "my-cpu"
    profile = tmp_path / "my-cpu.json"
    profile.write_text(json.dumps(data))
    out = tmp_path / "out"
    assert main(["compile", str(good_model), "-O1", "--profile", str(profile), "-o", str(out), "-q"]) == 0
    report = json.loads((out / "report.json").read_text())
    assert report["profile"]["name"] == "my-cpu"
    assert main(["compile", str(good_model), "-O1", "--profile", str(tmp_path / "none.json"),
                 "-o", str(tmp_path / "o2"), "-q"]) == 2


def test_dump_ir_writes_the_model_after_each_pass(good_model: Path, tmp_path: Path) -> None:
    dumps = tmp_path / "ir"
    assert main(["compile", str(good_model), "--pipeline", "remove-identity,fold-constants",
                 "--dump-ir", str(dumps), "-o", str(tmp_path / "out"), "-q"]) == 0
    names = sorted(p.name for p in dumps.iterdir())
    assert names == ["00-input.onnx", "01-remove-identity.onnx", "02-fold-constants.onnx"]
    ops = [[n.op_type for n in onnx.load(dumps / name).graph.node] for name in names]
    assert "Identity" in ops[0] and "Identity" not in ops[1]


def test_an_unchanged_pass_says_why(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "mm.onnx"
    onnx.save(onnx.parser.parse_model("""<ir_version: 10, opset_import: ["" : 17]>
g (float[2, 4] x, float[4, 3] w) => (float[2, 3] y) { y = MatMul(x, w) }"""), path)
    assert main(["compile", str(path), "--pipeline", "quantize-int8", "-o", str(tmp_path / "out")]) == 0
    notes = capsys.readouterr().out.split("notes (per pass")[1]
    assert "quantize-int8: no change: " in notes and "is not a constant" in notes
