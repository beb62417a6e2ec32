"""A search's outcome: its candidates, the Pareto front (estimated energy, latency,
fidelity; bytes for the size objective), the best candidate for an objective, a table,
the artifacts of the front and the search report (report.html in the search directory:
the best candidate's ledger with the front plotted and linked to each point's ledger).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from greencc.errors import UsageError
from greencc.report.html import REPORT_HTML_NAME, write_html
from greencc.report.ledger import Report
from greencc.search.store import COMPILED, MEASURED, Candidate

OBJECTIVES = ("energy", "latency", "size")
# What each objective minimizes: estimated energy (mJ/inference; measured energy on a CPU
# without RAPL is itself an estimate from CPU time), latency (ms, measured where measured),
# model bytes.
_OBJECTIVE: dict[str, Callable[[Candidate], float | None]] = {
    "energy": lambda c: c.est_energy_mj,
    "latency": lambda c: c.latency_ms,
    "size": lambda c: c.model_bytes,
}


def objective_value(candidate: Candidate, objective: str) -> float | None:
    """The figure ``objective`` minimizes for ``candidate`` (mJ, ms or bytes)."""
    if objective not in _OBJECTIVE:
        raise UsageError(f"unknown objective '{objective}'", hint=f"choose one of: {', '.join(OBJECTIVES)}")
    value = _OBJECTIVE[objective](candidate)
    return None if value is None else float(value)


def pareto_front(candidates: Iterable[Candidate], objectives: Mapping[str, Callable[[Candidate], Any]]) -> list[Candidate]:
    """The candidates no other dominates; ``objectives`` maps a name to a function of a
    candidate giving a value to minimize (None counts as the worst)."""
    scored = [(c, [float("inf") if (v := f(c)) is None else float(v) for f in objectives.values()])
              for c in candidates]
    return [
        candidate for candidate, mine in scored
        if not any(theirs != mine and all(t <= m for t, m in zip(theirs, mine, strict=True))
                   for other, theirs in scored if other is not candidate)
    ]


def front_objectives(objective: str) -> dict[str, Callable[[Candidate], Any]]:
    """The front's axes: estimated energy, latency and fidelity loss (and bytes for size)."""
    axes: dict[str, Callable[[Candidate], Any]] = {
        "energy": _OBJECTIVE["energy"], "latency": _OBJECTIVE["latency"],
        "fidelity_loss": lambda c: None if c.fidelity is None else 1.0 - c.fidelity,
    }
    if objective == "size":
        axes["size"] = _OBJECTIVE["size"]
    return axes


@dataclass
class SearchResult:
    """What :func:`greencc.search` found. ``candidates``: every finished candidate in the
    store; ``stats``: counts (``asked``, ``duplicates``, ``screened``, ``compiled``,
    ``broke_budget``, ``known_broken`` (not compiled: they begin like one that broke the
    budget), ``failed``, ``measured``, ``measure_skipped``), ``elapsed_s``,
    ``screen_s`` (the driver's time pricing candidates before compiling them) and
    ``workers`` of the run that returned it; ``report`` the report.html path."""

    directory: Path
    objective: str
    budget: str | None
    candidates: list[Candidate]
    stats: dict[str, Any] = field(default_factory=dict)
    report: Path | None = None

    @property
    def built(self) -> list[Candidate]:
        """The candidates that compiled within the budget."""
        return [c for c in self.candidates if c.status in (COMPILED, MEASURED)]

    @property
    def pareto(self) -> list[Candidate]:
        """The Pareto front over estimated energy, latency and fidelity, among candidates
        built within the budget, cheapest objective first. Once any was measured, only
        measured ones: a cost-model latency does not compare with a measured one (on
        MiniLM, on a loaded machine, 4 ms estimated against 23-60 ms measured), and a
        candidate left unmeasured was dominated on its estimates when it was built."""
        measured = [c for c in self.built if c.measured_latency_ms is not None]
        front = pareto_front(measured or self.built, front_objectives(self.objective))
        return sorted(front, key=lambda c: objective_value(c, self.objective) or float("inf"))

    def best(self, objective: str | None = None) -> Candidate | None:
        """The front's candidate with the lowest ``objective`` (default: the search's)."""
        objective = objective or self.objective
        ranked = [c for c in self.pareto if objective_value(c, objective) is not None]
        return min(ranked, key=lambda c: objective_value(c, objective) or 0.0, default=None)

    @property
    def artifacts(self) -> dict[str, Path]:
        """The saved artifact directory of each front candidate, by pipeline text."""
        return {c.pipeline or "(no passes)": Path(c.artifact) for c in self.pareto if c.artifact}

    def to_dataframe(self) -> Any:
        """Every candidate as a pandas DataFrame (one row each, the store's columns plus
        ``pipeline`` and ``on_front``)."""
        try:
            import pandas as pd
        except ImportError:
            raise UsageError("to_dataframe needs pandas", hint="pip install pandas") from None
        front = {c.digest for c in self.pareto}
        rows = [{**c.to_dict(), "pipeline": c.pipeline, "on_front": c.digest in front} for c in self.candidates]
        return pd.DataFrame(rows)

    def table(self) -> str:
        """The front as a Markdown table (mJ and ms per inference, MB, cosine)."""
        lines = ["| pipeline | threads | est mJ | ms | measured | MB | fidelity (cos) |",
                 "|---|---:|---:|---:|---|---:|---:|"]
        for c in self.pareto:
            measured = "yes" if c.measured_latency_ms is not None else "est"
            lines.append(f"| `{c.pipeline or '(none)'}` | {c.config.get('threads') or 'default'} | "
                         f"{_num(c.est_energy_mj, '.4g')} | {_num(c.latency_ms, '.4g')} | {measured} | "
                         f"{_num(None if c.model_bytes is None else c.model_bytes / 1e6, '.3f')} | "
                         f"{_num(c.fidelity, '.6f')} |")
        return "\n".join(lines)

    def write_report(self) -> Path | None:
        """Write report.html in the search directory: the best candidate's ledger with
        every built candidate plotted (energy and latency against fidelity), the front
        joined and linked to each point's own ledger. None when nothing was built."""
        best = self.best()
        if best is None or not best.artifact or not (Path(best.artifact) / "report.json").is_file():
            return None
        report = Report.from_json(Path(best.artifact) / "report.json")
        front = {c.digest for c in self.pareto}
        labels = {c.digest: f"#{c.seq}" for c in self.built}
        report.search = {
            "energy_label": "estimated mJ/inference",
            "objective": self.objective,
            "budget": self.budget,
            "points": [
                {"label": labels[c.digest], "pipeline": c.pipeline or "(no passes)",
                 "threads": c.config.get("threads"), "latency_ms": c.latency_ms,
                 "energy_mj": c.est_energy_mj, "fidelity": c.fidelity, "on_front": c.digest in front,
                 "measured": c.measured_latency_ms is not None,
                 "ledger": _relative(Path(c.artifact) / REPORT_HTML_NAME, self.directory) if c.artifact else None}
                for c in self.built
            ],
            "stats": dict(self.stats),
        }
        self.report = write_html(report, self.directory / REPORT_HTML_NAME)
        return self.report


def _relative(path: Path, start: Path) -> str:
    return os.path.relpath(path, start)


def _num(value: float | None, fmt: str) -> str:
    return "-" if value is None else format(value, fmt)
