"""The cost-model screen: before a candidate is compiled with verification and measured,
its pipeline is run once without verification, with every lossy pass at its most
aggressive and cheapest (pruning by magnitude, share-driven pruning at the space's
largest ratio, int8 and int4 everywhere), and priced by the cost model. That estimate is
optimistic, so a candidate is discarded only when an exact candidate already compiled
(fidelity 1, which no lossy candidate can beat) costs less in both estimated energy and
estimated latency by more than ``margin``: it cannot reach the front.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from greencc.config import CompileConfig
from greencc.driver import as_model
from greencc.driver import compile as compile_model
from greencc.errors import GreenccError
from greencc.model import Model
from greencc.pipeline.text import PassSpec, Pipeline
from greencc.search.store import Candidate

# Fidelity of a candidate whose passes are all exact (float rounding only).
EXACT_FIDELITY = 1.0 - 1e-6
# The pruning ratio a share- or budget-driven pruning pass is priced at: the largest in the
# default space, so the screen never prices a candidate above what it can reach.
OPTIMISTIC_PRUNE_RATIO = 0.5
_PRUNING = ("prune-heads", "prune-ffn")


@dataclass(frozen=True)
class Estimate:
    """The screen's optimistic estimate of a candidate: ms and mJ per inference."""

    latency_ms: float
    energy_mj: float


class Screen:
    """Prices candidates before they are compiled; ``margin`` is the fraction by which an
    exact candidate must be cheaper in both figures to discard one (default 5%: both
    figures come from the same cost model and profile, so its error mostly cancels)."""

    def __init__(self, model: Model | str, margin: float = 0.05, prune_ratio: float = OPTIMISTIC_PRUNE_RATIO) -> None:
        self.model = as_model(model)
        self.margin = margin
        self.prune_ratio = prune_ratio

    def estimate(self, config: CompileConfig) -> Estimate | None:
        """The optimistic estimate of ``config``, or None when its dry run fails."""
        dry = CompileConfig.from_dict({**config.to_dict(), "pipeline": self.optimistic(config.pipeline),
                                       "verify": False, "measure": False, "budget": None})
        try:
            compiled = compile_model(self.model, config=dry)
        except GreenccError:
            return None
        final = compiled.report.rows[-1]
        if final.est_latency_ms is None or final.est_energy_mj is None:
            return None
        return Estimate(final.est_latency_ms, final.est_energy_mj)

    def optimistic(self, pipeline: str) -> str:
        """``pipeline`` with each lossy pass at its cheapest to run and most aggressive."""
        items = []
        for spec in Pipeline.parse(pipeline).items:
            options = dict(spec.options)
            if spec.name in _PRUNING:
                for option in ("share", "budget", "score", "rounds"):
                    options.pop(option, None)
                if "ratio" not in options and "count" not in options:
                    options["ratio"] = str(self.prune_ratio)
                options["score"] = "magnitude"
            elif spec.name in ("quantize-int8", "quantize-weights"):
                options.pop("outliers", None)
                options.update(fallback="none", method="minmax" if spec.name == "quantize-int8" else "rtn")
                if spec.name == "quantize-weights":
                    options.pop("act_order", None)
            elif spec.name == "recover":
                continue  # training changes weights, not the graph's cost
            items.append(PassSpec(spec.name, tuple(options.items())))
        return str(Pipeline(tuple(items)))

    def verdict(self, estimate: Estimate, evaluated: Iterable[Candidate]) -> str | None:
        """Why a candidate with ``estimate`` cannot reach the front, or None to compile it."""
        for other in evaluated:
            if (other.fidelity is None or other.fidelity < EXACT_FIDELITY
                    or other.est_energy_mj is None or other.est_latency_ms is None):
                continue
            scale = 1.0 + self.margin
            if other.est_energy_mj * scale <= estimate.energy_mj and other.est_latency_ms * scale <= estimate.latency_ms:
                return (f"at best {estimate.energy_mj:.4g} mJ, {estimate.latency_ms:.4g} ms (estimated), "
                        f"but exact '{other.pipeline}' costs {other.est_energy_mj:.4g} mJ, "
                        f"{other.est_latency_ms:.4g} ms at fidelity 1")
        return None


def can_discard(evaluated: Iterable[Candidate]) -> bool:
    """True once an exact candidate was compiled (before that, nothing can be discarded)."""
    return any(c.fidelity is not None and c.fidelity >= EXACT_FIDELITY and c.est_energy_mj is not None
               for c in evaluated)

