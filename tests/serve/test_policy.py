"""Policies: the carbon policy follows a stepping signal within a second and never serves a
variant under the fidelity floor; budget and power-cap decisions; signals; fidelity read
from a report."""

from __future__ import annotations

import dataclasses
import http.server
import threading
import time

import numpy as np
import onnx.parser
import pytest

import greencc as gc
from greencc.errors import UsageError
from greencc.serve.policy import (
    Choice,
    EnergyBudgetPolicy,
    Observation,
    PolicyController,
    PowerCapPolicy,
)
from greencc.serve.signals import FileSignal, HttpSignal, TableSignal, parse_signal
from greencc.serve.variants import load_variants, variant_from
from tests.serve.conftest import WIDTH, encoder_text

httpx = pytest.importorskip("httpx")
pytest.importorskip("fastapi")

from greencc.serve.engines import BackgroundServer  # noqa: E402
from greencc.serve.service import Service, ServiceOptions  # noqa: E402


@pytest.fixture(scope="module")
def variants(artifacts):
    fp32, o1 = load_variants([f"fp32={artifacts['fp32']}", f"o1={artifacts['o1']}"])
    # The greenest of all, but below the floor: the policy must never pick it.
    lossy = dataclasses.replace(o1, name="lossy", fidelity=0.9, energy_mj=(o1.energy_mj or 1.0) / 10)
    return [fp32, o1, lossy]


def test_variants_rank_by_their_reports(variants):
    fp32, o1, _ = variants
    assert fp32.fidelity == 1.0 and o1.fidelity > 0.99999
    assert o1.energy_mj < fp32.energy_mj  # cleanup removed two nodes
    choice = Choice(variants, floor=0.999)
    assert choice.quality.name == "fp32" and choice.green.name == "o1"
    assert choice.excluded == ["lossy (fidelity 0.900000 < floor 0.999)"]
    with pytest.raises(UsageError, match="no variant reaches the fidelity floor"):
        Choice(variants, floor=1.5)


def test_carbon_signal_step_moves_traffic_to_the_greener_variant_within_a_second(variants, tmp_path):
    signal = tmp_path / "grid.txt"
    signal.write_text("50\n")
    options = ServiceOptions(policy="carbon", carbon_signal=f"file:{signal}", carbon_threshold=300,
                             fidelity_floor=0.999, interval_s=0.1)
    server = BackgroundServer(Service(variants, options)).start()
    x = np.zeros((1, WIDTH), np.float32).tolist()
    try:
        with httpx.Client(base_url=server.url, timeout=10) as client:
            assert client.post("/v1/infer", json={"inputs": {"x": x}}).json()["variant"] == "fp32"
            signal.write_text('{"g_per_kwh": 700}\n')
            stepped = time.monotonic()
            served = []
            while time.monotonic() - stepped < 1.0:
                served.append(client.post("/v1/infer", json={"inputs": {"x": x}}).json()["variant"])
                if served[-1] == "o1":
                    break
            assert served[-1] == "o1", f"still {served[-1]} one second after the step"
            for _ in range(20):
                assert client.post("/v1/infer", json={"inputs": {"x": x}}).json()["variant"] == "o1"
            metrics = client.get("/metrics").text
            switches = client.get("/v1/switches").json()
    finally:
        server.stop()
    assert 'greencc_serve_variant_switches_total{from_variant="fp32",reason="carbon-high",to_variant="o1"} 1.0' \
        in metrics
    assert 'greencc_serve_active_variant{variant="o1"} 1.0' in metrics
    assert "greencc_serve_grid_intensity_g_per_kwh 700.0" in metrics
    assert [(s["from_variant"], s["to_variant"], s["reason"]) for s in switches] == [
        (None, "fp32", "carbon-low"), ("fp32", "o1", "carbon-high")]
    assert "lossy" not in {s["to_variant"] for s in switches}


def test_budget_and_power_cap_switch_with_hysteresis(variants):
    choice = Choice(variants, floor=0.999)
    budget = PolicyController(EnergyBudgetPolicy(choice, j_per_hour=3600.0))  # 1 W on average
    assert budget.apply(Observation(energy_j=10.0, energy_window_s=60.0)).to_variant == "fp32"
    switch = budget.apply(Observation(energy_j=120.0, energy_window_s=60.0))  # 2 W -> 7200 J/h
    assert switch.to_variant == "o1" and switch.reason == "over-budget"
    assert budget.apply(Observation(energy_j=57.0, energy_window_s=60.0)) is None  # inside the band
    assert budget.apply(Observation(energy_j=30.0, energy_window_s=60.0)).reason == "within-budget"
    cap = PolicyController(PowerCapPolicy(choice, cap_w=5.0))
    cap.apply(Observation(power_w=1.0))
    assert cap.apply(Observation(power_w=6.0)).to_variant == "o1"
    assert [s.reason for s in cap.switches] == ["under-power-cap", "over-power-cap"]


def test_signals_read_files_endpoints_and_tables(tmp_path):
    path = tmp_path / "grid.json"
    path.write_text('{"carbonIntensity": 123}')
    assert FileSignal(path).read() == 123.0
    path.write_text("oops")
    with pytest.raises(UsageError, match="not a number of gCO2e/kWh"):
        FileSignal(path).read()
    assert parse_signal("250").read() == 250.0

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802 - the http.server API
            self.send_response(200)
            self.end_headers()
            self.wfile.write(b'{"g_per_kwh": 432.5}')

        def log_message(self, *args):
            pass

    endpoint = http.server.HTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=endpoint.serve_forever, daemon=True).start()
    try:
        assert HttpSignal(f"http://127.0.0.1:{endpoint.server_port}/").read() == 432.5
    finally:
        endpoint.shutdown()
    pytest.importorskip("codecarbon")
    france = TableSignal("FRA")
    assert 0 < france.read() < 200 and "yearly" in france.describe()


def test_fidelity_is_read_from_the_report_of_a_lossy_compile():
    model = gc.load(onnx.parser.parse_model(encoder_text()))
    compiled = gc.compile(model, pipeline="quantize-int8", dims={"batch": 1})
    cosines = [row.fidelity["cosine_min"] for row in compiled.report.rows if row.fidelity]
    variant = variant_from(compiled, "int8")
    assert variant.fidelity == min(cosines) < 1.0
    assert variant.energy_mj == compiled.report.final.est_energy_mj
