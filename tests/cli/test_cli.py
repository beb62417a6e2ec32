"""The greencc command line end to end: compile/inspect/passes/targets/bench/report/repro,
and bad input handled with one-line errors, documented exit codes and nothing written."""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import onnx
import onnx.parser
import pytest

from greencc.cli import main
from tests.helpers import GOOD

ROOT = Path(__file__).resolve().parents[2]


UNKNOWN_DOMAIN = """<ir_version: 10, opset_import: ["" : 17, "com.example" : 1]>
g (float[1, 8] x) => (float[1, 8] y) {
  t = com.example.Frobnicate(x)
  y = Relu(t)
}"""


def run_cli(*args, cwd=None):
    """Run the real console entry point in a subprocess (exit code, stdout, stderr)."""
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    proc = subprocess.run([sys.executable, "-m", "greencc.cli", *map(str, args)], capture_output=True,
                          text=True, cwd=cwd, env=env, stdin=subprocess.DEVNULL, timeout=300)
    return proc.returncode, proc.stdout, proc.stderr


def test_compile_writes_artifact_and_report(good_model, tmp_path, capsys):
    out = tmp_path / "out"
    assert main(["compile", str(good_model), "-t", "ort-cpu", "-O1", "-o", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "(input)" in printed and "cleanup" in printed and "mJ" in printed
    assert "estimate" in printed  # energy is labelled as an estimate
    assert (out / "greencc.json").is_file() and (out / "report.json").is_file()
    report = json.loads((out / "report.json").read_text())
    assert report["schema"] == "greencc.report/1"
    assert [row["name"] for row in report["rows"]] == ["(input)", "cleanup"]
    assert report["rows"][1]["nodes"] < report["rows"][0]["nodes"]
    assert report["rows"][0]["est_energy_mj"] > 0


def test_compile_pipeline_text_and_report_and_bench(good_model, tmp_path, capsys):
    out = tmp_path / "o2"
    assert main(["compile", str(good_model), "--pipeline", "remove-identity,dce", "-o", str(out),
                 "--report-json", str(tmp_path / "r.json")]) == 0
    assert json.loads((tmp_path / "r.json").read_text())["pipeline"] == "remove-identity,dce"
    capsys.readouterr()
    assert main(["report", str(out / "report.json")]) == 0
    assert "remove-identity" in capsys.readouterr().out
    assert main(["bench", str(out), "--repeats", "5", "--warmup", "1", "--json"]) == 0
    stats = json.loads(capsys.readouterr().out)
    assert stats["repeats"] >= 5 and stats["median_ms"] > 0


def test_inspect_and_json(good_model, capsys):
    assert main(["inspect", str(good_model), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["nodes"] == 4 and info["parameters"] == 9
    assert info["cost"]["energy_mj"] > 0
    assert main(["inspect", str(good_model), "-t", "x86-avx512"]) == 0
    text = capsys.readouterr().out
    assert "MACs" in text and "uncalibrated" in text


def test_passes_and_targets(capsys):
    assert main(["passes"]) == 0
    text = capsys.readouterr().out
    for name in ("cleanup", "dce", "fold-constants", "cse", "remove-identity", "simplify-shapes"):
        assert re.search(rf"^{name}\s", text, re.M), name
    assert main(["targets"]) == 0
    text = capsys.readouterr().out
    assert re.search(r"^ort-cpu\s+available", text, re.M)


def test_target_options_reach_the_target(good_model, tmp_path, capsys):
    out = tmp_path / "out"
    argv = ["compile", str(good_model), "-O0", "-o", str(out), "--target-option", "optimization=\"basic\""]
    assert main(argv) == 0
    manifest = json.loads((out / "greencc.json").read_text())
    assert manifest["options"]["optimization"] == "basic"
    assert main(["targets"]) == 0
    assert "optimization='all'" in capsys.readouterr().out


def test_readme_catalogue_matches_registry():
    # In a fresh process: other tests register passes of their own in this one.
    readme = (ROOT / "README.md").read_text()
    catalogue = readme.split("## Pass catalogue", 1)[1].split("\n## ", 1)[0]
    documented = set(re.findall(r"^\| `([a-z0-9-]+)`", catalogue, re.M))
    code, out, _ = run_cli("passes", "--json")
    assert code == 0 and documented == set(json.loads(out))
    targets = readme.split("## Targets", 1)[1].split("\n## ", 1)[0]
    code, out, _ = run_cli("targets", "--json")
    listed = {t["name"] for t in json.loads(out)["targets"]}
    assert set(re.findall(r"^\| `([a-z0-9-]+)`", targets, re.M)) >= listed


def _bad_inputs(tmp_path):
    good = onnx.parser.parse_model(GOOD).SerializeToString()
    cases = {
        "missing": tmp_path / "nope.onnx",
        "empty": tmp_path / "empty.onnx",
        "truncated": tmp_path / "truncated.onnx",
        "text": tmp_path / "text.onnx",
        "random": tmp_path / "random.onnx",
    }
    cases["empty"].write_bytes(b"")
    cases["truncated"].write_bytes(good[: len(good) // 2])
    cases["text"].write_text("this is not a model\n" * 20)
    cases["random"].write_bytes(os.urandom(4096))
    cycle = onnx.parser.parse_model("""<ir_version: 10, opset_import: ["" : 17]>
g (float[2] x) => (float[2] y) { a = Add(x, b)
 b = Relu(a)
 y = Identity(b) }""")
    cases["cycle"] = tmp_path / "cycle.onnx"
    cases["cycle"].write_bytes(cycle.SerializeToString())
    cases["unknown-domain"] = tmp_path / "unknown.onnx"
    cases["unknown-domain"].write_bytes(onnx.parser.parse_model(UNKNOWN_DOMAIN).SerializeToString())
    return cases


@pytest.mark.parametrize("case,fragment,code", [
    ("missing", "no such file", 3),
    ("empty", "empty", 3),
    ("truncated", "", 3),
    ("text", "", 3),
    ("random", "", 3),
    ("cycle", "cycle", 3),
    ("unknown-domain", "unsupported op 'Frobnicate' in domain 'com.example'", 4),
])
def test_bad_model_one_line_error_no_output(tmp_path, capsys, case, fragment, code):
    path = _bad_inputs(tmp_path)[case]
    before = path.read_bytes() if path.exists() else None
    out = tmp_path / "out"
    status = main(["compile", str(path), "-o", str(out)])
    err = capsys.readouterr().err
    assert status == code, err
    assert err.startswith("greencc: error: ") and err.count("\n") == 1, err
    assert fragment in err
    assert "Traceback" not in err
    assert not out.exists(), "a failed compile must leave no output directory"
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []
    if before is not None:
        assert path.read_bytes() == before


def test_subprocess_error_has_no_traceback(tmp_path):
    code, out, err = run_cli("compile", tmp_path / "missing.onnx", "-o", tmp_path / "o")
    assert code == 3 and "Traceback" not in err and err.startswith("greencc: error:")


@pytest.mark.parametrize("argv,code,fragment", [
    (["compile", "MODEL", "--pipeline", "cleanup{", "-o", "OUT"], 2, "bad pipeline text"),
    (["compile", "MODEL", "--pipeline", "no-such-pass", "-o", "OUT"], 2, "unknown pass 'no-such-pass'"),
    (["compile", "MODEL", "-t", "no-such-target", "-o", "OUT"], 2, "no-such-target"),
    (["compile", "MODEL", "--dim", "seq", "-o", "OUT"], 2, "bad --dim"),
    (["compile", "MODEL", "--target-option", "threads", "-o", "OUT"], 2, "bad --target-option"),
    (["compile", "MODEL", "--target-option", "no_such=1", "-o", "OUT"], 2, "has no option 'no_such'"),
    (["compile", "MODEL"], 2, "-o"),
    (["frobnicate"], 2, "invalid choice"),
])
def test_usage_errors(good_model, tmp_path, capsys, argv, code, fragment):
    argv = [str(good_model) if a == "MODEL" else str(tmp_path / "out") if a == "OUT" else a for a in argv]
    assert main(argv) == code
    err = capsys.readouterr().err
    assert fragment in err and "Traceback" not in err
    assert not (tmp_path / "out").exists()


def test_refuses_to_overwrite_foreign_directory(good_model, tmp_path, capsys):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "thesis.tex").write_text("precious")
    assert main(["compile", str(good_model), "-o", str(out)]) == 2
    assert (out / "thesis.tex").read_text() == "precious"


def test_recompile_replaces_own_artifact(good_model, tmp_path, capsys):
    out = tmp_path / "out"
    assert main(["compile", str(good_model), "-o", str(out), "-O0"]) == 0
    assert main(["compile", str(good_model), "-o", str(out), "-O1"]) == 0
    assert json.loads((out / "report.json").read_text())["pipeline"] == "cleanup"


def test_calibration_npz_validated(good_model, tmp_path, capsys):
    import numpy as np

    bad = tmp_path / "bad.npz"
    np.savez(bad, wrong_name=np.zeros((3, 1, 8), np.float32))
    assert main(["compile", str(good_model), "-o", str(tmp_path / "o"), "--calib", str(bad)]) == 2
    assert "do not match the model's inputs" in capsys.readouterr().err
    nan = tmp_path / "nan.npz"
    np.savez(nan, x=np.full((3, 1, 8), np.nan, np.float32))
    assert main(["compile", str(good_model), "-o", str(tmp_path / "o"), "--calib", str(nan)]) == 2
    assert "NaN" in capsys.readouterr().err
    good = tmp_path / "good.npz"
    np.savez(good, x=np.random.default_rng(0).standard_normal((3, 1, 8)).astype(np.float32))
    assert main(["compile", str(good_model), "-o", str(tmp_path / "o"), "--calib", str(good)]) == 0
    assert not (tmp_path / "o").parent.joinpath("bad").exists()


def test_help_teaches():
    code, out, _ = run_cli("--help")
    assert code == 0 and "examples:" in out and "exit status:" in out
    code, out, _ = run_cli("compile", "--help")
    assert code == 0 and "--pipeline" in out and "example" in out


def test_import_greencc_loads_neither_torch_nor_tvm():
    code = "import sys, greencc; print(sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'tvm', 'transformers')))"
    proc = subprocess.run([sys.executable, "-X", "importtime", "-c", code], capture_output=True, text=True,
                          env=dict(os.environ, PYTHONPATH=str(ROOT)))
    assert proc.stdout.strip() == "[]"
    imported = {line.split("|")[-1].strip().split(".")[0] for line in proc.stderr.splitlines() if "|" in line}
    assert "torch" not in imported and "tvm" not in imported


def test_compiling_an_onnx_model_loads_no_torch(tmp_path):
    # ONNX Runtime's tools package imports torch when it is installed; the core must not,
    # even when symbolic dims send shape inference through ORT's symbolic inference.
    path = tmp_path / "dynamic.onnx"
    onnx.save(onnx.parser.parse_model(GOOD.replace("[1, 8]", "[N, 8]")), path)
    code = (f"import sys, greencc as gc; m = gc.load({str(path)!r}); "
            "c = gc.compile(m, 'ort-cpu', '-O1', dims={'N': 2}); gc.inspect(m); "
            "print(sorted(k for k in sys.modules if k.split('.')[0] in ('torch', 'tvm')))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env=dict(os.environ, PYTHONPATH=str(ROOT)))
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "[]"
