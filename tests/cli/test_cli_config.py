"""The CLI with one CompileConfig: `greencc compile --config recipe.toml` (flags override the
recipe), `--plugin` files, report.json / greencc.json recording the config, and reproducers
that `greencc repro` replays with their calibration data, target options and plugins."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import onnx.parser
import pytest

from greencc.cli import main
from greencc.config import CompileConfig, file_sha256
from tests.helpers import GOOD

ROOT = Path(__file__).resolve().parents[2]


# A plugin whose pass claims to be exact but changes the weights: verification must fail.
NUDGE_PLUGIN = '''
import onnx_ir as ir

import greencc as gc


@gc.register_pass("nudge-weights")
def nudge_weights(model, ctx):
    """w -> w + 1 (claims to be exact; it is not)."""
    for value in model.graph.initializers.values():
        array = value.const_value.numpy()
        if array.size > 1:
            value.const_value = ir.tensor(array + 1.0, name=value.name)
            return True
    return False


@gc.register_pass("plugin-noop")
def plugin_noop(model, ctx):
    """Nothing -> nothing (a plugin pass that changes nothing)."""
    return False
'''


@pytest.fixture
def model_path(tmp_path):
    path = tmp_path / "m.onnx"
    onnx.save(onnx.parser.parse_model(GOOD), path)
    return path


@pytest.fixture
def calib_path(tmp_path):
    path = tmp_path / "calib.npz"
    np.savez(path, x=np.random.default_rng(0).standard_normal((4, 1, 8)).astype(np.float32))
    return path


def run_cli(*args, cwd=None):
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    proc = subprocess.run([sys.executable, "-m", "greencc.cli", *map(str, args)], capture_output=True,
                          text=True, cwd=cwd, env=env, stdin=subprocess.DEVNULL, timeout=300)
    return proc.returncode, proc.stdout, proc.stderr


def _reproducer(stderr: str) -> Path:
    return Path(stderr.split("greencc repro ", 1)[1].split(")", 1)[0].strip())


def test_compile_runs_a_recipe_and_flags_override_it(model_path, calib_path, tmp_path, capsys):
    recipe = tmp_path / "recipe.toml"
    recipe.write_text(
        'model = "m.onnx"\npipeline = "-O2"\ncalibration = "calib.npz"\nseed = 3\n'
        '[target_options]\noptimization = "basic"\n[dims]\n'
    )
    out = tmp_path / "out"
    assert main(["compile", "--config", str(recipe), "-o", str(out), "-q"]) == 0
    report = json.loads((out / "report.json").read_text())
    manifest = json.loads((out / "greencc.json").read_text())
    recorded = CompileConfig.from_dict(report["config"])
    assert CompileConfig.from_dict(manifest["config"]) == recorded
    assert report["pipeline"] == "cleanup,fuse,dce" and recorded.pipeline == "-O2"
    assert recorded.model == str(model_path) and recorded.model_sha256 == file_sha256(model_path)
    assert recorded.calibration == str(calib_path) and recorded.calibration_sha256 == file_sha256(calib_path)
    assert recorded.seed == 3 and dict(recorded.target_options) == {"optimization": "basic"}
    assert manifest["options"]["optimization"] == "basic"

    # Flags replace the recipe's fields; --target-option sets one entry over the recipe's.
    argv = ["compile", "--config", str(recipe), "-o", str(out), "-q", "-O1", "--seed", "5",
            "--target-option", "threads=1"]
    assert main(argv) == 0
    recorded = CompileConfig.from_dict(json.loads((out / "report.json").read_text())["config"])
    assert recorded.pipeline == "-O1" and recorded.seed == 5
    assert dict(recorded.target_options) == {"optimization": "basic", "threads": 1}


def test_recipe_that_pins_a_changed_model_is_refused(model_path, tmp_path, capsys):
    recipe = tmp_path / "pinned.toml"
    recipe.write_text(f'model = "m.onnx"\nmodel_sha256 = "{"0" * 64}"\n')
    assert main(["compile", "--config", str(recipe), "-o", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert "has changed since the compile config was written" in err and err.count("\n") == 1
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("argv,fragment", [
    (["compile", "MODEL", "--config", "MISSING.toml", "-o", "OUT"], "does not exist"),
    (["compile", "MODEL", "--config", "BAD.toml", "-o", "OUT"], "not valid TOML"),
    (["compile", "MODEL", "--config", "TYPO.toml", "-o", "OUT"], "no field 'pipline'"),
    (["compile", "--config", "EMPTY.toml", "-o", "OUT"], "no model to compile"),
    (["compile", "MODEL", "--plugin", "MISSING.py", "-o", "OUT"], "plugin file"),
    (["compile", "MODEL", "--plugin", "BROKEN.py", "-o", "OUT"], "failed to load: ZeroDivisionError"),
    (["passes", "--plugin", "BROKEN.py"], "failed to load: ZeroDivisionError"),
    (["repro", "DIR", "--plugin", "MISSING.py"], "plugin file"),
])
def test_bad_recipe_or_plugin_is_one_usage_error_line(model_path, tmp_path, capsys, argv, fragment):
    (tmp_path / "BAD.toml").write_text("seed = [\n")
    (tmp_path / "TYPO.toml").write_text('pipline = "-O2"\n')
    (tmp_path / "EMPTY.toml").write_text("seed = 1\n")
    (tmp_path / "BROKEN.py").write_text("1 / 0\n")
    names = {"MODEL": model_path, "OUT": tmp_path / "out", "DIR": tmp_path}
    argv = [str(names.get(a, tmp_path / a if a[:1].isupper() else a)) for a in argv]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("greencc: error: ") and err.count("\n") == 1 and "(hint: " in err, err
    assert fragment in err
    assert not (tmp_path / "out").exists()


def test_repro_replays_a_failing_O3_with_its_calibration_and_target_option(
    model_path, calib_path, tmp_path, capsys, monkeypatch
):
    # dce breaks the numbers only when calibration data is present and the target was built
    # with optimization="basic": a reproducer that dropped either would not fail again.
    from greencc.pipeline.base import get_pass_class

    dce = get_pass_class("dce")
    original_call = dce.call

    def call(self, model, ctx):
        result = original_call(self, model, ctx)
        if ctx.calibration is not None and ctx.target.options.get("optimization") == "basic":
            for value in model.graph.initializers.values():
                array = value.const_value.numpy()
                if array.size > 1:
                    import onnx_ir as ir

                    value.const_value = ir.tensor(array * 1.5, name=value.name)
                    return type(result)(model, True, result.stats)
        return result

    monkeypatch.setattr(dce, "call", call)
    out = tmp_path / "out"
    base = ["compile", str(model_path), "-O3", "-o", str(out), "-q", "--repro-dir", str(tmp_path / "repros")]
    assert main([*base[:-2], "--target-option", "optimization=basic"]) == 0  # no calibration: passes
    assert main([*base[:-2], "--calib", str(calib_path)]) == 0  # no option: passes
    capsys.readouterr()
    assert main([*base, "--calib", str(calib_path), "--target-option", "optimization=basic"]) == 5
    err = capsys.readouterr().err
    assert "verification failed for pass" in err and "greencc repro" in err
    repro = _reproducer(err)
    config = CompileConfig.from_json(repro / "config.json")
    assert config.target_options["optimization"] == "basic"
    assert config.calibration == str(repro / "calibration.npz")
    assert config.calibration_sha256 == file_sha256(repro / "calibration.npz")
    assert config.pipeline.startswith("cleanup")
    stored = np.load(repro / "calibration.npz")["x"]
    assert np.array_equal(stored.reshape(4, 1, 8), np.load(calib_path)["x"])

    calib_path.unlink()  # the replay reads the reproducer's own copy
    assert main(["repro", str(repro)]) == 5
    err = capsys.readouterr().err
    assert "verification failed for pass" in err

    # The same reproducer without its calibration data, or without the option, no longer fails.
    for field, value in (("calibration", None), ("target_options", {"optimization": "all"})):
        doctored = tmp_path / f"without-{field}"
        shutil.copytree(repro, doctored)
        data = json.loads((doctored / "config.json").read_text())
        data[field] = value
        if field == "calibration":
            data["calibration_sha256"] = None
        (doctored / "config.json").write_text(json.dumps(data))
        assert main(["repro", str(doctored)]) == 0, field
        assert "no longer reproduces" in capsys.readouterr().out


def test_plugin_pass_compiles_lists_and_replays_from_its_copy(model_path, tmp_path):
    plugin = tmp_path / "my_passes.py"
    plugin.write_text(NUDGE_PLUGIN)
    code, out, err = run_cli("passes", "--plugin", plugin)
    assert code == 0 and "plugin-noop" in out and "nudge-weights" in out, err
    code, out, err = run_cli("compile", model_path, "--plugin", plugin, "--pipeline", "cleanup,plugin-noop",
                             "-o", tmp_path / "ok", "-q")
    assert code == 0, err
    report = json.loads((tmp_path / "ok" / "report.json").read_text())
    assert [row["name"] for row in report["rows"]] == ["(input)", "cleanup", "plugin-noop"]
    assert report["config"]["plugins"] == [str(plugin)]

    code, out, err = run_cli("compile", model_path, "--plugin", plugin, "--pipeline", "cleanup,nudge-weights",
                             "-o", tmp_path / "bad", "--repro-dir", tmp_path / "repros")
    assert code == 5 and "verification failed for pass 'nudge-weights'" in err, err
    repro = _reproducer(err)
    assert (repro / "plugins" / "0-my_passes.py").read_text() == NUDGE_PLUGIN
    plugin.unlink()  # the replay loads the reproducer's copy of the plugin
    code, out, err = run_cli("repro", repro)
    assert code == 5 and "verification failed for pass 'nudge-weights'" in err, err
