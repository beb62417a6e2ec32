"""The search on a simulated 2-node Ray cluster (``ray.cluster_utils.Cluster``: a head of two
CPUs and a node of one, one measurement slot each) over a small MatMul model: candidates
run on both nodes, a measurement overlaps neither another measurement nor a compile on its
node (from the store's timestamps), a rerun compiles nothing, a candidate beginning like
one that broke the budget is not compiled, a worker killed mid-candidate loses nothing, ``greencc search --resume DIR --report`` reports the stored
front."""

from __future__ import annotations

import os
from pathlib import Path

import onnx
import pytest

from greencc.cli import main
from greencc.search import SearchSpace, search
from greencc.search.store import BROKE_BUDGET, MEASURED, CandidateStore
from tests.models import weighted_model_proto

ray = pytest.importorskip("ray")
pytest.importorskip("optuna")

SPACE = SearchSpace(presets=("-O1", "-O2"), template="cleanup,fuse,quantize-int8",
                    options={"quantize-int8": {"enabled": (False, True), "mode": ("dynamic", "static")}})
DIMS = {"batch": 4}


@pytest.fixture(scope="module")
def cluster():
    from ray.cluster_utils import Cluster

    cluster = Cluster(initialize_head=True, head_node_args={
        "num_cpus": 2, "resources": {"measure_slot": 1}, "include_dashboard": False})
    cluster.add_node(num_cpus=1, resources={"measure_slot": 1})
    cluster.wait_for_nodes()
    ray.init(address=cluster.address, log_to_driver=False)
    yield cluster
    ray.shutdown()
    cluster.shutdown()


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> str:
    path = tmp_path_factory.mktemp("search") / "weighted.onnx"
    onnx.save(weighted_model_proto(), path)
    return str(path)


def _search(model: str, directory: Path, **options) -> object:
    return search(model, space=options.pop("space", SPACE), strategy="grid", directory=directory, dims=DIMS,
                  energy_window_s=0.05, **options)


def test_two_nodes_store_everything_and_a_rerun_compiles_nothing(cluster, model: str, tmp_path: Path,
                                                                  capsys: pytest.CaptureFixture[str]) -> None:
    first = _search(model, tmp_path, screen=False)
    assert first.stats["compile_tasks"] == len(first.candidates) >= 4  # grid points compiling alike are duplicates
    assert first.stats["duplicates"] >= 1
    assert len({c.compile_node for c in first.candidates}) == 2  # both nodes compiled
    measured = [c for c in first.candidates if c.status == MEASURED]
    assert measured and all(c.load_before is not None and c.measure_node for c in measured)
    by_node: dict[str, list] = {}
    for c in measured:
        by_node.setdefault(c.measure_node, []).append((c.measure_start, c.measure_end))
    for windows in by_node.values():
        windows.sort()
        assert all(end <= next_start for (_, end), (next_start, _) in zip(windows, windows[1:], strict=False))
    for m in measured:  # alone on its node: no compile there overlaps it, on the 2-CPU head either
        beside = [c for c in first.candidates if c.compile_node == m.measure_node
                  and c.compile_start < m.measure_end and c.compile_start + c.compile_s > m.measure_start]
        assert beside == []
    assert first.pareto and first.report is not None and first.report.is_file()

    again = _search(model, tmp_path, screen=False)
    assert again.stats["compile_tasks"] == 0 and again.stats["measured"] == 0
    assert [c.digest for c in again.candidates] == [c.digest for c in first.candidates]

    assert main(["search", "--resume", str(tmp_path), "--report"]) == 0
    out = capsys.readouterr().out
    assert "| pipeline |" in out and f"report: {tmp_path / 'report.html'}" in out


def test_a_worker_killed_mid_candidate_loses_nothing(cluster, model: str, tmp_path: Path) -> None:
    mark = tmp_path / "killed-once"
    plugin = tmp_path / "die_once.py"
    plugin.write_text(
        "import os\nimport greencc as gc\n\n\n"
        "@gc.register_pass('die-once')\n"
        "class DieOnce(gc.Pass):\n"
        "    \"\"\"x -> x; the first run in a Ray worker kills that worker's process.\"\"\"\n\n"
        "    lossy = False\n\n"
        "    def call(self, model, ctx):\n"
        f"        if os.getpid() != {os.getpid()} and not os.path.exists({str(mark)!r}):\n"
        f"            open({str(mark)!r}, 'w').close()\n"
        "            os._exit(1)\n"
        "        return gc.PassResult(model, modified=False)\n"
    )
    import greencc as gc

    gc.load_plugin(str(plugin))
    space = SearchSpace(presets=("cleanup,die-once", "-O2"))
    result = _search(model, tmp_path / "run", space=space, plugins=(str(plugin),), measure=False)
    assert mark.exists()  # a worker did die mid-candidate
    with CandidateStore(tmp_path / "run") as store:
        statuses = {c.pipeline: c.status for c in store}
    assert statuses == {"cleanup,die-once": "compiled", "-O2": "compiled"}
    assert result.stats["failed"] == 0


def test_a_candidate_beginning_like_one_that_broke_the_budget_is_not_compiled(cluster, model: str,
                                                                                tmp_path: Path) -> None:
    space = SearchSpace(presets=(), template="cleanup,quantize-int8{fallback=none},dce",
                        options={"dce": {"enabled": (False, True)}})
    result = _search(model, tmp_path, space=space, budget="cos=0.9999999", workers=1, screen=False, measure=False)
    first, second = result.candidates
    assert first.status == second.status == BROKE_BUDGET
    assert first.broken_prefix == "cleanup,quantize-int8{fallback=none}" and first.fidelity < 0.9999999
    assert second.reason.startswith("not compiled") and second.fidelity == first.fidelity
    assert result.stats["compile_tasks"] == 1 and result.stats["known_broken"] == 1
