"""The Ray Serve engine: the same app deployed as a Ray Serve replica answers inference,
readiness and metrics (one Ray start for the module: it costs seconds)."""

from __future__ import annotations

import socket

import numpy as np
import pytest

from tests.serve.conftest import WIDTH

httpx = pytest.importorskip("httpx")
ray = pytest.importorskip("ray")
serve = pytest.importorskip("ray.serve")

from greencc.serve.engines import run_ray  # noqa: E402
from greencc.serve.service import ServiceOptions  # noqa: E402


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture(scope="module")
def ray_url(artifacts):
    port = _free_port()
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    try:
        run_ray([f"o1={artifacts['o1']}"], ServiceOptions(), threads=1, port=port, block=False)
        yield f"http://127.0.0.1:{port}"
    finally:
        serve.shutdown()
        ray.shutdown()


def test_a_ray_serve_replica_serves_the_app(ray_url, artifacts):
    with httpx.Client(base_url=ray_url, timeout=60) as client:
        assert client.get("/readyz").json()["status"] == "ready"
        x = np.ones((2, WIDTH), np.float32).tolist()
        answer = client.post("/v1/infer", json={"inputs": {"x": x}}).json()
        assert answer["variant"] == "o1" and len(answer["outputs"]["y"]) == 2 and answer["energy_j"] > 0
        bad = client.post("/v1/infer", json={"inputs": {"z": x}})
        assert bad.status_code == 422 and "unknown input name(s) ['z']" in bad.json()["error"]
        assert 'greencc_serve_requests_total{status="200",variant="o1"} 1.0' in client.get("/metrics").text
