"""The service's Prometheus metrics (``/metrics``), in a registry of its own: requests,
latency, energy and carbon per variant, tokens, batch sizes, in-flight requests, the grid
intensity, the serving variant and every switch with its reason, and the energy windows'
totals. Energy figures carry the meter's method as a label (measured or estimated).
"""

from __future__ import annotations

from prometheus_client import CONTENT_TYPE_LATEST as CONTENT_TYPE
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from greencc.measure.windows import WindowMonitor

# Latency buckets (s): 1 ms to 10 s.
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128)


class ServeMetrics:
    """Every metric of one service; ``render()`` is the ``/metrics`` body."""

    def __init__(self, variants: list[str], monitor: WindowMonitor) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.method = monitor.method
        self.requests = Counter("greencc_serve_requests", "Requests answered, by variant and HTTP status",
                                ["variant", "status"], registry=r)
        self.latency = Histogram("greencc_serve_request_latency_seconds", "Request latency in the service (s)",
                                 ["variant"], buckets=LATENCY_BUCKETS, registry=r)
        self.energy = Counter("greencc_serve_energy_joules", "Energy attributed to requests (J)",
                              ["variant", "method"], registry=r)
        self.co2e = Counter("greencc_serve_co2e_grams", "gCO2e attributed to requests at the grid intensity "
                            "read when they ran", ["variant", "method"], registry=r)
        self.j_per_request = Gauge("greencc_serve_joules_per_request", "Mean energy per request so far (J)",
                                   ["variant", "method"], registry=r)
        self.g_per_1k = Gauge("greencc_serve_co2e_grams_per_1k_requests", "Mean gCO2e per 1,000 requests so far",
                              ["variant", "method"], registry=r)
        self.tokens = Counter("greencc_serve_tokens", "Tokens generated", ["variant"], registry=r)
        self.j_per_token = Gauge("greencc_serve_joules_per_token", "Mean energy per generated token so far (J)",
                                 ["variant", "method"], registry=r)
        self.batch_rows = Histogram("greencc_serve_batch_rows", "Rows per executed batch", ["variant"],
                                    buckets=BATCH_BUCKETS, registry=r)
        self.inflight = Gauge("greencc_serve_inflight_requests", "Requests being served now", registry=r)
        self.intensity = Gauge("greencc_serve_grid_intensity_g_per_kwh", "Grid carbon intensity in use (gCO2e/kWh)",
                               registry=r)
        self.active = Gauge("greencc_serve_active_variant", "1 for the variant the policy serves now, else 0",
                            ["variant"], registry=r)
        self.switches = Counter("greencc_serve_variant_switches", "Changes of serving variant, with the reason",
                                ["from_variant", "to_variant", "reason"], registry=r)
        self.measured = Gauge("greencc_serve_energy_measured", "1 when energy is measured (NVML/RAPL), 0 when "
                              "estimated", ["method"], registry=r)
        self.measured.labels(monitor.method).set(1.0 if monitor.measured else 0.0)
        r.register(monitor.prometheus_collector())
        self._sums: dict[str, list[float]] = {name: [0.0, 0.0, 0.0, 0.0, 0.0] for name in variants}

    def record(self, variant: str, latency_s: float, energy_j: float, g_co2e: float, tokens: int = 0) -> None:
        """Count one answered request of ``variant`` and its share of energy and carbon."""
        sums = self._sums[variant]
        sums[0] += 1
        sums[1] += energy_j
        sums[2] += g_co2e
        sums[3] += tokens
        self.requests.labels(variant, "200").inc()
        self.latency.labels(variant).observe(latency_s)
        self.energy.labels(variant, self.method).inc(energy_j)
        self.co2e.labels(variant, self.method).inc(g_co2e)
        self.j_per_request.labels(variant, self.method).set(sums[1] / sums[0])
        self.g_per_1k.labels(variant, self.method).set(1000.0 * sums[2] / sums[0])
        if tokens:
            self.tokens.labels(variant).inc(tokens)
            self.j_per_token.labels(variant, self.method).set(sums[1] / sums[3])

    def reject(self, variant: str, status: int) -> None:
        """Count a refused or failed request."""
        self.requests.labels(variant or "-", str(status)).inc()

    def switch(self, from_variant: str | None, to_variant: str, reason: str) -> None:
        """Count a switch and move the active-variant gauge."""
        self.switches.labels(from_variant or "-", to_variant, reason).inc()
        for name in self._sums:
            self.active.labels(name).set(1.0 if name == to_variant else 0.0)

    def render(self) -> bytes:
        """The exposition text of every metric."""
        return generate_latest(self.registry)


__all__ = ["CONTENT_TYPE", "ServeMetrics"]
