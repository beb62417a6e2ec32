"""Dynamic micro-batching under a latency target.

Requests for the same variant whose inputs agree on every dim but the batch dim are
joined along axis 0 and run as one call. A batch closes when it holds the most rows the
latency target allows or when its oldest request has waited ``max_wait_ms``; the row cap
follows the measured run time per row (an exponential average), so that waiting plus
running stays within the target. Batches run one at a time on one worker thread, each
inside an energy window, so windows never overlap and a batch's joules are split over its
requests by rows.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import math
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from greencc.errors import UsageError

# Weight of the newest batch in the per-row run-time average.
EWMA_WEIGHT = 0.2

RunBatch = Callable[[str, dict[str, np.ndarray]], tuple[dict[str, np.ndarray], float]]


@dataclass
class BatchShare:
    """One request's part of a batch: its outputs, its rows of ``batch_rows`` in a batch of
    ``batch_requests`` requests, its share of the batch's energy (J), and the batch's run
    and this request's queue time (ms)."""

    outputs: dict[str, np.ndarray]
    rows: int
    batch_rows: int
    batch_requests: int
    energy_j: float
    run_ms: float
    queued_ms: float


@dataclass
class _Pending:
    variant: str
    key: tuple[Any, ...]
    feeds: dict[str, np.ndarray]
    rows: int
    enqueued: float
    future: asyncio.Future[BatchShare] = field(repr=False)


class MicroBatcher:
    """Queues requests and runs them in batches through ``run(variant, feeds) -> (outputs,
    joules)`` on one worker thread.

    ``batchable``: the variants whose inputs and outputs all lead with one symbolic batch
    dim (others run one request per call). ``latency_target_ms``: the time a request may
    spend waiting and running; ``max_wait_ms``: the longest a request waits for company;
    ``max_batch``: the most rows in a batch; ``executor``: the one-thread pool batches run on
    (shared with other work that must not overlap them).
    """

    def __init__(
        self,
        run: RunBatch,
        *,
        batchable: set[str],
        latency_target_ms: float = 50.0,
        max_wait_ms: float = 5.0,
        max_batch: int = 16,
        executor: concurrent.futures.ThreadPoolExecutor | None = None,
    ) -> None:
        if not (latency_target_ms > 0 and max_wait_ms >= 0 and max_batch >= 1):
            raise UsageError(f"batching needs a positive latency target ({latency_target_ms} ms), a non-negative "
                             f"wait ({max_wait_ms} ms) and a batch of at least 1 row ({max_batch})")
        self._run = run
        self.batchable = set(batchable)
        self.latency_target_ms = float(latency_target_ms)
        self.max_wait_ms = float(max_wait_ms)
        self.max_batch = int(max_batch)
        self.ms_per_row: float | None = None
        self._pending: deque[_Pending] = deque()
        self._wake: asyncio.Event | None = None
        self._task: asyncio.Task[None] | None = None
        self._stopping = False
        self._executor = executor or concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="greencc-batch")

    def row_cap(self) -> int:
        """Rows a batch may hold now: as many as the run-time average fits in the latency
        target after the wait, within [1, max_batch]."""
        if self.ms_per_row is None or self.ms_per_row <= 0:
            return self.max_batch
        budget = self.latency_target_ms - self.max_wait_ms
        return max(1, min(self.max_batch, math.floor(budget / self.ms_per_row)))

    def start(self) -> None:
        """Start the batching loop on the running event loop."""
        self._wake = asyncio.Event()
        self._task = asyncio.get_running_loop().create_task(self._loop())

    async def stop(self) -> None:
        """Run every queued request to completion, then stop the loop."""
        self._stopping = True
        if self._wake is not None:
            self._wake.set()
        if self._task is not None:
            await self._task

    async def submit(self, variant: str, feeds: dict[str, np.ndarray]) -> BatchShare:
        """Queue one request's (validated) feeds for ``variant``; returns its share."""
        if self._wake is None or self._stopping:
            raise UsageError("the service is shutting down", hint="retry on another replica")
        batchable = variant in self.batchable
        first = next(iter(feeds.values()))
        rows = int(first.shape[0]) if batchable and first.ndim else 1
        key: tuple[Any, ...] = (variant, tuple((n, a.dtype.str, a.shape[1:]) for n, a in feeds.items()))
        if not batchable:
            key = (*key, id(feeds))  # never joined with another request
        future: asyncio.Future[BatchShare] = asyncio.get_running_loop().create_future()
        self._pending.append(_Pending(variant, key, feeds, rows, time.perf_counter(), future))
        self._wake.set()
        return await future

    async def _loop(self) -> None:
        assert self._wake is not None
        while True:
            if not self._pending:
                if self._stopping:
                    return
                self._wake.clear()
                await self._wake.wait()
                continue
            first = self._pending[0]
            cap = max(self.row_cap(), first.rows)
            deadline = first.enqueued + self.max_wait_ms / 1000.0
            while not self._stopping and self._rows_of(first.key) < cap:
                remaining = deadline - time.perf_counter()
                if remaining <= 0:
                    break
                self._wake.clear()
                try:
                    await asyncio.wait_for(self._wake.wait(), remaining)
                except asyncio.TimeoutError:
                    break
            batch = self._take(first.key, cap)
            await self._run_batch(batch)

    def _rows_of(self, key: tuple[Any, ...]) -> int:
        return sum(p.rows for p in self._pending if p.key == key)

    def _take(self, key: tuple[Any, ...], cap: int) -> list[_Pending]:
        taken: list[_Pending] = []
        rows = 0
        kept: deque[_Pending] = deque()
        for item in self._pending:
            if item.key == key and (not taken or rows + item.rows <= cap):
                taken.append(item)
                rows += item.rows
            else:
                kept.append(item)
        self._pending = kept
        return taken

    async def _run_batch(self, batch: list[_Pending]) -> None:
        variant = batch[0].variant
        feeds = batch[0].feeds if len(batch) == 1 else {
            name: np.concatenate([item.feeds[name] for item in batch], axis=0) for name in batch[0].feeds
        }
        started = time.perf_counter()
        loop = asyncio.get_running_loop()
        try:
            outputs, energy_j = await loop.run_in_executor(self._executor, self._run, variant, feeds)
        except Exception as exc:
            for item in batch:
                if not item.future.done():
                    item.future.set_exception(exc)
            return
        run_ms = (time.perf_counter() - started) * 1000.0
        total = sum(item.rows for item in batch)
        per_row = run_ms / max(total, 1)
        self.ms_per_row = per_row if self.ms_per_row is None else (
            (1 - EWMA_WEIGHT) * self.ms_per_row + EWMA_WEIGHT * per_row)
        offset = 0
        for item in batch:
            part = outputs if len(batch) == 1 else {
                name: value[offset:offset + item.rows] for name, value in outputs.items()
            }
            offset += item.rows
            share = BatchShare(outputs=part, rows=item.rows, batch_rows=total, batch_requests=len(batch),
                               energy_j=energy_j * item.rows / max(total, 1), run_ms=run_ms,
                               queued_ms=(started - item.enqueued) * 1000.0)
            if not item.future.done():
                item.future.set_result(share)


def batchable_variant(signature: dict[str, list[dict[str, Any]]]) -> bool:
    """Whether every input and output leads with the same symbolic (named) dim."""
    leads = {tuple(spec["shape"][:1]) if spec.get("shape") else () for spec in
             [*signature["inputs"], *signature["outputs"]]}
    if len(leads) != 1:
        return False
    (lead,) = leads
    return len(lead) == 1 and isinstance(lead[0], str) and bool(lead[0])


__all__ = ["BatchShare", "MicroBatcher", "batchable_variant"]
