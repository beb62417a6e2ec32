"""Which variant serves: a fixed one, or the one a policy picks from what is measured —
grid carbon intensity, energy spent in the last hour, or recent power — never one whose
fidelity is below the service's floor.

Each policy picks between the *quality* variant (the highest fidelity; the first listed
on a tie) and the *green* variant (the least energy per inference, from its report)
among the eligible ones, with hysteresis so a signal hovering at the threshold does not
flap. :class:`PolicyController` applies a policy each interval and keeps every switch
with its reason.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Protocol

from greencc.errors import UsageError
from greencc.serve.signals import CarbonSignal
from greencc.serve.variants import Variant

log = logging.getLogger("greencc.serve")

# A policy returns to the quality variant only when the measure falls this far below
# its threshold (fraction of the threshold).
DEFAULT_HYSTERESIS = 0.1
POLICIES = ("fixed", "carbon", "energy-budget", "power-cap")


@dataclass(frozen=True)
class Observation:
    """What a policy sees: grid intensity (gCO2e/kWh, ``None`` without a signal), energy the
    service spent over the last ``energy_window_s`` seconds (J, up to an hour) and its mean
    power over the last few seconds (W)."""

    intensity_g_per_kwh: float | None = None
    energy_j: float = 0.0
    energy_window_s: float = 0.0
    power_w: float = 0.0


@dataclass(frozen=True)
class Decision:
    """A policy's pick: the variant, a short ``reason`` (a metric label) and the detail."""

    variant: str
    reason: str
    detail: str


@dataclass(frozen=True)
class Switch:
    """A change of serving variant at ``at`` (Unix s), with the decision behind it."""

    at: float
    from_variant: str | None
    to_variant: str
    reason: str
    detail: str

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe dict."""
        return asdict(self)


class Policy(Protocol):
    """Picks the serving variant from an :class:`Observation`."""

    name: str

    def decide(self, seen: Observation, current: str | None) -> Decision:
        """The variant to serve now and why."""
        ...


@dataclass
class Choice:
    """The eligible variants (fidelity ≥ ``floor``) and the two a policy moves between."""

    variants: list[Variant]
    floor: float
    eligible: list[Variant] = field(init=False)
    excluded: list[str] = field(init=False)

    def __post_init__(self) -> None:
        self.eligible = [v for v in self.variants if v.fidelity >= self.floor]
        self.excluded = [f"{v.name} (fidelity {v.fidelity:.6f} < floor {self.floor:g})"
                         for v in self.variants if v.fidelity < self.floor]
        if not self.eligible:
            raise UsageError(f"no variant reaches the fidelity floor {self.floor:g}: {', '.join(self.excluded)}",
                             hint="lower --fidelity-floor or add a more faithful variant")

    @property
    def quality(self) -> Variant:
        """The most faithful eligible variant."""
        return max(self.eligible, key=lambda v: v.fidelity)

    @property
    def green(self) -> Variant:
        """The eligible variant with the least energy per inference (reported)."""
        return min(self.eligible, key=lambda v: (v.energy_mj is None, v.energy_mj or 0.0, -v.fidelity))


def _threshold_decision(choice: Choice, value: float, threshold: float, current: str | None, *,
                        high: str, low: str, what: str, hysteresis: float) -> Decision:
    if value >= threshold:
        return Decision(choice.green.name, high, f"{what} {value:.4g} ≥ {threshold:.4g}: greenest variant")
    if value < threshold * (1 - hysteresis) or current is None:
        return Decision(choice.quality.name, low, f"{what} {value:.4g} < {threshold * (1 - hysteresis):.4g}: "
                        "most faithful variant")
    return Decision(current, "hold", f"{what} {value:.4g} within the hysteresis band")


class FixedPolicy:
    """Always the same variant (default: the first eligible)."""

    name = "fixed"

    def __init__(self, choice: Choice, variant: str | None = None) -> None:
        self.choice = choice
        names = [v.name for v in choice.eligible]
        if variant is not None and variant not in names:
            raise UsageError(f"variant {variant!r} is not served or is below the fidelity floor",
                             hint=f"eligible variants: {', '.join(names)}")
        self.variant = variant or names[0]

    def decide(self, seen: Observation, current: str | None) -> Decision:
        """The fixed variant."""
        return Decision(self.variant, "fixed", "fixed policy")


class CarbonPolicy:
    """The green variant while the grid is at or above ``threshold_g_per_kwh``, the quality
    variant below it (less the hysteresis)."""

    name = "carbon"

    def __init__(self, choice: Choice, signal: CarbonSignal, threshold_g_per_kwh: float = 300.0,
                 hysteresis: float = DEFAULT_HYSTERESIS) -> None:
        self.choice, self.signal = choice, signal
        self.threshold = threshold_g_per_kwh
        self.hysteresis = hysteresis

    def decide(self, seen: Observation, current: str | None) -> Decision:
        """By the intensity the service read this interval."""
        if seen.intensity_g_per_kwh is None:
            return Decision(current or self.choice.quality.name, "hold", "no carbon reading")
        return _threshold_decision(self.choice, seen.intensity_g_per_kwh, self.threshold, current,
                                   high="carbon-high", low="carbon-low", what="grid gCO2e/kWh",
                                   hysteresis=self.hysteresis)


class EnergyBudgetPolicy:
    """The green variant while the energy spent at the last hour's rate would exceed
    ``j_per_hour``; the quality variant when it falls back under (less the hysteresis)."""

    name = "energy-budget"

    def __init__(self, choice: Choice, j_per_hour: float, hysteresis: float = DEFAULT_HYSTERESIS) -> None:
        if not j_per_hour > 0:
            raise UsageError(f"energy budget {j_per_hour!r} must be a positive number of J per hour")
        self.choice, self.budget, self.hysteresis = choice, float(j_per_hour), hysteresis

    def decide(self, seen: Observation, current: str | None) -> Decision:
        """By the projected hourly energy (J)."""
        window = max(seen.energy_window_s, 1.0)
        projected = seen.energy_j / window * 3600.0
        return _threshold_decision(self.choice, projected, self.budget, current, high="over-budget",
                                   low="within-budget", what="projected J/hour", hysteresis=self.hysteresis)


class PowerCapPolicy:
    """The green variant while recent power is at or above ``cap_w``."""

    name = "power-cap"

    def __init__(self, choice: Choice, cap_w: float, hysteresis: float = DEFAULT_HYSTERESIS) -> None:
        if not cap_w > 0:
            raise UsageError(f"power cap {cap_w!r} must be a positive number of W")
        self.choice, self.cap, self.hysteresis = choice, float(cap_w), hysteresis

    def decide(self, seen: Observation, current: str | None) -> Decision:
        """By the mean power of the last seconds (W)."""
        return _threshold_decision(self.choice, seen.power_w, self.cap, current, high="over-power-cap",
                                   low="under-power-cap", what="power W", hysteresis=self.hysteresis)


class PolicyController:
    """Holds the serving variant; :meth:`apply` asks the policy and records any switch."""

    def __init__(self, policy: Policy) -> None:
        self.policy = policy
        self.current: str | None = None
        self.switches: list[Switch] = []
        self._lock = threading.Lock()

    def apply(self, seen: Observation) -> Switch | None:
        """Decide; on a change of variant, log and keep the switch and return it."""
        with self._lock:
            decision = self.policy.decide(seen, self.current)
            if decision.variant == self.current:
                return None
            switch = Switch(time.time(), self.current, decision.variant, decision.reason, decision.detail)
            self.current = decision.variant
            self.switches.append(switch)
        log.info("serving variant %s -> %s (%s: %s)", switch.from_variant, switch.to_variant,
                 switch.reason, switch.detail)
        return switch


__all__ = ["POLICIES", "CarbonPolicy", "Choice", "Decision", "EnergyBudgetPolicy", "FixedPolicy",
           "Observation", "Policy", "PolicyController", "PowerCapPolicy", "Switch"]
