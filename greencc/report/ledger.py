"""The per-pass ledger: one row per pass with size, work, estimated latency and energy, the
delta the pass made, fidelity and wall time. ``LedgerInstrument`` writes the rows;
``Report`` carries them as versioned JSON and renders a console table.

Every energy figure carries its method: the rows' estimates name the cost model and
profile (``energy_method``), measured figures their meter (``measured_energy``,
``baseline_measured``, each row's ``measured``), and each carbon figure the energy it was
computed from.

report.json is strict JSON: a non-finite float is written as "NaN", "Infinity" or
"-Infinity" (see :mod:`greencc.report.strict_json`).
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from greencc.errors import UsageError
from greencc.measure.carbon import CarbonFactors
from greencc.report import strict_json

SCHEMA = "greencc.report/1"
# Repeated measurements of one model whose p10-p90 ranges miss each other by less than
# this ratio of medians are ordinary drift on a shared machine, not a warning.
NOISE_MIN_RATIO = 1.1
# The calibrated kernel model leads the headline only while at most this share of its
# predicted time (original or final model) is on kernels no calibration benchmark timed:
# those are priced from their op class's means, which can be off by tens of times (a quick
# calibration without EmbedLayerNormalization priced MiniLM's at 143 ms from LayerNorm's).
KERNEL_EXTRAPOLATION_LIMIT = 0.2
# Extrapolated kernels below this share of the kernel model's time (shape arithmetic and
# the like) are not named in its label.
NAMED_SHARE = 0.01


@dataclass
class PassRow:
    """One ledger row. Units: ms, mJ per inference, bytes, MACs."""

    name: str
    modified: bool
    wall_ms: float
    nodes: int
    parameters: int
    model_bytes: int
    macs_by_dtype: dict[str, int]
    est_latency_ms: float | None
    est_energy_mj: float | None
    delta_latency_ms: float | None = None
    delta_energy_mj: float | None = None
    fidelity: dict[str, Any] | None = None
    stats: dict[str, int | float] = field(default_factory=dict)
    rolled_back: str | None = None
    # The label of est_latency_ms / est_energy_mj: "estimate: model:cost(<profile>, ...)".
    energy_method: str | None = None
    # With measurement (compile --measure): the model after this pass lowered to the target
    # and measured. {"latency": LatencyStats dict (ms), "energy": EnergyMeasurement dict
    # (its "method" and "label" say measured or estimate)}; a pass that changed nothing
    # reuses the figure of row "same_as_row" (named "same_as"); {"error": why} when the
    # model could not be lowered or run.
    measured: dict[str, Any] | None = None
    # For a decoder: the estimate of one decode step (seq 1 after "context" tokens, at
    # "batch" rows): {"context", "batch", "est_latency_ms", "est_energy_mj"} (per step).
    per_token: dict[str, Any] | None = None

    @property
    def total_macs(self) -> int:
        """All MACs of the model after this pass, any dtype."""
        return sum(self.macs_by_dtype.values())

    @property
    def measured_latency_ms(self) -> float | None:
        """Measured median latency (ms) of the model after this pass, if measured."""
        latency = (self.measured or {}).get("latency")
        return latency["median_ms"] if latency else None

    @property
    def measured_energy_mj(self) -> float | None:
        """Measured (or CPU-time estimated, see its label) mJ per inference after this pass."""
        energy = (self.measured or {}).get("energy")
        return energy["mj_per_inference"] if energy else None


@dataclass
class Report:
    """A compile's ledger and summary; JSON schema ``greencc.report/1``.

    ``energy_method`` labels the rows' estimates. With measurement: ``measured`` holds the
    compiled model's latency statistics (ms), ``measured_energy`` its energy per inference
    (an :class:`~greencc.measure.energy.EnergyMeasurement` dict, ``method`` and ``label``
    included), and ``baseline_measured`` the same two (``latency``, ``energy``) for the
    original model lowered to the same target without passes. With per-pass measurement
    (``compile(measure=True)``) every row's ``measured`` holds the same figures for the
    model after that pass, ``measured`` / ``measured_energy`` are the last row's and
    ``baseline_measured`` the input row's (unless the target legalizes, when the original
    is measured after legalization). ``carbon_factors`` are the grid intensity (gCO2e/kWh,
    with its source and location code) and PUE that turn every energy figure into gCO2e;
    see :meth:`energy_figures`. ``config`` is the compile's
    :class:`~greencc.config.CompileConfig` as a dict (``None`` for a pipeline run outside
    ``compile`` and in reports written before configs were recorded).
    """

    model: dict[str, Any]
    target: str | None
    profile: dict[str, Any] | None
    dims: dict[str, int]
    pipeline: str
    rows: list[PassRow] = field(default_factory=list)
    energy_method: str = "estimate"
    measured: dict[str, Any] | None = None
    measured_energy: dict[str, Any] | None = None
    baseline_measured: dict[str, Any] | None = None
    carbon_factors: dict[str, Any] | None = None
    # A simulating target's figures for the compiled model's last run (asic-int8:
    # cycles, simulated_ms, macs, bytes_by_level, energy_mj, its "label", and the nodes
    # the host ran with why); None when the target does not simulate or has not run.
    simulated: dict[str, Any] | None = None
    near_misses: list[dict[str, str]] = field(default_factory=list)
    config: dict[str, Any] | None = None
    # The calibrated kernel model's figures for the original and the final model, where
    # this target was calibrated on this machine (``greencc cost calibrate``): "label",
    # "profile", "original_ms" / "final_ms", "original_mj" / "final_mj" (per inference),
    # "extrapolated": {"original"/"final": {kernel: share (0..1) of that model's predicted
    # time}} for the kernels no calibration benchmark timed.
    kernel_estimate: dict[str, Any] | None = None
    # Further latency measurements (LatencyStats dicts, ms) of the input model, taken to
    # check the measurements' noise (see noise_warnings).
    baseline_repeats: list[dict[str, Any]] = field(default_factory=list)
    # This machine's held-out validation of the profile the estimates used (``greencc cost
    # validate``): "created", "cases", "threads" and "scores" per predictor ("kernel_model",
    # "roofline_calibrated", "roofline_uncalibrated": "median_abs_pct", "p90_abs_pct",
    # "spearman" of latency); None where it was never validated here.
    validation: dict[str, Any] | None = None
    # The final model's costliest nodes by estimated energy: "name", "op_type", "module",
    # "macs", "latency_ms", "energy_mj", "share" (of the model's estimated energy), "bound".
    costliest_nodes: list[dict[str, Any]] = field(default_factory=list)
    # The nodes the cost model could not price (counted as 0 MACs or 0 bytes) in the input
    # ("input") and the final ("final") model: CostEstimate.unpriced_nodes() dicts.
    unpriced_nodes: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    # A search's candidates, for the HTML report's Pareto front (search fills it): "points",
    # each {"label", "latency_ms", "energy_mj", "fidelity", "on_front"}, and "energy_label".
    search: dict[str, Any] | None = None
    greencc_version: str = ""
    created: str = ""
    schema: str = SCHEMA

    # -- summary -------------------------------------------------------------------------
    @property
    def baseline(self) -> PassRow | None:
        """The row of the input model (before any pass)."""
        return self.rows[0] if self.rows else None

    @property
    def final(self) -> PassRow | None:
        """The row of the model after the last pass."""
        return self.rows[-1] if self.rows else None

    def summary(self) -> dict[str, Any]:
        """Before/after totals: nodes, MACs, bytes, estimated ms and mJ, and their ratios."""
        if not self.rows:
            return {}
        first, last = self.rows[0], self.rows[-1]

        def ratio(a: float | None, b: float | None) -> float | None:
            return None if not a or b is None else b / a

        return {
            "nodes": [first.nodes, last.nodes],
            "macs": [first.total_macs, last.total_macs],
            "model_bytes": [first.model_bytes, last.model_bytes],
            "est_latency_ms": [first.est_latency_ms, last.est_latency_ms],
            "est_energy_mj": [first.est_energy_mj, last.est_energy_mj],
            "est_energy_ratio": ratio(first.est_energy_mj, last.est_energy_mj),
            "energy_method": self.energy_method,
            "energy": self.energy_figures(),
            "per_token": self.per_token_figures(),
        }

    def per_token_figures(self) -> dict[str, Any] | None:
        """For a decoder: energy per generated token (J/token) and gCO2e per 1,000 tokens of
        the original and the final model, at one decode step (seq 1) after ``context``
        tokens of past, per row of the batch; ``None`` for other models.

        Keys: ``kind`` (``estimate``), ``label``, ``context``, ``batch``,
        ``original_j_per_token`` / ``final_j_per_token``, ``original_g_per_1k_tokens`` /
        ``final_g_per_1k_tokens``, ``original_est_tokens_per_s`` / ``final_est_tokens_per_s``.
        """
        if not self.rows or self.rows[0].per_token is None or self.rows[-1].per_token is None:
            return None
        factors = self.factors()
        first, last = self.rows[0].per_token, self.rows[-1].per_token
        batch = last["batch"]

        def joules(step: dict[str, Any]) -> float:
            return step["est_energy_mj"] * 1e-3 / step["batch"]

        def rate(step: dict[str, Any]) -> float | None:
            return step["batch"] * 1000.0 / step["est_latency_ms"] if step["est_latency_ms"] else None

        return {
            "kind": "estimate",
            "label": self.energy_method,
            "context": last["context"],
            "batch": batch,
            "original_j_per_token": joules(first),
            "final_j_per_token": joules(last),
            "original_g_per_1k_tokens": factors.grams(joules(first)) * 1000,
            "final_g_per_1k_tokens": factors.grams(joules(last)) * 1000,
            "original_est_tokens_per_s": rate(first),
            "final_est_tokens_per_s": rate(last),
        }

    def factors(self) -> Any:
        """The :class:`~greencc.measure.carbon.CarbonFactors` of this report (defaults if unset)."""
        data = self.carbon_factors or {}
        return CarbonFactors(**data) if data else CarbonFactors()

    def energy_figures(self) -> list[dict[str, Any]]:
        """Energy per inference of the original and the final model, one entry per method.

        Each entry: ``kind`` (``estimate``, ``simulated`` or ``measured``), ``method``
        (``model:cost``, ``simulated``, ``rapl``, ``nvml``, ``estimate:cpu-time×tdp``), ``label`` (method and source in
        words), ``original_mj`` / ``final_mj`` (mJ per inference; ``None`` when not known),
        ``ratio`` (final / original) and ``original_g_per_1k`` / ``final_g_per_1k`` (gCO2e
        per 1,000 inferences at :meth:`factors`).
        """
        factors = self.factors()
        figures: list[dict[str, Any]] = []

        def add(kind: str, method: str, label: str, before: float | None, after: float | None,
                extra: dict[str, Any] | None = None) -> None:
            def grams(mj: float | None) -> float | None:
                return None if mj is None else factors.grams(mj * 1e-3) * 1000

            figures.append({
                "kind": kind, "method": method, "label": label,
                "original_mj": before, "final_mj": after,
                "ratio": after / before if before and after is not None else None,
                "original_g_per_1k": grams(before), "final_g_per_1k": grams(after),
                **(extra or {}),
            })

        if self.rows and self.rows[-1].est_energy_mj is not None:
            profile = self.profile["name"] if self.profile else "?"
            calibrated = bool(self.profile and self.profile.get("calibrated"))
            add("estimate", "model:cost", self.energy_method or f"estimate: model:cost({profile})",
                self.rows[0].est_energy_mj, self.rows[-1].est_energy_mj,
                {"profile": profile, "validation": self._score(
                    "roofline_calibrated" if calibrated else "roofline_uncalibrated")})
        kernel = self.kernel_estimate
        if kernel and kernel.get("final_mj") is not None:
            share, kernels = _extrapolation(kernel.get("extrapolated") or {})
            label = kernel["label"]
            if share >= NAMED_SHARE:
                label += (f"; {100 * share:.0f}% of its predicted time is on kernels no calibration benchmark "
                          f"timed ({', '.join(kernels) or 'each under 1%'}), priced from their op class")
            add("estimate", "model:kernels", label, kernel.get("original_mj"), kernel["final_mj"],
                {"profile": kernel.get("profile"), "validation": self._score("kernel_model"),
                 "extrapolated_share": share, "extrapolated_kernels": kernels})
        if self.simulated and self.simulated.get("energy_mj") is not None:
            add("simulated", "simulated", self.simulated.get("label", "simulated"), None,
                self.simulated["energy_mj"], {"cycles": self.simulated.get("cycles"),
                                               "simulated_ms": self.simulated.get("simulated_ms")})
        final = self.measured_energy
        baseline = (self.baseline_measured or {}).get("energy")
        if final or baseline:
            source = final or baseline or {}
            kind = "measured" if source.get("measured") else "estimate"
            add(kind, source.get("method", "?"), source.get("label", "?"),
                baseline.get("mj_per_inference") if baseline else None,
                final.get("mj_per_inference") if final else None,
                {"window_s": [baseline.get("window_s") if baseline else None,
                              final.get("window_s") if final else None],
                 "idle_power_w": [baseline.get("idle_power_w") if baseline else None,
                                  final.get("idle_power_w") if final else None]})
        return figures

    def _score(self, predictor: str) -> dict[str, Any] | None:
        """The validation score of ``predictor`` with the validation's date and size."""
        score = ((self.validation or {}).get("scores") or {}).get(predictor)
        if not score:
            return None
        return {"median_abs_pct": score.get("median_abs_pct"), "p90_abs_pct": score.get("p90_abs_pct"),
                "spearman": score.get("spearman"), "cases": self.validation.get("cases"),  # type: ignore[union-attr]
                "created": self.validation.get("created"), "of": "latency"}  # type: ignore[union-attr]

    def headline(self) -> dict[str, Any] | None:
        """The energy figure the report leads with: the best-validated one available.

        A meter's measurement first, else the calibrated kernel model (unless more than
        :data:`KERNEL_EXTRAPOLATION_LIMIT` of its predicted time is on kernels no
        calibration benchmark timed), else the roofline estimate, else a simulator's
        figure, else the CPU-time estimate of a measurement run. The :meth:`energy_figures`
        entry, plus ``why`` (why it leads) and ``validation_text`` (its validation error in
        words); ``None`` without any figure.
        """
        figures = [f for f in self.energy_figures() if f["final_mj"] is not None]
        if not figures:
            return None

        def extrapolates(figure: dict[str, Any]) -> bool:
            return (figure["method"] == "model:kernels"
                    and figure.get("extrapolated_share", 0.0) > KERNEL_EXTRAPOLATION_LIMIT)

        def rank(figure: dict[str, Any]) -> int:
            if figure["kind"] == "measured":
                return 0
            if extrapolates(figure):
                return 3
            return {"model:kernels": 1, "model:cost": 2, "simulated": 4}.get(figure["method"], 5)

        best = min(figures, key=rank)
        why = {
            0: "measured by an energy meter",
            1: "no energy meter here; the kernel model calibrated on this machine is the best-validated estimate",
            2: "no energy meter and no calibration of this target on this machine "
               "(`greencc cost calibrate` adds the calibrated kernel model)",
            3: "no energy meter; the kernel model calibrated on this machine, though it extrapolates",
            4: "no energy meter; the target's simulator",
            5: "no meter: CPU time × per-core power",
        }[rank(best)]
        passed_over = next((f for f in figures if extrapolates(f)), None)
        if best["method"] == "model:cost" and passed_over is not None:
            why = (f"no energy meter; the kernel model calibrated on this machine never timed "
                   f"{', '.join(passed_over['extrapolated_kernels']) or 'several small kernels'}, which make "
                   f"{100 * passed_over['extrapolated_share']:.0f}% of its predicted time, so its figure is an "
                   "extrapolation (in detail); `greencc cost calibrate` times the full suite")
        return {**best, "why": why, "validation_text": validation_text(best)}

    def baseline_latencies(self) -> list[dict[str, Any]]:
        """Every separate latency measurement (LatencyStats dicts, ms) of the original model
        this report holds: the input row's, its repeats, and the baseline's when it was
        measured on its own."""
        first = (self.rows[0].measured or {}) if self.rows else {}
        candidates = [first.get("latency"), *self.baseline_repeats, (self.baseline_measured or {}).get("latency")]
        found: list[dict[str, Any]] = []
        for stats in candidates:
            if stats and stats not in found:
                found.append(stats)
        return found

    def noise_warnings(self) -> list[str]:
        """One line per pair of baseline measurements that disagree beyond their spread:
        their p10–p90 ranges do not overlap and the medians differ by at least
        ``NOISE_MIN_RATIO``."""
        samples = self.baseline_latencies()
        warnings = []
        for i, a in enumerate(samples):
            for b in samples[i + 1:]:
                low, high = sorted((a, b), key=lambda s: s["median_ms"])
                if low["p90_ms"] < high["p10_ms"] and high["median_ms"] >= NOISE_MIN_RATIO * low["median_ms"]:
                    warnings.append(
                        f"noise: the original model measured {a['median_ms']:.3f} ms (p10-p90 {a['p10_ms']:.3f}-"
                        f"{a['p90_ms']:.3f}) and {b['median_ms']:.3f} ms ({b['p10_ms']:.3f}-{b['p90_ms']:.3f}) "
                        "in repeated runs, beyond their spread: the machine was busy or throttling, so the "
                        "measured figures are unreliable; measure again on a quiet machine")
        return warnings

    # -- serialisation -------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """JSON-safe dict with ``schema`` first."""
        data = asdict(self)
        data = {"schema": data.pop("schema"), **data, "summary": self.summary()}
        return data

    def to_json(self, path: str | os.PathLike | None = None) -> str:
        """The report as JSON text; also written atomically to ``path`` when given."""
        text = strict_json.dumps(self.to_dict(), default=_json_default)
        if path is not None:
            path = Path(path)
            if path.is_dir():
                raise UsageError(f"report path {path} is a directory", hint="give a file name, e.g. out/report.json")
            path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(prefix=".report-", dir=path.parent)
            try:
                with os.fdopen(fd, "w", encoding="utf-8") as handle:
                    handle.write(text)
                os.replace(tmp, path)
            except BaseException:
                Path(tmp).unlink(missing_ok=True)
                raise
        return text

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Report:
        """Rebuild a report from :meth:`to_dict` output; ``UsageError`` on another schema."""
        if not isinstance(data, dict) or data.get("schema") != SCHEMA:
            schema = data.get("schema") if isinstance(data, dict) else None
            raise UsageError(
                f"not a greencc report (schema {schema!r}, expected {SCHEMA!r})"
            )
        fields = {k: v for k, v in data.items() if k not in ("summary", "rows")}
        rows = data.get("rows", [])
        try:
            if not isinstance(rows, list) or not all(isinstance(row, dict) for row in rows):
                raise TypeError("'rows' is not a list of objects")
            return cls(rows=[PassRow(**row) for row in rows], **fields)
        except TypeError as exc:
            raise UsageError(f"malformed greencc report: {exc}",
                             hint="it was not written by this greencc version, or was edited") from None

    @classmethod
    def from_json(cls, path: str | os.PathLike) -> Report:
        """Read a report written by :meth:`to_json`."""
        try:
            text = Path(path).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise UsageError(f"cannot read report {path}: {exc}") from None
        return cls.from_dict(strict_json.loads(text, f"report {path}"))

    def to_console(self, width: int | None = None) -> str:
        """The ledger as plain text (what ``greencc compile`` prints), no line wider than
        ``width`` columns (default: the terminal's width, or 140 when stdout is not one)."""
        from greencc.report.console import render_report

        return render_report(self, width=width)


def _extrapolation(extrapolated: dict[str, dict[str, float]]) -> tuple[float, list[str]]:
    """The larger of the original's and the final model's extrapolated shares (0..1) of
    the kernel model's time, and the kernels extrapolated that carry at least
    :data:`NAMED_SHARE` of it in either (costliest first, domain dropped)."""
    share = max((sum(shares.values()) for shares in extrapolated.values()), default=0.0)
    weight: dict[str, float] = {}
    for shares in extrapolated.values():
        for kernel, part in shares.items():
            weight[kernel] = max(weight.get(kernel, 0.0), part)
    named = sorted((k for k in weight if weight[k] >= NAMED_SHARE), key=lambda k: -weight[k])
    return share, [kernel.split("::")[-1] for kernel in named]


def validation_text(figure: dict[str, Any]) -> str:
    """An energy figure's validation in words: its held-out latency error where ``greencc
    cost validate`` scored it on this machine, or why it has none."""
    if figure["kind"] == "measured":
        return "a measurement (no model error; see the noise check)"
    score = figure.get("validation")
    if not score:
        if figure["method"] in ("model:cost", "model:kernels"):
            return "not validated on this machine (run `greencc cost validate`)"
        return "not validated"
    return (f"latency validated on {score['cases']} held-out models on this machine ({score['created']}): "
            f"median error {score['median_abs_pct']:.1f}%, p90 {score['p90_abs_pct']:.1f}%; "
            "energy terms follow the profile's sources")


def _json_default(value: Any) -> Any:
    if hasattr(value, "to_dict"):
        return value.to_dict()
    if hasattr(value, "item"):
        return value.item()
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")
