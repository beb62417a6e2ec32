"""MetaSchedule tuning for tvm-llvm: a short real tuning run whose records land in the cache
keyed by target, a second compile that reuses them without tuning, a spent budget that
leaves kernels on default schedules, and outputs that match ONNX Runtime throughout."""

from __future__ import annotations

import numpy as np
import pytest

import greencc as gc
from tests.helpers import model_from_text, run_ort

pytest.importorskip("tvm", reason="apache-tvm is not installed (pip install 'greencc[tvm]')")

from greencc.targets.tvm.env import tuning_availability  # noqa: E402
from greencc.targets.tvm.llvm import TvmLlvm  # noqa: E402
from greencc.targets.tvm.tuning import target_key  # noqa: E402

MATMUL_RELU = """<ir_version: 10, opset_import: ["" : 17]>
mm (float[32, 48] x, float[48, 16] w) => (float[32, 16] y) {
  [mm] h = MatMul(x, w)
  [relu] y = Relu(h)
}"""


def _feeds(seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {"x": rng.standard_normal((32, 48)).astype(np.float32),
            "w": rng.standard_normal((48, 16)).astype(np.float32)}


@pytest.mark.slow
def test_tuning_records_are_cached_and_reused(tmp_path):
    if not tuning_availability():
        pytest.skip(f"MetaSchedule unavailable: {tuning_availability().reason}")
    model = model_from_text(MATMUL_RELU)
    cache = tmp_path / "cache"
    messages: list[tuple[int, int, str]] = []
    options = {"threads": 1, "tune_budget_s": 600, "tune_trials": 2, "cache_dir": str(cache)}
    first = TvmLlvm(**options).lower(model)
    assert first.tuning["tuned"] == ["fused_matmul_relu"] and first.tuning["trials"] == 2
    assert first.tuning["cached"] == [] and first.tuning["skipped"] == []
    records = cache / target_key(TvmLlvm(**options).target_spec()) / "database_tuning_record.json"
    # Two measured candidates, plus greencc's default schedule measured alongside them.
    assert len(records.read_text().splitlines()) == 3
    feeds = _feeds()
    np.testing.assert_allclose(first(feeds)["y"], run_ort(model, feeds)[0], rtol=1e-5, atol=1e-5)

    def listen(event: gc.ProgressEvent) -> None:
        messages.append((event.done, event.steps, event.what))

    again = TvmLlvm(**options).lower(model, gc.PassContext(progress=listen))
    assert again.tuning["cached"] == ["fused_matmul_relu"] and again.tuning["tuned"] == []
    assert again.tuning["trials"] == 0
    assert messages == [(1, 1, "tvm tuning: fused_matmul_relu: reused cached records")]
    np.testing.assert_allclose(again(feeds)["y"], first(feeds)["y"], rtol=0, atol=0)


def test_a_spent_budget_leaves_default_schedules(tmp_path):
    if not tuning_availability():
        pytest.skip(f"MetaSchedule unavailable: {tuning_availability().reason}")
    from greencc.targets.tvm.build import fused_module
    from greencc.targets.tvm.env import make_target
    from greencc.targets.tvm.onnx_import import prepare_for_tvm, to_relax
    from greencc.targets.tvm.tuning import tune

    model = model_from_text(MATMUL_RELU)
    target = TvmLlvm(threads=1)
    spec = target.target_spec()
    fused = fused_module(to_relax(prepare_for_tvm(model, {})), make_target(spec))
    # A budget of 1e-9 s is spent before the first kernel starts: nothing is tuned.
    _, summary = tune(fused, make_target(spec), spec, budget_s=1e-9, cache_dir=tmp_path)
    assert summary.tuned == [] and summary.skipped == ["fused_matmul_relu"]
    assert summary.trials == 0


def test_default_schedule_record_replays_to_the_same_results():
    if not tuning_availability():
        pytest.skip(f"MetaSchedule unavailable: {tuning_availability().reason}")
    import tvm
    from tvm import relax
    from tvm.s_tir import meta_schedule as ms

    from greencc.targets.tvm.build import build_executable, fused_module
    from greencc.targets.tvm.env import make_target
    from greencc.targets.tvm.onnx_import import prepare_for_tvm, to_relax
    from greencc.targets.tvm.tuning import _commit_default_schedule, import_tensor_intrinsics

    model = model_from_text(MATMUL_RELU)
    target = make_target(TvmLlvm(threads=1).target_spec())
    fused = fused_module(to_relax(prepare_for_tvm(model, {})), target)
    (task,) = ms.relax_integration.extract_tasks(fused, target)
    import_tensor_intrinsics()
    database = ms.database.MemoryDatabase()
    builder = ms.builder.LocalBuilder(max_workers=1, timeout_sec=120,
                                      initializer=import_tensor_intrinsics)
    assert _commit_default_schedule(task, target, database, builder, ms.runner.LocalRunner())
    (record,) = database.get_top_k(database.commit_workload(task.dispatched[0]), 1)
    assert float(record.run_secs[0]) > 0
    vm = relax.VirtualMachine(build_executable(fused, target, database), tvm.cpu())
    feeds = _feeds(4)
    out = vm["main"](tvm.runtime.tensor(feeds["x"]), tvm.runtime.tensor(feeds["w"])).numpy()
    np.testing.assert_allclose(out, run_ort(model, feeds)[0], rtol=1e-5, atol=1e-5)
