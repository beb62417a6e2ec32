"""The serving core, independent of the HTTP engine: variants, the micro-batcher, the
policy loop reading the carbon signal, energy attribution and metrics.

Every batch (and every generation) runs on one worker thread inside an energy window of
the service's monitor, so windows never overlap: a request's joules are its rows' share of
its batch's window; its gCO2e prices them at the grid intensity read last (the carbon
signal's, else the configured figure) and the PUE.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import time
from collections import deque
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from greencc.errors import GreenccError, UsageError
from greencc.measure.carbon import CarbonFactors
from greencc.measure.windows import WindowMonitor
from greencc.serve.batching import MicroBatcher, batchable_variant
from greencc.serve.generation import GenerationRequest, stream_tokens
from greencc.serve.metrics import ServeMetrics
from greencc.serve.payload import Limits, PayloadError, feeds_from_payload
from greencc.serve.policy import (
    CarbonPolicy,
    Choice,
    EnergyBudgetPolicy,
    FixedPolicy,
    Observation,
    Policy,
    PolicyController,
    PowerCapPolicy,
    Switch,
)
from greencc.serve.signals import CarbonSignal, parse_signal
from greencc.serve.variants import Variant

log = logging.getLogger("greencc.serve")

_J_PER_KWH = 3.6e6
# Recent power is averaged over this many seconds of batches.
POWER_WINDOW_S = 5.0
HOUR_S = 3600.0


@dataclass(frozen=True)
class ServiceOptions:
    """How a service batches, picks variants and prices carbon.

    ``latency_target_ms`` bounds waiting plus running per request; ``max_wait_ms`` (default
    a quarter of the target, at most 5 ms) is the longest a request waits for a batch to
    fill; ``max_batch`` caps its rows. ``policy`` is ``fixed`` (``variant``, default the
    first), ``carbon`` (``carbon_signal``, ``carbon_threshold`` gCO2e/kWh), ``energy-budget``
    (``energy_budget_j_per_hour``) or ``power-cap`` (``power_cap_w``), applied every
    ``interval_s`` seconds among the variants of fidelity ≥ ``fidelity_floor``.
    ``grid_intensity``/``pue`` price carbon without a signal (see :class:`CarbonFactors`).
    """

    latency_target_ms: float = 50.0
    max_wait_ms: float | None = None
    max_batch: int = 16
    policy: str = "fixed"
    variant: str | None = None
    fidelity_floor: float = 0.0
    carbon_signal: str | None = None
    carbon_threshold: float = 300.0
    energy_budget_j_per_hour: float | None = None
    power_cap_w: float | None = None
    interval_s: float = 0.25
    limits: Limits = field(default_factory=Limits)
    grid_intensity: float | str | None = None
    pue: float | None = None

    @property
    def wait_ms(self) -> float:
        """The batching wait in ms."""
        return self.max_wait_ms if self.max_wait_ms is not None else min(5.0, self.latency_target_ms / 4)


def build_policy(options: ServiceOptions, variants: list[Variant]) -> tuple[Policy, CarbonSignal | None]:
    """The policy ``options`` name and the carbon signal it reads (if any)."""
    choice = Choice(variants, options.fidelity_floor)
    signal = parse_signal(options.carbon_signal) if options.carbon_signal is not None else None
    if options.policy == "fixed":
        return FixedPolicy(choice, options.variant), signal
    if options.policy == "carbon":
        if signal is None:
            raise UsageError("the carbon policy needs a signal",
                             hint="--carbon-signal file:PATH, http://URL, table:FRA or a number")
        return CarbonPolicy(choice, signal, options.carbon_threshold), signal
    if options.policy == "energy-budget":
        if options.energy_budget_j_per_hour is None:
            raise UsageError("the energy-budget policy needs a budget", hint="--energy-budget J_PER_HOUR")
        return EnergyBudgetPolicy(choice, options.energy_budget_j_per_hour), signal
    if options.policy == "power-cap":
        if options.power_cap_w is None:
            raise UsageError("the power-cap policy needs a cap", hint="--power-cap WATTS")
        return PowerCapPolicy(choice, options.power_cap_w), signal
    raise UsageError(f"unknown policy {options.policy!r}", hint="fixed, carbon, energy-budget or power-cap")


class Service:
    """Serves ``variants`` of one model; start it on the event loop that will serve."""

    def __init__(self, variants: list[Variant], options: ServiceOptions | None = None,
                 monitor: WindowMonitor | None = None) -> None:
        self.options = options or ServiceOptions()
        self.variants = {v.name: v for v in variants}
        self.policy, self.signal = build_policy(self.options, variants)
        self.controller = PolicyController(self.policy)
        self.factors = CarbonFactors.of(self.options.grid_intensity, self.options.pue)
        device = "cpu" if all("cpu" in v.compiled.target for v in variants) else "any"
        self.monitor = monitor or WindowMonitor(factors=self.factors, device=device)
        self.metrics = ServeMetrics(list(self.variants), self.monitor)
        self.intensity = self.factors.grid_g_per_kwh
        self.metrics.intensity.set(self.intensity)
        self._executor = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="greencc-serve")
        self.batcher = MicroBatcher(
            self._run_batch,
            batchable={v.name for v in variants if batchable_variant(v.compiled.signature)},
            latency_target_ms=self.options.latency_target_ms, max_wait_ms=self.options.wait_ms,
            max_batch=self.options.max_batch, executor=self._executor,
        )
        self._energy: deque[tuple[float, float]] = deque()
        self._started = time.monotonic()
        self._policy_task: asyncio.Task[None] | None = None
        self.ready = False
        self.inflight = 0

    # -- life cycle ------------------------------------------------------------------------
    async def start(self) -> None:
        """Start batching, apply the policy once (the first switch), start its loop."""
        self.batcher.start()
        await self._apply_policy()
        self._policy_task = asyncio.get_running_loop().create_task(self._policy_loop())
        self.ready = True

    async def stop(self) -> None:
        """Refuse new work, finish every queued request, stop the loops."""
        self.ready = False
        if self._policy_task is not None:
            self._policy_task.cancel()
        await self.batcher.stop()
        self._executor.shutdown(wait=True)

    @property
    def current(self) -> str:
        """The variant the policy serves now."""
        return self.controller.current or next(iter(self.variants))

    @property
    def switches(self) -> list[Switch]:
        """Every switch so far."""
        return list(self.controller.switches)

    # -- requests --------------------------------------------------------------------------
    def pick(self, data: dict[str, Any]) -> Variant:
        """The request's variant: the one it names, else the policy's."""
        name = data.get("variant")
        if name is None:
            return self.variants[self.current]
        if not isinstance(name, str) or name not in self.variants:
            raise PayloadError(422, f"unknown variant {name!r}", hint=f"served variants: {', '.join(self.variants)}")
        return self.variants[name]

    async def infer(self, data: dict[str, Any]) -> dict[str, Any]:
        """Answer one inference request (``{"inputs": {...}, "variant"?: name}``)."""
        start = time.perf_counter()
        variant = self.pick(data)
        feeds = feeds_from_payload(data, variant.compiled, self.options.limits)
        self.inflight += 1
        self.metrics.inflight.inc()
        try:
            share = await self.batcher.submit(variant.name, feeds)
        finally:
            self.inflight -= 1
            self.metrics.inflight.dec()
        latency = time.perf_counter() - start
        grams = self.grams(share.energy_j)
        self.metrics.record(variant.name, latency, share.energy_j, grams)
        self.metrics.batch_rows.labels(variant.name).observe(share.batch_rows)
        return {
            "outputs": {name: np.asarray(value).tolist() for name, value in share.outputs.items()},
            "variant": variant.name,
            "latency_ms": latency * 1000.0,
            "energy_j": share.energy_j,
            "g_co2e": grams,
            "energy_label": self.monitor_label,
            "batch_rows": share.batch_rows,
            "batch_requests": share.batch_requests,
        }

    async def generate(self, data: dict[str, Any]) -> AsyncIterator[dict[str, Any]]:
        """Generate for a decoder variant, yielding one event per token and a final one with
        J/token; the whole generation is one energy window on the worker thread."""
        start = time.perf_counter()
        variant = self.pick(data)
        if not variant.is_decoder:
            raise PayloadError(422, f"variant {variant.name!r} is not a decoder: it cannot generate",
                               hint="POST /v1/infer for encoders")
        request = GenerationRequest.from_payload(data, self.options.limits)
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[Any] = asyncio.Queue()
        self.inflight += 1
        self.metrics.inflight.inc()

        def produce() -> float:
            with self.monitor.window(f"generate:{variant.name}") as window:
                for token in stream_tokens(variant.compiled, request):
                    loop.call_soon_threadsafe(queue.put_nowait, token)
            self._energy.append((time.monotonic(), window.energy_j))
            return window.energy_j

        future = loop.run_in_executor(self._executor, produce)
        future.add_done_callback(lambda _: loop.call_soon_threadsafe(queue.put_nowait, None))
        tokens = 0
        try:
            while (token := await queue.get()) is not None:
                tokens += 1
                yield {"token": token, "index": tokens - 1}
            energy = await future
        finally:
            self.inflight -= 1
            self.metrics.inflight.dec()
        grams = self.grams(energy)
        latency = time.perf_counter() - start
        self.metrics.record(variant.name, latency, energy, grams, tokens=tokens)
        yield {"done": True, "variant": variant.name, "tokens": tokens, "latency_ms": latency * 1000.0,
               "energy_j": energy, "j_per_token": energy / tokens if tokens else None, "g_co2e": grams,
               "energy_label": self.monitor_label}

    @property
    def monitor_label(self) -> str:
        """``measured (rapl)`` or ``estimated (estimate:cpu-time×tdp)``."""
        return f"{'measured' if self.monitor.measured else 'estimated'} ({self.monitor.method})"

    def grams(self, energy_j: float) -> float:
        """gCO2e of ``energy_j`` at the grid intensity in use and the PUE."""
        return energy_j / _J_PER_KWH * self.factors.pue * self.intensity

    def _run_batch(self, variant: str, feeds: dict[str, np.ndarray]) -> tuple[dict[str, np.ndarray], float]:
        compiled = self.variants[variant].compiled
        with self.monitor.window(f"batch:{variant}") as window:
            outputs = compiled.run(feeds)
        self._energy.append((time.monotonic(), window.energy_j))
        return outputs, window.energy_j

    # -- the policy ------------------------------------------------------------------------
    def observation(self) -> Observation:
        """Intensity in use, energy of the last hour and power of the last seconds."""
        now = time.monotonic()
        while self._energy and self._energy[0][0] < now - HOUR_S:
            self._energy.popleft()
        recent = sum(j for t, j in self._energy if t >= now - POWER_WINDOW_S)
        alive = max(now - self._started, 1e-3)
        return Observation(
            intensity_g_per_kwh=self.intensity if self.signal is not None else None,
            energy_j=sum(j for _, j in self._energy),
            energy_window_s=min(alive, HOUR_S),
            power_w=recent / min(alive, POWER_WINDOW_S),
        )

    async def _apply_policy(self) -> None:
        if self.signal is not None:
            try:
                self.intensity = await asyncio.to_thread(self.signal.read)
                self.metrics.intensity.set(self.intensity)
            except GreenccError as exc:
                log.warning("carbon signal unreadable, keeping %g gCO2e/kWh: %s", self.intensity, exc.message)
        switch = self.controller.apply(self.observation())
        if switch is not None:
            self.metrics.switch(switch.from_variant, switch.to_variant, switch.reason)

    async def _policy_loop(self) -> None:
        while True:
            await asyncio.sleep(self.options.interval_s)
            await self._apply_policy()

    def describe(self) -> dict[str, Any]:
        """The variants (signature, fidelity, energy), the policy and what it excluded."""
        choice = getattr(self.policy, "choice", None)
        return {
            "variants": [{"name": v.name, "source": v.source, "target": v.compiled.target, "fidelity": v.fidelity,
                          "energy_mj": v.energy_mj, "energy_label": v.energy_label, "decoder": v.is_decoder,
                          "signature": v.compiled.signature} for v in self.variants.values()],
            "policy": self.policy.name,
            "current": self.current,
            "fidelity_floor": self.options.fidelity_floor,
            "excluded": choice.excluded if choice is not None else [],
            "signal": self.signal.describe() if self.signal is not None else None,
            "energy": self.monitor_label,
            "carbon": self.factors.describe(),
        }


__all__ = ["Service", "ServiceOptions", "build_policy"]
