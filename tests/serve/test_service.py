"""One local service per module: inference, micro-batching, energy attribution, metrics,
health, and 4xx errors over HTTP."""

from __future__ import annotations

import concurrent.futures

import numpy as np
import pytest

httpx = pytest.importorskip("httpx")
pytest.importorskip("fastapi")

from greencc.serve.engines import BackgroundServer  # noqa: E402
from greencc.serve.service import Service, ServiceOptions  # noqa: E402
from greencc.serve.variants import load_variants  # noqa: E402
from tests.serve.conftest import WIDTH  # noqa: E402


@pytest.fixture(scope="module")
def server(artifacts):
    variants = load_variants([f"fp32={artifacts['fp32']}", f"o1={artifacts['o1']}"])
    options = ServiceOptions(max_wait_ms=30, max_batch=64, latency_target_ms=1000)
    running = BackgroundServer(Service(variants, options)).start()
    yield running
    running.stop()


@pytest.fixture(scope="module")
def client(server):
    with httpx.Client(base_url=server.url, timeout=30) as http:
        yield http


def _rows(n: int, seed: int) -> list[list[float]]:
    return np.random.default_rng(seed).standard_normal((n, WIDTH)).astype(np.float32).tolist()


def test_inference_answers_with_outputs_energy_and_carbon(client, server):
    x = _rows(3, 0)
    answer = client.post("/v1/infer", json={"inputs": {"x": x}}).json()
    expected = server.service.variants["fp32"].compiled({"x": np.asarray(x, np.float32)})["y"]
    np.testing.assert_allclose(np.asarray(answer["outputs"]["y"]), expected, rtol=1e-5, atol=1e-6)
    assert answer["variant"] == "fp32" and answer["energy_j"] > 0 and answer["g_co2e"] > 0
    assert answer["energy_label"].startswith(("estimated", "measured"))
    pinned = client.post("/v1/infer", json={"inputs": {"x": x}, "variant": "o1"}).json()
    assert pinned["variant"] == "o1"


def test_concurrent_requests_are_batched_and_each_gets_its_rows(client, server):
    requests = [_rows(1 + i % 3, seed=i) for i in range(12)]
    monitor = server.service.monitor
    before = monitor.totals()["batch:fp32"].energy_j
    with concurrent.futures.ThreadPoolExecutor(12) as pool:
        answers = list(pool.map(lambda x: client.post("/v1/infer", json={"inputs": {"x": x}}).json(), requests))
    compiled = server.service.variants["fp32"].compiled
    for x, answer in zip(requests, answers, strict=True):
        expected = compiled({"x": np.asarray(x, np.float32)})["y"]
        np.testing.assert_allclose(np.asarray(answer["outputs"]["y"]), expected, rtol=1e-5, atol=1e-6)
    assert max(a["batch_requests"] for a in answers) > 1
    # Every joule of the batches' windows is attributed to a request, by rows.
    spent = monitor.totals()["batch:fp32"].energy_j - before
    assert sum(a["energy_j"] for a in answers) == pytest.approx(spent, rel=1e-9)


def test_http_errors_name_the_problem(client):
    cases = [
        ({"inputs": {"z": _rows(1, 0)}}, 422, "unknown input name(s) ['z']"),
        ({"inputs": {"x": [[1.0, 2.0]]}}, 422, "input 'x' has shape [1, 2]"),
        ({"inputs": {"x": [["a"] * WIDTH]}}, 422, "text values"),
        ({"inputs": {"x": _rows(1, 0)}, "variant": "nope"}, 422, "unknown variant 'nope'"),
    ]
    for body, status, message in cases:
        response = client.post("/v1/infer", json=body)
        assert response.status_code == status and message in response.json()["error"]
    response = client.post("/v1/infer", content=b"{not json")
    assert response.status_code == 400 and "not valid JSON" in response.json()["error"]
    response = client.post("/v1/infer", content=b"0" * (9 << 20))
    assert response.status_code == 413 and "exceeds the limit" in response.json()["error"]
    response = client.post("/v1/generate", json={"input_ids": [1, 2]})
    assert response.status_code == 422 and "not a decoder" in response.json()["error"]


def test_health_readiness_models_and_metrics(client):
    assert client.get("/healthz").json() == {"status": "ok"}
    assert client.get("/readyz").json()["status"] == "ready"
    models = client.get("/v1/models").json()
    assert [v["name"] for v in models["variants"]] == ["fp32", "o1"] and models["policy"] == "fixed"
    client.post("/v1/infer", json={"inputs": {"x": _rows(1, 1)}})
    metrics = client.get("/metrics").text
    for name in ("greencc_serve_requests_total", "greencc_serve_joules_per_request",
                 "greencc_serve_co2e_grams_per_1k_requests", "greencc_serve_request_latency_seconds_bucket",
                 "greencc_serve_batch_rows_bucket", "greencc_serve_inflight_requests",
                 "greencc_window_energy_joules_total", "greencc_serve_energy_measured"):
        assert name in metrics, name
    assert 'greencc_serve_requests_total{status="422",variant="-"}' in metrics
    assert 'greencc_serve_active_variant{variant="fp32"} 1.0' in metrics
