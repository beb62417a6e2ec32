"""Shared benchmark plumbing: the MiniLM under test, timing of contenders in one process,
and writing a section of BENCHMARKS.md with the command and the machine."""

from __future__ import annotations

import os
import platform
import re
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from greencc.measure.latency import LatencyStats

ROOT = Path(__file__).resolve().parents[1]
BENCHMARKS_MD = ROOT / "BENCHMARKS.md"


def machine() -> str:
    """One line describing this machine: CPU model, cores, Python, key library versions."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    import onnxruntime

    parts = [cpu, f"{os.cpu_count()} cores", f"Python {platform.python_version()}",
             f"onnxruntime {onnxruntime.__version__}"]
    try:
        import torch

        parts.append(f"torch {torch.__version__}")
    except ImportError:
        pass
    return ", ".join(parts)


@dataclass
class Row:
    """One contender's timing and its ratio to the baseline (lower is faster)."""

    name: str
    stats: LatencyStats
    ratio: float | None = None
    note: str = ""


@contextmanager
def holding(lock: str, poll_s: float = 20.0) -> Iterator[None]:
    """Hold a shared machine's benchmark lock file while timing: wait until ``lock`` is gone,
    create it holding this process's id, remove it afterwards (an empty ``lock`` holds nothing)."""
    if not lock:
        yield
        return
    path = Path(lock)
    while path.exists():
        time.sleep(poll_s)
    path.write_text(f"{os.getpid()}\n")  # whoever looks can tell which process is timing
    try:
        yield
    finally:
        path.unlink(missing_ok=True)


def time_contenders(contenders: dict[str, Callable[[], object]], *, repeats: int, warmup: int,
                    threads: int, rounds: int = 3) -> dict[str, LatencyStats]:
    """Time every contender in this process, interleaved over ``rounds`` so drift on a
    shared machine hits all of them alike; returns stats over all samples (ms)."""
    samples: dict[str, list[float]] = {name: [] for name in contenders}
    for fn in contenders.values():
        for _ in range(warmup):
            fn()
    per_round = max(1, -(-repeats // rounds))
    for _ in range(rounds):
        for name, fn in contenders.items():
            for _ in range(per_round):
                start = time.perf_counter_ns()
                fn()
                samples[name].append((time.perf_counter_ns() - start) / 1e6)
    return {name: LatencyStats.from_samples(values, warmup=warmup, threads=threads)
            for name, values in samples.items()}


def table(rows: list[Row], baseline: str) -> str:
    """A markdown table: median, p10–p90 spread, runs, and ratio to ``baseline``."""
    base = next(r for r in rows if r.name == baseline).stats.median_ms
    lines = ["| contender | median ms | p10–p90 ms | runs | ratio vs " + baseline + " | note |",
             "|---|---:|---:|---:|---:|---|"]
    for row in rows:
        s = row.stats
        lines.append(f"| {row.name} | {s.median_ms:.2f} | {s.p10_ms:.2f}–{s.p90_ms:.2f} | {s.repeats} | "
                     f"{s.median_ms / base:.2f} | {row.note} |")
    return "\n".join(lines)


def write_section(title: str, body: str) -> None:
    """Replace (or append) the ``## title`` section of BENCHMARKS.md, with command and machine."""
    module = os.path.relpath(sys.argv[0], ROOT).removesuffix(".py").replace(os.sep, ".")
    command = "HF_HUB_OFFLINE=1 .venv/bin/python -m " + " ".join([module, *sys.argv[1:]])
    stamp = time.strftime("%Y-%m-%d")
    section = (f"## {title}\n\nCommand: `{command}`  \nMachine: {machine()}  \nDate: {stamp}\n\n{body.strip()}\n")
    text = BENCHMARKS_MD.read_text() if BENCHMARKS_MD.exists() else (
        "# Benchmarks\n\nEvery table is written by the script named in its command, all contenders in one "
        "process, same inputs, same thread count. Quote ratios within one table, not absolute times "
        "across runs: the machines are shared and noisy.\n\n")
    pattern = re.compile(rf"^## {re.escape(title)}\n.*?(?=^## |\Z)", re.S | re.M)
    text = pattern.sub(lambda _: section + "\n", text) if pattern.search(text) else text.rstrip() + "\n\n" + section
    BENCHMARKS_MD.write_text(text)


def seeded_tokens(tokenizer, sentences: list[str], seq: int) -> dict[str, np.ndarray]:
    """Token ids and attention mask for ``sentences`` padded to ``seq``, as int64 arrays."""
    encoded = tokenizer(sentences, padding="max_length", max_length=seq, truncation=True, return_tensors="np")
    return {"input_ids": encoded["input_ids"].astype(np.int64),
            "attention_mask": encoded["attention_mask"].astype(np.int64)}
