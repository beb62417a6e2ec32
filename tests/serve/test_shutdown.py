"""`greencc serve` as a user runs it: SIGTERM while requests are in flight completes every
one of them, then the process exits 0."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time

import numpy as np
import pytest

from tests.serve.conftest import WIDTH

httpx = pytest.importorskip("httpx")
pytest.importorskip("fastapi")

IN_FLIGHT = 8


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_sigterm_completes_every_request_in_flight(artifacts):
    port = _free_port()
    # Requests wait up to 1.5 s for a batch of 64 rows to fill: all eight are in flight when
    # SIGTERM arrives, and shutdown must run their batch rather than drop it.
    process = subprocess.Popen(
        [sys.executable, "-m", "greencc", "serve", str(artifacts["o1"]), "--port", str(port),
         "--max-wait-ms", "1500", "--max-batch", "64", "--latency-target-ms", "10000"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, env={**os.environ, "GREENCC_HOST_PROFILE": "detect"},
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            assert process.poll() is None, process.stderr.read().decode()
            try:
                if httpx.get(f"{url}/readyz", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, "the service did not become ready"
            time.sleep(0.1)
        answers: list[httpx.Response | Exception] = []
        x = np.ones((1, WIDTH), np.float32).tolist()

        def ask() -> None:
            try:
                answers.append(httpx.post(f"{url}/v1/infer", json={"inputs": {"x": x}}, timeout=30))
            except Exception as exc:  # recorded: the assertion below names it
                answers.append(exc)

        threads = [threading.Thread(target=ask) for _ in range(IN_FLIGHT)]
        for thread in threads:
            thread.start()
        while f"greencc_serve_inflight_requests {IN_FLIGHT}.0" not in httpx.get(f"{url}/metrics").text:
            time.sleep(0.02)
        process.send_signal(signal.SIGTERM)
        for thread in threads:
            thread.join(40)
        assert process.wait(40) == 0
    finally:
        if process.poll() is None:
            process.kill()
    assert len(answers) == IN_FLIGHT
    assert all(isinstance(a, httpx.Response) and a.status_code == 200 for a in answers), answers
    assert {a.json()["batch_requests"] for a in answers} == {IN_FLIGHT}
    with pytest.raises(httpx.TransportError):
        httpx.get(f"{url}/healthz", timeout=1)
