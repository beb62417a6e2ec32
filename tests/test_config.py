"""CompileConfig: one frozen description of a compile that round-trips through dicts,
JSON, TOML recipes and pickle, hashes by value, has a stable digest and rejects bad
fields with a UsageError naming them."""

import dataclasses
import hashlib
import json
import os
import pickle
import subprocess
import sys
from pathlib import Path

import pytest

import greencc as gc
from greencc.config import CompileConfig, file_sha256
from greencc.errors import UsageError

ROOT = Path(__file__).resolve().parents[1]

FULL = CompileConfig(
    model="/models/m.onnx",
    model_sha256="a" * 64,
    target="tvm-llvm",
    target_options={"tune_budget_s": 60, "mcpu": "skylake", "tiles": [8, 32], "extra": {"fast": True}},
    pipeline="cleanup,quantize-int8{method=entropy}",
    dims={"batch": 1, "seq": 128},
    calibration="/data/calib.npz",
    calibration_sha256="b" * 64,
    budget="cos=0.99",
    threads=2,
    seed=7,
    verify=False,
    measure=True,
    energy_window_s=2.5,
    grid_intensity="FRA",
    pue=1.2,
    plugins=("/plugins/my_passes.py", "my_package.passes"),
)

RECIPE = """\
model = "m.onnx"
target = "tvm-llvm"
pipeline = "cleanup,quantize-int8{method=entropy}"
calibration = "data/calib.npz"
budget = "cos=0.99"
threads = 2
seed = 7
verify = false
measure = true
energy_window_s = 2.5
grid_intensity = "FRA"
pue = 1.2
plugins = ["my_passes.py", "my_package.passes"]
model_sha256 = "SHA_A"
calibration_sha256 = "SHA_B"

[target_options]
tune_budget_s = 60
mcpu = "skylake"
tiles = [8, 32]
extra = { fast = true }

[dims]
batch = 1
seq = 128
""".replace("SHA_A", "a" * 64).replace("SHA_B", "b" * 64)


def test_dict_and_json_round_trip():
    data = FULL.to_dict()
    assert data["schema"] == "greencc.config/1"
    assert CompileConfig.from_dict(data) == FULL
    assert CompileConfig.from_dict(json.loads(FULL.to_json())) == FULL
    assert json.loads(FULL.to_json())["target_options"]["tiles"] == [8, 32]


def test_json_file_reads_relative_paths_from_its_folder(tmp_path):
    relative = dataclasses.replace(FULL, model="m.onnx", calibration="c.npz", plugins=("p/x.py", "pkg.mod"))
    path = tmp_path / "config.json"
    relative.to_json(path)
    read = CompileConfig.from_json(path)
    assert read.model == str(tmp_path / "m.onnx") and read.calibration == str(tmp_path / "c.npz")
    assert read.plugins == (str(tmp_path / "p/x.py"), "pkg.mod")


def test_toml_recipe_round_trip(tmp_path):
    path = tmp_path / "recipe.toml"
    path.write_text(RECIPE)
    config = CompileConfig.from_toml(path)
    expected = dataclasses.replace(
        FULL, model=str(tmp_path / "m.onnx"), calibration=str(tmp_path / "data/calib.npz"),
        plugins=(str(tmp_path / "my_passes.py"), "my_package.passes"),
    )
    assert config == expected
    assert config.digest == expected.digest


def test_pickle_and_hash_equality():
    clone = pickle.loads(pickle.dumps(FULL))
    assert clone == FULL and hash(clone) == hash(FULL) and clone.digest == FULL.digest
    assert len({FULL, clone, CompileConfig.from_dict(FULL.to_dict())}) == 1
    assert dataclasses.replace(FULL, seed=8) != FULL
    assert hash(dataclasses.replace(FULL, seed=8)) != hash(FULL)


def test_frozen_all_the_way_down():
    with pytest.raises(dataclasses.FrozenInstanceError):
        FULL.seed = 1  # type: ignore[misc]
    with pytest.raises(TypeError):
        FULL.target_options["mcpu"] = "other"  # type: ignore[index]
    assert FULL.target_options == {"tune_budget_s": 60, "mcpu": "skylake", "tiles": (8, 32), "extra": {"fast": True}}


def test_digest_is_canonical_and_stable_across_processes():
    shuffled = dict(reversed(list(FULL.to_dict().items())))
    shuffled["target_options"] = dict(reversed(list(shuffled["target_options"].items())))
    assert CompileConfig.from_dict(shuffled).digest == FULL.digest
    assert CompileConfig(energy_window_s=1).digest == CompileConfig().digest  # 1 and 1.0 are one value
    assert dataclasses.replace(FULL, budget="cos=0.98").digest != FULL.digest
    code = ("import json, sys; from greencc.config import CompileConfig; "
            "print(CompileConfig.from_dict(json.loads(sys.stdin.read())).digest)")
    proc = subprocess.run([sys.executable, "-c", code], input=FULL.to_json(), capture_output=True, text=True,
                          env=dict(os.environ, PYTHONPATH=str(ROOT), PYTHONHASHSEED="123"), check=True)
    assert proc.stdout.strip() == FULL.digest


@pytest.mark.parametrize("fields,fragment", [
    ({"seed": "zero"}, "'seed'"),
    ({"threads": 0}, "'threads'"),
    ({"verify": "yes"}, "'verify'"),
    ({"dims": {"seq": -1}}, "'dims'"),
    ({"target": ""}, "'target'"),
    ({"model_sha256": "abc"}, "'model_sha256'"),
    ({"energy_window_s": 0}, "'energy_window_s'"),
    ({"target_options": {"f": object()}}, "'target_options.f'"),
    ({"plugins": [3]}, "'plugins'"),
])
def test_bad_fields_are_usage_errors(fields, fragment):
    with pytest.raises(UsageError) as info:
        CompileConfig(**fields)
    assert fragment in info.value.message


def test_unknown_field_and_schema(tmp_path):
    with pytest.raises(UsageError, match="no field 'sed'") as info:
        CompileConfig.from_dict({"sed": 1})
    assert "did you mean 'seed'" in info.value.hint
    with pytest.raises(UsageError, match="schema"):
        CompileConfig.from_dict({"schema": "greencc.config/99"})
    bad = tmp_path / "bad.toml"
    bad.write_text("seed = [\n")
    with pytest.raises(UsageError, match="not valid TOML"):
        CompileConfig.from_toml(bad)
    with pytest.raises(UsageError, match="does not exist"):
        CompileConfig.from_toml(tmp_path / "missing.toml")
    typo = tmp_path / "typo.toml"
    typo.write_text('pipline = "-O2"\n')
    with pytest.raises(UsageError, match=r"typo.toml: compile config has no field 'pipline'"):
        CompileConfig.from_toml(typo)


def test_file_sha256_and_public_name(tmp_path):
    path = tmp_path / "f.bin"
    path.write_bytes(b"greencc")
    assert file_sha256(path) == hashlib.sha256(b"greencc").hexdigest()
    assert gc.CompileConfig is CompileConfig
